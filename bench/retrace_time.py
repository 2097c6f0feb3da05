"""bench/retrace_time: ``tracerctl retrace`` of a 30-frame report, local debug files against debuginfod.

A stripped target (tests/c/retrace_target.c, MODE deep24: 30 frames with
main and libc's) crashes under a private tracerd (watch tracer); its debug
file is split off with ``objcopy --only-keep-debug`` and either placed
under a ``.build-id`` root (``--debug-dir``, as a ``-dbgsym`` package
would) or served by a real ``debuginfod`` on a loopback port.  Each run is
the whole command, wall time, in the same interleaved loop:

- ``local``: the .build-id root;
- ``debuginfod cold``: an empty client cache (the download included);
- ``debuginfod warm``: the file already in the client cache.

Prints a table and writes bench/results/retrace_time.json.
Usage: .venv/bin/python bench/retrace_time.py [--runs 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BIN, C_DIR, no_core_dumps, private_tracerd, reap, request, save, summary, wait_until

from tracerd.crash import elfinfo

EXTRA_CONFIG = 'crash_flood_window = 0\ncore = "none"\n[[rule]]\nprocess = "*"\ntracer = "watch"\n'


def build(out: Path) -> tuple[Path, Path, str]:
    subprocess.run(["gcc", "-g", "-shared", "-fPIC", "-o", str(out / "libretracelib.so"),
                    str(C_DIR / "retracelib.c")], check=True)  # fmt: skip
    exe = out / "retrace_target"
    subprocess.run(["gcc", "-g", "-O0", "-o", str(exe), str(C_DIR / "retrace_target.c"), f"-L{out}",
                    "-lretracelib", f"-Wl,-rpath,{out}"], check=True)  # fmt: skip
    debug = out / "retrace_target.debug"
    subprocess.run(["objcopy", "--only-keep-debug", str(exe), str(debug)], check=True)
    subprocess.run(["strip", "--strip-all", str(exe)], check=True)
    build_id = elfinfo.build_id(exe)
    assert build_id
    return exe, debug, build_id


def crash(sock: Path, exe: Path) -> str:
    hook = f"{BIN / 'pftrace-hook'} --socket {sock}"
    proc = subprocess.Popen([str(exe), hook, "deep", "deep24"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            bufsize=0)  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdin is not None
        assert proc.stdout.readline() == b"hook=0\n"
        proc.stdin.write(b"x")
        proc.wait(timeout=120)

        def crashed() -> str | None:
            session: dict[str, Any] = request(sock, "show", pid=proc.pid).get("session") or {}
            return session.get("crash") if session.get("state") == "crashed" else None

        crash_id: str = wait_until(crashed, "the crash report", 120)
        return crash_id
    finally:
        reap(proc)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    no_core_dumps()
    times: dict[str, list[float]] = {"local": [], "debuginfod cold": [], "debuginfod warm": []}
    inner: dict[str, list[float]] = {kind: [] for kind in times}
    with tempfile.TemporaryDirectory(prefix="tracerd-bench-retrace-") as tmp, \
            private_tracerd(EXTRA_CONFIG) as (sock, root):  # fmt: skip
        work = Path(tmp)
        exe, debug, build_id = build(work)
        local = work / "debug" / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug"
        local.parent.mkdir(parents=True)
        shutil.copy(debug, local)
        served = work / "served"
        served.mkdir()
        shutil.copy(debug, served)
        port = free_port()
        argv = ["debuginfod", "-F", "-p", str(port), "-d", str(work / "db.sqlite"), "-t", "0", "-c", "1", str(served)]
        server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            def serving() -> bool:
                try:
                    with urllib.request.urlopen(f"{url}/buildid/{build_id}/debuginfo", timeout=5) as answer:
                        return bool(answer.status == 200)
                except OSError:
                    return False

            wait_until(serving, "debuginfod serving", 60)
            frames = 0
            for _ in range(args.runs):
                cache = work / "cache"
                shutil.rmtree(cache, ignore_errors=True)
                env = {**os.environ, "XDG_CACHE_HOME": str(cache), "DEBUGINFOD_URLS": url}
                for kind, extra in (("local", ["--no-debuginfod", "--debug-dir", str(work / "debug")]),
                                    ("debuginfod cold", ["--debug-dir", str(work / "none")]),
                                    ("debuginfod warm", ["--debug-dir", str(work / "none")])):  # fmt: skip
                    # a crash of its own: a retrace is kept in the report, so a second one would find nothing to name
                    base = [str(BIN / "tracerctl"), "--socket", str(sock), "--json", "retrace", crash(sock, exe),
                            "--state-dir", str(root / "state")]  # fmt: skip
                    started = time.monotonic()
                    result = subprocess.run([*base, *extra], capture_output=True, text=True, env=env, check=True)
                    times[kind].append(time.monotonic() - started)
                    record = json.loads(result.stdout)
                    frames = record["frames"]
                    inner[kind].append(record["seconds"])
                    assert record["changed"], (kind, record["errors"])
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"retrace of a {frames}-frame report, {args.runs} runs, ms: the whole tracerctl command (wall),"
          " and the retrace itself (lookup, download, addr2line)")
    rows = {}
    for kind, values in times.items():
        wall = {key: round(value * 1000, 1) for key, value in summary(values).items()}
        own = {key: round(value * 1000, 1) for key, value in summary(inner[kind]).items()}
        rows[kind] = {"wall": wall, "retrace": own}
        print(f"  {kind:<16} wall p50 {wall['p50']:>7.1f} p95 {wall['p95']:>7.1f}"
              f"   retrace p50 {own['p50']:>7.1f} p95 {own['p95']:>7.1f}")
    path = save("retrace_time", {"frames": frames, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
