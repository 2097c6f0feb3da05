"""The daemon's life: --check, READY=1, SIGHUP reload, SIGTERM detaches all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.conftest import proc_state, script


def check(config_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "check.toml"
    path.write_text(config_text)
    return subprocess.run(
        [*script("tracerd"), "--config", str(path), "--check"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_check_accepts_a_good_config(tmp_path: Path) -> None:
    """--check on a valid file: exit 0 and says OK."""
    result = check('default_tracer = "strace"\n[syslog]\nfacility = "local3"\n', tmp_path)
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


def test_daemon_refuses_to_start_on_bad_config(tmp_path: Path) -> None:
    """A bad config is fatal at start: exit 1 with the reason, nothing listens."""
    path = tmp_path / "bad.toml"
    path.write_text("max_sessions = 0\n")
    result = subprocess.run(
        [*script("tracerd"), "--config", str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 1
    assert "max_sessions: must be an integer >= 1 (line 1)" in result.stderr


def test_second_daemon_on_same_socket_refuses(daemon: Any) -> None:
    """A second tracerd on a live socket exits 1 instead of stealing it."""
    result = subprocess.run(
        [*script("tracerd"), "--config", str(daemon.config)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 1
    assert "already listens" in result.stderr
    assert daemon.status()["daemon"]["pid"] == daemon.proc.pid


def test_own_log_is_json_lines(daemon: Any) -> None:
    """tracerd's own log on stderr is structlog JSON, one object a line."""
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
    deadline = time.monotonic() + 10
    while daemon.status()["daemon"]["default_tracer"] != "ltrace":
        assert time.monotonic() < deadline, "reload not seen"
        time.sleep(0.05)
    sleeper = spawn(cbin("sleeper"))
    assert sleeper.readline() == "ready\n"
    assert daemon.ctl("attach", str(sleeper.pid)).returncode == 0
    assert daemon.session(sleeper.pid)["tracer"] == "ltrace"


def test_sighup_with_broken_config_keeps_the_old_one(daemon: Any) -> None:
    """A broken config on SIGHUP is logged; the daemon keeps serving the old one."""
    daemon.config.write_text(daemon.config.read_text() + "\nbogus_key = 1\n")
    os.kill(daemon.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload_failed" not in daemon.stderr():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "bogus_key: unknown key" in daemon.stderr()
    assert daemon.status()["daemon"]["default_tracer"] == "strace"


def test_sighup_reopens_logs_for_logrotate(daemon: Any, cbin: Any, spawn: Any) -> None:
    """A log renamed away (logrotate) and SIGHUP: output goes on in a new file
    at the log path; the rotated file is kept as it was."""
    sleeper = spawn(cbin("sleeper"))
    assert sleeper.readline() == "ready\n"
    assert daemon.ctl("attach", str(sleeper.pid), "--tracer", "strace").returncode == 0
    log = Path(daemon.session(sleeper.pid)["log"])
    deadline = time.monotonic() + 10
    while "tick" not in log.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    rotated = log.with_name(log.name + ".1")
    log.rename(rotated)
    os.kill(daemon.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not (log.exists() and "tick" in log.read_text()):
        assert time.monotonic() < deadline, "no new log after SIGHUP"
        time.sleep(0.05)
    assert "tick" in rotated.read_text()
