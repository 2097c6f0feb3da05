"""The watch tracer's own behaviours: threads born before and after the
seize, STOP/CONT transparency, fork+exec, where, and the watcher's death."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import have, proc_state
from tests.support import assert_running, send_signal, wait_until

pytestmark = pytest.mark.skipif(not have("gdb"), reason="gdb not installed")


@pytest.fixture
def watch_daemon(daemon_factory: Any) -> Any:
    return daemon_factory(
        '[[rule]]\nprocess = "fork*"\ntracer = "watch"\nargs = ["follow-forks"]\n'
        '[[rule]]\nprocess = "*"\ntracer = "watch"\n'
    )  # fmt: skip


def wait_state(pid: int, states: str, timeout: float = 10.0) -> str:
    """The state once it is one of ``states`` (a gone process, '', never is)."""

    def reached() -> str:
        state = proc_state(pid)
        return state if state and state in states else ""

    return wait_until(reached, f"process {pid} in a state of {states!r}", timeout, interval=0.02)


def report_of(daemon: Any, pid: int) -> dict[str, Any]:
    session = daemon.wait_session(pid, "crashed")
    assert session["crash"], session
    result = daemon.ctl("--json", "crash", session["crash"])
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)["crash"]
    return report


@pytest.mark.parametrize(("mode", "function"), [("before", "early_thread_crash"), ("after", "late_thread_crash")])
def test_crash_in_thread_born_before_or_after_the_seize(
    watch_daemon: Any, cbin: Any, spawn: Any, mode: str, function: str
) -> None:
    """A thread that existed at the seize, and one born after it (TRACECLONE):
    either one's crash is reported with its own frames, and the process dies of SIGSEGV."""
    target = spawn(cbin("threads", "-pthread"), watch_daemon.hook_command(), "threaded", mode)
    assert target.readline() == "hook=0\n"
    assert watch_daemon.session(target.pid)["tracer"] == "watch"
    target.release()
    assert target.wait() == -signal.SIGSEGV
    report = report_of(watch_daemon, target.pid)
    crashed = next(t for t in report["threads"] if t["crashed"])
    assert crashed["frames"][0]["function"] == function
    assert crashed["tid"] != target.pid
    # main and the early thread always; the late one too in "after"
    assert len(report["threads"]) == (2 if mode == "before" else 3)


def wait_child_status(pid: int, options: int, check: Any, timeout: float = 10.0) -> int:
    """Poll waitpid(pid, options|WNOHANG) as the parent until ``check(status)``."""

    def seen() -> int | None:
        got, status = os.waitpid(pid, options | os.WNOHANG)
        return status if got == pid and check(status) else None

    status: int = wait_until(seen, f"the expected status of {pid} seen by its parent", timeout, interval=0.02)
    return status


@pytest.mark.parametrize("traced", [False, True])
def test_stop_and_cont_behave_as_untraced(watch_daemon: Any, cbin: Any, spawn: Any, traced: bool) -> None:
    """kill -STOP: the parent's waitpid(WUNTRACED) reports the stop and the process
    stays stopped; kill -CONT: the parent sees WIFCONTINUED and it runs on, still
    watched; then it exits normally.  The same sequence untraced, for comparison."""
    hook = watch_daemon.hook_command() if traced else "-"
    target = spawn(cbin("crash", "-pthread"), hook, "stopper", "wait")
    assert target.readline() == "hook=0\n"
    target.release()
    assert target.readline() == "waiting\n"
    os.kill(target.pid, signal.SIGSTOP)
    status = wait_child_status(target.pid, os.WUNTRACED, os.WIFSTOPPED)
    assert os.WSTOPSIG(status) == signal.SIGSTOP
    time.sleep(0.2)
    # stopped it stays: 'T' untraced, 't' while the watcher listens (PTRACE_LISTEN)
    assert proc_state(target.pid) in ("t", "T")
    os.kill(target.pid, signal.SIGCONT)
    wait_child_status(target.pid, os.WCONTINUED, os.WIFCONTINUED)
    assert wait_state(target.pid, "SR") in ("S", "R")
    if traced:
        assert watch_daemon.session(target.pid)["state"] == "attached"
    assert target.proc.stdin is not None
    target.proc.stdin.close()  # read() returns 0: the program exits 0
    assert target.wait() == 0
    if traced:
        assert watch_daemon.wait_session(target.pid, "exited")["exit_code"] == 0


def test_fork_exec_child_is_watched_with_follow_forks(watch_daemon: Any, cbin: Any, spawn: Any) -> None:
    """With follow-forks, a fork+exec child's crash is reported; the parent
    sees the child's SIGSEGV as untraced and runs on, still watched."""
    crash = cbin("crash", "-pthread")
    target = spawn(cbin("forker"), watch_daemon.hook_command(), "forkd", "forkexec", crash)
    assert target.readline() == "hook=0\n"
    target.release()
    assert target.readline() == "hook=0\n"  # the child (crash "-") says so
    target.release()  # the child reads it from the same pipe, then crashes
    line = target.readline()
    assert line.startswith("child=")
    status = int(line.split("=")[1])
    assert os.WIFSIGNALED(status)
    assert os.WTERMSIG(status) == signal.SIGSEGV
    assert target.wait() == 0
    session = watch_daemon.wait_session(target.pid, "exited")
    assert session["exit_code"] == 0
    crashes = json.loads(watch_daemon.ctl("--json", "crashes").stdout)["crashes"]
    assert len(crashes) == 1
    assert crashes[0]["top"] == ["crash_here", "level_two", "level_one"]
    assert crashes[0]["pid"] != target.pid


def test_exec_keeps_being_watched(watch_daemon: Any, cbin: Any, spawn: Any) -> None:
    """After exec the same pid is still watched: its crash is reported."""
    crash = cbin("crash", "-pthread")
    target = spawn(cbin("forker"), watch_daemon.hook_command(), "execd", "exec", crash)
    assert target.readline() == "hook=0\n"
    target.release()
    assert target.readline() == "hook=0\n"  # now running the crash binary
    target.release()
    assert target.wait() == -signal.SIGSEGV
    report = report_of(watch_daemon, target.pid)
    crashed = next(t for t in report["threads"] if t["crashed"])
    assert [f["function"] for f in crashed["frames"]][:3] == ["crash_here", "level_two", "level_one"]


def test_where_on_a_process_blocked_in_a_system_call(watch_daemon: Any, cbin: Any, spawn: Any) -> None:
    """where: every thread's live backtrace; the process runs on, still watched."""
    target = spawn(cbin("crash", "-pthread"), watch_daemon.hook_command(), "hung", "wait")
    assert target.readline() == "hook=0\n"
    target.release()
    assert target.readline() == "waiting\n"
    result = watch_daemon.ctl("where", str(target.pid))
    assert result.returncode == 0, result.stderr
    assert "read" in result.stdout
    assert "main" in result.stdout
    assert "crash.c" in result.stdout
    as_json = json.loads(watch_daemon.ctl("--json", "where", str(target.pid)).stdout)
    assert as_json["pid"] == target.pid
    session = watch_daemon.session(target.pid)
    assert session["state"] == "attached"
    assert_running(target.pid)
    # still watched: a crash now is still caught
    status = Path(f"/proc/{target.pid}/status").read_text()
    assert "TracerPid:\t0" not in status
    assert target.proc.stdin is not None
    target.proc.stdin.close()
    assert target.wait() == 0


def test_watcher_killed_leaves_processes_running_and_they_are_watched_again(
    watch_daemon: Any, cbin: Any, spawn: Any
) -> None:
    """kill -9 of the watcher: no process stopped, all run on; the sessions
    end failed and new sessions watch the survivors under a new watcher."""
    targets = []
    for _ in range(3):
        target = spawn(cbin("crash", "-pthread"), watch_daemon.hook_command(), "victim", "wait")
        assert target.readline() == "hook=0\n"
        target.release()
        assert target.readline() == "waiting\n"
        targets.append(target)
    watcher = watch_daemon.session(targets[0].pid)["tracer_pid"]
    assert "tracerd.tracers.watch.watcher" in psutil.Process(watcher).cmdline()
    send_signal(watcher, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert all(proc_state(t.pid) != "t" for t in targets)
        time.sleep(0.1)
    for target in targets:
        assert_running(target.pid)
    for target in targets:
        wait_until(lambda pid=target.pid: (s := watch_daemon.session(pid))["state"] == "attached"
                   and s["tracer_pid"] != watcher, f"{target.pid} watched again", 15)  # fmt: skip
    failed = [s for s in watch_daemon.status()["sessions"] if s["state"] == "failed"]
    assert len(failed) == 3
    assert all("watcher died" in s["error"] for s in failed)
    for target in targets:
        assert target.proc.stdin is not None
        target.proc.stdin.close()
        assert target.wait() == 0


def test_clean_shutdown_does_not_report_the_watcher_dead(watch_daemon: Any, cbin: Any, spawn: Any) -> None:
    """Sessions that ended (exit 3) and sessions still running, then SIGTERM:
    tracerd's log says the watcher stopped, never ``watcher_died`` at warning."""
    for mode in ("exit3", "wait"):
        target = spawn(cbin("crash", "-pthread"), watch_daemon.hook_command(), "victim", mode)
        assert target.readline() == "hook=0\n"
        target.release()
        if mode == "exit3":
            assert target.wait() == 3
            watch_daemon.wait_session(target.pid, "exited")
    assert watch_daemon.stop() == 0
    events = [json.loads(line) for line in watch_daemon.stderr().splitlines() if line.startswith("{")]
    assert "watcher_died" not in [e["event"] for e in events]
    assert "watcher_stopped" in [e["event"] for e in events]
