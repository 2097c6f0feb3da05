"""The watcher's crash holds: keep a crashed process stopped, write its core, let it die.

Mixed into the watcher's class.  On a fatal signal, :meth:`CrashHolder._hold`
keeps the crashing thread in its signal-delivery-stop, stops the others and
queues the signal again (tgkill); once all are stopped the core is written and
``fatal`` reported.  ``finish`` detaches the crashing thread with its signal;
no hold outlasts HOLD_LIMIT.

Security: cores are 0600, O_EXCL|O_NOFOLLOW, in tracerd's capture directory,
or kept in a memfd.

Diagnostics: an unwritten core is the ``fatal`` event's ``core_error``; other
failures are one stderr line each.
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

# A watched process's modes and the only moves between them; any mode ends by being forgotten.
# An undeclared move is refused and logged (CrashHolder.move).
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
    waiters: list[Any] = field(default_factory=list)  # release ids, answered at ``released``


class CrashHolder:
    """The crash-holding half of the watcher, which provides the methods declared below."""

    processes: dict[int, Watched]
    capture_dir: str | None
    core_limit: int
    emit: Callable[..., None]
    complain: Callable[[str], None]
    _forget_thread: Callable[[int], None]
    _drop: Callable[[Watched], None]

    def move(self, watched: Watched, mode: Mode) -> bool:
        """Change mode if TRANSITIONS declares the move; else log and refuse."""
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
        """Let a held crash die: detach its crashing thread delivering the signal."""
        watched = self.processes.get(pid)
        if watched is None or watched.mode not in HOLDING:
            self.emit("finished", pid=pid, id=rid)
            return
        self._detach(watched.crash_tid, watched.crash_signal)
        for tid in sorted(watched.stopped - {watched.crash_tid}):
            self._detach(tid, 0)
        # threads not yet stopped die with the process; their statuses are reaped
        self.emit("finished", pid=pid, id=rid)
        self._drop(watched)

    def expire_holds(self) -> None:
        """No crash is held past HOLD_LIMIT, even if tracerd forgot it."""
        now = time.monotonic()
        for watched in list(self.processes.values()):
            if watched.mode in HOLDING and now - watched.held_since > HOLD_LIMIT:
                self.complain(f"crash of {watched.pid} held {HOLD_LIMIT:.0f} s: letting it die")
                self.finish(watched.pid)

    def _hold(self, watched: Watched, tid: int, sig: int, info: Any) -> None:
        """Hold a crashed process; the signal is queued again so that it dies of it whatever happens."""
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
        # a tracer's death drops a signal-delivery-stop's signal; a queued copy survives (tid is ours: stopped)
        facts = arch.of()
        if facts is None or _libc.syscall(facts.tgkill, watched.pid, tid, sig) != 0:
            self.complain(f"tgkill {tid}: {os.strerror(ctypes.get_errno())}")
        for other in list(watched.threads - {tid}):
            self._interrupt(other)
        self._maybe_held(watched)

    def _maybe_held(self, watched: Watched) -> None:
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
        """In the capture directory; in memory when the disk will not take it."""
        if self.capture_dir:
            path = os.path.join(self.capture_dir, f"{watched.pid}.{time.time_ns()}.core")
            try:
                return coredump.write_core(watched.pid, states, siginfo, path, self.core_limit)
            except OSError as err:
                self.complain(f"core of {watched.pid} not written to {self.capture_dir} ({err}): keeping it in memory")
        fd, core = coredump.write_core_in_memory(watched.pid, states, siginfo, self.core_limit)
        watched.core_fd = fd
        return core
