"""bench/crash_latency's stack-overflow case: fault -> process gone, per tracer.

tests/c/overflow.c recurses until its 8 MiB stack is exhausted: ``main``
(~3950 frames of 2 KiB, unwound to the end by gdb) and ``deep`` (~260000
frames of a ping < pong recursion, too deep to unwind: the depth is
estimated).  The fault's time is the target's own CLOCK_MONOTONIC just
before it recurses (filling 8 MiB of stack takes a few ms more); the
process is gone when its parent's waitpid() returns.  Run by
``bench/crash_latency.py`` (``--overflow-runs``); alone:
``.venv/bin/python bench/overflow_case.py [--runs 5]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BIN, Crasher, no_core_dumps, private_tracerd, summary, wait_ended

from tests.support import compile_c  # -O0, as the tests build it: at -O2 gcc turns the recursion into a loop

TRACERS = ("watch", "gdb")
MODES = ("main", "deep")
CONFIG = "crash_flood_window = 0\n" + "".join(
    f'\n[[rule]]\nprocess = "overflow-{tracer}"\ntracer = "{tracer}"\n' for tracer in TRACERS
)


def one_overflow(exe: Path, hook: str, sock: Path, tracer: str, mode: str) -> dict[str, Any]:
    with Crasher([str(exe), hook, f"overflow-{tracer}", mode]) as target:
        line = target.line()
        if line != "hook=0":
            return {"tracer": tracer, "mode": mode, "error": f"hook failed: {line}"}
        target.fault()
        start = float(target.line().split("=", 1)[1])  # the target's clock, just before it recurses
        gone = target.gone(timeout=300)
        result: dict[str, Any] = {"tracer": tracer, "mode": mode, "status": target.proc.returncode}
        if gone is None:
            return {**result, "error": "not gone within 300 s"}
        result["gone_ms"] = (gone - start) * 1000
        crash = wait_ended(sock, target.pid).get("crash")
        shown = subprocess.run([str(BIN / "tracerctl"), "--socket", str(sock), "--json", "crash", str(crash)],
                               capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        info = json.loads(shown.stdout)["crash"].get("stack_overflow") or {} if shown.returncode == 0 else {}
        return {**result, **{key: info.get(key) for key in ("depth", "depth_source", "cycle", "cycle_count")}}


def run(runs: int) -> dict[str, Any]:
    """``runs`` overflows per tracer and mode, interleaved; prints and returns the table."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        exe = compile_c("overflow", Path(tmp), "-pthread")
        with private_tracerd(CONFIG) as (sock, _root):
            hook = f"{BIN / 'pftrace-hook'} --socket {sock}"
            for _ in range(runs):
                for mode in MODES:
                    for tracer in TRACERS:
                        results.append(one_overflow(exe, hook, sock, tracer, mode))
    print(f"\nstack overflow (tests/c/overflow.c, 8 MiB stack), {runs} per row; fault -> gone in ms")
    table: dict[str, Any] = {}
    for mode in MODES:
        for tracer in TRACERS:
            mine = [r for r in results if r["mode"] == mode and r["tracer"] == tracer]
            ok = [r for r in mine if "error" not in r and r.get("status") == -11 and r.get("depth")]
            gone = summary([r["gone_ms"] for r in ok]) if ok else None
            last = ok[-1] if ok else {}
            row = {"gone_ms": gone, "failed": len(mine) - len(ok), "depth": last.get("depth"),
                   "depth_source": last.get("depth_source"), "cycle": last.get("cycle"),
                   "cycle_count": last.get("cycle_count")}  # fmt: skip
            table[f"{tracer} {mode}"] = row
            cells = f"p50 {gone['p50']:.1f} max {gone['max']:.1f}" if gone else "-"
            print(f"{tracer:6} {mode:5} {cells:28} depth {row['depth']} ({row['depth_source']}), cycle "
                  f"{row['cycle']} x {row['cycle_count']}, failed {row['failed']}")  # fmt: skip
    return {"table": table, "runs": results}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    no_core_dumps()
    run(parser.parse_args().runs)
