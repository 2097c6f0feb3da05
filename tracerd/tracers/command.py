"""Shared machinery of the command-line tracers: strace, ltrace, truss, ktrace, perf.

Each runs as ``PROGRAM [ARGS] -p PID``; TracerPid confirms the attachment
(perf has its own :meth:`confirmed`).  A pidfd sees the process end; its
exit status or signal comes from the tracer's closing line (``+++ exited
with 3 +++``).  strace and ltrace lines go to
:mod:`tracerd.tracers.tracecrash`: a fatal signal gets a crash report.  A
tracer still tracing children (``-f``) once the process is gone is told to
detach; they run on untraced.

Security: arguments come from root's config only; the pid is an identity
checked by the caller and re-checked through the pidfd.

Diagnostics: a tracer that exits before attaching fails the session with
its last line as the reason; one that dies while the process lives marks
the session ``failed``, the process runs on untraced.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections import deque
from typing import Any, ClassVar

from tracerd import procinfo
from tracerd.crash.siginfo import FATAL_SIGNALS
from tracerd.errors import Busy, TargetGone, TracerFailed
from tracerd.spawn import Child
from tracerd.tracers.base import Ending, ExitWatch, Tracer, poll_until
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
        self._exit: ExitWatch | None = None
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
        self._exit = ExitWatch(self.target.identity)
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

    async def wait(self) -> Ending:
        assert self.child is not None
        assert self._exit is not None
        child = self.child
        gone = self._exit.gone
        tracer_done = asyncio.ensure_future(child.wait())
        waiting: set[asyncio.Future[Any]] = {tracer_done, gone}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if self._detaching:
                await tracer_done
                return Ending("detached")
            if gone.done():
                await self._last_words(tracer_done)
                return await self._finish()
            code = tracer_done.result()
            if (code == 0 and self.exits_with_target) or self._ending is not None:
                # the tracer saw the process go and left first: the pidfd is about to say so
                await asyncio.wait({gone}, timeout=LAST_WORDS)
            if gone.done() or not self.target.identity.alive():
                return await self._finish()
            last = self._recent[-1] if self._recent else ""
            return Ending("failed", reason=f"{self.program} ended with status {code} {last}".strip())
        finally:
            if not tracer_done.done():
                tracer_done.cancel()
            self._release()

    async def _last_words(self, tracer_done: asyncio.Future[int]) -> None:
        """The process is gone: let the tracer print its ending, then end it (children run on untraced)."""
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
        if self._exit is not None:
            self._exit.close()
        if self.child is not None and self.child.returncode is not None:
            self.child.close()
