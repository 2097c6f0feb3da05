"""Configuration: defaults, the shipped example, rule matching, and every refusal.

Pure parsing: no daemon, no processes.  The only thing faked is the euid
(to see the non-root defaults while running as root), which touches neither
ptrace, sockets nor /proc.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from pathlib import Path

import pytest

from tracerd import client
from tracerd import config as config_module
from tracerd import config as configmod
from tracerd.config import FACILITIES, Config, Rule, SyslogConfig, load, parse, replace
from tracerd.errors import ConfigError
from tracerd.sinks.syslog import parse_address
from tracerd.tracers import NAMES as TRACER_NAMES

EXAMPLE = Path(__file__).parent.parent / "contrib" / "tracerd.toml.example"


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)


@pytest.fixture
def as_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "getuid", lambda: 1000)


# -- defaults ----------------------------------------------------------------


@pytest.mark.usefixtures("as_root")
def test_root_defaults_are_the_system_paths_and_design_values() -> None:
    """As root, an empty file gives the README's paths and limits, no group and no rules."""
    config = parse("")
    assert config.socket == Path("/run/tracerd/tracerd.sock")
    assert config.log_dir == Path("/var/log/tracerd")
    assert config.state_dir == Path("/var/lib/tracerd")
    assert config.socket_group is None
    assert config.default_tracer == "watch"
    assert config.attach_timeout == 10.0
    assert config.max_sessions == 1024
    assert config.max_log_bytes == 64 * 1024 * 1024
    assert config.crash_flood_window == 60.0
    assert config.max_crash_bytes == 256 * 1024 * 1024
    assert config.history == 256
    assert config.syslog == SyslogConfig(enabled=True, address="/dev/log", facility="mail", max_lines_per_second=200)
    assert config.rules == ()
    assert config.source is None
    assert config == Config()


@pytest.mark.usefixtures("as_user")
def test_user_defaults_live_under_xdg_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not root: socket, logs and state all go under $XDG_RUNTIME_DIR/tracerd."""
    # no tmp_path here: pytest's own temp dir checks the (faked) uid
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    config = Config()
    assert config.socket == Path("/run/user/1000/tracerd/tracerd.sock")
    assert config.log_dir == Path("/run/user/1000/tracerd/log")
    assert config.state_dir == Path("/run/user/1000/tracerd/state")


@pytest.mark.usefixtures("as_user")
@pytest.mark.parametrize("xdg", [None, "", "relative/run"])
def test_user_defaults_fall_back_to_tmp_without_a_usable_xdg(monkeypatch: pytest.MonkeyPatch, xdg: str | None) -> None:
    """Not root and no absolute $XDG_RUNTIME_DIR: everything goes under /tmp/tracerd-UID."""
    if xdg is None:
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    else:
        monkeypatch.setenv("XDG_RUNTIME_DIR", xdg)
    config = Config()
    assert config.socket == Path("/tmp/tracerd-1000/tracerd.sock")
    assert config.log_dir == Path("/tmp/tracerd-1000/log")
    assert config.state_dir == Path("/tmp/tracerd-1000/state")


@pytest.mark.parametrize("euid", [0, 1000])
@pytest.mark.parametrize("xdg", [None, "/run/user/1000"])
def test_hook_and_daemon_agree_on_the_default_socket(
    monkeypatch: pytest.MonkeyPatch, euid: int, xdg: str | None
) -> None:
    """The hook's socket rule (tracerd.client, stdlib only) and the daemon's give the same path."""
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    monkeypatch.setattr(os, "getuid", lambda: euid)
    if xdg is None:
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    else:
        monkeypatch.setenv("XDG_RUNTIME_DIR", xdg)
    assert client.default_socket() == str(configmod.default_socket())
    assert str(configmod.default_socket()).endswith("/tracerd.sock")


# -- load: where the file comes from ----------------------------------------


def test_load_order_is_flag_then_env_then_system_file_then_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--config beats $TRACERD_CONFIG, which beats /etc/tracerd/tracerd.toml, which beats defaults."""
    flag, env, system = (tmp_path / name for name in ("flag.toml", "env.toml", "system.toml"))
    for index, path in enumerate((flag, env, system), start=1):
        path.write_text(f"max_sessions = {index}\n")
    monkeypatch.setattr(configmod, "SYSTEM_CONFIG", system)
    monkeypatch.setenv("TRACERD_CONFIG", str(env))
    assert load(flag).max_sessions == 1
    assert load(flag).source == flag
    assert load().max_sessions == 2
    monkeypatch.delenv("TRACERD_CONFIG")
    assert load().max_sessions == 3
    assert load().source == system
    monkeypatch.setattr(configmod, "SYSTEM_CONFIG", tmp_path / "absent.toml")
    assert load() == Config()


def test_load_of_an_unreadable_file_names_it(tmp_path: Path) -> None:
    """A missing or non-UTF-8 file is a ConfigError naming the path, not a traceback."""
    absent = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=re.escape(str(absent))):
        load(absent)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b'socket = "\xff"\n')
    with pytest.raises(ConfigError, match=re.escape(str(binary))):
        load(binary)


# -- the shipped example -----------------------------------------------------


@pytest.mark.usefixtures("as_root")
def test_example_file_parses_to_the_expected_config() -> None:
    """contrib/tracerd.toml.example loads as exactly the documented values and no rule."""
    config = load(EXAMPLE)
    assert config == Config(
        socket=Path("/run/tracerd/tracerd.sock"),
        socket_group=None,
        log_dir=Path("/var/log/tracerd"),
        state_dir=Path("/var/lib/tracerd"),
        default_tracer="watch",
        attach_timeout=10.0,
        max_sessions=1024,
        max_log_bytes=67108864,
        crash_flood_window=60.0,
        max_crash_bytes=268435456,
        history=256,
        syslog=SyslogConfig(enabled=True, address="/dev/log", facility="mail", max_lines_per_second=200),
        rules=(),
        source=EXAMPLE,
    )


@pytest.mark.usefixtures("as_root")
def test_example_file_shows_the_defaults() -> None:
    """The example changes nothing: each value shown is the default."""
    assert replace(load(EXAMPLE), source=None) == Config()


def test_example_file_mentions_every_key() -> None:
    """Every configurable key appears in the example, set or (socket_group, a rule's) commented out."""
    text = EXAMPLE.read_text()
    data = tomllib.loads(text)
    top = {f.name for f in dataclasses.fields(Config)} - {"syslog", "rules", "source"}
    for key in top:
        assert key in data or f"# {key} = " in text, key
    assert set(data["syslog"]) == {f.name for f in dataclasses.fields(SyslogConfig)}
    rule_keys = {key for block in _commented_rules(text).values() for key in tomllib.loads(block)["rule"][0]}
    assert rule_keys == {f.name for f in dataclasses.fields(Rule)}


# Postfix's master.cf services (postconf -M of 3.7 and a few optional ones): what $process_name can be
POSTFIX_NAMES = ("smtpd", "smtp", "lmtp", "cleanup", "qmgr", "oqmgr", "pickup", "local", "virtual", "pipe",
                 "bounce", "defer", "trace", "verify", "flush", "proxymap", "proxywrite", "anvil", "scache",
                 "showq", "error", "retry", "discard", "tlsmgr", "tlsproxy", "postscreen", "dnsblog",
                 "spawn", "postlogd")  # fmt: skip
SYSCALL_TRACERS = ("strace", "ltrace", "perf", "truss", "ktrace")


def _commented_rules(text: str) -> dict[int, str]:
    """The example's commented-out [[rule]] blocks, uncommented, by where each starts in ``text``."""
    found = re.finditer(r"^# \[\[rule\]\]\n(?:# \w+ = .*\n)+", text, re.MULTILINE)
    return {match.start(): re.sub(r"^# ", "", match[0], flags=re.MULTILINE) for match in found}


@pytest.mark.usefixtures("as_root")
def test_shipped_example_traces_every_postfix_daemon_with_the_watcher() -> None:
    """What `make install` puts in /etc (issue 24): every daemon gets the watcher, no active rule runs
    a system-call tracer, and no tracer output is sent to syslog but the watcher's own notices."""
    config = load(EXAMPLE)
    assert config.default_tracer == "watch"
    assert not [rule for rule in config.rules if rule.tracer in SYSCALL_TRACERS], config.rules
    for name in POSTFIX_NAMES:
        assert config.tracer_for(name) == ("watch", ()), name
        assert config.core_for(name) == "first", name
    assert "\n[[rule]]" not in "\n" + EXAMPLE.read_text()


@pytest.mark.usefixtures("as_root")
def test_example_rules_in_comments_parse_and_say_what_they_log() -> None:
    """Each commented [[rule]] of the example is valid when uncommented (the docs do not rot), and each
    system-call tracer's rule has a comment above it on what it logs: the mail."""
    text = EXAMPLE.read_text()
    blocks = _commented_rules(text)
    assert len(blocks) >= 2
    config = parse(text + "\n" + "\n".join(blocks.values()))  # in place of the example's (empty) rules
    assert len(config.rules) == len(blocks)
    assert {rule.tracer for rule in config.rules} >= {"strace", "gdb"}
    for (start, block), rule in zip(blocks.items(), config.rules, strict=True):
        assert rule == Rule(**{"process": "", **tomllib.loads(block)["rule"][0], "args": rule.args})
        if rule.tracer in SYSCALL_TRACERS:
            comment = text[:start].rstrip("\n").rsplit("\n\n", 1)[-1]  # the paragraph just above
            assert "log" in comment, comment
            assert "mail" in comment, comment
    strace = next(rule for rule in config.rules if rule.tracer == "strace")
    assert config.syslog_output_for(strace.process, "strace") is False  # the log only, not the mail log


# -- rules -------------------------------------------------------------------

RULES = """
[[rule]]
process = "smtpd"
tracer = "strace"
args = ["-f"]

[[rule]]
process = "smtp*"
tracer = "gdb"

[[rule]]
process = "[cq]*"
args = ["-s", "64"]

[[rule]]
process = "?ickup"
tracer = "ltrace"
"""


def test_first_matching_rule_wins() -> None:
    """Rules are tried in file order; a later, broader rule never shadows an earlier one."""
    config = parse(RULES)
    assert config.rule_for("smtpd") == Rule("smtpd", "strace", ("-f",))
    assert config.rule_for("smtp") == Rule("smtp*", "gdb")
    reversed_config = replace(config, rules=config.rules[::-1])
    assert reversed_config.rule_for("smtpd") == Rule("smtp*", "gdb")


@pytest.mark.parametrize(
    ("name", "process"),
    [
        ("smtpd", "smtpd"),
        ("smtp", "smtp*"),
        ("smtpd2", "smtp*"),
        ("cleanup", "[cq]*"),
        ("qmgr", "[cq]*"),
        ("pickup", "?ickup"),
        ("SMTPD", None),  # fnmatch here is case-sensitive, like Postfix's names
        ("bounce", None),
        ("ickup", None),  # ? is exactly one character
    ],
)
def test_rule_patterns_are_case_sensitive_fnmatch(name: str, process: str | None) -> None:
    """`process` is an fnmatch pattern (*, ?, [...]) matched case-sensitively on the whole name."""
    rule = parse(RULES).rule_for(name)
    assert (rule.process if rule else None) == process


@pytest.mark.parametrize(
    ("name", "requested", "expected"),
    [
        ("bounce", None, ("watch", ())),  # no rule: the default tracer, no args
        ("smtpd", None, ("strace", ("-f",))),  # the rule's tracer and args
        ("smtpd", "strace", ("strace", ("-f",))),  # asking for the rule's tracer keeps its args
        ("smtpd", "gdb", ("gdb", ())),  # the request wins; strace's args do not go to gdb
        ("smtp", "watch", ("watch", ())),
        ("qmgr", None, ("watch", ("-s", "64"))),  # a rule without tracer: default tracer, its args
        ("pickup", None, ("ltrace", ())),
    ],
)
def test_tracer_for_prefers_request_then_rule_then_default(
    name: str, requested: str | None, expected: tuple[str, tuple[str, ...]]
) -> None:
    """tracer_for: the requested tracer, else the first matching rule's, else default_tracer."""
    assert parse(RULES).tracer_for(name, requested) == expected


@pytest.mark.parametrize(
    ("rules", "name", "tracer", "expected"),
    [
        ("", "smtpd", "strace", False),  # no rule: system-call tracers' lines stay in the log
        ("", "smtpd", "ltrace", False),
        ("", "smtpd", "perf", False),
        ("", "smtpd", "watch", True),  # the watcher's and gdb's few own lines (a child's exit) go
        ("", "smtpd", "gdb", True),
        ('process = "smtpd"\ntracer = "strace"\nsyslog_output = true', "smtpd", "strace", True),
        ('process = "smtpd"\ntracer = "strace"\nsyslog_output = true', "smtp", "strace", False),  # not its rule
        ('process = "smtpd"\ntracer = "strace"\nsyslog_output = true', "smtpd", "gdb", True),  # gdb asked for
        ('process = "smtpd"\ntracer = "watch"\nsyslog_output = true', "smtpd", "strace", False),  # not for strace
        ('process = "*"\nsyslog_output = true', "smtpd", "ltrace", True),  # no tracer: whatever runs
        ('process = "*"\nsyslog_output = false', "qmgr", "watch", False),
    ],
)
def test_syslog_output_is_the_rules_word_else_off_for_system_call_tracers(
    rules: str, name: str, tracer: str, expected: bool
) -> None:
    """syslog_output_for: a rule's syslog_output (when the rule's tracer is the one running), else on
    for watch and gdb only."""
    config = parse(f"[[rule]]\n{rules}\n" if rules else "")
    assert config.syslog_output_for(name, tracer) is expected


def test_default_tracer_applies_when_no_rule_names_one() -> None:
    """default_tracer is what an unmatched name, or a rule without tracer, gets."""
    config = parse('default_tracer = "gdb"\n' + RULES)
    assert config.tracer_for("bounce") == ("gdb", ())
    assert config.tracer_for("qmgr") == ("gdb", ("-s", "64"))


# -- accepted values ---------------------------------------------------------


def test_limits_accept_their_boundaries() -> None:
    """The smallest allowed values are accepted, and integers stand in for seconds."""
    config = parse(
        "attach_timeout = 300\ncrash_flood_window = 0\nmax_sessions = 1\n"
        "max_log_bytes = 4096\nmax_crash_bytes = 65536\nhistory = 0\n"
        "[syslog]\nmax_lines_per_second = 1\nenabled = false\n"
    )
    assert config.attach_timeout == 300.0
    assert isinstance(config.attach_timeout, float)
    assert config.crash_flood_window == 0.0
    assert (config.max_sessions, config.max_log_bytes, config.max_crash_bytes, config.history) == (1, 4096, 65536, 0)
    assert config.syslog.max_lines_per_second == 1
    assert config.syslog.enabled is False


@pytest.mark.parametrize(
    "address",
    [
        "/dev/log",
        "/run/systemd/journal/dev-log",
        "udp://loghost",
        "udp://10.1.2.3:1514",
        "tcp://loghost.example.org:6514",
        "tcp://[2001:db8::1]:6514",
        "tcp://[::1]",
        "udp://[::ffff:192.0.2.1]:514",
    ],
)
def test_syslog_addresses_accepted_are_usable_by_the_sink(address: str) -> None:
    """Every address the config accepts is one the syslog sink can use (no late failure at start)."""
    config = parse(f'[syslog]\naddress = "{address}"\n')
    assert config.syslog.address == address
    parse_address(address)  # raises ConfigError if the sink disagrees


def test_facility_names_map_to_syslog_codes() -> None:
    """facility_code is the RFC 5424 number: mail is 2, local7 is 23."""
    assert parse('[syslog]\nfacility = "mail"\n').syslog.facility_code == 2
    assert parse('[syslog]\nfacility = "local7"\n').syslog.facility_code == 23
    assert FACILITIES["authpriv"] == 10


@pytest.mark.parametrize("tracer", TRACER_NAMES)
def test_every_tracer_name_is_accepted(tracer: str) -> None:
    """Each name of the tracer registry is valid as default_tracer and as a rule's tracer."""
    config = parse(f'default_tracer = "{tracer}"\n[[rule]]\nprocess = "x"\ntracer = "{tracer}"\n')
    assert config.default_tracer == tracer
    assert config.rules[0].tracer == tracer


def test_replace_returns_a_changed_copy() -> None:
    """replace() leaves the frozen original alone."""
    config = parse("max_sessions = 5\n")
    changed = replace(config, max_sessions=6)
    assert (config.max_sessions, changed.max_sessions) == (5, 6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_sessions = 7  # type: ignore[misc]


# -- refusals ----------------------------------------------------------------

PREAMBLE = "# tracerd.toml\n\n"  # so that no error is on line 1 by chance

BAD = [
    # unknown keys, at each level
    pytest.param("max_session = 5", "max_session", 3, id="unknown-top-key"),
    pytest.param("[syslog]\nfacilty = \"mail\"", "syslog.facilty", 4, id="unknown-syslog-key"),
    pytest.param("[[rule]]\nprocess = \"a\"\n[[rule]]\nprocess = \"b\"\ntracr = \"gdb\"", "rule[1].tracr", 7,
                 id="unknown-rule-key"),
    pytest.param("[sysloog]\nenabled = true", "sysloog", 3, id="unknown-table"),
    # wrong types
    pytest.param("max_sessions = \"5\"", "max_sessions", 3, id="string-for-int"),
    pytest.param("max_sessions = true", "max_sessions", 3, id="true-for-int"),
    pytest.param("max_log_bytes = 4096.0", "max_log_bytes", 3, id="float-for-int"),
    pytest.param("attach_timeout = true", "attach_timeout", 3, id="true-for-seconds"),
    pytest.param("attach_timeout = \"10\"", "attach_timeout", 3, id="string-for-seconds"),
    pytest.param("[syslog]\nenabled = 1", "syslog.enabled", 4, id="int-for-bool"),
    pytest.param("socket = 5", "socket", 3, id="int-for-path"),
    pytest.param("syslog = \"/dev/log\"", "syslog", 3, id="syslog-not-a-table"),
    pytest.param("[rule]\nprocess = \"smtpd\"", "rule", 3, id="rule-not-an-array"),
    # out of range
    pytest.param("max_sessions = 0", "max_sessions", 3, id="max_sessions-0"),
    pytest.param("max_log_bytes = 4095", "max_log_bytes", 3, id="max_log_bytes-small"),
    pytest.param("max_crash_bytes = 65535", "max_crash_bytes", 3, id="max_crash_bytes-small"),
    pytest.param("history = -1", "history", 3, id="history-negative"),
    pytest.param("attach_timeout = 0", "attach_timeout", 3, id="attach_timeout-0"),
    pytest.param("attach_timeout = 300.5", "attach_timeout", 3, id="attach_timeout-large"),
    pytest.param("attach_timeout = nan", "attach_timeout", 3, id="attach_timeout-nan"),
    pytest.param("crash_flood_window = -1", "crash_flood_window", 3, id="flood-negative"),
    pytest.param("crash_flood_window = nan", "crash_flood_window", 3, id="flood-nan"),
    pytest.param("crash_flood_window = inf", "crash_flood_window", 3, id="flood-inf"),
    pytest.param("[syslog]\nmax_lines_per_second = 0", "syslog.max_lines_per_second", 4, id="lines-per-second-0"),
    # paths must be absolute
    pytest.param("log_dir = \"var/log/tracerd\"", "log_dir", 3, id="relative-log_dir"),
    pytest.param("state_dir = \"~/tracerd\"", "state_dir", 3, id="home-state_dir"),
    pytest.param("max_sessions = 2\nsocket = \"tracerd.sock\"", "socket", 4, id="relative-socket"),
    # names
    pytest.param("default_tracer = \"dtrace\"", "default_tracer", 3, id="unknown-default-tracer"),
    pytest.param("socket_group = \"mail users\"", "socket_group", 3, id="bad-group-name"),
    pytest.param("[syslog]\nfacility = \"mail2\"", "syslog.facility", 4, id="bad-facility"),
    pytest.param("[syslog]\nfacility = \"MAIL\"", "syslog.facility", 4, id="uppercase-facility"),
    # syslog addresses
    pytest.param("[syslog]\naddress = \"dev/log\"", "syslog.address", 4, id="relative-unix-address"),
    pytest.param("[syslog]\naddress = \"http://loghost:514\"", "syslog.address", 4, id="http-address"),
    pytest.param("[syslog]\naddress = \"udp://\"", "syslog.address", 4, id="udp-without-host"),
    pytest.param("[syslog]\naddress = \"udp://loghost:0\"", "syslog.address", 4, id="port-0"),
    pytest.param("[syslog]\naddress = \"tcp://loghost:65536\"", "syslog.address", 4, id="port-too-large"),
    pytest.param("[syslog]\naddress = \"tcp://loghost/514\"", "syslog.address", 4, id="path-after-host"),
    pytest.param("[syslog]\naddress = \"/dev/log\\u0000x\"", "syslog.address", 4, id="nul-in-path"),
    # rules
    pytest.param("[[rule]]\ntracer = \"gdb\"", "rule[0]", 3, id="rule-without-process"),
    pytest.param("[[rule]]\nprocess = \"a\"\n[[rule]]\ntracer = \"gdb\"", "rule[1]", 5,
                 id="second-rule-without-process"),
    pytest.param("[[rule]]\nprocess = \"a\"\ntracer = \"nosuch\"", "rule[0].tracer", 5, id="rule-unknown-tracer"),
    pytest.param("[[rule]]\nprocess = \"a\"\nargs = [\"-f\", 1]", "rule[0].args", 5, id="rule-args-int"),
    pytest.param("[[rule]]\nprocess = \"a\"\nargs = \"-f\"", "rule[0].args", 5, id="rule-args-string"),
    pytest.param("[[rule]]\nprocess = \"a\"\nargs = [\"a\\u0000b\"]", "rule[0].args", 5, id="rule-args-nul"),
    pytest.param("[[rule]]\nprocess = 5", "rule[0].process", 4, id="rule-process-int"),
    pytest.param("[[rule]]\nprocess = \"a\"\ntracer = \"gdb\"\n[[rule]]\nprocess = \"b\"\ntracer = \"gbd\"",
                 "rule[1].tracer", 8, id="error-in-second-rule-found-there"),
    pytest.param("[[rule]]\nprocess = \"a\"\nsyslog_output = \"yes\"", "rule[0].syslog_output", 5,
                 id="rule-syslog_output-string"),
    pytest.param("[[rule]]\nprocess = \"a\"\nsyslog_output = 1", "rule[0].syslog_output", 5,
                 id="rule-syslog_output-int"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "key", "line"), BAD)
def test_bad_config_names_key_and_line(body: str, key: str, line: int) -> None:
    """Each mistake is a ConfigError whose message starts with the dotted key and ends with its line."""
    with pytest.raises(ConfigError) as caught:
        parse(PREAMBLE + body + "\n")
    err = caught.value
    assert err.key == key
    assert err.line == line
    assert str(err).startswith(f"{key}: ")
    assert str(err).endswith(f"(line {line})")
    assert err.code == "config"


@pytest.mark.parametrize(
    ("body", "line"),
    [
        pytest.param("max_sessions = \n", 3, id="missing-value"),
        pytest.param("max_sessions = 5\nmax_sessions = 6\n", 4, id="duplicate-key"),
        pytest.param("[syslog\nenabled = true\n", 3, id="unclosed-header"),
    ],
)
def test_invalid_toml_reports_tomllib_line(body: str, line: int) -> None:
    """TOML syntax errors are ConfigErrors carrying the line tomllib found, and no key."""
    with pytest.raises(ConfigError, match=r"not valid TOML") as caught:
        parse(PREAMBLE + body)
    assert caught.value.key is None
    assert caught.value.line == line
    assert str(caught.value).endswith(f"(line {line})")


def test_load_reports_errors_with_the_file_line(tmp_path: Path) -> None:
    """Through load(), a bad value still names key and line of the file on disk."""
    path = tmp_path / "tracerd.toml"
    path.write_text('# comment\n\n[syslog]\nenabled = true\nfacility = "bogus"\n')
    with pytest.raises(ConfigError, match=r"^syslog\.facility: .*\(line 5\)$"):
        load(path)


def test_invalid_toml_names_the_line_once() -> None:
    """A TOML syntax error says its line once, ours, not tomllib's "(at line N, column M)" as well."""
    with pytest.raises(ConfigError) as caught:
        parse(PREAMBLE + "max_sessions = = 3\n")
    message = str(caught.value)
    assert message == "not valid TOML: Invalid value at column 16 (line 3)"
    assert message.count("line") == 1


def test_invalid_toml_at_the_end_names_the_last_line() -> None:
    """An error tomllib finds at the end of the document (an unclosed array) is on the last line."""
    with pytest.raises(ConfigError) as caught:
        parse(PREAMBLE + "max_sessions = 3\nargs = [1,\n")
    assert str(caught.value) == "not valid TOML: Invalid value at the end (line 4)"


# -- every error at once (tracerd --check) ------------------------------------

MANY = """# tracerd.toml
max_sessions = 0
socket = "relative.sock"

[syslog]
facility = "nosuch"
max_lines_per_second = 0

[[rule]]
process = "smtpd"
tracer = "nosuch"

[[rule]]
tracer = "gdb"

[[rule]]
process = "qmgr"
tracer = "ltrace"
args = ["-f", 1]
bogus = true
"""


def test_parse_all_reports_every_error_in_line_order() -> None:
    """parse_all lists every error of the file, sorted by line, whatever order it checked them in
    (the top-level keys are checked after the tables); parse raises the first of them."""
    config, errors = configmod.parse_all(MANY)
    assert [(err.key, err.line) for err in errors] == [
        ("max_sessions", 2),
        ("socket", 3),
        ("syslog.facility", 6),
        ("syslog.max_lines_per_second", 7),
        ("rule[0].tracer", 11),
        ("rule[1]", 13),
        ("rule[2].args", 19),
        ("rule[2].bogus", 20),
    ]
    with pytest.raises(ConfigError) as caught:
        parse(MANY)
    assert (caught.value.key, caught.value.line) == ("max_sessions", 2)
    # what is valid is kept, each rule in its place (for --check's later checks)
    assert config is not None
    assert [rule.tracer for rule in config.rules] == [None, "gdb", "ltrace"]
    assert config.rules[2] == Rule("qmgr", "ltrace")


def test_parse_all_of_a_good_file_has_no_errors() -> None:
    """A valid file: the same Config as parse(), and an empty error list."""
    assert configmod.parse_all(RULES) == (parse(RULES), [])


def test_parse_all_of_a_toml_syntax_error_has_one_error_and_no_config() -> None:
    """tomllib stops at the first syntax error: one error, with its line, and no Config."""
    config, errors = configmod.parse_all(PREAMBLE + "max_sessions = 0\n[syslog\n")
    assert config is None
    assert [err.line for err in errors] == [4]


def test_core_and_debuginfod_keys_are_checked() -> None:
    """core (global and per rule), the core limits, core_timeout, mail_log and
    [debuginfod] urls: good values load, each bad one is one error naming its key."""
    config = parse('core = "all"\nmax_core_bytes = 0\ncore_timeout = 5\nmail_log = "/var/log/mail.log"\n'
                   '[debuginfod]\nurls = ["https://debuginfod.debian.net"]\n'
                   '[[rule]]\nprocess = "smtpd"\ncore = "none"\n')  # fmt: skip
    assert (config.core_for("smtpd"), config.core_for("qmgr"), config.core_timeout) == ("none", "all", 5.0)
    assert config.debuginfod.urls == ("https://debuginfod.debian.net",)
    _, errors = config_module.parse_all(
        'core = "some"\nmax_core_process_bytes = -1\ncore_timeout = 0\nmail_log = "rel"\n'
        '[debuginfod]\nurls = ["file:///etc"]\n[[rule]]\nprocess = "x"\ncore = "yes"\n'
    )
    assert [str(err).split(":")[0] for err in errors] == [
        "core", "max_core_process_bytes", "core_timeout", "mail_log", "debuginfod.urls", "rule[0].core",
    ]  # fmt: skip
