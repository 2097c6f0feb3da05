"""bench/restart: a tracerd restart with N watched processes (docs/design.md, "Reliability").

Socket activation is emulated as systemd does it: the bench binds the
listening socket (as tracerd.socket's ListenStream= would), keeps it across
the restart, and starts each tracerd with it as fd 3, LISTEN_FDS=1 and
LISTEN_PID its own pid.  N targets (tests/c/bench_idle.c, default 1000) are
started through pftrace-hook with the watch tracer, 20 at a time, and
sessions.json is awaited until it lists all N.  Then tracerd gets SIGTERM
(``--kill9``: SIGKILL) and, once it has exited, a new one is started at once
(as ``systemctl restart`` or Restart=on-failure does; RestartSec is left
out).  From SIGTERM until every one of the N is watched again, one more
target starts every ``--storm-interval`` seconds, its hook with the default
waits (--ack-timeout 1.5 s, --timeout 15 s), as Postfix would start daemons
meanwhile (at most ``--storm-max``, 100: on an overloaded machine an
unbounded storm only feeds the overload).

Figures: SIGTERM to exit; exec to READY=1 and exec to the first accept
(tracerd's own ``first_accept`` line: time since its exec), printed beside
the hook's 1.5 s acknowledgement wait; SIGTERM to first accept (the gap a
hook waits in the backlog); exec to all N watched again (``readopted`` = N,
every one with a TracerPid); the hooks started during the restart and how
many were refused (goal 0) with their longest time in system().  Writes
bench/results/restart.json (restart-kill9.json with --kill9).

Usage: .venv/bin/python bench/restart.py [--count 1000] [--concurrency 20] [--storm-interval 0.05]
[--storm-max 100] [--kill9]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BIN, compile_c, request, save, stderr_events, wait_until
from watch_scale import Launcher, Target, hook_reasons

from tests.support import activated, listening_socket, script, tracer_pid
from tracerd.hook import DEFAULT_ACK_TIMEOUT

GOAL_REFUSED = 0


class Tracerd:
    """One socket-activated tracerd of the bench's."""

    def __init__(self, root: Path, config: Path, listener: socket.socket) -> None:
        self.root, self.config, self.listener = root, config, listener
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> tuple[float, float]:
        """Exec it; return (monotonic time of the exec, seconds until READY=1)."""
        notify_path = self.root / "notify"
        with contextlib.suppress(FileNotFoundError):
            notify_path.unlink()
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        notify.settimeout(60)
        env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
        argv = activated(self.listener.fileno(), [*script("tracerd"), "--config", str(self.config)])
        with open(self.root / "stderr", "ab") as stderr:
            began = time.monotonic()
            self.proc = subprocess.Popen(argv, env=env, stderr=stderr, pass_fds=(self.listener.fileno(),))
        try:
            assert notify.recv(64) == b"READY=1"
        except BaseException:
            print((self.root / "stderr").read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        finally:
            notify.close()
        return began, time.monotonic() - began

    def stop(self, signum: int = signal.SIGTERM) -> float:
        """Signal it and wait for its exit; the seconds that took."""
        assert self.proc is not None
        began = time.monotonic()
        self.proc.send_signal(signum)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return time.monotonic() - began


def first_accepts(root: Path) -> list[int]:
    """since_exec_ms of every first_accept line in the daemons' stderr, in order."""
    found = []
    for line in (root / "stderr").read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("event") == "first_accept":
                found.append(int(record["since_exec_ms"]))
    return found


def readopt_done(root: Path) -> int:
    """How many readopt_done lines the daemons wrote (one per start with a sessions.json)."""
    return (root / "stderr").read_text(errors="replace").count('"event": "readopt_done"')


def readopt_failures(root: Path) -> dict[str, int]:
    """Why re-adoptions failed (readopt_failed lines), counted by reason with the numbers out."""
    reasons: collections.Counter[str] = collections.Counter()
    for line in (root / "stderr").read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("event") == "readopt_failed":
                reasons[re.sub(r"\d+", "N", str(record.get("error")))] += 1
    return dict(reasons)


def listed(state_dir: Path) -> int:
    try:
        return len(json.loads((state_dir / "sessions.json").read_text())["sessions"])
    except (OSError, ValueError, KeyError):
        return 0


class Storm:
    """One more hooked target every ``interval`` s until stopped: Postfix starting daemons."""

    def __init__(self, launcher: Launcher, interval: float, most: int) -> None:
        self.launcher, self.interval, self.most = launcher, interval, most
        self.started: list[Target] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.started) < self.most:
            target = Target(self.launcher.exe, self.launcher.hook, self.launcher.stderr)
            self.launcher.out.append(target)
            self.started.append(target)
            self._stop.wait(self.interval)

    def __enter__(self) -> Storm:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for target in self.started:
            target.take_line()  # bounded by the hook's own --timeout


def run(args: argparse.Namespace, root: Path, targets: list[Target]) -> dict[str, Any]:
    sock, state_dir = root / "tracerd.sock", root / "state"
    config = root / "tracerd.toml"
    config.write_text(
        f'socket = "{sock}"\nlog_dir = "{root / "log"}"\nstate_dir = "{state_dir}"\n'
        f'default_tracer = "watch"\nmax_sessions = {args.count + 4096}\n[syslog]\nenabled = false\n'
    )
    exe = compile_c("bench_idle", root)
    hook = f"{BIN / 'pftrace-hook'} --socket {sock} --syslog {root / 'no-syslog'}"
    errors = root / "hook-errors"
    listener = listening_socket(sock)
    daemon = Tracerd(root, config, listener)
    data: dict[str, Any] = {"count": args.count, "kill9": args.kill9, "hook_ack_timeout_s": DEFAULT_ACK_TIMEOUT}
    stderr = os.open(errors, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        _, data["cold_exec_to_ready_s"] = daemon.start()
        launcher = Launcher(exe, hook, targets, stderr)
        load = launcher(args.count, args.concurrency)
        data["load_hooks_failed"] = sum(1 for t in load if t.status != 0)
        wait_until(lambda: listed(state_dir) >= args.count, f"sessions.json listing {args.count}", 120, 0.1)
        data["load_average_before"] = os.getloadavg()
        with Storm(launcher, args.storm_interval, args.storm_max) as storm:
            sigterm = time.monotonic()
            data["stop_s"] = daemon.stop(signal.SIGKILL if args.kill9 else signal.SIGTERM)
            exec_at, data["exec_to_ready_s"] = daemon.start()

            # its readopt_done line, not status: a status of 1000 sessions every few ms would slow it
            wait_until(lambda: readopt_done(root) > 0, "readopt_done", 300, interval=0.02)
            back = time.monotonic()
            data["readopted"] = int(request(sock, "status")["counters"].get("readopted", 0))
            data["exec_to_all_rewatched_s"] = back - exec_at
            data["sigterm_to_all_rewatched_s"] = back - sigterm
        data["untraced_after"] = sum(1 for t in load if tracer_pid(t.pid) == 0)
        data["exec_to_first_accept_s"] = first_accepts(root)[-1] / 1000
        data["gap_s"] = exec_at - sigterm + data["exec_to_first_accept_s"]
        data["restart_hooks"] = len(storm.started)
        data["restart_hooks_refused"] = sum(1 for t in storm.started if t.status != 0)
        waits = [t.elapsed_ms for t in storm.started if t.elapsed_ms is not None]
        data["restart_hook_max_ms"] = max(waits) if waits else None
        data["hook_errors"] = dict(hook_reasons(errors))
        data["daemon_warnings"] = {k: v for k, v in stderr_events(root).items() if not k.startswith("info")}
        data["readopt_failures"] = readopt_failures(root)
    finally:
        os.close(stderr)
        for target in targets:
            target.reap()
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.stop()
        listener.close()
    return data


def show(data: dict[str, Any]) -> None:
    print(f"load average before the restart: {' '.join(f'{x:.1f}' for x in data['load_average_before'])}")
    rows = [
        ("watched processes", f"{data['count']}", ""),
        ("stop (SIGKILL)" if data["kill9"] else "SIGTERM to exit", f"{data['stop_s']:.2f} s", ""),
        ("exec to READY=1", f"{data['exec_to_ready_s']:.2f} s", ""),
        ("exec to first accept", f"{data['exec_to_first_accept_s']:.2f} s",
         f"hook's ack wait {data['hook_ack_timeout_s']:g} s"),
        ("SIGTERM to first accept (gap)", f"{data['gap_s']:.2f} s",
         f"hook's ack wait {data['hook_ack_timeout_s']:g} s"),
        ("re-watched", f"{data['readopted']}", f"goal {data['count']}"),
        ("exec to all re-watched", f"{data['exec_to_all_rewatched_s']:.2f} s", ""),
        ("SIGTERM to all re-watched", f"{data['sigterm_to_all_rewatched_s']:.2f} s", ""),
        ("hooks during the restart", f"{data['restart_hooks']}", ""),
        ("  refused", f"{data['restart_hooks_refused']}", f"goal {GOAL_REFUSED}"),
        ("  longest in system()", f"{data['restart_hook_max_ms'] or 0:.0f} ms", ""),
        ("untraced after the restart", f"{data['untraced_after']}", "goal 0"),
    ]  # fmt: skip
    for label, value, goal in rows:
        print(f"{label:32} {value:>10}  {goal}")
    if data["daemon_warnings"]:
        print("tracerd warnings:", json.dumps(data["daemon_warnings"], indent=1))
    if data["readopt_failures"]:
        print("re-adoptions failed:", json.dumps(data["readopt_failures"], indent=1))
    if data["hook_errors"]:
        print("hook errors:", json.dumps(data["hook_errors"], indent=1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--storm-interval", type=float, default=0.05)
    parser.add_argument("--storm-max", type=int, default=100, help="at most this many hooks during the restart")
    parser.add_argument("--kill9", action="store_true", help="SIGKILL tracerd instead of SIGTERM")
    args = parser.parse_args()
    targets: list[Target] = []
    with tempfile.TemporaryDirectory(prefix="tracerd-bench-") as tmp:
        data = run(args, Path(tmp), targets)
    show(data)
    path = save("restart-kill9" if args.kill9 else "restart", data)
    print(f"written {path}")
    return 0 if data["restart_hooks_refused"] == GOAL_REFUSED and data["untraced_after"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
