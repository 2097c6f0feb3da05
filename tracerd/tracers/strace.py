"""The strace backend: ``strace [ARGS] -p PID``, system calls to log and syslog.

strace writes its trace on stderr, merged into the pipe tracerd drains.  Its
closing line ``+++ exited with N +++`` or ``+++ killed by SIGSEGV +++`` gives
the exit status; with ``-f`` lines of other threads carry ``[pid N]`` and are
not mistaken for the process's end.  SIGTERM makes strace detach cleanly.
"""

from __future__ import annotations

import re

from tracerd.tracers.command import CommandTracer


class StraceTracer(CommandTracer):
    name = "strace"
    program = "strace"
    ending_re = re.compile(
        r"^(?:\[pid\s+(?P<pid>\d+)\]\s+)?\+\+\+ (?:exited with (?P<code>\d+)|killed by (?P<signal>SIG[A-Z0-9]+))"
    )
