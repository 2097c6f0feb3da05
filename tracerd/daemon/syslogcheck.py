"""Whether syslog lines can go out: the warning at start and in ``status``.

tracerd's syslog sink (:mod:`tracerd.sinks.syslog`) never blocks and never
raises: a line it cannot send is dropped and counted (``syslog_dropped``).
On a machine without a syslog daemon (Debian 12 ships no rsyslog; without
systemd there is no journald) every line goes that way, silently.  This
module says so: :func:`probe` tries the configured unix address once (a
datagram connect, then a stream one, as the sink does), and
:func:`warning` gives ``status`` one line while the probe fails or the sink
is dropping lines for a reason it names.

Security: only the configured address (root's config) is connected to;
nothing is sent.  The probe never blocks: unix sockets only (an
``udp://``/``tcp://`` receiver is judged by the sink's own last error, so a
slow network costs ``status`` nothing).

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
    """The status warning: the probe's, else the sink's own while it drops lines (``last_error``)."""
    found = probe(config)
    if found is not None:
        return f"{found} ({dropped} dropped so far)"
    if config.enabled and dropped and last_error:
        return f"syslog lines are being dropped ({dropped} so far): {last_error}"
    return None
