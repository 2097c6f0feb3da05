"""Tracer backends behind one interface, chosen once by name.

:data:`BACKENDS` is the one registry, imported on first use (``--check``, the
config and tracerctl never import ptrace code).  A new tracer: one Tracer
subclass module and one line here.

Security: only the names listed here are imported; a request's tracer name is
a key, never a module path.

Diagnostics: an unknown or uninstalled tracer raises TracerUnavailable, one line.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

from tracerd.errors import TracerUnavailable

if TYPE_CHECKING:
    from tracerd.tracers.base import Tracer

# name -> "module:Class", in README's and --help's order
BACKENDS: dict[str, str] = {
    "watch": "tracerd.tracers.watch.backend:WatchTracer",
    "gdb": "tracerd.tracers.gdb:GdbTracer",
    "strace": "tracerd.tracers.strace:StraceTracer",
    "ltrace": "tracerd.tracers.ltrace:LtraceTracer",
    "truss": "tracerd.tracers.truss:TrussTracer",
    "ktrace": "tracerd.tracers.ktrace:KtraceTracer",
    "perf": "tracerd.tracers.perf:PerfTracer",
    "syscount": "tracerd.tracers.syscount.backend:SyscountTracer",
}
NAMES: tuple[str, ...] = tuple(BACKENDS)
# lines to syslog by default: watch and gdb say little; a system-call tracer's lines carry mail data
SYSLOG_OUTPUT: tuple[str, ...] = ("watch", "gdb")


def _load(name: str) -> type[Tracer]:
    module_name, _, class_name = BACKENDS[name].partition(":")
    cls: type[Tracer] = getattr(importlib.import_module(module_name), class_name)
    return cls


def backend(name: str) -> type[Tracer]:
    if name not in BACKENDS:
        raise TracerUnavailable(f"tracer {name!r} is not available in this version")
    cls = _load(name)
    reason = cls.unavailable()
    if reason:
        raise TracerUnavailable(reason)
    return cls


def loaded() -> list[type[Tracer]]:
    """The backends imported so far (those a session has used), once each."""
    found: list[type[Tracer]] = []
    for spec in BACKENDS.values():
        module_name, _, class_name = spec.partition(":")
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if cls is not None and cls not in found:
            found.append(cls)
    return found


async def shutdown(timeout: float = 5.0) -> None:
    """Each loaded backend's shutdown, within ``timeout`` overall."""
    import asyncio  # noqa: PLC0415 -- here: config imports this module and need not load asyncio

    hooks = [cls.shutdown() for cls in loaded()]
    if not hooks:
        return
    results = asyncio.gather(*hooks, return_exceptions=True)
    try:
        await asyncio.wait_for(results, timeout)
    except TimeoutError:
        return  # the daemon exits anyway: a backend that overstays is cut short


def counters() -> dict[str, int]:
    """Every loaded backend's counters (for ``status``)."""
    merged: dict[str, int] = {}
    for cls in loaded():
        merged.update(cls.counters())
    return merged
