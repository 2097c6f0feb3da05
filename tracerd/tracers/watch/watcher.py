"""The ptrace watcher: one small process that watches every ``watch`` session.

``python -m tracerd.tracers.watch.watcher``: JSON commands on stdin, events on
stdout.  Its own single-threaded process: ptrace wants the attaching thread,
and ``waitpid(-1)`` would steal tracerd's children.  PTRACE_SEIZE of every
thread (TRACECLONE), no syscall stops; signals re-injected, group-stops
LISTENed.  A fatal unhandled signal is held (holds.py) until ``finish``,
tracerd's end or HOLD_LIMIT, and queued again, so nothing is left stopped.

Commands: ``seize`` (id, pid, start, follow_forks), ``release``, ``finish``.
Events: ``seized``, ``seize_failed``, ``released``, ``release_refused``,
``finished``, ``exited``, ``killed``, ``fatal``.  End of input or SIGTERM:
release all, let held crashes die, exit.

Security: commands only from tracerd's pipe; pids checked against start time;
cores 0600, O_EXCL|O_NOFOLLOW.  Our death detaches every tracee (no EXITKILL).

Diagnostics: one stderr line per error; a failed command's event has ``error``.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import sys
import time
from typing import Any

from ptrace.binding.func import (
    PTRACE_CONT,
    PTRACE_EVENT_CLONE,
    PTRACE_EVENT_EXEC,
    PTRACE_EVENT_FORK,
    PTRACE_EVENT_VFORK,
    PTRACE_O_TRACECLONE,
    PTRACE_O_TRACEEXEC,
    PTRACE_O_TRACEFORK,
    PTRACE_O_TRACEVFORK,
    ptrace,
    ptrace_geteventmsg,
    ptrace_getsiginfo,
)
from ptrace.error import PtraceError

from tracerd.crash.siginfo import FATAL_SIGNALS
from tracerd.errors import TargetGone
from tracerd.procinfo import identify, signal_is_fatal
from tracerd.tracers.watch.holds import HOLDING, CrashHolder, Watched

PTRACE_SEIZE = 0x4206
PTRACE_LISTEN = 0x4208
PTRACE_EVENT_STOP = 128
PF_EXITING = 0x4  # in /proc/PID/task/TID/stat flags
SEIZE_ROUNDS = 200  # listings of /proc/PID/task before giving up on threads that keep coming
WALL = 0x40000000  # __WALL
STOP_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})


class Watcher(CrashHolder):
    """Every watched process, their threads, and the commands tracerd sends."""

    def __init__(self, out: Any, capture_dir: str | None = None, core_limit: int = 1 << 30) -> None:
        self.out = out
        self.capture_dir = capture_dir
        self.core_limit = core_limit
        self.processes: dict[int, Watched] = {}
        self.owner: dict[int, int] = {}  # tid -> pid

    # -- output ---------------------------------------------------------------

    def emit(self, event: str, **fields: Any) -> None:
        self.out.write(json.dumps({"event": event, **fields}) + "\n")
        self.out.flush()

    @staticmethod
    def complain(message: str) -> None:
        print(f"watcher: {message}", file=sys.stderr, flush=True)

    # -- commands -------------------------------------------------------------

    def command(self, line: str) -> None:
        try:
            request = json.loads(line)
            op, pid, rid = request["op"], int(request["pid"]), request.get("id")
        except (ValueError, KeyError, TypeError):
            self.complain(f"bad command {line[:80]!r}")
            return
        if op == "seize":
            self.seize(pid, int(request["start"]), bool(request.get("follow_forks")), rid)
        elif op == "release":
            self.release(pid, rid)
        elif op == "finish":
            self.finish(pid, rid)
        else:
            self.complain(f"unknown op {op!r}")

    def seize(self, pid: int, start: int, follow_forks: bool, rid: Any = None) -> None:
        def failed(error: str) -> None:
            self.emit("seize_failed", pid=pid, id=rid, error=error)

        try:
            if identify(pid).start != start:
                raise TargetGone(f"pid {pid} was reused")
        except TargetGone as err:
            failed(str(err))
            return
        known = self.processes.get(pid)
        if known is not None:
            if known.mode == "run":
                self.emit("seized", pid=pid, id=rid, threads=len(known.threads))
            else:
                failed(f"process {pid} is being let go of ({known.mode}): try again")
            return
        watched = Watched(pid, pid, follow_forks)
        options = PTRACE_O_TRACECLONE | PTRACE_O_TRACEEXEC
        if follow_forks:
            options |= PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK
        self.processes[pid] = watched
        error = self._seize_threads(watched, options)
        if error is None:
            try:
                if identify(pid).start != start or pid not in watched.threads:
                    error = f"process {pid} ended while being seized"
            except TargetGone:
                error = f"process {pid} ended while being seized"
        if error is not None:
            self._abandon(watched)
            failed(error)
            return
        self.emit("seized", pid=pid, id=rid, threads=len(watched.threads))

    def _seize_threads(self, watched: Watched, options: int) -> str | None:
        """Seize the leader, then every thread until a listing shows none new; None, or why not."""
        pid, skipped = watched.pid, set[int]()
        for _ in range(SEIZE_ROUNDS):
            try:
                tids = {int(tid) for tid in os.listdir(f"/proc/{pid}/task")}
            except OSError:
                return f"process {pid} ended while being seized"
            new = tids - watched.threads - skipped
            if not new:
                return None
            for tid in sorted(new, key=lambda t: t != pid):  # the leader first
                try:
                    ptrace(PTRACE_SEIZE, tid, 0, options)
                except PtraceError as err:
                    if _our_tracee(tid):
                        pass  # born of a seized thread: TRACECLONE made it ours already
                    elif tid != pid and err.errno in (errno.EPERM, errno.ESRCH) and _exiting(pid, tid):
                        skipped.add(tid)  # an exiting thread: nothing left to watch
                        continue
                    elif err.errno == errno.ESRCH:
                        return f"process {pid} ended while being seized"
                    else:
                        return f"PTRACE_SEIZE {tid}: {os.strerror(err.errno)}"
                watched.threads.add(tid)
                self.owner[tid] = pid
        return f"threads of {pid} kept coming for {SEIZE_ROUNDS} listings"

    def _abandon(self, watched: Watched) -> None:
        """Roll back a half-seized process (late TRACECLONE threads are released in on_status)."""
        self.move(watched, "releasing")
        for tid in list(watched.threads):
            self._interrupt(tid)
        self._maybe_done(watched)

    def release(self, pid: int, rid: Any = None) -> None:
        watched = self.processes.get(pid)
        if watched is None:
            self.emit("released", pid=pid, id=rid)
            return
        if watched.mode in HOLDING:
            # a crash is never released into service: it dies once captured
            self.emit("release_refused", pid=pid, id=rid, error="crash capture in progress")
            return
        watched.waiters.append(rid)
        if watched.mode == "releasing":
            return  # already on its way: answered with the others
        self.move(watched, "releasing")
        # detach needs a ptrace-stop: interrupt all, detach each at its stop
        for tid in list(watched.threads):
            self._interrupt(tid)
        self._maybe_done(watched)

    def release_all(self) -> None:
        """Running processes are released, held crashes die."""
        for pid, watched in list(self.processes.items()):
            if watched.mode in HOLDING:
                self.finish(pid)
            else:
                self.release(pid)

    # -- events ---------------------------------------------------------------

    def reap(self) -> None:
        while True:
            try:
                tid, status = os.waitpid(-1, os.WNOHANG | WALL)
            except ChildProcessError:
                return
            if tid == 0:
                return
            try:
                self.on_status(tid, status)
            except PtraceError as err:
                if err.errno != errno.ESRCH:
                    self.complain(f"ptrace on {tid}: {os.strerror(err.errno)}")
            except Exception as err:  # a bug here must not leave a thread stopped
                self.complain(f"handling {tid} status {status:#x}: {type(err).__name__}: {err}")
                if os.WIFSTOPPED(status):
                    self._resume(tid, os.WSTOPSIG(status) if status >> 16 == 0 else 0)

    def _adopt(self, tid: int) -> Watched | None:
        """A tid we have not heard of: a new thread or forked child of a watched process."""
        try:
            with open(f"/proc/{tid}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
            tgid, ppid = int(fields["Tgid"]), int(fields["PPid"])
        except (OSError, KeyError, ValueError):
            return None
        if tgid in self.processes:
            watched = self.processes[tgid]
        elif ppid in self.processes and self.processes[ppid].follow_forks:
            parent = self.processes[ppid]
            watched = self.processes.setdefault(tgid, Watched(tgid, parent.root, True))
        else:
            return None
        watched.threads.add(tid)
        self.owner[tid] = watched.pid
        return watched

    def on_status(self, tid: int, status: int) -> None:
        pid = self.owner.get(tid)
        watched = self.processes.get(pid) if pid is not None else self._adopt(tid)
        if watched is None:
            if os.WIFSTOPPED(status):
                # born while its process was let go of: never leave it stopped
                self._detach(tid, os.WSTOPSIG(status) if status >> 16 == 0 else 0)
            return
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self._forget_thread(tid)
            if tid == watched.pid:
                if os.WIFEXITED(status):
                    self.emit("exited", pid=watched.pid, root=watched.root, code=os.WEXITSTATUS(status))
                else:
                    name = signal.Signals(os.WTERMSIG(status)).name
                    self.emit("killed", pid=watched.pid, root=watched.root, signal=name)
                self._drop(watched)
            elif watched.mode == "holding":
                self._maybe_held(watched)
            else:
                self._maybe_done(watched)
            return
        if not os.WIFSTOPPED(status):
            return
        sig = os.WSTOPSIG(status)
        event = status >> 16
        if watched.mode in HOLDING:
            watched.stopped.add(tid)
            self._maybe_held(watched)
            return
        if watched.mode != "run":
            # releasing: detach at the first stop, re-injecting its signal
            deliver = sig if event == 0 else 0
            self._detach(tid, deliver)
            self._forget_thread(tid)
            self._maybe_done(watched)
            return
        if event == PTRACE_EVENT_STOP:
            if sig in STOP_SIGNALS:
                ptrace(PTRACE_LISTEN, tid)  # stay in group-stop until SIGCONT, as untraced
            else:
                ptrace(PTRACE_CONT, tid, 0, 0)  # a new thread's first stop, or an interrupt
            return
        if event == 0:
            self._signal_stop(watched, tid, sig)
            return
        self._ptrace_event(watched, tid, event)

    def _ptrace_event(self, watched: Watched, tid: int, event: int) -> None:
        """A clone, fork, vfork or exec stop: note it, go on."""
        if event in (PTRACE_EVENT_CLONE, PTRACE_EVENT_FORK, PTRACE_EVENT_VFORK):
            new = ptrace_geteventmsg(tid)
            if event == PTRACE_EVENT_CLONE:
                watched.threads.add(new)
                self.owner[new] = watched.pid
            else:
                child = self.processes.setdefault(new, Watched(new, watched.root, True))
                child.threads.add(new)
                self.owner[new] = new
            ptrace(PTRACE_CONT, tid, 0, 0)
            return
        if event == PTRACE_EVENT_EXEC:
            # a non-leader exec'ing thread takes the leader's tid; its old tid is gone
            former = ptrace_geteventmsg(tid)
            if former != tid:
                self._forget_thread(former)
            watched.threads.add(tid)
            self.owner[tid] = watched.pid
            ptrace(PTRACE_CONT, tid, 0, 0)
            return
        ptrace(PTRACE_CONT, tid, 0, 0)

    def _signal_stop(self, watched: Watched, tid: int, sig: int) -> None:
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"SIG{sig}"
        if name in FATAL_SIGNALS:
            info = ptrace_getsiginfo(tid)
            si_code = int(info.si_code)
            if signal_is_fatal(watched.pid, tid, name, si_code):
                self._hold(watched, tid, sig, info)
                return
        ptrace(PTRACE_CONT, tid, 0, sig)  # re-inject at once

    def _resume(self, tid: int, sig: int) -> None:
        try:
            ptrace(PTRACE_CONT, tid, 0, sig)
        except PtraceError as err:
            self.complain(f"PTRACE_CONT {tid}: {os.strerror(err.errno)}")

    def _forget_thread(self, tid: int) -> None:
        pid = self.owner.pop(tid, None)
        if pid is not None and pid in self.processes:
            self.processes[pid].threads.discard(tid)

    def _maybe_done(self, watched: Watched) -> None:
        if watched.threads or watched.mode == "run":
            return
        if watched.root == watched.pid:
            for rid in watched.waiters or [None]:
                self.emit("released", pid=watched.pid, id=rid)
        self._drop(watched)

    def _drop(self, watched: Watched) -> None:
        if watched.core_fd >= 0:
            os.close(watched.core_fd)
            watched.core_fd = -1
        for tid in list(watched.threads):
            self.owner.pop(tid, None)
        self.processes.pop(watched.pid, None)


def _our_tracee(tid: int) -> bool:
    try:
        with open(f"/proc/{tid}/status") as status:
            for line in status:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1]) == os.getpid()
    except (OSError, ValueError, IndexError):
        pass
    return False


def _exiting(pid: int, tid: int) -> bool:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True
    return fields[0] in "ZXx" or bool(int(fields[6]) & PF_EXITING)


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # tracerd decides when we end
    signal.signal(signal.SIGCHLD, lambda *_: None)
    terminated = []
    # SIGTERM (also our parent-death signal): release everything, then go
    signal.signal(signal.SIGTERM, lambda *_: terminated.append(True))
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    capture_dir, core_limit = None, 1 << 30
    args = sys.argv[1:]
    if "--capture-dir" in args:
        capture_dir = args[args.index("--capture-dir") + 1]
    if "--core-limit" in args:
        core_limit = int(args[args.index("--core-limit") + 1])
    watcher = Watcher(sys.stdout, capture_dir, core_limit)
    buffer = b""
    eof = False
    give_up = float("inf")
    watcher.emit("ready", pid=os.getpid())
    while not (eof and not watcher.processes) and time.monotonic() < give_up:
        if terminated and not eof:
            eof = True
            watcher.release_all()
        if eof and give_up == float("inf"):
            # a thread that never reports must not keep us: exit detaches the rest
            give_up = time.monotonic() + 3.0
        readable, _, _ = select.select([wake_r] + ([] if eof else [stdin]), [], [], 0.2 if eof else 1.0)
        if wake_r in readable:
            try:
                while os.read(wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        if stdin in readable:
            chunk = os.read(stdin, 65536)
            if not chunk:
                eof = True
                watcher.release_all()
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    watcher.command(line.decode("utf-8", "replace"))
        watcher.reap()
        watcher.expire_holds()
    return 0


if __name__ == "__main__":
    sys.exit(main())
