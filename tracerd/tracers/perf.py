"""The perf backend: system calls from the kernel's tracepoints, recorded, without ptrace stops.

``perf trace record --switch-output=1s -p PID``; perfrecord prints each closed
file, so the process wakes perf only when its buffer fills, and lines arrive
about a second late.  perfcheck refuses first what the kernel would not allow.
No TracerPid: attached once perf holds perf_event fds and waits in poll().
ARGS, lost events and endings: docs/design.md, "The perf tracer".  A process
killed by a signal ends "exit status unknown", with no crash report.

Security: ARGS come from root's config only.  A traced process chooses little
of the lines (its comm); lost events are counted from records, not text; a
forged exit_group line could at most misstate the exit status shown.

Diagnostics: a refused preflight, perf exiting before it attached (its last
line), or perf's size limit fails the session with one line.
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
    detach_signal = signal.SIGINT  # perf record writes its last file and exits
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
        """perf record's own lines: a closed file is printed; its chatter stays out of the log."""
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
        """Print what perf left, bounded: the session must end even if perf trace -i hangs."""
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
