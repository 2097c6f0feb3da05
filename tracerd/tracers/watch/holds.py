"""The watcher's crash holds: keep a crashed process stopped, write its core, let it die.

Part of the watcher process (:mod:`tracerd.tracers.watch.watcher`, whose
class mixes this one in).  When a fatal signal would kill a watched process,
:meth:`CrashHolder._hold` keeps the crashing thread in its
signal-delivery-stop, stops the others, and queues the signal again
(tgkill) so that whoever dies from here on, the process dies of it; once
every thread is stopped :meth:`CrashHolder._maybe_held` writes the core
(:mod:`tracerd.crash.coredump`) and reports ``fatal``.  ``finish`` detaches
the crashing thread delivering its signal; a hold never outlasts
:data:`HOLD_LIMIT`.

Security: cores are written 0600 with O_EXCL|O_NOFOLLOW into the capture
directory tracerd names (its own), or kept in a memfd.

Diagnostics: a core that cannot be written is reported in the ``fatal``
event (``core_error``); other failures are one stderr line each.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ptrace.binding.func import PTRACE_CONT, PTRACE_DETACH, ptrace
from ptrace.error import PtraceError

from tracerd import arch
from tracerd.crash import coredump

PTRACE_INTERRUPT = 0x4207
HOLD_LIMIT = 120.0  # seconds a crash is held at most, whatever tracerd does
_libc = ctypes.CDLL(None, use_errno=True)

# A watched process's modes and the only moves between them (the end of
# every mode is being forgotten: exited, released, finished):
#   run       -> releasing (release, or a seize rolled back), holding (a fatal signal)
#   releasing -> (each thread detached at its next stop)
#   holding   -> held (every thread stopped, core written)
#   held      -> (finish: the crashing thread detached delivering its signal)
# A move not declared here is refused and logged (:meth:`CrashHolder.move`).
Mode = Literal["run", "releasing", "holding", "held"]
TRANSITIONS: dict[str, frozenset[str]] = {
    "run": frozenset({"releasing", "holding"}),
    "releasing": frozenset(),
    "holding": frozenset({"held"}),
    "held": frozenset(),
}
HOLDING = ("holding", "held")


@dataclass
class Watched:
    pid: int
    root: int  # the session's pid (differs for a followed fork child)
    follow_forks: bool
    threads: set[int] = field(default_factory=set)
    mode: Mode = "run"
    fatal: dict[str, Any] | None = None
    crash_tid: int = 0
    crash_signal: int = 0
    stopped: set[int] = field(default_factory=set)  # threads held in a ptrace-stop
    held_since: float = 0.0
    core_fd: int = -1  # a core kept in memory, closed when the crash is let go
    waiters: list[Any] = field(default_factory=list)  # ids of release requests answered at ``released``


class CrashHolder:
    """The crash-holding half of the watcher (see the module docstring);
    the watcher provides ``emit``, ``complain``, ``_forget_thread`` and ``_drop``."""

    processes: dict[int, Watched]
    capture_dir: str | None
    core_limit: int
    emit: Callable[..., None]
    complain: Callable[[str], None]
    _forget_thread: Callable[[int], None]
    _drop: Callable[[Watched], None]

    def move(self, watched: Watched, mode: Mode) -> bool:
        """Change ``watched``'s mode if TRANSITIONS declares the move; else log it and refuse."""
        if mode not in TRANSITIONS[watched.mode]:
            self.complain(f"undeclared transition of {watched.pid}: {watched.mode} -> {mode} (refused)")
            return False
        watched.mode = mode
        return True

    # -- ptrace, for both halves ---------------------------------------------

    def _interrupt(self, tid: int) -> None:
        try:
            ptrace(PTRACE_INTERRUPT, tid)
        except PtraceError as err:
            if err.errno == errno.ESRCH:
                self._forget_thread(tid)
            else:
                self.complain(f"PTRACE_INTERRUPT {tid}: {os.strerror(err.errno)}")

    def _detach(self, tid: int, sig: int) -> None:
        try:
            ptrace(PTRACE_DETACH, tid, 0, sig)
        except PtraceError as err:
            if err.errno != errno.ESRCH:
                self.complain(f"PTRACE_DETACH {tid}: {os.strerror(err.errno)}")

    def finish(self, pid: int, rid: Any = None) -> None:
        """Let a held crash die of its own signal: detach its crashing thread
        delivering the signal (the other threads are taken down with it)."""
        watched = self.processes.get(pid)
        if watched is None or watched.mode not in HOLDING:
            self.emit("finished", pid=pid, id=rid)
            return
        self._detach(watched.crash_tid, watched.crash_signal)
        for tid in sorted(watched.stopped - {watched.crash_tid}):
            self._detach(tid, 0)
        # threads still running (not yet stopped) die with the process; we
        # reap whatever status they still report to us
        self.emit("finished", pid=pid, id=rid)
        self._drop(watched)

    def expire_holds(self) -> None:
        """A crash is never held past HOLD_LIMIT, even if tracerd forgot it."""
        now = time.monotonic()
        for watched in list(self.processes.values()):
            if watched.mode in HOLDING and now - watched.held_since > HOLD_LIMIT:
                self.complain(f"crash of {watched.pid} held {HOLD_LIMIT:.0f} s: letting it die")
                self.finish(watched.pid)

    def _hold(self, watched: Watched, tid: int, sig: int, info: Any) -> None:
        """Keep a crashed process: this thread in its signal-delivery-stop,
        the others stopped; queue the signal again so that whoever dies
        from here on, the process dies of it."""
        name, si_code = signal.Signals(sig).name, int(info.si_code)
        fault = info._sifields._sigfault._addr if si_code > 0 else None
        if not self.move(watched, "holding"):
            ptrace(PTRACE_CONT, tid, 0, sig)  # never swallow the signal
            return
        watched.crash_tid, watched.crash_signal = tid, sig
        watched.held_since = time.monotonic()
        watched.stopped = {tid}
        watched.fatal = {
            "pid": watched.pid, "root": watched.root, "tid": tid, "signal": name,
            "si_code": si_code, "fault_address": hex(fault or 0) if si_code > 0 else None,
        }  # fmt: skip
        try:
            watched.fatal["siginfo"] = coredump.read_siginfo(tid).hex()
        except OSError as err:
            self.complain(f"siginfo of {tid}: {err}")
        # The kernel drops the signal of a thread in signal-delivery-stop
        # whose tracer dies; a second copy queued on the thread survives it.
        # The thread is stopped under us, so its tid cannot be recycled.
        facts = arch.of()
        if facts is None or _libc.syscall(facts.tgkill, watched.pid, tid, sig) != 0:
            self.complain(f"tgkill {tid}: {os.strerror(ctypes.get_errno())}")
        for other in list(watched.threads - {tid}):
            self._interrupt(other)
        self._maybe_held(watched)

    def _maybe_held(self, watched: Watched) -> None:
        """Once every thread is stopped: write the core, report ``fatal``."""
        if watched.mode != "holding" or watched.threads - watched.stopped:
            return
        self.move(watched, "held")
        assert watched.fatal is not None
        fatal = dict(watched.fatal)
        if coredump.supported():
            try:
                order = [watched.crash_tid, *sorted(watched.stopped - {watched.crash_tid})]
                states = [coredump.ThreadState.read(t, watched.crash_signal if t == watched.crash_tid else 0)
                          for t in order if t in watched.threads]  # fmt: skip
                siginfo = bytes.fromhex(fatal.get("siginfo") or "") or coredump.read_siginfo(watched.crash_tid)
                core = self._write_core(watched, states, siginfo)
                fatal.update(core=core.path, core_bytes=core.size, core_skipped=core.skipped)
            except OSError as err:
                fatal["core_error"] = f"core of {watched.pid}: {err}"
        else:
            fatal["core_error"] = "cores need x86-64"
        fatal.pop("siginfo", None)
        self.emit("fatal", **fatal)

    def _write_core(self, watched: Watched, states: list[coredump.ThreadState], siginfo: bytes) -> coredump.CoreFile:
        """On disk in the capture directory; in memory when the disk will not take it."""
        if self.capture_dir:
            path = os.path.join(self.capture_dir, f"{watched.pid}.{time.time_ns()}.core")
            try:
                return coredump.write_core(watched.pid, states, siginfo, path, self.core_limit)
            except OSError as err:
                self.complain(f"core of {watched.pid} not written to {self.capture_dir} ({err}): keeping it in memory")
        fd, core = coredump.write_core_in_memory(watched.pid, states, siginfo, self.core_limit)
        watched.core_fd = fd
        return core
