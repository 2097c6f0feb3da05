"""bench/metrics_cost: what the fleet outputs cost tracerd, and how big a crash entry is.

1. tracerd CPU per hook, metrics off vs on, in one run: two private tracerds
   (watch tracer), one without ``[metrics]``, one serving ``listen`` and
   writing a ``textfile``, scraped once per round.  Rounds alternate between
   them; each round runs ``--hooks`` short-lived targets through the hook
   (session start and exit) and reads the CPU time tracerd and its watcher
   used (utime + stime from /proc).  Reported: CPU ms per hook, median of
   the rounds, and the ratio on/off.
2. The size of one crash entry on the wire: a tracerd whose ``[journal]``
   socket and ``tcp://`` syslog address are the bench's own receivers; one
   SIGSEGV under the watch tracer; the bytes of the journald datagram (native
   protocol) and of the RFC 5424 crash record (with its structured data).

Writes bench/results/metrics_cost.json.
Usage: .venv/bin/python bench/metrics_cost.py [--rounds 5] [--hooks 100]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, TracerCpu, compile_c, no_core_dumps, private_tracerd, request, save, wait_until

from tests.support import Daemon, Target


def hooks(exe: Path, sock: Path, count: int) -> None:
    hook = f"{ROOT / '.venv' / 'bin' / 'pftrace-hook'} --socket {sock}"
    for _ in range(count):
        subprocess.run([str(exe), hook, "smtpd"], capture_output=True, timeout=60, check=True)


def cpu_per_hook(rounds: int, count: int, exe: Path) -> dict[str, object]:
    per_hook: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        metrics = f'[metrics]\nlisten = "127.0.0.1:0"\ntextfile = "{tmp}/tracerd.prom"\n'
        with private_tracerd() as (off_sock, _), private_tracerd(metrics) as (on_sock, on_root):
            pids = {"off": request(off_sock, "status")["daemon"]["pid"],
                    "on": request(on_sock, "status")["daemon"]["pid"]}  # fmt: skip
            socks = {"off": off_sock, "on": on_sock}
            url = f"http://{listen_address(on_root)}/metrics"
            for kind in ("off", "on"):  # warm up: the watcher starts at the first hook
                hooks(exe, socks[kind], 3)
            for _ in range(rounds):
                for kind in ("off", "on"):
                    cpu = TracerCpu(pids[kind])
                    hooks(exe, socks[kind], count)
                    if kind == "on":
                        with urllib.request.urlopen(url, timeout=10) as reply:
                            assert b"tracerd_sessions_started_total" in reply.read()
                    per_hook[kind].append(cpu.since().total / count * 1000)
    off, on = statistics.median(per_hook["off"]), statistics.median(per_hook["on"])
    return {"cpu_ms_per_hook_off": off, "cpu_ms_per_hook_on": on, "ratio_on_off": on / off, "rounds": per_hook,
            "hooks_per_round": count}  # fmt: skip


def listen_address(root: Path) -> str:
    def found() -> str | None:
        for line in (root / "stderr").read_text(errors="replace").splitlines():
            record = json.loads(line) if line.startswith("{") else {}
            if record.get("event") == "metrics_listening":
                return str(record["address"])
        return None

    return wait_until(found, "metrics_listening", timeout=15)


class WireReceivers:
    """The bench's own journald socket (datagrams) and tcp syslog server (octet counting)."""

    def __init__(self, root: Path) -> None:
        self.journal_path = root / "journal.sock"
        self.journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.journal.bind(str(self.journal_path))
        self.journal.settimeout(0.2)
        self.syslog = socket.socket()
        self.syslog.bind(("127.0.0.1", 0))
        self.syslog.listen()
        self.port = self.syslog.getsockname()[1]
        self.entries: list[bytes] = []
        self.records: list[bytes] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._journal, daemon=True),
                        threading.Thread(target=self._syslog, daemon=True)]  # fmt: skip
        for thread in self.threads:
            thread.start()

    def _journal(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                self.entries.append(self.journal.recv(1 << 20))

    def _syslog(self) -> None:
        self.syslog.settimeout(0.2)
        conn = None
        while conn is None and not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _ = self.syslog.accept()
        if conn is None:
            return
        conn.settimeout(0.2)
        data = b""
        while not self.stop.is_set():
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            data += chunk
            while b" " in data:  # RFC 6587 octet counting: LEN SP RECORD
                size, _, rest = data.partition(b" ")
                if len(rest) < int(size):
                    break
                self.records.append(rest[: int(size)])
                data = rest[int(size) :]
        conn.close()

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=5)
        self.journal.close()
        self.syslog.close()


def crash_entry_sizes(crash_exe: Path) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        wire = WireReceivers(root)
        rule = '[[rule]]\nprocess = "*"\ntracer = "watch"\n'
        journal = f'[journal]\nenabled = true\nsocket = "{wire.journal_path}"\n'
        (root / "d").mkdir()
        daemon = Daemon(root / "d", root / "unused.sock", rule + journal)
        text = daemon.config.read_text().replace(f'address = "{root / "unused.sock"}"',
                                                 f'address = "tcp://127.0.0.1:{wire.port}"')  # fmt: skip
        daemon.config.write_text(text)
        daemon.start()
        target = Target([str(crash_exe), daemon.hook_command(), "smtpd", "segv"])
        try:
            assert target.readline() == "hook=0\n"
            target.release()
            target.wait()
            daemon.wait_session(target.pid, "crashed", timeout=60)
            entry = wait_until(lambda: next((e for e in wire.entries if b"MESSAGE_ID=0c6e0a9e" in e), None),
                               "the crash's journal entry")  # fmt: skip
            record = wait_until(lambda: next((r for r in wire.records if b" crash [tracerd@32473 " in r), None),
                                "the crash's syslog record")  # fmt: skip
        finally:
            daemon.stop()
            target.reap()
            wire.close()
        sd = record.split(b" crash ", 1)[1].split(b"] ", 1)[0] + b"]"
        return {"journal_entry_bytes": len(entry), "syslog_record_bytes": len(record), "syslog_sd_bytes": len(sd)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hooks", type=int, default=100)
    args = parser.parse_args()
    no_core_dumps()
    with tempfile.TemporaryDirectory() as tmp:
        exe = compile_c("timed_hook", Path(tmp))
        crash_exe = compile_c("crash", Path(tmp), "-pthread")
        cost = cpu_per_hook(args.rounds, args.hooks, exe)
        sizes = crash_entry_sizes(crash_exe)
    print(f"tracerd + watcher CPU per hook, median of {args.rounds} rounds of {args.hooks} hooks:")
    print(f"  metrics off  {cost['cpu_ms_per_hook_off']:.3f} ms")
    print(f"  metrics on   {cost['cpu_ms_per_hook_on']:.3f} ms   (on/off {cost['ratio_on_off']:.3f})")
    print(f"crash entry: journald {sizes['journal_entry_bytes']} bytes; syslog record {sizes['syslog_record_bytes']}"
          f" bytes, of which structured data {sizes['syslog_sd_bytes']}")
    path = save("metrics_cost", {**cost, **sizes})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
