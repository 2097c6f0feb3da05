"""bench/hook_latency: what a traced process start costs, hook vs the seed's recipe.

20 sequential targets each run the debugger_command through system(), as
Postfix's debug_process() does, and time it.  Three commands, in one run:

- baseline: ``true`` (what system() itself costs, untraced);
- tracerd:  ``pftrace-hook NAME PID`` with the strace tracer, and with the
  watch tracer (the default);
- seed:     ``(strace -p PID 2>&1 | logger -p mail.info) & sleep 5``.

Prints p50/p95 per command and writes bench/results/hook_latency.json.
Usage: .venv/bin/python bench/hook_latency.py [--runs 20]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BIN, compile_c, private_tracerd, save, summary

SEED = "PATH=/bin:/usr/bin:/usr/local/bin; (strace -p $PID 2>&1 | logger -p mail.info) & sleep 5 #"


def run_once(exe: Path, command: str, name: str) -> tuple[float, int]:
    """One target; returns (ms spent in system(), the command's status)."""
    proc = subprocess.run([str(exe), command, name], capture_output=True, text=True, timeout=120, check=True)
    match = re.search(r"elapsed_us=(\d+) status=(-?\d+)", proc.stdout)
    assert match, proc.stdout
    return int(match.group(1)) / 1000.0, int(match.group(2))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exe = compile_c("timed_hook", Path(tmp))
        results: dict[str, dict[str, float]] = {}
        failures: dict[str, int] = {}
        rules = '[[rule]]\nprocess = "benchw"\ntracer = "watch"\n[[rule]]\nprocess = "*"\ntracer = "strace"\n'
        with private_tracerd(rules) as (sock, _root):
            hook = f"{BIN / 'pftrace-hook'} --socket {sock}"
            commands = {
                "untraced (true)": ("true", "benchd"),
                "tracerd hook (strace)": (hook, "benchd"),
                "tracerd hook (watch)": (hook, "benchw"),
                # the seed's recipe; the target pid is the last word system() appends,
                # so the recipe reads it from $PPID's child: sh's parent is the target
                "seed recipe (strace & sleep 5)": (SEED.replace("$PID", "$PPID"), "benchd"),
            }
            for label, (command, name) in commands.items():
                times = []
                failures[label] = 0
                for _ in range(args.runs):
                    elapsed, status = run_once(exe, command, name)
                    times.append(elapsed)
                    failures[label] += status != 0
                results[label] = summary(times)
    print(f"{'command':34} {'p50 ms':>9} {'p95 ms':>9} {'failed':>7}")
    for label, stats in results.items():
        print(f"{label:34} {stats['p50']:9.1f} {stats['p95']:9.1f} {failures[label]:7d}")
    hook, seed = results["tracerd hook (strace)"], results["seed recipe (strace & sleep 5)"]
    print(f"\nseed p50 / tracerd p50 = {seed['p50'] / hook['p50']:.0f}x")
    path = save("hook_latency", {"runs": args.runs, "results": results, "failures": failures})
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
