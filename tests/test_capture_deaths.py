"""Nothing is left stopped at any instant of a crash capture, whoever dies.

The README promises that a crashed process dies of its own signal even when
tracerd, the watcher or gdb dies while its crash is being captured.  These
tests freeze tracerd at chosen instants of the capture (fail points, see
tracerd/failpoint.py), kill -9 one or several of the parts there, and check
that the process dies of its own signal (the wait status its parent sees),
and that a restarted tracerd lists a capture it knows was interrupted.

The signal is a ``kill -SEGV`` from the test, the hard case: the kernel
drops the signal of a thread held in signal-delivery-stop when its tracer
dies, so only the copy tracerd queued again makes it die (a real fault would
simply fault again).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import Daemon, proc_state, reap_zombies
from tests.support import send_signal, wait_until
from tracerd.procinfo import tracer_pid

WATCH = '[[rule]]\nprocess = "*"\ntracer = "watch"'
HELPERS = {"gdb", "python3", "python", "setpriv", "tracerd"}
CASES = [
    ("watch", "capture-start", ("tracerd",)),
    ("watch", "capture-start", ("tracer",)),
    ("watch", "capture-start", ("tracerd", "tracer")),
    ("watch", "capture-running", ("tracerd",)),
    ("watch", "capture-running", ("tracer",)),
    ("watch", "capture-running", ("gdb",)),
    ("watch", "capture-running", ("tracerd", "tracer", "gdb")),
    ("watch", "report-written", ("tracerd",)),
    ("watch", "report-written", ("tracer",)),
    ("watch", "report-written", ("tracerd", "tracer")),
    ("gdb", "capture-start", ("tracerd",)),
    ("gdb", "capture-start", ("tracer",)),
    ("gdb", "capture-running", ("tracerd",)),
    ("gdb", "capture-running", ("tracer",)),
    ("gdb", "capture-running", ("tracerd", "tracer")),
    ("gdb", "report-written", ("tracerd",)),
    ("gdb", "report-written", ("tracerd", "tracer")),
]


def wait_for(check: Any, what: str, timeout: float = 20.0) -> Any:
    return wait_until(check, what, timeout, interval=0.02)


def capture_gdb(daemon: Daemon, tracer: int | None) -> int | None:
    """The gdb tracerd started for this crash (not the session's own tracer)."""
    assert daemon.proc is not None
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(daemon.proc.pid).children(recursive=True):
            if child.pid != tracer and child.name() == "gdb":
                return child.pid
    return None


@pytest.mark.parametrize(("tracer", "point", "victims"), CASES)
def test_kill_at_every_instant_of_a_capture(
    daemon_factory: Any, cbin: Any, spawn: Any, monkeypatch: pytest.MonkeyPatch,
    *, tracer: str, point: str, victims: tuple[str, ...],
) -> None:  # fmt: skip
    """Freeze the capture at ``point``, kill -9 ``victims``: the process dies of
    SIGSEGV, no thread is left stopped, and a restarted tracerd lists the
    crash (as an interrupted capture when tracerd died before the report)."""
    monkeypatch.setenv("TRACERD_FAILPOINTS", f"{point}:4")
    daemon = daemon_factory(f'crash_flood_window = 0.0\n[[rule]]\nprocess = "*"\ntracer = "{tracer}"')
    target = spawn(cbin("crash", "-pthread"), daemon.hook_command(), "victim", "wait")
    assert target.readline() == "hook=0\n"
    target.release()
    assert target.readline() == "waiting\n"
    holder = tracer_pid(target.pid)
    assert holder
    os.kill(target.pid, signal.SIGSEGV)
    wait_for(lambda: f"failpoint {point}" in daemon.stderr(), f"fail point {point}")
    pids = {"tracerd": daemon.proc.pid if daemon.proc else None, "tracer": holder}
    if "gdb" in victims:
        pids["gdb"] = wait_for(lambda: capture_gdb(daemon, holder), "the capture gdb")
    if point != "report-written":
        assert proc_state(target.pid) in ("t", "T"), "the crash must be held during the capture"
    for victim in victims:
        with contextlib.suppress(ProcessLookupError):
            send_signal(pids[victim], signal.SIGKILL)
    status = target.wait(timeout=30)
    assert status == -signal.SIGSEGV, f"the process must die of its own signal, got {status}"
    if daemon.proc is not None and "tracerd" in victims:
        daemon.proc.wait(timeout=30)
        wait_for(lambda: not any(p.name() in ("gdb",) for p in psutil.Process().children(recursive=True)
                                 if p.status() != psutil.STATUS_ZOMBIE), "orphaned gdb to end")  # fmt: skip
    reap_zombies(HELPERS)

    if "tracerd" in victims:
        monkeypatch.delenv("TRACERD_FAILPOINTS")
        daemon.start()
        listed = json.loads(daemon.ctl("--json", "crashes").stdout)["crashes"]
        assert [c["pid"] for c in listed] == [target.pid], listed
        expected = "complete" if point == "report-written" else "interrupted"
        assert listed[0]["capture"] == expected
        assert listed[0]["signal"] == "SIGSEGV"
        assert not list((daemon.state_dir / "capture").glob("*.core")), "stale cores are removed at start"
    else:
        session = daemon.wait_session(target.pid, "crashed", timeout=30)
        assert session["signal"] == "SIGSEGV"
    assert not list((daemon.state_dir / "capture").glob("*.json")) or "tracerd" not in victims


def test_hung_tracerd_before_the_capture_then_killed(daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """tracerd stopped before it could start the capture (the watcher holds the
    crash and wrote its core), then kill -9: the watcher, told by its parent-
    death signal, lets the process die of its signal; the core is removed by
    the next tracerd."""
    daemon = daemon_factory(WATCH)
    target = spawn(cbin("crash", "-pthread"), daemon.hook_command(), "victim", "wait")
    assert target.readline() == "hook=0\n"
    target.release()
    assert target.readline() == "waiting\n"
    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    os.kill(target.pid, signal.SIGSEGV)
    wait_for(lambda: list((daemon.state_dir / "capture").glob("*.core")), "the watcher's core")
    assert proc_state(target.pid) == "t"
    os.kill(daemon.proc.pid, signal.SIGKILL)
    daemon.proc.wait(timeout=30)
    assert target.wait(timeout=30) == -signal.SIGSEGV
    reap_zombies(HELPERS)
    daemon.start()
    assert not list((daemon.state_dir / "capture").glob("*.core"))


def test_real_fault_with_everything_killed_mid_capture(
    daemon_factory: Any, cbin: Any, spawn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real null dereference, tracerd, watcher and capture gdb all killed while
    the report is being made: the process dies of SIGSEGV."""
    monkeypatch.setenv("TRACERD_FAILPOINTS", "capture-running:4")
    daemon = daemon_factory(WATCH)
    target = spawn(cbin("crash", "-pthread"), daemon.hook_command(), "victim", "segv")
    assert target.readline() == "hook=0\n"
    watcher = tracer_pid(target.pid)
    target.release()
    wait_for(lambda: "failpoint capture-running" in daemon.stderr(), "the fail point")
    assert daemon.proc is not None
    gdb = wait_for(lambda: capture_gdb(daemon, watcher), "the capture gdb")
    for pid in (daemon.proc.pid, watcher, gdb):
        with contextlib.suppress(ProcessLookupError):
            send_signal(pid, signal.SIGKILL)
    assert target.wait(timeout=30) == -signal.SIGSEGV
    daemon.proc.wait(timeout=30)
    reap_zombies(HELPERS)


def test_untouched_core_file_is_a_readable_elf_core(daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """The watcher's core, read by a gdb of the test's own, gives the crashing
    frames: the file the capture relies on is a real ELF core."""
    daemon = daemon_factory(WATCH)
    target = spawn(cbin("crash", "-pthread"), daemon.hook_command(), "victim", "segv")
    assert target.readline() == "hook=0\n"
    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGSTOP)  # tracerd will not consume the core
    try:
        target.release()
        core = wait_for(lambda: list((daemon.state_dir / "capture").glob("*.core")), "the core")[0]
        exe = os.readlink(f"/proc/{target.pid}/exe")
        out = subprocess.run(
            ["gdb", "-nx", "-batch", "-ex", "bt", "-ex", "p $_siginfo.si_code", exe, str(Path(core))],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert "crash_here" in out.stdout, out.stdout + out.stderr
        assert "level_two" in out.stdout
        assert "= 1" in out.stdout  # SEGV_MAPERR, from the core's NT_SIGINFO
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    assert target.wait(timeout=30) == -signal.SIGSEGV
