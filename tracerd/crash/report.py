"""Crash reports: the model every tracer fills, and its signature.

A tracer that sees a fatal signal fills a CrashReport and hands it to
CrashStore.record() before releasing the process.  The signature
(tracerd.crash.signature) is program, signal, an assertion's location and the
top frames, never addresses; a signal another process sent is signed by
program and signal only, and ``signature_basis`` says which.

Security: the report's strings are the target's and data only; they never
name a file, and the summary and log block replace control characters so a
hostile symbol cannot forge log lines.

Diagnostics: no I/O here; crashed_thread() raises ValueError for a report
without threads; an unnamed frame prints as ``??``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from tracerd.crash import facts, overflow, siginfo
from tracerd.crash.signature import (
    assertion_location,
    frames_basis,
    frames_signature,
    meaningful,
    overflow_cycle,
    overflow_signature,
    program_of,
    program_signature,
    sent_signature,
)
from tracerd.crash.signature import named_frames as count_named
from tracerd.textclean import LINES, clean

INDEX = "index.json"
TEMP_PREFIX = ".tmp-"
MAX_REPEATS = 100
# a crash id or signature: all a request or the command line may give for one
CRASH_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
PUBLIC_FIELDS = (
    "id", "signature", "count", "first_seen", "last_seen", "name", "pid", "signal", "top", "report", "capture",
    "core",
)  # fmt: skip


@dataclass
class Frame:
    level: int
    function: str | None
    file: str | None
    line: int | None
    object: str | None
    address: str | None
    pc: str | None = None  # absolute (docs/crashes.md "Cores and retrace")
    module_offset: str | None = None  # pc - the module's load bias: the address in its ELF file
    build_id: str | None = None  # of the module the pc is in


@dataclass
class Thread:
    id: int
    tid: int | None
    name: str | None
    crashed: bool
    frames: list[Frame]
    text: str = ""  # gdb's `bt full` for this thread


@dataclass
class Library:
    path: str
    start: str | None
    end: str | None
    build_id: str | None
    debug_package: str | None = None
    bias: str | None = None  # load bias: where the ELF's vaddr 0 is in the process
    deleted: bool = False  # the mapped file was deleted or replaced on disk ("(deleted)")
    build_id_source: str | None = None  # "map_files" (the mapped copy) or "path" (the file on disk)


def _clean(text: object, *, lines: bool = False) -> str:
    """Target-supplied text made safe for one log line (or a block, keeping newlines)."""
    return clean(text, LINES if lines else "")


def signature(frames: list[Frame], depth: int = 5) -> str:
    """The signature of ``frames`` alone (no program, signal or assertion): see tracerd.crash.signature."""
    return frames_signature(frames, depth)


def top_functions(frames: list[Frame], n: int = 3) -> list[str]:
    """The top ``n`` frames past libc's abort path, innermost first (as in the summary)."""
    return [facts.frame_label(frame) for frame in meaningful(frames)[:n]]  # unnamed: (smtpd + 0x1427)


def format_frame(frame: Frame) -> str:
    """One frame the way gdb's ``bt`` prints it."""
    text = f"{'#' + str(frame.level):<3} "  # as gdb: "#0  0x..", "#4024 0x.."
    if frame.address:
        text += f"{_clean(frame.address)} in "
    text += f"{_clean(frame.function or '??')} ()"
    if not frame.function and frame.object and frame.module_offset:
        text += f" {_clean(facts.frame_label(frame))}"  # coredumpctl's (smtpd + 0x1427)
    if frame.file:
        text += f" at {_clean(frame.file)}" + (f":{frame.line}" if frame.line is not None else "")
    elif frame.object:
        text += f" from {_clean(frame.object)}"
    return text




def _epoch(text: object) -> float:
    try:
        return dt.datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return 0.0


@dataclass
class CrashReport:
    process: dict[str, Any]  # name, pid, exe, cmdline (list), uid
    signal: dict[str, Any]  # tracerd.crash.siginfo.decode(): number, name, si_code, fault_address, sender...
    time: str  # ISO UTC "...Z"
    threads: list[Thread]
    registers: dict[str, str]
    disassembly: str  # gdb's x/16i $pc
    libraries: list[Library]
    log: str | None  # the per-process log
    tracer: str
    missing_symbols: list[dict[str, Any]] = field(default_factory=list)  # tracerd.crash.debugsyms.missing_symbols()
    debug_symbols: dict[str, Any] | None = None  # tracerd.crash.debugsyms.advice()
    id: str | None = None  # given by CrashStore.record()
    notice: str | None = None  # what this tracer cannot capture (strace, ltrace: no backtrace)
    trace: list[str] = field(default_factory=list)  # the tracer's last lines (strace, ltrace)
    core: dict[str, Any] | None = None  # tracerd.crash.corefile: the kept core, or why there is none
    mail_log: list[str] = field(default_factory=list)  # the crashed pid's last mail log lines
    abort_message: str | None = None  # glibc's __abort_msg (SIGABRT)
    assertion: str | None = None  # an assert()'s message, as apport's AssertionMessage
    core_source: str | None = None  # the raw core the tracer took (not stored)
    stack_overflow: dict[str, Any] | None = None  # tracerd.crash.overflow.analyse(): depth, cycle and count
    host: dict[str, Any] = field(default_factory=dict)  # tracerd.crash.facts.host_facts(): hostname, boot id...

    def crashed_thread(self) -> Thread:
        """The thread that took the signal, else the first; raises ValueError if there is none."""
        for thread in self.threads:
            if thread.crashed:
                return thread
        if not self.threads:
            raise ValueError("crash report without threads")
        return self.threads[0]

    def _crashed_frames(self) -> list[Frame]:
        return self.crashed_thread().frames if self.threads else []

    @property
    def sent_by_another(self) -> bool:
        """The signal came from another process's kill(): the frames are where it was, not a bug."""
        return siginfo.sent_by_another(self.signal)

    @property
    def signature_kind(self) -> str:
        """``sender`` (another process's kill), ``overflow`` (a recursion), ``frames`` or ``program``."""
        if self.sent_by_another:
            return "sender"
        if overflow_cycle(self.stack_overflow, self._crashed_frames()):
            return "overflow"
        return "frames" if self._crashed_frames() else "program"

    @property
    def signature_basis(self) -> str:
        """What went into the signature, in words, after its kind (``frames: crashd SIGFPE, ...``)."""
        kind, program, signal_name = self.signature_kind, program_of(self.process), str(self.signal.get("name"))
        if kind == "frames":
            location = assertion_location(self.assertion)
            return frames_basis(self._crashed_frames(), program=program, signal_name=signal_name, location=location)
        if kind == "overflow":
            return f"overflow: {program} {signal_name}, stack overflow in the cycle " + " < ".join(
                overflow_cycle(self.stack_overflow, self._crashed_frames()))
        return f"{kind}: {program} {signal_name}"

    @property
    def signature(self) -> str:
        kind, program, signal_name = self.signature_kind, program_of(self.process), str(self.signal.get("name"))
        if kind == "sender":
            return sent_signature(program, signal_name)
        if kind == "program":
            return program_signature(program, signal_name)
        if kind == "overflow":
            return overflow_signature(program, signal_name, overflow_cycle(self.stack_overflow, self._crashed_frames()))
        return frames_signature(self._crashed_frames(), program=program, signal_name=signal_name,
                                location=assertion_location(self.assertion))  # fmt: skip

    @property
    def named_frames(self) -> int:
        """The crashed thread's identified frames: the store keeps the report naming most."""
        return count_named(self._crashed_frames())

    @property
    def top(self) -> list[str]:
        return top_functions(self._crashed_frames())

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        del data["id"], data["core_source"]
        return {"id": self.id, "signature": self.signature, "signature_basis": self.signature_basis, "top": self.top,
                **data}  # fmt: skip

    def summary(self, report_path: str) -> str:
        """The one crit syslog line: who, which signal, where, and the report."""
        where = " < ".join(_clean(name)[:80] for name in self.top) or "??"
        who = f"{_clean(self.process.get('name'))}[{self.process.get('pid')}]"
        sig = self.signal
        what = _clean(sig.get("name"))
        if self.sent_by_another:
            what += (f" sent by pid {sig.get('sender_pid')} uid {sig.get('sender_uid')}"
                     f" ({_clean(sig.get('si_code_name') or sig.get('si_code'))}, not a fault)")  # fmt: skip
        return f"{who}: crashed: {what} in {where}; report {_clean(report_path)}"

    def readable(self) -> str:
        """The backtrace block for the per-process log, crashed thread first."""
        sig = self.signal
        lines = [
            f"*** {_clean(self.process.get('name'))}[{self.process.get('pid')}] crashed:"
            f" {_clean(sig.get('name'))} (signal {sig.get('number')}, {_clean(siginfo.describe(sig))}) at {self.time}",
            f"fault address: {_clean(sig.get('fault_address') or 'none')}",
            f"signature: {self.signature}  tracer: {self.tracer}",
        ]
        if self.stack_overflow:
            lines.append(_clean(overflow.describe(self.stack_overflow)))
        if sig.get("analysis"):
            lines.append(f"analysis: {_clean(sig['analysis'])}")
        lines += [f"{label}: {_clean(text)}" for label, text in facts.describe(self.process, self.host)]
        if self.sent_by_another:
            lines.insert(2, f"sent by pid {sig.get('sender_pid')} uid {sig.get('sender_uid')}: not a fault, the frames"
                            " show where the process was; signature of program and signal, not of the frames")
        if self.notice:
            lines.append(f"notice: {_clean(self.notice)}")
        if self.assertion or self.abort_message:
            lines.append(f"abort message: {_clean(self.assertion or self.abort_message)}")
        crashed = self.crashed_thread() if self.threads else None
        for thread in sorted(self.threads, key=lambda t: t is not crashed):
            mark = " [crashed]" if thread is crashed else ""
            label = f' "{_clean(thread.name)}"' if thread.name else ""
            lines += ["", f"Thread {thread.id} (LWP {thread.tid}{label}){mark}:"]
            info = self.stack_overflow if thread is crashed else None
            lines += overflow.listing(thread.frames, format_frame, info) or ["(no frames)"]
        if crashed is not None and crashed.text:
            lines += ["", "bt full of the crashed thread:", _clean(crashed.text, lines=True)]
        if self.registers:
            pairs = [f"{_clean(name)} {_clean(value)}" for name, value in self.registers.items()]
            lines += ["", "registers:"] + ["  " + "  ".join(pairs[i : i + 4]) for i in range(0, len(pairs), 4)]
        if self.disassembly:
            lines += ["", "x/16i $pc:", _clean(self.disassembly, lines=True)]
        for missing in self.missing_symbols:
            package = missing.get("package")
            owner = f"{_clean(package)} {_clean(missing.get('version'))}" if package else "no package"
            lines.append(f"no line info for {_clean(missing.get('object'))} ({owner}): {_clean(missing.get('note'))}")
        if self.mail_log:
            lines += ["", "mail log, this pid's last lines:"] + ["  " + _clean(text) for text in self.mail_log]
        if self.core:
            lines.append(f"core: {_clean(self.core.get('file') or self.core.get('reason') or self.core.get('state'))}")
        if self.debug_symbols:
            lines += ["", "debug symbols:"] + ["  " + _clean(text) for text in self.debug_symbols.get("advice", [])]
        return "\n".join(lines)
