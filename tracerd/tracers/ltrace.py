"""The ltrace backend: ``ltrace [ARGS] -p PID``, library calls to log and syslog.

ltrace ends with ``+++ exited (status N) +++`` or ``+++ killed by SIGSEGV
+++``, read whatever the output options put before it (``-f``, ``-t``,
``-tt``, ``-ttt``, ``-r``, ``-i``: see :mod:`tracerd.tracers.tracetext`).  A
fatal signal gets a crash report of what ltrace printed (its ``--- SIGSEGV
(Segmentation fault) ---`` line, no siginfo, and the trace's last lines).
SIGTERM makes it remove its breakpoints and detach; a SIGKILLed ltrace would
leave breakpoints behind, so detaching always asks first.
"""

from __future__ import annotations

from tracerd.tracers.command import CommandTracer


class LtraceTracer(CommandTracer):
    name = "ltrace"
    program = "ltrace"
    dialect = "ltrace"
