"""The human report (issue 22 item 7): real faults (tests/c/faults.c) under the watch and gdb
tracers of a real tracerd: the fault analysis, the facts coredumpctl and apport show (ppid, gid,
cwd, cgroup, host, package), unnamed frames as ``(module + 0xOFFSET)``, one thread numbering
for both tracers, and no environment in the report."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import have
from tests.support import Target
from tracerd.crash import facts, segv
from tracerd.crash.segv import Mapped

pytestmark = pytest.mark.skipif(not have("gdb"), reason="both tracers take their backtrace with gdb")

CANARY = "TRACERD_SECRET_CANARY_5f3a9"


class Faulting(Target):
    """A target started in ``cwd`` with ``env``; reaped by the test."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     bufsize=0, cwd=cwd, env=env)  # fmt: skip
        self.pid = self.proc.pid


def faults_bin(cbin: Any) -> Path:
    path: Path = cbin("faults", "-pthread")
    return path


def config(tracer: str) -> str:
    return f'[[rule]]\nprocess = "faultd*"\ntracer = "{tracer}"\n'


def crash(daemon: Any, exe: Path, mode: str, cwd: Path) -> tuple[int, dict[str, Any], str]:
    """One fault through the hook: the pid, the report's JSON and `tracerctl crash ID`'s text."""
    env = dict(os.environ, SECRET_TOKEN=CANARY)
    target = Faulting([str(exe), daemon.hook_command(), "faultd", mode], cwd, env)
    try:
        assert target.readline() == "hook=0\n", daemon.stderr()[-2000:]
        target.release()
        assert target.wait() == -signal.SIGSEGV
    finally:
        target.reap()
    session = daemon.wait_session(target.pid, "crashed")
    crash_id = str(session["crash"])
    assert crash_id, daemon.stderr()[-2000:]
    report = json.loads(daemon.ctl("--json", "crash", crash_id, check=True).stdout)["crash"]
    text = daemon.ctl("crash", crash_id, check=True).stdout
    return target.pid, report, text


def no_canary(report: dict[str, Any], text: str, daemon: Any) -> None:
    assert CANARY not in json.dumps(report)
    assert CANARY not in text
    for path in (daemon.state_dir / "crashes").rglob("*"):
        if path.is_file() and not path.name.endswith((".core", ".zst", ".gz", ".xz")):
            assert CANARY.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("tracer", ["watch", "gdb"])
def test_null_deref_analysis_and_the_facts(tracer: str, daemon_factory: Any, cbin: Any, tmp_path: Path) -> None:
    """NULL + 0x44; ppid, gid, cwd, cgroup, host facts, package and mtime in the JSON and the
    text; the environment (a canary in it) nowhere."""
    daemon = daemon_factory(config(tracer))
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    exe = faults_bin(cbin)
    _pid, report, text = crash(daemon, exe, "null44", workdir)
    assert report["signal"]["analysis"].startswith("NULL + 0x44"), report["signal"]
    process, host = report["process"], report["host"]
    assert process["ppid"] == os.getpid()
    assert process["gid"] == os.getgid()
    assert process["cwd"] == str(workdir)
    with open("/proc/self/cgroup") as own:
        assert process["cgroup"] == facts.cgroup_of(own.read())
    assert process["unit"] == facts.unit_of(process["cgroup"])
    assert process["package"] is None  # a test binary: no package owns it
    assert "package_version" in process
    assert process["exe_mtime"].endswith("Z")
    with open("/proc/sys/kernel/random/boot_id") as boot:
        assert host["boot_id"] == boot.read().strip()
    assert host["kernel"] == os.uname().release
    assert host["hostname"] == os.uname().nodename
    assert "fault    NULL + 0x44" in text
    assert f"ppid     {os.getpid()}  uid {os.getuid()}  gid {os.getgid()}  cwd {workdir}" in text
    assert f"boot id {host['boot_id']}" in text
    no_canary(report, text, daemon)


@pytest.mark.parametrize("tracer", ["watch", "gdb"])
def test_write_to_a_string_literal(tracer: str, daemon_factory: Any, cbin: Any, tmp_path: Path) -> None:
    daemon = daemon_factory(config(tracer))
    exe = faults_bin(cbin)
    _pid, report, text = crash(daemon, exe, "rodata", tmp_path)
    assert report["signal"]["analysis"] == f"write to a read-only mapping of {exe}", report["signal"]
    assert f"fault    write to a read-only mapping of {exe}" in text


@pytest.mark.parametrize("tracer", ["watch", "gdb"])
def test_call_through_a_bad_function_pointer(tracer: str, daemon_factory: Any, cbin: Any, tmp_path: Path) -> None:
    daemon = daemon_factory(config(tracer))
    _pid, report, _text = crash(daemon, faults_bin(cbin), "badfp", tmp_path)
    assert report["signal"]["analysis"] == "pc outside any mapping (pc 0x1230000)", report["signal"]


@pytest.mark.parametrize("tracer", ["watch", "gdb"])
def test_unnamed_frames_show_module_and_offset(tracer: str, daemon_factory: Any, cbin: Any, tmp_path: Path) -> None:
    """A stripped binary: its frames are ``(faults-stripped + 0x...)`` in `crash`, in the log's
    block, and in `crashes`' top frames."""
    stripped = tmp_path / "faults-stripped"
    shutil.copy(faults_bin(cbin), stripped)
    subprocess.run(["strip", str(stripped)], check=True)
    daemon = daemon_factory(config(tracer))
    _pid, report, text = crash(daemon, stripped, "null44", tmp_path)
    crashed = next(thread for thread in report["threads"] if thread["crashed"])
    unnamed = [frame for frame in crashed["frames"] if not frame["function"] and frame["object"] == str(stripped)]
    assert unnamed, crashed["frames"]
    assert all(frame["module_offset"] for frame in unnamed), crashed["frames"]
    label = f"(faults-stripped + {unnamed[0]['module_offset']})"
    assert f"?? () {label}" in text, text
    assert report["top"][0] == label
    listed = daemon.ctl("crashes", check=True).stdout
    assert label in listed


def thread_table(report: dict[str, Any]) -> list[tuple[int, str, bool]]:
    return [(thread["id"], thread["name"], thread["crashed"]) for thread in report["threads"]]


def test_both_tracers_number_and_name_threads_alike(daemon_factory: Any, cbin: Any, tmp_path: Path) -> None:
    """The same threaded crash under each tracer: threads 1..4, the main thread first, each
    named by its comm, worker-2 marked crashed, in the JSON and the text."""
    exe = faults_bin(cbin)
    tables, texts = [], []
    for tracer in ("watch", "gdb"):
        daemon = daemon_factory(config(tracer))
        _pid, report, text = crash(daemon, exe, "threads", tmp_path)
        tables.append(thread_table(report))
        texts.append(text)
        crashed = next(thread for thread in report["threads"] if thread["crashed"])
        assert f'Thread 3 (LWP {crashed["tid"]} "worker-2") [crashed]' in text, text
        daemon.stop()
    assert tables[0] == [(1, "faults", False), (2, "worker-1", False), (3, "worker-2", True), (4, "worker-3", False)]
    assert tables[0] == tables[1]


# -- the pure parts ---------------------------------------------------------------------------------


def maps(*rows: tuple[int, int, str, str]) -> list[Mapped]:
    return [Mapped(start, end, perms, path) for start, end, perms, path in rows]


SEGV = {"name": "SIGSEGV", "number": 11, "si_code": 1, "si_code_name": "SEGV_MAPERR", "user_sent": False}


@pytest.mark.parametrize(("insn", "kind"), [
    ("=> 0x401136 <f+4>:\tmov    0x44(%rax),%eax", "read"),
    ("=> 0x401136 <f+4>:\tmovb   $0x58,(%rax)", "write"),
    ("=> 0x401136:\tcmpl   $0x0,0x44(%rax)", "read"),
    ("=> 0x401136 <f+4>:\tret", None),
])  # fmt: skip
def test_access_kind(insn: str, kind: str | None) -> None:
    assert segv.access_kind(insn + "\n   0x401139:\tnop") == kind


def test_analysis_keeps_stack_overflow_and_names_non_executable_jumps() -> None:
    layout = maps((0x400000, 0x401000, "r-xp", "/usr/sbin/smtpd"), (0x600000, 0x601000, "rw-p", "[heap]"))
    assert segv.analyse(dict(SEGV, analysis="stack overflow"), {}, layout) == "stack overflow"
    assert segv.analyse(dict(SEGV, fault_address="0x600010"), {"rip": "0x600010"}, layout) == \
        "jump to non-executable memory (pc 0x600010 in [heap])"  # fmt: skip
    assert segv.analyse(dict(SEGV, fault_address="0x0"), {"rip": "0x400010"}, layout) == "NULL + 0x0"
    assert segv.analyse(dict(SEGV, fault_address="0x7000000"), {"rip": "0x400010"}, layout,
                        "=> 0x400010:\tmov    %eax,(%rdx)") == "write to unmapped address 0x7000000"  # fmt: skip
    sent = dict(SEGV, user_sent=True, sender_pid=1)
    assert segv.analyse(sent, {"rip": "0x0"}, layout) is None


def test_unit_of_a_cgroup() -> None:
    assert facts.unit_of("/system.slice/postfix@-.service") == "postfix@-.service"
    assert facts.unit_of("/user.slice/user-0.slice/session-3.scope") == "session-3.scope"
    assert facts.unit_of("/") is None
    assert facts.cgroup_of("12:cpu:/a\n1:name=systemd:/system.slice/x.service\n0::/b\n") == "/b"
    assert facts.cgroup_of("1:name=systemd:/system.slice/x.service\n2:cpu:/a\n") == "/system.slice/x.service"


def kernel_core_functions(exe: Path, workdir: Path) -> list[str] | None:
    """The crashing thread's function names by gdb on the kernel's core of the same fault; None
    when this machine's core_pattern gives no core file in the working directory."""
    with open("/proc/sys/kernel/core_pattern") as pattern:
        if pattern.read().strip() not in ("core", "core.%p"):
            return None

    def unlimited() -> None:
        import resource  # noqa: PLC0415

        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    done = subprocess.run([str(exe), "-", "faultd", "null44"], input=b"x", capture_output=True, cwd=workdir,
                          preexec_fn=unlimited, timeout=60, check=False)  # fmt: skip
    assert done.returncode == -signal.SIGSEGV
    cores = list(workdir.glob("core*"))
    if not cores:
        return None
    out = subprocess.run(["gdb", "-nx", "-batch", "-ex", "bt", str(exe), str(cores[0])], capture_output=True,
                         text=True, timeout=120, check=False).stdout  # fmt: skip
    lines = [line for line in out.splitlines() if line.startswith("#")]
    starts = [index for index, line in enumerate(lines) if line.startswith("#0 ")]
    lines = lines[starts[-1]:] if starts else lines  # gdb prints frame 0 once on loading the core
    return [line.split(" in ", 1)[1].split(" (")[0] if " in " in line else line.split()[1] for line in lines]


@pytest.mark.parametrize("tracer", ["watch", "gdb"])
def test_crashed_thread_matches_gdb_on_a_kernel_core(
    tracer: str, daemon_factory: Any, cbin: Any, tmp_path: Path
) -> None:
    exe = faults_bin(cbin)
    reference = kernel_core_functions(exe, tmp_path)
    if reference is None:
        pytest.skip("no kernel core file here (core_pattern)")
    daemon = daemon_factory(config(tracer))
    _pid, report, _text = crash(daemon, exe, "null44", tmp_path)
    crashed = next(thread for thread in report["threads"] if thread["crashed"])
    assert [frame["function"] for frame in crashed["frames"]][:3] == reference[:3], reference
    assert reference[:2] == ["read_null_field", "main"]
