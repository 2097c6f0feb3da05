"""The one writer thread behind every per-process log (see tracerd.sinks.logfile).

The loop queues bytes here, bounded; one daemon thread writes them,
coalescing consecutive writes to one file.

Security: writes only through the LogFile objects it is handed (fds opened
safely by LogDir).

Diagnostics: over its bound a line is dropped and counted on its LogFile; a
write error is recorded there, never raised into the loop.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Protocol


class LogFile(Protocol):
    """What the writer needs of a :class:`tracerd.sinks.logfile.LogFile`."""

    _lost: int

    def _write(self, data: bytes, nlines: int) -> None: ...

    def _reopen(self) -> None: ...

    def _close_fd(self) -> None: ...

    def _fail(self, error: str) -> None: ...


DEFAULT_QUEUE_BYTES = 8 << 20
_WRITE, _REOPEN, _CLOSE = "write", "reopen", "close"  # what a queued item asks of its LogFile
_COALESCE_BYTES = 64 << 10  # one write(2) per burst for a file, not one per line

_Item = tuple[LogFile, str, bytes, int]  # (file, op, data, lines in data)


class LogWriter:
    """One daemon thread writing for every log, fed by a byte-bounded queue."""

    def __init__(self, max_queue_bytes: int = DEFAULT_QUEUE_BYTES) -> None:
        self.max_queue_bytes = max_queue_bytes
        self._items: deque[_Item] = deque()
        self._queued = 0
        self._busy = False
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._ended = False

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tracerd-logwriter",
                                                daemon=True)  # fmt: skip
                self._thread.start()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is written; False on timeout."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._items and not self._busy, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, then end the thread (started first if it never was)."""
        self.start()
        self.flush(timeout)
        with self._lock:
            self._stopping = True
            self._work.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def submit(self, logfile: LogFile, op: str, data: bytes, nlines: int,
               *, force: bool = False) -> bool:  # fmt: skip
        """Queue an operation; False when over budget (unless forced) or stopped."""
        with self._lock:
            if not self._ended:
                if not force and self._queued + len(data) > self.max_queue_bytes:
                    return False
                self._items.append((logfile, op, data, nlines))
                self._queued += len(data)
                self._work.notify()
                return True
        # the thread has ended: nobody else touches the fd any more
        if op == _CLOSE:
            logfile._close_fd()
            return True
        return False

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._items and not self._stopping:
                    self._work.wait()
                if not self._items:
                    self._ended = True
                    return
                item = self._take()
                self._busy = True
            try:
                self._perform(item)
            finally:
                with self._lock:
                    self._queued -= len(item[2])
                    self._busy = False
                    self._idle.notify_all()

    def _take(self) -> _Item:
        logfile, op, data, nlines = self._items.popleft()
        if op != _WRITE:
            return logfile, op, data, nlines
        parts = [data]
        size = len(data)
        while self._items and size < _COALESCE_BYTES:
            nxt = self._items[0]
            if nxt[0] is not logfile or nxt[1] != _WRITE:
                break
            self._items.popleft()
            parts.append(nxt[2])
            size += len(nxt[2])
            nlines += nxt[3]
        return logfile, op, b"".join(parts), nlines

    @staticmethod
    def _perform(item: _Item) -> None:
        logfile, op, data, nlines = item
        try:
            if op == _WRITE:
                logfile._write(data, nlines)
            elif op == _REOPEN:
                logfile._reopen()
            else:
                logfile._close_fd()
        except Exception as err:  # a bug here must not end writing for every log
            logfile._lost += nlines
            logfile._fail(f"internal error: {err}")
