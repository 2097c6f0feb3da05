"""Captures in flight: a marker per crash being captured, and the cores of them.

``{state_dir}/capture/`` holds, while a crash is captured, one marker
``PID.START.json`` (who crashed, of which signal, when, which tracer) and,
for the watch tracer, the core file the watcher wrote.  Both are removed
when the capture ends.  A marker found when tracerd starts is a capture
that tracerd (or the machine) did not live to finish: the process died of
its signal all the same (see docs/design.md, "Reliability"), and the crash is
recorded as an *interrupted capture*, with what the marker knew.

Security: the directory is created 0700 and must be a real directory owned
by us, not writable by others; markers are written with O_EXCL|O_NOFOLLOW
and read back only as JSON data, size-capped.  Any other file there is
left alone, except our own stale ``*.core`` files.

Diagnostics: a marker that cannot be written (disk full) is skipped and the
capture goes on (a marker is a record, not a lock); then an interrupted
capture goes unlisted.  One that cannot be read is skipped and removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tracerd.errors import ConfigError

MAX_MARKER = 16384


def prepare(directory: Path) -> Path:
    """Create the capture directory if needed and check it is ours alone."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{directory}: not a directory")
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise ConfigError(f"{directory}: must be ours and not writable by others")
    return directory


@contextlib.contextmanager
def marker(directory: Path | None, record: dict[str, Any]) -> Iterator[Path | None]:
    """A marker that exists exactly while the capture of ``record`` runs."""
    path = None
    if directory is not None:
        candidate = directory / f"{int(record['pid'])}.{int(record['start'])}.json"
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, json.dumps({**record, "marked": time.time()}).encode())
            finally:
                os.close(fd)
            path = candidate
        except OSError:
            path = None
    try:
        yield path
    finally:
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)


def leftovers(directory: Path) -> list[dict[str, Any]]:
    """Markers of captures that never ended (removed as they are read), and
    stale cores removed.  Call once at start, before any capture."""
    found: list[dict[str, Any]] = []
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return found
    for name in names:
        path = directory / name
        if name.endswith((".core", ".core.part")):
            with contextlib.suppress(OSError):
                os.unlink(path)
            continue
        if not name.endswith(".json"):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                data = json.loads(os.read(fd, MAX_MARKER))
            finally:
                os.close(fd)
            if isinstance(data, dict) and isinstance(data.get("pid"), int):
                found.append(data)
        except (OSError, ValueError):
            pass
        with contextlib.suppress(OSError):
            os.unlink(path)
    return found
