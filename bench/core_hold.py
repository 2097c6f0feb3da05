"""bench/core_hold: how long a crashed process is held for its core, by RSS, and the core's sizes.

A watched target (tests/c/retrace_target.c, MODE memN) touches N MB (half
pseudo-random bytes, half zeros: a mail daemon's heap is neither all noise
nor all zero), prints "touched=N" and dereferences NULL at once.  The hold
is the time from that line to the parent's waitpid() returning (the moment
Postfix's master would log "killed by signal 11"): the watcher's raw core,
gdb reading it, the report, and (``core = "all"``) the zstd compression of
the core into the store, all while the process is held.

Per size, the same run measures ``core = "none"`` (the core the capture
needs is written and dropped) against ``core = "all"`` (it is also kept,
compressed), interleaved, so that the difference is the keeping's cost.
The report's ``core`` gives the raw and compressed sizes and the
compression's own seconds.  The watch tracer's raw core is capped at 1 GiB
(memory past it is left out, largest mappings first: see capture_errors).

Prints a table and writes bench/results/core_hold.json.
Usage: .venv/bin/python bench/core_hold.py [--sizes 20,200,2048] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BIN, C_DIR, no_core_dumps, private_tracerd, reap, request, save, wait_until

EXTRA_CONFIG = """crash_flood_window = 0
core_timeout = 600
max_core_bytes = 8589934592
max_core_process_bytes = 8589934592

[[rule]]
process = "hold-watch-none"
tracer = "watch"
core = "none"

[[rule]]
process = "hold-watch-all"
tracer = "watch"
core = "all"

[[rule]]
process = "hold-gdb-none"
tracer = "gdb"
core = "none"

[[rule]]
process = "hold-gdb-all"
tracer = "gdb"
core = "all"
"""


def build(out: Path) -> Path:
    subprocess.run(["gcc", "-g", "-shared", "-fPIC", "-o", str(out / "libretracelib.so"),
                    str(C_DIR / "retracelib.c")], check=True)  # fmt: skip
    exe = out / "retrace_target"
    subprocess.run(["gcc", "-g", "-O2", "-o", str(exe), str(C_DIR / "retrace_target.c"), f"-L{out}",
                    "-lretracelib", f"-Wl,-rpath,{out}"], check=True)  # fmt: skip
    return exe


def read_line(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().decode().strip()


def one(sock: Path, exe: Path, tracer: str, policy: str, megabytes: int) -> dict[str, Any]:
    hook = f"{BIN / 'pftrace-hook'} --socket {sock}"
    proc = subprocess.Popen([str(exe), hook, f"hold-{tracer}-{policy}", f"mem{megabytes}"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, bufsize=0)  # fmt: skip
    try:
        assert read_line(proc) == "hook=0"
        assert proc.stdin is not None
        proc.stdin.write(b"x")
        assert read_line(proc) == f"touched={megabytes}"
        touched = time.monotonic()
        proc.wait(timeout=900)
        hold = time.monotonic() - touched

        def crashed() -> dict[str, Any] | None:
            session: dict[str, Any] = request(sock, "show", pid=proc.pid).get("session") or {}
            return session if session.get("state") == "crashed" else None

        session = wait_until(crashed, f"session {proc.pid} crashed", 120, interval=0.05)
        report = request(sock, "crash", id=session["crash"])["crash"]
        core = report.get("core") or {}
        return {"tracer": tracer, "policy": policy, "mb": megabytes, "hold_s": round(hold, 3),
                "state": core.get("state"),
                "raw_bytes": core.get("raw_bytes"), "bytes": core.get("bytes"), "compress_s": core.get("seconds"),
                "reason": core.get("reason"), "capture_errors": report["process"].get("capture_errors")}  # fmt: skip
    finally:
        reap(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20,200,2048", help="RSS in MB, comma-separated")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tracers", default="watch,gdb", help="comma-separated: watch (its own core), gdb (gcore)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    tracers = args.tracers.split(",")
    no_core_dumps()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tracerd-bench-bin-") as tmp, \
            private_tracerd(EXTRA_CONFIG) as (sock, _root):  # fmt: skip
        exe = build(Path(tmp))
        for megabytes in sizes:
            for run in range(args.runs):
                for tracer in tracers:
                    for policy in (("none", "all") if run % 2 == 0 else ("all", "none")):
                        result = one(sock, exe, tracer, policy, megabytes)
                        results.append(result)
                        print(json.dumps(result), file=sys.stderr)
    print(f"{'tracer':>6} {'RSS MB':>7} {'hold none s':>12} {'hold all s':>11} {'compress s':>11}"
          f" {'raw MB':>8} {'zstd MB':>8}")
    rows = []
    for tracer, megabytes in [(t, mb) for t in tracers for mb in sizes]:
        def median(policy: str, key: str, mb: int = megabytes, tracer: str = tracer) -> float:
            values = sorted(float(r[key] or 0) for r in results
                            if r["mb"] == mb and r["policy"] == policy and r["tracer"] == tracer)  # fmt: skip
            return values[len(values) // 2] if values else 0.0

        row = {"tracer": tracer, "mb": megabytes, "hold_none_s": median("none", "hold_s"),
               "hold_all_s": median("all", "hold_s"),
               "compress_s": median("all", "compress_s"), "raw_mb": median("all", "raw_bytes") / 2**20,
               "zstd_mb": median("all", "bytes") / 2**20}  # fmt: skip
        rows.append(row)
        print(f"{tracer:>6} {megabytes:>7} {row['hold_none_s']:>12.2f} {row['hold_all_s']:>11.2f}"
              f" {row['compress_s']:>11.2f} {row['raw_mb']:>8.1f} {row['zstd_mb']:>8.1f}")
    path = save("core_hold", {"rows": rows, "runs": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
