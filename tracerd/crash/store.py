"""The crash store: reports on disk, deduplicated by signature, capped in size.

One full report per signature per flood window (``ID.json``); repeats only
bump the signature's entry in ``index.json`` (docs/json.md), unless one names
more frames.  Every write is atomic: temp file, fsync, rename, fsync of the
directory.  ``read_only`` (tracerctl, tracerd down) never writes or deletes.

Security: the directory must be ours (read-only: any owner), not a symlink,
not writable by group or others; files are opened relative to it with
O_NOFOLLOW.  A client's crash id must match ``[A-Za-z0-9._-]{1,128}`` and is
only compared with listed names.  Reports and index are capped at ``max_bytes``.

Diagnostics: record() raises OSError with the store unchanged; a failed index
write alone is returned as ``index_error``.  A missing or corrupt index is
rebuilt from the reports; an unparsable report is skipped, deleted first.
get() raises NotFound; opening raises ConfigError (unsafe directory),
FileNotFoundError or PermissionError.
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import datetime as dt
import errno
import json
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tracerd import atomic
from tracerd.crash import corefile
from tracerd.crash.report import CRASH_ID_RE, INDEX, MAX_REPEATS, PUBLIC_FIELDS, TEMP_PREFIX, CrashReport, _epoch
from tracerd.crash.signature import report_named_frames
from tracerd.errors import ConfigError, NotFound
from tracerd.timefmt import iso_utc

MAX_FILE = 64 << 20  # a report or index larger than this is not ours: unreadable


class CrashStore:
    """Crash reports on disk, deduplicated by signature, capped in size."""

    def __init__(
        self,
        directory: Path,
        *,
        flood_window: float = 60.0,
        max_bytes: int = 256 << 20,
        max_core_bytes: int = 1 << 30,
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
    ) -> None:
        self.directory = Path(directory)
        self.read_only = read_only
        self.flood_window = flood_window
        self.max_bytes = max_bytes
        self.max_core_bytes = max_core_bytes
        self._clock = clock
        # record() fsyncs in a worker thread; list() and get() read a snapshot it replaces whole
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = {}  # signature -> index entry
        self._snapshot: dict[str, dict[str, Any]] = {}
        self._fd = _open_for_reading(self.directory) if read_only else _open_directory(self.directory)
        try:
            self._load()
        except BaseException:
            self.close()
            raise
        self._publish()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> CrashStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- public ---------------------------------------------------------------

    def record(self, report: CrashReport, core: corefile.CoreRequest | None = None) -> dict[str, Any]:
        """A full report, or only a count while its signature floods; ``core`` kept by policy."""
        if self.read_only:
            raise PermissionError(f"crash store {self.directory} is open read-only")
        with self._lock:
            now = self._clock()
            sig, pid, name = report.signature, report.process.get("pid"), report.process.get("name")
            entry = self._entries.get(sig)
            # a clock stepped back must not silence full reports for as long
            flooding = entry is not None and 0 <= now - _epoch(entry["last_full"]) < self.flood_window
            # a repeat naming more frames than the kept report is kept too
            better = entry is not None and report.named_frames > _kept_frames(entry)
            full = entry is None or entry["report"] is None or not flooding or better
            crash_id = None
            if full:
                crash_id = self._new_id(now, sig, pid)
                report.core = self._keep_core(crash_id, core, entry) if core is not None else report.core
                body = {**report.to_json(), "id": crash_id, "stored": iso_utc(now)}
                self._write_atomic(f"{crash_id}.json", json.dumps(body, indent=2, default=str).encode())
                report.id = crash_id
                entry = self._merge(body, entry)
            else:
                assert entry is not None
                entry["count"] += 1
                entry["last_seen"] = iso_utc(now)
                repeat = {"time": iso_utc(now), "pid": pid, "name": name, "signal": report.signal.get("name")}
                entry["repeats"] = [*entry["repeats"], {**repeat, "top": report.top}][-MAX_REPEATS:]
            self._enforce_cap(keep=crash_id, keep_signature=sig)
            self._enforce_core_cap(keep=crash_id)
            self._publish()
            result = {**self._public(entry), "full": full}
            try:
                self._save_index()
            except OSError as err:
                result["index_error"] = str(err)
            return result

    def list(self) -> builtins.list[dict[str, Any]]:
        """Every signature's entry, the most recently seen first."""
        entries = sorted(self._snapshot.values(), key=lambda e: (_epoch(e["last_seen"]), e["id"]), reverse=True)
        return [self._public(entry) for entry in entries]

    def get(self, crash_id: str) -> dict[str, Any]:
        """The full report by id, signature or unique id prefix."""
        if not isinstance(crash_id, str) or not CRASH_ID_RE.fullmatch(crash_id):
            raise NotFound("not a crash id")
        names = self._report_ids()
        entry = self._snapshot.get(crash_id)
        if crash_id in names:
            wanted = crash_id
        elif entry is not None:
            if entry["report"] is None:
                raise NotFound(f"crash {crash_id}: its report was deleted to stay under max_crash_bytes")
            wanted = entry["id"]
        else:
            matches = [name for name in names if name.startswith(crash_id)]
            if len(matches) != 1:
                raise NotFound(f"{len(matches)} crashes match {crash_id!r}" if matches else f"no crash {crash_id}")
            wanted = matches[0]
        try:
            data = self._read_json(f"{wanted}.json")
        except (OSError, ValueError) as err:
            raise NotFound(f"crash {wanted}: report unreadable: {err}") from err
        if not isinstance(data, dict):
            raise NotFound(f"crash {wanted}: report unreadable")
        return data

    # -- index ----------------------------------------------------------------

    def _publish(self) -> None:
        self._snapshot = copy.deepcopy(self._entries)

    def _public(self, entry: dict[str, Any]) -> dict[str, Any]:
        public = {key: entry.get(key) for key in PUBLIC_FIELDS}
        public["repeats"] = copy.deepcopy(entry.get("repeats", []))
        # every full report kept, oldest first: older pids' reports, which "id" no longer names
        public["reports"] = list(entry.get("reports", []))
        return public

    def _merge(self, report: dict[str, Any], entry: dict[str, Any] | None) -> dict[str, Any]:
        """Count one full report into its signature's entry (new, or one on disk at start)."""
        seen = str(report.get("stored") or report.get("time") or "")
        process, sig = report.get("process") or {}, report.get("signal") or {}
        latest = {
            "id": report["id"],
            "report": str(self.directory / f"{report['id']}.json"),
            "name": process.get("name"),
            "pid": process.get("pid"),
            "signal": sig.get("name"),
            "top": report.get("top") or [],
            "capture": process.get("capture") or "complete",  # or "interrupted"
            "frames": report_named_frames(report),  # how many frames the shown report names
            "kept": seen,  # when it was stored
        }
        # a core of the signature's (this report's, else an older one's still on disk)
        core = _core_file(report) or (entry or {}).get("core")
        if entry is None:
            entry = {"signature": report["signature"], "count": 0, "first_seen": seen, "repeats": [], "reports": [],
                     "last_seen": seen, "last_full": seen}  # fmt: skip
            entry.update(latest)
        elif entry["report"] is None or (latest["frames"], _epoch(seen)) >= _kept_rank(entry):
            entry.update(latest)  # the shown report: the one naming most frames, the latest of those
        entry["core"] = core
        if _epoch(seen) >= _epoch(entry["last_full"]):
            entry["last_full"] = seen
        if _epoch(seen) >= _epoch(entry["last_seen"]):
            entry["last_seen"] = seen
        entry["first_seen"] = min(entry["first_seen"], seen, key=_epoch)
        entry["count"] += 1
        entry["reports"] = sorted({*entry["reports"], report["id"]})
        self._entries[entry["signature"]] = entry
        return entry

    def _load(self) -> None:
        """Read the index, then reconcile it with the report files actually there."""
        for name in os.listdir(self._fd):
            if name.startswith(TEMP_PREFIX) and not self.read_only:  # left by a crash of tracerd mid-write
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=self._fd)
        try:
            entries = self._read_json(INDEX)["crashes"]
            if not all(_valid_entry(entry) for entry in entries):
                raise ValueError("bad entry")
            self._entries = {entry["signature"]: entry for entry in entries}
        except PermissionError:
            if self.read_only:
                raise  # the reader may not read it: "no crashes" would be a lie
            self._entries = {}
        except (OSError, ValueError, KeyError, TypeError):
            self._entries = {}  # missing or corrupt: rebuilt from the reports below
        on_disk = set(self._report_ids())
        cores = {crash_id for _, crash_id, _ in corefile.cores_on_disk(self._fd)}
        for entry in self._entries.values():
            entry["reports"] = [rid for rid in entry["reports"] if rid in on_disk]
            if entry["id"] not in on_disk:
                entry["report"] = None
            if entry.get("core") and corefile.crash_id_of(str(entry["core"])) not in cores:
                entry["core"] = None
        known = {rid for entry in self._entries.values() for rid in entry["reports"]}
        for rid in sorted(on_disk - known):  # written, but tracerd stopped before the index was
            try:
                report = self._read_json(f"{rid}.json")
                if report["id"] != rid or not isinstance(report["signature"], str):
                    continue
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not ours or damaged: counted against the cap, deleted first in line
            self._merge(report, self._entries.get(report["signature"]))
        if self.read_only:
            return
        with contextlib.suppress(OSError):  # a full disk must not stop the daemon: the next record retries
            self._save_index()

    def _index_bytes(self) -> bytes:
        return json.dumps({"format": 1, "crashes": list(self._entries.values())}, indent=1, default=str).encode()

    def _save_index(self) -> None:
        self._write_atomic(INDEX, self._index_bytes())

    def _enforce_cap(self, *, keep: str | None, keep_signature: str) -> None:
        """Delete the oldest reports (never ``keep``) until reports and index fit ``max_bytes``."""
        files = []
        for rid in self._report_ids():
            with contextlib.suppress(FileNotFoundError):
                info = os.stat(f"{rid}.json", dir_fd=self._fd, follow_symlinks=False)
                files.append((info.st_mtime_ns, rid, info.st_size))
        files.sort()
        files_total = sum(size for _, _, size in files)
        index_size = len(self._index_bytes())  # only shrinks as reports go: an upper bound below
        for _, rid, size in files:
            if files_total + index_size <= self.max_bytes:
                return
            if rid == keep:
                continue
            try:
                os.unlink(f"{rid}.json", dir_fd=self._fd)
            except FileNotFoundError:
                pass
            except OSError:
                continue
            files_total -= size
            for entry in self._entries.values():
                if rid in entry["reports"]:
                    entry["reports"].remove(rid)
                if entry["id"] == rid:
                    entry["report"] = None
        # still too big, the index having grown: forget the oldest signatures whose reports are gone
        stale = sorted(
            (e for e in self._entries.values() if e["report"] is None and e["signature"] != keep_signature),
            key=lambda e: _epoch(e["last_seen"]),
        )
        for entry in stale:
            if files_total + len(self._index_bytes()) <= self.max_bytes:
                break
            del self._entries[entry["signature"]]

    # -- cores ----------------------------------------------------------------

    def _keep_core(self, crash_id: str, core: corefile.CoreRequest, entry: dict[str, Any] | None) -> dict[str, Any]:
        """The policy, then the compressed core beside the report (see corefile)."""
        has_core = bool(entry and entry.get("core"))
        return corefile.keep_by_policy(self._fd, crash_id, core, has_core, max_bytes=self.max_core_bytes,
                                       temp_prefix=TEMP_PREFIX)

    def _enforce_core_cap(self, *, keep: str | None) -> None:
        """Cores out, oldest first, until they fit max_core_bytes; their reports stay and say so."""
        for crash_id in corefile.over_budget(self._fd, self.max_core_bytes, set(self._report_ids()), keep):
            for entry in self._entries.values():
                if entry.get("core") == corefile.core_name(crash_id):
                    entry["core"] = None
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                body = self._read_json(f"{crash_id}.json")
                if corefile.mark_evicted(body, iso_utc(self._clock()), self.max_core_bytes):
                    self._write_atomic(f"{crash_id}.json", json.dumps(body, indent=2, default=str).encode())

    def core_path(self, crash_id: str) -> tuple[dict[str, Any], str]:
        """The full report and the name of its core in the directory; NotFound with the reason."""
        report = self.get(crash_id)
        return report, corefile.saved_core(self._fd, report)

    @property
    def fd(self) -> int:
        return self._fd

    # -- files ----------------------------------------------------------------

    def _report_ids(self) -> builtins.list[str]:
        ids = []
        for name in os.listdir(self._fd):
            stem = name[:-5]
            if name.endswith(".json") and name != INDEX and not name.startswith(".") and CRASH_ID_RE.fullmatch(stem):
                ids.append(stem)
        return sorted(ids)

    def _new_id(self, now: float, sig: str, pid: object) -> str:
        stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        base = f"{stamp}-{sig[:8]}-{pid if isinstance(pid, int) else 0}"
        taken = set(self._report_ids()) | {e["id"] for e in self._entries.values()}
        crash_id, n = base, 0
        while crash_id in taken:
            n += 1
            crash_id = f"{base}-{n}"
        return crash_id

    def _read_json(self, name: str) -> Any:
        return read_json_at(self._fd, name)

    def _write_atomic(self, name: str, data: bytes) -> None:
        """Readers see the old file or all of the new one; the rename survives a power cut."""
        atomic.write_at(self._fd, name, data, 0o640, prefix=TEMP_PREFIX)


def _core_file(report: dict[str, Any]) -> str | None:
    core = report.get("core")
    return core.get("file") if isinstance(core, dict) and core.get("state") == "saved" else None


def _kept_frames(entry: dict[str, Any]) -> int:
    """The shown report's named frames (an index from before they were counted: its top's length)."""
    frames = entry.get("frames")
    return frames if isinstance(frames, int) else len(entry.get("top") or [])


def _kept_rank(entry: dict[str, Any]) -> tuple[int, float]:
    return _kept_frames(entry), _epoch(entry.get("kept") or entry["last_full"])


def _valid_entry(entry: object) -> bool:
    keys = {"signature": str, "id": str, "first_seen": str, "last_seen": str, "last_full": str, "count": int}
    keys |= {"reports": builtins.list, "repeats": builtins.list}
    return isinstance(entry, dict) and all(isinstance(entry.get(key), kind) for key, kind in keys.items())


def _open_directory(directory: Path) -> int:
    """Create (0o750) and open the store's directory; refuse one that is not safely ours."""
    if not directory.is_symlink() and not directory.exists():
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, 0o750)
                os.chmod(directory, 0o750)  # noqa: S103 -- the contract's mode: socket_group may read; umask filtered mkdir's
        except OSError as err:  # a read-only state_dir: one line, not a traceback
            raise ConfigError(f"crash directory {directory}: cannot create it: {err.strerror}") from err
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise ConfigError(f"crash directory {directory}: {err.strerror} (a symlink is refused)") from err
    info = os.fstat(fd)
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        os.close(fd)
        raise ConfigError(
            f"crash directory {directory}: must be owned by uid {os.geteuid()} and not writable by group or others"
        )
    return fd


def _open_for_reading(directory: Path) -> int:
    """Open a store to read it only: never created, never through a symlink, not writable by others."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ConfigError(f"crash directory {directory}: a symlink or not a directory") from err
        raise  # FileNotFoundError, PermissionError: the caller says what that means
    if os.fstat(fd).st_mode & 0o022:
        os.close(fd)
        raise ConfigError(f"crash directory {directory}: writable by group or others, not tracerd's")
    return fd


def read_json_at(dir_fd: int, name: str) -> Any:
    """A regular JSON file of the crash directory, never via a symlink, at most MAX_FILE bytes."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise ValueError(f"{name}: not a regular file")
        data = handle.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise ValueError(f"{name}: larger than {MAX_FILE} bytes")
    return json.loads(data)
