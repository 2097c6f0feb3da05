"""Tracer child processes, run from argv lists and drained by the event loop.

Each tracer runs via Popen in its own session (a ^C for tracerd does not reach
it), under ``setpriv --pdeathsig TERM`` where present (it dies with tracerd;
preexec_fn is unsafe with threads).  Exit is watched by pidfd, not a SIGCHLD
watcher (no thread per child).  Output is always drained, whole lines at once;
stdin writes never block (at most MAX_INPUT_PENDING queued).

Security: argv lists only, never a shell; close_fds; the caller's env.

Diagnostics: TracerUnavailable (not installed) or TracerFailed (cannot start,
cannot be watched, not reading its input).  A child that cannot be watched is
killed and reaped first, so no attached tracer runs on unowned.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence

from tracerd.errors import TracerFailed, TracerUnavailable

MAX_LINE = 64 * 1024
READ_SIZE = 256 * 1024
F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20
MAX_INPUT_PENDING = 1 << 20  # bytes a tracer may leave unread on its stdin
SETPRIV = shutil.which("setpriv")


def restart_delay(deaths_in_a_row: int, first: float, most: float) -> float:
    """Backoff before restarting a helper: 0, then ``first`` doubling per death in a row, up to ``most``."""
    if deaths_in_a_row <= 0:
        return 0.0
    return float(min(first * 2 ** min(deaths_in_a_row - 1, 16), most))


class Child:
    """One tracer process: argv, merged stdout+stderr split into lines, exit status."""

    def __init__(
        self,
        argv: Sequence[str],
        on_lines: Callable[[list[str]], None],
        *,
        stdin: bool = False,
        env: dict[str, str] | None = None,
        pdeathsig: bool = True,
        coalesce: float = 0.0,
        max_line: int = MAX_LINE,
    ) -> None:
        self.argv = list(argv)
        self._max_line = max_line
        if pdeathsig and SETPRIV and shutil.which(self.argv[0]):
            argv = [SETPRIV, "--pdeathsig", "TERM", "--", *self.argv]
        self._on_lines = on_lines
        self._coalesce = coalesce
        self._loop = asyncio.get_running_loop()
        self._partial = b""
        self._inbox = bytearray()  # stdin bytes the pipe has not taken yet
        self._in = -1
        self._out = -1
        self._exited: asyncio.Future[int] = self._loop.create_future()
        self._eof = asyncio.Event()
        try:
            self.proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=env,
            )
        except FileNotFoundError as err:
            raise TracerUnavailable(f"{self.argv[0]} is not installed on this system") from err
        except OSError as err:
            raise TracerFailed(f"cannot start {self.argv[0]}: {err.strerror}") from err
        self.pid = self.proc.pid
        self._pidfd = -1
        try:
            self._watch(coalesce)
        except BaseException as err:
            # it runs (and may already hold a process): nobody would ever stop it
            self._abandon()
            if isinstance(err, OSError):
                raise TracerFailed(f"cannot watch {self.argv[0]}: {err.strerror or err}") from err
            raise

    def _watch(self, coalesce: float) -> None:
        assert self.proc.stdout is not None
        self._out = self.proc.stdout.fileno()
        os.set_blocking(self._out, False)
        if self.proc.stdin is not None:
            self._in = self.proc.stdin.fileno()
            os.set_blocking(self._in, False)
        if coalesce:
            # room for bursts while we let the pipe gather (pipe-max-size permitting)
            with contextlib.suppress(OSError):
                fcntl.fcntl(self._out, F_SETPIPE_SZ, PIPE_SIZE)
        self._loop.add_reader(self._out, self._read)
        self._pidfd = os.pidfd_open(self.pid)
        self._loop.add_reader(self._pidfd, self._reap)

    def _abandon(self) -> None:
        """Kill and reap a child we could not start watching; release what we hold."""
        with contextlib.suppress(OSError):
            self.proc.kill()  # setpriv execs the tracer: same pid
        self.proc.wait()
        if self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
        self.close()

    def _read(self) -> None:
        try:
            chunk = os.read(self._out, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._loop.remove_reader(self._out)
            if self._partial:
                self._emit([self._partial])
                self._partial = b""
            self._eof.set()
            return
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        while len(self._partial) > self._max_line:
            lines.append(self._partial[: self._max_line])
            self._partial = self._partial[self._max_line :]
        if lines:
            self._emit(lines)
        if self._coalesce and len(chunk) < READ_SIZE and self._out >= 0:
            # a wake-up per line costs more than the line: let the 1 MiB pipe gather a moment
            self._loop.remove_reader(self._out)
            self._loop.call_later(self._coalesce, self._rearm)

    def _rearm(self) -> None:
        if self._out >= 0 and not self._eof.is_set():
            self._loop.add_reader(self._out, self._read)

    def _emit(self, raw: list[bytes]) -> None:
        # one call per read, not per line: a chatty strace costs us per chunk
        self._on_lines([line.decode("utf-8", "replace").rstrip("\r") for line in raw])

    def _reap(self) -> None:
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        code = self.proc.wait()
        if not self._exited.done():
            self._exited.set_result(code)

    @property
    def returncode(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    async def wait(self) -> int:
        """Wait for exit and for the last of the output; returns Popen's returncode."""
        code = await asyncio.shield(self._exited)
        # read the last words; bounded, since a grandchild may hold the pipe open
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._eof.wait(), timeout=2.0)
        return code

    def write(self, data: bytes) -> None:
        """``data`` to stdin, in order, never blocking; the rest is fed by the loop.  TracerFailed
        (nothing sent) past MAX_INPUT_PENDING; OSError (EPIPE) when the tracer is gone."""
        stdin = self.proc.stdin
        if stdin is None or stdin.closed:
            raise TracerFailed(f"{self.argv[0]} has no stdin")
        if len(self._inbox) + len(data) > MAX_INPUT_PENDING:
            raise TracerFailed(f"{self.argv[0]} is not reading its input ({len(self._inbox)} bytes waiting)")
        if not self._inbox:
            try:
                sent = os.write(self._in, data)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
            self._loop.add_writer(self._in, self._feed)
        self._inbox += data

    def _feed(self) -> None:
        try:
            if self.proc.stdin is None or self.proc.stdin.closed:
                raise BrokenPipeError
            sent = os.write(self._in, self._inbox)
        except BlockingIOError:
            return
        except OSError:  # the tracer is gone (or its stdin was closed): its exit says so
            sent = len(self._inbox)
        del self._inbox[:sent]
        if not self._inbox:
            self._loop.remove_writer(self._in)

    async def exit_or_kill(self, timeout: float) -> int:
        """Wait up to ``timeout`` for the child to end, then stop it."""
        try:
            return await asyncio.wait_for(asyncio.shield(self.wait()), timeout=timeout)
        except TimeoutError:
            return await self.stop(grace=1.0)

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    async def stop(self, signum: int = signal.SIGTERM, grace: float = 3.0) -> int:
        """Ask the tracer to end with ``signum``; SIGKILL it after ``grace`` seconds."""
        self.send_signal(signum)
        try:
            return await asyncio.wait_for(self.wait(), timeout=grace)
        except TimeoutError:
            self.send_signal(signal.SIGKILL)
            return await self.wait()

    def close(self) -> None:
        """Release the pipes once the child is gone."""
        if self._out >= 0:
            self._loop.remove_reader(self._out)
        if self._inbox:
            self._inbox.clear()
            self._loop.remove_writer(self._in)
        for stream in (self.proc.stdout, self.proc.stdin):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._out = -1
