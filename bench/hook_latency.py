"""bench/hook_latency: what a traced process start costs, and where the time goes.

Every command runs as Postfix's debug_process() runs debugger_command: a
target calls system() (``sh -c "COMMAND NAME PID"``) and times it.  The
commands run interleaved, one round after another, so that all see the same
machine; ratios within one run are what counts on a shared host.

- ``true``: what system() itself costs (sh, fork, exec);
- the compiled hook (what make builds) with ``--version``: + exec and start;
- the hook against a stub server that acknowledges and answers at once:
  + connect, request, two answers (no tracerd);
- the hook against a private tracerd, strace and watch tracers: + tracerd's
  checks and the attach;
- ``PYTHON -I -S -c pass``: the floor of any Python hook (the system
  interpreter), and the Python form of the hook (make's stub, ``-IS``, what
  make writes with no C compiler) in the same steps;
- the same hook module the way a pip entry point runs it (site, the venv,
  the package tracerd): what ``-IS`` saves;
- with ``--seed``: the seed's recipe ``(strace -p PID | logger) & sleep 5``.

The compiled hook measured is .venv/bin/pftrace-hook (make venv's, from
hook/pftrace-hook.c), or ``--hook PATH`` (e.g. /usr/local/sbin/pftrace-hook).
It also times tracerd's checks of a hook request in this process (the
ancestor rule, the traceable rule).

Prints p50/p95 per command and a breakdown, writes bench/results/hook_latency.json.
Usage: .venv/bin/python bench/hook_latency.py [--runs 40] [--hook PATH] [--seed] [--no-save]
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psutil
from common import BIN, TracerCpu, compile_c, private_tracerd, save, summary

from tests.support import StubTracerd, installed_python_hook
from tracerd import procinfo
from tracerd.daemon.auth import Authorizer, Peer

STUB_ANSWER = b'{"ack":true}\n{"ok":true,"session":{}}\n'  # acknowledged and attached at once: no checks
SEED = "PATH=/bin:/usr/bin:/usr/local/bin; (strace -p $PID 2>&1 | logger -p mail.info) & sleep 5 #"


def run_once(exe: Path, command: str, name: str) -> tuple[float, int]:
    """One target; returns (ms spent in system(), the command's status)."""
    proc = subprocess.run([str(exe), command, name], capture_output=True, text=True, timeout=120, check=True)
    match = re.search(r"elapsed_us=(\d+) status=(-?\d+)", proc.stdout)
    assert match, proc.stdout
    return int(match.group(1)) / 1000.0, int(match.group(2))


def interpreter_of(hook: Path) -> str:
    """The interpreter of a #! script, with the flags it is given there."""
    first = hook.read_bytes().split(b"\n", 1)[0].decode()
    assert first.startswith("#!"), f"{hook} is not a #! script"
    return first[2:].strip()


def per_call_us(function: object, runs: int = 2000) -> float:
    """Mean microseconds per call of a no-argument function."""
    assert callable(function)
    started = time.perf_counter()
    for _ in range(runs):
        function()
    return (time.perf_counter() - started) / runs * 1e6


def daemon_checks() -> dict[str, float]:
    """tracerd's checks of a hook request, timed here: the caller is a child of this process."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        me = procinfo.identify(os.getpid())
        caller = Peer(child.pid, 0, 0)
        target = procinfo.identify(child.pid)
        return {
            "identify (one /proc/PID/stat)": per_call_us(lambda: procinfo.identify(child.pid)),
            "ancestor rule (the caller's parents)": per_call_us(lambda: Authorizer.check_ancestor(me, caller)),
            "traceable rule (tracerd's own ancestry)": per_call_us(lambda: Authorizer.check_traceable(target, set())),
        }
    finally:
        child.kill()
        child.wait()


def cpu_per_hook(exe: Path, command: str, config: Path, runs: int) -> dict[str, float]:
    """CPU ms that tracerd and its helpers (the watcher) spend per process, from the hook to the
    session's end: ``runs`` targets hooked one after another, each exiting once its hook returns."""
    tracerd = next(proc for proc in psutil.process_iter(["cmdline"]) if str(config) in (proc.info["cmdline"] or []))
    run_once(exe, command, "benchw")  # the watcher and the warm gdb started
    time.sleep(2)
    cpu = TracerCpu(tracerd.pid)
    for _ in range(runs):
        run_once(exe, command, "benchw")
    time.sleep(0.5)  # the last session's end
    spent = cpu.since()
    return {"tracerd": spent.tracerd / runs * 1000, "watcher and warm gdb": spent.below / runs * 1000}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--hook", type=Path, help="the hook to measure (default: the installed form, see above)")
    parser.add_argument("--seed", action="store_true", help="also the seed's recipe (5 s a run)")
    parser.add_argument("--no-save", action="store_true", help="print only (no bench/results/hook_latency.json)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exe = compile_c("timed_hook", Path(tmp))
        hook = args.hook.resolve() if args.hook else BIN / "pftrace-hook"
        pyhook = installed_python_hook(Path(tmp) / "pftrace-hook.py")
        python = interpreter_of(pyhook).split()[0]
        kind = "compiled" if hook.read_bytes()[:4] == b"\x7fELF" else "a script"
        stub = Path(tmp) / "stub.sock"
        results: dict[str, dict[str, float]] = {}
        failures: dict[str, int] = {}
        rules = '[[rule]]\nprocess = "benchw"\ntracer = "watch"\n[[rule]]\nprocess = "*"\ntracer = "strace"\n'
        with private_tracerd(rules) as (sock, _root), StubTracerd(stub, default=STUB_ANSWER):
            program = "import sys; from tracerd.hook import main; sys.exit(main())"
            entry_point = shlex.join([str(BIN / "python"), "-c", program])
            commands = {
                "true": ("true", "benchd"),
                "hook --version": (f"{hook} --version", "benchd"),
                "hook, stub server (no tracerd)": (f"{hook} --socket {stub}", "benchd"),
                "hook, tracerd (strace)": (f"{hook} --socket {sock}", "benchd"),
                "hook, tracerd (watch)": (f"{hook} --socket {sock}", "benchw"),
                f"{python} -I -S -c pass (floor)": (f"{python} -I -S -c pass", "benchd"),
                "the floor, exiting with os._exit": (f"{python} -I -S -c 'import posix; posix._exit(0)'", "benchd"),
                "python hook --version": (f"{pyhook} --version", "benchd"),
                "python hook, stub server (no tracerd)": (f"{pyhook} --socket {stub}", "benchd"),
                "python hook, tracerd (watch)": (f"{pyhook} --socket {sock}", "benchw"),
                "python hook as a pip entry point (watch)": (f"{entry_point} --socket {sock}", "benchw"),
            }
            if args.seed:
                # the target pid is the last word system() appends; sh's parent is the target
                commands["seed recipe (strace & sleep 5)"] = (SEED.replace("$PID", "$PPID"), "benchd")
            times: dict[str, list[float]] = {label: [] for label in commands}
            failures = dict.fromkeys(commands, 0)
            for command, name in commands.values():
                run_once(exe, command, name)  # warm: page cache, bytecode, tracerd's first session
            for _ in range(args.runs):
                for label, (command, name) in commands.items():
                    elapsed, status = run_once(exe, command, name)
                    times[label].append(elapsed)
                    failures[label] += status != 0
            results = {label: summary(values) for label, values in times.items()}
            cpu = cpu_per_hook(exe, f"{hook} --socket {sock}", _root / "tracerd.toml", args.runs)
        checks = daemon_checks()
    print(f"hook: {hook} ({kind}); python hook: {pyhook} ({python} -IS)\n")
    width = max(44, *(len(label) for label in results))
    print(f"{'command, through system()':{width}} {'p50 ms':>8} {'p95 ms':>8} {'failed':>7}")
    for label, stats in results.items():
        print(f"{label:{width}} {stats['p50']:8.1f} {stats['p95']:8.1f} {failures[label]:7d}")
    p50 = {label: stats["p50"] for label, stats in results.items()}
    floor, hook_watch = p50[f"{python} -I -S -c pass (floor)"], p50["hook, tracerd (watch)"]
    stub, py_stub = p50["hook, stub server (no tracerd)"], p50["python hook, stub server (no tracerd)"]
    quick, py_watch = p50["the floor, exiting with os._exit"], p50["python hook, tracerd (watch)"]
    breakdown = {
        "sh -c, fork, exec (true)": p50["true"],
        "compiled hook: exec and start (--version - true)": p50["hook --version"] - p50["true"],
        "compiled hook: connect, request, answers (stub - --version)": stub - p50["hook --version"],
        "tracerd: checks + strace attach (strace - stub)": p50["hook, tracerd (strace)"] - stub,
        "tracerd: checks + watch seize (watch - stub)": hook_watch - stub,
        "python: interpreter start-up (floor exiting at once - true)": quick - p50["true"],
        "python: interpreter finalization (floor - floor exiting at once)": floor - quick,
        "python: loading the hook (--version - floor exiting at once)": p50["python hook --version"] - quick,
        "python: connect, request, answers (stub - --version)": py_stub - p50["python hook --version"],
        "python: site, venv, package (entry point - python hook, watch)":
            p50["python hook as a pip entry point (watch)"] - py_watch,
    }  # fmt: skip
    print("\nbreakdown (differences of p50s, ms):")
    for label, value in breakdown.items():
        print(f"  {label:66} {value:6.1f}")
    print("\ntracerd's checks of one hook request, timed in-process (µs per call):")
    for label, value in checks.items():
        print(f"  {label:66} {value:6.1f}")
    print("\nCPU per watched process, hook to session end (ms):")
    for label, value in cpu.items():
        print(f"  {label:66} {value:6.2f}")
    print(f"\nhook (watch) p50 {hook_watch:.1f} ms = {hook_watch / floor:.2f}x the floor ({floor:.1f} ms);"
          f" the Python form {py_watch:.1f} ms = {py_watch / floor:.2f}x the floor")  # fmt: skip
    data: dict[str, object] = {"runs": args.runs, "hook": str(hook), "results": results, "failures": failures,
                               "breakdown_ms": breakdown, "daemon_checks_us": checks,
                               "cpu_ms_per_process": cpu}  # fmt: skip
    if not args.no_save:
        print(f"saved {save('hook_latency', data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
