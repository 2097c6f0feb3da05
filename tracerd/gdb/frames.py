"""Bounded unwinding: a thread's innermost and outermost frames, never its whole stack.

A stack overflow has tens of thousands of frames; listing them held the
process past gdb's timeouts. Per thread: the innermost :data:`INNER` +
:data:`OUTER` frames; a deeper stack is counted by ``-stack-info-depth`` up to
a limit (gdb unwinds ~40 µs a frame) and, under it, its outermost frames
listed too. Past the limit the depth is unknown (see tracerd.crash.overflow).

Security: commands are built from gdb's own thread ids and integers.

Diagnostics: a failed step is the caller's ``run`` returning None; what was
listed so far stays.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

INNER = 30
OUTER = 10
BT_FULL = INNER  # `bt full N`: the innermost frames' locals only
DEPTH_LIMIT = 5_000  # the crashed thread: 0.2 s of unwinding idle, ~1 s on a loaded machine
OTHER_DEPTH_LIMIT = 1_000

Run = Callable[[str, str], Awaitable[Any]]  # (what, MI command) -> payload, or None when it failed


@dataclass
class Stack:
    frames: list[dict[str, Any]] = field(default_factory=list)  # gdb's raw MI frames, innermost first
    depth: int | None = None  # frames in the stack, None when deeper than the limit (or unknown)
    complete: bool = True  # every frame is in ``frames``


async def unwind(run: Run, thread: str, *, limit: int, count_depth: bool = True) -> Stack:
    """The bounded frames of gdb thread ``thread``; ``count_depth`` False: the innermost only."""
    listed = await run("frames", f"-stack-list-frames --thread {thread} 0 {INNER + OUTER - 1}") or {}
    frames = list(listed.get("stack", []))
    if len(frames) < INNER + OUTER:
        return Stack(frames, len(frames) if listed else None)
    inner = frames[:INNER]
    if not count_depth:
        return Stack(inner, None, complete=False)
    counted = await run("depth", f"-stack-info-depth --thread {thread} {limit}") or {}
    depth = int(counted["depth"]) if str(counted.get("depth", "")).isdigit() else None
    if depth is None or depth >= limit:
        return Stack(inner, None, complete=False)
    if depth <= INNER + OUTER:
        return Stack(frames[:depth], depth)
    tail = await run("frames", f"-stack-list-frames --thread {thread} {depth - OUTER} {depth - 1}") or {}
    return Stack(inner + list(tail.get("stack", [])), depth, complete=False)


async def sp_at(run: Run, thread: str, level: int) -> str | None:
    """$sp as frame ``level`` of ``thread`` sees it (the caller's stack pointer, unwound)."""
    command = f'-data-evaluate-expression --thread {thread} --frame {level} "(unsigned long) $sp"'
    value = await run("sp", command) or {}
    return str(value["value"]) if value.get("value") else None
