"""bench/handoff: tracerctl gdb's hand-back window and the delay --next adds.

Hand-back window: a watched target (tests/c/crash.c, MODE wait) is handed to
``tracerctl gdb PID`` on a pseudo-terminal; at the gdb prompt the bench
starts sampling /proc/PID/status as fast as it can (TracerPid and State),
types ``detach``, and waits until the watcher holds the process again.  The
window is the time from the first sample with TracerPid 0 to the first with
the watcher's pid; "running untraced" counts the samples, inside it, whose
State was not T (stopped): the contract is that there are none, since gdb's
hook-detach stops the process before it lets go.

--next added delay: a hooked target is started while ``tracerctl gdb --next
NAME`` is armed; at the gdb prompt the bench types ``continue`` at once.  The
delay is from the target's start to the hook's return (the target prints
``hook=0``), minus the human's time (gdb prompt shown -> ``continue`` sent);
the baseline, in the same run, is the same target with no catch (plain watch).

A round whose untraced stretch fell between two samples (the sampler shares
two busy cores) is counted as missed and run again; tracerd's own figure
for every hand-back (``untraced_ms`` of its ``handed_back`` log line: from
the poll that saw TracerPid 0 to the tracer attached) is summarised too.

Prints a table and writes bench/results/handoff.json.
Usage: .venv/bin/python bench/handoff.py [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pexpect
from common import BIN, compile_c, private_tracerd, reap, request, save, stderr_lines, summary, wait_until

PROMPT = r"\(gdb\) "


def status_of(pid: int) -> tuple[int, str]:
    with open(f"/proc/{pid}/status", "rb") as status:
        text = status.read()
    tracer = int(text.split(b"TracerPid:", 1)[1].split(b"\n", 1)[0])
    state = text.split(b"State:", 1)[1].split()[0].decode()
    return tracer, state


def tracerctl(sock: Path, *args: str) -> pexpect.spawn:
    return pexpect.spawn(str(BIN / "tracerctl"), ["--socket", str(sock), "gdb", *args], encoding="utf-8",
                         timeout=60, env={**os.environ, "TERM": "dumb"})  # fmt: skip


def hooked(binary: Path, sock: Path, name: str) -> subprocess.Popen[bytes]:
    hook = f"{BIN / 'pftrace-hook'} --socket {sock} --timeout 30"
    return subprocess.Popen([str(binary), hook, name, "wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            bufsize=0)  # fmt: skip


def read_line(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().decode()


def hand_back(sock: Path, pid: int, watcher: int) -> tuple[float, int]:
    """One hand-off and hand-back; (untraced ms, samples running untraced)."""
    child = tracerctl(sock, str(pid))
    child.expect(PROMPT)
    samples: list[tuple[float, int, str]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            tracer, state = status_of(pid)
            samples.append((time.monotonic(), tracer, state))
            if tracer == watcher and any(t == 0 for _, t, _ in samples[-200:]):
                return

    thread = threading.Thread(target=sample)
    thread.start()
    child.sendline("detach")
    child.expect(PROMPT)
    child.sendline("quit")
    child.expect(pexpect.EOF)
    child.close()
    thread.join(timeout=15)
    done.set()
    untraced = [(at, state) for at, tracer, state in samples if tracer == 0]
    back = next((at for at, tracer, _ in samples if tracer == watcher and untraced and at > untraced[0][0]), None)
    if back is None:
        raise Missed(f"no untraced stretch seen: {sorted({tracer for _, tracer, _ in samples})}")
    running = sum(1 for _, state in untraced if state != "T")
    return (back - untraced[0][0]) * 1000, running


class Missed(Exception):
    """The sampler did not see the way back (counted, not measured)."""


def next_delay(sock: Path, binary: Path, name: str) -> float:
    """One --next catch: ms from start to the hook's return, minus the human's time."""
    child = tracerctl(sock, "--next", name, "--hold", "30")
    child.expect("armed")
    started = time.monotonic()
    target = hooked(binary, sock, name)
    try:
        child.expect(PROMPT)
        prompt = time.monotonic()
        child.sendline("continue")
        sent = time.monotonic()
        assert read_line(target) == "hook=0\n"
        returned = time.monotonic()
        child.sendcontrol("c")
        child.expect(PROMPT)
        child.sendline("quit")
        child.expect(pexpect.EOF)
        child.close()
        wait_until(lambda: status_of(target.pid)[0] != 0, "watched again")
    finally:
        reap(target)
    return ((returned - started) - (sent - prompt)) * 1000


def plain_hook(sock: Path, binary: Path, name: str) -> float:
    started = time.monotonic()
    target = hooked(binary, sock, name)
    try:
        assert read_line(target) == "hook=0\n"
        return (time.monotonic() - started) * 1000
    finally:
        reap(target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with private_tracerd('default_tracer = "watch"') as (sock, root):
        binary = compile_c("crash", root, "-pthread")
        target = hooked(binary, sock, "benchd")
        try:
            assert read_line(target) == "hook=0\n"
            windows, running, missed = [], 0, 0
            while len(windows) < args.runs:
                watcher = int(request(sock, "show", pid=target.pid)["session"]["tracer_pid"] or 0)
                try:
                    window, moving = hand_back(sock, target.pid, watcher)
                except Missed as err:
                    print(f"missed: {err}", file=sys.stderr)
                    missed += 1
                    continue
                wait_until(lambda: request(sock, "show", pid=target.pid)["session"]["state"] == "attached",
                           "session attached")  # fmt: skip
                windows.append(window)
                running += moving
        finally:
            reap(target)
        # tracerd's own measure: from the look that saw TracerPid 0 to the tracer attached
        # (up to one POLL, 2 ms, after gdb let go)
        logged = [float(json.loads(line)["untraced_ms"]) for line in stderr_lines(root, '"handed_back"', limit=1000)]
        caught, plain = [], []
        for _ in range(args.runs):
            plain.append(plain_hook(sock, binary, "benchd"))
            caught.append(next_delay(sock, binary, "benchd"))
    result = {
        "handback_untraced_ms": summary(windows),
        "handback_untraced_ms_tracerd_log": summary(logged),
        "handback_running_untraced_samples": running,
        "handback_missed": missed,
        "hook_ms_plain": summary(plain),
        "hook_ms_next_minus_human": summary(caught),
    }
    print(f"{'':34} {'p50':>8} {'p95':>8} {'max':>8}")
    for key in ("handback_untraced_ms", "handback_untraced_ms_tracerd_log", "hook_ms_plain",
                "hook_ms_next_minus_human"):
        row = result[key]
        assert isinstance(row, dict)
        print(f"{key:34} {row['p50']:8.2f} {row['p95']:8.2f} {row['max']:8.2f}")
    print(f"samples in state R while untraced on the way back: {running}; rounds not seen: {missed}")
    print(f"wrote {save('handoff', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
