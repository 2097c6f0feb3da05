"""Per-process log files: ``{log_dir}/{name}.{pid}.log``.

:class:`LogDir` holds the directory by fd (a swapped one redirects nothing
until SIGHUP). The loop only queues bytes; one LogWriter thread writes, so a
slow or full disk never stalls a tracer, nor through it Postfix.

Security: log_dir must be ours, no symlink, writable by nobody else. A log
opens O_NOFOLLOW|O_NONBLOCK (no planted symlink or FIFO), never O_TRUNC (pid
reuse keeps the old log), and must be a regular file of ours with one link.

Diagnostics: a bad log_dir raises ConfigError (fatal at start); a log that
cannot open raises OSError (UnsafeLogFile if planted): its session fails. An
open log never raises: lost lines count in ``dropped``, the error is
``error``, reported once via ``on_error``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tracerd.errors import ConfigError
from tracerd.sinks.logwriter import _CLOSE, _REOPEN, _WRITE

if TYPE_CHECKING:
    from tracerd.sinks.logwriter import LogWriter

TRUNCATION_LINE = "tracerd: log truncated at {limit} bytes; further output dropped"
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeLogFile(OSError):
    """Something that must not be written is at a log's path (symlink, FIFO, hard link)."""


def check_log_name(filename: str) -> None:
    """Refuse a name that is not one plain entry of the directory (ValueError)."""
    if not filename or "/" in filename or "\0" in filename or filename.startswith("."):
        raise ValueError(f"unsafe log file name {filename!r}")


class LogDir:
    """The log directory, held open by fd; opens logs below it."""

    def __init__(self, path: Path, *, max_log_bytes: int, writer: LogWriter) -> None:
        self.path = path
        self.max_log_bytes = max_log_bytes
        self.writer = writer
        # guards _fd (loop opens, writer reopens, SIGHUP swaps): a closed fd could be reused
        self._lock = threading.Lock()
        self._fd: int | None = _open_dir(path)

    def open_log(self, filename: str) -> LogFile:
        """Open (create or append to) ``filename`` in the directory."""
        check_log_name(filename)
        return LogFile(self, filename, self._open_file(filename))

    def reopen_dir(self) -> None:
        """SIGHUP: open the directory afresh; ConfigError keeps the old fd."""
        fd = _open_dir(self.path)
        with self._lock:
            old, self._fd = self._fd, fd
        if old is not None:
            os.close(old)

    def close(self) -> None:
        with self._lock:
            old, self._fd = self._fd, None
        if old is not None:
            os.close(old)

    def _open_file(self, filename: str) -> int:
        path = str(self.path / filename)
        with self._lock:
            if self._fd is None:
                raise OSError(errno.EBADF, "log directory is closed", path)
            try:
                fd = os.open(filename, _FILE_FLAGS, 0o640, dir_fd=self._fd)
            except OSError as err:
                if err.errno == errno.ELOOP:
                    raise UnsafeLogFile(errno.ELOOP, "is a symlink; refused", path) from err
                if err.errno == errno.ENXIO:  # O_NONBLOCK open of a FIFO or socket
                    raise UnsafeLogFile(errno.ENXIO, "not a regular file; refused", path) from err
                raise
        try:
            _check_log_fd(fd, path)
        except OSError:
            os.close(fd)
            raise
        return fd


def _open_dir(path: Path) -> int:
    # the lstat gives the clear message; O_NOFOLLOW closes the race after it
    if path.is_symlink():
        raise ConfigError(f"{path} is a symlink; refusing to write logs through it", key="log_dir")
    try:
        path.mkdir(mode=0o750, parents=True, exist_ok=True)
        fd = os.open(path, _DIR_FLAGS)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ConfigError(f"{path} is a symlink; refusing to write logs through it",
                              key="log_dir") from err  # fmt: skip
        raise ConfigError(f"cannot open {path}: {err.strerror}", key="log_dir") from err
    info = os.fstat(fd)
    problem = None
    if info.st_uid != os.geteuid():
        problem = f"{path} is owned by uid {info.st_uid}, not {os.geteuid()}; chown it"
    elif info.st_mode & 0o022:
        problem = f"{path} is writable by group or others; chmod go-w {path}"
    if problem:
        os.close(fd)
        raise ConfigError(problem, key="log_dir")
    return fd


def _check_log_fd(fd: int, path: str) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeLogFile(errno.EINVAL, "not a regular file; refused", path)
    if info.st_nlink > 1:
        raise UnsafeLogFile(errno.EMLINK, f"has {info.st_nlink} hard links; refused", path)
    if info.st_uid != os.geteuid():
        raise UnsafeLogFile(errno.EPERM, f"is owned by uid {info.st_uid}; refused", path)


class LogFile:
    """One process's log. Loop thread: write_*, reopen, close. Writer thread: the rest.

    The cap counts this object's bytes, not the file's: one budget per process."""

    def __init__(self, logdir: LogDir, filename: str, fd: int) -> None:
        self.name = filename
        self.path = logdir.path / filename
        self.lines = 0
        self.bytes = 0
        self.truncated = False
        self.error: str | None = None
        self.on_error: Callable[[str], None] | None = None
        self._logdir = logdir
        self._writer = logdir.writer
        self._limit = logdir.max_log_bytes
        self._fd: int | None = fd  # after construction, touched by the writer thread only
        self._refused = 0  # loop thread (one counter per thread)
        self._lost = 0  # writer thread
        self._closed = False
        self._midline = False  # writer: a partial write left the file mid-line

    @property
    def dropped(self) -> int:
        return self._refused + self._lost

    @property
    def closed(self) -> bool:
        return self._closed

    def write_line(self, text: str) -> None:
        """Queue one line; never blocks. Dropped and counted when it cannot be queued."""
        self._accept([text])

    def write_lines(self, lines: list[str]) -> None:
        """Queue several lines as one write (what one read of a tracer brought)."""
        self._accept(lines)

    def write_block(self, text: str) -> None:
        """Queue several lines at once (a backtrace), under the same rules."""
        lines = text.split("\n")
        if len(lines) > 1 and lines[-1] == "":
            lines.pop()
        self._accept(lines)

    def reopen(self) -> None:
        """SIGHUP: reopen by name, in order with the queued lines (logrotate)."""
        if not self._closed:
            self._writer.submit(self, _REOPEN, b"", 0, force=True)

    def close(self, final_line: str | None = None) -> None:
        """Queue ``final_line`` (past the cap too), then close once it is written."""
        if self._closed:
            return
        self._closed = True
        if final_line is not None:
            data = _encode(final_line.rstrip("\n"))
            if self._writer.submit(self, _WRITE, data, 1, force=True):
                self.lines += 1
                self.bytes += len(data)
            else:
                self._refused += 1
        self._writer.submit(self, _CLOSE, b"", 0, force=True)

    def _accept(self, lines: list[str]) -> None:
        if self._closed or self.truncated:
            self._refused += len(lines)
            return
        chunk = bytearray()
        taken = 0
        for line in lines:
            data = _encode(line)
            if self.bytes + len(chunk) + len(data) > self._limit:
                break
            chunk += data
            taken += 1
        if chunk:
            if self._writer.submit(self, _WRITE, bytes(chunk), taken):
                self.lines += taken
                self.bytes += len(chunk)
            else:
                self._refused += taken
        if taken < len(lines):
            self._refused += len(lines) - taken
            # forced past the queue budget: one line per file saying why the log stops
            self.truncated = True
            marker = _encode(TRUNCATION_LINE.format(limit=self._limit))
            if self._writer.submit(self, _WRITE, marker, 1, force=True):
                self.lines += 1
                self.bytes += len(marker)

    # -- writer thread ------------------------------------------------------

    def _write(self, data: bytes, nlines: int) -> None:
        if self._fd is None:
            self._lost += nlines
            return
        if self._midline:
            # the previous chunk was cut by a write error: start a fresh line
            data = b"\n" + data
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except OSError as err:
            if written:
                self._midline = data[written - 1] != ord("\n")
            self._lost += min(nlines, data.count(b"\n", written))
            self._fail(err.strerror or str(err))
            return
        self._midline = False
        self.error = None

    def _reopen(self) -> None:
        try:
            fd = self._logdir._open_file(self.name)
        except OSError as err:
            self._fail(f"reopen failed: {err.strerror or err}")
            return
        old, self._fd = self._fd, fd
        self._midline = False
        if old is not None:
            os.close(old)

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _fail(self, message: str) -> None:
        first = self.error is None
        self.error = message
        if first and self.on_error is not None:
            # a broken reporter must not stop the writer for every other log
            with contextlib.suppress(Exception):
                self.on_error(message)


def _encode(line: str) -> bytes:
    return line.encode("utf-8", "replace") + b"\n"
