"""The warm gdb of the watch tracer (README: Crash latency and memory).

One gdb is kept started, settings loaded and no target, for the next crash;
the capture takes it, and a fresh one replaces it after use.  These tests
run real crashes through a real tracerd and check that every crash gets its
full report whether or not a warm gdb was there, that the warm gdb is
replaced (a new process) after use and after a kill -9, and that it shows
in ``status`` with its memory, which stays under its bound.
"""

from __future__ import annotations

import json
import signal
from typing import Any

import psutil
import pytest

from tests.conftest import have, reap_zombies
from tests.support import send_signal, wait_until

pytestmark = pytest.mark.skipif(not have("gdb"), reason="gdb not installed")
CONFIG = 'crash_flood_window = 0.0\n[[rule]]\nprocess = "*"\ntracer = "watch"\n'
HELPERS = {"gdb", "python3", "python", "setpriv", "tracerd"}


def warm_row(daemon: Any) -> dict[str, Any]:
    return dict(json.loads(daemon.ctl("--json", "status", check=True).stdout).get("warm_gdb") or {})


def ready_warm(daemon: Any, not_pid: int | None = None) -> dict[str, Any]:
    """The warm gdb row once a warm gdb (other than ``not_pid``) is ready."""

    def ready() -> dict[str, Any] | None:
        row = warm_row(daemon)
        return row if row.get("pid") and row["pid"] != not_pid else None

    return dict(wait_until(ready, "a warm gdb ready", 60.0, interval=0.05))


def full_report(daemon: Any, pid: int) -> dict[str, Any]:
    """The crash report of pid, checked to be a complete one."""
    session = daemon.wait_session(pid, "crashed", timeout=60)
    assert session["crash"], session
    result = daemon.ctl("--json", "crash", session["crash"])
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)["crash"]
    assert report["process"]["pid"] == pid
    assert report["top"][:3] == ["crash_here", "level_two", "level_one"], report["top"]
    assert report["signal"]["name"] == "SIGSEGV"
    assert report["registers"].get("rip"), "registers read from the core"
    assert any("libc.so" in lib["path"] for lib in report["libraries"]), report["libraries"]
    assert not report["process"].get("capture_errors"), report["process"]["capture_errors"]
    return report


def gone(pid: int) -> bool:
    """pid has ended (a zombie waiting for its reaper counts as ended)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def crasher(daemon: Any, cbin: Any, spawn: Any, name: str) -> Any:
    target = spawn(cbin("crash", "-pthread"), daemon.hook_command(), name, "segv")
    assert target.readline() == "hook=0\n"
    return target


def test_back_to_back_crashes_each_get_a_full_report_and_the_warm_gdb_is_replaced(
    daemon_factory: Any, cbin: Any, spawn: Any
) -> None:
    """A watch session starts the warm gdb (a child of tracerd, in ``status
    --json`` with its RSS, under its bound, libc preloaded); two processes
    crashing one right after the other each get a full report (the second
    without a warm gdb of its own: it waits for one or starts a cold one); a
    new warm gdb (another process) is ready afterwards, the used one is gone;
    stopping tracerd ends it."""
    daemon = daemon_factory(CONFIG)
    first = crasher(daemon, cbin, spawn, "first")
    second = crasher(daemon, cbin, spawn, "second")
    row = ready_warm(daemon)
    assert daemon.proc is not None
    warm = psutil.Process(row["pid"])
    assert warm.name() == "gdb"
    assert warm.pid in {p.pid for p in psutil.Process(daemon.proc.pid).children(recursive=True)}
    assert 0 < row["rss_kb"] <= row["max_rss_kb"], row
    assert any("libc.so" in path for path in row["preloaded"]), row

    first.release()
    second.release()
    assert first.wait(timeout=60) == -signal.SIGSEGV
    assert second.wait(timeout=60) == -signal.SIGSEGV
    full_report(daemon, first.pid)
    full_report(daemon, second.pid)

    after = ready_warm(daemon, not_pid=row["pid"])
    assert after["taken"] >= 1, after  # a crash did use the warm gdb
    assert after["taken"] + after["cold_starts"] == 2, after
    wait_until(lambda: gone(row["pid"]), "the used warm gdb to end", 30.0)
    daemon.stop()
    wait_until(lambda: gone(after["pid"]), "the warm gdb to end with tracerd", 30.0)
    reap_zombies(HELPERS)


def test_kill_9_of_the_warm_gdb_is_survived(daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """kill -9 of the idle warm gdb: the next crash still gets its full report
    (from a fresh warm gdb or a cold one), and tracerd replaces the dead one
    (a new pid, the death counted in ``status``)."""
    daemon = daemon_factory(CONFIG)
    target = crasher(daemon, cbin, spawn, "victim")
    row = ready_warm(daemon)
    send_signal(row["pid"], signal.SIGKILL)
    target.release()
    assert target.wait(timeout=60) == -signal.SIGSEGV
    full_report(daemon, target.pid)
    after = ready_warm(daemon, not_pid=row["pid"])
    assert after["died"] == 1, after
    assert "warm_gdb_died" in daemon.stderr()

    # and the replacement serves the crash after it
    again = crasher(daemon, cbin, spawn, "again")
    warm = ready_warm(daemon, not_pid=row["pid"])
    again.release()
    assert again.wait(timeout=60) == -signal.SIGSEGV
    full_report(daemon, again.pid)
    ready_warm(daemon, not_pid=warm["pid"])
    reap_zombies(HELPERS)


def test_no_warm_gdb_without_a_watch_session(daemon_factory: Any) -> None:
    """A daemon that has watched nothing keeps no gdb: ``warm_gdb`` is null."""
    daemon = daemon_factory(CONFIG)
    status = json.loads(daemon.ctl("--json", "status", check=True).stdout)
    assert "warm_gdb" in status
    assert status["warm_gdb"] is None
    assert daemon.proc is not None
    assert not [p for p in psutil.Process(daemon.proc.pid).children(recursive=True) if p.name() == "gdb"]
