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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BIN, compile_c, private_tracerd, request, save, stderr_events

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


def run_once(exe: Path, kind: str, hook: str, iterations: int, sock: Path) -> dict[str, Any]:
    argv = [str(exe), "-" if kind == "untraced" else hook, f"syscalls-{kind}", str(iterations)]
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
    wall = time.monotonic() - start
    match = OUTPUT.search(proc.stdout)
    result: dict[str, Any] = {"kind": kind, "status": proc.returncode, "wall_s": wall}
    if not match:
        result["error"] = f"no output: {proc.stdout!r} {proc.stderr[-300:]!r}"
        return result
    result["hook"] = int(match.group(1))
    result["loop_ms"] = int(match.group(2)) / 1000.0
    if kind != "untraced":
        # the session must have ended before the next run starts (strace drains its output)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            session = request(sock, "show", pid=proc.args and _pid_of(proc)).get("session") or {}
            if session.get("state") not in ("attaching", "attached"):
                result["state"] = session.get("state")
                result["log_lines"] = session.get("lines")
                break
            time.sleep(0.05)
    return result


def _pid_of(proc: subprocess.CompletedProcess[str]) -> int:
    raise NotImplementedError
