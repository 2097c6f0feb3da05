"""Configuration: TOML in, frozen dataclasses out (man/tracerd.toml.5).

Every key is optional.  Defaults: the system paths as root, else under
``$XDG_RUNTIME_DIR/tracerd`` (or ``/tmp/tracerd-UID``).

Security: the file is root's, yet every value is type- and range-checked.

Diagnostics: each problem is a ConfigError naming the dotted key and its line;
:func:`parse_all` collects them in line order (``tracerd --check``), :func:`parse`
and :func:`load` raise the first.  Unknown keys are errors; a TOML syntax error
is the only one reported.  Machine-dependent checks are ``tracerd --check``'s.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracerd import client, journalmetricsconfig, syscountconfig, tracers
from tracerd.errors import ConfigError
from tracerd.journalmetricsconfig import JournalConfig, MetricsConfig

SYSTEM_CONFIG = Path("/etc/tracerd/tracerd.toml")
FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5,
    "lpr": 6, "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    "local0": 16, "local1": 17, "local2": 18, "local3": 19,
    "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip
# tracerd.sinks.syslog.parse_address's grammar (it imports this module, not the reverse)
_SYSLOG_INET = re.compile(r"(?:udp|tcp)://(?:\[[0-9A-Fa-f:.]+\]|[^\[\]/:\s]+)(?::(?P<port>\d+))?")


def default_runtime_dir() -> Path:
    """Where a non-root tracerd keeps everything when no config says."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "tracerd"
    return Path(f"/tmp/tracerd-{os.getuid()}")


def default_socket() -> Path:
    """The default socket (tracerd.client's rule, shared with the hook)."""
    return Path(client.default_socket())


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
class DebuginfodConfig:
    urls: tuple[str, ...] = ()  # for tracerctl retrace, after DEBUGINFOD_URLS


CORE_POLICIES = ("none", "first", "all")


@dataclass(frozen=True)
class Rule:
    process: str
    tracer: str | None = None
    args: tuple[str, ...] = ()
    core: str | None = None  # none | first | all; None: the global core
    syslog_output: bool | None = None  # tracer output lines to syslog too; None: tracers.SYSLOG_OUTPUT

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
    max_gdb_hold: float = 300.0  # the longest tracerctl gdb --hold
    syslog: SyslogConfig = field(default_factory=SyslogConfig)
    rules: tuple[Rule, ...] = ()
    source: Path | None = None
    journal: JournalConfig = field(default_factory=JournalConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    syscount: syscountconfig.SyscountConfig = field(default_factory=syscountconfig.SyscountConfig)
    # docs/crashes.md, "Cores and retrace"
    core: str = "first"
    max_core_bytes: int = 1024 * 1024 * 1024
    max_core_process_bytes: int = 2 * 1024 * 1024 * 1024
    core_timeout: float = 60.0
    mail_log: Path | None = None
    debuginfod: DebuginfodConfig = field(default_factory=DebuginfodConfig)

    def core_for(self, name: str) -> str:
        rule = self.rule_for(name)
        return rule.core if rule and rule.core else self.core

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

    def syslog_output_for(self, name: str, tracer: str) -> bool:
        """Do ``tracer``'s lines for ``name`` go to syslog?  The rule's word, else tracers.SYSLOG_OUTPUT."""
        rule = self.rule_for(name)
        if rule and rule.syslog_output is not None and rule.tracer in (None, tracer):
            return rule.syslog_output
        return tracer in tracers.SYSLOG_OUTPUT


def _default_dir(system: str, leaf: str) -> Path:
    if os.geteuid() == 0:
        return Path(system)
    return default_runtime_dir() / leaf


_TOP_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "socket": (str, "an absolute path"),
    "socket_group": (str, "a group name"),
    "log_dir": (str, "an absolute path"),
    "state_dir": (str, "an absolute path"),
    "default_tracer": (str, "one of " + ", ".join(tracers.NAMES)),
    "attach_timeout": ((int, float), "a number of seconds, 0 < t <= 300"),
    "max_sessions": (int, "an integer >= 1"),
    "max_log_bytes": (int, "an integer >= 4096"),
    "crash_flood_window": ((int, float), "a number of seconds >= 0"),
    "max_crash_bytes": (int, "an integer >= 65536"),
    "history": (int, "an integer >= 0"),
    "core": (str, "one of " + ", ".join(CORE_POLICIES)),
    "max_core_bytes": (int, "an integer >= 0"),
    "max_core_process_bytes": (int, "an integer >= 0"),
    "core_timeout": ((int, float), "a number of seconds, 0 < t <= 3600"),
    "mail_log": (str, "an absolute path"),
    "max_gdb_hold": ((int, float), "a number of seconds, 0 < t <= 3600"),
}
_DEBUGINFOD_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "urls": (list, "a list of http:// or https:// URLs"),
}
_SYSLOG_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "enabled": (bool, "true or false"),
    "address": (str, "/dev/log, a unix socket path, udp://HOST:PORT or tcp://HOST:PORT"),
    "facility": (str, "a syslog facility name such as mail or local0"),
    "max_lines_per_second": (int, "an integer >= 1"),
}
_RULE_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "process": (str, "an fnmatch pattern on the process name"),
    "tracer": (str, "one of " + ", ".join(tracers.NAMES)),
    "args": (list, "a list of strings"),
    "core": (str, "one of none, first, all"),
    "syslog_output": (bool, "true or false"),
}
_RULE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "tracer": lambda tracer: tracer in tracers.BACKENDS,
    "args": lambda args: all(isinstance(arg, str) and "\0" not in arg for arg in args),
    "core": lambda core: core in CORE_POLICIES,
}


def source_of(path: Path | None = None) -> Path | None:
    """The config file: flag, env, system file, else None (built-in defaults)."""
    if path is None and os.environ.get("TRACERD_CONFIG"):
        path = Path(os.environ["TRACERD_CONFIG"])
    if path is None and SYSTEM_CONFIG.exists():
        path = SYSTEM_CONFIG
    return path


def read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from err


def load(path: Path | None = None) -> Config:
    source = source_of(path)
    if source is None:
        return Config()
    return parse(read(source), source=source)


def parse(text: str, source: Path | None = None) -> Config:
    """Parse and validate; raise the first ConfigError in line order."""
    config, errors = parse_all(text, source)
    if errors:
        raise errors[0]
    assert config is not None
    return config


def parse_all(text: str, source: Path | None = None) -> tuple[Config | None, list[ConfigError]]:
    """Every error in line order, and a Config of the valid values only (each ``[[rule]]`` keeps its
    place), fit for use only without errors or for ``--check``; None when not TOML at all."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        return None, [_toml_error(err, text)]
    checker = _Checker(Locator(text))
    values: dict[str, Any] = {"source": source}
    for key, value in data.items():
        if key == "rule":
            values["rules"] = checker.rules(value)
        elif key in ("syslog", "journal", "metrics", "debuginfod", "syscount"):
            section = checker.section(key, value)
            if section is not None:
                values[key] = section
        elif checker.check(key, value, _TOP_KEYS, section=None):
            values[key] = value
    config = checker.top(values)
    errors = sorted(checker.errors, key=lambda err: (err.line is None, err.line or 0))
    return config, errors


def _toml_error(err: tomllib.TOMLDecodeError, text: str) -> ConfigError:
    """tomllib's "MESSAGE (at line 3, column 5)" as ours: "MESSAGE at column 5 (line 3)"."""
    message = str(err)
    found = re.search(r" \(at line (\d+), column (\d+)\)$", message)
    if found:
        return ConfigError(f"not valid TOML: {message[: found.start()]} at column {found[2]}", line=int(found[1]))
    if message.endswith(" (at end of document)"):
        last = max(1, len(text.splitlines()))
        return ConfigError(f"not valid TOML: {message.removesuffix(' (at end of document)')} at the end", line=last)
    return ConfigError(f"not valid TOML: {message}")


_Known = dict[str, tuple[type | tuple[type, ...], str]]


class _Checker:
    """Validates one parsed file, collecting every error."""

    def __init__(self, locate: Locator) -> None:
        self.locate = locate
        self.errors: list[ConfigError] = []

    def error(self, message: str, key: str, section: str | None = None, *, header: bool = False) -> None:
        dotted = f"{section}.{key}" if section else key
        line = self.locate(dotted, None) if header else self.locate(section, key)
        self.errors.append(ConfigError(message, key=dotted, line=line))

    def bad(self, key: str, known: _Known, section: str | None = None) -> None:
        self.error(f"must be {known[key][1]}", key, section)

    def check(self, key: str, value: object, known: _Known, section: str | None) -> bool:
        """Is ``key`` known and ``value`` of its type? (records the error if not)"""
        if key not in known:
            self.error("unknown key", key, section)
            return False
        expected, _ = known[key]
        # bool is an int in Python; `true` for a number is still a mistake
        if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
            self.bad(key, known, section)
            return False
        return True

    def top(self, values: dict[str, Any]) -> Config:
        out: dict[str, Any] = {}
        for key, value in values.items():
            if key in ("socket", "log_dir", "state_dir", "mail_log"):
                if os.path.isabs(value):
                    out[key] = Path(value)
                else:
                    self.error("must be an absolute path", key)
            elif not _top_value_ok(key, value):
                self.bad(key, _TOP_KEYS)
            elif key in ("attach_timeout", "crash_flood_window", "core_timeout", "max_gdb_hold"):
                out[key] = float(value)
            else:
                out[key] = value
        return Config(**out)

    def syslog(self, value: object) -> SyslogConfig | None:
        if not isinstance(value, dict):
            self.error("must be a table", "syslog")
            return None
        good = {key: item for key, item in value.items() if self.check(key, item, _SYSLOG_KEYS, "syslog")}
        checks: dict[str, Callable[[Any], bool]] = {
            "address": _syslog_address_ok,
            "facility": lambda facility: facility in FACILITIES,
            "max_lines_per_second": lambda rate: bool(rate >= 1),
        }
        for key, ok in checks.items():
            if key in good and not ok(good[key]):
                self.bad(key, _SYSLOG_KEYS, "syslog")
                del good[key]
        return SyslogConfig(**good)

    def section(self, name: str, value: object) -> Any:
        """[syslog], [debuginfod]; [journal], [metrics], [syscount] (their modules; errors located here)."""
        if name in ("syslog", "debuginfod"):
            return self.syslog(value) if name == "syslog" else self.debuginfod(value)

        def report(message: str, dotted: str) -> None:
            section, _, key = dotted.rpartition(".")
            self.error(message, key, section or None)

        outputs = journalmetricsconfig
        parse = {"journal": outputs.journal, "metrics": outputs.metrics, "syscount": syscountconfig.syscount}
        return parse[name](value, report)

    def rules(self, value: object) -> tuple[Rule, ...]:
        if not isinstance(value, list):
            self.error("must be an array of tables ([[rule]])", "rule")
            return ()
        rules = []
        for index, item in enumerate(value):
            section = f"rule[{index}]"
            good: dict[str, Any] = {}
            if not isinstance(item, dict):
                self.error("must be a table", section, header=True)
            else:
                good = {key: field_value for key, field_value in item.items()
                        if self.check(key, field_value, _RULE_KEYS, section)}  # fmt: skip
                if "process" not in item:
                    self.error("missing key 'process'", section, header=True)
            for key, ok in _RULE_CHECKS.items():
                if key in good and not ok(good[key]):
                    self.bad(key, _RULE_KEYS, section)
                    del good[key]
            # one Rule per [[rule]], so rule[N] stays rule[N]; no process: "" matches no name
            rules.append(Rule(**{"process": "", **good, "args": tuple(good.get("args", []))}))
        return tuple(rules)

    def debuginfod(self, value: object) -> DebuginfodConfig | None:
        if not isinstance(value, dict):
            self.error("must be a table", "debuginfod")
            return None
        good = {key: item for key, item in value.items() if self.check(key, item, _DEBUGINFOD_KEYS, "debuginfod")}
        urls = good.get("urls", [])
        if not all(isinstance(url, str) and re.fullmatch(r"https?://[^\s]+", url) for url in urls):
            self.bad("urls", _DEBUGINFOD_KEYS, "debuginfod")
            return None
        return DebuginfodConfig(tuple(urls))


def _top_value_ok(key: str, value: Any) -> bool:
    """Range and name checks of the top-level keys (types are checked already)."""
    if key in ("default_tracer", "core"):
        return value in (tracers.BACKENDS if key == "default_tracer" else CORE_POLICIES)
    if key == "attach_timeout":
        return bool(0 < value <= 300)
    if key in ("max_gdb_hold", "core_timeout"):
        return math.isfinite(value) and 0 < value <= 3600
    if key == "crash_flood_window":
        # TOML has nan: a nan window would silently turn flood protection off
        return math.isfinite(value) and value >= 0
    if key in ("max_sessions", "max_log_bytes", "max_crash_bytes", "history"):
        low = {"max_sessions": 1, "max_log_bytes": 4096, "max_crash_bytes": 65536}.get(key, 0)
        return bool(value >= low)
    if key in ("max_core_bytes", "max_core_process_bytes"):
        return bool(value >= 0)
    if key == "socket_group":
        return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}", value) is not None
    return True


def _syslog_address_ok(address: str) -> bool:
    if address.startswith("/"):
        return "\0" not in address and not any(char.isspace() for char in address)
    found = _SYSLOG_INET.fullmatch(address)
    # a port out of range would pass --check and then stop the daemon at start
    return found is not None and (found["port"] is None or 0 < int(found["port"]) < 65536)


class Locator:
    """The line of a key (or, for key None, of a section header): tomllib keeps no positions."""

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
    return dataclasses.replace(config, **changes)
