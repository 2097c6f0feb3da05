"""The ktrace backend (BSD): ``ktrace [ARGS] -p PID``.

ktrace writes to a trace file for kdump rather than to its output; tracerd
runs it with ``-f /dev/stdout`` unless the rule's args say otherwise.  Not
part of Linux: where it is absent the session fails at once with "ktrace is
not installed on this system".
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
