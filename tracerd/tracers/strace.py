"""The strace backend: ``strace [ARGS] -p PID``, system calls to log and syslog.

Its ``+++`` closing line gives the exit status under any output options
(tracetext); under ``-f`` only the traced pid's own line ends the session.  A
fatal signal gets a crash report of what strace printed, with ``-k`` frames
(docs/design.md, "Tracers").  SIGTERM makes strace detach cleanly.

Security: ARGS come from root's config only; lines are data (tracetext).

Diagnostics: as CommandTracer: strace's last line when it fails.
"""

from __future__ import annotations

from tracerd.tracers.command import CommandTracer


class StraceTracer(CommandTracer):
    name = "strace"
    program = "strace"
    dialect = "strace"
