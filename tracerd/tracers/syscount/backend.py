"""The syscount backend: a session is its pid in the shared bpftrace's map (docs/syscount.md).

attach: the refusals of :mod:`tracerd.tracers.syscount.check`, the shared
bpftrace started if need be (:mod:`tracerd.tracers.syscount.loader`), the pid
put in ``@pids``.  The target is never stopped: eBPF counts its system calls
in the kernel.  Every ``interval`` seconds and at the end the log gets a
``strace -c``-shaped table (:mod:`tracerd.tracers.syscount.table`).  A pidfd
sees the end; the exit status is bpftrace's (sched_process_exit).
``tracerctl detach`` takes the pid out of the map.

Security: the target is an identity checked by the caller and re-checked
through the pidfd; nothing the target does reaches a parser but counts.

Diagnostics: a refusal fails the session with its one line; a dead bpftrace
is restarted and the session goes on (one log line says what was lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

from tracerd.errors import TracerFailed
from tracerd.tracers.base import Ending, ExitWatch, Tracer
from tracerd.tracers.syscount import check, loader, table

EXIT_WORD_WAIT = 1.0  # seconds to wait for bpftrace's exit line once the pidfd says the process is gone
TOP = 15  # rows of tracerctl show


class SyscountTracer(Tracer):
    name = "syscount"
    program = "bpftrace"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loader = loader.loader()
        settings = self.target.syscount
        self.interval = float(getattr(settings, "interval", 10.0))
        self.latency = bool(getattr(settings, "latency", False))
        self._exit: ExitWatch | None = None
        self._detached = asyncio.Event()
        self._failed: str | None = None
        self._status: int | None = None
        self._status_seen = asyncio.Event()
        self._last_table = 0.0
        self._deaths = 0

    @classmethod
    def unavailable(cls) -> str | None:
        running = loader.current()
        if running is not None and running.pid is not None:
            return None  # bpftrace runs: no PATH search per session
        return check.missing_program()  # the rest (BTF, capabilities, tracefs) before bpftrace starts

    @classmethod
    async def shutdown(cls) -> None:
        running = loader.current()
        if running is not None:
            await running.stop()

    @classmethod
    def counters(cls) -> dict[str, int]:
        running = loader.current()
        return running.counters() if running is not None else {}

    # -- loader.Client --------------------------------------------------------

    def on_exit(self, code: int) -> None:
        self._status = code
        self._status_seen.set()

    def on_failed(self, reason: str) -> None:
        self._failed = reason
        self._detached.set()

    def tick(self) -> None:
        """The loader has read the maps: log the table when this session's interval has passed."""
        now = asyncio.get_running_loop().time()
        self._note_death()
        if now - self._last_table >= self.interval - 0.05:
            self._last_table = now
            self._log_table("so far")

    def _note_death(self) -> None:
        if self.loader.died != self._deaths:
            self._deaths = self.loader.died
            self.output.line("tracerd: syscount's bpftrace died and was restarted; calls since its last read are"
                             " not counted")  # fmt: skip

    # -- Tracer ---------------------------------------------------------------

    async def attach(self) -> None:
        self._exit = ExitWatch(self.target.identity)
        try:
            await self.loader.add(self.target.pid, self, self.target.name, self.interval, self.latency)
        except BaseException:
            self._release()
            raise
        self._deaths = self.loader.died
        self._last_table = asyncio.get_running_loop().time()
        self.tracer_pid = self.loader.pid
        if self.loader.latency != self.latency:
            self.output.line(f"tracerd: syscount latency is {'on' if self.loader.latency else 'off'} until the"
                             " shared bpftrace restarts (tracerd restart)")  # fmt: skip

    async def wait(self) -> Ending:
        """The process's end (pidfd) or a detach; then the last read and table, the pid out of the map."""
        assert self._exit is not None
        gone = self._exit.gone
        detached = asyncio.ensure_future(self._detached.wait())
        waiting: set[asyncio.Future[Any]] = {gone, detached}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            detached.cancel()
        if gone.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._status_seen.wait(), EXIT_WORD_WAIT)
        counts = await self.loader.remove(self.target.pid)
        self._release()
        self._note_death()
        self._write_table(counts, "at the end")
        if not gone.done():
            return Ending("failed", reason=self._failed) if self._failed else Ending("detached")
        return self._ending()

    def _ending(self) -> Ending:
        status = self._status
        if status is None:
            return Ending("exited", reason="exit status unknown")
        if status & 0x7F:
            name = signal.Signals(status & 0x7F).name if status & 0x7F in signal.valid_signals() else str(status & 0x7F)
            return Ending("exited", signal=name)
        return Ending("exited", exit_code=(status >> 8) & 0xFF)

    async def detach(self) -> None:
        self._detached.set()

    def _log_table(self, when: str) -> None:
        tally = self.loader.tallies.get(self.target.pid)
        if tally is not None:
            self._write_table(tally.totals(), when)

    def _write_table(self, counts: table.Counts, when: str) -> None:
        timed = self.latency and self.loader.latency
        lines = [f"tracerd: syscount {when}: system calls of {self.target.name}[{self.target.pid}] and its"
                 " threads and children since the attach"]  # fmt: skip
        lines += table.render(counts.rows(), timed)
        if timed:
            lines += table.histogram(counts)
        self.output.lines(lines)

    async def syscalls(self) -> list[dict[str, Any]]:
        """The live top system calls (tracerctl show), read now."""
        with contextlib.suppress(TracerFailed):
            await self.loader.read()
        tally = self.loader.tallies.get(self.target.pid)
        return tally.totals().rows(TOP) if tally is not None else []

    def _release(self) -> None:
        if self._exit is not None:
            self._exit.close()
