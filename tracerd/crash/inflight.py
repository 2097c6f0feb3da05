"""Captures in flight: a marker per crash being captured, and the cores of them.

``{state_dir}/capture/`` holds, while a crash is captured, a marker
``PID.START.json`` (who, which signal, when, which tracer) and the watcher's
core.  A marker found at start is a capture tracerd did not live to finish: the
process died of its signal anyway, and the crash is listed as an interrupted
capture (docs/design.md, "Reliability").

Security: the directory is created 0700 and must be ours, a real directory, not
writable by others; markers are written O_EXCL|O_NOFOLLOW and read back as
size-capped JSON.  Other files are left alone, but our own stale ``*.core``.

Diagnostics: a marker that cannot be written is skipped and the capture goes on
(a record, not a lock: that crash then goes unlisted if interrupted); one that
cannot be read is removed.
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
    """Markers of captures that never ended, removed as read; stale cores removed.  Once, at start."""
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
