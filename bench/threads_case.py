"""bench/crash_latency's 300-thread case: a crash in a 301-thread process, per tracer.

tests/c/manythreads.c starts 299 threads blocked in worker_wait()
(pthread_cond_wait), runs the hook, and on one byte on stdin a 301st thread
dereferences NULL.  For each tracer: fault -> report on disk (inotify) and
fault -> process gone (the parent's waitpid()), the threads the report names
with worker_wait, the core the report keeps (``core = "all"``: the watch
tracer's own core, the gdb tracer's gcore) in bytes written, and the
kernel's core of the same program (untraced, RLIMIT_CORE unlimited, in a
temporary directory) for scale.  Run by ``bench/crash_latency.py``
(``--threads-runs``); alone: ``.venv/bin/python bench/threads_case.py [--runs 3]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BIN, Crasher, no_core_dumps, private_tracerd, summary, wait_ended, wait_until

from tests.support import compile_c

TRACERS = ("watch", "gdb")
WORKERS = "299"
CONFIG = 'crash_flood_window = 0\ncore = "all"\n' + "".join(
    f'\n[[rule]]\nprocess = "threads-{tracer}"\ntracer = "{tracer}"\n' for tracer in TRACERS
)


def kernel_core_bytes(exe: Path) -> int | None:
    """Bytes the kernel writes for the same crash (its core is sparse: blocks, not length)."""
    if Path("/proc/sys/kernel/core_pattern").read_text().strip() not in ("core", "core.%p"):
        return None
    with tempfile.TemporaryDirectory() as where:

        def unlimited() -> None:
            hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
            resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))

        subprocess.run([str(exe), "-", "threads", WORKERS], input=b"x", cwd=where, preexec_fn=unlimited,
                       capture_output=True, timeout=120, check=False)  # fmt: skip
        cores = list(Path(where).glob("core*"))
        return cores[0].stat().st_blocks * 512 if cores else None


def one_crash(exe: Path, hook: str, sock: Path, crashes: Path, tracer: str) -> dict[str, Any]:
    with Crasher([str(exe), hook, f"threads-{tracer}", WORKERS]) as target:
        line = target.line()
        if line != "hook=0":
            return {"tracer": tracer, "error": f"hook failed: {line}"}
        before = set(crashes.glob("*.json"))
        fault = target.fault()

        def new_report() -> tuple[float, Path] | None:
            fresh = [p for p in set(crashes.glob("*.json")) - before if p.name != "index.json"]
            return (time.monotonic(), fresh[0]) if fresh else None

        found = wait_until(new_report, "the report", 300, 0.01)
        assert found is not None
        reported, path = found
        gone = target.gone(timeout=300)
        result: dict[str, Any] = {"tracer": tracer, "status": target.proc.returncode,
                                  "report_ms": (reported - fault) * 1000}  # fmt: skip
        if gone is None:
            return {**result, "error": "not gone within 300 s"}
        result["gone_ms"] = (gone - fault) * 1000
        wait_ended(sock, target.pid)
        report = json.loads(path.read_text())
        result["threads"] = len(report.get("threads") or [])
        result["named_worker_wait"] = sum(
            1 for t in report.get("threads") or [] if any(f.get("function") == "worker_wait" for f in t["frames"])
        )
        core = report.get("core") or {}
        result.update(core_state=core.get("state"), core_raw_bytes=core.get("raw_bytes"),
                      capture_errors=len(report.get("process", {}).get("capture_errors") or []))  # fmt: skip
        return result


def run(runs: int) -> dict[str, Any]:
    """``runs`` crashes per tracer, interleaved; prints and returns the table."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        exe = compile_c("manythreads", Path(tmp), "-pthread")
        kernel = kernel_core_bytes(exe)
        with private_tracerd(CONFIG) as (sock, root):
            hook = f"{BIN / 'pftrace-hook'} --socket {sock}"
            crashes = root / "state" / "crashes"
            crashes.mkdir(parents=True, exist_ok=True)
            for round_ in range(runs):
                for tracer in TRACERS[round_ % 2 :] + TRACERS[: round_ % 2]:
                    results.append(one_crash(exe, hook, sock, crashes, tracer))
    table: dict[str, Any] = {"kernel_core_bytes": kernel}
    print(f"\n301 threads (299 in worker_wait, one crashing), {runs} crashes per tracer; ms from the fault;"
          f" kernel core {kernel} bytes written")  # fmt: skip
    print(f"{'tracer':8} {'->report p50':>13} {'max':>8} {'->gone p50':>11} {'max':>8} {'named':>6} {'core bytes':>12}")
    for tracer in TRACERS:
        ok = [r for r in results if r["tracer"] == tracer and "error" not in r]
        if not ok:
            table[tracer] = None
            continue
        report, gone = summary([r["report_ms"] for r in ok]), summary([r["gone_ms"] for r in ok])
        named = min(r["named_worker_wait"] for r in ok)
        core = max((r["core_raw_bytes"] or 0) for r in ok)
        table[tracer] = {"report_ms": report, "gone_ms": gone, "named_worker_wait": named, "core_raw_bytes": core,
                         "core_states": sorted({str(r["core_state"]) for r in ok})}  # fmt: skip
        print(f"{tracer:8} {report['p50']:13.1f} {report['max']:8.1f} {gone['p50']:11.1f} {gone['max']:8.1f}"
              f" {named:6d} {core:12d}")  # fmt: skip
    table["runs"] = results
    return table


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3, help="crashes per tracer")
    args = parser.parse_args()
    no_core_dumps()
    run(args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
