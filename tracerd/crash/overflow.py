"""Stack overflow: recognised from the fault, its recursion collapsed and counted.

recognise(): a SIGSEGV whose fault address is within BELOW_SP under or ABOVE_SP
above the crashed thread's sp, in no mapping or a no-access one, with a writable
anonymous stack mapping at most GUARD_REACH above it.  find_cycle() finds the
recursion's cycle among the innermost frames gdb listed; analyse() counts it,
exactly when gdb unwound the whole stack (``unwound``), else from the stack's
size over the bytes per frame (``estimated``).  Report fields: docs/design.md.

Security: pure functions over the target's numbers and names; no file is read.

Diagnostics: nothing raises; what cannot be told (no sp, no fault address, maps
unreadable) is not called a stack overflow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from tracerd.crash import siginfo
from tracerd.crash.segv import Mapping, number

PAGE = 4096
BELOW_SP = PAGE  # a push or call faults just under sp
ABOVE_SP = 64 * 1024  # a store into the frame just made (sp moved down by its size first)
GUARD_REACH = 1 << 20  # the kernel's stack_guard_gap (256 pages) below [stack]; a thread's guard is adjacent
MAX_PERIOD = 8  # mutual recursion of up to 8 functions
MAX_LEAD = 5  # frames before the cycle starts (memset, the callee the fault hit)
MIN_REPEATS = 3


class FrameLike(Protocol):
    level: int
    function: str | None
    address: str | None


def stack_pointer(registers: dict[str, str]) -> int | None:
    return number(registers.get("rsp") or registers.get("sp"))


def recognise(signal: dict[str, Any], registers: dict[str, str], maps: Sequence[Mapping]) -> dict[str, Any] | None:
    """The overflow's facts (fault address, sp, the stack's mapping) if this SIGSEGV is one; else None."""
    if signal.get("name") != "SIGSEGV" or siginfo.sent_by_another(signal):
        return None
    fault, sp = number(signal.get("fault_address")), stack_pointer(registers)
    if fault is None or sp is None or not sp - BELOW_SP <= fault < sp + ABOVE_SP:
        return None
    if any(m.start <= fault < m.end and m.perms[:3] != "---" for m in maps):
        return None  # an accessible mapping: some other bug
    above = sorted((m for m in maps if m.start > fault and m.perms[:3] != "---"), key=lambda m: m.start)
    stack = above[0] if above else None
    if stack is None or stack.start - fault > GUARD_REACH or not stack.perms.startswith("rw"):
        return None
    if stack.path and not stack.path.startswith("[stack"):
        return None  # file-backed or [heap]: not a stack
    return {
        "fault_address": hex(fault),
        "sp": hex(sp),
        "stack": f"{stack.start:#x}-{stack.end:#x} {stack.path or '(a thread stack)'}",
        "stack_top": hex(stack.end),
    }


def _key(frame: FrameLike) -> str:
    return frame.function or f"?{frame.address}"


def find_cycle(frames: Sequence[FrameLike]) -> tuple[int, int] | None:
    """(first level, period) of the shortest cycle repeating MIN_REPEATS times to the end, or None."""
    keys = [_key(frame) for frame in frames]
    for lead in range(min(MAX_LEAD, len(keys)) + 1):
        rest = keys[lead:]
        for period in range(1, MAX_PERIOD + 1):
            repeats = all(rest[i] == rest[i + period] for i in range(len(rest) - period))
            if repeats and len(rest) >= period * MIN_REPEATS:
                return lead, period
    return None


def analyse(found: dict[str, Any], inner: Sequence[FrameLike], outer: Sequence[FrameLike], *, thread: int,
            depth: int | None, sp_at_last: int | None) -> dict[str, Any]:  # fmt: skip
    """``found`` with the cycle and depth; ``depth`` is gdb's count (None: too deep to unwind),
    ``sp_at_last`` $sp in the last of ``inner`` (for the estimate)."""
    info = dict(found, thread=thread, depth=depth, depth_source="unwound" if depth is not None else None)
    sp, top = number(found.get("sp")), number(found.get("stack_top"))
    if sp is not None and top is not None and sp_at_last is not None and len(inner) > 1 and sp < sp_at_last < top:
        per_frame = (sp_at_last - sp) / (len(inner) - 1)
        info["bytes_per_frame"] = round(per_frame)
        if depth is None:  # the stack's bytes over a frame's: the frames outside the cycle are few
            info["depth"] = round((top - sp) / per_frame)
            info["depth_source"] = "estimated"
    cycle = find_cycle(inner)
    if cycle is None:
        return info
    lead, period = cycle
    cycle_keys = {_key(frame) for frame in inner[lead : lead + period]}
    info["cycle"] = [frame.function for frame in inner[lead : lead + period]]
    info["cycle_start"] = lead
    last = next((frame.level for frame in reversed(outer) if _key(frame) in cycle_keys), None)
    if last is not None and depth is not None:
        info["cycle_count"] = (last - lead + 1) // period
    elif info.get("depth"):
        info["cycle_count"] = (int(info["depth"]) - lead) // period  # the few outer frames not known: counted in
    else:
        info["cycle_count"] = (len(inner) - lead) // period
    return info


def describe(info: dict[str, Any]) -> str:
    """``stack overflow in thread 1: 7941 frames (unwound), cycle recurse (x 7938)``"""
    depth = info.get("depth")
    text = "stack overflow"
    if info.get("thread") is not None:
        text += f" in thread {info['thread']}"
    about = "" if info.get("depth_source") == "unwound" else "~"
    if depth is not None:
        how = "unwound by gdb" if not about else "estimated: the stack's size over the innermost frames' size"
        text += f": {about}{depth} frames deep ({how})"
    if info.get("cycle"):
        names = " < ".join(str(name or "??") for name in info["cycle"])
        text += f", cycle {names} (x {about}{info.get('cycle_count')})"
    return text + f"; fault {info.get('fault_address')}, sp {info.get('sp')}, stack {info.get('stack')}"


def listing(frames: Sequence[FrameLike], line: Callable[[Any], str], info: dict[str, Any] | None) -> list[str]:
    """Frame lines, with a ``...`` line where levels jump and one for the frames gdb did not unwind."""
    out: list[str] = []
    previous: int | None = None
    for frame in frames:
        if previous is not None and frame.level > previous + 1:
            skipped = frame.level - previous - 1
            what = f"{skipped} frames not listed"
            if info and info.get("cycle"):
                what += f" (the cycle {' < '.join(str(n or '??') for n in info['cycle'])})"
            out.append(f"     ... {what} ...")
        out.append(line(frame))
        previous = frame.level
    depth = info.get("depth") if info else None
    if previous is not None and isinstance(depth, int) and depth > previous + 1:
        out.append(f"     ... ~{depth - previous - 1} more frames, not unwound ...")
    return out
