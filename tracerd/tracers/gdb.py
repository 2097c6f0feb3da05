"""The gdb backend: one gdb per process, through MI, for the process's life.

What the seed's ``(echo cont; echo where; sleep 8640000) | gdb`` recipe
meant, done right:

- attach, and only then confirm the hook (gdb's ``^done`` for
  ``-target-attach`` and TracerPid naming gdb);
- every signal but the fatal ones passes without stopping or printing, so a
  SIGPIPE or SIGTERM reaches the daemon as it would untraced;
- a fatal signal (SEGV, BUS, ILL, FPE, ABRT, SYS, TRAP) that will really kill
  the process stops it: the crash report is captured and written first,
  then gdb detaches *delivering that same signal*, so the process dies of it
  and its parent sees exactly the wait status it would see untraced
  (Postfix's master logs "killed by signal 11"); then gdb exits;
- a fatal signal the program handles itself is passed on: its handler runs;
- gdb dying on its own fails the session; the kernel has detached the
  process, which runs on untraced.

gdb opens the target's objects only through a sysroot of verified files
(:mod:`tracerd.gdb.sysroot`), built at the attach and again at a crash when
a library was loaded since: a library the target replaced by a FIFO cannot
block the attach or the capture.

Every wait is bounded: ``detach()`` waits at most ``detach_timeout`` seconds
for the session loop to detach cleanly (it may be busy with a capture, or not
running at all), then ends gdb, which leaves the process untraced.

Diagnostics: gdb's own error messages (``&"..."`` log records) are kept and
reported when an attach or capture fails.
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
from tracerd.tracers.base import Ending, Tracer, poll_until

FATAL_HANDLE = " ".join(sorted(FATAL_SIGNALS - {"SIGTRAP"}))


class GdbTracer(Tracer):
    name = "gdb"
    program = "gdb"
    detach_timeout = 30.0  # a clean detach takes 3 bounded MI steps of 5 s, plus gdb's exit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mi = GdbMI()
        self._pidfd = -1
        self._gone: asyncio.Future[None] | None = None
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
        self._watch_exit()
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
        """Give gdb a new sysroot of the target's verified files (and, at the attach, its program)."""
        root = await asyncio.to_thread(sysroot.build, self.target.pid, self.target.capture_dir)
        self._roots.append(root)
        for command in sysroot.gdb_commands(root.path):  # a new sysroot makes gdb reload every library
            await self.mi.command(command, timeout=self.target.attach_timeout)
        if exe and root.exe:
            await self.mi.command(f"-file-exec-and-symbols {quote(root.exe)}", timeout=self.target.attach_timeout)

    def _watch_exit(self) -> None:
        self._pidfd = procinfo.open_pidfd(self.target.identity)
        loop = asyncio.get_running_loop()
        self._gone = loop.create_future()

        def gone() -> None:
            loop.remove_reader(self._pidfd)
            if self._gone is not None and not self._gone.done():
                self._gone.set_result(None)

        loop.add_reader(self._pidfd, gone)

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
        assert self._gone is not None
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
                if self._gone.done() or not self.target.identity.alive():
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
        # The kernel drops the signal of a thread in signal-delivery-stop
        # whose tracer dies (gdb killed with -9): a second copy, queued now
        # while every thread is stopped, makes the process die of it anyway.
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self._pidfd, int(getattr(signal.Signals, name)))
        crash_id: str | None = None
        with self.output.capturing(self.target.identity, self.target.name, name):
            try:
                await failpoint.reached("capture-start")
                if sysroot.missing(self._roots[-1], self.target.pid):  # a library loaded since the attach
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
        """gdb's gcore of the held process into the capture directory, bounded by core_timeout;
        the store keeps it as the core policy says (docs/crashes.md "Cores and retrace")."""
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
        # gdb's detach delivers the pending signal (its handle state is "pass"),
        # so the process dies of it untraced, and its parent reaps it as usual.
        try:
            await self.mi.command("-target-detach", timeout=10.0)
        except TracerdError as err:
            self.output.warn(f"gdb detach failed ({err}); ending gdb to release the process")
        await self._end_gdb()
        assert self._gone is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._gone), timeout=5.0)

    async def where(self) -> str:
        """Interrupt, take every thread's backtrace, continue (done by wait()'s loop,
        which owns gdb's stop records)."""
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
        """Let go of the process *stopped*, for an interactive gdb (tracerd.daemon.gdbhandoff):
        interrupted, SIGSTOP queued while gdb holds it, then detached, so it
        stays in group-stop and never runs untraced."""
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
                signal.pidfd_send_signal(self._pidfd, signal.SIGSTOP)
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

    def _release_pidfd(self) -> None:
        if self._pidfd >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = -1
