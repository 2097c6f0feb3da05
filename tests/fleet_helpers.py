"""Helpers of the fleet tests (journald, rsyslog, metrics): real daemons started here.

- :class:`Journald`: the real systemd-journald on a journal namespace of its
  own, in a private mount namespace whose /var/log is a test directory, so
  nothing is left in the machine's /var/log; its sockets live in a test
  directory too (RUNTIME_DIRECTORY).  :meth:`Journald.query` runs
  ``journalctl --namespace=NS ... -o json`` inside that mount namespace.
- :func:`crash_under_tracerd`: one crash of tests/c/crash.c under a tracerd,
  returning its session and report.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from tests.support import reap, wait_until

JOURNALD = "/lib/systemd/systemd-journald"
CRASH_MESSAGE_ID = "0c6e0a9e258b4252923570996a2fc059"
STARTED_MESSAGE_ID = "0ebc6f015f5642b683fa1ffe44367abd"
ENDED_MESSAGE_ID = "b8944b91a5074f9a9239322fa579f256"
FAILED_MESSAGE_ID = "94d1bbbaf04c4966ab3e99bdc98ff6ee"
WATCH_RULE = '[[rule]]\nprocess = "*"\ntracer = "watch"\n'


def journald_missing() -> str | None:
    """Why the journald tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "journald on a namespace of its own needs root (mount namespace, bind mount)"
    for program in (JOURNALD, shutil.which("unshare"), shutil.which("nsenter"), shutil.which("journalctl")):
        if not program or not os.path.exists(program):
            return f"{program or 'unshare/nsenter/journalctl'} is not installed (apt package systemd, util-linux)"
    return None


class Journald:
    """A real systemd-journald for one journal namespace, reaped by close()."""

    def __init__(self, root: Path) -> None:
        self.namespace = "tracerdtest" + secrets.token_hex(4)
        self.logs = root / "varlog"
        self.runtime = root / "journal-run"
        self.logs.mkdir()
        self.runtime.mkdir()
        self.socket = self.runtime / "socket"
        script = 'mount --bind "$1" /var/log && exec "$2" "$3"'
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
             str(self.logs), JOURNALD, self.namespace],
            env={**os.environ, "RUNTIME_DIRECTORY": str(self.runtime)},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            wait_until(self.socket.exists, f"journald's socket {self.socket}", timeout=15)
        except AssertionError:
            self.close()
            raise

    def query(self, *matches: str) -> list[dict[str, Any]]:
        """``journalctl --namespace=NS MATCHES -o json --all``, one dict per entry."""
        result = subprocess.run(
            ["nsenter", f"--target={self.proc.pid}", "--mount", "journalctl", f"--namespace={self.namespace}",
             "--no-pager", "-o", "json", "--all", *matches],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    def wait(self, *matches: str, count: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
        return wait_until(lambda: (found := self.query(*matches)) and len(found) >= count and found,
                          f"{count} journal entries matching {matches}", timeout, interval=0.2)  # fmt: skip

    def stop_reading(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
        reap(self.proc)


def crash_under_tracerd(daemon: Any, cbin: Any, spawn: Any, name: str = "smtpd") -> tuple[dict[str, Any], Any]:
    """A SIGSEGV three calls deep in a process traced through the hook: (report, target)."""
    target = spawn(cbin("crash", "-pthread"), daemon.hook_command(), name, "segv")
    assert target.readline() == "hook=0\n"
    target.release()
    session = daemon.wait_session(target.pid, "crashed", timeout=60)
    assert session["crash"], session
    result = daemon.ctl("--json", "crash", session["crash"])
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)["crash"]
    target.wait()
    return report, target


def tracerd_events(daemon: Any, event: str) -> list[dict[str, Any]]:
    """tracerd's own log lines (structlog JSON on stderr) of one event."""
    found = []
    for line in daemon.stderr().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            found.append(record)
    return found


CENTRAL_CONF = Path(__file__).resolve().parent.parent / "contrib" / "rsyslog-central.conf"


def rsyslog_missing() -> str | None:
    if not shutil.which("rsyslogd", path=os.environ.get("PATH", "") + ":/usr/sbin"):
        return "rsyslogd is not installed (apt package rsyslog)"
    return None


class Rsyslog:
    """A real rsyslogd running contrib/rsyslog-central.conf, its paths and port moved under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.out = root / "central"
        self.port_file = root / "port"
        central = CENTRAL_CONF.read_text()
        assert 'port="6514"' in central
        assert "/var/log/tracerd-central" in central
        central = central.replace("/var/log/tracerd-central", str(self.out))
        central = central.replace('port="6514"', f'port="0" listenPortFileName="{self.port_file}"')
        (root / "central.conf").write_text(central)
        (root / "work").mkdir()
        conf = root / "rsyslog.conf"
        conf.write_text(f'global(workDirectory="{root / "work"}")\ninclude(file="{root / "central.conf"}")\n')
        rsyslogd = shutil.which("rsyslogd", path=os.environ.get("PATH", "") + ":/usr/sbin")
        assert rsyslogd
        self.stderr = root / "rsyslogd.stderr"
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen([rsyslogd, "-n", "-f", str(conf), "-i", str(root / "rsyslogd.pid")],
                                         stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
        try:
            wait_until(lambda: self.port_file.exists() and self.port_file.read_text().strip(),
                       "rsyslogd's listen port file", timeout=15)  # fmt: skip
        except AssertionError:
            self.close()
            raise AssertionError(f"rsyslogd did not start: {self.stderr.read_text()}") from None
        self.port = int(self.port_file.read_text())

    def lines(self, relative: str) -> list[str]:
        path = self.out / relative
        return path.read_text().splitlines() if path.exists() else []

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        reap(self.proc)
