"""The perf backend: ``perf trace [ARGS] -p PID``, system calls without ptrace stops.

perf trace reads the raw_syscalls tracepoints through perf_event_open: the
process is never stopped (what it costs all the same: README "Figures").
Before perf runs, :mod:`tracerd.tracers.perfcheck` refuses the session with
one line when tracefs is not mounted or the kernel
(``kernel.perf_event_paranoid``, a seccomp filter) would not let it open the
events.  perf is no ptrace tracer, so TracerPid says nothing: the attachment
is confirmed when perf, holding its perf_event descriptors, waits in poll()
for events (its main loop, entered only once the events are enabled), or
once it has printed a line.

perf's lines, one per system call (``  0.049 ( 0.013 ms): getppid() = 1``;
``comm/TID`` before the call when several threads are traced), go to the
log and syslog as they come.  perf reports events it could not keep up
with as ``LOST 123 events!``: those are added up on the session
(``lost_events`` in ``status``, and the LOST column of ``tracerctl
status``), one syslog warning says so at the first, and the lines stay in
the log.  The session ends as perf saw the process end: ``exit_group()``
(status 0; perf omits zero arguments) or ``exit_group(error_code: 3)``.  A
process killed by a signal makes no such call; its session ends "exit status
unknown", with no crash report (use the watch tracer for those).  perf ends
by itself when the process has gone; SIGINT makes it stop cleanly otherwise.

Security: arguments come from root's config file only; perf prints buffer
and string arguments as addresses, so a traced process chooses little text
of these lines: its 15-byte comm, after the timestamp, and the paths of its
descriptors (``fd: 3</path>``), which may hold a newline.  A line is read as
``LOST`` or ``exit_group`` only when it matches whole, so a forged one could
at most misstate the lost count or the exit status shown; nothing here acts
on what it reads.

Diagnostics: a refused preflight fails the session with its one line; perf
exiting before it attached fails it with perf's last line (as for strace).
"""

from __future__ import annotations

import os
import re
import signal
from typing import ClassVar

from tracerd.errors import TracerFailed
from tracerd.spawn import Child
from tracerd.tracers import perfcheck
from tracerd.tracers.base import Ending
from tracerd.tracers.command import CommandTracer

LOST_RE = re.compile(r"LOST (?P<count>\d{1,20}) events!")
EXIT_RE = re.compile(
    r"\s*\d{1,12}\.\d{3} \(\s*(?:\d{1,12}\.\d{3} ms)?\s*\): (?:[^\n]{1,16}/\d{1,10} )?"
    r"exit_group\((?:error_code: (?P<code>\d{1,3}))?\)\s*= \?"
)
# poll(2) and ppoll(2) per machine: perf's main loop waits in one of them
POLL_CALLS = {"x86_64": {7, 271}, "aarch64": {73}, "riscv64": {73}, "i686": {168, 309}, "i386": {168, 309}}


class PerfTracer(CommandTracer):
    name = "perf"
    program = "perf"
    detach_signal = signal.SIGINT  # perf trace stops its events and exits cleanly on SIGINT
    exits_with_target = True  # its events hang up as the process exits, before the pidfd wakes us
    total_lost: ClassVar[int] = 0

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.printed = False

    def argv(self) -> list[str]:
        return [self.program, "trace", *self.target.args, "-p", str(self.target.pid)]

    @classmethod
    def counters(cls) -> dict[str, int]:
        return {"perf_lost_events": cls.total_lost}

    async def preflight(self) -> None:
        reason = await perfcheck.refusal(self.target.pid)
        if reason:
            raise TracerFailed(reason)

    def confirmed(self, child: Child) -> bool:
        """perf has printed, or holds its events and waits for them in poll()."""
        if self.printed:
            return True
        calls = POLL_CALLS.get(os.uname().machine)
        try:
            with open(f"/proc/{child.pid}/syscall", encoding="ascii") as file:
                call = file.read().split(maxsplit=1)[0]
            if calls is not None and (not call.isdigit() or int(call) not in calls):
                return False
            fds = os.listdir(f"/proc/{child.pid}/fd")
            return any(_is_perf_event(child.pid, fd) for fd in fds)
        except (OSError, IndexError):
            return False  # perf exited (attach() sees its status) or is between states

    def _on_lines(self, lines: list[str]) -> None:
        self.printed = True
        lost = 0
        for line in lines:
            if line.startswith("LOST "):
                match = LOST_RE.fullmatch(line.rstrip())
                if match:
                    lost += int(match.group("count"))
            elif self._ending is None and "exit_group(" in line:
                match = EXIT_RE.fullmatch(line.rstrip())
                if match:
                    self._ending = Ending("exited", exit_code=int(match.group("code") or 0))
                    self._ending_seen.set()
        if lost:
            if not self.lost_events:
                self.output.warn(f"perf lost {lost} events (perf could not keep up; see lost_events in status)")
            self.lost_events += lost
            PerfTracer.total_lost += lost
        super()._on_lines(lines)


def _is_perf_event(pid: int, fd: str) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[perf_event]"
    except OSError:
        return False
