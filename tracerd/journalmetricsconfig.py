"""The ``[journal]`` and ``[metrics]`` sections of the configuration.

tracerd.config calls :func:`journal` and :func:`metrics` with each table and its
error reporter, so errors come in line order with the rest (docs/fleet.md).

Security: root's file, still checked.  A metrics address other hosts could reach
is refused without ``allow_remote = true``: it names the programs and their crashes.

Diagnostics: each problem goes to ``error(message, key)`` as one line; the
section keeps its valid keys.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

JOURNAL_SOCKET = "/run/systemd/journal/socket"
_INET = re.compile(r"\[(?P<v6>[0-9A-Fa-f:.]+)\]:(?P<p6>\d{1,5})|(?P<v4>[0-9.]+|localhost):(?P<p4>\d{1,5})")
Report = Callable[[str, str], None]  # (message, key)


@dataclass(frozen=True)
class JournalConfig:
    enabled: bool | str = "auto"  # true, false or "auto": on when the socket exists at start
    socket: str = JOURNAL_SOCKET
    sessions: bool = True  # session start/end/failure entries too, not only crashes


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = ""  # "" (off), "127.0.0.1:9464", "[::1]:9464" or a unix socket path
    allow_remote: bool = False
    textfile: str = ""  # "" (off) or a node_exporter textfile collector's FILE.prom
    textfile_interval: float = 15.0

    @property
    def enabled(self) -> bool:
        return bool(self.listen or self.textfile)


def parse_listen(listen: str) -> tuple[str, str, int]:
    """``("unix", PATH, 0)`` or ``("tcp", HOST, PORT)``; ValueError if it is neither."""
    if listen.startswith("/"):
        if "\0" in listen or any(char.isspace() for char in listen):
            raise ValueError(listen)
        return "unix", listen, 0
    found = _INET.fullmatch(listen)
    if found is None:
        raise ValueError(listen)
    host = found["v6"] or found["v4"]
    port = int(found["p6"] or found["p4"])
    if host != "localhost":
        ipaddress.ip_address(host)  # ValueError for 1.2.3 and the like
    if not 0 <= port < 65536:  # 0: any free port (logged as metrics_listening)
        raise ValueError(listen)
    return "tcp", host, port


def is_loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


_JOURNAL_KEYS = {
    "enabled": 'true, false or "auto"',
    "socket": "an absolute path to journald's native socket",
    "sessions": "true or false",
}
_METRICS_KEYS = {
    "listen": 'HOST:PORT with a numeric address ("127.0.0.1:9464", "[::1]:9464") or a unix socket path',
    "allow_remote": "true or false",
    "textfile": "an absolute path ending in .prom",
    "textfile_interval": "a number of seconds, 1 <= t <= 3600",
}


def journal(value: object, error: Report) -> JournalConfig | None:
    if not isinstance(value, dict):
        error("must be a table", "journal")
        return None
    good: dict[str, Any] = {}
    checks: dict[str, Callable[[Any], bool]] = {
        "enabled": lambda v: isinstance(v, bool) or v == "auto",
        "socket": lambda v: isinstance(v, str) and v.startswith("/") and "\0" not in v,
        "sessions": lambda v: isinstance(v, bool),
    }
    for key, item in value.items():
        if key not in checks:
            error("unknown key", f"journal.{key}")
        elif checks[key](item):
            good[key] = item
        else:
            error(f"must be {_JOURNAL_KEYS[key]}", f"journal.{key}")
    return JournalConfig(**good)


def metrics(value: object, error: Report) -> MetricsConfig | None:
    if not isinstance(value, dict):
        error("must be a table", "metrics")
        return None
    good: dict[str, Any] = {}
    checks: dict[str, Callable[[Any], bool]] = {
        "listen": lambda v: isinstance(v, str) and (v == "" or _listen_ok(v)),
        "allow_remote": lambda v: isinstance(v, bool),
        "textfile": lambda v: (
            isinstance(v, str) and (v == "" or (v.startswith("/") and v.endswith(".prom") and "\0" not in v))
        ),
        "textfile_interval": lambda v: (
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and 1 <= v <= 3600
        ),
    }
    for key, item in value.items():
        if key not in checks:
            error("unknown key", f"metrics.{key}")
        elif checks[key](item):
            good[key] = float(item) if key == "textfile_interval" else item
        else:
            error(f"must be {_METRICS_KEYS[key]}", f"metrics.{key}")
    config = MetricsConfig(**good)
    if config.listen and not config.allow_remote:
        kind, host, _ = parse_listen(config.listen)
        if kind == "tcp" and not is_loopback(host):
            error(f"{host} is not a loopback address: other hosts could scrape it; set allow_remote = true "
                  "if that is meant", "metrics.listen")  # fmt: skip
            return MetricsConfig(**{**good, "listen": ""})
    return config


def _listen_ok(listen: str) -> bool:
    try:
        parse_listen(listen)
    except ValueError:
        return False
    return True
