"""The core chain end to end: a target runs the hook through system() as
Postfix's debug_process() does; tracerd attaches strace or ltrace; the traced
write reaches the per-process log, and syslog where the rule asks
(``syslog_output``); status follows the session."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import have, proc_state
from tests.support import wait_until


@pytest.mark.parametrize("tracer", ["strace", "ltrace"])
def test_hook_attaches_before_returning_and_output_reaches_log_and_syslog(
    tracer: str, daemon_factory: Any, cbin: Any, spawn: Any, syslog_receiver: Any
) -> None:
    """The hook returns 0 only once attached; the traced write is in the log and, the rule asking
    for it (syslog_output), in syslog with NAME[PID]; status shows attached, then exited with the code."""
    if not have(tracer):
        pytest.skip(f"{tracer} not installed")
    daemon = daemon_factory(f'[[rule]]\nprocess = "hooked*"\ntracer = "{tracer}"\nsyslog_output = true\n')
    target = spawn(cbin("hooked"), daemon.hook_command(), "hookedd", "3")
    assert target.readline() == "hook=0\n"
    # The hook returned 0, so the tracer was attached before the marker write.
    session = daemon.session(target.pid)
    assert session["state"] == "attached"
    assert session["tracer"] == tracer
    assert session["name"] == "hookedd"
    assert target.readline() == "MARKER-after-hook\n"
    target.release()
    assert target.wait() == 3
    session = daemon.wait_session(target.pid, "exited")
    assert session["exit_code"] == 3
    assert session["signal"] is None
    log = Path(session["log"])
    assert log == daemon.log_dir / f"hookedd.{target.pid}.log"
    # the log is closed with its final line once the session ended
    wait_until(lambda: "exited with status 3" in log.read_text(), "the log's closing line", 10)
    text = log.read_text()
    if tracer == "strace":
        assert 'write(1, "MARKER-after-hook\\n", 18)' in text
    else:
        assert "read(" in text or "write(" in text or "exit" in text
    assert text.rstrip().endswith(f"tracerd: hookedd[{target.pid}] exited with status 3")
    assert session["lines"] > 0
    message = syslog_receiver.wait_for(f"hookedd[{target.pid}]: attached with {tracer}")
    assert message.startswith("<22>")  # mail.info
    if tracer == "strace":
        assert syslog_receiver.wait_for("MARKER-after-hook").startswith("<22>")
    else:
        syslog_receiver.wait_for(f"hookedd[{target.pid}]: write(")
    closing = syslog_receiver.wait_for(f"hookedd[{target.pid}]: exited with status 3")
    assert closing.startswith("<22>")


def test_target_killed_by_signal_is_recorded(daemon: Any, cbin: Any, spawn: Any) -> None:
    """A traced process killed by SIGKILL: the session says exited by SIGKILL."""
    target = spawn(cbin("hooked"), daemon.hook_command(), "victim", "0")
    assert target.readline() == "hook=0\n"
    daemon.wait_session(target.pid, "attached")
    target.proc.kill()
    assert target.wait() == -9
    session = daemon.wait_session(target.pid, "exited")
    assert session["signal"] == "SIGKILL"
    assert session["exit_code"] is None


def test_traced_process_is_never_left_stopped_after_detach(daemon: Any, cbin: Any, spawn: Any) -> None:
    """tracerctl detach lets go: the process runs on, not in tracing stop, untraced."""
    sleeper = spawn(cbin("sleeper"))
    assert sleeper.readline() == "ready\n"
    result = daemon.ctl("attach", str(sleeper.pid), "--tracer", "strace")
    assert result.returncode == 0, result.stderr
    assert daemon.session(sleeper.pid)["state"] == "attached"
    result = daemon.ctl("detach", str(sleeper.pid))
    assert result.returncode == 0, result.stderr
    session = daemon.wait_session(sleeper.pid, "detached")
    assert session["state"] == "detached"
    time.sleep(0.2)
    assert proc_state(sleeper.pid) in ("S", "R")
    tracer_pid = int(Path(f"/proc/{sleeper.pid}/status").read_text().split("TracerPid:")[1].split()[0])
    assert tracer_pid == 0
    assert Path(session["log"]).read_text().rstrip().endswith("it runs on untraced")
