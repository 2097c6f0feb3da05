"""A hostile or failing environment: planted symlinks, a swapped log_dir, a
full disk, and a syslog that is down or not reading."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import have
from tests.support import assert_running, wait_until

pytestmark = pytest.mark.skipif(not have("strace"), reason="strace not installed")


def syscw(pid: int) -> int:
    """Write system calls so far: proof that a process makes progress."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise AssertionError("no syscw")


def progresses(pid: int) -> bool:
    """A write within 0.5 s (the sleeper writes every 50 ms): as soon as it shows, not after 0.5 s."""
    before = syscw(pid)
    return wait_until(lambda: syscw(pid) > before, f"process {pid} writing on", 0.5, interval=0.01)


def sleeper_attached(daemon: Any, cbin: Any, spawn: Any, name: str = "sleeper") -> Any:
    sleeper = spawn(cbin("sleeper"))
    assert sleeper.readline() == "ready\n"
    result = daemon.ctl("attach", str(sleeper.pid), "--name", name, "--tracer", "strace")
    assert result.returncode == 0, result.stderr
    return sleeper


def test_symlink_planted_at_log_path_is_refused(daemon: Any, cbin: Any, spawn: Any, tmp_path: Path) -> None:
    """A symlink at {log_dir}/NAME.PID.log: the session fails, the link's target
    is untouched, the process is not traced."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    sleeper = spawn(cbin("sleeper"))
    assert sleeper.readline() == "ready\n"
    daemon.log_dir.mkdir(exist_ok=True)
    (daemon.log_dir / f"planted.{sleeper.pid}.log").symlink_to(victim)
    result = daemon.ctl("attach", str(sleeper.pid), "--name", "planted")
    assert result.returncode == 1
    assert "cannot open log" in result.stderr
    assert victim.read_text() == "precious\n"
    assert "TracerPid:\t0" in Path(f"/proc/{sleeper.pid}/status").read_text()


def test_log_dir_swapped_for_a_symlink_never_redirects_writes(
    daemon: Any, cbin: Any, spawn: Any, tmp_path: Path
) -> None:
    """log_dir renamed and replaced by a symlink to elsewhere: new logs still go
    to the directory tracerd holds; after SIGHUP it refuses the symlink and
    keeps the old one; nothing is ever written elsewhere."""
    first = sleeper_attached(daemon, cbin, spawn, "first")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    held = daemon.log_dir.with_name("log.old")
    daemon.log_dir.rename(held)
    daemon.log_dir.symlink_to(elsewhere)
    second = sleeper_attached(daemon, cbin, spawn, "second")
    os.kill(daemon.proc.pid, signal.SIGHUP)
    wait_until(lambda: "log_dir_reopen_failed" in daemon.stderr(), "log_dir_reopen_failed logged")
    third = sleeper_attached(daemon, cbin, spawn, "third")
    time.sleep(0.3)
    assert list(elsewhere.iterdir()) == []
    names = {p.name for p in held.iterdir()}
    assert {f"first.{first.pid}.log", f"second.{second.pid}.log", f"third.{third.pid}.log"} <= names


@pytest.fixture
def small_fs() -> Iterator[Path]:
    """A 512 KiB tmpfs that everyone may traverse, unmounted afterwards."""
    root = Path(tempfile.mkdtemp(prefix="tracerd-fs-"))
    root.chmod(0o755)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0755", "tmpfs", str(root)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        root.rmdir()
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)
        with contextlib.suppress(OSError):
            root.rmdir()


def fill(path: Path) -> Path:
    """Fill the filesystem to the last byte."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def test_disk_full_flags_sessions_warns_once_and_recovers(
    daemon_factory: Any, cbin: Any, spawn: Any, small_fs: Path, syslog_receiver: Any
) -> None:
    """log_dir and state_dir on a full tmpfs: the traced process runs on
    unaffected, its session is flagged, one syslog warning is sent, a crash
    summary still reaches syslog, and logging resumes once space returns."""
    daemon = daemon_factory('[[rule]]\nprocess = "crash*"\ntracer = "watch"\n', data_dir=small_fs)
    sleeper = sleeper_attached(daemon, cbin, spawn)
    log = Path(daemon.session(sleeper.pid)["log"])
    filler = fill(small_fs)
    session = wait_until(lambda: daemon.session(sleeper.pid)["log_error"] and daemon.session(sleeper.pid),
                         "the session flagged with its log error", 15, interval=0.1)  # fmt: skip
    assert "No space left on device" in session["log_error"]
    assert progresses(sleeper.pid)
    assert_running(sleeper.pid)
    # the output that no longer fits is dropped and counted, and the count goes on growing
    dropped = wait_until(lambda: daemon.session(sleeper.pid)["log_dropped"], "output counted as dropped", 15)
    wait_until(lambda: daemon.session(sleeper.pid)["log_dropped"] > dropped, "more output dropped", 15)
    warnings = [m for m in syslog_receiver.collect() if m.startswith("<20>") and "cannot write" in m]
    assert len(warnings) == 1, warnings
    # a crash while the disk is full: its summary still reaches syslog
    crasher = spawn(cbin("crash", "-pthread"), daemon.hook_command(), "crashfull", "segv")
    assert crasher.readline() == "hook=0\n"
    crasher.release()
    assert crasher.wait() == -signal.SIGSEGV
    summary = syslog_receiver.wait_for(f"crashfull[{crasher.pid}]: crashed: SIGSEGV")
    assert summary.startswith("<18>")
    # space returns: logging resumes, the flag clears
    filler.unlink()
    size = log.stat().st_size
    wait_until(lambda: daemon.session(sleeper.pid)["log_error"] is None and log.stat().st_size > size,
               "logging resumed and the flag cleared", 15, interval=0.1)  # fmt: skip
    assert daemon.session(sleeper.pid)["log_dropped"] > 0


def test_syslog_not_reading_never_blocks_and_counts_drops(
    daemon_factory: Any, cbin: Any, spawn: Any, tmp_path: Path
) -> None:
    """A syslog socket nobody reads: tracer output (sent there: syslog_output) still reaches the
    log, the lines syslog cannot take are dropped and counted, the process runs on."""
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    deaf.bind(str(tmp_path / "deaf.sock"))
    try:
        daemon = daemon_factory('[[rule]]\nprocess = "*"\nsyslog_output = true\n', syslog_path=tmp_path / "deaf.sock")
        sleeper = sleeper_attached(daemon, cbin, spawn)
        log = Path(daemon.session(sleeper.pid)["log"])
        wait_until(lambda: daemon.status()["counters"]["syslog_dropped"] > 0, "syslog lines dropped, counted", 15)
        first = log.stat().st_size
        assert progresses(sleeper.pid)
        wait_until(lambda: log.stat().st_size > first, "the log growing on", 15)
        wait_until(lambda: daemon.session(sleeper.pid)["lines"] > 20, "over 20 lines", 15)
    finally:
        deaf.close()


def test_syslog_absent_counts_drops(daemon_factory: Any, cbin: Any, spawn: Any, tmp_path: Path) -> None:
    """No syslog socket at all: output still goes to the log, drops counted."""
    daemon = daemon_factory(syslog_path=tmp_path / "absent.sock")
    sleeper = sleeper_attached(daemon, cbin, spawn)
    log = Path(daemon.session(sleeper.pid)["log"])
    wait_until(lambda: "tick" in log.read_text(), "a tick in the log")
    assert daemon.status()["counters"]["syslog_dropped"] > 0
    assert progresses(sleeper.pid)


@pytest.mark.skipif(not have("gdb"), reason="gdb not installed")
def test_fd_limit_refuses_new_sessions_but_keeps_crash_capture(daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """Under a low RLIMIT_NOFILE, new sessions are refused ('busy', the hook
    fails open) before descriptors run out, so that a crash of a process
    already watched still gets its full report, and status still answers."""
    daemon = daemon_factory('[[rule]]\nprocess = "*"\ntracer = "watch"\n')
    resource.prlimit(daemon.proc.pid, resource.RLIMIT_NOFILE, (120, 120))
    crash = cbin("crash", "-pthread")
    victim = spawn(crash, daemon.hook_command(), "victim", "segv")
    assert victim.readline() == "hook=0\n"
    outcomes = []
    for _ in range(120):
        target = spawn(crash, daemon.hook_command(), "filler", "wait")
        outcomes.append(target.readline())
        if outcomes[-1] == "hook=1\n":
            break
    assert outcomes[-1] == "hook=1\n", "no refusal before 120 sessions"
    assert outcomes.count("hook=0\n") >= 10
    assert "too few file descriptors" in daemon.stderr()
    victim.release()
    assert victim.wait() == -signal.SIGSEGV
    session = daemon.wait_session(victim.pid, "crashed")
    assert session["crash"], session
    assert daemon.ctl("status").returncode == 0
