"""bench/crash_latency: how long a crash takes to be reported and to end, per tracer.

A target (tests/c/crash.c, MODE segv) runs the hook through system() as
Postfix does, then waits for one byte on stdin; "fault" is the moment the
bench writes that byte (the target dereferences NULL right after).  For each
crash, two times from the fault:

- fault -> report: the crash report ``{state_dir}/crashes/ID.json`` appears
  (inotify on the directory: the store renames its temp file into place);
- fault -> gone:  the target's parent (this bench) returns from waitpid(),
  the moment Postfix's master would log "killed by signal 11".

Three kinds of crash, interleaved (the order rotates every round) so that
they share the machine's noise:

- ``watch``: tracerd's ptrace watcher; at the crash the warm gdb (started
  ahead, libc's symbols read: tracerd/gdb/warm.py) reads the core the
  watcher wrote.  Before every crash the bench waits until the warm gdb is
  ready again (the one used by the previous crash is replaced after it), as a
  real crash would find it;
- ``gdb``:   one gdb per process, attached from the hook on;
- ``untraced`` (the baseline, same run): no hook, the kernel alone (no report).

``crash_flood_window = 0``, so every crash gets a full report (with the
default 60 s, only the first crash of a signature would).  Core dumps are off
(RLIMIT_CORE 0) for every kind.

The daemon's ``watch_capture`` log lines split the watch capture: gdb
obtained, executable and core loaded, report collected, report written.

Then memory: 10 targets (MODE wait) traced by each tracer at once; the RSS
(and PSS) of tracerd's gdb children divided by 10, and the ptrace watcher's
RSS with the same 10 processes plus the warm gdb's, next to the watcher's RSS
with none; and what the watch side (watcher + warm gdb) costs per process
at 1000 processes (bench/watch_scale.py measures it with 1000 for real).

Then stack overflows (bench/overflow_case.py, ``--overflow-runs`` per tracer
and depth): fault -> process gone, the depth and the recursion's cycle.

Then 301 threads (bench/threads_case.py, ``--threads-runs`` per tracer):
fault -> report and -> gone, threads named, the core's bytes written
beside the kernel's.

Prints a table and writes bench/results/crash_latency.json.
Usage: .venv/bin/python bench/crash_latency.py [--runs 20] [--rss-count 10] [--overflow-runs 5] [--threads-runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import os
import re
import select
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overflow_case
import threads_case
from common import (
    BIN,
    Crasher,
    compile_c,
    no_core_dumps,
    private_tracerd,
    read_line,
    reap,
    request,
    save,
    stderr_events,
    summary,
    wait_ended,
    wait_until,
)

TRACERS = ("watch", "gdb")
KINDS = ("watch", "gdb", "untraced")
EXTRA_CONFIG = """crash_flood_window = 0

[[rule]]
process = "crash-watch"
tracer = "watch"

[[rule]]
process = "crash-gdb"
tracer = "gdb"
"""
IN_CREATE = 0x100
IN_MOVED_TO = 0x80
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
REPORT_NAME = re.compile(r"^[A-Za-z0-9._-]+\.json$")
EXPECTED_TOP = ["crash_here", "level_two", "level_one"]


class Inotify:
    """New names in one directory, through inotify(7) (ctypes: no third-party module)."""

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(self.fd, str(directory).encode(), IN_CREATE | IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")

    def names(self) -> list[str]:
        """Names that appeared since the last call (never blocks)."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        names, offset = [], 0
        while offset < len(data):
            _wd, _mask, _cookie, length = struct.unpack_from("iIII", data, offset)
            offset += 16
            names.append(data[offset : offset + length].rstrip(b"\0").decode())
            offset += length
        return names

    def wait_report(self, deadline: float) -> tuple[float, str] | None:
        """(monotonic time, name) of the next report file to appear, else None at the deadline."""
        while True:
            for name in self.names():
                if REPORT_NAME.match(name) and name != "index.json" and not name.startswith("."):
                    return time.monotonic(), name
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            select.select([self.fd], [], [], left)

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class Setup:
    exe: Path
    hook: str
    sock: Path
    crashes: Path
    watch: Inotify


def warm_gdb(sock: Path) -> dict[str, Any]:
    """``status``'s warm_gdb row ({} before the first watch session)."""
    return request(sock, "status").get("warm_gdb") or {}


def wait_warm(sock: Path, timeout: float = 30.0) -> bool:
    """Wait until the warm gdb is ready (it is replaced after each watch crash); False if not in time."""
    if not warm_gdb(sock):
        return False  # no watch session yet: none is started
    with contextlib.suppress(AssertionError):
        wait_until(lambda: warm_gdb(sock).get("pid"), "the warm gdb ready", timeout, interval=0.02)
        return True
    return False


def one_crash(setup: Setup, kind: str) -> dict[str, Any]:
    """One segv; returns fault->report and fault->gone in ms (report None when untraced)."""
    exe, hook, sock, crashes, watch = setup.exe, setup.hook, setup.sock, setup.crashes, setup.watch
    argv = [str(exe), "-" if kind == "untraced" else hook, f"crash-{kind}", "segv"]
    with Crasher(argv) as target:
        line = target.line()
        if line != "hook=0":
            return {"kind": kind, "pid": target.pid, "error": f"hook failed: {line}"}
        warm = wait_warm(sock)
        watch.names()  # forget anything older than this crash
        fault = target.fault()
        report = None if kind == "untraced" else watch.wait_report(fault + 60.0)
        gone = target.gone(timeout=60.0)
        result: dict[str, Any] = {"kind": kind, "pid": target.pid, "status": target.proc.returncode,
                                  "warm_ready": warm}  # fmt: skip
        if gone is None:
            result["error"] = "target did not end within 60 s"
            return result
        result["gone_ms"] = (gone - fault) * 1000
        if kind != "untraced":
            session = wait_ended(sock, target.pid)
            result["state"] = session.get("state")
            if report is None:
                result["error"] = f"no report within 60 s (session {session.get('state')}, {session.get('error')})"
                return result
            result["report_ms"] = (report[0] - fault) * 1000
            body = json.loads((crashes / report[1]).read_text())
            result["report_pid_ok"] = body.get("process", {}).get("pid") == target.pid
            result["report_top_ok"] = body.get("top", [])[:3] == EXPECTED_TOP
            result["report_libraries"] = len(body.get("libraries") or [])
            result["report_bytes"] = (crashes / report[1]).stat().st_size
        return result


def daemon_tree(sock: Path) -> tuple[psutil.Process, list[psutil.Process]]:
    daemon = psutil.Process(int(request(sock, "status")["daemon"]["pid"]))
    return daemon, daemon.children(recursive=True)


def is_watcher(proc: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return "tracerd.tracers.watch.watcher" in " ".join(proc.cmdline())
    return False


def memory(procs: list[psutil.Process]) -> tuple[int, int]:
    """Summed (RSS, PSS) in bytes of processes still there."""
    rss = pss = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            info = proc.memory_full_info()
            rss += info.rss
            pss += info.pss
    return rss, pss


def rss_under(exe: Path, tracer: str, hook: str, sock: Path, count: int) -> dict[str, Any]:
    """``count`` waiting targets traced by ``tracer``: what the tracer side costs."""
    daemon, children = daemon_tree(sock)
    watcher_idle = memory([p for p in children if is_watcher(p)])[0]
    daemon_idle = daemon.memory_info().rss
    targets: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            proc = subprocess.Popen(
                [str(exe), hook, f"crash-{tracer}", "wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
            )
            targets.append(proc)
            line = read_line(proc)
            if line != "hook=0":
                raise RuntimeError(f"hook failed for {proc.pid}: {line}")
        time.sleep(0.5)  # let every tracer settle after its attach
        daemon, children = daemon_tree(sock)
        warm_pid = warm_gdb(sock).get("pid")
        warm = [p for p in children if p.pid == warm_pid]
        gdbs = [p for p in children if p.name() == "gdb" and p.pid != warm_pid]
        watchers = [p for p in children if is_watcher(p)]
        gdb_rss, gdb_pss = memory(gdbs)
        watcher_rss, watcher_pss = memory(watchers)
        warm_rss, warm_pss = memory(warm)
        return {
            "tracer": tracer,
            "count": count,
            "warm_gdb_rss": warm_rss,
            "warm_gdb_pss": warm_pss,
            "gdb_processes": len(gdbs),
            "gdb_rss": gdb_rss,
            "gdb_pss": gdb_pss,
            "watcher_rss": watcher_rss,
            "watcher_pss": watcher_pss,
            "watcher_rss_idle": watcher_idle,
            "daemon_rss": daemon.memory_info().rss,
            "daemon_rss_idle": daemon_idle,
        }
    finally:
        for proc in targets:
            assert proc.stdin is not None
            with contextlib.suppress(OSError):
                proc.stdin.close()  # end of input: MODE wait exits 0
        for proc in targets:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            reap(proc)
        for proc in targets:
            with contextlib.suppress(AssertionError):
                wait_ended(sock, proc.pid, timeout=30)


def mb(value: float) -> str:
    return f"{value / 1e6:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20, help="crashes per kind")
    parser.add_argument("--rss-count", type=int, default=10, help="targets traced at once for the memory figures")
    parser.add_argument("--overflow-runs", type=int, default=5, help="stack overflows per tracer and depth")
    parser.add_argument("--threads-runs", type=int, default=3, help="301-thread crashes per tracer")
    args = parser.parse_args()
    no_core_dumps()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        exe = compile_c("crash", Path(tmp), "-pthread")
        with private_tracerd(EXTRA_CONFIG) as (sock, root):
            hook = f"{BIN / 'pftrace-hook'} --socket {sock}"
            crashes = root / "state" / "crashes"
            crashes.mkdir(parents=True, exist_ok=True)
            setup = Setup(exe, hook, sock, crashes, Inotify(crashes))
            try:
                for round_ in range(args.runs):
                    shift = round_ % len(KINDS)
                    for kind in KINDS[shift:] + KINDS[:shift]:
                        results.append(one_crash(setup, kind))
            finally:
                setup.watch.close()
            rss = [rss_under(exe, tracer, hook, sock, args.rss_count) for tracer in TRACERS]
            events = stderr_events(root)
            root_stderr = (root / "stderr").read_text(errors="replace")
    table = print_latency(args.runs, results)
    phases = print_phases(root_stderr)
    print_memory(args.rss_count, rss)
    overflows = overflow_case.run(args.overflow_runs)  # stack overflow: bench/overflow_case.py
    many_threads = threads_case.run(args.threads_runs)  # 301 threads: bench/threads_case.py
    noteworthy = {k: v for k, v in events.items() if not k.startswith("info")}
    if noteworthy:
        print(f"tracerd warnings/errors: {dict(noteworthy)}")
    path = save(
        "crash_latency",
        {
            "runs": args.runs,
            "table": table,
            "watch_phases": phases,
            "memory": rss,
            "crashes": results,
            "daemon_events": dict(events),
            "stack_overflow": overflows,
            "threads_301": many_threads,
        },
    )
    print(f"saved {path}")
    return 0


def print_latency(runs: int, results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    print(f"{runs} crashes (SIGSEGV) per kind, interleaved; times from the fault, in ms\n")
    print(f"{'kind':10} {'->report p50':>13} {'p95':>8} {'->gone p50':>11} {'p95':>8} "
          f"{'report->gone p50':>17} {'failed':>7}")  # fmt: skip
    for kind in KINDS:
        mine = [r for r in results if r["kind"] == kind]
        ok = [r for r in mine if "error" not in r and r.get("status") == -11]
        failed = len(mine) - len(ok)
        gone = summary([r["gone_ms"] for r in ok]) if ok else None
        report = summary([r["report_ms"] for r in ok]) if ok and kind != "untraced" else None
        lag = summary([r["gone_ms"] - r["report_ms"] for r in ok]) if report else None
        table[kind] = {"report_ms": report, "gone_ms": gone, "report_to_gone_ms": lag, "failed": failed}
        cells = [
            f"{report['p50']:13.1f} {report['p95']:8.1f}" if report else f"{'-':>13} {'-':>8}",
            f"{gone['p50']:11.1f} {gone['p95']:8.1f}" if gone else f"{'-':>11} {'-':>8}",
            f"{lag['p50']:17.1f}" if lag else f"{'-':>17}",
        ]
        print(f"{kind:10} {' '.join(cells)} {failed:7d}")
    wrong_pid = sum(1 for r in results if r.get("report_pid_ok") is False)
    wrong_top = sum(1 for r in results if r.get("report_top_ok") is False)
    errors = [r for r in results if "error" in r or r.get("status") != -11]
    print(f"\nreports naming another pid: {wrong_pid}; without {' < '.join(EXPECTED_TOP)} on top: {wrong_top}; "
          f"targets not killed by SIGSEGV or failing: {len(errors)}")  # fmt: skip
    for r in errors[:5]:
        print(f"  {r}")
    base = table["untraced"]["gone_ms"]
    for tracer in TRACERS:
        gone = table[tracer]["gone_ms"]
        if gone and base:
            print(f"{tracer}: fault->gone p50 is {gone['p50'] - base['p50']:.1f} ms over the untraced baseline")
    return table


def print_phases(stderr: str) -> dict[str, Any]:
    """p50 of the daemon's ``watch_capture`` steps (cumulative ms from the crash event)."""
    steps: dict[str, list[float]] = {}
    for line in stderr.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("event") == "watch_capture":
                for key in ("gdb_ms", "load_ms", "capture_ms", "report_ms"):
                    steps.setdefault(key, []).append(float(record[key]))
    table = {key: summary(values) for key, values in steps.items()}
    if table:
        cells = ", ".join(f"{key[:-3]} {row['p50']:.1f}" for key, row in table.items())
        print(f"watch capture in tracerd, p50 ms from the fatal event, cumulative: {cells}")
    return table


def print_memory(count: int, rss: list[dict[str, Any]]) -> None:
    print(f"\nmemory with {count} targets traced at once, in MB (tracer = the gdb processes, or the one watcher)")
    print(f"{'tracer':8} {'tracer procs':>13} {'tracer RSS':>11} {'RSS/traced':>11} {'PSS/traced':>11} "
          f"{'tracerd RSS':>12}")  # fmt: skip
    for row in rss:
        n = row["count"]
        if row["tracer"] == "gdb":
            procs, total, pss = row["gdb_processes"], row["gdb_rss"], row["gdb_pss"]
        else:  # the watcher and the warm gdb
            procs = 1 + (1 if row["warm_gdb_rss"] else 0)
            total, pss = row["watcher_rss"] + row["warm_gdb_rss"], row["watcher_pss"] + row["warm_gdb_pss"]
        print(f"{row['tracer']:8} {procs:13d} {mb(total):>11} {mb(total / n):>11} {mb(pss / n):>11} "
              f"{mb(row['daemon_rss']):>12}")  # fmt: skip
    watch_row = next(r for r in rss if r["tracer"] == "watch")
    growth = (watch_row["watcher_rss"] - watch_row["watcher_rss_idle"]) / watch_row["count"]
    print(
        f"watcher RSS watching nothing: {mb(watch_row['watcher_rss_idle'])} MB; "
        f"increment per watched process: {growth / 1e3:.1f} kB; warm gdb RSS {mb(watch_row['warm_gdb_rss'])} MB"
    )
    at_1000 = watch_row["watcher_rss_idle"] + 1000 * max(growth, 0) + watch_row["warm_gdb_rss"]
    print(f"watch side at 1000 processes (watcher + warm gdb) / 1000: {at_1000 / 1000 / 1e6:.3f} MB per process "
          f"(goal <= 0.1; bench/watch_scale.py measures 1000 for real)")  # fmt: skip
    print("(for scale: DESIGN.md measured about 85 MB RSS per gdb of the seed recipe on a Postfix daemon)")


if __name__ == "__main__":
    sys.exit(main())
