"""The ltrace backend: ``ltrace [ARGS] -p PID``, library calls to log and syslog.

Its ``+++`` closing line is read under any output options (tracetext).  A fatal
signal gets a crash report of what ltrace printed (no siginfo).  Detach always
sends SIGTERM first: a SIGKILLed ltrace would leave breakpoints behind.

Security: ARGS come from root's config only; lines are data (tracetext).

Diagnostics: as CommandTracer: ltrace's last line when it fails.
"""

from __future__ import annotations

from tracerd.tracers.command import CommandTracer


class LtraceTracer(CommandTracer):
    name = "ltrace"
    program = "ltrace"
    dialect = "ltrace"
