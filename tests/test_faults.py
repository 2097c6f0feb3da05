"""Faults under load: kill -9 of tracerd, SIGTERM, and pid reuse.

The load is the issue's: 100 watched, 10 strace and 5 gdb sessions, plus a
private Postfix instance whose smtpd is traced through the hook.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import have, reap_zombies, script
from tests.support import assert_running, assert_untraced, reap, send_signal, tracer_pid, wait_until

pytestmark = pytest.mark.skipif(not (have("gdb") and have("strace")), reason="needs gdb and strace")

LOAD_RULES = (
    '[[rule]]\nprocess = "gdbload*"\ntracer = "gdb"\n'
    '[[rule]]\nprocess = "straceload*"\ntracer = "strace"\n'
    '[[rule]]\nprocess = "*"\ntracer = "watch"\n'
)
TRACER_NAMES = {"strace", "gdb", "python", "python3", "setpriv"}


def start_load(
    daemon: Any, cbin: Any, spawn: Any, *, watched: int = 100, straced: int = 10, gdbed: int = 5
) -> list[Any]:
    """Targets started through the hook, as Postfix starts them; all attached.

    A generous --ack-timeout: a hundred hooks starting at once on a loaded
    machine must not fail open here, which is not what these tests are about
    (tests/test_hook.py is)."""
    crash = cbin("crash", "-pthread")
    names = ["watchload"] * watched + ["straceload"] * straced + ["gdbload"] * gdbed
    hook = daemon.hook_command() + " --ack-timeout 60"
    targets = [spawn(crash, hook, name, "wait") for name in names]
    for target in targets:
        assert target.readline() == "hook=0\n"
    sessions = {s["pid"]: s for s in daemon.status()["sessions"]}
    assert all(sessions[t.pid]["state"] == "attached" for t in targets)
    return targets


def assert_all_run_untraced(targets: list[Any], within: float = 2.0) -> None:
    """Within `within` s none is in tracing stop and all live; soon none is traced."""
    time.sleep(within)
    for target in targets:
        assert_running(target.pid)
    wait_until(lambda: not [t.pid for t in targets if tracer_pid(t.pid)], "every target untraced", 15, interval=0.1)


def crash_one(daemon: Any, cbin: Any, spawn: Any) -> str:
    target = spawn(cbin("crash", "-pthread"), daemon.hook_command(), "crasher", "segv")
    assert target.readline() == "hook=0\n"
    target.release()
    assert target.wait() == -signal.SIGSEGV
    crash_id: str = daemon.wait_session(target.pid, "crashed")["crash"]
    return crash_id


@pytest.mark.slow
def test_kill9_of_tracerd_under_load_leaves_everything_running(
    daemon_factory: Any, cbin: Any, spawn: Any, postfix: Any
) -> None:
    """kill -9 of tracerd holding 100 watched, 10 strace, 5 gdb sessions and a
    traced smtpd: within 2 s nothing is in tracing stop, all run on untraced,
    Postfix still serves SMTP; after a restart tracerd serves new hooks and still
    lists its earlier crash reports."""
    daemon = daemon_factory(LOAD_RULES)
    postfix.create(smtpd_flags=" -D", debugger_command=daemon.hook_command() + " $process_name $process_id")
    postfix.start()
    crash_id = crash_one(daemon, cbin, spawn)
    targets = start_load(daemon, cbin, spawn)
    postfix.smtp_source(messages=10)
    postfix.wait_log("status=sent", 10)
    assert any(s["name"] == "smtpd" for s in daemon.status()["sessions"])
    daemon.proc.kill()
    daemon.proc.wait()
    try:
        assert_all_run_untraced(targets)
        postfix.smtp_source(messages=10)
        postfix.wait_log("status=sent", 20)
    finally:
        reap_zombies(TRACER_NAMES)
    daemon.start()
    crashes = json.loads(daemon.ctl("--json", "crashes").stdout)["crashes"]
    assert [c["id"] for c in crashes] == [crash_id]
    fresh = spawn(cbin("crash", "-pthread"), daemon.hook_command(), "fresh", "exit3")
    assert fresh.readline() == "hook=0\n"
    assert daemon.session(fresh.pid)["state"] == "attached"
    fresh.release()
    assert fresh.wait() == 3


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["watcher", "gdb"])
def test_kill9_of_watcher_or_one_gdb_under_load(daemon_factory: Any, cbin: Any, spawn: Any, victim: str) -> None:
    """kill -9 of the watcher, or of one gdb, under the same load: within 2 s no
    process is in tracing stop and all run on; the watched ones are watched
    again by a new watcher; the gdb's session fails; every other session is
    untouched."""
    daemon = daemon_factory(LOAD_RULES)
    targets = start_load(daemon, cbin, spawn)
    sessions = {s["pid"]: s for s in daemon.status()["sessions"]}
    kind = "watch" if victim == "watcher" else "gdb"
    hit = [t for t in targets if sessions[t.pid]["tracer"] == kind]
    killed = sessions[hit[0].pid]["tracer_pid"]
    if victim == "gdb":
        hit = hit[:1]
    send_signal(killed, signal.SIGKILL)
    time.sleep(2.0)
    for target in targets:
        assert_running(target.pid)
    now: dict[int, Any] = {}

    def recovered() -> bool:
        now.clear()
        now.update({s["pid"]: s for s in daemon.status()["sessions"] if s["state"] == "attached"})
        if victim == "watcher":
            return all(t.pid in now and now[t.pid]["tracer_pid"] != killed for t in hit)
        return bool(daemon.session(hit[0].pid)["state"] == "failed")

    wait_until(recovered, f"the {victim}'s sessions rewatched or failed", 30, interval=0.1)
    untouched = [t for t in targets if t not in hit]
    assert all(now[t.pid]["tracer_pid"] == sessions[t.pid]["tracer_pid"] for t in untouched)
    if victim == "gdb":
        assert tracer_pid(hit[0].pid) == 0
    reap_zombies(TRACER_NAMES)


@pytest.mark.slow
def test_sigterm_under_load_detaches_all_and_exits_0(daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """SIGTERM with 115 sessions: every session detached, every log closed with
    its final line, exit 0 within 5 s, every process running untraced."""
    daemon = daemon_factory(LOAD_RULES)
    targets = start_load(daemon, cbin, spawn)
    logs = [Path(daemon.session(t.pid)["log"]) for t in targets]
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=5) == 0
    elapsed = time.monotonic() - started
    assert elapsed < 5
    for log in logs:
        assert log.read_text().rstrip().endswith("detached (tracerd shutting down); it runs on untraced"), log
    assert_all_run_untraced(targets, within=0.0)
    reap_zombies(TRACER_NAMES)


def spawn_with_pid(want: int, argv: list[str], tries: int = 50) -> subprocess.Popen[bytes] | None:
    """Start argv so that it gets pid `want` (pid reuse on purpose, via ns_last_pid)."""
    for _ in range(tries):
        with contextlib.suppress(OSError):
            Path("/proc/sys/kernel/ns_last_pid").write_text(str(want - 1))
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        if proc.pid == want:
            return proc
        proc.kill()
        proc.wait()
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="ns_last_pid needs root")
def test_recycled_pid_is_never_acted_upon(daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """A process ends and its session with it; a new one gets its pid: detach and
    where refuse it, show shows the old session, not the new process; attach
    makes a new session."""
    daemon = daemon_factory('[[rule]]\nprocess = "*"\ntracer = "watch"\n')
    old = spawn(cbin("sleeper"))
    assert old.readline() == "ready\n"
    assert daemon.ctl("attach", str(old.pid), "--name", "old").returncode == 0
    pid = old.pid
    old.proc.kill()
    old.wait()
    daemon.wait_session(pid, "exited")
    new = spawn_with_pid(pid, [str(cbin("sleeper"))])
    if new is None:
        pytest.skip("could not make the kernel recycle the pid (busy machine)")
    try:
        assert new.stdout is not None
        assert new.stdout.readline() == b"ready\n"
        for command in ("detach", "where"):
            result = daemon.ctl(command, str(pid))
            assert result.returncode == 1, command
            assert f"pid {pid} is not traced" in result.stderr
        shown = daemon.session(pid)
        assert shown["name"] == "old"
        assert shown["state"] == "exited"
        assert_untraced(pid)
        assert daemon.ctl("attach", str(pid), "--name", "new").returncode == 0
        session = daemon.session(pid)
        assert session["name"] == "new"
        assert session["state"] == "attached"
    finally:
        new.kill()
        new.wait()
        for stream in (new.stdin, new.stdout):
            if stream is not None:
                stream.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="ns_last_pid needs root")
def test_recycled_pid_is_refused_while_the_old_session_is_active(
    daemon_factory: Any, cbin: Any, spawn: Any, tmp_path: Path
) -> None:
    """The pid of a process whose session is still active (its tracer still
    attaching) is reused by a new process before tracerd notices: where refuses
    it (the start time differs: "gone (or its pid was reused)"), show still shows
    the old session, nothing traces the new process; attach makes a new session
    for it, and the old one goes to the history."""
    # truss is not on Linux: this one is a real program that never attaches, so the
    # old session stays "attaching" for as long as the test needs (attach_timeout)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "truss").write_text("#!/bin/sh\nexec sleep 600\n")
    (bindir / "truss").chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    daemon = daemon_factory(env=env, attach_timeout=300.0)
    old = spawn(cbin("sleeper"))
    assert old.readline() == "ready\n"
    pid = old.pid
    attach = [*script("tracerctl"), "--socket", str(daemon.socket), "attach", str(pid), "--name", "old"]
    attaching = subprocess.Popen([*attach, "--tracer", "truss"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    new: subprocess.Popen[bytes] | None = None
    try:
        daemon.wait_session(pid, "attaching")
        # stopped, tracerd cannot see the old process go before its pid is reused
        os.kill(daemon.proc.pid, signal.SIGSTOP)
        try:
            old.proc.kill()
            old.wait()
            new = spawn_with_pid(pid, [str(cbin("sleeper"))])
        finally:
            os.kill(daemon.proc.pid, signal.SIGCONT)
        if new is None:
            pytest.skip("could not make the kernel recycle the pid (busy machine)")
        assert new.stdout is not None
        assert new.stdout.readline() == b"ready\n"
        shown = daemon.session(pid)
        assert (shown["name"], shown["state"]) == ("old", "attaching"), shown
        result = daemon.ctl("where", str(pid))
        assert result.returncode == 1
        assert f"process {pid} is gone (or its pid was reused)" in result.stderr
        assert_untraced(pid)
        result = daemon.ctl("attach", str(pid), "--name", "new", "--tracer", "watch")
        assert result.returncode == 0, result.stderr
        session = daemon.session(pid)
        assert (session["name"], session["state"]) == ("new", "attached")
        assert tracer_pid(pid) == session["tracer_pid"]
        ended = [s for s in daemon.status()["sessions"] if s["pid"] == pid and s["name"] == "old"]
        assert len(ended) == 1
    finally:
        if new is not None:
            reap(new)
        daemon.stop()  # ends the never-attaching tracer too (it dies with tracerd)
        reap(attaching)
        wait_until(lambda: reap_zombies({"sleep", "setpriv", "truss"}) or not any(
            c.name() == "sleep" for c in psutil.Process().children()), "the stand-in tracer reaped")  # fmt: skip
