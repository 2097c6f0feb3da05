"""Configuration: TOML in, frozen dataclasses out.

Every key is optional; what is absent takes the built-in default.  As root
the defaults are the system paths of DESIGN.md; as anyone else they live
under ``$XDG_RUNTIME_DIR/tracerd`` (or ``/tmp/tracerd-UID``), so that
``tracerd`` runs anywhere with no set-up.

Security: the file is trusted as far as root wrote it, but every value is
still type- and range-checked, so that a typo cannot turn into, say, a
negative size cap or a tracer argv with a non-string in it.

Diagnostics: every problem raises :class:`~tracerd.errors.ConfigError` naming
the dotted key and, where it can be found, the line in the file.  An unknown
key is an error too: a misspelt key silently ignored is a bug report later.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracerd.errors import ConfigError

SYSTEM_CONFIG = Path("/etc/tracerd/tracerd.toml")
TRACER_NAMES = ("watch", "gdb", "strace", "ltrace", "truss", "ktrace")
FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5,
    "lpr": 6, "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    "local0": 16, "local1": 17, "local2": 18, "local3": 19,
    "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip
# The grammar of tracerd.sinks.syslog.parse_address (which cannot be imported
# here: it imports this module), so that what --check accepts the sink accepts.
_SYSLOG_INET = re.compile(r"(?:udp|tcp)://(?:\[[0-9A-Fa-f:.]+\]|[^\[\]/:\s]+)(?::(?P<port>\d+))?")


def default_runtime_dir() -> Path:
    """Where a non-root tracerd keeps everything when no config says."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "tracerd"
    return Path(f"/tmp/tracerd-{os.getuid()}")


def default_socket() -> Path:
    """The socket both the daemon and its clients use when nothing says."""
    if os.geteuid() == 0:
        return Path("/run/tracerd/tracerd.sock")
    return default_runtime_dir() / "tracerd.sock"


@dataclass(frozen=True)
class SyslogConfig:
    enabled: bool = True
    address: str = "/dev/log"
    facility: str = "mail"
    max_lines_per_second: int = 200

    @property
    def facility_code(self) -> int:
        return FACILITIES[self.facility]


@dataclass(frozen=True)
class Rule:
    process: str
    tracer: str | None = None
    args: tuple[str, ...] = ()

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.process)


@dataclass(frozen=True)
class Config:
    socket: Path = field(default_factory=default_socket)
    socket_group: str | None = None
    log_dir: Path = field(default_factory=lambda: _default_dir("/var/log/tracerd", "log"))
    state_dir: Path = field(default_factory=lambda: _default_dir("/var/lib/tracerd", "state"))
    default_tracer: str = "watch"
    attach_timeout: float = 10.0
    max_sessions: int = 1024
    max_log_bytes: int = 64 * 1024 * 1024
    crash_flood_window: float = 60.0
    max_crash_bytes: int = 256 * 1024 * 1024
    history: int = 256
    syslog: SyslogConfig = field(default_factory=SyslogConfig)
    rules: tuple[Rule, ...] = ()
    source: Path | None = None

    def rule_for(self, name: str) -> Rule | None:
        """The first rule whose pattern matches ``name`` (first match wins)."""
        for rule in self.rules:
            if rule.matches(name):
                return rule
        return None

    def tracer_for(self, name: str, requested: str | None = None) -> tuple[str, tuple[str, ...]]:
        """Tracer and extra args for a process: request, then rule, then default."""
        rule = self.rule_for(name)
        tracer = requested or (rule.tracer if rule and rule.tracer else self.default_tracer)
        args = rule.args if rule and (rule.tracer in (None, tracer)) else ()
        return tracer, args


def _default_dir(system: str, leaf: str) -> Path:
    if os.geteuid() == 0:
        return Path(system)
    return default_runtime_dir() / leaf


# key -> (type(s), validator or None, explanation)
_TOP_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "socket": (str, "an absolute path"),
    "socket_group": (str, "a group name"),
    "log_dir": (str, "an absolute path"),
    "state_dir": (str, "an absolute path"),
    "default_tracer": (str, "one of " + ", ".join(TRACER_NAMES)),
    "attach_timeout": ((int, float), "a number of seconds, 0 < t <= 300"),
    "max_sessions": (int, "an integer >= 1"),
    "max_log_bytes": (int, "an integer >= 4096"),
    "crash_flood_window": ((int, float), "a number of seconds >= 0"),
    "max_crash_bytes": (int, "an integer >= 65536"),
    "history": (int, "an integer >= 0"),
}
_SYSLOG_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "enabled": (bool, "true or false"),
    "address": (str, "/dev/log, a unix socket path, udp://HOST:PORT or tcp://HOST:PORT"),
    "facility": (str, "a syslog facility name such as mail or local0"),
    "max_lines_per_second": (int, "an integer >= 1"),
}
_RULE_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "process": (str, "an fnmatch pattern on the process name"),
    "tracer": (str, "one of " + ", ".join(TRACER_NAMES)),
    "args": (list, "a list of strings"),
}


def load(path: Path | None = None) -> Config:
    """Load the configuration the way DESIGN.md says: flag, env, system file, defaults."""
    if path is None and os.environ.get("TRACERD_CONFIG"):
        path = Path(os.environ["TRACERD_CONFIG"])
    if path is None and SYSTEM_CONFIG.exists():
        path = SYSTEM_CONFIG
    if path is None:
        return Config()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from err
    return parse(text, source=path)


def parse(text: str, source: Path | None = None) -> Config:
    """Parse and validate TOML text; raise ConfigError naming key and line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        match = re.search(r"line (\d+)", str(err))
        raise ConfigError(f"not valid TOML: {err}", line=int(match.group(1)) if match else None) from err
    locate = _Locator(text)
    values: dict[str, Any] = {"source": source}
    for key, value in data.items():
        if key == "syslog":
            values["syslog"] = _parse_syslog(value, locate)
            continue
        if key == "rule":
            values["rules"] = _parse_rules(value, locate)
            continue
        _check(key, value, _TOP_KEYS, locate, section=None)
        values[key] = value
    return _build_top(values, locate)


def _build_top(values: dict[str, Any], locate: _Locator) -> Config:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in ("socket", "log_dir", "state_dir"):
            if not os.path.isabs(value):
                raise ConfigError("must be an absolute path", key=key, line=locate(None, key))
            out[key] = Path(value)
        elif key == "default_tracer":
            if value not in TRACER_NAMES:
                raise _bad(key, _TOP_KEYS, locate)
            out[key] = value
        elif key == "attach_timeout":
            if not 0 < value <= 300:
                raise _bad(key, _TOP_KEYS, locate)
            out[key] = float(value)
        elif key == "crash_flood_window":
            # TOML has nan and inf; `nan < 0` is false, and a nan window would
            # silently turn the flood protection off.
            if not (math.isfinite(value) and value >= 0):
                raise _bad(key, _TOP_KEYS, locate)
            out[key] = float(value)
        elif key in ("max_sessions", "max_log_bytes", "max_crash_bytes", "history"):
            low = {"max_sessions": 1, "max_log_bytes": 4096, "max_crash_bytes": 65536}.get(key, 0)
            if value < low:
                raise _bad(key, _TOP_KEYS, locate)
            out[key] = value
        elif key == "socket_group":
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}", value):
                raise _bad(key, _TOP_KEYS, locate)
            out[key] = value
        else:
            out[key] = value
    return Config(**out)


def _parse_syslog(value: object, locate: _Locator) -> SyslogConfig:
    if not isinstance(value, dict):
        raise ConfigError("must be a table", key="syslog", line=locate(None, "syslog"))
    for key, item in value.items():
        _check(key, item, _SYSLOG_KEYS, locate, section="syslog")
    if "address" in value and not _syslog_address_ok(value["address"]):
        raise _bad("address", _SYSLOG_KEYS, locate, section="syslog")
    if "facility" in value and value["facility"] not in FACILITIES:
        raise _bad("facility", _SYSLOG_KEYS, locate, section="syslog")
    if value.get("max_lines_per_second", 1) < 1:
        raise _bad("max_lines_per_second", _SYSLOG_KEYS, locate, section="syslog")
    return SyslogConfig(**value)


def _syslog_address_ok(address: str) -> bool:
    if address.startswith("/"):
        return "\0" not in address and not any(char.isspace() for char in address)
    found = _SYSLOG_INET.fullmatch(address)
    # a port out of range would pass --check and then stop the daemon at start
    return found is not None and (found["port"] is None or 0 < int(found["port"]) < 65536)


def _parse_rules(value: object, locate: _Locator) -> tuple[Rule, ...]:
    if not isinstance(value, list):
        raise ConfigError("must be an array of tables ([[rule]])", key="rule", line=locate(None, "rule"))
    rules = []
    for index, item in enumerate(value):
        section = f"rule[{index}]"
        if not isinstance(item, dict):
            raise ConfigError("must be a table", key=section, line=locate(section, None))
        for key, field_value in item.items():
            _check(key, field_value, _RULE_KEYS, locate, section=section)
        if "process" not in item:
            raise ConfigError("missing key 'process'", key=section, line=locate(section, None))
        if "tracer" in item and item["tracer"] not in TRACER_NAMES:
            raise _bad("tracer", _RULE_KEYS, locate, section=section)
        args = item.get("args", [])
        if not all(isinstance(arg, str) and "\0" not in arg for arg in args):
            raise _bad("args", _RULE_KEYS, locate, section=section)
        rules.append(Rule(process=item["process"], tracer=item.get("tracer"), args=tuple(args)))
    return tuple(rules)


def _check(
    key: str,
    value: object,
    known: dict[str, tuple[type | tuple[type, ...], str]],
    locate: _Locator,
    section: str | None,
) -> None:
    dotted = f"{section}.{key}" if section else key
    if key not in known:
        raise ConfigError("unknown key", key=dotted, line=locate(section, key))
    expected, _ = known[key]
    # bool is an int in Python; a number key given `true` is still a mistake.
    if isinstance(value, bool) and expected is not bool:
        raise _bad(key, known, locate, section=section)
    if not isinstance(value, expected):
        raise _bad(key, known, locate, section=section)


def _bad(
    key: str,
    known: dict[str, tuple[type | tuple[type, ...], str]],
    locate: _Locator,
    section: str | None = None,
) -> ConfigError:
    dotted = f"{section}.{key}" if section else key
    return ConfigError(f"must be {known[key][1]}", key=dotted, line=locate(section, key))


class _Locator:
    """Find the line of a key in the TOML text (tomllib keeps no positions).

    Good enough for a config file written by hand: it tracks ``[table]`` and
    ``[[rule]]`` headers and returns the first ``key =`` line inside the
    matching section, or the section's header line when ``key`` is None.
    """

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\"-]+)\s*\]\]?")
    _KEY = re.compile(r"^\s*\"?([A-Za-z0-9_-]+)\"?\s*=")

    def __init__(self, text: str):
        self._lines = text.splitlines()

    def __call__(self, section: str | None, key: str | None) -> int | None:
        current: str | None = None
        counts: dict[str, int] = {}
        for number, line in enumerate(self._lines, start=1):
            header = self._HEADER.match(line)
            if header:
                name = header.group(2)
                if header.group(1) == "[[":
                    counts[name] = counts.get(name, -1) + 1
                    name = f"{name}[{counts[name]}]"
                current = name
                if key is None and current == section:
                    return number
                continue
            found = self._KEY.match(line)
            if found and key is not None and found.group(1) == key and current == section:
                return number
        if section is None and key is not None:
            # a top-level table such as [syslog] or [[rule]]
            for number, line in enumerate(self._lines, start=1):
                header = self._HEADER.match(line)
                if header and header.group(2) == key:
                    return number
        return None


def replace(config: Config, **changes: Any) -> Config:
    """A copy of ``config`` with some fields changed (tests and --socket overrides)."""
    return dataclasses.replace(config, **changes)
