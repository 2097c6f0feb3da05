"""The watcher's races and modes (issue "Hostile and odd targets", items 3-6).

- a crash being captured cannot be detached, handed off or ``where``d: it is
  refused at once, and the crash is still reported and dies of its signal;
- attaches of fresh (threaded) processes right after a kill -9 of the
  watcher while it held a crash all succeed;
- a new attach never waits out a long restart backoff: it is refused at once;
- concurrent requests for one pid each get their own answer (request ids);
- an exec from a thread that is not the leader leaves nothing behind;
- an undeclared mode transition is refused and logged;
- the per-architecture numbers, and a clear refusal of watch elsewhere.
"""

from __future__ import annotations

import asyncio
import ctypes
import io
import json
import os
import signal
import threading
from typing import Any

import psutil
import pytest

from tests.conftest import have, proc_state
from tests.support import Target, send_signal, tracer_pid, wait_until
from tracerd import arch
from tracerd.procinfo import identify
from tracerd.tracers.watch import supervisor as supervisors
from tracerd.tracers.watch.holds import Watched
from tracerd.tracers.watch.watcher import Watcher

pytestmark = pytest.mark.skipif(not have("gdb"), reason="gdb not installed")
WATCH = '[[rule]]\nprocess = "*"\ntracer = "watch"\n'


def watcher_pid(daemon: Any) -> int:
    return int(wait_until(lambda: daemon.status().get("watch", {}).get("pid") or _watcher_child(daemon), "a watcher"))


def _watcher_child(daemon: Any) -> int | None:
    for child in psutil.Process(daemon.proc.pid).children():
        if "tracerd.tracers.watch.watcher" in " ".join(child.cmdline()):
            return int(child.pid)
    return None


def attach(daemon: Any, pid: int, name: str = "churn") -> dict[str, Any]:
    return daemon.request(json.dumps({"op": "attach", "pid": pid, "name": name}).encode() + b"\n", timeout=30)


def test_detach_and_where_of_a_crash_being_captured_are_refused(
    daemon_factory: Any, cbin: Any, spawn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACERD_FAILPOINTS", "capture-running:3")
    daemon = daemon_factory("crash_flood_window = 0.0\n" + WATCH)
    target = spawn(cbin("crash", "-pthread"), daemon.hook_command(), "victim", "wait")
    assert target.readline() == "hook=0\n"
    target.release()
    assert target.readline() == "waiting\n"
    os.kill(target.pid, signal.SIGSEGV)
    wait_until(lambda: "failpoint capture-running" in daemon.stderr(), "the capture running", 20)
    for op in ("detach", "where"):
        result = daemon.ctl(op, str(target.pid))
        assert result.returncode != 0, result.stdout
        assert "crash capture in progress" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert proc_state(target.pid) == "t", "the crash stays held until its report is written"
    assert target.wait(timeout=30) == -signal.SIGSEGV
    session = daemon.wait_session(target.pid, "crashed", timeout=30)
    assert session["crash"], session


def test_fresh_attaches_right_after_a_watcher_death_all_succeed(
    daemon_factory: Any, cbin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 of the watcher while it holds a crash; 40 fresh threaded
    processes attach while the new watcher re-takes the survivors."""
    monkeypatch.setenv("TRACERD_FAILPOINTS", "capture-running:2")
    daemon = daemon_factory("crash_flood_window = 0.0\n" + WATCH)
    churn = cbin("churn", "-pthread")
    survivors = [Target([str(churn), "100000"]) for _ in range(8)]
    fresh = [Target([str(churn), "100000"]) for _ in range(40)]
    victim = Target([str(cbin("crash", "-pthread")), daemon.hook_command(), "victim", "wait"])
    try:
        for target in [*survivors, *fresh]:
            assert target.readline() == "ready\n"
        for target in survivors:
            assert attach(daemon, target.pid)["ok"]
        assert victim.readline() == "hook=0\n"
        victim.release()
        assert victim.readline() == "waiting\n"
        holder = tracer_pid(victim.pid)
        os.kill(victim.pid, signal.SIGSEGV)
        wait_until(lambda: "failpoint capture-running" in daemon.stderr(), "the capture running", 20)
        send_signal(holder, signal.SIGKILL)
        replies: list[dict[str, Any]] = []
        # 4 clients at once (tracerd's connection limit is not under test)
        threads = [
            threading.Thread(target=lambda part=part: replies.extend(attach(daemon, t.pid) for t in part))
            for part in (fresh[i::4] for i in range(4))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        failed = [reply.get("message") for reply in replies if not reply.get("ok")]
        assert len(replies) == 40
        assert not failed, f"{len(failed)} of 40 fresh attaches failed: {failed[:3]}"
        assert victim.wait(timeout=30) == -signal.SIGSEGV
        for target in survivors:  # traced again by the new watcher
            wait_until(lambda t=target: daemon.session(t.pid)["state"] == "attached", "survivor re-taken", 30)
    finally:
        for target in [*survivors, *fresh]:
            target.proc.stdin.close()  # type: ignore[union-attr]
        for target in [*survivors, *fresh]:
            assert target.wait(timeout=60) == 0
        for target in [*survivors, *fresh, victim]:
            target.reap()


def test_a_new_attach_is_refused_at_once_during_a_long_restart_backoff(daemon_factory: Any, cbin: Any) -> None:
    daemon = daemon_factory(WATCH)
    sleeper = cbin("sleeper")
    targets: list[Target] = []
    try:
        for _ in range(5):  # deaths in a row: the next restart waits 0.25, 0.5, 1, 2, 4 s
            target = Target([str(sleeper)])
            targets.append(target)
            assert target.readline() == "ready\n"
            reply = attach(daemon, target.pid, "sleeper")
            if not reply["ok"]:
                assert "restarts in" in reply["message"], reply
                break
            os.kill(tracer_pid(target.pid), signal.SIGKILL)
            wait_until(lambda t=target: tracer_pid(t.pid) == 0, "the watcher gone")
        fresh = Target([str(sleeper)])
        targets.append(fresh)
        assert fresh.readline() == "ready\n"
        reply = attach(daemon, fresh.pid, "sleeper")
        assert not reply["ok"], reply
        assert "died" in reply["message"], reply
        assert "restarts in" in reply["message"], reply
        assert tracer_pid(fresh.pid) == 0
        assert daemon.status()["ok"]
    finally:
        for target in targets:
            target.reap()


def test_concurrent_requests_for_one_pid_each_get_their_answer(cbin: Any) -> None:
    """Two seizes and two releases of one pid at once, against a real
    watcher: before request ids, the second overwrote the first's future."""
    target = Target([str(cbin("sleeper"))])
    assert target.readline() == "ready\n"

    class Client:
        def on_event(self, event: dict[str, Any]) -> None:
            pass

        def on_watcher_died(self) -> None:
            pass

    async def run() -> None:
        sup = supervisors.WatchSupervisor()
        identity = identify(target.pid)
        try:
            await asyncio.gather(
                sup.seize(Client(), target.pid, identity.start, False, 5.0),
                sup.seize(Client(), target.pid, identity.start, False, 5.0),
            )
            assert tracer_pid(target.pid) == sup.pid
            await asyncio.gather(sup.release(target.pid, 5.0), sup.release(target.pid, 5.0))
            assert tracer_pid(target.pid) == 0
        finally:
            await sup.stop()

    try:
        asyncio.run(run())
    finally:
        target.reap()


def test_an_exec_from_a_thread_leaves_one_thread_and_a_full_report(daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    daemon = daemon_factory(WATCH)
    target = spawn(cbin("exec_thread", "-pthread"), daemon.hook_command(), "execer", "/bin/sh", "-c", "kill -SEGV $$")
    assert target.readline() == "hook=0\n"
    target.release()
    assert target.wait(timeout=30) == -signal.SIGSEGV
    session = daemon.wait_session(target.pid, "crashed", timeout=30)
    report = json.loads(daemon.ctl("--json", "crash", session["crash"]).stdout)["crash"]
    assert [t["tid"] for t in report["threads"]] == [target.pid]


def test_an_undeclared_mode_transition_is_refused_and_logged(capsys: pytest.CaptureFixture[str]) -> None:
    watcher = Watcher(io.StringIO())
    watched = Watched(4242, 4242, False, mode="held")
    assert not watcher.move(watched, "run")
    assert watched.mode == "held"
    assert "undeclared transition of 4242: held -> run" in capsys.readouterr().err
    watched = Watched(4243, 4243, False)
    assert watcher.move(watched, "holding")
    assert watched.mode == "holding"


def test_architecture_numbers_and_the_watch_refusal() -> None:
    assert arch.of("aarch64").tgkill == 131  # type: ignore[union-attr]
    assert arch.of("x86_64").tgkill == 234  # type: ignore[union-attr]
    assert arch.watch_unsupported("x86_64") is None
    reason = arch.watch_unsupported("aarch64")
    assert reason
    assert "x86-64" in reason
    assert "aarch64" in reason
    facts = arch.of()
    if facts is None:
        pytest.skip(f"unknown machine {arch.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    # signal 0 to our own thread: the number is tgkill's, or this fails
    assert libc.syscall(facts.tgkill, os.getpid(), threading.get_native_id(), 0) == 0


