"""Shared bench plumbing: compile C targets, run a private tracerd, percentiles.

The waits, process checks and reaping are the tests' own (:mod:`tests.support`).

Benchmarks compare against a baseline measured in the same run, on the same
machine, so that the ratio means something on a shared, noisy host.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.support: the helpers the tests use

from tests import support  # noqa: E402
from tests.support import proc_state, reap, wait_until  # noqa: E402
from tracerd.client import call  # noqa: E402

C_DIR = support.C_DIR
BIN = support.BIN
# what bench scripts import from here
__all__ = ["BIN", "C_DIR", "ROOT", "proc_state", "reap", "wait_until"]
RESULTS = ROOT / "bench" / "results"
ENDED = ("exited", "crashed", "detached", "failed")  # a session's end states (tracerd/daemon/sessions.py)


def compile_c(name: str, out: Path, *flags: str) -> Path:
    """tests/c/NAME.c built optimized, as a production program would be."""
    return support.compile_c(name, out, *flags, optimize="-O2")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
    }


@contextlib.contextmanager
def private_tracerd(extra_config: str = "", nofile: tuple[int, int] | None = None) -> Iterator[tuple[Path, Path]]:
    """A tracerd of the bench's own; yields (socket, root dir).

    The daemon's stderr (structlog JSON lines) is ROOT/stderr; when the bench
    fails inside the block, its last lines are printed before the temporary
    directory goes.  ``nofile`` = (soft, hard) sets the daemon's RLIMIT_NOFILE
    (as a unit file's LimitNOFILE=soft:hard would; tracerd may raise its soft
    limit up to the hard one itself); None keeps the bench's own.
    """
    with tempfile.TemporaryDirectory(prefix="tracerd-bench-") as tmp:
        root = Path(tmp)
        sock = root / "tracerd.sock"
        config = root / "tracerd.toml"
        config.write_text(
            f'socket = "{sock}"\nlog_dir = "{root / "log"}"\nstate_dir = "{root / "state"}"\n'
            f"{extra_config}\n[syslog]\nenabled = false\n"
        )
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(root / "notify"))
        notify.settimeout(30)
        env = dict(os.environ, NOTIFY_SOCKET=str(root / "notify"))
        with open(root / "stderr", "wb") as stderr:
            proc = subprocess.Popen([str(BIN / "tracerd"), "--config", str(config)], env=env, stderr=stderr)
        if nofile is not None:
            # at once, long before it has a session; its children (watcher, gdb) inherit it
            resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, nofile)
        try:
            assert notify.recv(64) == b"READY=1"
            notify.close()
            yield sock, root
        except BaseException:
            print_stderr_tail(root)
            raise
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                print("tracerd did not stop within 30 s of SIGTERM: killed", file=sys.stderr)
                proc.kill()
                proc.wait()


def print_stderr_tail(root: Path, lines: int = 20) -> None:
    """The daemon's last stderr lines, on the bench's stderr."""
    with contextlib.suppress(OSError):
        tail = (root / "stderr").read_text(errors="replace").splitlines()[-lines:]
        print(f"--- last {len(tail)} lines of tracerd's stderr ---", file=sys.stderr)
        for line in tail:
            print(line, file=sys.stderr)


def stderr_events(root: Path) -> collections.Counter[str]:
    """Count tracerd's stderr lines by "level event" (warnings and errors tell a failure).

    Lines that are not structlog JSON (a traceback printed by asyncio's default
    exception handler, say) count by their first 80 characters, traceback
    bodies left out.
    """
    counts: collections.Counter[str] = collections.Counter()
    with contextlib.suppress(OSError):
        for line in (root / "stderr").read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
                counts[f"{record.get('level', '?')} {record.get('event', '?')}"] += 1
            except ValueError:
                if line.strip() and not line.startswith((" ", "Traceback")):
                    counts["not JSON: " + line[:80]] += 1
    return counts


def stderr_lines(root: Path, *words: str, limit: int = 10) -> list[str]:
    """Up to ``limit`` distinct stderr lines containing every one of ``words``."""
    found: list[str] = []
    with contextlib.suppress(OSError):
        for line in (root / "stderr").read_text(errors="replace").splitlines():
            if all(word in line for word in words) and line not in found:
                found.append(line)
                if len(found) >= limit:
                    break
    return found


def request(sock: Path, op: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
    """One request to tracerd's socket, exactly as tracerctl sends it."""
    return call(str(sock), {"op": op, **fields}, timeout=timeout)


def wait_ended(sock: Path, pid: int, timeout: float = 60.0) -> dict[str, Any]:
    """The session of ``pid`` once it has ended; AssertionError past ``timeout``."""

    def ended() -> dict[str, Any] | None:
        session: dict[str, Any] = request(sock, "show", pid=pid).get("session") or {}
        return session if session.get("state") in ENDED else None

    session: dict[str, Any] | None = wait_until(ended, f"session {pid} ended", timeout, interval=0.02)
    assert session is not None
    return session


def read_line(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> str:
    """The target's next stdout line, stripped; RuntimeError if none within ``timeout``."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError(f"target {proc.pid} printed nothing within {timeout} s")
    return proc.stdout.readline().decode().strip()


class Crasher:
    """A hooked target that faults on one byte on stdin; its parent's waitpid() is timed on a thread.

    A context manager: the target is reaped on the way out, whatever happened.
    """

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.pid = self.proc.pid
        self._gone: list[float] = []
        self._waiter = threading.Thread(target=self._wait, daemon=True)

    def __enter__(self) -> Crasher:
        return self

    def __exit__(self, *exc: object) -> None:
        reap(self.proc)

    def _wait(self) -> None:
        self.proc.wait()
        self._gone.append(time.monotonic())

    def line(self, timeout: float = 60.0) -> str:
        return read_line(self.proc, timeout)

    def fault(self) -> float:
        """Start timing the waitpid(), send the byte; the monotonic time just before it."""
        assert self.proc.stdin is not None
        self._waiter.start()
        at = time.monotonic()
        self.proc.stdin.write(b"x")
        return at

    def gone(self, timeout: float) -> float | None:
        """When the waitpid() returned (monotonic), or None if not within ``timeout``."""
        self._waiter.join(timeout=timeout)
        return self._gone[0] if self._gone else None


def no_core_dumps() -> None:
    """Crashing targets (and everything else the bench starts) dump no core."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))


def save(name: str, data: dict[str, object]) -> Path:
    """data as bench/results/NAME.json (or in $TRACERD_BENCH_RESULTS: tests/test_bench.py's runs)."""
    results = Path(os.environ.get("TRACERD_BENCH_RESULTS") or RESULTS)
    results.mkdir(exist_ok=True)
    path = results / f"{name}.json"
    data["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    data["host"] = {"cpus": os.cpu_count(), "kernel": os.uname().release}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


@dataclasses.dataclass
class CpuSpent:
    """CPU seconds since a :class:`TracerCpu` was made: tracerd's own and its reaped children's
    (``tracerd``), its live descendants' (``below``: watcher, warm gdb, strace, perf), and the
    machine's busy fraction."""

    tracerd: float
    below: float
    busy: float

    @property
    def total(self) -> float:
        return self.tracerd + self.below


class TracerCpu:
    """What tracerd and everything under it spend from now on: its own CPU and its reaped
    children's, and each live descendant's since now (one that starts later counts whole, one
    that exits is in its parent's reaped children)."""

    def __init__(self, tracerd_pid: int) -> None:
        self.tracerd = psutil.Process(tracerd_pid)
        self.start = self.own()
        self.live = self.descendants()
        self.machine = psutil.cpu_times()

    def own(self) -> float:
        times = self.tracerd.cpu_times()
        return times.user + times.system + times.children_user + times.children_system

    def descendants(self) -> dict[int, float]:
        seen = {}
        for proc in self.tracerd.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                seen[proc.pid] = times.user + times.system
        return seen

    def since(self) -> CpuSpent:
        now = self.descendants()
        below = sum(value - self.live.get(pid, 0.0) for pid, value in now.items())
        machine = psutil.cpu_times()
        idle = (machine.idle + machine.iowait) - (self.machine.idle + self.machine.iowait)
        total = sum(machine) - sum(self.machine)
        return CpuSpent(self.own() - self.start, below, 1.0 - idle / total if total > 0 else 0.0)
