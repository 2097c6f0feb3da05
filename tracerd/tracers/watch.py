"""The watch backend (the default): the shared ptrace watcher, gdb only at a crash.

A session costs a few kilobytes in the watcher and no process of its own.
The hook is confirmed as soon as PTRACE_SEIZE succeeded on every thread.
When the watcher reports ``fatal``, the process is stopped and untraced: one
gdb is started for this crash only, captures the full report (the same as
the gdb tracer's), detaches, and exits; then we make sure the process dies
of that same signal (a fault re-faults at once; a signal sent by kill() is
sent again through a pidfd, so a recycled pid can never receive it).

``where`` hands the process to gdb for a live backtrace and seizes it again.

Security: the watcher checks (pid, start time) before seizing; every signal
we send goes through a pidfd of the very process.

Diagnostics: the watcher dying ends the session ``failed`` with
``reattach``: tracerd traces the process again if it still runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from tracerd import procinfo
from tracerd.capture import capture
from tracerd.errors import TargetGone, TracerdError, TracerFailed
from tracerd.gdbmi import GdbMI
from tracerd.procinfo import ProcessIdentity
from tracerd.release import make_it_die
from tracerd.tracers.base import FATAL_SIGNALS, Ending, Tracer
from tracerd.watchclient import supervisor

FOLLOW_FORKS = "follow-forks"


class WatchTracer(Tracer):
    name = "watch"
    program = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.supervisor = supervisor()
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._in_where = False

    # -- WatchClient ----------------------------------------------------------

    def on_event(self, event: dict[str, Any]) -> None:
        if event.get("event") == "released" and self._in_where:
            return
        self.events.put_nowait(event)

    def on_watcher_died(self) -> None:
        self.events.put_nowait({"event": "watcher_died"})

    # -- Tracer ---------------------------------------------------------------

    async def attach(self) -> None:
        await self._seize()

    async def _seize(self) -> None:
        identity = self.target.identity
        follow = FOLLOW_FORKS in self.target.args
        await self.supervisor.seize(self, identity.pid, identity.start, follow, self.target.attach_timeout)
        self.tracer_pid = self.supervisor.pid

    async def wait(self) -> Ending:
        while True:
            event = await self.events.get()
            kind = event.get("event")
            pid = int(event.get("pid", self.target.pid))
            main = pid == self.target.pid
            if kind == "watcher_died":
                return Ending("failed", reason="the ptrace watcher died; tracing again", reattach=True)
            if kind == "released":
                return Ending("detached")
            if kind == "gone":
                return Ending("exited", reason="ended while handed to gdb")
            if kind == "exited":
                if main:
                    return Ending("exited", exit_code=int(event["code"]))
                self.output.line(f"tracerd: child {pid} exited with status {event['code']}")
            elif kind == "killed":
                name = str(event["signal"])
                if main:
                    return Ending("crashed" if name in FATAL_SIGNALS else "exited", signal=name)
                self.output.line(f"tracerd: child {pid} killed by {name}")
            elif kind == "fatal":
                crash_id = await self._crash(event)
                if main:
                    self.supervisor.forget(pid)
                    return Ending("crashed", signal=str(event["signal"]), crash=crash_id)

    async def detach(self) -> None:
        await self.supervisor.release(self.target.pid)

    async def where(self) -> str:
        """Hand the process to gdb for a backtrace of every thread, then watch it again."""
        identity = self.target.identity
        self._in_where = True
        try:
            await self.supervisor.release(identity.pid)
        finally:
            self._in_where = False
        try:
            return await _gdb_backtrace(identity)
        finally:
            try:
                await self._seize()
            except TargetGone:
                self.events.put_nowait({"event": "gone"})
            except TracerdError as err:
                self.output.warn(f"could not watch again after where: {err}")
                self.events.put_nowait({"event": "released"})

    # -- crashes --------------------------------------------------------------

    async def _crash(self, event: dict[str, Any]) -> str | None:
        """One gdb for this crash: capture, detach, exit; then the process dies."""
        pid, signal_name = int(event["pid"]), str(event["signal"])
        try:
            identity = procinfo.identify(pid)
            pidfd = procinfo.open_pidfd(identity)
        except TargetGone:
            return None
        crash_id = None
        try:
            crash_id = await self._capture(identity, event)
        except Exception as err:  # whatever happened, the process must be released
            self.output.warn(f"crash capture failed: {err}")
        finally:
            await make_it_die(pidfd, identity, signal_name, int(event.get("si_code") or 0), self.output.warn)
            os.close(pidfd)
        return crash_id

    async def _capture(self, identity: ProcessIdentity, event: dict[str, Any]) -> str | None:
        mi = GdbMI()
        try:
            await mi.start()
            await mi.command(f"-target-attach {identity.pid}", timeout=30.0)
            await asyncio.wait_for(mi.stops.get(), 30.0)
            thread_id = await _gdb_thread_of(mi, int(event["tid"]))
            stop = {"signal-name": event["signal"], "thread-id": thread_id}
            name = self.target.name if identity.pid == self.target.pid else f"{self.target.name}-child"
            report = await capture(mi, identity, name, stop, tracer=self.name, log_path=self.output.log_path)
            # gdb saw our SIGSTOP; the watcher saw the real signal
            report.signal["si_code"] = event.get("si_code")
            report.signal["fault_address"] = event.get("fault_address")
            return await self.output.crash(report)
        finally:
            with contextlib.suppress(TracerdError):
                await mi.command("-target-detach", timeout=10.0)
            await mi.close()


async def _gdb_thread_of(mi: GdbMI, tid: int) -> str:
    info = await mi.command("-thread-info", timeout=30.0)
    for thread in info.payload.get("threads", []):
        if f"LWP {tid})" in str(thread.get("target-id", "")):
            return str(thread["id"])
    return "1"


async def _gdb_backtrace(identity: ProcessIdentity) -> str:
    mi = GdbMI()
    try:
        await mi.start()
        identity.require()
        await mi.command(f"-target-attach {identity.pid}", timeout=30.0)
        await asyncio.wait_for(mi.stops.get(), 30.0)
        return (await mi.console("thread apply all bt", timeout=60.0)).strip()
    except TimeoutError as err:
        raise TracerFailed("gdb did not stop the process in time") from err
    finally:
        with contextlib.suppress(TracerdError):
            await mi.command("-target-detach", timeout=10.0)
        await mi.close()
