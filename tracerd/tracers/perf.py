"""The perf backend: system calls from the kernel's tracepoints, recorded, without ptrace stops.

``perf trace record --switch-output=1s -p PID`` records the raw_syscalls
tracepoints through perf_event_open into a private directory, and
:mod:`tracerd.tracers.perfrecord` prints every file it closes (each second,
and at its end) with ``perf trace -i FILE [ARGS]``.  The process is never
stopped, and it wakes perf only when perf's buffer fills: a live ``perf
trace`` asks the kernel to wake it at every event, which costs the process
about what strace's stops cost (docs/performance.md "Figures").  The price is a delay:
lines reach the log and syslog about a second after the calls.  Before perf
runs, :mod:`tracerd.tracers.perfcheck` refuses the session with one line
when tracefs is not mounted or the kernel (``kernel.perf_event_paranoid``, a
seccomp filter) would not let it open the events.  perf is no ptrace tracer,
so TracerPid says nothing: the attachment is confirmed when perf, holding
its perf_event descriptors, waits in poll() for events (its main loop,
entered only once the events are enabled).

The rule's ARGS are perf trace's options for printing (``--duration 1``,
``--failure``, ``-T``...), except ``-m PAGES`` and ``--max-size SIZE``
(perf record's buffer and one file's bound);
``-e`` is refused, as ``perf trace -i`` ignores it.  The printed lines (``
0.049 ( 0.013 ms): smtpd/42 getppid() = 1``) go to the log and syslog.
Events lost (perf's buffer was full) are read from the files, written to
the log as ``LOST 123 events!``, added up on the session (``lost_events`` in
``status``, the LOST column of ``tracerctl status``), and the first is one
syslog warning.  The session ends as perf saw the process end:
``exit_group()`` (status 0; perf omits zero arguments) or
``exit_group(error_code: 3)``.  A process killed by a signal makes no such
call; its session ends "exit status unknown", with no crash report (use the
watch tracer for those).  perf ends by itself when the process has gone;
SIGINT makes it stop cleanly otherwise; either way its last file is printed
before the session's closing line.

Security: arguments come from root's config file only; perf prints buffer
and string arguments as addresses, so a traced process chooses little text
of these lines: its 15-byte comm, after the timestamp.  Lost events are
counted from perf's records, never from text; a line is read as
``exit_group`` only when it matches whole, so a forged one could at most
misstate the exit status shown; nothing here acts on what it reads.

Diagnostics: a refused preflight fails the session with its one line; perf
exiting before it attached fails it with perf's last line (as for strace);
perf stopping at its size limit (more than perfrecord.MAX_SIZE in a second)
fails the session saying so.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path
from typing import ClassVar

from tracerd import arch
from tracerd.errors import TracerFailed
from tracerd.spawn import Child
from tracerd.tracers import perfcheck, perfrecord
from tracerd.tracers.base import Ending
from tracerd.tracers.command import CommandTracer

EXIT_RE = re.compile(
    r"\s*\d{1,12}\.\d{3} \(\s*(?:\d{1,12}\.\d{3} ms)?\s*\): (?:[^\n]{1,16}/\d{1,10} )?"
    r"exit_group\((?:error_code: (?P<code>\d{1,3}))?\)\s*= \?"
)


class PerfTracer(CommandTracer):
    name = "perf"
    program = "perf"
    detach_signal = signal.SIGINT  # perf record stops its events, writes its last file and exits on SIGINT
    exits_with_target = True  # its events hang up as the process exits, before the pidfd wakes us
    total_lost: ClassVar[int] = 0

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._record_args: list[str] = []
        self._replayer: perfrecord.Replayer | None = None
        self._size_limit = False

    def argv(self) -> list[str]:
        assert self._replayer is not None
        return [
            self.program, "trace", "record", f"--switch-output={perfrecord.SWITCH}",
            f"--max-size={perfrecord.MAX_SIZE}", "--no-inherit", *perfrecord.BUFFER,
            "-o", str(self._replayer.directory / "perf.data"),
            *self._record_args, "-p", str(self.target.pid),
        ]  # fmt: skip

    @classmethod
    def counters(cls) -> dict[str, int]:
        return {"perf_lost_events": cls.total_lost}

    async def preflight(self) -> None:
        self._record_args, replay_args = perfrecord.split_args(self.target.args)
        reason = await perfrecord.check_replay_args(replay_args) or await perfcheck.refusal(self.target.pid)
        if reason:
            raise TracerFailed(reason)
        state_dir = Path(self.target.capture_dir).parent if self.target.capture_dir else None
        directory = perfrecord.private_dir(state_dir, self.target.pid)
        self._replayer = perfrecord.Replayer(
            directory, replay_args, self._on_trace_lines, self._on_lost, on_unprinted=self._find_ending
        )

    async def attach(self) -> None:
        try:
            await super().attach()
        except BaseException:
            if self._replayer is not None:
                self._replayer.close()
            raise

    def confirmed(self, child: Child) -> bool:
        """perf holds its events and waits for them in poll()."""
        facts = arch.of()
        calls = facts.poll_calls if facts is not None else None
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
        """perf record's own words: a closed file is printed; its chatter stays out of the log."""
        kept: list[str] = []
        for line in lines:
            if line.startswith("[ perf record: "):
                if line.startswith("[ perf record: Dump ") and self._replayer is not None:
                    self._replayer.kick()
                if perfrecord.SIZE_LIMIT not in line:
                    continue
                self._size_limit = True
            kept.append(line)
        if kept:
            self._recent.extend(kept[-4:])
            self.output.lines(kept)

    def _on_trace_lines(self, lines: list[str]) -> None:
        """What perf trace -i printed of one file."""
        self._find_ending(lines)
        self.output.lines(lines)

    def _find_ending(self, lines: list[str]) -> None:
        if self._ending is None:
            for line in lines:
                if "exit_group(" in line:
                    match = EXIT_RE.fullmatch(line.rstrip())
                    if match:
                        self._ending = Ending("exited", exit_code=int(match.group("code") or 0))
                        self._ending_seen.set()
                        break

    def _on_lost(self, lost: int) -> None:
        self.output.lines([f"LOST {lost} events!"])
        if not self.lost_events:
            self.output.warn(f"perf lost {lost} events (perf could not keep up; see lost_events in status)")
        self.lost_events += lost
        PerfTracer.total_lost += lost

    async def _drain(self) -> None:
        """Print what perf left, within a bound: the session must end even if perf trace -i hangs."""
        if self._replayer is None:
            return
        try:
            await asyncio.wait_for(self._replayer.drain(), perfrecord.REPLAY_TIMEOUT + 5.0)
        except TimeoutError:
            self.output.warn("perf trace -i did not finish printing perf's last file; its lines are lost")

    async def _finish(self) -> Ending:
        await self._drain()
        return await super()._finish()

    async def wait(self) -> Ending:
        try:
            ending = await super().wait()
            if ending.state in ("detached", "failed"):
                await self._drain()
            if ending.state == "failed" and self._size_limit:
                ending = Ending("failed", reason=(
                    f"perf stopped recording: one file ({perfrecord.SWITCH} of events) passed its --max-size"
                    " (perf size limit reached)"
                ))  # fmt: skip
            return ending
        finally:
            if self._replayer is not None:
                self._replayer.close()


def _is_perf_event(pid: int, fd: str) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[perf_event]"
    except OSError:
        return False
