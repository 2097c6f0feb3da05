"""bench/watch_scale: N processes watched at once by the watch tracer, as Postfix starts them.

Each target (tests/c/bench_idle.c) runs ``pftrace-hook NAME PID`` through
system() as Postfix's debug_process() does, prints the time it spent in
system(), then sleeps in pause() until killed.  N of them (default 1000) are
started and stay watched together:

- the first 20 one at a time (1..20 watched): hook latency with no load;
- the middle ones 20 at a time (a master starting many daemons at once);
- the last 20 one at a time (with N-20..N already watched): hook latency at scale.

Measured against the same daemon before the load (same run): the RSS of
tracerd plus all its children (the watcher and the warm gdb), cold (no session
yet) and warm (one watched process, the watcher started), then with N; the
increment per watched process, and the whole tracer side (watcher and warm gdb
counted in full) divided by N; tracerd's open fds and its RLIMIT_NOFILE (it keeps one log
open per session).  Then one more process crashes (tests/c/crash.c segv,
watch tracer) among the N: it must be reported (session ``crashed``, report
file on disk) while all N still run, none in tracing stop ('t' in
/proc/PID/stat), all ``attached`` in ``tracerctl --json status``.  Finally
all N are killed, and the bench waits for tracerd to end every session.

Goals printed beside the figures: <= 0.1 MB per watched process; hook p50
<= 40 ms (one at a time).  Prints a table and writes
bench/results/watch_scale.json.

Usage: .venv/bin/python bench/watch_scale.py [--count 1000] [--concurrency 20] [--nofile SOFT[:HARD]]
(``--nofile 1024`` runs tracerd under RLIMIT_NOFILE 1024:1024, as a unit with
LimitNOFILE=1024 would; results then go to watch_scale-nofile1024-1024.json.)
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BIN,
    Crasher,
    TracerCpu,
    compile_c,
    no_core_dumps,
    private_tracerd,
    proc_state,
    reap,
    request,
    save,
    stderr_events,
    stderr_lines,
    summary,
    wait_ended,
    wait_until,
)

GOAL_MB_PER_PROCESS = 0.1
GOAL_P50_MS = 40.0
SEQUENTIAL = 20
NAME = "bench-idle"
ELAPSED = re.compile(r"elapsed_us=(\d+) status=(-?\d+)")


class Target:
    """One bench_idle process; stdout is closed once its one line is read.

    Its stderr (where the hook says why it failed) goes to one file shared by all.
    """

    def __init__(self, exe: Path, hook: str, stderr: int) -> None:
        self.proc = subprocess.Popen(
            [str(exe), hook, NAME], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr
        )
        self.pid = self.proc.pid
        self.elapsed_ms: float | None = None
        self.status: int | None = None

    def take_line(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        self.proc.stdout.close()
        match = ELAPSED.search(line)
        if match:
            self.elapsed_ms = int(match.group(1)) / 1000.0
            self.status = int(match.group(2))
        else:
            self.status = -1000  # ended before saying anything

    def reap(self) -> None:
        reap(self.proc)


@dataclass
class Launcher:
    exe: Path
    hook: str
    out: list[Target]  # every target ever started, to be reaped
    stderr: int

    def __call__(self, count: int, concurrency: int) -> list[Target]:
        return launch(self, count, concurrency)


def launch(how: Launcher, count: int, concurrency: int) -> list[Target]:
    """Start ``count`` targets, at most ``concurrency`` in their hook at once; return them."""
    exe, hook, out, stderr = how.exe, how.hook, how.out, how.stderr
    batch: list[Target] = []
    selector = selectors.DefaultSelector()
    inflight = 0
    try:
        while len(batch) < count or inflight:
            while inflight < concurrency and len(batch) < count:
                target = Target(exe, hook, stderr)
                out.append(target)
                batch.append(target)
                assert target.proc.stdout is not None
                selector.register(target.proc.stdout, selectors.EVENT_READ, target)
                inflight += 1
            ready = selector.select(timeout=120)
            if not ready:
                raise RuntimeError(f"no target finished its hook within 120 s ({inflight} in flight)")
            for key, _ in ready:
                selector.unregister(key.fileobj)
                key.data.take_line()
                inflight -= 1
    finally:
        selector.close()
    return batch


def hook_reasons(path: Path) -> collections.Counter[str]:
    """The hooks' failure lines, counted by reason (pids taken out)."""
    reasons: collections.Counter[str] = collections.Counter()
    for line in path.read_text(errors="replace").splitlines():
        reasons[re.sub(r"\d+", "N", line)] += 1
    return reasons


def tree(daemon: psutil.Process) -> dict[str, Any]:
    """RSS of tracerd and of all its children, and tracerd's open fds."""
    procs = [daemon, *daemon.children(recursive=True)]
    rss = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            rss += proc.memory_info().rss
    watcher = [p for p in procs[1:] if "tracerd.tracers.watch.watcher" in " ".join(p.cmdline())]
    gdbs = [p for p in procs[1:] if p.name() == "gdb"]  # the warm gdb (no crash is being captured)
    return {
        "rss": rss,
        "daemon_rss": daemon.memory_info().rss,
        "watcher_rss": sum(p.memory_info().rss for p in watcher),
        "warm_gdb_rss": sum(p.memory_info().rss for p in gdbs),
        "processes": len(procs),
        "fds": daemon.num_fds(),
    }


def tracerctl_status(sock: Path) -> tuple[dict[str, Any], float]:
    start = time.monotonic()
    out = subprocess.run(
        [str(BIN / "tracerctl"), "--socket", str(sock), "--json", "status"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return json.loads(out.stdout), (time.monotonic() - start) * 1000


def check_running(targets: list[Target], status: dict[str, Any]) -> dict[str, int]:
    """How the N look from /proc and from tracerd."""
    states = {t.pid: proc_state(t.pid) for t in targets}
    sessions = {s["pid"]: s for s in status["sessions"] if s["pid"] in states}
    return {
        "alive": sum(1 for t in targets if t.proc.poll() is None and states[t.pid] not in ("", "Z")),
        "tracing_stop": sum(1 for state in states.values() if state == "t"),
        "stopped": sum(1 for state in states.values() if state == "T"),
        "attached": sum(1 for s in sessions.values() if s["state"] == "attached"),
    }


def crash_one(exe: Path, hook: str, sock: Path, root: Path) -> dict[str, Any]:
    """One more process, watched, crashes; is it reported?"""
    with Crasher([str(exe), hook, "bench-crash", "segv"]) as target:
        result: dict[str, Any] = {"pid": target.pid, "hook": target.line()}
        fault = target.fault()
        gone = target.gone(timeout=60)
        if gone is None:
            raise RuntimeError(f"crashing target {target.pid} not gone within 60 s")
        result["gone_ms"] = (gone - fault) * 1000
        result["status"] = target.proc.returncode
        result.update(state=None, crash=None, report_on_disk=False)
        if result["hook"] != "hook=0":
            return result  # not traced: no session to wait for
        try:
            session = wait_ended(sock, target.pid)
        except AssertionError:  # not ended in time: its state says so
            session = request(sock, "show", pid=target.pid).get("session") or {}
        result["state"] = session.get("state")
        result["crash"] = session.get("crash")
        report = root / "state" / "crashes" / f"{session.get('crash')}.json"
        result["report_on_disk"] = bool(session.get("crash")) and report.exists()
        return result


def wait_sessions_end(sock: Path, start: float, timeout: float = 300.0) -> tuple[float, int]:
    """Seconds from ``start`` until tracerd has no active session, and how many were left then."""
    active = [-1]

    def none_active() -> bool:
        active[0] = int(request(sock, "status")["counters"]["active"])
        return active[0] == 0

    with contextlib.suppress(AssertionError):  # some left: the count says how many
        wait_until(none_active, "no active session", max(0.0, timeout - (time.monotonic() - start)), interval=0.1)
    return time.monotonic() - start, active[0]


def run(args: argparse.Namespace, exe: Path, crash_exe: Path, targets: list[Target], errors: Path) -> dict[str, Any]:
    count = args.count
    sequential = min(SEQUENTIAL, max(1, count // 4))
    extra = f"max_sessions = {max(1024, count + 16)}\n"
    data: dict[str, Any] = {"count": count, "concurrency": args.concurrency, "nofile": args.nofile}
    with private_tracerd(extra, nofile=args.nofile) as (sock, root):
        hook = f"{BIN / 'pftrace-hook'} --socket {sock}"
        daemon = psutil.Process(int(request(sock, "status")["daemon"]["pid"]))
        data["cold"] = tree(daemon)
        data["rlimit_nofile"] = list(resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE))
        stderr = os.open(errors, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            start_targets = Launcher(exe, hook, targets, stderr)
            first = start_targets(1, 1)
            # the first watch session starts the warm gdb: measure "warm" once it is ready
            with contextlib.suppress(AssertionError):
                wait_until(lambda: (request(sock, "status").get("warm_gdb") or {}).get("pid"), "warm gdb", 60.0)
            data["warm"] = tree(daemon)
            first += start_targets(sequential - 1, 1)
            start, cpu, machine = time.monotonic(), TracerCpu(daemon.pid), psutil.cpu_times()
            middle = start_targets(count - 2 * sequential, args.concurrency)
            data["concurrent_seconds"] = time.monotonic() - start
            data["concurrent_tracerd_cpu"] = cpu.since().total
            after = psutil.cpu_times()
            data["concurrent_machine_busy"] = sum(
                getattr(after, f) - getattr(machine, f) for f in ("user", "system", "nice", "irq", "softirq")
            )
            last = start_targets(sequential, 1)
        finally:
            os.close(stderr)
        data["hook_errors"] = dict(hook_reasons(errors))
        time.sleep(1.0)  # let the log writer and the allocator settle
        data["loaded"] = tree(daemon)
        phases = {
            f"one at a time, first {sequential}": first,
            "concurrent": middle,
            f"one at a time, last {sequential}": last,
        }
        data["hooks"] = {
            label: {
                "n": len(batch),
                "failed": sum(1 for t in batch if t.status != 0),
                "ms": summary([t.elapsed_ms for t in batch if t.elapsed_ms is not None]),
            }
            for label, batch in phases.items()
        }
        status, data["status_ms"] = tracerctl_status(sock)
        data["before_crash"] = check_running(targets, status)
        data["crash"] = crash_one(crash_exe, hook, sock, root)
        status, _ = tracerctl_status(sock)
        data["after_crash"] = check_running(targets, status)
        data["counters_before_kill"] = status["counters"]
        killed = time.monotonic()
        for target in targets:
            with contextlib.suppress(ProcessLookupError):
                target.proc.send_signal(signal.SIGKILL)
        for target in targets:
            target.reap()
        data["drain_seconds"], data["active_left"] = wait_sessions_end(sock, killed)
        data["counters_end"] = request(sock, "status")["counters"]
        data["daemon_events"] = dict(stderr_events(root))
        data["daemon_stderr_bytes"] = (root / "stderr").stat().st_size
        data["failure_lines"] = [
            *stderr_lines(root, '"event": "request_refused"', limit=3),
            *stderr_lines(root, '"level": "warning"', limit=3),
            *stderr_lines(root, '"level": "error"', limit=3),
        ]
    return data


def report(data: dict[str, Any]) -> None:
    count = data["count"]
    cold, warm, loaded = data["cold"], data["warm"], data["loaded"]
    per = (loaded["rss"] - warm["rss"]) / max(1, count - 1) / 1e6
    print(f"{count} processes watched at once (watch tracer), concurrency {data['concurrency']} in the middle phase\n")
    print(f"{'memory (tracerd + children)':34} {'RSS MB':>8} {'tracerd':>8} {'watcher':>8} {'fds':>6}")
    for label, row in (("cold: no session, no watcher", cold), ("warm: 1 watched", warm), (f"{count} watched", loaded)):
        print(f"{label:34} {row['rss'] / 1e6:8.1f} {row['daemon_rss'] / 1e6:8.1f} "
              f"{row['watcher_rss'] / 1e6:8.1f} {row['fds']:6d}")  # fmt: skip
    print(f"per watched process: {per:.3f} MB  (goal <= {GOAL_MB_PER_PROCESS} MB)  "
          f"[tracerd {(loaded['daemon_rss'] - warm['daemon_rss']) / max(1, count - 1) / 1e3:.1f} kB, "
          f"watcher {(loaded['watcher_rss'] - warm['watcher_rss']) / max(1, count - 1) / 1e3:.1f} kB]")  # fmt: skip
    whole = (loaded["rss"] - cold["rss"]) / count / 1e6
    print(
        f"per watched process counting the watcher and the warm gdb whole (({count} watched - cold) / {count}): "
        f"{whole:.3f} MB  (goal <= {GOAL_MB_PER_PROCESS} MB) [warm gdb {loaded['warm_gdb_rss'] / 1e6:.1f} MB]"
    )
    soft, hard = data["rlimit_nofile"]
    fds_per = (loaded["fds"] - warm["fds"]) / max(1, count - 1)
    room = f"room for about {int((soft - warm['fds']) / fds_per)} sessions" if fds_per > 0 else "no fd per session"
    print(f"tracerd fds: {fds_per:.2f} per session; its RLIMIT_NOFILE (as it runs) soft {soft} hard {hard}: {room}")
    print(f"\n{'hook latency (time in system())':34} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'failed':>7}")
    for label, row in data["hooks"].items():
        ms = row["ms"]
        goal = f"  (goal p50 <= {GOAL_P50_MS:.0f} ms)" if label.startswith("one") else ""
        print(f"{label:34} {row['n']:5d} {ms['p50']:8.1f} {ms['p95']:8.1f} {ms['max']:8.1f} {row['failed']:7d}{goal}")
    middle = data["hooks"]["concurrent"]["n"]
    seconds = max(data["concurrent_seconds"], 1e-9)
    print(f"concurrent phase: {middle} processes in {seconds:.1f} s ({middle / seconds:.0f}/s); "
          f"CPU busy {data['concurrent_machine_busy'] / seconds * 100:.0f}% of one core on average "
          f"({psutil.cpu_count()} cores), tracerd+watcher "
          f"{data['concurrent_tracerd_cpu'] * 1000 / max(middle, 1):.1f} ms CPU per hook")  # fmt: skip
    print(f"tracerctl --json status with {count} sessions took {data['status_ms']:.0f} ms")
    crash = data["crash"]
    print(f"\none more process crashed among them: {crash['hook']}, exit status {crash['status']}, "
          f"gone {crash['gone_ms']:.0f} ms after the fault; session {crash['state']}, "
          f"report on disk: {crash['report_on_disk']}")  # fmt: skip
    for label in ("before_crash", "after_crash"):
        row = data[label]
        print(f"{label.replace('_', ' '):13}: alive {row['alive']}/{count}, attached {row['attached']}/{count}, "
              f"in tracing stop 't' {row['tracing_stop']}, stopped 'T' {row['stopped']}")  # fmt: skip
    print(f"\nkilled all {count} (SIGKILL): tracerd had ended every session "
          f"{data['drain_seconds']:.2f} s after the kill (active left: {data['active_left']})")  # fmt: skip
    counters = data["counters_end"]
    keys = ("sessions_started", "sessions_failed", "exited", "crashes", "refused")
    print("counters: " + ", ".join(f"{key} {counters[key]}" for key in keys))
    for reason, times in sorted(data["hook_errors"].items(), key=lambda item: -item[1]):
        print(f"hook failed {times}x: {reason}")
    noteworthy = {k: v for k, v in data["daemon_events"].items() if not k.startswith("info") or "refused" in k}
    if noteworthy:
        print(f"tracerd stderr ({data['daemon_stderr_bytes'] / 1e6:.1f} MB), lines that are not info (by count):")
        for key, times in sorted(noteworthy.items(), key=lambda item: -item[1]):
            print(f"  {times:7d}  {key}")
        print("first of them:")
        for line in data["failure_lines"]:
            print(f"  {line[:300]}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000, help="processes watched at once")
    parser.add_argument("--concurrency", type=int, default=20, help="hooks at once in the middle phase")
    parser.add_argument(
        "--nofile", default=None, metavar="SOFT[:HARD]",
        help="tracerd's RLIMIT_NOFILE, HARD defaulting to SOFT as a unit's LimitNOFILE=N (default: inherited)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.nofile:
        soft, _, hard = args.nofile.partition(":")
        args.nofile = (int(soft), int(hard or soft))
    if args.count < 4:
        parser.error("--count must be at least 4")
    no_core_dumps()
    targets: list[Target] = []
    with tempfile.TemporaryDirectory() as tmp:
        exe = compile_c("bench_idle", Path(tmp))
        crash_exe = compile_c("crash", Path(tmp), "-pthread")
        try:
            data = run(args, exe, crash_exe, targets, Path(tmp) / "hook-stderr")
        finally:
            for target in targets:
                target.reap()
    report(data)
    path = save("watch_scale" + ("-nofile{}-{}".format(*args.nofile) if args.nofile else ""), data)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
