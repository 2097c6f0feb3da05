"""The crash inventory for the commands that are not the daemon (triage, bugreport, tracerctl).

load_inventory() asks the daemon (``crashes``, ``status``), else reads the store
``{state_dir}/crashes`` read-only; store_reply() answers ``crashes`` and ``crash
ID`` from the store while tracerd is down.  CrashInventory.match() ties a
``killed by signal`` log line to a report, or a repeat, by pid, name and time
(docs/crashes.md, "Triage and bug reports").

Security: the files hold strings from crashed programs and are data only: sizes
capped (MAX_JSON), a crash id checked before it names a file, opened O_NOFOLLOW
relative to the crash directory.  Anyone but root and the store's owner gets the
``socket_group`` view (redact.for_group), as from the daemon.

Diagnostics: ``source`` (``daemon``, ``index``, None) and ``error`` say where the
inventory came from, or why not; an unreadable report is None.  StoreUnreadable
carries one line: no store, permission denied, an unsafe directory.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracerd.client import Unreachable, call
from tracerd.config import Config
from tracerd.config import load as load_config
from tracerd.crash import redact
from tracerd.crash.report import CRASH_ID_RE
from tracerd.crash.store import MAX_FILE, CrashStore, read_json_at
from tracerd.errors import ConfigError, NotFound

MAX_JSON = MAX_FILE
LATE = dt.timedelta(minutes=15)  # gdb's backtrace and the store's fsync come before master's log line
EARLY = dt.timedelta(seconds=5)  # log times are truncated to the second
_ID_PID = re.compile(r"(?P<stamp>[0-9TZ]+)-[0-9a-f]+-(?P<pid>\d+)(?:-\d+)?")


@dataclass
class CrashMatch:
    """One crash of one pid, as far as the inventory knows it."""

    crash_id: str  # the full report to read (for a repeat: the signature's, of another pid)
    pid: int
    name: str | None
    time: dt.datetime | None
    signal: str | None
    top: list[str]
    signature: str | None
    report: str | None  # the report's path, when known
    repeat: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.crash_id, "pid": self.pid, "name": self.name,
            "time": self.time.isoformat() if self.time else None, "signal": self.signal,
            "top": self.top, "signature": self.signature, "report": self.report, "repeat": self.repeat,
        }  # fmt: skip

    def describe(self) -> str:
        """One line: ``crash ID: smtpd[4567] SIGSEGV in a < b < c (report PATH)``."""
        where = " < ".join(self.top) or "??"
        text = f"crash {self.crash_id}: {self.name or '?'}[{self.pid}] {self.signal or '?'} in {where}"
        if self.repeat:
            text += " (a repeat: same signature as this report, which is another pid's)"
        if self.report:
            text += f"; report {self.report}"
        return text


@dataclass
class CrashInventory:
    source: str | None = None  # "daemon", "index" or None
    error: str | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)  # docs/json.md's crash JSON
    socket: str | None = None
    directory: Path | None = None
    _extra: list[CrashMatch] = field(default_factory=list)  # sessions' and older reports' crashes
    _reports: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    _candidates: list[CrashMatch] | None = None

    def candidates(self) -> list[CrashMatch]:
        """Every (crash, pid) the inventory knows, built once (match() completes them in place)."""
        if self._candidates is None:
            self._candidates = self._build_candidates()
        return self._candidates

    def _build_candidates(self) -> list[CrashMatch]:
        found: list[CrashMatch] = []
        for entry in self.entries:
            full = _from_entry(entry)
            if full is not None:
                found.append(full)
            for repeat in entry.get("repeats") or []:
                if isinstance(repeat, dict) and isinstance(repeat.get("pid"), int) and isinstance(entry.get("id"), str):
                    found.append(CrashMatch(
                        entry["id"], repeat["pid"], _str(repeat.get("name")), _time(repeat.get("time")),
                        _str(repeat.get("signal")), _names(repeat.get("top")), _str(entry.get("signature")),
                        _str(entry.get("report")), repeat=True,
                    ))  # fmt: skip
        known = {(c.crash_id, c.pid) for c in found}
        found += [c for c in self._extra if (c.crash_id, c.pid) not in known]
        return found

    def match(self, pid: int, name: str | None, when: dt.datetime | None) -> CrashMatch | None:
        """The crash of ``pid`` (named ``name``) closest to ``when``; None when there is none."""
        best: tuple[float, CrashMatch] | None = None
        for candidate in self.candidates():
            if candidate.pid != pid:
                continue
            if candidate.time is None or not candidate.top:
                self._complete(candidate)
            if name and candidate.name and candidate.name != name:
                continue
            if when is not None and candidate.time is not None:
                if not (when - LATE <= candidate.time <= when + EARLY):
                    continue
                distance = abs((when - candidate.time).total_seconds())
            else:
                distance = float("inf")
            if best is None or distance < best[0]:
                best = (distance, candidate)
        return best[1] if best else None

    def report(self, crash_id: str) -> dict[str, Any] | None:
        """The full report (the crash JSON's ``crash``), or None when it cannot be had."""
        if crash_id not in self._reports:
            self._reports[crash_id] = self._fetch(crash_id)
        return self._reports[crash_id]

    def _complete(self, candidate: CrashMatch) -> None:
        # a session or an older report knows its id, not (all of) its time and frames
        if candidate.repeat:
            return
        report = self.report(candidate.crash_id)
        if not report:
            # evicted by max_crash_bytes: its id still says when it was stored, and whose it was
            parsed = _ID_PID.fullmatch(candidate.crash_id)
            if parsed and int(parsed.group("pid")) == candidate.pid and candidate.time is None:
                candidate.time = _time_of_id(parsed.group("stamp"))
            return
        process = report.get("process")
        if isinstance(process, dict):
            candidate.name = candidate.name or _str(process.get("name"))
            if process.get("pid") != candidate.pid:
                # a repeat's session names another pid's report, whose time is not this crash's
                candidate.repeat = True
        if not candidate.repeat:
            candidate.time = candidate.time or _time(report.get("time"))
        candidate.top = candidate.top or _names(report.get("top"))
        signal = report.get("signal")
        if isinstance(signal, dict):
            candidate.signal = candidate.signal or _str(signal.get("name"))
        candidate.signature = candidate.signature or _str(report.get("signature"))

    def _fetch(self, crash_id: str) -> dict[str, Any] | None:
        if not CRASH_ID_RE.fullmatch(crash_id):
            return None
        if self.source == "daemon" and self.socket:
            try:
                reply = call(self.socket, {"op": "crash", "id": crash_id})
            except Unreachable:
                return None
            crash = reply.get("crash")
            return crash if reply.get("ok") and isinstance(crash, dict) else None
        if self.directory is not None:
            try:
                data = read_json(self.directory, f"{crash_id}.json")
            except (OSError, ValueError):
                return None
            if not isinstance(data, dict):
                return None
            try:
                owner = os.stat(self.directory).st_uid
            except OSError:
                owner = -1  # whose it is unknown: the group's view
            return data if privileged_reader(owner) else redact.for_group(data)
        return None


def load_inventory(socket_path: str | None, state_dir: Path | None, timeout: float = 10.0) -> CrashInventory:
    """Ask the daemon; failing that, read ``{state_dir}/crashes``; failing that, say why."""
    reasons: list[str] = []
    if socket_path:
        try:
            reply = call(socket_path, {"op": "crashes"}, timeout=timeout)
            if reply.get("ok") is True and isinstance(reply.get("crashes"), list):
                inventory = CrashInventory("daemon", None, [e for e in reply["crashes"] if isinstance(e, dict)],
                                           socket=socket_path)  # fmt: skip
                lists = _from_report_lists(inventory.entries)
                known = {(c.crash_id, c.pid) for c in lists}
                sessions = [c for c in _from_sessions(socket_path, timeout) if (c.crash_id, c.pid) not in known]
                inventory._extra = lists + sessions
                return inventory
            reasons.append(f"tracerd refused: {reply.get('message') or reply.get('error')}")
        except Unreachable as err:
            reasons.append(str(err))
    if state_dir is not None:
        try:
            with open_store(state_dir) as store:
                entries = store.list()  # most recently seen first, as the daemon lists them
        except StoreUnreadable as err:
            reasons.append(str(err))
        else:
            inventory = CrashInventory("index", "; ".join(reasons) or None, entries, directory=state_dir / "crashes")
            inventory._extra = _from_report_lists(entries)
            return inventory
    return CrashInventory(None, "; ".join(reasons) or "no crash inventory")


class StoreUnreadable(Exception):
    """The crash store cannot be read; ``missing`` when there is none at all."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


def open_store(state_dir: Path) -> CrashStore:
    """tracerd's crash store ``{state_dir}/crashes``, read-only; raises StoreUnreadable with a one-line reason."""
    directory = state_dir / "crashes"
    try:
        return CrashStore(directory, read_only=True)
    except FileNotFoundError:
        raise StoreUnreadable(f"no crash store in {directory}", missing=True) from None
    except PermissionError:
        raise StoreUnreadable(f"crash store {directory}: permission denied"
                              " (reading it needs root, or read access to tracerd's state_dir)") from None  # fmt: skip
    except ConfigError as err:
        raise StoreUnreadable(str(err)) from None
    except (OSError, ValueError) as err:
        raise StoreUnreadable(f"crash store {directory}: unreadable ({err})") from None


def store_reply(command: str, crash_id: str | None, state_dir: Path) -> dict[str, Any]:
    """The daemon's reply to ``crashes`` or ``crash ID``, read from the store; raises StoreUnreadable."""
    with open_store(state_dir) as store:
        origin = {"source": "store", "store": str(store.directory)}
        if command == "crashes":
            return {"ok": True, "crashes": store.list(), **origin}
        try:
            report = store.get(str(crash_id))
        except NotFound as err:
            return {"ok": False, "error": err.code, "message": str(err), **origin}
        if not privileged_reader(os.fstat(store.fd).st_uid):
            report = redact.for_group(report)
        return {"ok": True, "crash": report, **origin}


def privileged_reader(owner: int) -> bool:
    """Root and the store's owner see whole reports, as the daemon answers; others the redacted view."""
    return os.geteuid() in (0, owner)


def default_state_dir() -> Path:
    """tracerd's state_dir as its configuration says ($TRACERD_CONFIG, /etc/tracerd/tracerd.toml, defaults)."""
    try:
        return load_config().state_dir
    except ConfigError:
        return Config().state_dir  # a broken config is tracerd --check's to report, not ours


def read_json(directory: Path, name: str) -> Any:
    """A JSON file of the crash directory, never through a symlink, at most MAX_JSON bytes."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return read_json_at(dir_fd, name)
    finally:
        os.close(dir_fd)


def _from_entry(entry: dict[str, Any]) -> CrashMatch | None:
    if not isinstance(entry.get("pid"), int) or not isinstance(entry.get("id"), str):
        return None
    # not last_seen, which may be a later repeat's: the report's own time is read when the pid matches
    return CrashMatch(entry["id"], entry["pid"], _str(entry.get("name")), None, _str(entry.get("signal")),
                      _names(entry.get("top")), _str(entry.get("signature")), _str(entry.get("report")))  # fmt: skip


def _from_sessions(socket_path: str, timeout: float) -> list[CrashMatch]:
    """Crashed sessions the daemon still lists: older full reports the index entry no longer names."""
    try:
        reply = call(socket_path, {"op": "status"}, timeout=timeout)
    except Unreachable:
        return []
    found = []
    for session in reply.get("sessions") or []:
        if isinstance(session, dict) and isinstance(session.get("crash"), str) and isinstance(session.get("pid"), int):
            found.append(CrashMatch(session["crash"], session["pid"], _str(session.get("name")), None,
                                    _str(session.get("signal")), [], None, None))  # fmt: skip
    return found


def _from_report_lists(entries: list[dict[str, Any]]) -> list[CrashMatch]:
    """Every full report a signature lists in the index file (its pid is the id's last number)."""
    found = []
    for entry in entries:
        for crash_id in entry.get("reports") or []:
            parsed = _ID_PID.fullmatch(crash_id) if isinstance(crash_id, str) else None
            if parsed and crash_id != entry.get("id"):
                latest = entry.get("report")
                report = str(Path(latest).with_name(f"{crash_id}.json")) if isinstance(latest, str) else None
                found.append(CrashMatch(crash_id, int(parsed.group("pid")), None, None, None, [],
                                        _str(entry.get("signature")), report))  # fmt: skip
    return found


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _names(value: object) -> list[str]:
    return [str(v) for v in value][:5] if isinstance(value, list) else []


def _time_of_id(stamp: str) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def _time(value: object) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo else when.astimezone()
