"""bench/syscount: what the syscount tracer costs a process, beside strace and perf, in one run.

The target (tests/c/bench_syscalls.c) makes ITERATIONS getppid() calls (the
cheapest system call: any per-call cost shows in full) and prints the time
its loop took (the hook is not timed).  Kinds, each against the untraced
baseline of the same run:

- untraced: the hook is skipped, no bpftrace loaded;
- syscount: ``pftrace-hook --tracer syscount`` through a private tracerd;
- untraced, syscount loaded: another process, while that tracerd's programs
  are loaded: what syscount costs every process of the machine;
- syscount+latency: the same with ``[syscount] latency = true`` (a tracerd
  of its own, alone loaded);
- floor: untraced, while an empty program (``r0 = 0; exit``) is attached at
  ``sys_exit``: what any system call probe costs, before it does any work;
- bpftrace one-liner: ``tracepoint:raw_syscalls:sys_enter /pid == PID/ {
  @[args->id] = count(); }`` attached while the target waits stopped
  (issue 25's reference: one probe, a pid compare, no map of pids);
- strace: ``pftrace-hook --tracer strace`` (tracerd's own strace path);
- strace -c: ``strace -c -o FILE`` running the target;
- perf trace -s: ``perf trace -s -o FILE`` running the target.

The slow tracers run --slow-iterations calls (their cost is per call: the
ratio is taken per call).  Then the attach latency through the hook: the
hook's wall time for a running process, the first (bpftrace's start) and
the next --attaches ones.  Each round starts its tracerds afresh (a tracerd
keeps its bpftrace), so that every kind pays for its own programs only.
Prints every figure, writes bench/results/syscount.json.

Usage: .venv/bin/python bench/syscount.py [--runs 5] [--iterations 2000000] [--slow-iterations 200000]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BIN, compile_c, private_tracerd, save, summary, wait_ended, wait_until

from tests.support import proc_state
from tracerd.tracers.syscount import rawcount

GOAL = 1.6  # syscount's loop time, at most this many times untraced (issue 25)
OUTPUT = re.compile(r"hook=(-?\d+) elapsed_us=(\d+)")
LATENCY = "[syscount]\nlatency = true\n"
HOOK = f"{BIN / 'pftrace-hook'} --socket {{}} --timeout 60 --tracer {{}}"
LOADED = "untraced, syscount loaded"  # another process, while syscount's programs are loaded
FLOOR = "floor: an empty program at sys_exit"  # what any system call probe costs, before any work
ONE_LINER = "bpftrace one-liner, pid filter"  # issue 25's reference: raw_syscalls:sys_enter /pid == PID/
FAST = ["syscount", LOADED, "syscount+latency", FLOOR, ONE_LINER]
SLOW = {"strace -c": ["strace", "-f", "-c", "-o", "{tmp}/strace.out"],
        "perf trace -s": ["perf", "trace", "-s", "-o", "{tmp}/perf.out"]}  # fmt: skip


def loop_ns(argv: list[str], iterations: int) -> float | None:
    """One target run, untraced or under a tracer that runs it: ns per getppid() call."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=3600, check=False)
    match = OUTPUT.search(done.stdout)
    if not match or match.group(1) != "0":
        print(f"  failed: {argv[0]} {done.stdout[-200:]!r} {done.stderr[-300:]!r}")
        return None
    return int(match.group(2)) * 1000.0 / iterations


def run(
    exe: Path, hook: tuple[str, Path] | None, iterations: int, prefix: list[str] | None = None, tmp: Path | None = None
) -> float | None:
    """ns per call of one target: untraced (no hook), through the hook (``(command, socket)``), or
    run by a tracer (``prefix``, its output file in ``tmp``)."""
    if hook is None:
        argv = [*(p.format(tmp=tmp) for p in prefix or [])]
        return loop_ns([*argv, str(exe), "-", "bench-untraced" if not prefix else "bench-slow", str(iterations)],
                       iterations)  # fmt: skip
    command, sock = hook
    proc = subprocess.Popen([str(exe), command, "bench-syscount", str(iterations)], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=3600)
    match = OUTPUT.search(out)
    if not match or match.group(1) != "0":
        return None  # the hook failed: no session to wait for
    wait_ended(sock, proc.pid, timeout=600)
    return int(match.group(2)) * 1000.0 / iterations


def floor_ns(exe: Path, iterations: int) -> float | None:
    """An untraced run while an empty program (``r0 = 0; exit``) is attached at ``sys_exit``."""
    asm = rawcount.Asm()
    asm.movi(rawcount.R0, 0)
    asm.op(0x95)
    prog = rawcount.load(asm.bytes())
    try:
        link = rawcount.link(prog)
        try:
            return run(exe, None, iterations)
        finally:
            os.close(link)
    finally:
        os.close(prog)


def one_liner_ns(exe: Path, iterations: int) -> float | None:
    """bpftrace counting the target's calls by number, attached while the target waits stopped."""
    argv = ["sh", "-c", 'kill -STOP $$; exec "$0" "$@"', str(exe), "-", "bench-one-liner", str(iterations)]
    target = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    wait_until(lambda: proc_state(target.pid) == "T", "the target stopped", timeout=10)
    script = (f"tracepoint:raw_syscalls:sys_enter /pid == {target.pid}/ {{ @[args->id] = count(); }}"
              ' BEGIN { printf("ready\\n"); }')  # fmt: skip
    tracer = subprocess.Popen(["bpftrace", "-e", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert tracer.stdout is not None
        said = [tracer.stdout.readline()]
        while said[-1] and "ready" not in said[-1]:
            said.append(tracer.stdout.readline())
        assert "ready" in said[-1], said
        os.kill(target.pid, signal.SIGCONT)
        out, _ = target.communicate(timeout=3600)
    finally:
        if target.poll() is None:
            target.kill()
            target.wait()
        tracer.send_signal(signal.SIGINT)
        tracer.communicate(timeout=60)
    match = OUTPUT.search(out)
    return int(match.group(2)) * 1000.0 / iterations if match and match.group(1) == "0" else None


def note(times: dict[str, list[float]], kind: str, value: float | None) -> None:
    if value is not None:
        times.setdefault(kind, []).append(value)


def attach_latency(timed: Path, hook: str, sock: Path, count: int) -> list[float]:
    """system(hook)'s time in ms as the process sees it (tests/c/timed_hook.c), ``count`` processes."""
    times = []
    for _ in range(count):
        proc = subprocess.Popen([str(timed), hook, "bench-attach"], stdout=subprocess.PIPE, text=True)
        out, _ = proc.communicate(timeout=120)
        found = re.search(r"elapsed_us=(\d+) status=0", out)
        if found:
            wait_ended(sock, proc.pid, timeout=600)
            times.append(int(found.group(1)) / 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=2_000_000)
    parser.add_argument("--slow-iterations", type=int, default=200_000)
    parser.add_argument("--attaches", type=int, default=20)
    args = parser.parse_args()
    slow = ["strace", "strace -c"] + (["perf trace -s"] if shutil.which("perf") else [])
    times: dict[str, list[float]] = {kind: [] for kind in ["untraced", *FAST, *slow]}
    first: list[float] = []
    warm: list[float] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        exe = compile_c("bench_syscalls", tmp)
        timed = compile_c("timed_hook", tmp)
        for round_ in range(args.runs):  # each kind with only its own bpftrace loaded, if any
            note(times, "untraced", run(exe, None, args.iterations))
            note(times, FLOOR, floor_ns(exe, args.iterations))
            note(times, ONE_LINER, one_liner_ns(exe, args.iterations))
            with private_tracerd() as (sock, _):
                hook = HOOK.format(sock, "syscount")
                if round_ == 0:
                    first = attach_latency(timed, hook, sock, 1)  # bpftrace's start
                else:
                    attach_latency(timed, hook, sock, 1)
                pair = [("syscount", hook), (LOADED, None)]
                for kind, kind_hook in pair if round_ % 2 == 0 else pair[::-1]:
                    note(times, kind, run(exe, (kind_hook, sock) if kind_hook else None, args.iterations))
                if round_ == args.runs - 1:
                    warm = attach_latency(timed, hook, sock, args.attaches)
            with private_tracerd(LATENCY) as (sock, _):
                hook = HOOK.format(sock, "syscount")
                attach_latency(timed, hook, sock, 1)  # its bpftrace's start, not timed in the loop
                note(times, "syscount+latency", run(exe, (hook, sock), args.iterations))
        with private_tracerd() as (sock, _):  # no bpftrace: no syscount session in this one
            for kind in slow:
                hook_of = (HOOK.format(sock, "strace"), sock) if kind == "strace" else None
                note(times, kind, run(exe, hook_of, args.slow_iterations, SLOW.get(kind), tmp))
                note(times, "untraced (slow count)", run(exe, None, args.slow_iterations))
    medians = {kind: statistics.median(values) for kind, values in times.items() if values}
    untraced = medians["untraced"]
    print(f"getppid() loop: {args.iterations} calls ({args.slow_iterations} for strace and perf), median of"
          f" {args.runs} runs (slow ones: 1)\n")  # fmt: skip
    print(f"{'kind':38} {'ns/call':>9} {'x untraced':>11}")
    ratios = {}
    for kind, value in medians.items():
        ratios[kind] = value / untraced
        goal = f"   (goal <= {GOAL})" if kind == "syscount" else ""
        print(f"{kind:38} {value:9.1f} {ratios[kind]:11.2f}{goal}")
    print(f"\nattach through the hook: first (bpftrace starts) {first[0]:.0f} ms; next {args.attaches}: "
          f"median {statistics.median(warm):.1f} ms, max {max(warm):.1f} ms")  # fmt: skip
    result: dict[str, Any] = {"iterations": args.iterations, "slow_iterations": args.slow_iterations,
                              "ns_per_call": times, "medians": medians, "ratios": ratios,
                              "attach_ms": {"first": first[0], "warm": summary(warm)}}  # fmt: skip
    print(f"saved {save('syscount', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
