"""The gdb backend: one gdb per process, through MI, for the process's life.

Attach, then confirm (gdb's ``^done`` and TracerPid naming gdb).  Signals
pass silently but for a fatal one that will kill the process: it is held
while the crash report and gcore are written, then gdb detaches delivering
that signal, so the parent sees the wait status it would see untraced.  A
fatal signal the program handles goes to its handler.

Security: trusts its Target; gdb opens the target's objects only through a
sysroot of verified files (:mod:`tracerd.gdb.sysroot`, rebuilt at a crash
for a library loaded since), so a FIFO in their place blocks nothing; the
pidfd re-checks the identity.

Diagnostics: gdb's own errors (``&"..."`` records) are the reason when an
attach or capture fails; gdb dying alone fails the session, the process
runs on untraced; every wait is bounded (``detach_timeout``), then gdb ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import Any

from tracerd import failpoint, procinfo
from tracerd.crash import corefile
from tracerd.crash.report import CrashReport
from tracerd.crash.siginfo import CODE, FATAL_SIGNALS, parse_int
from tracerd.errors import Busy, TargetGone, TracerdError, TracerFailed
from tracerd.gdb import sysroot
from tracerd.gdb.capture import capture
from tracerd.gdb.mi import GdbMI, MIError, quote
from tracerd.procinfo import signal_is_fatal
from tracerd.tracers.base import Ending, ExitWatch, Tracer, poll_until

FATAL_HANDLE = " ".join(sorted(FATAL_SIGNALS - {"SIGTRAP"}))


class GdbTracer(Tracer):
    name = "gdb"
    program = "gdb"
    detach_timeout = 30.0  # a clean detach takes 3 bounded MI steps of 5 s, plus gdb's exit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mi = GdbMI()
        self._exit: ExitWatch | None = None
        self._requests: asyncio.Queue[str] = asyncio.Queue()
        self._where: asyncio.Future[str] | None = None
        self._detached = asyncio.Event()
        self._gcore_path: str | None = None  # the gcore of a crash, removed once the process is released
        self._roots: list[sysroot.Sysroot] = []  # gdb's sysroots, the newest last: closed when gdb ends

    async def attach(self) -> None:
        pid = self.target.pid
        current = procinfo.tracer_pid(pid)
        if current:
            raise Busy(f"process {pid} is already traced by pid {current}")
        self._exit = ExitWatch(self.target.identity)
        await self.mi.start()
        self.tracer_pid = self.mi.pid
        try:
            await self._use_sysroot(exe=True)
            await self._attach_and_continue(pid)
        except BaseException:
            await self._end_gdb()
            self._release_pidfd()
            raise

    async def _use_sysroot(self, *, exe: bool) -> None:
        """A new sysroot of the target's verified files for gdb (and its program, at the attach)."""
        root = await asyncio.to_thread(sysroot.build, self.target.pid, self.target.capture_dir)
        self._roots.append(root)
        for command in sysroot.gdb_commands(root.path):  # a new sysroot makes gdb reload every library
            await self.mi.command(command, timeout=self.target.attach_timeout)
        if exe and root.exe:
            await self.mi.command(f"-file-exec-and-symbols {quote(root.exe)}", timeout=self.target.attach_timeout)

    async def _attach_and_continue(self, pid: int) -> None:
        timeout = self.target.attach_timeout
        try:
            await self.mi.command(f"-target-attach {pid}", timeout=timeout)
        except MIError as err:
            raise TracerFailed(f"gdb could not attach: {err}") from err
        await asyncio.wait_for(self.mi.stops.get(), timeout)  # attaching stops the process
        if not self.target.identity.alive():
            raise TargetGone(f"process {pid} ended while gdb attached")
        await self.mi.console("handle all nostop noprint pass")
        await self.mi.console(f"handle {FATAL_HANDLE} stop print pass")
        await self.mi.command("-exec-continue", timeout=timeout)
        gdb_pid = self.mi.pid
        await poll_until(lambda: procinfo.tracer_pid(pid) == gdb_pid, timeout, "gdb attach")

    async def wait(self) -> Ending:
        assert self._exit is not None
        assert self.mi.child is not None
        gdb_exit = asyncio.ensure_future(self.mi.child.wait())
        request = asyncio.ensure_future(self._requests.get())
        try:
            while True:
                stop = asyncio.ensure_future(self.mi.stops.get())
                waiting: set[asyncio.Future[Any]] = {stop, gdb_exit, request}
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if stop not in done:
                    stop.cancel()
                if request in done:
                    if request.result() in ("detach", "handoff"):
                        return await self._detach_now(stopped=request.result() == "handoff")
                    await self._where_now()
                    request = asyncio.ensure_future(self._requests.get())
                    continue
                if stop in done:
                    ending = await self._on_stop(stop.result())
                    if ending is not None:
                        return ending
                    continue
                # gdb is gone; the kernel detached the process (if it still lives)
                if self._exit.gone.done() or not self.target.identity.alive():
                    return Ending("exited", reason="exit status unknown (gdb ended with it)")
                return Ending("failed", reason=f"gdb exited unexpectedly ({self.mi.last_complaint()})")
        finally:
            for future in (gdb_exit, request):
                future.cancel()
            await self._end_gdb()
            self._release_pidfd()

    async def _on_stop(self, stop: dict[str, Any]) -> Ending | None:
        reason = str(stop.get("reason", ""))
        if reason == "exited-normally":
            return Ending("exited", exit_code=0)
        if reason == "exited":
            return Ending("exited", exit_code=int(str(stop.get("exit-code", "0")), 8))
        if reason == "exited-signalled":
            name = str(stop.get("signal-name"))
            return Ending("crashed" if name in FATAL_SIGNALS else "exited", signal=name)
        if reason == "signal-received":
            name = str(stop.get("signal-name"))
            if name in FATAL_SIGNALS and await self._fatal(stop, name):
                return await self._crash(stop, name)
        # anything else: let it run on (a handled fatal signal goes to its handler)
        await self._continue()
        return None

    async def _fatal(self, stop: dict[str, Any], name: str) -> bool:
        """Will this signal kill the process if delivered (no handler of its own)?"""
        si_code = parse_int(await self.mi.evaluate(CODE))
        tid = None
        with contextlib.suppress(TracerdError, KeyError, IndexError, ValueError):
            info = await self.mi.command(f"-thread-info {int(str(stop.get('thread-id')))}")
            target_id = str(info.payload["threads"][0]["target-id"])
            tid = int(target_id.split("LWP ")[1].rstrip(")"))
        return signal_is_fatal(self.target.pid, tid, name, si_code)

    async def _continue(self) -> None:
        try:
            await self.mi.command("-exec-continue", timeout=10.0)
        except TracerdError as err:
            self.output.warn(f"gdb could not resume the process: {err}")

    async def _crash(self, stop: dict[str, Any], name: str) -> Ending:
        """Report first, then let the process die of the same signal."""
        # a tracer killed in signal-delivery-stop drops the signal: this copy still kills
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self._pidfd(), int(getattr(signal.Signals, name)))
        crash_id: str | None = None
        with self.output.capturing(self.target.identity, self.target.name, name):
            try:
                await failpoint.reached("capture-start")
                if sysroot.missing(self._roots[-1], self.target.pid):
                    await self._use_sysroot(exe=False)
                report = await capture(
                    self.mi, self.target.identity, self.target.name, stop,
                    tracer=self.name, log_path=self.output.log_path, sysroot=self._roots[-1].path,
                )  # fmt: skip
                await failpoint.reached("capture-running")
                await self._gcore(report)
                try:
                    crash_id = await self.output.crash(report)
                finally:
                    if report.core_source:
                        with contextlib.suppress(OSError):
                            os.unlink(report.core_source)
            except Exception as err:  # the process must be released whatever happened
                self.output.warn(f"crash capture failed: {err}")
        await failpoint.reached("report-written")
        await self._release_with_signal()
        if self._gcore_path:  # a gcore cut off by core_timeout may have gone on writing until gdb ended
            with contextlib.suppress(OSError):
                os.unlink(self._gcore_path)
        return Ending("crashed", signal=name, crash=crash_id)

    async def _gcore(self, report: CrashReport) -> None:
        """gcore the held process into capture_dir, bounded by core_timeout (kept as the core policy says)."""
        if self.target.core == "none" or not self.target.capture_dir:
            report.core = corefile.skipped('core = "none"' if self.target.core == "none" else "no capture directory")
            return
        path = self._gcore_path = os.path.join(self.target.capture_dir, f"{self.target.pid}.{time.time_ns()}.gcore")
        try:
            said = await self.mi.console(f"gcore {path}", timeout=self.target.core_timeout)
        except TracerdError as err:
            with contextlib.suppress(OSError):
                os.unlink(path)
            report.core = corefile.skipped(f"gcore did not finish within core_timeout ({self.target.core_timeout:g} s)"
                                           f" or failed ({err}): no core, the process was released")  # fmt: skip
            return
        if "Saved corefile" in said:
            report.core_source = path
        else:
            report.core = corefile.skipped(f"gcore wrote no core: {said.strip()[:200]}")

    async def _release_with_signal(self) -> None:
        # the detach delivers the pending signal ("pass"): the process dies of it untraced
        try:
            await self.mi.command("-target-detach", timeout=10.0)
        except TracerdError as err:
            self.output.warn(f"gdb detach failed ({err}); ending gdb to release the process")
        await self._end_gdb()
        assert self._exit is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._exit.gone), timeout=5.0)

    async def where(self) -> str:
        """Every thread's backtrace, taken by wait()'s loop (it owns gdb's stop records)."""
        if self.mi.child is None or self.mi.child.returncode is not None:
            raise TracerFailed("gdb is not running")
        self._where = asyncio.get_running_loop().create_future()
        self._requests.put_nowait("where")
        return await asyncio.wait_for(self._where, timeout=120.0)

    async def _where_now(self) -> None:
        assert self._where is not None
        try:
            await self.mi.command("-exec-interrupt", timeout=5.0)
            await asyncio.wait_for(self.mi.stops.get(), timeout=10.0)
            text = await self.mi.console("thread apply all bt", timeout=60.0)
            self._where.set_result(text.strip())
        except (TracerdError, TimeoutError) as err:
            self._where.set_exception(TracerFailed(f"where failed: {err}"))
        finally:
            await self._continue()

    async def detach(self) -> None:
        if self.mi.child is None or self.mi.child.returncode is not None:
            return
        self._requests.put_nowait("detach")
        try:
            await asyncio.wait_for(asyncio.shield(self._detached.wait()), timeout=self.detach_timeout)
        except TimeoutError:
            self.output.warn(f"gdb did not detach within {self.detach_timeout:g} s; ending gdb")
            await self._end_gdb()

    async def hand_off(self) -> None:
        """Detach leaving the process stopped (SIGSTOP queued first), for tracerd.daemon.gdbhandoff."""
        if self.mi.child is None or self.mi.child.returncode is not None:
            raise TracerFailed("gdb is not running")
        self._requests.put_nowait("handoff")
        try:
            await asyncio.wait_for(asyncio.shield(self._detached.wait()), timeout=self.detach_timeout)
        except TimeoutError:
            await self._end_gdb()
            raise TracerFailed("gdb did not let go of the process in time") from None

    async def _detach_now(self, stopped: bool = False) -> Ending:
        try:
            await self.mi.command("-exec-interrupt", timeout=5.0)
            await asyncio.wait_for(self.mi.stops.get(), timeout=5.0)
            if stopped:  # pending through the detach: the process stops before its next instruction
                signal.pidfd_send_signal(self._pidfd(), signal.SIGSTOP)
            await self.mi.command("-target-detach", timeout=5.0)
        except (TracerdError, TimeoutError, OSError) as err:
            self.output.warn(f"gdb detach was not clean ({err}); ending gdb")
        await self._end_gdb()
        self._detached.set()
        return Ending("detached", reason="handed to an interactive gdb: tracerctl gdb" if stopped else None)

    async def _end_gdb(self) -> None:
        await self.mi.close()
        self._detached.set()
        for root in self._roots:
            root.close()
        self._roots.clear()

    def _pidfd(self) -> int:
        return self._exit.fd if self._exit is not None else -1

    def _release_pidfd(self) -> None:
        if self._exit is not None:
            self._exit.close()
