"""Whether syslog lines can go out: the warning at start and in ``status``.

The syslog sink drops what it cannot send; with no syslog daemon (Debian 12
ships no rsyslog) that is every line, silently. :func:`probe` connects to a
unix address once, as the sink does; :func:`warning` gives ``status`` one line.

Security: connects only to the configured address; sends nothing. Unix sockets
only: ``udp://``/``tcp://`` are judged by the sink's last error, never probed.

Diagnostics: each function returns one line, or None when all is well.
"""

from __future__ import annotations

import errno
import socket

from tracerd.config import SyslogConfig
from tracerd.errors import ConfigError
from tracerd.sinks.syslogfmt import parse_address


def probe(config: SyslogConfig) -> str | None:
    """Why nothing can be sent to a unix ``[syslog] address`` now (None: it accepts, or it is not unix)."""
    if not config.enabled:
        return None
    try:
        endpoint = parse_address(config.address)
    except ConfigError as err:
        return str(err)
    if endpoint.kind != "unix":
        return None
    error: OSError | None = None
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind | socket.SOCK_NONBLOCK) as sock:
            try:
                sock.connect(endpoint.path)
            except BlockingIOError:
                return None  # a full backlog: someone listens
            except OSError as err:
                error = err
                if err.errno == errno.EPROTOTYPE:
                    continue  # a stream socket (syslog-ng style): try that
                break
            return None
    reason = (error.strerror or str(error)) if error else "unreachable"
    if error is not None and error.errno in (errno.ENOENT, errno.ECONNREFUSED):
        reason += ": no syslog daemon listens there"
    return (f"syslog address {config.address}: {reason}; every syslog line (session events, crash summaries)"
            " is dropped: start rsyslog or journald, or set [syslog] address")  # fmt: skip


def warning(config: SyslogConfig, dropped: int, last_error: str | None) -> str | None:
    """The probe's warning, else the sink's own while it drops lines."""
    found = probe(config)
    if found is not None:
        return f"{found} ({dropped} dropped so far)"
    if config.enabled and dropped and last_error:
        return f"syslog lines are being dropped ({dropped} so far): {last_error}"
    return None
