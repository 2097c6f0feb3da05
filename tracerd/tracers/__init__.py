"""Tracer backends behind one interface, chosen once by name.

Like psutil's platforms: each backend is one module, and this registry is the
only place that knows them all.
"""

from __future__ import annotations

from tracerd.errors import TracerUnavailable
from tracerd.tracers.base import Tracer
from tracerd.tracers.gdb import GdbTracer
from tracerd.tracers.ktrace import KtraceTracer
from tracerd.tracers.ltrace import LtraceTracer
from tracerd.tracers.strace import StraceTracer
from tracerd.tracers.truss import TrussTracer
from tracerd.tracers.watch.backend import WatchTracer

BACKENDS: dict[str, type[Tracer]] = {
    cls.name: cls for cls in (WatchTracer, StraceTracer, LtraceTracer, GdbTracer, TrussTracer, KtraceTracer)
}


def backend(name: str) -> type[Tracer]:
    """The backend class for ``name``, or TracerUnavailable saying why not."""
    cls = BACKENDS.get(name)
    if cls is None:
        raise TracerUnavailable(f"tracer {name!r} is not available in this version")
    reason = cls.unavailable()
    if reason:
        raise TracerUnavailable(reason)
    return cls
