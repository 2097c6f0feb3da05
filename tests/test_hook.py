"""pftrace-hook fails fast and open: exit 1 with one line, never past --timeout."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.conftest import script


def run_hook(*args: str, timeout: float = 30.0) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [*script("pftrace-hook"), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    return result, time.monotonic() - started


def test_no_daemon_fails_at_once_with_one_line_and_syslog(tmp_path: Path, syslog_receiver: Any) -> None:
    """No daemon listening: exit 1 at once, one stderr line, the same at mail.warning."""
    result, _ = run_hook(
        "--socket", str(tmp_path / "absent.sock"), "--syslog", str(syslog_receiver.path),
        "--timeout", "60", "smtpd", str(os.getpid()),
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"pftrace-hook: smtpd[{os.getpid()}]: not traced: tracerd is not running")
    message = syslog_receiver.wait_for("tracerd is not running")
    assert message.startswith("<20>")  # mail.warning
    assert "pftrace-hook[" in message


def test_socket_without_listener_fails_at_once(tmp_path: Path) -> None:
    """A stale socket file (daemon died): connection refused, exit 1."""
    path = tmp_path / "stale.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()  # bound, never listening: ECONNREFUSED
    result, _ = run_hook("--socket", str(path), "--timeout", "60", "smtpd", "1")
    assert result.returncode == 1
    assert "nobody listens" in result.stderr


def test_hung_daemon_hook_gives_up_within_timeout(daemon: Any, cbin: Any, spawn: Any) -> None:
    """A SIGSTOPped daemon: the hook exits 1 once --timeout has passed, not later."""
    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        target = spawn(cbin("hooked"), daemon.hook_command(timeout=1.5), "smtpd", "0")
        line = target.readline(timeout=30)
        elapsed = time.monotonic() - started
        assert line == "hook=1\n"
        assert elapsed >= 1.5  # it did wait for the daemon, as long as allowed
        target.release()
        assert target.wait() == 0
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    # the daemon still serves once it runs again
    assert daemon.status()["daemon"]["pid"] == daemon.proc.pid


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    """Missing arguments, a non-numeric pid or an unknown option: exit 2."""
    for args in ([], ["smtpd"], ["smtpd", "12x"], ["--bogus", "smtpd", "1"], ["--timeout", "-1", "smtpd", "1"]):
        result, _ = run_hook(*args)
        assert result.returncode == 2, args
        assert result.stderr.startswith("pftrace-hook: "), args


def test_refusal_is_reported_with_the_daemons_reason(daemon: Any, cbin: Any, spawn: Any) -> None:
    """The hook naming a non-ancestor: exit 1 with the daemon's reason; pid 1 never."""
    sleeper = spawn(cbin("sleeper"))
    assert sleeper.readline() == "ready\n"
    result, _ = run_hook("--socket", str(daemon.socket), "smtpd", str(sleeper.pid))
    assert result.returncode == 1
    assert "not an ancestor" in result.stderr
    result, _ = run_hook("--socket", str(daemon.socket), "smtpd", "1")
    assert result.returncode == 1
    assert result.stderr == "pftrace-hook: smtpd[1]: not traced: refusing to trace pid 1 (init)\n"


def test_daemon_refuses_to_trace_itself(daemon: Any) -> None:
    """attach of tracerd's own pid is refused, even for root."""
    result = daemon.ctl("attach", str(daemon.proc.pid))
    assert result.returncode == 1
    assert "tracerd itself" in result.stderr
