"""bench/postfix: a private Postfix instance's smtpd, untraced and traced.

Six ways to run smtpd, alternated run by run (5 runs each) on one private
instance (tests/postfix_instance.py; master started and stopped for each run):

- untraced:         smtpd without -D;
- tracerd watch:    smtpd -D, ``pftrace-hook --tracer watch``;
- tracerd strace:   smtpd -D, ``pftrace-hook --tracer strace``;
- tracerd perf:     smtpd -D, ``pftrace-hook --tracer perf`` (needs tracefs);
- tracerd syscount: smtpd -D, ``pftrace-hook --tracer syscount`` (bpftrace; docs/syscount.md);
- seed gdb recipe:  smtpd -D, DEBUG_README's
  ``(echo cont; echo where; sleep 8640000) | gdb ... & sleep 5``.

Per run, three figures:

- banner delay: from connect() to the 220 banner on a connection that makes
  master start a new smtpd (every smtpd alive is first given a client of its
  own, and the serving pid is checked to be new);
- throughput: ``smtp-source -s 10 -m 1000`` (one SMTP session per message,
  10 in parallel) wall time, as messages per second; every message is then
  waited for in the maillog (``status=sent``, discard transport);
- steady state: the same throughput with no smtpd starting: master runs
  at most ``--sessions`` smtpd (process_limit) with ``-o max_use=1000000``, a
  warm-up of as many clients at once, then of ``--warmup`` messages starts
  (and gets traced) every smtpd first, then the measured messages are served by
  those same processes (new smtpd pids during the measure are counted and
  printed: they should be 0).

Each mode's ratio to untraced is taken run by run (the same run's untraced
figure), and the table shows the median ratio.

The bench is a child subreaper: Postfix's processes and the recipe's gdb,
sleep and subshells come back to it, and it kills and reaps every one of them
(the recipe's ``sleep 8640000`` never ends by itself, and a gdb keeps its
smtpd stopped at master's SIGTERM).  Prints a table and writes
bench/results/postfix.json.
Usage: .venv/bin/python bench/postfix.py [--runs 5] [--messages 1000] [--sessions 10]
       [--warmup 200] [--modes untraced,watch,strace,perf,syscount,recipe]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import BIN, ENDED, TracerCpu, no_core_dumps, private_tracerd, request, save, summary, wait_until

from tests import support
from tests.postfix_instance import PostfixInstance, available

PR_SET_CHILD_SUBREAPER = 36
SEED_GDB = (
    "PATH=/bin:/usr/bin:/usr/local/bin; export PATH; (echo cont; echo where; sleep 8640000) | "
    "gdb $daemon_directory/$process_name $process_id 2>&1 >$config_directory/$process_name.$process_id.log & sleep 5"
)
# what each run measures per mode, in the order one_run and steady_run give them
SERIES = ("rates", "delays", "run_cpu", "run_tracer", "steady", "starts", "tracer_ms", "busy", "lines")
MODES = ("untraced", "tracerd watch", "tracerd strace", "tracerd perf", "tracerd syscount", "seed gdb recipe")
SHORT = {"untraced": "untraced", "tracerd watch": "watch", "tracerd strace": "strace", "tracerd perf": "perf",
         "tracerd syscount": "syscount", "seed gdb recipe": "recipe"}  # fmt: skip
STEADY_MAX_USE = 1000000


def debugger_command(mode: str, sock: Path) -> str | None:
    if mode == "untraced":
        return None
    if mode == "seed gdb recipe":
        return SEED_GDB
    return f"{BIN / 'pftrace-hook'} --socket {sock} --tracer {mode.split()[1]} $process_name $process_id"


def configure(instance: PostfixInstance, command: str | None, steady: int = 0) -> None:
    """-D and debugger_command for the next run (master is stopped).

    ``steady``: that many smtpd at most (master.cf process_limit), each serving on
    (max_use), so that once all are started no new one starts.
    """
    service = f"{instance.listen}/inet/command"
    smtpd = "smtpd -D" if command else "smtpd"
    if steady:
        smtpd += f" -o max_use={STEADY_MAX_USE}"
    instance.postconf("-F", f"{service}={smtpd}")
    instance.postconf("-F", f"{instance.listen}/inet/process_limit={steady or '-'}")
    if command:
        instance.postconf("-e", f"debugger_command={command}")
    else:
        instance.postconf("-X", "debugger_command")
    with contextlib.suppress(FileNotFoundError):
        instance.maillog.unlink()


def serving_pid(instance: PostfixInstance, conn: socket.socket) -> int | None:
    port = conn.getsockname()[1]
    for proc in instance.processes("smtpd"):
        with contextlib.suppress(psutil.Error):
            if any(c.raddr and c.raddr.port == port for c in proc.net_connections("tcp")):
                return proc.pid
    return None


def banner_delay(instance: PostfixInstance) -> float:
    """ms from connect() to the banner, served by an smtpd started for it."""
    held: list[socket.socket] = []
    try:
        for _ in range(5):
            # give every smtpd alive a client, so that only a new one can answer
            for _proc in instance.processes("smtpd"):
                conn = socket.create_connection(("127.0.0.1", instance.port), timeout=60)
                held.append(conn)
                conn.makefile("rb").readline()
            before = {p.pid for p in instance.processes("smtpd")}
            start = time.monotonic()
            conn = socket.create_connection(("127.0.0.1", instance.port), timeout=60)
            held.append(conn)
            line = conn.makefile("rb").readline()
            elapsed = (time.monotonic() - start) * 1000
            assert line.startswith(b"220 "), line
            pid = serving_pid(instance, conn)
            if pid is not None and pid not in before:
                return elapsed
        raise AssertionError("no connection was served by a new smtpd in 5 tries")
    finally:
        for conn in held:
            conn.close()


def throughput(instance: PostfixInstance, messages: int, sessions: int, already: int = 0) -> float:
    """msg/s of ``messages`` sent ``sessions`` at a time, until all are sent (``already`` were before)."""
    start = time.monotonic()
    subprocess.run(
        ["smtp-source", "-s", str(sessions), "-m", str(messages), "-f", "sender@example.com",
         "-t", "rcpt@example.com", instance.listen],
        check=True, timeout=600, capture_output=True,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    instance.wait_log("status=sent", count=already + messages, timeout=300)
    return messages / elapsed


def start_all(instance: PostfixInstance, count: int) -> None:
    """Make master start ``count`` smtpd: as many clients at once, each waiting for its banner."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            held.append(socket.create_connection(("127.0.0.1", instance.port), timeout=60))
        for conn in held:
            line = conn.makefile("rb").readline()
            assert line.startswith(b"220 "), line
    finally:
        for conn in held:
            conn.close()


@dataclasses.dataclass
class Steady:
    """One steady-state measure: msg/s; new smtpd meanwhile (should be 0); the tracer's CPU ms per
    message; the machine's busy fraction; trace lines per message in the sessions' logs."""

    rate: float
    new: int
    cpu_ms: float
    busy: float
    lines: float


def log_lines(sock: Path) -> int:
    """Lines written so far to the logs of the attached sessions."""
    return sum(int(s["lines"]) for s in request(sock, "status")["sessions"] if s["state"] == "attached")


def steady_throughput(instance: PostfixInstance, args: argparse.Namespace, sock: Path, tracerd_pid: int) -> Steady:
    """The steady state, once every smtpd runs (and is traced) already."""
    start_all(instance, args.sessions)
    throughput(instance, args.warmup, args.sessions)
    before = {p.pid for p in instance.processes("smtpd")}
    lines = log_lines(sock)
    cpu = TracerCpu(tracerd_pid)
    rate = throughput(instance, args.messages, args.sessions, already=args.warmup)
    spent = cpu.since()
    time.sleep(1.5)  # the perf tracer prints each second's recording a second later
    lines = log_lines(sock) - lines
    # every smtpd that served is still alive (max_use): the new pids are the ones started meanwhile
    new = {p.pid for p in instance.processes("smtpd")} - before
    return Steady(rate, len(new), spent.total / args.messages * 1000, spent.busy, lines / args.messages)


def kill_recipe_leftovers(tracerd_pid: int | None = None) -> int:
    """Kill the recipe's gdb first (it lets its smtpd go), then its sleeps; never tracerd's own
    (its warm gdb: killing it made tracerd start another, in the next measure, at every run)."""
    killed = 0
    for names in (("gdb",), ("sleep",)):
        spared = set()
        with contextlib.suppress(psutil.Error):
            if tracerd_pid is not None:
                spared = {proc.pid for proc in psutil.Process(tracerd_pid).children(recursive=True)}
        for proc in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if proc.name() in names and proc.pid not in spared:
                    proc.kill()
                    killed += 1
    return killed


def reap_all(keep: int, timeout: float = 30.0) -> None:
    """Wait for, and reap, every child but ``keep`` (tracerd, a Popen of common.py)."""
    def reaped() -> bool:
        others = [p for p in psutil.Process().children() if p.pid != keep]
        for proc in others:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(proc.pid, os.WNOHANG)
        return not others

    try:
        wait_until(reaped, "every child reaped", timeout)
    except AssertionError:
        left = [(p.pid, p.name()) for p in psutil.Process().children() if p.pid != keep]
        raise AssertionError(f"children left after {timeout} s: {left}") from None


def children_cpu() -> float:
    """CPU seconds of every descendant this process has reaped: as a child subreaper, that is all
    of Postfix (master reaps its daemons, and each daemon the hook its system() ran) and
    smtp-source, once master is stopped and reaped."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def drained(sock: Path, timeout: float = 120.0) -> None:
    """Wait until tracerd has no session attaching or attached: each ended, its tracer gone."""
    def idle() -> bool:
        return all(s["state"] in ENDED for s in request(sock, "status")["sessions"])

    wait_until(idle, "every session of the run ended", timeout)
    time.sleep(0.2)  # the tracer processes reaped


def one_run(instance: PostfixInstance, mode: str, sock: Path, args: argparse.Namespace, tracerd_pid: int) -> tuple[
        float, float, float, float]:  # fmt: skip
    """msg/s and banner ms with smtpd starting as Postfix starts them; the CPU ms per message of
    everything (Postfix, the hooks, smtp-source, tracerd and its tracers), and of the tracer alone."""
    configure(instance, debugger_command(mode, sock))
    reaped, cpu = children_cpu(), TracerCpu(tracerd_pid)
    instance.start(timeout=60)
    try:
        delay = banner_delay(instance)
        rate = throughput(instance, args.messages, args.sessions)
    finally:
        stop(instance, tracerd_pid)
    drained(sock)  # the last sessions' end in tracerd (perf's takes seconds), inside this run's measure
    tracer = cpu.since().total
    everything = children_cpu() - reaped + tracer
    return rate, delay, everything / args.messages * 1000, tracer / args.messages * 1000


def steady_run(instance: PostfixInstance, mode: str, sock: Path, args: argparse.Namespace,
               tracerd_pid: int) -> Steady:  # fmt: skip
    configure(instance, debugger_command(mode, sock), steady=args.sessions)
    instance.start(timeout=60)
    try:
        return steady_throughput(instance, args, sock, tracerd_pid)
    finally:
        stop(instance, tracerd_pid)
        drained(sock)  # not in the next run's measure


def stop(instance: PostfixInstance, tracerd_pid: int) -> None:
    kill_recipe_leftovers(tracerd_pid)
    instance.stop()
    kill_recipe_leftovers(tracerd_pid)  # a subshell's sleep whose gdb was gone already
    reap_all(keep=tracerd_pid)


def ratios(rates: dict[str, list[float]], mode: str) -> dict[str, float] | None:
    """The mode's rate over the same run's untraced rate, run by run, summarized."""
    base = rates.get("untraced")
    if not base or not rates[mode]:
        return None
    return summary([rate / untraced for rate, untraced in zip(rates[mode], base, strict=False)])


def print_tables(args: argparse.Namespace, modes: list[str], series: dict[str, dict[str, list[Any]]]) -> None:
    """The run's tables: throughput, banner delay and steady state per mode, then the tracer's CPU."""
    rates, delays, steady, starts = series["rates"], series["delays"], series["steady"], series["starts"]
    print(f"\nsmtp-source -s {args.sessions} -m {args.messages}, {args.runs} runs per mode, alternated;"
          f" steady state after {args.warmup} warm-up messages\n")  # fmt: skip
    print(f"{'smtpd':18} {'msg/s p50':>10} {'min':>8} {'max':>8} {'ratio':>6} {'mean':>5}   {'banner ms p50':>13}"
          f" {'min':>8} {'max':>8}   {'steady p50':>10} {'ratio':>6} {'mean':>5} {'starts':>6}")  # fmt: skip
    for mode in modes:
        rate, delay, still = summary(rates[mode]), summary(delays[mode]), summary(steady[mode])
        ratio, still_ratio = ratios(rates, mode) or {"p50": 0.0}, ratios(steady, mode) or {"p50": 0.0}
        print(f"{mode:18} {rate['p50']:10.1f} {rate['min']:8.1f} {rate['max']:8.1f} {ratio['p50']:6.2f}"
              f" {ratio.get('mean', 0.0):5.2f}   "
              f"{delay['p50']:13.1f} {delay['min']:8.1f} {delay['max']:8.1f}   "
              f"{still['p50']:10.1f} {still_ratio['p50']:6.2f} {still_ratio.get('mean', 0.0):5.2f}"
              f" {sum(starts[mode]):6}")  # fmt: skip
    print_cpu(modes, series)


def print_cpu(modes: list[str], series: dict[str, dict[str, list[Any]]]) -> None:
    """CPU per message: with smtpd starts, of everything and of the tracer (tracerd and its
    children); at steady state, the tracer's, the trace lines per message, and how busy the machine
    was (what the tracer takes, Postfix no longer has)."""
    print(f"\n{'CPU ms per message':18} {'all p50':>8} {'more':>6} {'tracer':>7}   {'steady: tracer':>14}"
          f" {'lines/msg':>9} {'machine busy':>12}")  # fmt: skip
    base = summary(series["run_cpu"]["untraced"])["p50"] if "untraced" in modes else 0.0
    for mode in modes:
        run_cpu, run_tracer, cpu, lines, busy = (summary(series[key][mode])["p50"] for key in
                                                 ("run_cpu", "run_tracer", "tracer_ms", "lines", "busy"))  # fmt: skip
        print(f"{mode:18} {run_cpu:8.2f} {run_cpu - base:+6.2f} {run_tracer:7.2f}   {cpu:14.2f} {lines:9.0f}"
              f" {busy:12.0%}")  # fmt: skip


def print_failed(failed: list[dict[str, Any]]) -> None:
    """Failed sessions by tracer: that many processes of that mode ran untraced."""
    by_tracer: dict[str, list[dict[str, Any]]] = {}
    for session in failed:
        by_tracer.setdefault(session["tracer"], []).append(session)
    for tracer, sessions in by_tracer.items():
        print(f"  {tracer}: {len(sessions)} failed (its processes ran untraced), e.g.")
        for session in sessions[:3]:
            print(f"    {session['name']}[{session['pid']}]: {session['error']}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=200, help="messages before a steady-state measure")
    parser.add_argument("--modes", default="untraced,watch,strace,perf,recipe",
                        help="comma-separated: untraced, watch, strace, perf, syscount, recipe")  # fmt: skip
    args = parser.parse_args()
    modes = [m for m in MODES if SHORT[m] in args.modes.split(",")]
    if "untraced" not in modes:
        modes.insert(0, "untraced")  # the baseline of every ratio
    if not available() or shutil.which("smtp-source") is None:
        print("bench/postfix: Postfix (master, postconf, smtp-source) is not installed", file=sys.stderr)
        return 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("bench/postfix: cannot become a child subreaper", file=sys.stderr)
        return 1
    no_core_dumps()
    series: dict[str, dict[str, list[Any]]] = {key: {mode: [] for mode in modes} for key in SERIES}
    root = Path(tempfile.mkdtemp(prefix="tracerd-bench-postfix-"))
    try:
        instance = PostfixInstance(root)
        instance.create()
        perf = support.tracefs_mounted() if "tracerd perf" in modes else contextlib.nullcontext(None)
        with perf, private_tracerd() as (sock, _tracerd_root):
            tracerd_pid = int(request(sock, "status")["daemon"]["pid"])
            for run in range(args.runs):
                for mode in modes:
                    rate, delay, run_cpu, run_tracer = one_run(instance, mode, sock, args, tracerd_pid)
                    still = steady_run(instance, mode, sock, args, tracerd_pid)
                    values = (rate, delay, run_cpu, run_tracer, still.rate, still.new, still.cpu_ms, still.busy,
                              still.lines)  # fmt: skip
                    for key, value in zip(SERIES, values, strict=True):
                        series[key][mode].append(value)
                    print(f"run {run + 1}/{args.runs} {mode:16} {rate:8.1f} msg/s  banner {delay:8.1f} ms"
                          f"  CPU {run_cpu:.2f} ms/msg (tracer {run_tracer:.2f})"
                          f"  steady {still.rate:8.1f} msg/s ({still.new} smtpd started, tracer {still.cpu_ms:.2f}"
                          f" CPU ms/msg, {still.lines:.0f} lines/msg, machine {still.busy:.0%} busy)",
                          flush=True)  # fmt: skip
            status = request(sock, "status")
            counters = status["counters"]
            failed = [s for s in status["sessions"] if s["state"] == "failed"]
    finally:
        kill_recipe_leftovers()
        shutil.rmtree(root, ignore_errors=True)
    print_tables(args, modes, series)
    print(f"\ntracerd: {counters['sessions_started']} sessions, {counters['sessions_failed']} failed")
    print_failed(failed)
    rates, steady = series["rates"], series["steady"]
    path = save("postfix", {"runs": args.runs, "messages": args.messages, "sessions": args.sessions,
                            "warmup": args.warmup,
                            "throughput": {m: summary(v) for m, v in rates.items()},
                            "ratio": {m: ratios(rates, m) for m in rates},
                            "steady_throughput": {m: summary(v) for m, v in steady.items()},
                            "steady_ratio": {m: ratios(steady, m) for m in steady},
                            "steady_new_smtpd": {m: sum(v) for m, v in series["starts"].items()},
                            "steady_tracer_cpu_ms_per_msg": {m: summary(v) for m, v in series["tracer_ms"].items()},
                            "steady_machine_busy": {m: summary(v) for m, v in series["busy"].items()},
                            "steady_lines_per_msg": {m: summary(v) for m, v in series["lines"].items()},
                            "cpu_ms_per_msg": {m: summary(v) for m, v in series["run_cpu"].items()},
                            "tracer_cpu_ms_per_msg": {m: summary(v) for m, v in series["run_tracer"].items()},
                            "banner_ms": {m: summary(v) for m, v in series["delays"].items()},
                            "tracerd_counters": counters, "failed_sessions": failed})  # fmt: skip
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly (finally blocks) on SIGTERM too
    sys.exit(main())
