"""Crash signatures: which crashes are one bug (as apport's StacktraceTop, ABRT's duphash).

16 hex digits of sha256 over the program, the signal, an assert()'s
``file:line`` and the crashing thread's top DEPTH frames past libc's and
ld.so's FATAL_PATH (a named frame by its function, an unnamed one as
``module+0xOFFSET``); never pid, ASLR or time.  frames_basis() says in words
what went in.  Rules: docs/design.md, "Files", Signature.

Security: frame names and the abort message are the target's; they are hashed
and shown, never evaluated.

Diagnostics: nothing raises; what is unknown counts as ``?`` or ``?@module``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

DEPTH = 5
TRAMPOLINES = frozenset({"<signal handler called>", "__restore_rt", "__kernel_rt_sigreturn"})
# glibc's (and ld.so's) way from a fatal condition to the signal: never the bug
FATAL_PATH = TRAMPOLINES | {
    "__pthread_kill_implementation", "__pthread_kill_internal", "__pthread_kill", "pthread_kill",
    "raise", "gsignal", "abort", "__assert_fail_base", "__assert_fail", "__assert_perror_fail",
    "__libc_message", "__libc_fatal", "__fortify_fail", "__chk_fail", "__stack_chk_fail", "malloc_printerr",
    "_dl_signal_error", "_dl_fatal_printf", "__kernel_vsyscall",
}  # fmt: skip
# objects the fatal path runs in (a program's own function named "abort" is its own)
_RUNTIME = re.compile(r"(?:libc|libpthread|ld-linux[\w.-]*|ld|linux-vdso|linux-gate)(?:[.-][\w.]*)?\.so[\w.]*|\[vdso\]")
_SUFFIX = re.compile(r"\.(?:constprop|isra|part|cold|lto_priv)\.?\d*$")
# glibc: "PROG: FILE:LINE: FUNCTION: Assertion `EXPR' failed."
_ASSERT_AT = re.compile(r"(?:^|: )(?P<file>[^\n:]+):(?P<line>\d+): (?:[^\n]*?: )?Assertion `")


class FrameLike(Protocol):
    function: str | None
    object: str | None
    module_offset: str | None


F = TypeVar("F", bound=FrameLike)


def _base_name(function: str) -> str:
    """``__GI___assert_fail`` -> ``__assert_fail``; ``f.constprop.0`` -> ``f``."""
    name = _SUFFIX.sub("", function)
    while name.startswith("__GI_"):
        name = name[len("__GI_") :]
    return name


def _in_runtime(frame: FrameLike) -> bool:
    return frame.object is None or bool(_RUNTIME.fullmatch(os.path.basename(frame.object)))


def on_fatal_path(frame: FrameLike) -> bool:
    """A trampoline, or libc's or ld.so's raise/abort/assert/pthread_kill frame."""
    if frame.function in TRAMPOLINES:
        return True
    return bool(frame.function) and _base_name(str(frame.function)) in FATAL_PATH and _in_runtime(frame)


def meaningful(frames: Sequence[F]) -> list[F]:
    """The frames from the first one that is not on the fatal path on (all of them if every one is)."""
    start = 0
    while start < len(frames) and on_fatal_path(frames[start]):
        start += 1
    return list(frames[start:] if start < len(frames) else frames)


def frame_token(frame: FrameLike) -> str:
    """A named frame's function; else ``module+0xOFFSET``; else ``?@module`` or ``?``."""
    if frame.function:
        return frame.function
    if not frame.object:
        return "?"
    module = os.path.basename(frame.object)
    return f"{module}+{frame.module_offset}" if frame.module_offset else "?@" + module


def assertion_location(message: str | None) -> str | None:
    """``file.c:12`` of an assert() message (the file's basename), else None."""
    found = _ASSERT_AT.search(message or "")
    return f"{os.path.basename(found['file'].strip())}:{found['line']}" if found else None


def program_of(process: dict[str, object]) -> str:
    """The service name, else the executable's basename, else ``?``."""
    name = process.get("name")
    if isinstance(name, str) and name:
        return name
    exe = process.get("exe")
    return os.path.basename(exe) if isinstance(exe, str) and exe else "?"


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode("utf-8", "replace")).hexdigest()[:16]


def frames_signature(
    frames: Sequence[FrameLike], depth: int = DEPTH, *, program: str = "", signal_name: str = "",
    location: str | None = None,
) -> str:  # fmt: skip
    """The signature of a crash with frames: program, signal, assertion location, top frames."""
    tokens = [frame_token(frame) for frame in meaningful(frames)[:depth]]
    return _digest(["frames v2", program, signal_name, location or "", *tokens])


def frames_basis(frames: Sequence[FrameLike], *, program: str, signal_name: str, location: str | None) -> str:
    """``frames: crashd SIGABRT, assertion at bugs.c:12, check_invariant < main < ...``"""
    tokens = " < ".join(frame_token(frame) for frame in meaningful(frames)[:DEPTH])
    where = f", assertion at {location}" if location else ""
    return f"frames: {program} {signal_name}{where}, {tokens}"


def sent_signature(program: str, signal_name: str) -> str:
    """A signal another process sent: program and signal."""
    return _digest(["sent by user", program, signal_name])


def program_signature(program: str, signal_name: str) -> str:
    """A crash without frames (an interrupted capture, strace or ltrace): program and signal."""
    return _digest(["no frames", program, signal_name])


def overflow_cycle(info: dict[str, Any] | None, frames: Sequence[FrameLike]) -> list[str]:
    """The overflow's recursion cycle as tokens, rotated to sort first (the fault may hit any of it); [] if none."""
    if not info or not info.get("cycle"):
        return []
    start, period = int(info.get("cycle_start") or 0), len(info["cycle"])
    tokens = [frame_token(frame) for frame in frames[start : start + period]]
    return min(tokens[i:] + tokens[:i] for i in range(len(tokens))) if len(tokens) == period else []


def overflow_signature(program: str, signal_name: str, cycle: Sequence[str]) -> str:
    """A stack overflow: program, signal and the recursion's cycle (not its depth nor where the fault hit)."""
    return _digest(["stack overflow", program, signal_name, *cycle])


def named_frames(frames: Sequence[FrameLike]) -> int:
    """How many frames are identified (a function, or a module offset): how good a report is."""
    return sum(1 for frame in frames if frame.function or (frame.object and frame.module_offset))


def report_named_frames(report: dict[str, Any]) -> int:
    """:func:`named_frames` of a stored report's (JSON) crashed thread."""
    threads = [t for t in report.get("threads") or [] if isinstance(t, dict)]
    crashed = next((t for t in threads if t.get("crashed")), threads[0] if threads else {})
    frames = [f for f in crashed.get("frames") or [] if isinstance(f, dict)]
    return sum(1 for f in frames if f.get("function") or (f.get("object") and f.get("module_offset")))
