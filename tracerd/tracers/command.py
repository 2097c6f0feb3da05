"""Shared machinery of the command-line tracers: strace, ltrace, truss, ktrace, perf.

Each is one program run from an argv list as ``PROGRAM [ARGS] -p PID``.  The
attachment is confirmed by the kernel: /proc/PID/status names the tracer's
pid as TracerPid (perf, no ptrace tracer, has its own :meth:`confirmed` and
its checks in :meth:`preflight`: :mod:`tracerd.tracers.perf`).  The end of
the traced process is seen through a pidfd; how
it ended (exit status or signal) is read from the tracer's own closing line
(``+++ exited with 3 +++``), since only the real parent can wait for it.
strace and ltrace lines are read by :mod:`tracerd.tracers.tracecrash`
whatever the rule's output options (``-f``, ``-t``/``-tt``/``-ttt``, ``-r``,
``-i``, ``-T``); a process killed by a fatal signal gets a crash report of
what the tracer saw (docs/design.md "Tracers").  Once the process is gone and its
ending read, a tracer still tracing its children (``-f``) is told to detach:
they run on untraced, and the session ends without waiting for them.

Security: arguments come from root's config file only; the pid is an identity
checked by the caller and re-checked through the pidfd.

Diagnostics: a tracer that exits before attaching fails the session with its
last output line as the reason ("strace: attach: ptrace(PTRACE_SEIZE, 42):
Operation not permitted"); a tracer that dies while the process lives marks
the session ``failed`` and the process runs on untraced.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections import deque
from typing import Any, ClassVar

from tracerd import procinfo
from tracerd.crash.siginfo import FATAL_SIGNALS
from tracerd.errors import Busy, TargetGone, TracerFailed
from tracerd.spawn import Child
from tracerd.tracers.base import Ending, Tracer, poll_until
from tracerd.tracers.tracecrash import TraceObserver, process_info

LAST_WORDS = 5.0  # seconds the tracer has to print the process's ending once it is gone
EXIT_AFTER_ENDING = 1.0  # seconds the tracer has to exit by itself after that line


class CommandTracer(Tracer):
    """A tracer that is a separate program attached with ``-p PID``."""

    program: ClassVar[str]
    # group "pid" (optional), then "code" or "signal"
    ending_re: ClassVar[re.Pattern[str] | None] = None
    # strace or ltrace: their lines are read by a TraceObserver instead of ending_re
    dialect: ClassVar[str | None] = None
    detach_signal: ClassVar[int] = signal.SIGTERM
    # the tracer exits by itself (status 0) once the process is gone, maybe just before the pidfd says so
    exits_with_target: ClassVar[bool] = False

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.child: Child | None = None
        self._pidfd = -1
        self._gone: asyncio.Future[None] | None = None
        self._ending: Ending | None = None
        self._recent: deque[str] = deque(maxlen=4)
        self._detaching = False
        self._observer = TraceObserver(self.target.pid, self.dialect) if self.dialect else None
        self._ending_seen = asyncio.Event()
        self._process: dict[str, Any] = {}

    def argv(self) -> list[str]:
        return [self.program, *self.target.args, "-p", str(self.target.pid)]

    def parse_ending(self, line: str) -> Ending | None:
        """The traced process's end, when ``line`` is the tracer's word on it."""
        if self.ending_re is None:
            return None
        match = self.ending_re.search(line)
        if not match:
            return None
        pid = match.groupdict().get("pid")
        if pid is not None and int(pid) != self.target.pid:
            return None  # a thread or child under -f, not the process itself
        if match.group("signal"):
            name = match.group("signal")
            return Ending("crashed" if name in FATAL_SIGNALS else "exited", signal=name)
        return Ending("exited", exit_code=int(match.group("code")))

    def _on_lines(self, lines: list[str]) -> None:
        if self._observer is not None:
            if self._observer.feed(lines):
                self._ending = self._observer.ending
                self._ending_seen.set()
        elif self._ending is None:
            for line in lines:
                # the closing line starts with "+++" (or "[pid N] +++" under -f)
                if "+++" in line[:24]:
                    self._ending = self.parse_ending(line)
                    if self._ending is not None:
                        self._ending_seen.set()
                        break
        self._recent.extend(lines[-4:])
        self.output.lines(lines)

    async def preflight(self) -> None:
        """Refuse before the tracer runs: a ptrace tracer cannot attach to a traced process."""
        current = procinfo.tracer_pid(self.target.pid)
        if current:
            raise Busy(f"process {self.target.pid} is already traced by pid {current}")

    def confirmed(self, child: Child) -> bool:
        """The kernel's word that ``child`` is attached: TracerPid names it."""
        return procinfo.tracer_pid(self.target.pid) == child.pid

    async def attach(self) -> None:
        pid = self.target.pid
        await self.preflight()
        self._pidfd = procinfo.open_pidfd(self.target.identity)
        loop = asyncio.get_running_loop()
        self._gone = loop.create_future()
        loop.add_reader(self._pidfd, self._process_gone)
        self.child = child = Child(self.argv(), self._on_lines, coalesce=0.01)
        self.tracer_pid = child.pid

        def attached() -> bool:
            if child.returncode is not None:
                return True
            try:
                return self.confirmed(child)
            except TargetGone:
                return True

        try:
            await poll_until(attached, self.target.attach_timeout, "attach")
        except asyncio.CancelledError:
            # given up on from above: a tracer must not attach after we left
            await asyncio.shield(child.stop(signal.SIGKILL))
            self._release()
            raise
        except TimeoutError:
            await child.stop(signal.SIGKILL)
            self._release()
            raise TracerFailed(
                f"{self.program} did not attach within {self.target.attach_timeout} s"
                " (raise attach_timeout?)"
            ) from None
        if child.returncode is not None:
            await child.wait()
            self._release()
            reason = self._recent[-1] if self._recent else f"exit status {child.returncode}"
            if not self.target.identity.alive():
                raise TargetGone(f"process {pid} ended while {self.program} attached ({reason})")
            raise TracerFailed(f"{self.program} could not attach: {reason}")
        if not self.target.identity.alive():
            await child.stop()
            self._release()
            raise TargetGone(f"process {pid} ended while {self.program} attached")
        self._process = process_info(self.target.identity, self.target.name)

    def _process_gone(self) -> None:
        if self._pidfd >= 0:
            asyncio.get_running_loop().remove_reader(self._pidfd)
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)

    async def wait(self) -> Ending:
        assert self.child is not None
        assert self._gone is not None
        child = self.child
        tracer_done = asyncio.ensure_future(child.wait())
        waiting: set[asyncio.Future[Any]] = {tracer_done, self._gone}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if self._detaching:
                await tracer_done
                return Ending("detached")
            if self._gone.done():
                await self._last_words(tracer_done)
                return await self._finish()
            code = tracer_done.result()
            if (code == 0 and self.exits_with_target) or self._ending is not None:
                # the tracer saw the process go and left first: the pidfd is about to say so
                await asyncio.wait({self._gone}, timeout=LAST_WORDS)
            if self._gone.done() or not self.target.identity.alive():
                return await self._finish()
            last = self._recent[-1] if self._recent else ""
            return Ending("failed", reason=f"{self.program} ended with status {code} {last}".strip())
        finally:
            if not tracer_done.done():
                tracer_done.cancel()
            self._release()

    async def _last_words(self, tracer_done: asyncio.Future[int]) -> None:
        """The process is gone: let the tracer print its ending, then make sure it ends.

        Under -f it may trace children still: told to detach, they run on untraced.
        """
        assert self.child is not None
        seen = asyncio.ensure_future(self._ending_seen.wait())
        either: set[asyncio.Future[Any]] = {tracer_done, seen}
        try:
            await asyncio.wait(either, timeout=LAST_WORDS, return_when=asyncio.FIRST_COMPLETED)
            if seen.done() and not tracer_done.done():
                await asyncio.wait({tracer_done}, timeout=EXIT_AFTER_ENDING)
        finally:
            seen.cancel()
        if not tracer_done.done():
            await self.child.stop(self.detach_signal)

    async def _finish(self) -> Ending:
        """How the process ended; a fatal signal seen by strace or ltrace gets its crash report."""
        ending = self._ending or Ending("exited", reason="exit status unknown")
        if self._observer is None or not self._observer.crashed():
            return ending
        crash_id = None
        try:
            report = self._observer.report(self._process, self.name, self.output.log_path)
            crash_id = await self.output.crash(report)
        except Exception as err:  # the session must still end, and say how
            self.output.warn(f"crash report failed: {err}")
        return Ending("crashed", signal=ending.signal, crash=crash_id)

    async def detach(self) -> None:
        if self.child is None or self.child.returncode is not None:
            return
        self._detaching = True
        await self.child.stop(self.detach_signal)

    def _release(self) -> None:
        if self._pidfd >= 0:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._pidfd)
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = -1
        if self.child is not None and self.child.returncode is not None:
            self.child.close()
