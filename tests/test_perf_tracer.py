"""The perf tracer (docs/design.md "Tracers"): perf trace -p on real C targets, its refusals."""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import TRACEFS, Daemon, script, tracefs_mounted, wait_until
from tracerd import arch
from tracerd.tracers import perfcheck

pytestmark = pytest.mark.skipif(shutil.which("perf") is None, reason="perf (linux-perf) not installed")


@pytest.fixture
def tracefs() -> Iterator[str]:
    """tracefs mounted at /sys/kernel/tracing: mounted here if absent, and unmounted after."""
    with tracefs_mounted() as path:
        yield path


MARKER_RE = re.compile(r"write\(fd: 1(?:<[^>\n]*>)?, buf: 0x[0-9a-f]+, count: 18\)\s+= 18\n")


def test_marker_write_and_exit_status_in_the_log(tracefs: str, daemon: Any, cbin: Any, spawn: Any) -> None:
    """The hook returns once perf traces the process: the target's write of its
    18-byte marker right after the hook reaches the log while the process still
    runs (perf's recording is printed a file at a time, about a second late), and
    the session ends with the status perf saw in exit_group(); status lists the
    perf session with 0 lost."""
    hook = daemon.hook_command(timeout=60) + " --tracer perf"
    target = spawn(cbin("hooked"), hook, "smtpd", "3")
    assert target.readline() == "hook=0\n"
    session = daemon.session(target.pid)
    assert session["state"] == "attached"
    assert session["tracer"] == "perf"
    log_path = Path(session["log"])
    wait_until(lambda: MARKER_RE.search(log_path.read_text()), "the marker write in the log", 30)
    assert Path(f"/proc/{target.pid}").exists()  # it waits for its byte on stdin: still running
    target.release()
    assert target.wait() == 3
    ended = daemon.wait_session(target.pid, "exited")
    assert ended["exit_code"] == 3
    assert ended["lost_events"] == 0
    closing = f"tracerd: smtpd[{target.pid}] exited with status 3"
    # the log's writer thread may be a moment behind the session's state
    wait_until(lambda: log_path.read_text().rstrip().endswith(closing), "the closing line last in the log", 15)
    log = log_path.read_text()
    assert len(MARKER_RE.findall(log)) == 1, log[-2000:]
    assert "exit_group(error_code: 3)" in log
    table = daemon.ctl("status", check=True).stdout
    assert re.search(rf"^{target.pid}\s+smtpd\s+perf\s+exited\s+\S+\s+\d+\s+0\s+status 3", table, re.M), table


def test_lost_events_are_counted_on_the_session(tracefs: str, daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """perf with a one-page buffer (-m 1) cannot keep up with a getppid() loop: its
    "LOST n events!" lines are in the log, and their sum is the session's lost_events,
    in status (JSON, the table's LOST column and the perf_lost_events counter)."""
    daemon = daemon_factory('[[rule]]\nprocess = "busy"\ntracer = "perf"\nargs = ["-m", "1"]\n', attach_timeout=30)
    target = spawn(cbin("bench_syscalls"), daemon.hook_command(timeout=60), "busy", "300000")
    assert target.readline(timeout=300).startswith("hook=0 ")
    assert target.wait(timeout=60) == 0
    ended = daemon.wait_session(target.pid, "exited", timeout=60)
    log = Path(ended["log"]).read_text()
    lost = sum(int(n) for n in re.findall(r"^LOST (\d+) events!$", log, re.M))
    assert lost > 0, log[-2000:]
    assert ended["lost_events"] == lost
    status = daemon.status()
    assert status["counters"]["perf_lost_events"] == lost
    table = daemon.ctl("status", check=True).stdout
    assert re.search(rf"^{target.pid}\s+busy\s+perf\s+exited\s+\S+\s+\d+\s+{lost}\s", table, re.M), table


class UnsharedDaemon(Daemon):
    """tracerd in a mount namespace of its own, where tracefs is unmounted first."""

    def start(self, timeout: float = 15.0) -> None:
        notify_path = self.root / "notify.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        notify.settimeout(timeout)
        env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
        # and its old place under debugfs, should that be mounted too
        command = 'umount /sys/kernel/tracing && { umount /sys/kernel/debug/tracing 2>/dev/null; exec "$@"; }'
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", command, "sh",
                *script("tracerd"), "--config", str(self.config)]  # fmt: skip
        with open(self.stderr_path, "ab") as stderr:
            self.proc = subprocess.Popen(argv, stderr=stderr, env=env)
        try:
            assert notify.recv(1024) == b"READY=1"
        except TimeoutError:
            self.stop()
            raise AssertionError(f"tracerd never said READY=1: {self.stderr()}") from None
        finally:
            notify.close()


def test_refused_without_tracefs(tracefs: str, tmp_path: Path, syslog_receiver: Any, cbin: Any, spawn: Any) -> None:
    """With tracefs unmounted in tracerd's mount namespace (and only there), an
    attach with perf is refused with one line saying so and how to mount it; the
    process runs on untraced, and no perf was left running."""
    daemon = UnsharedDaemon(tmp_path, syslog_receiver.path)
    daemon.start()
    try:
        target = spawn(cbin("sleeper"))
        assert target.readline() == "ready\n"
        result = daemon.ctl("attach", str(target.pid), "--tracer", "perf")
        assert result.returncode != 0
        assert result.stderr.strip().endswith(
            "perf tracer: tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)"
        ), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        session = daemon.session(target.pid)
        assert session["state"] == "failed"
        assert "tracefs is not mounted" in session["error"]
        assert session["tracer_pid"] is None
        assert perfcheck.tracefs_mount() == TRACEFS  # our own namespace kept it
        assert target.proc.stdin is not None
        target.proc.stdin.close()  # the sleeper's signal to end, which it could not have had stopped
        assert target.wait() == 0
    finally:
        daemon.stop()


def test_refusal_names_perf_event_paranoid_without_cap_perfmon(tracefs: str) -> None:
    """Run with root's capabilities dropped (as a unit's CapabilityBoundingSet= does),
    the check opens the very event perf trace needs, is refused by the kernel, and
    says in one line that kernel.perf_event_paranoid and CAP_PERFMON are why."""
    if int(perfcheck.paranoid()) < 2:
        pytest.skip("kernel.perf_event_paranoid < 2 lets anyone open the event")
    code = (
        "import asyncio, os; from tracerd.tracers import perfcheck;"
        " print(asyncio.run(perfcheck.refusal(os.getpid())))"
    )
    result = subprocess.run(
        ["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=60, check=True, cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    assert result.stdout == (
        f"perf tracer: perf_event_open is not allowed: kernel.perf_event_paranoid is {perfcheck.paranoid()}"
        " and tracerd lacks CAP_PERFMON (sysctl kernel.perf_event_paranoid=1,"
        " or CAP_PERFMON in the unit's CapabilityBoundingSet=)\n"
    ), result.stderr
    # with its capabilities, the same check lets perf run
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          check=True, cwd=Path(__file__).resolve().parent.parent).stdout == "None\n"  # fmt: skip


SECCOMP_PROGRAM = """
import asyncio, ctypes, os, platform, struct, sys
from tracerd import arch
from tracerd.tracers import perfcheck
action = {"errno": 0x00050000 | 1, "kill": 0x80000000}[sys.argv[1]]  # SECCOMP_RET_ERRNO|EPERM, RET_KILL_PROCESS
nr = arch.of().perf_event_open
code = [(0x20, 0, 0, 0), (0x15, 0, 1, nr), (0x06, 0, 0, action), (0x06, 0, 0, 0x7FFF0000)]
filters = b"".join(struct.pack("HBBI", *insn) for insn in code)
buf = ctypes.create_string_buffer(filters)
prog = struct.pack("HxxxxxxQ", len(code), ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.c_char_p(prog), 0, 0) == 0, ctypes.get_errno()  # PR_SET_SECCOMP, FILTER
print(asyncio.run(perfcheck.refusal(os.getpid())))
"""


@pytest.mark.parametrize("action", ["errno", "kill"])
def test_refusal_names_a_seccomp_filter(tracefs: str, action: str) -> None:
    """Under a seccomp filter that refuses perf_event_open (EPERM, as systemd's
    SystemCallErrorNumber=EPERM) or kills its caller (SIGSYS, systemd's default), the
    check probes in a child, survives, and says in one line that the filter is why."""
    if arch.of() is None:
        pytest.skip(f"no perf_event_open number for {platform.machine()}")
    result = subprocess.run(
        [sys.executable, "-c", SECCOMP_PROGRAM, action], check=False, capture_output=True, text=True, timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "perf tracer: perf_event_open is refused by tracerd's seccomp filter"
        " (allow it in the unit's SystemCallFilter=, e.g. @debug)\n"
    ), result.stderr


def test_detach_stops_perf_and_the_process_runs_on(tracefs: str, daemon: Any, cbin: Any, spawn: Any) -> None:
    """tracerctl attach --tracer perf, then detach: perf is stopped (SIGINT) and gone,
    the session ends detached, and the process runs on and ends normally."""
    target = spawn(cbin("sleeper"))
    assert target.readline() == "ready\n"
    assert daemon.ctl("attach", str(target.pid), "--tracer", "perf").returncode == 0
    session = daemon.session(target.pid)
    assert session["state"] == "attached"
    perf_pid = session["tracer_pid"]
    assert Path(f"/proc/{perf_pid}/cmdline").read_bytes().split(b"\0")[:2] == [b"perf", b"trace"]
    log = Path(session["log"])
    wait_until(lambda: "write(fd: " in log.read_text(), "a tick traced", 30)  # every 50 ms
    result = daemon.ctl("detach", str(target.pid))
    assert result.returncode == 0, result.stderr
    assert daemon.wait_session(target.pid, "detached")["tracer_pid"] == perf_pid
    assert not Path(f"/proc/{perf_pid}").exists() or "Z" in Path(f"/proc/{perf_pid}/stat").read_text().split()[2]
    assert log.read_text().rstrip().endswith("detached (on request); it runs on untraced")
    assert target.proc.stdin is not None
    target.proc.stdin.close()
    assert target.wait() == 0


def test_recording_is_private_and_removed(tracefs: str, daemon: Any, cbin: Any, spawn: Any) -> None:
    """perf records into a 0700 directory of tracerd's under state_dir/perf (what
    an earlier tracerd left there is removed first), the files it closes are
    printed and deleted as they come, and the directory is gone once the session
    has ended."""
    stale = daemon.state_dir / "perf" / "perf-1-leftover"  # as a SIGKILLed tracerd would leave it
    stale.mkdir(parents=True, mode=0o700)
    (stale / "perf.data.2026010100000000").write_bytes(b"PERFILE2")
    target = spawn(cbin("sleeper"))
    assert target.readline() == "ready\n"
    assert daemon.ctl("attach", str(target.pid), "--tracer", "perf").returncode == 0
    assert not stale.exists()
    session = daemon.session(target.pid)
    cmdline = Path(f"/proc/{session['tracer_pid']}/cmdline").read_bytes().decode().split("\0")
    output = Path(cmdline[cmdline.index("-o") + 1])
    directory = output.parent
    assert directory.parent == daemon.state_dir / "perf"
    assert directory.stat().st_mode & 0o777 == 0o700
    log = Path(session["log"])
    wait_until(lambda: log.read_text().count("write(fd: 3") >= 30, "ticks of several seconds printed", 60)
    # printed files are deleted: at most the one being printed is left besides perf's own
    assert len([p for p in directory.iterdir() if p.name != output.name]) <= 1
    assert "[ perf record:" not in log.read_text()  # perf's chatter stays out of the log
    assert target.proc.stdin is not None
    target.proc.stdin.close()
    assert target.wait() == 0
    ended = daemon.wait_session(target.pid, "exited")
    assert ended["exit_code"] == 0
    assert not directory.exists()
    assert list((daemon.state_dir / "perf").iterdir()) == []


@pytest.mark.parametrize(
    "case",
    [
        ('"-e", "write"', "perf tracer: -e is not applied to recorded events by perf trace -i;"
         " trace every call, or use the strace tracer"),
        ('"--bogus"', "perf tracer: perf trace rejects the rule's args: Error: unknown option `bogus'"),
    ],
)  # fmt: skip
def test_rule_args_perf_cannot_apply_are_refused(
    tracefs: str, daemon_factory: Any, cbin: Any, spawn: Any, case: tuple[str, str]
) -> None:
    """A rule giving perf -e (which perf trace -i does not apply to recorded
    events) or an option perf rejects is refused at attach with one line saying
    so, not at every file; no perf ran and the process runs on."""
    args, line = case
    daemon = daemon_factory(f'[[rule]]\nprocess = "picky"\ntracer = "perf"\nargs = [{args}]\n')
    target = spawn(cbin("sleeper"))
    assert target.readline() == "ready\n"
    result = daemon.ctl("attach", str(target.pid), "--name", "picky")
    assert result.returncode != 0
    assert result.stderr.strip().endswith(line), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    session = daemon.session(target.pid)
    assert session["state"] == "failed"
    assert session["tracer_pid"] is None
    assert target.proc.stdin is not None
    target.proc.stdin.close()
    assert target.wait() == 0


def test_rule_args_apply_to_the_printed_lines(tracefs: str, daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """The rule's args reach perf trace -i: with --duration 20 only the sleeper's
    50 ms sleeps are printed, never its quick write() of each tick nor its
    exit_group(), whose status the session still reads from perf's last file."""
    daemon = daemon_factory('[[rule]]\nprocess = "slow"\ntracer = "perf"\nargs = ["--duration", "20"]\n')
    target = spawn(cbin("sleeper"))
    assert target.readline() == "ready\n"
    assert daemon.ctl("attach", str(target.pid), "--name", "slow").returncode == 0
    log = Path(daemon.session(target.pid)["log"])
    wait_until(lambda: log.read_text().count("clock_nanosleep(") >= 20, "sleeps printed", 60)
    assert target.proc.stdin is not None
    target.proc.stdin.close()
    assert target.wait() == 0
    assert daemon.wait_session(target.pid, "exited")["exit_code"] == 0  # its exit_group() is not printed, yet read
    text = log.read_text()
    assert "exit_group(" not in text
    assert "clock_nanosleep(" in text
    assert "write(fd: 3" not in text, text[-2000:]


def test_size_limit_fails_the_session_saying_so(tracefs: str, daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """Events past the recording's --max-size (here the rule's 200K, 64M by
    default) make perf stop: the session fails saying so, what perf recorded is
    printed, and the process (a long getppid() loop) runs on untraced."""
    daemon = daemon_factory('[[rule]]\nprocess = "busy"\ntracer = "perf"\nargs = ["--max-size", "200K"]\n',
                            attach_timeout=30)  # fmt: skip
    target = spawn(cbin("bench_syscalls"), daemon.hook_command(timeout=60), "busy", "2000000000")
    ended = daemon.wait_session(target.pid, "failed", timeout=60)
    assert ended["error"] == (
        "perf stopped recording: one file (1s of events) passed its --max-size (perf size limit reached)"
    ), ended
    log = Path(ended["log"]).read_text()
    assert "getppid()" in log
    assert "perf size limit reached" in log
    assert target.proc.poll() is None  # still in its loop
    target.proc.kill()
    target.wait()
