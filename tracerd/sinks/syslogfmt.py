"""Syslog wire formats: the address grammar, the local and RFC 5424 records.

Pure functions, no sockets: tracerd.sinks.syslog sends what these build.

Security: message text is untrusted: callers pass it through :func:`clean`,
and :func:`fit` caps a record at 8 KiB on a character boundary; header fields
keep printable US-ASCII only.

Diagnostics: :func:`parse_address` raises ConfigError naming
``syslog.address``; nothing else raises.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from tracerd import textclean
from tracerd.errors import ConfigError

LOG_CRIT, LOG_ERR, LOG_WARNING, LOG_NOTICE, LOG_INFO = 2, 3, 4, 5, 6
DEFAULT_PORT = 514
MAX_RECORD_BYTES = 8192
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_INET = re.compile(r"\[(?P<v6>[0-9A-Fa-f:.]+)\](?::(?P<p6>\d*))?|(?P<host>[^\[\]/:\s]+)(?::(?P<port>\d*))?")


@dataclass(frozen=True)
class Endpoint:
    kind: str  # "unix", "udp" or "tcp"
    path: str = ""
    host: str = ""
    port: int = DEFAULT_PORT


def parse_address(address: str) -> Endpoint:
    """``/dev/log``, ``udp://HOST[:PORT]``, ``tcp://[V6]:PORT`` -> Endpoint (ConfigError)."""
    for kind in ("udp", "tcp"):
        if address.startswith(f"{kind}://"):
            found = _INET.fullmatch(address[len(kind) + 3 :])
            if found is None:
                break
            host = found["v6"] or found["host"]
            port = int(found["p6"] or found["port"] or DEFAULT_PORT)
            if not 0 < port < 65536:
                break
            return Endpoint(kind, host=host, port=port)
    else:
        if address.startswith("/") and "\0" not in address:
            return Endpoint("unix", path=address)
    raise ConfigError(f"bad address {address!r}", key="syslog.address")


def clean(text: str) -> str:
    """The text with control characters (C0 but tab, DEL, C1) replaced by '?'."""
    return textclean.clean(text, textclean.TAB)


def fit(record: bytes, limit: int = MAX_RECORD_BYTES) -> bytes:
    """``record`` cut to ``limit`` bytes without splitting a UTF-8 character."""
    if len(record) <= limit:
        return record
    cut = limit
    while cut > 0 and record[cut] & 0xC0 == 0x80:  # a continuation byte
        cut -= 1
    return record[:cut]


def format_local(pri: int, app: str, pid: int, message: str, *, now: float) -> bytes:
    """``<PRI>Mmm dd hh:mm:ss APP[PID]: MESSAGE`` in local time, as glibc writes /dev/log."""
    t = time.localtime(now)
    stamp = f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    return f"<{pri}>{stamp} {app}[{pid}]: {message}".encode("utf-8", "replace")


def format_rfc5424(
    pri: int, hostname: str, app: str, pid: int, message: str, *, now: float, msgid: str = "-", sd: str = "-"
) -> bytes:
    """``<PRI>1 TIMESTAMP HOST APP PID MSGID SD MESSAGE``; MSGID and SD ``-`` unless given
    (``sd`` built by :mod:`tracerd.sinks.sdata`, already escaped)."""
    stamp = datetime.fromtimestamp(now, UTC).isoformat(timespec="microseconds")
    return f"<{pri}>1 {stamp} {hostname} {app} {pid} {msgid} {sd} {message}".encode("utf-8", "replace")


def header_field(value: str, limit: int) -> str:
    # RFC 5424 header fields are printable US-ASCII without spaces
    return "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:limit] or "-"
