"""The project's own exceptions and their stable wire codes.

OS errors are translated into these at each backend's edge, so the server maps
every failure to one reply code in one place and a failing tracer is recorded
on its session instead of killing the daemon.

Security: messages are one line, fit to show the caller.

Diagnostics: each class carries ``code``, its stable error code on the wire.
"""

from __future__ import annotations


class TracerdError(Exception):
    """Base class: ``code`` is the wire code."""

    code = "internal"


class BadRequest(TracerdError):
    """The request is malformed: bad JSON, wrong types, a bad name or pid."""

    code = "bad_request"


class AccessDenied(TracerdError):
    """The caller may not do this (peer credentials, ancestor rule)."""

    code = "denied"


class TargetGone(TracerdError):
    """The process does not exist, or its pid now names another process."""

    code = "no_such_process"


class NotFound(TracerdError):
    """No session or crash report by that id."""

    code = "not_found"


class Busy(TracerdError):
    """A limit is reached (max_sessions), or the process is already traced."""

    code = "busy"


class TracerFailed(TracerdError):
    """The tracer could not start, attach, or died."""

    code = "tracer_failed"


class TracerUnavailable(TracerFailed):
    """The tracer program is not installed on this system."""

    code = "tracer_unavailable"


class ConfigError(TracerdError):
    """The configuration is invalid; ``key`` and ``line`` locate the fault."""

    code = "config"

    def __init__(self, message: str, *, key: str | None = None, line: int | None = None):
        self.key = key
        self.line = line
        where = ""
        if key is not None:
            where += f"{key}: "
        super().__init__(f"{where}{message}" + (f" (line {line})" if line else ""))
