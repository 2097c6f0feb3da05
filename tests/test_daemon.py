"""The daemon's life: --check, READY=1, SIGHUP reload, SIGTERM detaches all."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import have, proc_state, script
from tests.support import wait_until
from tracerd.daemon import main as tracerd_main
from tracerd.hook import DEFAULT_TIMEOUT as HOOK_TIMEOUT


def check(
    config_text: str, tmp_path: Path, env: dict[str, str] | None = None, *, fresh: bool = False
) -> subprocess.CompletedProcess[str]:
    """tracerd --config FILE --check: its exit code, stdout and stderr.  tracerd's main() in this
    process with ``env`` as its environment (what --check reads is the file and PATH); with ``fresh``,
    a tracerd process (where the command itself is under test)."""
    path = tmp_path / "check.toml"
    path.write_text(config_text)
    argv = ["--config", str(path), "--check"]
    if fresh:
        return subprocess.run([*script("tracerd"), *argv], capture_output=True, text=True, timeout=30, check=False,
                              env=env)  # fmt: skip
    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    try:
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = tracerd_main.main(argv)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(["tracerd", *argv], code, out.getvalue(), err.getvalue())


def path_with(tmp_path: Path, *programs: str) -> dict[str, str]:
    """An environment whose PATH holds only links to ``programs`` (those installed)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for program in programs:
        found = shutil.which(program)
        if found:
            (bindir / program).symlink_to(found)
    return dict(os.environ, PATH=str(bindir))


def events(daemon: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in daemon.stderr().splitlines() if line.strip()]


def test_check_accepts_a_good_config(tmp_path: Path) -> None:
    """--check on a valid file: exit 0 and says OK (a tracerd process: the command as run)."""
    result = check('default_tracer = "strace"\n[syslog]\nfacility = "local3"\n', tmp_path, fresh=True)
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout


def test_check_names_offending_key_and_line(tmp_path: Path) -> None:
    """--check on a bad value: exit 1, one line naming key and line."""
    result = check('socket = "/run/x.sock"\n\n[syslog]\nfacility = "nosuch"\n', tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "tracerd: syslog.facility: must be a syslog facility name such as mail or local0 (line 4)"
    ]


def test_check_reports_toml_syntax_errors_with_line(tmp_path: Path) -> None:
    """A TOML syntax error is reported with its line."""
    result = check('log_dir = "/var/log/x"\nmax_sessions = = 3\n', tmp_path)
    assert result.returncode == 1
    assert "(line 2)" in result.stderr


def test_check_toml_syntax_error_names_the_line_once(tmp_path: Path) -> None:
    """A TOML syntax error is one line naming its line once (not tomllib's "(at line 2, ...)" too)."""
    result = check('log_dir = "/var/log/x"\nmax_sessions = = 3\n', tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["tracerd: not valid TOML: Invalid value at column 16 (line 2)"]


def test_check_reports_every_error_in_line_order(tmp_path: Path) -> None:
    """--check lists every error, one line each in line order (the top-level one last in the
    file is checked after the tables, yet printed in its place), and exits 1."""
    text = (
        "# three mistakes\n"
        "[syslog]\n"
        'facility = "nosuch"\n'
        "[[rule]]\n"
        'process = "smtpd"\n'
        'tracer = "nosuch"\n'
        "[[rule]]\n"
        'process = "qmgr"\n'
        "bogus = 1\n"
    )
    result = check("max_sessions = 0\n" + text, tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "tracerd: max_sessions: must be an integer >= 1 (line 1)",
        "tracerd: syslog.facility: must be a syslog facility name such as mail or local0 (line 4)",
        "tracerd: rule[0].tracer: must be one of watch, gdb, strace, ltrace, truss, ktrace, perf, syscount (line 7)",
        "tracerd: rule[1].bogus: unknown key (line 10)",
    ]


def test_check_warns_about_a_tracer_not_on_path(tmp_path: Path) -> None:
    """A rule naming a tracer whose program is not on PATH is a warning with its key and line,
    exit 0; a tracer that is on PATH (strace here) gets none."""
    env = path_with(tmp_path, "strace")  # ltrace is not on this PATH, installed or not
    text = 'default_tracer = "strace"\n\n[[rule]]\nprocess = "smtpd"\ntracer = "strace"\n\n' \
        '[[rule]]\nprocess = "qmgr"\ntracer = "ltrace"\n'
    result = check(text, tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "tracerd: warning: rule[1].tracer: ltrace is not installed on this system (not on PATH):"
        " the processes it is chosen for will not be traced (line 9)"
    ]
    assert "configuration OK" in result.stdout
    if have("ltrace"):  # the same file on the full PATH: nothing to say
        full = check(text, tmp_path)
        assert (full.returncode, full.stderr) == (0, "")


def test_check_warns_about_attach_timeout_above_the_hooks(tmp_path: Path) -> None:
    """attach_timeout longer than pftrace-hook's default --timeout is a warning, exit 0;
    exactly the hook's timeout is not."""
    result = check(f"max_sessions = 5\nattach_timeout = {HOOK_TIMEOUT + 5:g}\n", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"tracerd: warning: attach_timeout: {HOOK_TIMEOUT + 5:g} s is longer than pftrace-hook waits by default"
        f" (--timeout {HOOK_TIMEOUT:g} s): the hook gives up first and the process runs untraced (line 2)"
    ]
    assert check(f"attach_timeout = {HOOK_TIMEOUT:g}\n", tmp_path).stderr == ""


def test_check_lists_errors_and_warnings_together_in_line_order(tmp_path: Path) -> None:
    """Errors and warnings in one listing by line; any error makes it exit 1."""
    env = path_with(tmp_path)
    text = 'attach_timeout = 60\nmax_sessions = 0\n[[rule]]\nprocess = "x"\ntracer = "ltrace"\n'
    result = check(text, tmp_path, env=env)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert [line.split(":")[1:3] for line in lines] == [
        [" warning", " attach_timeout"], [" max_sessions", " must be an integer >= 1 (line 2)"],
        [" warning", " rule[0].tracer"],
    ]


def test_daemon_refuses_to_start_on_bad_config(tmp_path: Path) -> None:
    """A bad config is fatal at start: exit 1 with the reason, nothing listens."""
    path = tmp_path / "bad.toml"
    path.write_text("max_sessions = 0\n")
    result = subprocess.run(
        [*script("tracerd"), "--config", str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 1
    assert "max_sessions: must be an integer >= 1 (line 1)" in result.stderr


def test_second_daemon_on_same_socket_refuses(shared_daemon: Any) -> None:
    """A second tracerd on a live socket exits 1 instead of stealing it."""
    daemon = shared_daemon
    result = subprocess.run(
        [*script("tracerd"), "--config", str(daemon.config)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 1
    assert "already listens" in result.stderr
    assert daemon.status()["daemon"]["pid"] == daemon.proc.pid


def test_own_log_is_json_lines(shared_daemon: Any) -> None:
    """tracerd's own log on stderr is structlog JSON, one object a line."""
    daemon = shared_daemon
    daemon.status()
    lines = [line for line in daemon.stderr().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]
    assert any(event["event"] == "ready" for event in events)
    assert all("timestamp" in event and "level" in event for event in events)


def test_sigterm_detaches_every_tracer_and_exits_0(daemon: Any, cbin: Any, spawn: Any) -> None:
    """SIGTERM: every traced process runs on untraced, every log closed, exit 0."""
    sleepers = [spawn(cbin("sleeper")) for _ in range(3)]
    for sleeper in sleepers:
        assert sleeper.readline() == "ready\n"
        assert daemon.ctl("attach", str(sleeper.pid), "--name", "sleeper").returncode == 0
    logs = [Path(daemon.session(s.pid)["log"]) for s in sleepers]
    assert daemon.stop() == 0
    for sleeper, log in zip(sleepers, logs, strict=True):
        status = Path(f"/proc/{sleeper.pid}/status").read_text()
        assert "TracerPid:\t0" in status
        assert proc_state(sleeper.pid) in ("S", "R")
        assert log.read_text().rstrip().endswith("(tracerd shutting down); it runs on untraced") or \
            log.read_text().rstrip().endswith("it runs on untraced")
    assert not daemon.socket.exists()


def test_sighup_reloads_config_for_new_sessions(daemon: Any, cbin: Any, spawn: Any) -> None:
    """After SIGHUP a new rule applies to new sessions; the daemon keeps its pid."""
    assert daemon.status()["daemon"]["default_tracer"] == "strace"
    text = daemon.config.read_text().replace('default_tracer = "strace"', 'default_tracer = "ltrace"')
    daemon.config.write_text(text)
    os.kill(daemon.proc.pid, signal.SIGHUP)
    wait_until(lambda: daemon.status()["daemon"]["default_tracer"] == "ltrace", "reload seen")
    sleeper = spawn(cbin("sleeper"))
    assert sleeper.readline() == "ready\n"
    assert daemon.ctl("attach", str(sleeper.pid)).returncode == 0
    assert daemon.session(sleeper.pid)["tracer"] == "ltrace"


def test_sighup_with_broken_config_keeps_the_old_one(daemon: Any) -> None:
    """A broken config on SIGHUP is logged; the daemon keeps serving the old one."""
    daemon.config.write_text(daemon.config.read_text() + "\nbogus_key = 1\n")
    os.kill(daemon.proc.pid, signal.SIGHUP)
    wait_until(lambda: "reload_failed" in daemon.stderr(), "reload_failed logged")
    assert "bogus_key: unknown key" in daemon.stderr()
    assert daemon.status()["daemon"]["default_tracer"] == "strace"


def test_sighup_reopens_logs_for_logrotate(daemon: Any, cbin: Any, spawn: Any) -> None:
    """A log renamed away (logrotate) and SIGHUP: output goes on in a new file
    at the log path; the rotated file is kept as it was."""
    sleeper = spawn(cbin("sleeper"))
    assert sleeper.readline() == "ready\n"
    assert daemon.ctl("attach", str(sleeper.pid), "--tracer", "strace").returncode == 0
    log = Path(daemon.session(sleeper.pid)["log"])
    wait_until(lambda: "tick" in log.read_text(), "a tick in the log")
    rotated = log.with_name(log.name + ".1")
    log.rename(rotated)
    os.kill(daemon.proc.pid, signal.SIGHUP)
    wait_until(lambda: log.exists() and "tick" in log.read_text(), "a new log after SIGHUP")
    assert "tick" in rotated.read_text()


def test_startup_logs_the_config_warnings(daemon_factory: Any) -> None:
    """At start-up the warnings of --check go to tracerd's own log (and it starts)."""
    if have("truss"):
        pytest.skip("truss is installed here")
    daemon = daemon_factory(start=False)
    text = daemon.config.read_text().replace("attach_timeout = 10.0", "attach_timeout = 30.0")
    daemon.config.write_text(text + '\n[[rule]]\nprocess = "none"\ntracer = "truss"\n')
    daemon.start()
    warnings = {event["key"]: event for event in events(daemon) if event["event"] == "config_warning"}
    assert set(warnings) == {"attach_timeout", "rule[0].tracer"}
    assert warnings["attach_timeout"]["level"] == "warning"
    assert warnings["attach_timeout"]["line"] == 5
    assert "truss is not installed on this system" in warnings["rule[0].tracer"]["warning"]
    assert daemon.status()["daemon"]["config_error"] is None


def test_sighup_with_broken_config_goes_to_syslog_and_status(daemon: Any, syslog_receiver: Any) -> None:
    """A broken config on SIGHUP: a mail.warning syslog line with the reason and line, and
    status's config_error (JSON and human) says the same while the old config stays in force;
    a later good reload clears it."""
    assert daemon.status()["daemon"]["config_error"] is None
    good = daemon.config.read_text()
    daemon.config.write_text(good.replace("attach_timeout = 10.0", "attach_timeout = 10.0\nbogus_key = 1"))
    os.kill(daemon.proc.pid, signal.SIGHUP)
    message = syslog_receiver.wait_for("not reloaded")
    assert message.startswith("<20>")  # mail (2) * 8 + warning (4)
    assert f"tracerd[{daemon.proc.pid}]: " in message
    assert message.endswith(f"config {daemon.config} not reloaded, the old one stays in force:"
                            " bogus_key: unknown key (line 6)")
    status = json.loads(daemon.ctl("--json", "status", check=True).stdout)
    assert status["daemon"]["config_error"] == "bogus_key: unknown key (line 6)"
    assert status["daemon"]["default_tracer"] == "strace"  # the old config
    human = daemon.ctl("status", check=True).stdout.splitlines()
    assert human[1] == "config error (the previous config stays in force): bogus_key: unknown key (line 6)"

    daemon.config.write_text(good.replace('default_tracer = "strace"', 'default_tracer = "gdb"'))
    os.kill(daemon.proc.pid, signal.SIGHUP)
    wait_until(lambda: daemon.status()["daemon"]["default_tracer"] == "gdb", "good reload seen")
    assert daemon.status()["daemon"]["config_error"] is None
    assert "config error" not in daemon.ctl("status", check=True).stdout
