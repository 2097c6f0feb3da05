"""Odd targets and a hostile state (issue 23, item 8): other pid namespaces, kernel threads,
zombies and odd pids, a planted sessions.json, symlinks in the log, state and capture
directories, a read-only state_dir, a setuid exec after attach, seccomp-filtered and
PTRACE_TRACEME targets.

Each test checks what the issue asks of every case: a refusal is one line (no traceback)
and tracerd stays up and answers; no thread of any target is left in a (tracing) stop or
held by a tracer once its session ended; targets exit on their own; nothing is lost (a
crash is still reported); nothing is written through a planted symlink.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import have
from tests.support import Daemon, Target, proc_state, reap, task_states, tracer_pid, wait_until

pytestmark = pytest.mark.skipif(not (have("gdb") and have("strace")), reason="gdb and strace needed")

# the name chooses the tracer: st-* strace, gd-* gdb, anything else the default, watch
RULES = (
    '[[rule]]\nprocess = "st-*"\ntracer = "strace"\n'
    '[[rule]]\nprocess = "gd-*"\ntracer = "gdb"\n'
    '[[rule]]\nprocess = "*"\ntracer = "watch"\n'
)
TRACER_PREFIX = {"watch": "", "strace": "st-", "gdb": "gd-"}
PF_KTHREAD = 0x00200000
NOBODY = 65534


@pytest.fixture
def odd_daemon(daemon_factory: Any) -> Daemon:
    daemon: Daemon = daemon_factory(RULES)
    return daemon


def assert_one_line(message: str) -> None:
    text = message.strip()
    assert text, message
    assert "\n" not in text, message
    assert "Traceback" not in text, message


def assert_daemon_fine(daemon: Daemon) -> None:
    """tracerd alive, answering, no traceback in its log."""
    assert daemon.alive(), daemon.stderr()[-2000:]
    assert daemon.status()["daemon"]["pid"] == daemon.proc.pid  # type: ignore[union-attr]
    assert "Traceback" not in daemon.stderr(), daemon.stderr()[-3000:]


def tasks_stopped(pid: int) -> list[str]:
    """Threads of ``pid`` in a stop ('t' or 'T') or held by a tracer: [] when none (or gone)."""
    return [f"{tid}: state {state}, TracerPid {tracer}"
            for tid, state, tracer in task_states(pid) if state in "tT" or tracer]  # fmt: skip


def assert_fatal_line(daemon: Daemon, words: str) -> None:
    """tracerd refused to start with one reason: its one fatal event (and the same line on stderr)."""
    text = daemon.stderr()
    assert "Traceback" not in text, text
    fatal = [line for line in text.splitlines() if '"event": "fatal"' in line]
    assert len(fatal) == 1, text
    assert words in fatal[0], text


def assert_free(*pids: int) -> None:
    """No thread of these processes is stopped or traced (once their sessions ended)."""

    def free() -> bool:
        return not any(tasks_stopped(pid) for pid in pids)

    wait_until(free, f"every thread of {pids} running untraced", 15)


def wait_reported(daemon: Daemon, pid: int) -> dict[str, Any]:
    session = daemon.wait_session(pid, "crashed", 30)
    assert session["signal"] == "SIGSEGV", session
    assert session["crash"], session
    crash = daemon.ctl("--json", "crash", session["crash"])
    assert crash.returncode == 0, crash.stderr
    report: dict[str, Any] = json.loads(crash.stdout)["crash"]
    return report


def attach(daemon: Daemon, pid: int, tracer: str = "watch", name: str = "odd") -> subprocess.CompletedProcess[str]:
    return daemon.ctl("attach", str(pid), "--name", name, "--tracer", tracer)


def raw(daemon: Daemon, op: str, pid: Any) -> dict[str, Any]:
    return daemon.request(json.dumps({"op": op, "pid": pid, "name": "odd"}).encode() + b"\n")


# -- other pid namespaces ------------------------------------------------------------


def unshared(*argv: str) -> Target:
    return Target(["unshare", "--pid", "--fork", "--mount-proc", *argv])


def inner_child(target: Target) -> int:
    """The host pid of what unshare --fork started (the namespace's pid 1)."""
    children = wait_until(lambda: psutil.Process(target.pid).children(), "unshare's child", 10)
    return int(children[0].pid)


@pytest.mark.skipif(not have("unshare"), reason="unshare not installed")
def test_target_in_another_pid_namespace_attached_by_host_pid(odd_daemon: Daemon, cbin: Any) -> None:
    """tracerctl attach HOSTPID of a namespace's init: watched, its crash reported, it dies of it."""
    target = unshared(str(cbin("crash", "-pthread")), "-", "nsd", "segv")
    try:
        pid = inner_child(target)
        wait_until(lambda: proc_state(pid) == "S", "the target waiting", 10)
        result = attach(odd_daemon, pid)
        assert result.returncode == 0, result.stderr
        target.release()
        report = wait_reported(odd_daemon, pid)
        assert report["process"]["pid"] == pid
        assert target.wait() != 0  # unshare passes its child's death on
    finally:
        target.reap()
    assert_daemon_fine(odd_daemon)


@pytest.mark.skipif(not have("unshare"), reason="unshare not installed")
def test_hook_inside_a_pid_namespace_traces_its_caller(odd_daemon: Daemon, cbin: Any) -> None:
    """The hook passes the namespace's pid of its caller; tracerd maps it back through the
    caller's ancestors (the pid it names in our namespace is another process, kthreadd)."""
    hook = odd_daemon.hook_command()
    target = unshared("sh", "-c", f"{cbin('crash', '-pthread')} '{hook}' nsd segv; echo status=$?")
    try:
        assert target.readline() == "hook=0\n"
        pid = next(p.pid for p in psutil.Process(inner_child(target)).children() if p.name() == "crash")
        assert odd_daemon.session(pid)["state"] == "attached"
        nspid = Path(f"/proc/{pid}/status").read_text().split("NSpid:")[1].splitlines()[0].split()
        assert nspid == [str(pid), "2"]
        target.release()
        wait_reported(odd_daemon, pid)
        assert target.readline() == "status=139\n"
        assert target.wait() == 0
    finally:
        target.reap()
    assert_daemon_fine(odd_daemon)


@pytest.mark.skipif(not have("unshare"), reason="unshare not installed")
def test_hook_inside_a_pid_namespace_naming_a_stranger_is_refused(odd_daemon: Daemon) -> None:
    """A hook in a namespace naming a pid there that is none of its caller's ancestors (a
    sibling): one line, nothing traced (not the process with that pid in our namespace)."""
    hook = odd_daemon.hook_command()
    target = unshared("sh", "-c", f"sleep 60 & {hook} nsd $! ; echo status=$?; kill $!")
    try:
        assert target.readline() == "status=1\n"  # not traced; the caller goes on
        assert target.wait() == 0
        assert target.proc.stderr is not None
        err = target.proc.stderr.read().decode()
        assert "not traced: pid 2 of the caller's pid namespace is not an ancestor" in err, err
        assert_one_line(err)
    finally:
        target.reap()
    assert odd_daemon.status()["counters"]["sessions_started"] == 0
    assert_daemon_fine(odd_daemon)


# -- kernel threads, zombies, odd pids -----------------------------------------------


def kernel_thread() -> int | None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[6]) & PF_KTHREAD:
                    return int(entry)
    return None


@pytest.fixture
def zombie() -> Iterator[int]:
    proc = subprocess.Popen(["true"])
    wait_until(lambda: proc_state(proc.pid) == "Z", "a zombie", 10)
    yield proc.pid
    reap(proc)


@pytest.fixture
def thread_of_a_process() -> Iterator[tuple[int, int]]:
    """(tid of a second thread, its process's pid)."""
    code = (
        "import sys, threading; threading.Thread(target=lambda: ("
        "print(threading.get_native_id(), flush=True), sys.stdin.read())).start()"
    )
    proc = subprocess.Popen(["python3", "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    tid = int(proc.stdout.readline())
    yield tid, proc.pid
    reap(proc)


@pytest.mark.parametrize("op", ["attach", "hook"])
def test_odd_pids_in_raw_requests_are_refused_in_one_line(
    odd_daemon: Daemon, op: str, zombie: int, thread_of_a_process: tuple[int, int]
) -> None:
    """pid 0, a pid over the kernel's limit, one that cannot exist, a kernel thread, a
    zombie, a thread that is not its process's leader: each a one-line refusal before any
    tracer runs; no session is opened; the zombie and the thread's process are untouched."""
    tid, owner = thread_of_a_process
    cases: list[tuple[Any, str, str]] = [
        (0, "bad_request", "bad pid 0"),
        (4_194_305, "bad_request", "bad pid 4194305"),
        (4_194_304, "no_such_process", "no such process 4194304"),  # pid_max is at most 2**22: never a pid
        (-1, "bad_request", "bad pid -1"),
        (zombie, "no_such_process", f"process {zombie} has exited (a zombie"),
        (tid, "denied", f"pid {tid} is a thread of process {owner}; trace the process"),
    ]
    kthread = kernel_thread()
    if kthread is not None:
        cases.append((kthread, "denied", f"pid {kthread} is a kernel thread"))
    for pid, code, words in cases:
        reply = raw(odd_daemon, op, pid)
        assert reply.get("ok") is False, (pid, reply)
        assert reply["error"] == code, (pid, reply)
        assert words in reply["message"], (pid, reply)
        assert_one_line(reply["message"])
    counters = odd_daemon.status()["counters"]
    assert counters["sessions_started"] == counters["sessions_failed"] == 0, counters
    assert proc_state(zombie) == "Z"
    assert_free(owner)
    assert_daemon_fine(odd_daemon)


# -- a hostile sessions.json -----------------------------------------------------------


@pytest.mark.parametrize("hostile", ["symlink", "another user's", "world-writable"])
def test_hostile_sessions_json_is_not_read(daemon_factory: Any, cbin: Any, tmp_path: Path, hostile: str) -> None:
    """A sessions.json that is a symlink, another user's file or writable by others is
    refused with one log line; tracerd starts anyway and traces nothing from it."""
    daemon: Daemon = daemon_factory(RULES, start=False)
    target = Target([str(cbin("crash", "-pthread")), "-", "listed", "wait"])
    try:
        wait_until(lambda: proc_state(target.pid) == "S", "the target waiting", 10)
        start = int(Path(f"/proc/{target.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        entry = {"pid": target.pid, "start": start, "name": "listed", "tracer": "watch", "args": [],
                 "log": str(daemon.log_dir / f"listed.{target.pid}.log"),
                 "started": "2026-01-01T00:00:00.000Z"}  # fmt: skip
        data = json.dumps({"version": 1, "sessions": [entry]})
        daemon.state_dir.mkdir(mode=0o750, parents=True)
        path = daemon.state_dir / "sessions.json"
        if hostile == "symlink":
            (tmp_path / "planted.json").write_text(data)
            path.symlink_to(tmp_path / "planted.json")
        else:
            path.write_text(data)
            path.chmod(0o600 if hostile == "another user's" else 0o666)
            if hostile == "another user's":
                os.chown(path, NOBODY, NOBODY)
        daemon.start()
        line = wait_until(lambda: [x for x in daemon.stderr().splitlines() if "sessions_file_ignored" in x],
                          "sessions_file_ignored logged", 15)  # fmt: skip
        assert len(line) == 1, line
        assert "sessions.json" in line[0], line
        assert_daemon_fine(daemon)
        assert tracer_pid(target.pid) == 0
        assert daemon.status()["counters"]["readopted"] == 0
        assert target.proc.stdin is not None
        target.proc.stdin.close()
        assert target.wait() == 0  # "wait" mode: exits 0 at the end of its stdin
    finally:
        target.reap()


# -- symlinks planted in the log, state and capture directories --------------------


def canary(tmp_path: Path) -> Path:
    path = tmp_path / "canary"
    path.write_text("precious\n")
    return path


def test_symlink_at_a_watch_log_path_is_refused(odd_daemon: Daemon, cbin: Any, tmp_path: Path) -> None:
    """{log_dir}/NAME.PID.log planted as a symlink: the hook's attach is refused in one line,
    the canary is untouched, the process runs on untraced and exits."""
    bird = canary(tmp_path)
    target = Target([str(cbin("sleeper"))])
    try:
        assert target.readline() == "ready\n"
        odd_daemon.log_dir.mkdir(exist_ok=True)
        (odd_daemon.log_dir / f"odd.{target.pid}.log").symlink_to(bird)
        result = attach(odd_daemon, target.pid)
        assert result.returncode == 1, result.stdout
        assert "symlink" in result.stderr, result.stderr
        assert_one_line(result.stderr)
        assert_free(target.pid)
        assert bird.read_text() == "precious\n"
        assert target.proc.stdin is not None
        target.proc.stdin.close()
        assert target.wait() == 0
    finally:
        target.reap()
    assert_daemon_fine(odd_daemon)


def test_symlink_for_the_capture_dir_is_refused_and_a_crash_still_reported(
    daemon_factory: Any, cbin: Any, tmp_path: Path
) -> None:
    """{state_dir}/capture a symlink to elsewhere: one capture_dir_unusable line, nothing
    written there, and a crash is still captured and reported."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    daemon: Daemon = daemon_factory(RULES, start=False)
    daemon.state_dir.mkdir(mode=0o750, parents=True)
    (daemon.state_dir / "capture").symlink_to(elsewhere)
    daemon.start()
    assert daemon.stderr().count("capture_dir_unusable") == 1
    target = Target([str(cbin("crash", "-pthread")), daemon.hook_command(), "capd", "segv"])
    try:
        assert target.readline() == "hook=0\n"
        target.release()
        wait_reported(daemon, target.pid)
        assert target.wait() == -11
    finally:
        target.reap()
    assert os.listdir(elsewhere) == []
    assert_daemon_fine(daemon)


def test_symlink_at_the_capture_core_path_is_not_followed(odd_daemon: Daemon, cbin: Any, tmp_path: Path) -> None:
    """Symlinks planted at every name a capture writes in {state_dir}/capture (the marker
    PID.START.json, the core PID.START.core and its .part): the canary is untouched and the
    crash is still reported."""
    bird = canary(tmp_path)
    target = Target([str(cbin("crash", "-pthread")), odd_daemon.hook_command(), "cored", "segv"])
    try:
        assert target.readline() == "hook=0\n"
        start = Path(f"/proc/{target.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        capture = odd_daemon.state_dir / "capture"
        for suffix in ("json", "core", "core.part"):
            (capture / f"{target.pid}.{start}.{suffix}").symlink_to(bird)
        target.release()
        wait_reported(odd_daemon, target.pid)
        assert target.wait() == -11
    finally:
        target.reap()
    assert bird.read_text() == "precious\n"
    assert_daemon_fine(odd_daemon)


def test_symlink_at_sessions_json_is_replaced_not_followed(odd_daemon: Daemon, cbin: Any, tmp_path: Path) -> None:
    """sessions.json swapped for a symlink while tracerd runs: the next write replaces the
    link (the canary it pointed to is untouched)."""
    bird = canary(tmp_path)
    path = odd_daemon.state_dir / "sessions.json"
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    path.symlink_to(bird)
    target = Target([str(cbin("crash", "-pthread")), odd_daemon.hook_command(), "filed", "wait"])
    try:
        assert target.readline() == "hook=0\n"
        wait_until(lambda: not path.is_symlink() and path.exists(), "sessions.json rewritten", 10)
        assert bird.read_text() == "precious\n"
        assert json.loads(path.read_text())["sessions"][0]["pid"] == target.pid
        assert target.proc.stdin is not None
        target.proc.stdin.close()
        assert target.wait() == 0
    finally:
        target.reap()
    assert_daemon_fine(odd_daemon)


def test_symlink_for_the_crash_store_is_refused_in_one_line(daemon_factory: Any, tmp_path: Path) -> None:
    """{state_dir}/crashes a symlink: tracerd refuses to start, in one line, writing nothing there."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    daemon: Daemon = daemon_factory(RULES, start=False)
    daemon.state_dir.mkdir(mode=0o750, parents=True)
    (daemon.state_dir / "crashes").symlink_to(elsewhere)
    with pytest.raises(AssertionError, match="READY"):
        daemon.start(timeout=15)
    assert daemon.proc is not None
    assert daemon.proc.wait(15) != 0
    assert_fatal_line(daemon, "a symlink is refused")
    assert os.listdir(elsewhere) == []


# -- a read-only state_dir -----------------------------------------------------------


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    subprocess.run(["mount", "--bind", str(directory), str(directory)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


@pytest.mark.parametrize("used", [False, True])
def test_read_only_state_dir(daemon_factory: Any, cbin: Any, used: bool) -> None:
    """A state_dir on a read-only mount.  Empty (first start): tracerd refuses in one line
    (it cannot create its crash store) and a hook fails open at once.  Used before (its
    directories exist): tracerd starts, traces, and a crash it cannot store is still seen
    (the session ends crashed, crash_store_failed logged); the process dies of its signal."""
    daemon: Daemon = daemon_factory(RULES, start=False)
    daemon.state_dir.mkdir(mode=0o750, parents=True)
    if used:
        daemon.start()
        assert daemon.stop() == 0
        daemon.stderr_path.write_bytes(b"")
    with read_only(daemon.state_dir):
        if used:
            daemon.start()
            assert_daemon_fine(daemon)
        else:
            with pytest.raises(AssertionError, match="READY"):
                daemon.start()
            assert daemon.proc is not None
            assert daemon.proc.wait(15) != 0
            assert_fatal_line(daemon, "Read-only file system")
        target = Target([str(cbin("crash", "-pthread")), daemon.hook_command(timeout=5), "rostate", "segv"])
        try:
            # traced; or, with no tracerd, the hook fails open at once (exit 1: "nobody listens")
            assert target.readline() == ("hook=0\n" if used else "hook=1\n")
            target.release()
            assert target.wait() == -11
            if used:
                assert daemon.wait_session(target.pid, "crashed", 30)["signal"] == "SIGSEGV"
                wait_until(lambda: "crash_store_failed" in daemon.stderr(), "crash_store_failed logged", 15)
        finally:
            target.reap()
        if used:
            assert_daemon_fine(daemon)
            assert daemon.stop() == 0


# -- a setuid exec after attach -------------------------------------------------------


@pytest.mark.parametrize("tracer", ["watch", "strace"])
def test_setuid_exec_after_attach(odd_daemon: Daemon, cbin: Any, public_dir: Path, tracer: str) -> None:
    """A process of nobody's, attached, execs a setuid-root copy of id: it runs (as root:
    tracerd's tracers are root, so the kernel keeps the set-uid bit), is never left
    stopped, and its session ends exited 0."""
    helper = public_dir / "exec_later"
    shutil.copy(cbin("exec_later"), helper)
    setuid_id = public_dir / "id"
    shutil.copy(shutil.which("id") or "/usr/bin/id", setuid_id)
    setuid_id.chmod(0o4755)
    proc = subprocess.Popen([str(helper), str(setuid_id)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            user=NOBODY, group=NOBODY, extra_groups=[], cwd="/")  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdin is not None
        assert proc.stdout.readline() == b"ready\n"
        result = attach(odd_daemon, proc.pid, tracer, name="suid")
        assert result.returncode == 0, result.stderr
        proc.stdin.write(b"x")
        proc.stdin.flush()
        out = proc.stdout.readline().decode()
        assert "uid=65534" in out, out
        assert "euid=0(root)" in out, out
        assert proc.wait(30) == 0
        session = odd_daemon.wait_session(proc.pid, "exited")
        assert session["exit_code"] == 0, session
    finally:
        reap(proc)
    assert_daemon_fine(odd_daemon)


# -- seccomp-filtered and PTRACE_TRACEME targets ---------------------------------------


@pytest.mark.parametrize("tracer", ["watch", "strace", "gdb"])
def test_seccomp_filtered_target(odd_daemon: Daemon, cbin: Any, tracer: str) -> None:
    """A target under a seccomp filter (EPERM for getpriority) hooks in, is traced, and its
    crash is reported; it dies of its SIGSEGV."""
    name = TRACER_PREFIX[tracer] + "seccompd"
    target = Target([str(cbin("seccomp_target")), odd_daemon.hook_command(), name, "segv"])
    try:
        assert target.readline() == "blocked=1\n"  # EPERM: the filter is in force
        assert target.readline() == "hook=0\n"
        session = odd_daemon.session(target.pid)
        assert session["tracer"] == tracer, session
        assert session["state"] == "attached", session
        target.release()
        assert target.wait() == -11
        wait_reported(odd_daemon, target.pid)
    finally:
        target.reap()
    assert_daemon_fine(odd_daemon)


@pytest.mark.parametrize("tracer", ["watch", "strace", "gdb"])
def test_ptrace_traceme_target(odd_daemon: Daemon, cbin: Any, tracer: str) -> None:
    """A child its parent traces (PTRACE_TRACEME): attaching it is refused in one line and
    leaves it running under its parent; the parent (a tracer itself) can be traced; both
    exit on their own, the parent's session exited 0."""
    target = Target([str(cbin("traceme_target"))])
    try:
        child = int(target.readline().split("=")[1])
        wait_until(lambda: proc_state(child) == "S", "the child waiting", 10)
        result = attach(odd_daemon, child, tracer)
        assert result.returncode == 1, result.stdout
        assert f"process {child} is already traced by pid {target.pid}" in result.stderr, result.stderr
        assert_one_line(result.stderr)
        assert proc_state(child) == "S"
        assert tracer_pid(child) == target.pid  # still its parent's, nobody else's
        assert_free(target.pid)
        result = attach(odd_daemon, target.pid, tracer)
        assert result.returncode == 0, result.stderr
        target.release()
        assert target.wait() == 0
        assert odd_daemon.wait_session(target.pid, "exited")["exit_code"] == 0
        wait_until(lambda: proc_state(child) == "", "the child gone", 10)
    finally:
        target.reap()
    assert odd_daemon.status()["counters"]["sessions_failed"] == 0
    assert_daemon_fine(odd_daemon)
