"""The watch tracer against processes whose threads come and go.

A seize races with thread births (TRACECLONE auto-attaches a thread the
watcher has not yet heard of) and deaths (an exiting thread refuses
PTRACE_SEIZE with EPERM).  Neither may fail the attach, and no rollback may
leave a thread in a ptrace-stop: every task of every target is looked at,
and every target must exit 0 on its own.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from tests.conftest import have
from tests.support import Target, task_states, wait_until

pytestmark = pytest.mark.skipif(not have("gdb"), reason="gdb not installed")
ATTACHES = int(os.environ.get("CHURN_ATTACHES", "200"))
AT_ONCE = 8


def stopped_tasks(pid: int) -> list[str]:
    """Every task of pid in a ptrace-stop ('t'), with its tracer."""
    return [f"task {tid} of {pid} in ptrace-stop, TracerPid {tracer}"
            for tid, state, tracer in task_states(pid) if state == "t"]  # fmt: skip


@pytest.mark.slow
def test_200_attaches_to_churning_processes_leave_nothing_stopped(daemon_factory: Any, cbin: Any) -> None:
    daemon = daemon_factory('[[rule]]\nprocess = "*"\ntracer = "watch"\n')
    exe = cbin("churn", "-pthread")
    failures: list[str] = []
    stuck: list[str] = []
    done = 0
    while done < ATTACHES:
        batch = [Target([str(exe), "0"]) for _ in range(min(AT_ONCE, ATTACHES - done))]
        try:
            for target in batch:
                assert target.readline() == "ready\n"
            for target in batch:
                request = {"op": "attach", "pid": target.pid, "name": "churn"}
                reply = daemon.request(json.dumps(request).encode() + b"\n", timeout=60)
                if not reply.get("ok"):
                    failures.append(str(reply.get("message")))
            for target in batch:  # a release chases newborn threads: slow on a loaded machine, and bounded
                daemon.request(json.dumps({"op": "detach", "pid": target.pid}).encode() + b"\n", timeout=60)
            for target in batch:
                target.close_stdin()  # churn.c ends its loop at EOF
            for target in batch:
                try:
                    code = target.wait(timeout=60)
                except Exception:
                    stuck.extend(stopped_tasks(target.pid) or [f"target {target.pid} did not exit"])
                    continue
                assert code == 0, f"target {target.pid} exited {code}"
        finally:
            for target in batch:
                target.reap()
        done += len(batch)
    assert not stuck, stuck
    assert not failures, f"{len(failures)} of {ATTACHES} attaches failed: {failures[:3]}"
    assert daemon.alive()
    wait_until(lambda: daemon.status()["ok"], "tracerd answers")
