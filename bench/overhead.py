"""bench/overhead: what watching costs a running process, against the same process untraced.

The target (tests/c/bench_syscalls.c) runs the hook through system() as
Postfix does, then makes ITERATIONS getppid() system calls (2 million by
default: the cheapest system call, so any per-call cost of tracing shows in
full) and prints the time the loop took (the hook is not timed).

- untraced (the baseline, same run): the hook is skipped;
- watched: ``pftrace-hook`` with the watch tracer (PTRACE_SEIZE, no syscall
  stops: the process should run at full speed);
- strace, for context: ``pftrace-hook`` with the strace tracer, which stops
  at every system call and writes a line for each to the per-process log.

Untraced and watched alternate, --runs each (default 5); strace runs
--strace-runs times (default 3; it is slow), interleaved with them, same
iteration count.  Prints every time, the medians and the ratio
untraced/watched (goal >= 0.98), and writes bench/results/overhead.json.

Usage: .venv/bin/python bench/overhead.py [--runs 5] [--strace-runs 3] [--iterations 2000000]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BIN, compile_c, private_tracerd, request, save, stderr_events, wait_until

GOAL_RATIO = 0.98
KINDS = ("untraced", "watched", "strace")
EXTRA_CONFIG = """[[rule]]
process = "syscalls-watched"
tracer = "watch"

[[rule]]
process = "syscalls-strace"
tracer = "strace"
"""
OUTPUT = re.compile(r"hook=(-?\d+) elapsed_us=(\d+)")


def cpu(daemon: psutil.Process) -> tuple[float, float]:
    """(tracerd's own CPU seconds, its reaped children's: strace, gdb) so far."""
    times = daemon.cpu_times()
    return times.user + times.system, times.children_user + times.children_system


def run_once(exe: Path, kind: str, hook: str, iterations: int, sock: Path) -> dict[str, Any]:
    """One target, start to end; then waits for its session (if any) to end."""
    daemon = psutil.Process(int(request(sock, "status")["daemon"]["pid"]))
    cpu_before = cpu(daemon)
    argv = [str(exe), "-" if kind == "untraced" else hook, f"syscalls-{kind}", str(iterations)]
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=1800)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    result: dict[str, Any] = {"kind": kind, "pid": proc.pid, "status": proc.returncode}
    result["wall_s"] = time.monotonic() - start
    match = OUTPUT.search(out)
    if not match:
        result["error"] = f"no output: {out!r} {err[-300:]!r}"
        return result
    result["hook"] = int(match.group(1))
    result["loop_ms"] = int(match.group(2)) / 1000.0
    if kind != "untraced":
        # the next run starts only once tracerd is done with this one (strace's output drained)
        def ended() -> dict[str, Any] | None:
            session: dict[str, Any] = request(sock, "show", pid=proc.pid).get("session") or {}
            return session if session.get("state") not in ("attaching", "attached") else None

        try:
            session = wait_until(ended, f"session {proc.pid} ended", timeout=600)
            result["state"] = session.get("state")
            result["log_lines"] = session.get("lines")
        except AssertionError as err:
            result["error"] = str(err)
        result["session_end_s"] = time.monotonic() - start
    cpu_after = cpu(daemon)
    result["tracerd_cpu_s"] = cpu_after[0] - cpu_before[0]
    result["tracer_cpu_s"] = cpu_after[1] - cpu_before[1]
    return result


def schedule(runs: int, strace_runs: int) -> list[str]:
    """untraced and watched alternate (order flipped every round); strace runs spread evenly among them."""
    after = {min(runs - 1, int((i + 0.5) * runs / strace_runs)) for i in range(strace_runs)} if strace_runs else set()
    order: list[str] = []
    for round_ in range(runs):
        order += ["untraced", "watched"] if round_ % 2 == 0 else ["watched", "untraced"]
        if round_ in after:
            order.append("strace")
    return order + ["strace"] * (strace_runs - order.count("strace"))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5, help="runs untraced and watched, each")
    parser.add_argument("--strace-runs", type=int, default=3, help="runs under strace (0: none)")
    parser.add_argument("--iterations", type=int, default=2_000_000, help="getppid() calls per run")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        exe = compile_c("bench_syscalls", Path(tmp))
        with private_tracerd(EXTRA_CONFIG) as (sock, root):
            hook = f"{BIN / 'pftrace-hook'} --socket {sock}"
            run_once(exe, "watched", hook, 1000, sock)  # warm-up: starts the watcher, fills caches
            for kind in schedule(args.runs, args.strace_runs):
                results.append(run_once(exe, kind, hook, args.iterations, sock))
            events = stderr_events(root)
    medians = report(args, results)
    noteworthy = {k: v for k, v in events.items() if not k.startswith("info")}
    if noteworthy:
        print(f"tracerd warnings/errors: {noteworthy}")
    path = save("overhead", {"iterations": args.iterations, "medians_ms": medians, "runs": results})
    print(f"saved {path}")
    return 0


def report(args: argparse.Namespace, results: list[dict[str, Any]]) -> dict[str, float]:
    print(f"{args.iterations} getppid() calls per run; loop time in ms, in run order\n")
    print(f"{'run':>4} {'kind':9} {'loop ms':>10} {'hook':>5} {'session':>9} {'log lines':>10} {'wall s':>8} "
          f"{'tracerd CPU s':>14} {'strace CPU s':>13}")  # fmt: skip
    for number, row in enumerate(results, start=1):
        if "error" in row:
            print(f"{number:4d} {row['kind']:9} {row['error']}")
            continue
        print(f"{number:4d} {row['kind']:9} {row['loop_ms']:10.1f} {row['hook']:5d} {row.get('state') or '-':>9} "
              f"{row.get('log_lines') if row.get('log_lines') is not None else '-':>10} "
              f"{row.get('session_end_s', row['wall_s']):8.1f} {row['tracerd_cpu_s']:14.2f} "
              f"{row['tracer_cpu_s']:13.2f}")  # fmt: skip
    medians: dict[str, float] = {}
    print(f"\n{'kind':9} {'runs':>5} {'median ms':>10} {'ns/call':>8} {'untraced/kind':>14}")
    for kind in KINDS:
        times = [r["loop_ms"] for r in results if r["kind"] == kind and "error" not in r and r["hook"] == 0]
        if times:
            medians[kind] = statistics.median(times)
    for kind, median in medians.items():
        ratio = medians["untraced"] / median if "untraced" in medians else float("nan")
        goal = f"  (goal >= {GOAL_RATIO})" if kind == "watched" else ""
        count = sum(1 for r in results if r["kind"] == kind and "loop_ms" in r)
        print(f"{kind:9} {count:5d} {median:10.1f} {median * 1e6 / args.iterations:8.0f} {ratio:14.3f}{goal}")
    for row in results:
        if row["kind"] == "strace" and row.get("log_lines"):
            print(f"strace run: tracerd spent {row['tracerd_cpu_s'] * 1e6 / row['log_lines']:.1f} us CPU "
                  f"per line of strace output ({row['log_lines']} lines)")  # fmt: skip
    failed = [r for r in results if "error" in r or r.get("hook") != 0 or r.get("status") != 0]
    print(f"failed runs (no output, hook not 0 or exit not 0): {len(failed)}")
    return medians


if __name__ == "__main__":
    sys.exit(main())
