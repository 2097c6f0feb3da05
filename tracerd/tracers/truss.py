"""The truss backend (Solaris, illumos, FreeBSD): ``truss [ARGS] -p PID``.

Security: ARGS come from root's config only; argv, no shell.

Diagnostics: absent (as on Linux), the session fails at once ("truss is not
installed on this system") and the hook fails open.
"""

from __future__ import annotations

import re

from tracerd.tracers.command import CommandTracer


class TrussTracer(CommandTracer):
    name = "truss"
    program = "truss"
    ending_re = re.compile(r"_exit\((?P<code>\d+)\)|(?P<signal>SIG[A-Z0-9]+) .*Killed")
