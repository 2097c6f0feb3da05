"""Fault analysis: what a SIGSEGV or SIGBUS did, in words, as apport's SegvAnalysis.

analyse() reads the decoded signal, the crashed thread's pc and sp, the
instruction at pc (gdb's ``x/16i $pc``, AT&T) and /proc/PID/maps (read while the
process is held), and says one of ``stack overflow``, ``pc outside any
mapping``, ``NULL + 0x44 (read)``, ``write to a read-only mapping of X``... (the
list: docs/design.md, ``analysis``).

Security: pure functions over the target's numbers and gdb's text of its code
(data only).

Diagnostics: nothing raises; a signal that is no fault (sent by another
process, no fault address) gets no analysis (None).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

from tracerd.crash import siginfo

NULL_REACH = 0x10000  # vm.mmap_min_addr's default: nothing is ever mapped below it
NEAR_SP = 64 * 1024  # a fault this close to sp, outside any accessible mapping: the stack ran out
_FIRST_INSN = re.compile(r"^=>\s*0x[0-9a-f]+(?: <[^>]*>)?:\s*(\S+)\s*(.*)$", re.MULTILINE)
_READ_ONLY_OPS = ("cmp", "test", "push", "bt", "ucomis", "comis", "prefetch", "cvt")


def analyse(signal: dict[str, Any], registers: dict[str, str], maps: Sequence[Mapping],
            disassembly: str = "") -> str | None:  # fmt: skip
    """The fault in words, or None when the signal is no memory fault (or already analysed)."""
    if signal.get("analysis"):
        return str(signal["analysis"])  # e.g. "stack overflow", by the overflow capture
    if signal.get("name") not in ("SIGSEGV", "SIGBUS") or siginfo.sent_by_another(signal) or signal.get("user_sent"):
        return None
    if _stack_exhausted(signal, registers, maps):
        return "stack overflow"
    return _bad_pc(registers, maps) or _bad_data(signal, maps, access_kind(disassembly))


class Mapping(Protocol):
    @property
    def start(self) -> int: ...
    @property
    def end(self) -> int: ...
    @property
    def perms(self) -> str: ...
    @property
    def path(self) -> str: ...


class Mapped(NamedTuple):
    start: int
    end: int
    perms: str
    path: str


def read_maps(pid: int) -> list[Mapped]:
    """Every mapping of ``pid`` (/proc/PID/maps); [] when unreadable."""
    out = []
    try:
        with open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) >= 5:
                    start, _, end = fields[0].partition("-")
                    path = fields[5].strip() if len(fields) == 6 else ""
                    out.append(Mapped(int(start, 16), int(end, 16), fields[1], path))
    except (OSError, ValueError):
        return []
    return out


def number(text: object) -> int | None:
    """``0x7ffc...``, ``140720...`` or ``(void *) 0x7ffc...`` as an int; None for anything else."""
    try:
        return int(str(text).split()[-1], 0) if text is not None else None
    except (ValueError, IndexError):
        return None


def _stack_exhausted(signal: dict[str, Any], registers: dict[str, str], maps: Sequence[Mapping]) -> bool:
    fault, sp = number(signal.get("fault_address")), number(registers.get("rsp") or registers.get("sp"))
    if fault is None or sp is None or fault < NULL_REACH or abs(fault - sp) > NEAR_SP or not maps:
        return False
    return not any(m.start <= fault < m.end and m.perms[:3] != "---" for m in maps)


def _bad_pc(registers: dict[str, str], maps: Sequence[Mapping]) -> str | None:
    pc = number(registers.get("rip") or registers.get("pc"))
    if pc is None or not maps:
        return None
    at = mapping_of(maps, pc)
    if at is None:
        return f"pc outside any mapping (pc {pc:#x})"
    if "x" not in at.perms[:3]:
        return f"jump to non-executable memory (pc {pc:#x} in {describe_mapping(at)})"
    return None


def _bad_data(signal: dict[str, Any], maps: Sequence[Mapping], access: str | None) -> str | None:
    fault = number(signal.get("fault_address"))
    if fault is None:
        return None
    if fault < NULL_REACH:
        return f"NULL + {fault:#x}" + (f" ({access})" if access else "")
    if not maps:
        return None
    where = mapping_of(maps, fault)
    if signal.get("name") == "SIGBUS":
        if where is not None and where.path.startswith("/") and signal.get("si_code_name") == "BUS_ADRERR":
            return f"access past the end of the file mapped from {where.path}"
        return None
    if where is None:
        return f"{access or 'access'} {'from' if access == 'read' else 'to'} unmapped address {fault:#x}"
    if where.perms[:3] == "---":
        return f"access to a no-access mapping of {describe_mapping(where)} (a guard page?) at {fault:#x}"
    if "w" not in where.perms[:3] and access != "read":
        return f"write to a read-only mapping of {describe_mapping(where)}"
    return f"{access or 'access'} at {fault:#x} in {describe_mapping(where)} ({where.perms}) refused"


def mapping_of(maps: Sequence[Mapping], address: int) -> Mapping | None:
    return next((m for m in maps if m.start <= address < m.end), None)


def describe_mapping(mapping: Mapping) -> str:
    return mapping.path or "an anonymous mapping"


def access_kind(disassembly: str) -> str | None:
    """``read`` or ``write`` as the instruction at pc (AT&T: the destination last) tells; else None."""
    found = _FIRST_INSN.search(disassembly or "")
    if found is None:
        return None
    op, operands = found.group(1), found.group(2).split("#")[0].strip()
    if "(" not in operands:
        return None  # no memory operand (or an unusual form): say nothing
    if op.startswith(_READ_ONLY_OPS):
        return "read"
    last = _split_operands(operands)[-1]
    return "write" if "(" in last else "read"


def _split_operands(operands: str) -> list[str]:
    """AT&T operands split on the commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for char in operands:
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        depth += (char == "(") - (char == ")")
        current += char
    return [*parts, current.strip()]
