"""Counts of one session and their tables: ``strace -c``'s shape, for the log and ``tracerctl show``.

A :class:`Counts` holds, per system call name, the calls, the failed calls
by errno and (with ``latency = true``) the nanoseconds spent and a log2
histogram of them.  Counts only grow; :meth:`Counts.add` merges what one
bpftrace counted into the totals of a session (a restarted bpftrace starts
from zero: its counts are added to what the session had).

Security: names come from the system's own headers, errno names from
Python's :mod:`errno`; counts are integers from the kernel's maps.

Diagnostics: none; an unknown number is shown as ``syscall_N``, an unknown
errno as ``E123``.
"""

from __future__ import annotations

import errno
import glob
import os
import re
from dataclasses import dataclass, field
from typing import Any

UNISTD = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"  # linux-libc-dev (pulled by gcc)
_DEFINE = re.compile(r"#define\s+__NR_(\w+)\s+(\d+)\s*$", re.M)
_NAMES: dict[int, str] = {}


def syscall_names() -> dict[int, str]:
    """System call number -> name for this machine, from linux-libc-dev's asm/unistd_64.h ({} without it)."""
    if not _NAMES:
        machine = os.uname().machine
        paths = [UNISTD] if machine == "x86_64" else glob.glob(f"/usr/include/{machine}*/asm/unistd_64.h")
        for path in paths[:1]:
            try:
                with open(path, encoding="ascii", errors="replace") as file:
                    _NAMES.update({int(number): name for name, number in _DEFINE.findall(file.read())})
            except OSError:
                pass
    return _NAMES


def syscall_name(number: int) -> str:
    return syscall_names().get(number) or f"syscall_{number}"


def errno_name(number: int) -> str:
    return errno.errorcode.get(number, f"E{number}")


@dataclass
class Call:
    calls: int = 0
    errors: dict[int, int] = field(default_factory=dict)  # errno -> failed calls
    ns: int = 0  # time in the call (latency = true)
    hist: dict[int, int] = field(default_factory=dict)  # log2 bucket (bpftrace hist() index) -> calls

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


@dataclass
class Counts:
    calls: dict[int, Call] = field(default_factory=dict)  # syscall number -> its counts

    def call(self, number: int) -> Call:
        found = self.calls.get(number)
        if found is None:
            found = self.calls[number] = Call()
        return found

    def add(self, other: Counts) -> Counts:
        """self + other, as a new Counts."""
        total = Counts()
        for source in (self, other):
            for number, call in source.calls.items():
                mine = total.call(number)
                mine.calls += call.calls
                mine.ns += call.ns
                for key, value in call.errors.items():
                    mine.errors[key] = mine.errors.get(key, 0) + value
                for key, value in call.hist.items():
                    mine.hist[key] = mine.hist.get(key, 0) + value
        return total

    def by_name(self) -> dict[str, int]:
        return {syscall_name(number): call.calls for number, call in self.calls.items()}

    def total(self) -> int:
        return sum(call.calls for call in self.calls.values())

    def rows(self, top: int | None = None) -> list[dict[str, Any]]:
        """Most called first (most time first with latency), as JSON-able rows."""
        timed = any(call.ns for call in self.calls.values())
        order = sorted(self.calls.items(), key=lambda item: (-(item[1].ns if timed else item[1].calls), item[0]))
        rows: list[dict[str, Any]] = []
        for number, call in order[:top]:
            row: dict[str, Any] = {"syscall": syscall_name(number), "calls": call.calls, "errors": call.failed,
                                      "errno": {errno_name(k): v for k, v in sorted(call.errors.items())}}
            if timed:
                row["seconds"] = call.ns / 1e9
            rows.append(row)
        return rows




def render(rows: list[dict[str, Any]], timed: bool | None = None) -> list[str]:
    """strace -c's table: [% time, seconds, usecs/call,] calls, errors, syscall, then errors by errno."""
    if timed is None:
        timed = any("seconds" in row for row in rows)
    head = f"{'calls':>10} {'errors':>9} {'syscall':<16} errno"
    rule = "-" * 10 + " " + "-" * 9 + " " + "-" * 16 + " " + "-" * 16
    all_seconds = sum(float(row.get("seconds", 0.0)) for row in rows)
    if timed:
        head = f"{'% time':>6} {'seconds':>11} {'usecs/call':>11} " + head
        rule = "-" * 6 + " " + "-" * 11 + " " + "-" * 11 + " " + rule
    lines = [head, rule]
    calls = errors = 0
    for row in rows:
        n, e = int(row["calls"]), int(row["errors"])
        calls, errors = calls + n, errors + e
        by_errno = row.get("errno") or {}
        detail = " ".join(f"{name}:{count}" for name, count in by_errno.items())
        line = f"{n:>10} {e or '':>9} {row['syscall']!s:<16} {detail}".rstrip()
        if timed:
            seconds = float(row.get("seconds", 0.0))
            share = 100.0 * seconds / all_seconds if all_seconds else 0.0
            line = f"{share:>6.2f} {seconds:>11.6f} {round(seconds * 1e6 / n) if n else 0:>11} " + line
        lines.append(line)
    lines.append(rule)
    total = f"{calls:>10} {errors or '':>9} total"
    if timed:
        per_call = round(all_seconds * 1e6 / calls) if calls else 0
        total = f"{100.0 if all_seconds else 0.0:>6.2f} {all_seconds:>11.6f} {per_call:>11} " + total
    lines.append(total)
    return lines


def histogram(counts: Counts, top: int = 5) -> list[str]:
    """With latency: each of the top calls' log2 histogram on one line (``[1us,2us) 12``...)."""
    lines = []
    for number, call in sorted(counts.calls.items(), key=lambda item: -item[1].ns)[:top]:
        if call.hist:
            parts = [f"{bucket_label(index)}:{value}" for index, value in sorted(call.hist.items()) if value]
            lines.append(f"  latency {syscall_name(number)}: " + " ".join(parts))
    return lines


def bucket_label(index: int) -> str:
    """bpftrace hist()'s bucket ``index`` as its lower bound in ns: 0 is <0, 1 is 0, n is 2**(n-2)."""
    if index <= 1:
        return "0ns" if index == 1 else "<0"
    low = 1 << (index - 2)
    for unit, size in (("s", 10**9), ("ms", 10**6), ("us", 10**3)):
        if low >= size:
            return f"{low // size}{unit}"
    return f"{low}ns"
