"""Stack overflow (issue 22 item 4): recognised, unwound within bounds, collapsed and
counted, and the process dead of SIGSEGV within 3 s of the fault, under both
crash tracers.  The reference is gdb on a kernel core of the same program."""

from __future__ import annotations

import itertools
import json
import re
import resource
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import have
from tracerd.crash import overflow, segv
from tracerd.crash.report import CrashReport, Frame, Thread

pytestmark = pytest.mark.skipif(not have("gdb"), reason="gdb not installed")
DEATH_BOUND = 3.0  # the issue's own bound: dead of SIGSEGV within 3 s of the fault
_BT_LINE = re.compile(r"^#\d+\s+(?:0x[0-9a-f]+ in )?(\S+) \(", re.MULTILINE)


def overflow_bin(cbin: Any) -> Path:
    path: Path = cbin("overflow", "-pthread")
    return path


def kernel_core_names(exe: Path, mode: str, tmp_path: Path) -> list[str]:
    """The crashing thread's innermost 5 function names, by gdb on the kernel's core."""
    if Path("/proc/sys/kernel/core_pattern").read_text().strip() not in ("core", "core.%p"):
        pytest.skip("kernel core_pattern does not write cores to the cwd")
    where = tmp_path / f"kernel-{mode}"
    where.mkdir()

    def unlimited() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    run = subprocess.run([str(exe), "-", "overflowd", mode], input=b"x", cwd=where, preexec_fn=unlimited,
                         capture_output=True, timeout=60, check=False)  # fmt: skip
    assert run.returncode == -signal.SIGSEGV
    cores = list(where.glob("core*"))
    assert cores, "the kernel wrote no core"
    out = subprocess.run(["gdb", "-nx", "-batch", "-ex", "bt 5", str(exe), str(cores[0])],
                         capture_output=True, text=True, timeout=60, check=False).stdout  # fmt: skip
    names = _BT_LINE.findall(out[out.rfind("\n#0 ") :])  # after the frame gdb shows on loading the core
    assert len(names) == 5, out
    return names


@pytest.fixture(params=["gdb", "watch"])
def tracing(daemon_factory: Any, request: pytest.FixtureRequest) -> Any:
    return daemon_factory(f'crash_flood_window = 0\n[[rule]]\nprocess = "overflow*"\ntracer = "{request.param}"\n')


def crash_overflow(daemon: Any, cbin: Any, spawn: Any, mode: str) -> tuple[float, dict[str, Any], str]:
    """Run MODE traced: (seconds from the recursion's start to the process's death, the report, its text)."""
    target = spawn(overflow_bin(cbin), daemon.hook_command(), "overflowd", mode)
    assert target.readline() == "hook=0\n"
    assert daemon.session(target.pid)["state"] == "attached"
    target.release()
    start = float(target.readline().split("=", 1)[1])
    code = target.wait(timeout=180)
    dead = time.monotonic()
    assert code == -signal.SIGSEGV
    session = daemon.wait_session(target.pid, "crashed")
    assert session["crash"], session
    shown = daemon.ctl("--json", "crash", session["crash"])
    assert shown.returncode == 0, shown.stderr
    text = daemon.ctl("crash", session["crash"])
    assert text.returncode == 0, text.stderr
    return dead - start, json.loads(shown.stdout)["crash"], text.stdout


@pytest.mark.parametrize("mode", ["main", "thread"])
def test_stack_overflow_dies_within_3_s_and_names_its_recursion(tracing: Any, cbin: Any, spawn: Any, mode: str,
                                                                  tmp_path: Path) -> None:  # fmt: skip
    reference = kernel_core_names(overflow_bin(cbin), mode, tmp_path)
    held, report, text = crash_overflow(tracing, cbin, spawn, mode)
    assert held < DEATH_BOUND, f"the process died {held:.2f} s after the fault"
    assert report["signal"]["name"] == "SIGSEGV"
    assert report["signal"]["analysis"] == "stack overflow"
    info = report["stack_overflow"]
    assert info["cycle"] == ["recurse"]
    assert info["depth_source"] == "unwound"
    assert 3500 < info["depth"] < 4500, info  # 8 MiB of ~2 KiB frames
    assert info["cycle_count"] > info["depth"] - 10
    crashed = next(t for t in report["threads"] if t["crashed"])
    names = [frame["function"] for frame in crashed["frames"]]
    assert names[:5] == reference
    assert ("main" if mode == "main" else "thread_main") in names[-4:], names[-10:]
    assert len(crashed["frames"]) <= 40  # innermost 30 + outermost 10
    assert crashed["frames"][-1]["level"] >= info["depth"] - 3
    assert report["signature_basis"].startswith("overflow: overflowd SIGSEGV, stack overflow in the cycle recurse")
    assert "fault    stack overflow" in text
    assert f"recurse (x {info['cycle_count']})" in text
    assert not report["process"].get("capture_errors"), report["process"]["capture_errors"]
    log = Path(report["log"]).read_text()
    assert "stack overflow in thread" in log
    assert re.search(r"^#\d{4} 0x[0-9a-f]+ in ", log, re.MULTILINE), "a level of 4 digits, then a space"


def test_a_stack_too_deep_to_unwind_is_estimated_and_its_cycle_counted(tracing: Any, cbin: Any, spawn: Any,
                                                                       tmp_path: Path) -> None:  # fmt: skip
    """~260000 frames of a ping < pong recursion: past the unwinding limit, the depth is estimated."""
    reference = kernel_core_names(overflow_bin(cbin), "deep", tmp_path)
    held, report, text = crash_overflow(tracing, cbin, spawn, "deep")
    assert held < DEATH_BOUND, f"the process died {held:.2f} s after the fault"
    info = report["stack_overflow"]
    assert info["depth_source"] == "estimated"
    assert 200_000 < info["depth"] < 320_000, info
    assert sorted(info["cycle"]) == ["ping", "pong"]
    assert info["cycle_count"] > 100_000
    crashed = next(t for t in report["threads"] if t["crashed"])
    names = [frame["function"] for frame in crashed["frames"]][:5]
    # where in ping < pong the fault hits moves with ASLR: the same alternation as the kernel core's
    assert set(names) == set(reference) == {"ping", "pong"}
    assert all(a != b for a, b in itertools.pairwise(names)), names
    assert "cycle ping < pong" in report["signature_basis"]
    assert "more frames, not unwound" in Path(report["log"]).read_text()
    assert "fault    stack overflow" in text


# -- the pure parts -----------------------------------------------------------


def _frames(*names: str) -> list[Frame]:
    return [Frame(level, name, "x.c", 1, "/usr/sbin/prog", hex(0x1000 + level)) for level, name in enumerate(names)]


def _report(frames: list[Frame], cycle: list[str], start: int) -> CrashReport:
    return CrashReport(
        process={"name": "prog", "pid": 1}, signal={"name": "SIGSEGV", "number": 11, "si_code": 1},
        time="2026-12-05T00:00:00Z", threads=[Thread(1, 1, None, True, frames)], registers={}, disassembly="",
        libraries=[], log=None, tracer="gdb", stack_overflow={"cycle": cycle, "cycle_start": start},
    )  # fmt: skip


def test_the_signature_is_the_cycle_wherever_the_fault_hit() -> None:
    """A mutual recursion faulting in ping or in pong, after memset or not, is one bug; another cycle is not."""
    one = _report(_frames(*["ping", "pong"] * 15), ["ping", "pong"], 0)
    other = _report(_frames("memset", *["pong", "ping"] * 15), ["pong", "ping"], 1)
    third = _report(_frames(*["ping", "pang"] * 15), ["ping", "pang"], 0)
    assert one.signature == other.signature != third.signature
    assert one.signature_basis == "overflow: prog SIGSEGV, stack overflow in the cycle ping < pong"


def test_recognise_needs_the_fault_in_the_guard_next_to_sp() -> None:
    stack = segv.Mapped(0x7FFF_0000_0000, 0x7FFF_0080_0000, "rw-p", "[stack]")
    heap = segv.Mapped(0x5555_0000_0000, 0x5555_0010_0000, "rw-p", "[heap]")
    guard = segv.Mapped(0x7F00_0000_0000, 0x7F00_0000_1000, "---p", "")
    thread_stack = segv.Mapped(0x7F00_0000_1000, 0x7F00_0080_1000, "rw-p", "")
    maps = [heap, guard, thread_stack, stack]

    def at(fault: int, sp: int) -> dict[str, Any] | None:
        return overflow.recognise({"name": "SIGSEGV", "si_code": 1, "fault_address": hex(fault)},
                                  {"rsp": hex(sp)}, maps)  # fmt: skip

    assert at(stack.start - 8, stack.start - 16)  # main thread: just under [stack]
    assert at(guard.end - 8, guard.end - 16)  # a thread: in its guard page
    assert at(0x0, stack.start + 100) is None  # NULL dereference
    assert at(stack.start - 8, stack.start + 0x10000) is None  # far from sp
    assert at(heap.end + 8, heap.end) is None  # past the heap: not a stack
    assert at(stack.start + 8, stack.start) is None  # mapped: not exhaustion
