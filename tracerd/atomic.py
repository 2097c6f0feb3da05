"""The one atomic file writer: readers see the old file or all of the new one.

A temporary file beside the target (O_EXCL|O_NOFOLLOW), written, fsync'd,
renamed over the target, then the directory fsync'd.  All relative to a
directory fd the caller holds, so a directory swapped for a symlink is not followed.

Security: mode (and owner, if given) set on the open file before the rename,
whatever the umask; the name must be a plain file name.

Diagnostics: any OSError is raised after the temporary file is removed; the
target is then untouched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path


def write_at(
    dir_fd: int, name: str, data: bytes, mode: int = 0o600, *,
    owner: tuple[int, int] | None = None, prefix: str = ".tracerd-",
) -> None:  # fmt: skip
    """Replace ``name`` in the directory ``dir_fd`` by ``data``, atomically and durably."""

    def fill(fd: int) -> int:
        if owner is not None:
            os.fchown(fd, *owner)
            os.fchmod(fd, mode)  # chown clears the set-id bits
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        return len(data)

    write_stream_at(dir_fd, name, fill, mode, prefix=prefix)


def write_file(path: Path, data: bytes, mode: int = 0o600, *, owner: tuple[int, int] | None = None,
               prefix: str = ".tracerd-") -> None:  # fmt: skip
    """:func:`write_at` for a path."""
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        write_at(dir_fd, path.name, data, mode, owner=owner, prefix=prefix)
    finally:
        os.close(dir_fd)


def write_stream_at(
    dir_fd: int, name: str, fill: Callable[[int], int], mode: int = 0o600, *, prefix: str = ".tracerd-",
) -> int:  # fmt: skip
    """:func:`write_at` streaming: ``fill(fd)`` writes the temporary file and returns its size."""
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"not a file name: {name!r}")
    temp = prefix + secrets.token_hex(8)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        try:
            os.fchmod(fd, mode)
            size = fill(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)
    return size
