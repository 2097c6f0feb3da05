"""Hand a process to a human's gdb, and take it back when that gdb lets go.

``tracerctl gdb PID`` and ``--next NAME`` (docs/debugging.md). Phases: giving
(the tracer lets go of it stopped, or it waits in its hook), held (TracerPid
names the human's tracer), returning (traced again, then SIGCONT). TracerPid
changes with no event, so it is polled, less often as a hold goes on
(:func:`poll_interval`).

Security: the request handler authorizes (root) and checks the target; here
every act is on a (pid, start time) identity, signals go through a pidfd. The
human's tracer is whatever TracerPid names, trusted no further.

Diagnostics: ``handed_off``/``handed_back`` log lines (with untraced ms); a
hand-off that ends without a human, or a failed take-back, is a syslog warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from tracerd import procinfo
from tracerd.daemon.runner import SessionRunner
from tracerd.daemon.sessions import Session
from tracerd.errors import Busy, TargetGone, TracerdError, TracerFailed
from tracerd.procinfo import ProcessIdentity
from tracerd.sinks.syslog import LOG_WARNING, SyslogSink
from tracerd.timefmt import iso_utc

log = structlog.get_logger("tracerd")
POLL = 0.002  # seconds between the first looks at TracerPid
POLL_MAX = 0.1  # ... and between the looks of a long hold
POLL_SHARE = 0.02  # the interval grows to this share of the time waited so far
GIVE_TIMEOUT = 60.0  # tracerctl gdb PID: the human's gdb must attach within this


def poll_interval(waited: float) -> float:
    """Seconds until the next look at TracerPid, ``waited`` seconds into a phase."""
    return min(POLL_MAX, max(POLL, waited * POLL_SHARE))


@dataclass
class HandOff:
    identity: ProcessIdentity
    name: str
    tracer: str | None  # tracerd's tracer to give it back to (None: the rules' choice)
    by: int  # tracerctl's pid
    bound: float  # seconds for the human's gdb to attach
    why: str  # "gdb PID" or "--next NAME"
    give_back: bool = True  # False: tracerd did not trace it; only SIGCONT on the way back
    since: str = field(default_factory=iso_utc)
    state: str = "giving"  # giving | held | returning
    human: int = 0  # the human's tracer pid, once attached
    watched: list[tuple[int, str]] = field(default_factory=list)  # (pid, why its end matters)
    attached: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    returned: asyncio.Future[Session | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    untraced_ms: float | None = None

    @property
    def pid(self) -> int:
        return self.identity.pid

    def to_json(self) -> dict[str, Any]:
        exe = root = None
        with contextlib.suppress(OSError):
            exe = os.readlink(f"/proc/{self.pid}/exe")
        with contextlib.suppress(OSError):
            root = os.readlink(f"/proc/{self.pid}/root")
        return {
            "pid": self.pid, "name": self.name, "tracer": self.tracer, "by": self.by, "since": self.since,
            "state": self.state, "gdb_pid": self.human or None, "exe": exe, "root": root, "bound": self.bound,
            "untraced_ms": self.untraced_ms,
        }  # fmt: skip


class HandOffs:
    """Every process a human's gdb holds now, and how each goes back."""

    def __init__(self, runner: SessionRunner, sink: Callable[[], SyslogSink]) -> None:
        self.runner = runner
        self._sink = sink
        self.active: dict[int, HandOff] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def to_json(self) -> list[dict[str, Any]]:
        return [handoff.to_json() for handoff in self.active.values()]

    def _start(self, handoff: HandOff) -> HandOff:
        self.active[handoff.pid] = handoff
        task = asyncio.get_running_loop().create_task(self._run(handoff))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info("handed_off", pid=handoff.pid, name=handoff.name, tracer=handoff.tracer, by=handoff.by)
        return handoff

    def _check_free(self, identity: ProcessIdentity) -> None:
        if identity.pid in self.active:
            first = self.active[identity.pid]
            raise Busy(f"process {identity.pid} is already handed to tracerctl pid {first.by} ({first.state})")

    async def give(self, identity: ProcessIdentity, name: str, by: int) -> HandOff:
        """``tracerctl gdb PID``: take the process from its tracer, stopped."""
        self._check_free(identity)
        session = self.runner.registry.current(identity)
        tracer: str | None = None
        give_back = False
        if session is not None and session.running is not None:
            running = session.running
            hand_off = getattr(running.backend, "hand_off", None)
            if hand_off is None:
                raise TracerFailed(
                    f"tracerctl gdb needs the watch or gdb tracer (pid {identity.pid} has {session.tracer})"
                )
            await asyncio.shield(running.attached)
            tracer, name, give_back = session.tracer, session.name, True
            await hand_off()
            if running.task is not None:
                await asyncio.wait({running.task}, timeout=10.0)
        else:
            other = procinfo.tracer_pid(identity.pid)
            if other:
                raise Busy(f"process {identity.pid} is traced by pid {other}, not by tracerd")
        handoff = HandOff(identity, name, tracer, by, GIVE_TIMEOUT, f"gdb {identity.pid}", give_back=give_back)
        handoff.watched.append((by, "tracerctl ended"))
        return self._start(handoff)

    def caught(self, identity: ProcessIdentity, name: str, tracer: str | None, *, by: int, hold: float,
               hook: int) -> HandOff:  # fmt: skip
        """A hook's process for an armed catch: held in its hook until the human's gdb attaches."""
        self._check_free(identity)
        handoff = HandOff(identity, name, tracer, by, hold, f"--next {name}")
        handoff.watched += [(by, "tracerctl ended"), (hook, "pftrace-hook gave up (its --timeout)")]
        return self._start(handoff)

    async def _run(self, handoff: HandOff) -> None:
        reason = None
        try:
            reason = await self._wait_human(handoff)
            if reason is None:
                handoff.state = "held"
                log.info("gdb_attached", pid=handoff.pid, gdb=handoff.human)
                await self._wait_let_go(handoff)
        except TargetGone:
            reason = "ended"
        except Exception:  # a bug here must not leave the process stopped
            log.exception("handoff_failed", pid=handoff.pid)
            reason = "internal error"
        finally:
            if not handoff.attached.done():
                handoff.attached.set_result(False)
            try:
                await self._take_back(handoff, reason)
            finally:
                self.active.pop(handoff.pid, None)

    async def _wait_human(self, handoff: HandOff) -> str | None:
        """None once the human's tracer holds the process; else why it goes back without one."""
        started = time.monotonic()
        deadline = started + handoff.bound
        fds: list[tuple[int, str]] = []
        try:
            for pid, why in handoff.watched:
                with contextlib.suppress(TargetGone):
                    fds.append((procinfo.open_pidfd(procinfo.identify(pid)), why))
            ours = self.runner.tracer_pids()
            while True:
                handoff.identity.require()
                tracer = procinfo.tracer_pid(handoff.pid)
                if tracer and tracer not in ours:
                    handoff.human = tracer
                    handoff.attached.set_result(True)
                    return None
                if time.monotonic() >= deadline:
                    return f"nobody attached within {handoff.bound:g} s"
                ended = [why for fd, why in fds if select.select([fd], [], [], 0)[0]]
                if ended:
                    return ended[0]
                await asyncio.sleep(poll_interval(time.monotonic() - started))
        finally:
            for fd, _ in fds:
                os.close(fd)

    async def _wait_let_go(self, handoff: HandOff) -> None:
        """Until the human's tracer lets go (TracerPid 0); the kernel tells nobody, so poll."""
        started = time.monotonic()
        while True:
            if not procinfo.tracer_pid(handoff.pid):
                break
            await asyncio.sleep(poll_interval(time.monotonic() - started))
        handoff.identity.require()

    async def _take_back(self, handoff: HandOff, reason: str | None) -> None:
        """Trace it again (when tracerd traced it, or it was caught at its hook), then SIGCONT."""
        handoff.state = "returning"
        untraced = time.monotonic()
        if reason == "ended" or not handoff.identity.alive():
            if not handoff.returned.done():
                handoff.returned.set_result(None)
            log.info("handoff_ended", pid=handoff.pid, name=handoff.name)
            return
        if reason is not None:
            message = (f"tracerd: {handoff.name}[{handoff.pid}]: tracerctl {handoff.why}: {reason}; "
                       + ("traced again" if handoff.give_back else "it runs on"))  # fmt: skip
            self._sink().send(LOG_WARNING, message)
            log.warning("handoff_unused", pid=handoff.pid, name=handoff.name, reason=reason)
        session: Session | None = None
        try:
            if handoff.give_back:
                session = await self.runner.start(handoff.identity, handoff.name, handoff.tracer)
        except TracerdError as err:
            self._sink().send(LOG_WARNING, f"tracerd: {handoff.name}[{handoff.pid}]: not traced again after "
                                           f"tracerctl {handoff.why}: {err}")  # fmt: skip
            log.warning("handback_failed", pid=handoff.pid, error=str(err))
            if not handoff.returned.done():
                handoff.returned.set_exception(err)
                handoff.returned.exception()
        finally:
            handoff.untraced_ms = round((time.monotonic() - untraced) * 1000, 3)
            with contextlib.suppress(TracerdError, OSError):
                pidfd = procinfo.open_pidfd(handoff.identity)
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGCONT)
                finally:
                    os.close(pidfd)
        if not handoff.returned.done():
            handoff.returned.set_result(session)
        log.info("handed_back", pid=handoff.pid, name=handoff.name, tracer=session.tracer if session else None,
                 untraced_ms=handoff.untraced_ms)  # fmt: skip

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
