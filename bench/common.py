"""Shared bench plumbing: compile C targets, run a private tracerd, percentiles.

Benchmarks compare against a baseline measured in the same run, on the same
machine, so that the ratio means something on a shared, noisy host.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
C_DIR = ROOT / "tests" / "c"
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results"


def compile_c(name: str, out: Path) -> Path:
    exe = out / name
    subprocess.run(["gcc", "-g", "-O2", "-o", str(exe), str(C_DIR / f"{name}.c")], check=True)
    return exe


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
def private_tracerd(extra_config: str = "") -> Iterator[tuple[Path, Path]]:
    """A tracerd of the bench's own; yields (socket, root dir)."""
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
        try:
            assert notify.recv(64) == b"READY=1"
            notify.close()
            yield sock, root
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def save(name: str, data: dict[str, object]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    data["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    data["host"] = {"cpus": os.cpu_count(), "kernel": os.uname().release}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
