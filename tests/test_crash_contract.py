"""The crash contract, run against every crash-capable tracer (gdb, watch):
crash reports from real crashes, then the process dies of its own signal
exactly as untraced; harmless signals pass; nothing is left stopped and no
gdb is left running."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import have, module_daemon, proc_state
from tests.support import Daemon, wait_until

pytestmark = pytest.mark.skipif(not have("gdb"), reason="gdb not installed")



def crash_bin(cbin: Any) -> Path:
    path: Path = cbin("crash", "-pthread")
    return path


def untraced_status(cbin: Any, spawn: Any, mode: str, send: int | None = None) -> tuple[int, str]:
    """The wait status and output of the same target with no tracer at all."""
    target = spawn(crash_bin(cbin), "-", "crashd", mode)
    assert target.readline() == "hook=0\n"
    return _drive(target, mode, send)


def _drive(target: Any, mode: str, send: int | None) -> tuple[int, str]:
    target.release()
    if send is not None:
        assert target.readline() == "waiting\n"
        target.proc.send_signal(send)
    code = target.wait(timeout=60)
    assert target.proc.stdout is not None
    rest = target.proc.stdout.read().decode()
    return code, rest


def traced_status(daemon: Any, cbin: Any, spawn: Any, mode: str, send: int | None = None) -> tuple[int, str, Any]:
    target = spawn(crash_bin(cbin), daemon.hook_command(), "crashd", mode)
    assert target.readline() == "hook=0\n"
    session = daemon.session(target.pid)
    assert session["state"] == "attached"
    assert session["tracer"] in ("gdb", "watch")
    code, rest = _drive(target, mode, send)
    return code, rest, target


def gdb_children(daemon: Any) -> list[psutil.Process]:
    try:
        children = psutil.Process(daemon.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [child for child in children if child.name() == "gdb" and child.status() != psutil.STATUS_ZOMBIE]


def assert_clean(daemon: Any, pid: int) -> None:
    """No process left in tracing stop, no gdb left running but the watch tracer's warm gdb."""
    assert proc_state(pid) != "t"

    def left() -> list[psutil.Process]:
        warm = (daemon.status().get("warm_gdb") or {}).get("pid")
        return [child for child in gdb_children(daemon) if child.pid != warm]

    wait_until(lambda: left() == [], "no gdb left running", 10)


def rule(tracer: str) -> str:
    return f'[[rule]]\nprocess = "crash*"\ntracer = "{tracer}"\n'


@pytest.fixture(params=["gdb", "watch"])
def gdb_daemon(daemon_factory: Any, request: pytest.FixtureRequest) -> Any:
    """A daemon tracing crash* processes with the tracer under test."""
    return daemon_factory(rule(request.param))


@pytest.fixture(scope="module", params=["gdb", "watch"])
def calm_daemon(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Daemon]:
    """A daemon for each tracer, shared by the module's tests whose process ends without a crash (an
    exit, a harmless signal, its own handler): each reads only its own pid's session, and the crash
    store stays empty.  A test that crashes or counts has a daemon of its own (gdb_daemon)."""
    with module_daemon(tmp_path_factory, rule(request.param)) as daemon:
        yield daemon


def crash_report(daemon: Any, crash_id: str) -> dict[str, Any]:
    result = daemon.ctl("--json", "crash", crash_id)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)["crash"]
    return report


def test_null_dereference_three_calls_deep(gdb_daemon: Any, cbin: Any, spawn: Any, syslog_receiver: Any) -> None:
    """A report names crash_here < level_two < level_one < main, in order; the
    process dies of SIGSEGV as untraced; the log holds the backtrace; one crit line."""
    baseline, _ = untraced_status(cbin, spawn, "segv")
    code, _, target = traced_status(gdb_daemon, cbin, spawn, "segv")
    assert baseline == -signal.SIGSEGV
    assert code == baseline
    session = gdb_daemon.wait_session(target.pid, "crashed")
    assert session["signal"] == "SIGSEGV"
    assert session["crash"]
    report = crash_report(gdb_daemon, session["crash"])
    crashed = next(t for t in report["threads"] if t["crashed"])
    names = [frame["function"] for frame in crashed["frames"]]
    assert names[:4] == ["crash_here", "level_two", "level_one", "main"]
    assert crashed["frames"][0]["file"].endswith("crash.c")
    assert report["signal"]["name"] == "SIGSEGV"
    assert report["signal"]["si_code"] == 1  # SEGV_MAPERR: a real fault
    assert report["signal"]["fault_address"] == "0x0"
    assert report["registers"]
    assert "rip" in report["registers"] or "pc" in report["registers"]
    assert report["disassembly"]
    assert any(lib["build_id"] for lib in report["libraries"])
    assert report["process"]["pid"] == target.pid
    assert Path(report["log"]).read_text().count("crash_here") >= 1
    summary = syslog_receiver.wait_for(f"crashd[{target.pid}]: crashed: SIGSEGV in crash_here < level_two < level_one")
    assert summary.startswith("<18>")  # mail.crit
    assert summary.endswith(f"; report {gdb_daemon.state_dir / 'crashes' / session['crash']}.json")
    crits = [m for m in syslog_receiver.collect() if m.startswith("<18>")]
    assert len(crits) == 1
    assert_clean(gdb_daemon, target.pid)


def test_abort(gdb_daemon: Any, cbin: Any, spawn: Any) -> None:
    """abort(): SIGABRT report, the process dies of SIGABRT as untraced."""
    baseline, _ = untraced_status(cbin, spawn, "abort")
    code, _, target = traced_status(gdb_daemon, cbin, spawn, "abort")
    assert code == baseline == -signal.SIGABRT
    session = gdb_daemon.wait_session(target.pid, "crashed")
    report = crash_report(gdb_daemon, session["crash"])
    crashed = next(t for t in report["threads"] if t["crashed"])
    assert "main" in [frame["function"] for frame in crashed["frames"]]
    assert report["signal"]["name"] == "SIGABRT"
    assert_clean(gdb_daemon, target.pid)


def test_crash_in_second_thread(gdb_daemon: Any, cbin: Any, spawn: Any) -> None:
    """A crash in a second thread: that thread's frames, all threads listed."""
    baseline, _ = untraced_status(cbin, spawn, "thread")
    code, _, target = traced_status(gdb_daemon, cbin, spawn, "thread")
    assert code == baseline == -signal.SIGSEGV
    session = gdb_daemon.wait_session(target.pid, "crashed")
    report = crash_report(gdb_daemon, session["crash"])
    assert len(report["threads"]) == 2
    crashed = next(t for t in report["threads"] if t["crashed"])
    names = [frame["function"] for frame in crashed["frames"]]
    assert names[:2] == ["thread_crash", "thread_main"]
    assert report["top"][:2] == ["thread_crash", "thread_main"]
    assert_clean(gdb_daemon, target.pid)


def test_own_sigsegv_handler_runs_as_untraced(calm_daemon: Any, cbin: Any, spawn: Any) -> None:
    """A program's own SIGSEGV handler runs; no crash report; same exit status."""
    baseline, out = untraced_status(cbin, spawn, "handler")
    code, traced_out, target = traced_status(calm_daemon, cbin, spawn, "handler")
    assert (code, traced_out) == (baseline, out) == (7, "handled\n")
    session = calm_daemon.wait_session(target.pid, "exited")
    assert session["exit_code"] == 7
    assert session["crash"] is None
    assert json.loads(calm_daemon.ctl("--json", "crashes").stdout)["crashes"] == []
    assert_clean(calm_daemon, target.pid)


@pytest.mark.parametrize("signum", [signal.SIGPIPE, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1])
def test_harmless_signals_are_delivered_as_untraced(calm_daemon: Any, cbin: Any, spawn: Any, signum: int) -> None:
    """SIGPIPE, SIGTERM, SIGHUP, SIGUSR1: delivered, no stall, no crash report."""
    baseline, _ = untraced_status(cbin, spawn, "wait", send=signum)
    code, _, target = traced_status(calm_daemon, cbin, spawn, "wait", send=signum)
    assert code == baseline == -signum
    session = calm_daemon.wait_session(target.pid, "exited")
    assert session["signal"] == signal.Signals(signum).name
    assert session["crash"] is None
    assert_clean(calm_daemon, target.pid)


def test_normal_exit_with_code_3(calm_daemon: Any, cbin: Any, spawn: Any) -> None:
    """exit(3): session exited with 3, log closed, gdb gone."""
    code, _, target = traced_status(calm_daemon, cbin, spawn, "exit3")
    assert code == 3
    session = calm_daemon.wait_session(target.pid, "exited")
    assert session["exit_code"] == 3
    log = Path(session["log"])
    wait_until(lambda: log.read_text().rstrip().endswith("exited with status 3"), "the log's closing line", 10)
    assert log.read_text().rstrip().endswith(f"crashd[{target.pid}] exited with status 3")
    assert_clean(calm_daemon, target.pid)


def test_same_crash_in_five_pids_one_signature(gdb_daemon: Any, cbin: Any, spawn: Any) -> None:
    """Five pids, one bug: one signature, count five, one full report."""
    pids = []
    for _ in range(5):
        code, _, target = traced_status(gdb_daemon, cbin, spawn, "segv")
        assert code == -signal.SIGSEGV
        gdb_daemon.wait_session(target.pid, "crashed")
        pids.append(target.pid)
    crashes = json.loads(gdb_daemon.ctl("--json", "crashes").stdout)["crashes"]
    assert len(crashes) == 1
    (entry,) = crashes
    assert entry["count"] == 5
    assert entry["signal"] == "SIGSEGV"
    assert entry["top"] == ["crash_here", "level_two", "level_one"]
    reports = list((gdb_daemon.state_dir / "crashes").glob("*.json"))
    assert len([r for r in reports if r.name != "index.json"]) == 1
    table = gdb_daemon.ctl("crashes").stdout
    assert entry["signature"] in table
    assert "crash_here < level_two < level_one" in table
    full = gdb_daemon.ctl("crash", entry["id"]).stdout
    assert "crash_here" in full
    assert "SIGSEGV" in full


def test_frames_without_symbols_name_object_and_build_id(
    gdb_daemon: Any, cbin: Any, spawn: Any, tmp_path: Path
) -> None:
    """A stripped binary: unnamed frames are listed with their object and
    build-id (no package owns a test binary, so none is named)."""
    stripped = tmp_path / "crash-stripped"
    shutil.copy(crash_bin(cbin), stripped)
    subprocess.run(["strip", "-s", str(stripped)], check=True)
    target = spawn(stripped, gdb_daemon.hook_command(), "crashd", "segv")
    assert target.readline() == "hook=0\n"
    target.release()
    assert target.wait() == -signal.SIGSEGV
    session = gdb_daemon.wait_session(target.pid, "crashed")
    report = crash_report(gdb_daemon, session["crash"])
    crashed = next(t for t in report["threads"] if t["crashed"])
    assert crashed["frames"][0]["function"] is None
    missing = {m["object"]: m for m in report["missing_symbols"]}
    assert str(stripped) in missing
    entry = missing[str(stripped)]
    readelf = subprocess.run(["readelf", "-n", str(stripped)], capture_output=True, text=True, check=True).stdout
    assert entry["build_id"]
    assert entry["build_id"] in readelf
    assert entry["package"] is None
    assert_clean(gdb_daemon, target.pid)
