"""A private Postfix instance for the tests: its own config directory, queue,
data directory, maillog_file and loopback port; the discard transport.

Master runs in the foreground as the test's own child (``master -c DIR``,
not ``postfix start``, which daemonizes it), and the test process is a child
subreaper (see conftest), so that every Postfix process is reaped: PID 1 here
does not reap orphans.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import psutil

from tests.support import wait_until

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
MASTER = "/usr/lib/postfix/sbin/master"

MASTER_CF = """\
{listen} inet n - n - - smtpd{smtpd_flags}
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


# Under pytest-xdist each worker takes its ports from a block of its own, below the kernel's ephemeral
# range (32768-60999 by default): a port one worker found free and released is never handed to
# another worker, nor to an outgoing connection, before its Postfix binds it.
_WORKER_PORTS = 200
_next_port = [0]


def free_port() -> int:
    """A loopback port free now: the worker's own block under xdist, else one the kernel picks."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit():
        base = 20000 + int(worker[2:]) * _WORKER_PORTS
        for _ in range(_WORKER_PORTS):
            port = base + _next_port[0] % _WORKER_PORTS
            _next_port[0] += 1
            with socket.socket() as sock, contextlib.suppress(OSError):
                sock.bind(("127.0.0.1", port))
                return port
        raise AssertionError(f"no free port in {base}-{base + _WORKER_PORTS - 1}")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def available() -> bool:
    return Path(MASTER).exists() and shutil.which("postconf") is not None


class PostfixInstance:
    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.config_dir = root / "etc"
        self.queue_dir = root / "spool"
        self.data_dir = root / "data"
        self.maillog = root / "maillog"
        self.listen = f"127.0.0.1:{self.port}"
        self.master: subprocess.Popen[bytes] | None = None

    def create(self, smtpd_flags: str = "", debugger_command: str | None = None) -> None:
        for path in (self.config_dir, self.queue_dir, self.data_dir):
            path.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data_dir, "postfix")
        self.root.chmod(0o755)
        lines = [
            "compatibility_level = 3.6",
            f"queue_directory = {self.queue_dir}",
            f"data_directory = {self.data_dir}",
            "mail_owner = postfix",
            "setgid_group = postdrop",
            "myhostname = pftest.localdomain",
            "mydomain = localdomain",
            "mydestination =",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            "smtpd_relay_restrictions = permit_mynetworks, reject",
            "smtpd_peername_lookup = no",
            "default_transport = discard",
            "relay_transport = discard",
            "local_transport = discard",
            f"maillog_file = {self.maillog}",
            f"maillog_file_prefixes = {self.root}",
            "smtpd_banner = $myhostname ESMTP",
            "biff = no",
            "alias_maps =",
            "alias_database =",
        ]
        if debugger_command:
            lines.append(f"debugger_command = {debugger_command}")
        (self.config_dir / "main.cf").write_text("\n".join(lines) + "\n")
        (self.config_dir / "master.cf").write_text(MASTER_CF.format(listen=self.listen, smtpd_flags=smtpd_flags))
        # creates the queue's subdirectories with their owners and modes
        subprocess.run([POSTFIX, "-c", str(self.config_dir), "check"], check=True, capture_output=True)

    def start(self, timeout: float = 20.0) -> None:
        self.master = subprocess.Popen(
            [MASTER, "-c", str(self.config_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        master = self.master
        started = self.log_text().count("daemon started")  # this master's line, not an earlier one's

        def serving() -> bool:
            if master.poll() is not None:
                raise AssertionError(f"postfix master exited: {self.log_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return self.log_text().count("daemon started") > started
            return False

        wait_until(serving, "postfix started", timeout)

    def postconf(self, *args: str) -> str:
        return subprocess.run(
            ["postconf", "-c", str(self.config_dir), *args], check=True, capture_output=True, text=True
        ).stdout

    def reload(self) -> None:
        subprocess.run([POSTFIX, "-c", str(self.config_dir), "reload"], check=True, capture_output=True)

    def log_text(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, needle: str, count: int = 1, timeout: float = 30.0) -> str:
        def logged() -> str | None:
            text = self.log_text()
            return text if text.count(needle) >= count else None

        try:
            return wait_until(logged, f"{count} x {needle!r} in the maillog", timeout, interval=0.1)
        except AssertionError:
            raise AssertionError(f"maillog has {self.log_text().count(needle)} of {count} x {needle!r}") from None

    def smtp_source(self, messages: int = 1, sessions: int = 1, timeout: float = 120.0) -> None:
        subprocess.run(
            ["smtp-source", "-s", str(sessions), "-m", str(messages), "-f", "sender@example.com",
             "-t", "rcpt@example.com", self.listen],
            check=True, timeout=timeout, capture_output=True,
        )  # fmt: skip

    def processes(self, name: str) -> list[psutil.Process]:
        if self.master is None:
            return []
        try:
            children = psutil.Process(self.master.pid).children()
        except psutil.NoSuchProcess:
            return []
        found = []
        for child in children:
            with contextlib.suppress(psutil.Error):  # gone since children() listed it
                if child.name() == name and child.status() != psutil.STATUS_ZOMBIE:
                    found.append(child)
        return found

    def stop(self) -> None:
        if self.master is None:
            return
        if self.master.poll() is None:
            # SIGTERM: master kills its children and exits (what "postfix stop" sends)
            self.master.send_signal(signal.SIGTERM)
            try:
                self.master.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.master.kill()
                self.master.wait()
        reap_orphans()

        def closed() -> bool:  # master's children hold the listener a moment longer than master
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                return True
            return False

        wait_until(closed, f"port {self.port} closed after postfix stop", 20)


POSTFIX_PROGRAMS = frozenset({
    "master", "smtpd", "pickup", "qmgr", "cleanup", "trivial-rewrite", "discard", "postlogd",
    "proxymap", "anvil", "scache", "bounce", "showq", "flush", "verify", "error", "smtp", "sh",
})  # fmt: skip


def reap_orphans() -> None:
    """Reap Postfix zombies reparented to us (we are a child subreaper).

    Only Postfix's own programs: a zombie the test started itself belongs to
    a Popen that will wait for it.
    """
    for proc in psutil.Process(os.getpid()).children():
        with contextlib.suppress(psutil.Error, ChildProcessError):
            if proc.status() == psutil.STATUS_ZOMBIE and proc.name() in POSTFIX_PROGRAMS:
                os.waitpid(proc.pid, os.WNOHANG)
