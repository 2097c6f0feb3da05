"""tracerctl: JSON fields as the README lists them, tables, exit codes 0/1/2/3."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import script

SESSION_FIELDS = {"pid", "name", "tracer", "state", "started", "log", "lines", "bytes", "exit_code", "signal", "crash"}


def test_status_json_has_the_contract_fields(daemon: Any, cbin: Any, spawn: Any) -> None:
    """--json status: daemon, counters, warm_gdb and sessions with the README's fields ("Status JSON")."""
    sleeper = spawn(cbin("sleeper"))
    assert sleeper.readline() == "ready\n"
    assert daemon.ctl("attach", str(sleeper.pid), "--name", "smtpd").returncode == 0
    result = daemon.ctl("--json", "status")
    assert result.returncode == 0
    status = json.loads(result.stdout)
    assert set(status) == {"daemon", "counters", "warm_gdb", "sessions", "catches", "handoffs"}
    assert {"pid", "version", "uptime", "config"} <= set(status["daemon"])
    assert {"sessions_started", "crashes", "refused"} <= set(status["counters"])
    (session,) = status["sessions"]
    assert set(session) >= SESSION_FIELDS
    assert session["pid"] == sleeper.pid
    assert session["name"] == "smtpd"
    assert session["state"] == "attached"
    assert session["started"].endswith("Z")
    assert session["log"] == str(daemon.log_dir / f"smtpd.{sleeper.pid}.log")


def test_status_table_is_readable(daemon: Any, cbin: Any, spawn: Any) -> None:
    """Without --json: a header line, counters and a session table."""
    sleeper = spawn(cbin("sleeper"))
    assert sleeper.readline() == "ready\n"
    assert daemon.ctl("attach", str(sleeper.pid)).returncode == 0
    out = daemon.ctl("status").stdout
    assert out.startswith("tracerd ")
    header = next(line for line in out.splitlines() if line.startswith("PID"))
    assert header.split() == ["PID", "NAME", "TRACER", "STATE", "STARTED", "LINES", "ENDING", "LOG"]
    row = next(line for line in out.splitlines() if line.startswith(str(sleeper.pid)))
    assert "sleeper" in row
    assert "attached" in row


def test_show_and_detach(daemon: Any, cbin: Any, spawn: Any) -> None:
    """show PID prints the session; detach PID ends it as detached."""
    sleeper = spawn(cbin("sleeper"))
    assert sleeper.readline() == "ready\n"
    assert daemon.ctl("attach", str(sleeper.pid)).returncode == 0
    shown = json.loads(daemon.ctl("--json", "show", str(sleeper.pid)).stdout)
    assert shown["session"]["state"] == "attached"
    out = daemon.ctl("show", str(sleeper.pid)).stdout
    assert "state      attached" in out
    assert daemon.ctl("detach", str(sleeper.pid)).returncode == 0
    assert daemon.session(sleeper.pid)["state"] == "detached"


def test_exit_codes(shared_daemon: Any, tmp_path: Path) -> None:
    """0 ok, 1 refused or failed, 2 usage, 3 daemon not reachable."""
    daemon = shared_daemon  # it only reads and refuses: the module's one tracerd
    assert daemon.ctl("status").returncode == 0
    assert daemon.ctl("show", "999999").returncode == 1
    failed = daemon.ctl("detach", "1")
    assert failed.returncode == 1
    assert failed.stderr.startswith("tracerctl: ")
    assert daemon.ctl("bogus").returncode == 2
    assert daemon.ctl("show", "0").returncode == 2
    assert daemon.ctl("attach", "1", "--name", "../x").returncode == 2
    result = subprocess.run(
        [*script("tracerctl"), "--socket", str(tmp_path / "none.sock"), "status"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 3
    assert result.stderr.startswith("tracerctl: tracerd is not running")


def test_attach_with_unavailable_tracer_fails_cleanly(shared_daemon: Any, cbin: Any, spawn: Any) -> None:
    """truss and ktrace are not on Linux: a clear one-line error, exit 1."""
    daemon = shared_daemon  # it only reads and refuses: the module's one tracerd
    sleeper = spawn(cbin("sleeper"))
    assert sleeper.readline() == "ready\n"
    for tracer in ("truss", "ktrace"):
        result = daemon.ctl("attach", str(sleeper.pid), "--tracer", tracer)
        assert result.returncode == 1
        assert result.stderr == f"tracerctl: {tracer} is not installed on this system\n"
    result = daemon.ctl("attach", str(sleeper.pid), "--tracer", "nosuch")
    assert result.returncode == 1
    assert "not available" in result.stderr
    assert "TracerPid:\t0" in Path(f"/proc/{sleeper.pid}/status").read_text()


def test_status_shows_a_pid_once_after_detach_and_attach(daemon: Any, cbin: Any, spawn: Any) -> None:
    """The same process detached and attached again: one status row (the live
    session), the earlier one in ``show PID`` (JSON ``history``, newest first)."""
    sleeper = spawn(cbin("sleeper"))
    assert sleeper.readline() == "ready\n"
    for _ in range(2):
        assert daemon.ctl("attach", str(sleeper.pid)).returncode == 0
        assert daemon.ctl("detach", str(sleeper.pid)).returncode == 0
    assert daemon.ctl("attach", str(sleeper.pid)).returncode == 0
    out = daemon.ctl("status").stdout
    rows = [line for line in out.splitlines() if line.split()[:1] == [str(sleeper.pid)]]
    assert len(rows) == 1, out
    assert " attached " in rows[0]
    assert "2 earlier session(s) of these pids not shown: tracerctl show PID" in out
    shown = json.loads(daemon.ctl("--json", "show", str(sleeper.pid)).stdout)
    assert shown["session"]["state"] == "attached"
    assert [old["state"] for old in shown["history"]] == ["detached", "detached"]
    assert shown["history"][0]["started"] >= shown["history"][1]["started"]
    assert "earlier sessions of this pid:" in daemon.ctl("show", str(sleeper.pid)).stdout
