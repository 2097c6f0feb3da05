"""The tests' own guards (tests/support.py), on real processes."""

from __future__ import annotations

import signal
import subprocess

import pytest

from tests.support import send_signal


@pytest.mark.parametrize("pid", [None, 0, -1])
def test_send_signal_never_names_a_process_group(pid: int | None) -> None:
    """0 is the test run's own process group (kill(0, SIGKILL) once ended a whole CI run) and -1
    every process: refused.  Signal 0 (a check, nothing sent) keeps a broken guard harmless."""
    with pytest.raises(AssertionError, match="no process to send signal"):
        send_signal(pid, 0)


def test_send_signal_reaches_the_process() -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        send_signal(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()
