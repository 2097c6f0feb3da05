"""Cores kept beside the reports: the policy, zstd compression, the budget.

The store asks wanted() whether to keep a tracer's raw core (``core = "none" |
"first" | "all"``); keep() compresses it into ``{crashes}/ID.core.zst``,
atomically, before the process is released.  over_budget() evicts cores (never
reports) for ``max_core_bytes``.  The report's ``core`` field: docs/crashes.md,
"Cores and retrace".

Security: the raw core is tracerd's own file or the watcher's memfd, opened
O_NOFOLLOW, a regular file.  The compressed core is created 0600 relative to
the store's fd: it holds the process's memory (passwords, mail).  Names are the
store's crash ids, never a client's text.

Diagnostics: every core not kept is one line in ``reason``; the compression
stops at ``core_timeout`` and leaves nothing behind.  decompress() raises
CoreError, one line, for a damaged or truncated core.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from dataclasses import dataclass
from typing import Any, BinaryIO

import zstandard

from tracerd import atomic
from tracerd.crash.report import CRASH_ID_RE
from tracerd.errors import NotFound

SUFFIX = ".core.zst"
CHUNK = 1 << 20
LEVEL = 1  # the hold pays for the compression: the fastest level (zero pages cost nothing at any level)
MODE = 0o600


class CoreError(Exception):
    """A core that cannot be kept or read, in one line."""


class CoreTimeout(CoreError):
    """The compression reached ``core_timeout``."""


@dataclass(frozen=True)
class CoreRequest:
    """A raw core a tracer took of a held process, and the rules to keep it by."""

    source: str  # the raw ELF core
    policy: str  # none | first | all
    max_process_bytes: int
    deadline: float  # time.monotonic() by which the core is kept or given up
    timeout: float  # core_timeout, for the reason


def wanted(policy: str, signature_has_core: bool) -> bool:
    """Does the policy keep this report's core?"""
    return policy == "all" or (policy == "first" and not signature_has_core)


def skipped(reason: str, raw_bytes: int | None = None) -> dict[str, Any]:
    return {"state": "skipped", "file": None, "raw_bytes": raw_bytes, "bytes": None, "seconds": None,
            "reason": reason}  # fmt: skip


def core_name(crash_id: str) -> str:
    return crash_id + SUFFIX


def crash_id_of(name: str) -> str | None:
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) and not name.startswith(".") else None


def keep(dir_fd: int, crash_id: str, request: CoreRequest, *, temp_prefix: str) -> dict[str, Any]:
    """Compress ``request.source`` into ``ID.core.zst``; the report's ``core`` field either way."""
    started = time.monotonic()
    try:
        source = _open_source(request.source)
    except OSError as err:
        return skipped(f"core unreadable: {err.strerror or err}")
    with source:
        raw_bytes = written_bytes(source.fileno())
        if raw_bytes > request.max_process_bytes:
            return skipped(f"core of {raw_bytes} bytes is over max_core_process_bytes ({request.max_process_bytes})",
                           raw_bytes)  # fmt: skip
        try:
            stored = atomic.write_stream_at(dir_fd, core_name(crash_id),
                                            lambda fd: _compress(source, fd, request.deadline), MODE,
                                            prefix=temp_prefix)  # fmt: skip
        except CoreTimeout:
            return skipped(f"compression not done within core_timeout ({request.timeout:g} s): no core,"
                           " the process was released", raw_bytes)  # fmt: skip
        except (OSError, zstandard.ZstdError) as err:
            return skipped(f"core not written: {err}", raw_bytes)
    return {"state": "saved", "file": core_name(crash_id), "raw_bytes": raw_bytes, "bytes": stored,
            "seconds": round(time.monotonic() - started, 3), "reason": None}  # fmt: skip


def written_bytes(fd: int) -> int:
    """A raw core's bytes written: its pages, not its holes (a thread's untouched stack is one)."""
    info = os.fstat(fd)
    return min(info.st_size, info.st_blocks * 512)


def keep_by_policy(dir_fd: int, crash_id: str, request: CoreRequest, signature_has_core: bool, *, max_bytes: int,
                   temp_prefix: str) -> dict[str, Any]:  # fmt: skip
    """The policy, then :func:`keep`, then ``max_core_bytes`` for this one core alone."""
    if not wanted(request.policy, signature_has_core):
        return skipped('core = "none"' if request.policy == "none" else 'core = "first": this signature has a core')
    kept = keep(dir_fd, crash_id, request, temp_prefix=temp_prefix)
    if kept["state"] == "saved" and kept["bytes"] > max_bytes:
        with contextlib.suppress(OSError):
            os.unlink(kept["file"], dir_fd=dir_fd)
        return skipped(f"compressed core of {kept['bytes']} bytes is over max_core_bytes ({max_bytes})",
                       kept["raw_bytes"])  # fmt: skip
    return kept


def mark_evicted(report: dict[str, Any], when: str, max_bytes: int) -> bool:
    """Say in a stored report that its core went for the budget; False when it had no core field."""
    core = report.get("core")
    if not isinstance(core, dict):
        return False
    core.update(state="evicted", file=None, evicted=when,
                reason=f"deleted to keep cores under max_core_bytes ({max_bytes})")  # fmt: skip
    return True


def saved_core(dir_fd: int, report: dict[str, Any]) -> str:
    """The name of a report's core in the store ``dir_fd``; NotFound says why there is none."""
    crash_id, core = str(report.get("id")), report.get("core")
    if not CRASH_ID_RE.fullmatch(crash_id):
        raise NotFound("crash report unreadable: its id is not a crash id")
    if not isinstance(core, dict):
        raise NotFound(f"crash {crash_id}: no core (taken by a tracer that keeps none)")
    if core.get("state") != "saved":
        raise NotFound(f"crash {crash_id}: no core: {core.get('reason') or core.get('state')}")
    name = core_name(crash_id)
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as err:
        raise NotFound(f"crash {crash_id}: core {name}: {err.strerror}") from None
    return name


def _open_source(path: str) -> BinaryIO:
    """The raw core: a regular file (or the watcher's memfd), never through a symlink we did not make."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
    if not path.startswith("/proc/"):  # a memfd is reached through the watcher's /proc/PID/fd link
        flags |= os.O_NOFOLLOW
    fd = os.open(path, flags)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(0, "not a regular file")
    return os.fdopen(fd, "rb")


def _compress(source: BinaryIO, fd: int, deadline: float) -> int:
    """zstd of ``source`` written to ``fd``, stopping at ``deadline``; the compressed size."""
    compressor = zstandard.ZstdCompressor(level=LEVEL, write_content_size=False, write_checksum=True)
    out = os.fdopen(os.dup(fd), "wb")
    with out, compressor.stream_writer(out, closefd=False) as writer:
        while chunk := source.read(CHUNK):
            if time.monotonic() > deadline:
                raise CoreTimeout("core_timeout")
            writer.write(chunk)
        writer.flush(zstandard.FLUSH_FRAME)
    return os.fstat(fd).st_size


def decompress(dir_fd: int, name: str, out: BinaryIO) -> int:
    """``name`` (a core of the store ``dir_fd``) decompressed into ``out``; raises CoreError."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as err:
        raise CoreError(f"core {name}: {err.strerror}") from None
    total = 0
    with os.fdopen(fd, "rb") as source:
        if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
            raise CoreError(f"core {name}: not a regular file")
        context = zstandard.ZstdDecompressor()
        frame = context.decompressobj()
        try:
            while data := source.read(CHUNK):
                while data:
                    chunk = frame.decompress(data)
                    out.write(chunk)
                    total += len(chunk)
                    data = frame.unused_data if frame.eof else b""
                    if data:  # the next frame
                        frame = context.decompressobj()
        except zstandard.ZstdError as err:
            raise CoreError(f"core {name}: damaged ({err})") from None
    if total == 0 or not frame.eof:
        raise CoreError(f"core {name}: truncated")
    out.flush()
    return total


def cores_on_disk(dir_fd: int) -> list[tuple[int, str, int]]:
    """(mtime_ns, crash id, size) of every core of the store, oldest first."""
    found = []
    for name in os.listdir(dir_fd):
        crash_id = crash_id_of(name)
        if crash_id is None:
            continue
        with contextlib.suppress(FileNotFoundError):
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            found.append((info.st_mtime_ns, crash_id, info.st_size))
    return sorted(found)


def over_budget(dir_fd: int, max_bytes: int, reports: set[str], keep_id: str | None) -> list[str]:
    """Delete cores to fit ``max_bytes``, reportless first, then oldest, ``keep_id`` last; the ids gone."""
    cores = cores_on_disk(dir_fd)
    total = sum(size for _, _, size in cores)
    order = sorted(cores, key=lambda c: (c[1] in reports, c[1] == keep_id, c[0]))
    evicted = []
    for _, crash_id, size in order:
        if total <= max_bytes:
            break
        try:
            os.unlink(core_name(crash_id), dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        except OSError:
            continue
        total -= size
        evicted.append(crash_id)
    return evicted
