"""The ktrace backend (BSD): ``ktrace [ARGS] -p PID``.

Run with ``-f /dev/stdout`` unless the rule's args give ``-f``.

Security: ARGS come from root's config only; argv, no shell.

Diagnostics: absent (as on Linux), the session fails at once: "ktrace is not
installed on this system".
"""

from __future__ import annotations

from tracerd.tracers.command import CommandTracer


class KtraceTracer(CommandTracer):
    name = "ktrace"
    program = "ktrace"

    def argv(self) -> list[str]:
        args = list(self.target.args)
        if "-f" not in args:
            args += ["-f", "/dev/stdout"]
        return [self.program, *args, "-p", str(self.target.pid)]
