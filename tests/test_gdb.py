"""gdb-tracer specifics beyond the crash contract: gdb dying on its own."""

from __future__ import annotations

import signal
import time
from typing import Any

import psutil
import pytest

from tests.conftest import have
from tests.support import assert_untraced, send_signal

pytestmark = pytest.mark.skipif(not have("gdb"), reason="gdb not installed")


def test_gdb_killed_fails_the_session_and_the_process_runs_on(
    daemon_factory: Any, cbin: Any, spawn: Any, syslog_receiver: Any
) -> None:
    """kill -9 of a session's gdb: state failed, a syslog warning says so, the
    process is not left stopped and runs on untraced."""
    daemon = daemon_factory('[[rule]]\nprocess = "*"\ntracer = "gdb"\n')
    target = spawn(cbin("crash", "-pthread"), daemon.hook_command(), "orphaned", "wait")
    assert target.readline() == "hook=0\n"
    target.release()
    assert target.readline() == "waiting\n"
    gdb = daemon.session(target.pid)["tracer_pid"]
    assert psutil.Process(gdb).name() == "gdb"
    send_signal(gdb, signal.SIGKILL)
    session = daemon.wait_session(target.pid, "failed")
    assert "gdb exited unexpectedly" in session["error"]
    warning = syslog_receiver.wait_for(f"orphaned[{target.pid}]: tracer failed")
    assert warning.startswith("<20>")  # mail.warning
    time.sleep(0.2)
    assert_untraced(target.pid)
    assert target.proc.stdin is not None
    target.proc.stdin.close()
    assert target.wait() == 0
