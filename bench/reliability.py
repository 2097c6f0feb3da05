"""bench/reliability: the figures of the README's "Reliability" section.

Under the load of the fault tests (100 watched, 10 strace and 5 gdb
sessions, each a process that went through the hook), in one run:

- SIGTERM: time from the signal to tracerd's exit (every session detached,
  every log closed);
- kill -9 of tracerd: time until no process is traced any more (strace and
  gdb end by their parent-death signal, the watcher at end of input), and
  whether any was ever seen in tracing stop;
- fuzzing: 100,000 garbage frames over 10 pipelined connections: time, and
  tracerd's RSS before, at peak (sampled) and after;
- a hostile crash (issue 23): a watched process that dlopen()s a library,
  replaces it by a FIFO and faults (tests/c/fifo_lib.c): the hold (fault to
  death), its signal, and whether the crash report was written with frames.

- 200 watch attaches (then detaches) to processes whose threads come and
  go: failed attaches, tasks left in ptrace-stop, targets that exit 0.

Usage: .venv/bin/python bench/reliability.py [--watched 100] [--churn 200]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import (
    BIN,
    C_DIR,
    compile_c,
    no_core_dumps,
    private_tracerd,
    proc_state,
    reap,
    request,
    save,
    support,
    wait_ended,
    wait_until,
)

from tracerd.procinfo import tracer_pid

RULES = (
    '[[rule]]\nprocess = "gdbload*"\ntracer = "gdb"\n'
    '[[rule]]\nprocess = "straceload*"\ntracer = "strace"\n'
    '[[rule]]\nprocess = "*"\ntracer = "watch"\n'
)


def start_load(exe: Path, sock: Path, watched: int) -> list[subprocess.Popen[bytes]]:
    hook = f"{BIN / 'pftrace-hook'} --socket {sock}"
    names = ["watchload"] * watched + ["straceload"] * 10 + ["gdbload"] * 5
    procs = []
    for name in names:
        proc = subprocess.Popen([str(exe), hook, name, "wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"hook=0\n"
        procs.append(proc)
    return procs


def traced(pid: int) -> bool:
    return tracer_pid(pid) != 0


def end(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        reap(proc)


def reap_orphans() -> None:
    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE and child.name() in ("strace", "gdb", "python", "setpriv"):
                os.waitpid(child.pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError):
            pass


def sigterm_run(exe: Path, watched: int) -> dict[str, float]:
    with private_tracerd(RULES) as (sock, _root):
        procs = start_load(exe, sock, watched)
        pid = request(sock, "status")["daemon"]["pid"]
        daemon = psutil.Process(pid)
        started = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: daemon.status() == psutil.STATUS_ZOMBIE, "tracerd exited", timeout=60, interval=0.005)
        elapsed = time.monotonic() - started
        still = sum(traced(p.pid) for p in procs)
        end(procs)
    return {"sessions": len(procs), "sigterm_exit_s": elapsed, "traced_after_exit": still}


def kill9_run(exe: Path, watched: int) -> dict[str, float]:
    with private_tracerd(RULES) as (sock, _root):
        procs = start_load(exe, sock, watched)
        pid = request(sock, "status")["daemon"]["pid"]
        started = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        seen_tracing_stop = 0
        while any(traced(p.pid) for p in procs):
            seen_tracing_stop += sum(proc_state(p.pid) == "t" for p in procs)
            time.sleep(0.005)
            if time.monotonic() - started > 30:
                break
        elapsed = time.monotonic() - started
        alive = sum(p.poll() is None for p in procs)
        end(procs)
    reap_orphans()
    return {"sessions": len(procs), "untraced_after_s": elapsed, "alive": alive,
            "tracing_stop_samples": seen_tracing_stop}  # fmt: skip


def fuzz_run(frames_per_conn: int = 10_000, conns: int = 10) -> dict[str, float]:
    rng = random.Random(7)
    good = json.dumps({"op": "hook", "name": "smtpd", "pid": 1})

    def frame() -> bytes:
        choice = rng.randrange(5)
        if choice == 0:
            return good[: rng.randrange(1, len(good))].encode() + b"\n"
        if choice == 1:
            return json.dumps({"op": "hook", "name": "a" * rng.randrange(60, 4000), "pid": 5}).encode() + b"\n"
        if choice == 2:
            return bytes(rng.randrange(1, 256) for _ in range(rng.randrange(2, 200))).replace(b"\n", b"x") + b"\n"
        if choice == 3:
            return b"[" * rng.randrange(1, 5000) + b"\n"
        return json.dumps({"op": "show", "pid": rng.choice(["7", 1.5, None, -1])}).encode() + b"\n"

    payloads = [b"".join(frame() for _ in range(frames_per_conn)) for _ in range(conns)]
    with private_tracerd() as (sock, _root):
        daemon = psutil.Process(request(sock, "status")["daemon"]["pid"])
        before = daemon.memory_info().rss
        peak = before
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, daemon.memory_info().rss)
                time.sleep(0.01)

        def client(payload: bytes) -> None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.connect(str(sock))
                sender = threading.Thread(target=conn.sendall, args=(payload,))
                sender.start()
                got = 0
                while got < frames_per_conn:
                    chunk = conn.recv(1 << 20)
                    if not chunk:
                        break
                    got += chunk.count(b"\n")
                sender.join()

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(p,)) for p in payloads]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        done.set()
        sampler.join()
        after = daemon.memory_info().rss
        alive = request(sock, "status")["ok"]
    mb = 2**20
    return {"frames": frames_per_conn * conns, "seconds": elapsed, "rss_before_mb": before / mb,
            "rss_peak_mb": peak / mb, "rss_after_mb": after / mb, "daemon_alive": alive}  # fmt: skip


def fifo_lib_run(tmp: Path) -> dict[str, object]:
    """tests/c/fifo_lib.c under the watch tracer: the hold, and the report."""
    no_core_dumps()  # the target's own fault dumps no core (the watcher writes tracerd's)
    exe = compile_c("fifo_lib", tmp, "-ldl")
    lib = tmp / "libfifo.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-DFIFO_LIB_SO", "-o", str(lib),
                    str(C_DIR / "fifo_lib.c")],
                   check=True)  # fmt: skip
    with private_tracerd('[[rule]]\nprocess = "*"\ntracer = "watch"\n') as (sock, _root):
        hook = f"{BIN / 'pftrace-hook'} --socket {sock}"
        proc = subprocess.Popen([str(exe), hook, "fifolib", str(lib)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"hook=0\n"
        proc.stdin.write(b"x")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"fifo\n"
        fault = time.monotonic()
        status = proc.wait(timeout=120)
        held = time.monotonic() - fault
        reap(proc)
        session = wait_ended(sock, proc.pid, timeout=30)
        crash = session.get("crash")
        frames = 0
        if crash:
            report = request(sock, "crash", id=crash)["crash"]
            frames = sum(len(t["frames"]) for t in report["threads"] if t["crashed"])
    return {"hold_s": held, "signal": -status, "report": bool(crash), "frames": frames}


def churn_run(tmp: Path, attaches: int, at_once: int = 8) -> dict[str, float]:
    """tests/c/churn.c (8 threads created and joined in a loop): watch attach,
    detach; failed attaches, tasks left stopped, targets that exit 0."""
    exe = compile_c("churn", tmp, "-pthread")
    failed = stopped = exited_0 = 0
    began = time.monotonic()
    with private_tracerd('[[rule]]\nprocess = "*"\ntracer = "watch"\n') as (sock, _root):
        done = 0
        while done < attaches:
            batch = [subprocess.Popen([str(exe), "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                     for _ in range(min(at_once, attaches - done))]  # fmt: skip
            for proc in batch:
                assert proc.stdout is not None
                assert proc.stdout.readline() == b"ready\n"
            for proc in batch:
                failed += not request(sock, "attach", pid=proc.pid, name="churn").get("ok")
            for proc in batch:
                request(sock, "detach", pid=proc.pid)
            for proc in batch:
                assert proc.stdin is not None
                proc.stdin.close()  # churn.c ends its loop at EOF
            for proc in batch:
                try:
                    exited_0 += proc.wait(timeout=60) == 0
                except subprocess.TimeoutExpired:
                    stopped += sum(state == "t" for _, state, _ in support.task_states(proc.pid))
                reap(proc)
            done += len(batch)
    return {"attaches": attaches, "failed": failed, "stopped_tasks": stopped, "exited_0": exited_0,
            "seconds": time.monotonic() - began}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--watched", type=int, default=100)
    parser.add_argument("--churn", type=int, default=200, help="watch attaches to churning processes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exe = compile_c("crash", Path(tmp), "-pthread")
        term = sigterm_run(exe, args.watched)
        kill = kill9_run(exe, args.watched)
        fifo = fifo_lib_run(Path(tmp))
        churn = churn_run(Path(tmp), args.churn)
    fuzz = fuzz_run()
    print(f"load: {args.watched} watched + 10 strace + 5 gdb = {term['sessions']:.0f} sessions")
    print(f"SIGTERM -> tracerd exited:           {term['sigterm_exit_s'] * 1000:8.0f} ms  (goal < 5000)"
          f"  still traced after: {term['traced_after_exit']:.0f}")
    print(f"kill -9 -> no process traced:        {kill['untraced_after_s'] * 1000:8.0f} ms  (goal < 2000)"
          f"  alive: {kill['alive']:.0f}/{kill['sessions']:.0f}"
          f"  samples in tracing stop: {kill['tracing_stop_samples']:.0f}")
    print(f"fuzz: {fuzz['frames']:.0f} garbage frames in {fuzz['seconds']:.1f} s;"
          f" RSS {fuzz['rss_before_mb']:.1f} MB before, {fuzz['rss_peak_mb']:.1f} peak,"
          f" {fuzz['rss_after_mb']:.1f} after; daemon alive: {fuzz['daemon_alive']}")
    print(f"library replaced by a FIFO, then a fault: held {fifo['hold_s'] * 1000:8.0f} ms  (goal < 10000)"
          f"  died of signal {fifo['signal']}; report written: {fifo['report']},"
          f" crashed thread's frames: {fifo['frames']}")
    print(f"{churn['attaches']:.0f} watch attaches to churning processes: {churn['failed']:.0f} failed,"
          f" {churn['stopped_tasks']:.0f} tasks left stopped, {churn['exited_0']:.0f} exited 0 on their own"
          f" ({churn['seconds']:.1f} s)")
    path = save("reliability", {"sigterm": term, "kill9": kill, "fuzz": fuzz, "fifo_lib": fifo, "churn": churn})
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
