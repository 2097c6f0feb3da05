"""What a strace or ltrace session saw of its process, and the crash report made of it.

:class:`TraceObserver` keeps the process's own ending (a ``[pid N]`` line is
the process's only for N = its pid; a line without one is the process's), the
last delivery of each signal with any strace -k frames, and the trace's tail.
A fatal signal makes a CrashReport of that; it is written after the death, so
(unlike watch and gdb) the parent may see the death before the report exists.

Security: lines are stored as data, never interpreted past tracetext; each
kept line is cut at MAX_LINE_CHARS.

Diagnostics: what the tracer did not print is said in the report's notice,
never guessed.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import psutil

from tracerd.crash.report import CrashReport, Frame, Thread
from tracerd.crash.siginfo import FATAL_SIGNALS
from tracerd.procinfo import ProcessIdentity
from tracerd.timefmt import iso_utc
from tracerd.tracers.base import Ending
from tracerd.tracers.tracetext import (
    SignalLine,
    StackFrame,
    parse_end,
    parse_frame,
    parse_signal,
    siginfo,
)

TAIL_LINES = 50
MAX_LINE_CHARS = 2000
MAX_FRAMES = 256
OTHERS_KEPT = 32


class TraceObserver:
    """The process's ending, its last signals and the trace's tail, from the tracer's lines."""

    def __init__(self, pid: int, dialect: str) -> None:
        self.pid = pid
        self.dialect = dialect
        self.ending: Ending | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.signals: dict[str, tuple[SignalLine, float]] = {}  # by signal name, the last one
        self.frames: dict[str, list[StackFrame]] = {}  # strace -k: by signal name
        # (pid, how) of the last threads and children that ended under -f
        self.others_ended: collections.deque[tuple[int, str]] = collections.deque(maxlen=OTHERS_KEPT)
        self._frames_of: str | None = None

    def feed(self, lines: list[str]) -> bool:
        """True when the batch brought the process's own ending."""
        self.tail.extend(lines)
        found = False
        for line in lines:
            if self._frames_of is not None:
                frame = parse_frame(line)
                if frame is not None:
                    frames = self.frames[self._frames_of]
                    if len(frames) < MAX_FRAMES:
                        frames.append(frame)
                    continue
                self._frames_of = None
            if "--- SIG" in line:
                signal_line = parse_signal(line)
                if signal_line is not None:
                    self.signals[signal_line.name] = (signal_line, time.time())
                    self.frames[signal_line.name] = []
                    self._frames_of = signal_line.name
                    continue
            if "+++" in line and self.ending is None:
                end = parse_end(line, self.dialect)
                if end is None:
                    continue
                how = f"killed by {end.signal}" if end.signal else f"exited with {end.code}"
                if end.pid is not None and end.pid != self.pid:
                    self.others_ended.append((end.pid, how))
                    continue
                if end.signal:
                    state = "crashed" if end.signal in FATAL_SIGNALS else "exited"
                    self.ending = Ending(state, signal=end.signal)
                else:
                    self.ending = Ending("exited", exit_code=end.code)
                found = True
        return found

    def crashed(self) -> bool:
        return self.ending is not None and self.ending.state == "crashed"

    def report(self, process: dict[str, Any], tracer: str, log_path: str | None) -> CrashReport:
        """Call once the ending is a fatal signal."""
        assert self.ending is not None
        assert self.ending.signal is not None
        name = self.ending.signal
        seen = self.signals.get(name)
        frames = self.frames.get(name, [])
        if seen is not None:
            signal_line, when = seen
            signal: dict[str, Any] = siginfo(signal_line, own_pid=self.pid)
            tid = signal_line.pid if signal_line.pid is not None else self.pid
        else:
            signal = siginfo(SignalLine(None, name, {}, None, ""))  # every key, each None
            signal["tracer_line"] = None
            when, tid = time.time(), self.pid
        signal["tid"] = tid
        # no frames, no thread: the report says there is no backtrace
        threads = [Thread(id=1, tid=tid, name=None, crashed=True, frames=[_frame(i, f) for i, f in enumerate(frames)])]
        tail = [line if len(line) <= MAX_LINE_CHARS else line[:MAX_LINE_CHARS] + "...(cut)" for line in self.tail]
        report = CrashReport(
            process=process,
            signal=signal,
            time=iso_utc(when),
            threads=threads if frames else [],
            registers={"pc": signal["instruction_pointer"]} if signal.get("instruction_pointer") else {},
            disassembly="",
            libraries=[],
            log=log_path,
            tracer=tracer,
        )
        report.notice = self._notice(tracer, seen is not None, bool(frames))
        report.trace = tail
        return report

    def _notice(self, tracer: str, seen: bool, frames: bool) -> str:
        what = (
            f"{tracer} gives no backtrace: this report holds what {tracer} printed (the signal's delivery"
            f" and the trace's last {TAIL_LINES} lines), written after the process had died of the signal;"
            " for frames, registers and variables use the watch or gdb tracer"
        )
        if frames:
            what = (
                "strace -k gave the frames (object, function+offset, address as an offset into the object);"
                " no registers, variables or disassembly; written after the process had died of the signal"
            )
        elif tracer == "strace":
            what += " (or strace -k for frames)"
        if not seen:
            what += (
                f"; {tracer} did not show the signal's delivery (a thread it does not trace: add -f;"
                " or its output options hide signals), so there is no siginfo"
            )
        elif tracer == "ltrace":
            what += "; ltrace prints no siginfo (si_code, address)"
        return what


def _frame(level: int, frame: StackFrame) -> Frame:
    return Frame(level=level, function=frame.function, file=None, line=None, object=frame.object,
                 address=frame.address)  # fmt: skip


def process_info(identity: ProcessIdentity, name: str) -> dict[str, Any]:
    """name, pid, exe, cmdline, uid of a live process (read at attach: at the crash it is gone)."""
    info: dict[str, Any] = {"name": name, "pid": identity.pid, "exe": None, "cmdline": [], "uid": None}
    try:
        proc = psutil.Process(identity.pid)
        exe, cmdline, uid = proc.exe(), proc.cmdline(), proc.uids().real
        if identity.alive():  # not a recycled pid
            info.update(exe=exe, cmdline=cmdline, uid=uid)
    except (psutil.Error, OSError):
        pass
    return info
