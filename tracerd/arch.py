"""Per-architecture facts: system call numbers and what the watch tracer supports.

The syscall numbers tracerd needs outside libc: tgkill (crash holds),
perf_event_open (perf check), poll and ppoll (perf's idle test).

Security: the machine name comes from ``uname``, never from a request.

Diagnostics: :func:`watch_unsupported` says in one line why ``watch`` cannot
run here (x86-64 only) and what to use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    tgkill: int
    perf_event_open: int
    poll_calls: frozenset[int]  # perf's main loop waits in one of them
    watch: bool = False  # the watcher's core writer knows this machine's registers


ARCHES: dict[str, Arch] = {
    "x86_64": Arch(tgkill=234, perf_event_open=298, poll_calls=frozenset({7, 271}), watch=True),
    "aarch64": Arch(tgkill=131, perf_event_open=241, poll_calls=frozenset({73})),
    "riscv64": Arch(tgkill=131, perf_event_open=241, poll_calls=frozenset({73})),
    "i686": Arch(tgkill=270, perf_event_open=336, poll_calls=frozenset({168, 309})),
    "i386": Arch(tgkill=270, perf_event_open=336, poll_calls=frozenset({168, 309})),
    "ppc64le": Arch(tgkill=250, perf_event_open=319, poll_calls=frozenset({167, 281})),
    "s390x": Arch(tgkill=241, perf_event_open=331, poll_calls=frozenset({168, 302})),
}


def machine() -> str:
    return os.uname().machine


def of(name: str | None = None) -> Arch | None:
    return ARCHES.get(name or machine())


def watch_unsupported(name: str | None = None) -> str | None:
    name = name or machine()
    arch = ARCHES.get(name)
    if arch is not None and arch.watch:
        return None
    return f'the watch tracer needs x86-64 (this machine is {name}): use tracer = "gdb"'
