"""``{state_dir}/sessions.json``: the attached sessions, for the next tracerd.

One writer task rewrites the file whole (tracerd.atomic) in a thread, at most
once per :data:`COALESCE_SECONDS`; entries not yet re-adopted (``pending``)
stay. At SIGTERM :meth:`SessionsFile.freeze` writes the sessions as they are
before the detach and records no more. Format: docs/design.md, "Files".

Security: root's file (0600), still read as hostile (tracerd.daemon.resume
checks every entry); :func:`load` refuses a symlink, over :data:`MAX_BYTES`,
and a file not ours or writable by group or others.

Diagnostics: a failed write logs ``sessions_file_failed`` once and is retried
on the next change; an unusable file raises SessionsFileError in one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from tracerd.atomic import write_file

log = structlog.get_logger("tracerd")
NAME = "sessions.json"
VERSION = 1
COALESCE_SECONDS = 0.1
MAX_BYTES = 16 * 1024 * 1024
Snapshot = Callable[[], list[dict[str, Any]]]


class SessionsFileError(Exception):
    """sessions.json cannot be used at all; the message says why."""


def load(state_dir: Path) -> list[Any]:
    """The raw entries of ``state_dir/sessions.json`` ([] when there is none)."""
    path = state_dir / NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return []
    except OSError as err:
        reason = "is a symlink" if err.errno == errno.ELOOP else err.strerror
        raise SessionsFileError(f"{path}: {reason}") from err
    with os.fdopen(fd, "rb") as stream:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_BYTES:
            raise SessionsFileError(f"{path}: not a regular file of at most {MAX_BYTES} bytes")
        if info.st_uid != os.geteuid() or info.st_mode & 0o022:
            raise SessionsFileError(
                f"{path}: owned by uid {info.st_uid} with mode {info.st_mode & 0o7777:04o};"
                f" only a file of uid {os.geteuid()} that nobody else may write is read"
            )
        raw = stream.read(MAX_BYTES + 1)
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise SessionsFileError(f"{path}: not JSON ({err})") from None
    if not isinstance(document, dict) or document.get("version") != VERSION:
        raise SessionsFileError(f'{path}: not a version {VERSION} sessions file ({{"version": 1, ...}})')
    entries = document.get("sessions")
    if not isinstance(entries, list):
        raise SessionsFileError(f'{path}: "sessions" is not a list')
    return entries


class SessionsFile:
    """The writer of sessions.json; :meth:`changed` is the runner's on_change hook."""

    def __init__(self, state_dir: Path, snapshot: Snapshot, coalesce: float = COALESCE_SECONDS) -> None:
        self.path = state_dir / NAME
        self.snapshot = snapshot
        self.coalesce = coalesce
        self.pending: dict[int, dict[str, Any]] = {}  # loaded, not re-adopted yet: kept in the file
        self.writes = 0
        self._dirty = False
        self._frozen = False
        self._failing = False
        self._task: asyncio.Task[None] | None = None
        self._lock = threading.Lock()  # never an older snapshot after a newer
        self._encoded = self._written = 0
        self._last = float("-inf")  # loop time of the last write's start

    def changed(self) -> None:
        if self._frozen:
            return
        self._dirty = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    def encode(self) -> bytes:
        entries = self.snapshot()
        seen = {entry["pid"] for entry in entries}
        entries += [entry for pid, entry in self.pending.items() if pid not in seen]
        return json.dumps({"version": VERSION, "sessions": entries}, separators=(",", ":")).encode() + b"\n"

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._dirty and not self._frozen:
            await asyncio.sleep(max(0.0, self._last + self.coalesce - loop.time()))
            self._last = loop.time()
            self._dirty = False
            self._encoded += 1
            await asyncio.to_thread(self._write, self.encode(), self._encoded)

    def _write(self, data: bytes, sequence: int) -> None:
        with self._lock:
            if sequence > self._written:
                self._write_locked(data, sequence)

    def _write_locked(self, data: bytes, sequence: int) -> None:
        try:
            write_file(self.path, data, 0o600)
        except OSError as err:
            if not self._failing:
                log.error("sessions_file_failed", path=str(self.path), error=str(err))
            self._failing = True
            return
        self._failing = False
        self._written = sequence
        self.writes += 1

    async def freeze(self, timeout: float = 1.0) -> None:
        """SIGTERM: write the sessions as they are now, then record no more changes."""
        self._frozen = True
        if self._task is not None and not self._task.done():
            with contextlib.suppress(Exception):
                await asyncio.wait({self._task}, timeout=timeout)
            self._task.cancel()
        self._encoded += 1
        self._write(self.encode(), self._encoded)
