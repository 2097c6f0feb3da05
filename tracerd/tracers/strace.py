"""The strace backend: ``strace [ARGS] -p PID``, system calls to log and syslog.

strace writes its trace on stderr, merged into the pipe tracerd drains.  Its
closing line ``+++ exited with N +++`` or ``+++ killed by SIGSEGV +++`` gives
the exit status, read whatever the output options put before it (``-f``'s
``[pid N]``, ``-t``/``-tt``/``-ttt``/``-r`` times, ``-i``'s address: see
:mod:`tracerd.tracers.tracetext`); under ``-f`` only the traced pid's own
line ends the session, not a thread's or a child's.  A fatal signal gets a
crash report of what strace printed: its ``--- SIGSEGV {si_code=...} ---``
line, the trace's last lines and, with ``-k``, its stack frames (docs/design.md
"Tracers").  SIGTERM makes strace detach cleanly.
"""

from __future__ import annotations

from tracerd.tracers.command import CommandTracer


class StraceTracer(CommandTracer):
    name = "strace"
    program = "strace"
    dialect = "strace"
