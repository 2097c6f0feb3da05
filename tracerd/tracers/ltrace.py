"""The ltrace backend: ``ltrace [ARGS] -p PID``, library calls to log and syslog.

ltrace ends with ``+++ exited (status N) +++`` or ``+++ killed by SIGSEGV
+++``.  SIGTERM makes it remove its breakpoints and detach; a SIGKILLed
ltrace would leave breakpoints behind, so detaching always asks first.
"""

from __future__ import annotations

import re

from tracerd.tracers.command import CommandTracer


class LtraceTracer(CommandTracer):
    name = "ltrace"
    program = "ltrace"
    ending_re = re.compile(
        r"^(?:\[pid\s+(?P<pid>\d+)\]\s+)?\+\+\+ (?:exited \(status (?P<code>\d+)\)|killed by (?P<signal>SIG[A-Z0-9]+))"
    )
