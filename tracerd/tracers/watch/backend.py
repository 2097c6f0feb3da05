"""The watch backend (the default): the shared ptrace watcher, gdb only at a crash.

A session costs a few kilobytes in the watcher, no process of its own; the
hook is confirmed once every thread is seized.  On ``fatal`` the watcher holds
the process and writes a core; the warm gdb reads the core (never the live
process), the report is written, then ``finish`` lets the process die of its
signal.  If tracerd, watcher or gdb dies meanwhile it still dies of it, and a
marker lists the crash as an interrupted capture.  ``where`` hands the process
to gdb for a backtrace and seizes it again.

Security: the watcher checks (pid, start time) before seizing; every signal we
send goes through a pidfd; gdb opens only a sysroot of verified files.

Diagnostics: the watcher dying ends the session ``failed`` with ``reattach``;
gdb failing or out of time gives the fallback report.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import Any

import structlog

from tracerd import arch, failpoint, procinfo
from tracerd.crash import corefile, fallback
from tracerd.crash.release import wait_for_death
from tracerd.crash.report import CrashReport
from tracerd.crash.siginfo import FATAL_SIGNALS
from tracerd.errors import Busy, TargetGone, TracerdError, TracerFailed
from tracerd.gdb import sysroot, warm
from tracerd.gdb.capture import capture, left, process_info
from tracerd.gdb.mi import GdbMI, quote
from tracerd.procinfo import ProcessIdentity
from tracerd.tracers.base import Ending, Tracer
from tracerd.tracers.watch import supervisor as supervisors
from tracerd.tracers.watch.supervisor import discard_core, supervisor

log = structlog.get_logger("tracerd.watch")
FOLLOW_FORKS = "follow-forks"
HANDED_OFF = "handed to an interactive gdb: tracerctl gdb"


class WatchTracer(Tracer):
    name = "watch"
    program = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.supervisor = supervisor()
        if self.target.capture_dir:
            self.supervisor.capture_dir = self.target.capture_dir
        self.supervisor.core_limit = self.target.core_limit  # applies from the watcher's next start
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._in_where = False
        self._capturing = False  # a crash being captured dies, it is not let go of
        self.handed_off = False  # released for tracerctl gdb

    @classmethod
    async def shutdown(cls) -> None:
        """The watcher releases every process and exits; the warm gdb pool stops."""
        running = supervisors.current()
        pool = warm.current()
        try:
            if running is not None:
                await running.stop()
        finally:
            if pool is not None:
                await pool.stop()

    @classmethod
    def unavailable(cls) -> str | None:
        return arch.watch_unsupported()

    @classmethod
    def counters(cls) -> dict[str, int]:
        running = supervisors.current()
        return running.counters() if running is not None else {}

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
        warm.pool().ensure()  # a gdb ready for this process's crash

    async def _seize(self) -> None:
        identity = self.target.identity
        follow = FOLLOW_FORKS in self.target.args
        await self.supervisor.seize(self, identity.pid, identity.start, follow, self.target.attach_timeout)
        self.tracer_pid = self.supervisor.pid

    async def wait(self) -> Ending:
        try:
            return await self._wait()
        finally:
            self.supervisor.forget(self.target.pid, self)

    async def _wait(self) -> Ending:
        while True:
            event = await self.events.get()
            kind = event.get("event")
            pid = int(event.get("pid", self.target.pid))
            main = pid == self.target.pid
            if kind == "watcher_died":
                return Ending("failed", reason="the ptrace watcher died; tracing again", reattach=True)
            if kind == "released":
                return Ending("detached", reason=HANDED_OFF if self.handed_off else None)
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
                self._capturing = True
                try:
                    crash_id = await self._crash(event)
                finally:
                    self._capturing = False
                if main:
                    return Ending("crashed", signal=str(event["signal"]), crash=crash_id)

    def _not_capturing(self) -> None:
        if self._capturing:
            raise Busy(f"pid {self.target.pid}: crash capture in progress (it dies of its signal once captured)")

    async def detach(self) -> None:
        self._not_capturing()
        await self.supervisor.release(self.target.pid)

    async def hand_off(self) -> None:
        """Let go of the process *stopped*, for tracerctl gdb: SIGSTOP is queued before the detach,
        so it never runs untraced."""
        self._not_capturing()
        self.handed_off = True
        pidfd = procinfo.open_pidfd(self.target.identity)
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGSTOP)
        finally:
            os.close(pidfd)
        await self.detach()

    async def where(self) -> str:
        identity = self.target.identity
        self._not_capturing()
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
        """gdb on the watcher's core; then the process dies."""
        pid, signal_name = int(event["pid"]), str(event["signal"])
        try:
            identity = procinfo.identify(pid)
            pidfd = procinfo.open_pidfd(identity)
        except TargetGone:
            discard_core(event)
            return None
        crash_id = None
        name = self.target.name if identity.pid == self.target.pid else f"{self.target.name}-child"
        try:
            with self.output.capturing(identity, name, signal_name):
                try:
                    await failpoint.reached("capture-start")
                    crash_id = await self._capture(identity, name, event)
                except Exception as err:  # whatever happened, the process must be released
                    self.output.warn(f"crash capture failed: {err}")
                finally:
                    discard_core(event)
            await failpoint.reached("report-written")
            await self.supervisor.finish(pid)
            await wait_for_death(pidfd, identity, signal_name, self.output.warn)
        finally:
            os.close(pidfd)
        return crash_id

    async def _capture(self, identity: ProcessIdentity, name: str, event: dict[str, Any]) -> str | None:
        """gdb's report within :func:`gdb_budget`, else crash.fallback's."""
        began = time.monotonic()
        steps: dict[str, float] = {}
        report: CrashReport | None = None
        allowed = gdb_budget(identity.pid)
        try:
            async with asyncio.timeout(allowed + 1.0):  # backstop of each step's deadline
                report = await self._gdb_report(identity, name, event, began + allowed, steps)
        except (TracerdError, TimeoutError, OSError) as err:
            reason = str(err) or f"gdb did not finish within {allowed:g} s"
            log.warning("watch_capture_without_gdb", pid=identity.pid, reason=reason)
            process = process_info(identity, name)
            report = await asyncio.to_thread(fallback.report, process, event, reason, tracer=self.name,
                                             log_path=self.output.log_path)  # fmt: skip
        core = event.get("core")
        if core and not event.get("core_skipped"):
            report.core_source = str(core)  # kept as the core policy says
        steps["capture_ms"] = time.monotonic() - began
        await failpoint.reached("capture-running")
        if event.get("core_skipped"):
            report.process.setdefault("capture_errors", []).append(
                "memory left out of the core (over its size limit): " + "; ".join(event["core_skipped"])
            )
            report.core = corefile.skipped(
                f"process over max_core_process_bytes ({self.target.core_limit}): memory left out, no core kept"
            )
        crash_id = await self.output.crash(report)
        steps["report_ms"] = time.monotonic() - began
        # cumulative ms (bench/crash_latency.py reads these)
        log.info("watch_capture", pid=identity.pid, **{k: round(v * 1000, 1) for k, v in steps.items()})
        return crash_id

    async def _gdb_report(self, identity: ProcessIdentity, name: str, event: dict[str, Any], deadline: float,
                          steps: dict[str, float]) -> CrashReport:  # fmt: skip
        """gdb on the core, its files from a sysroot of verified files, each step bounded by ``deadline``."""
        core = event.get("core")
        if not core:
            raise TracerFailed(str(event.get("core_error") or "the watcher wrote no core"))
        if not sysroot.PLAIN_PATH.fullmatch(str(core)):  # -target-select takes no quoting
            raise TracerFailed(f"gdb cannot open a core at {core!r}: use a plain state_dir path")
        began = time.monotonic()
        root = await asyncio.to_thread(sysroot.build, identity.pid, self.target.capture_dir)
        try:
            async with warm.pool().borrow() as mi:
                steps["gdb_ms"] = time.monotonic() - began

                def budget(timeout: float = 30.0) -> float:
                    remaining = left(deadline, timeout)
                    if remaining is None:
                        raise TracerFailed(f"gdb did not load the core within {gdb_budget(identity.pid):g} s")
                    return remaining

                for command in sysroot.gdb_commands(root.path):
                    await mi.command(command, timeout=budget())
                await mi.command(f"-file-exec-and-symbols {quote(_executable(identity.pid, root))}", timeout=budget())
                await mi.command(f"-target-select core {core}", timeout=budget())
                if event["signal"] == "SIGABRT":  # __abort_msg must be the core's libc's
                    await warm.forget_preloads(mi, warm.pool().preload)
                thread_id = await _gdb_thread_of(mi, int(event["tid"]), budget())
                steps["load_ms"] = time.monotonic() - began
                stop = {"signal-name": event["signal"], "thread-id": thread_id}
                return await capture(mi, identity, name, stop, tracer=self.name, log_path=self.output.log_path,
                                     deadline=deadline, sysroot=root.path)  # fmt: skip
        finally:
            root.close()


GDB_BUDGET = 7.0  # seconds of gdb per crash: the process dies within 10 s of its fault
THREAD_BUDGET = 0.04  # per thread past the first (301 threads: 19 s)


def gdb_budget(pid: int) -> float:
    """GDB_BUDGET, plus THREAD_BUDGET per extra thread."""
    try:
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        threads = 1
    return GDB_BUDGET + THREAD_BUDGET * max(0, threads - 1)


def _executable(pid: int, root: sysroot.Sysroot | None = None) -> str:
    """The sysroot's verified program; else its path, or /proc/PID/exe when replaced or deleted."""
    if root is not None and root.exe:
        return root.exe
    try:
        path = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return f"/proc/{pid}/exe"
    return f"/proc/{pid}/exe" if path.endswith(" (deleted)") or not os.path.exists(path) else path


async def _gdb_thread_of(mi: GdbMI, tid: int, timeout: float = 30.0) -> str:
    info = await mi.command("-thread-info", timeout=timeout)
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
