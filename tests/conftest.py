"""Fixtures: C targets built with gcc, a real tracerd, a syslog receiver.

Nothing here mocks ptrace, sockets or /proc: every test runs real processes
and reaps every one it starts (PID 1 here does not reap orphans).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.postfix_instance import PostfixInstance
from tests.postfix_instance import available as postfix_available
from tracerd.errors import TargetGone
from tracerd.procinfo import state_of

HERE = Path(__file__).parent
PR_SET_CHILD_SUBREAPER = 36


def pytest_configure(config: pytest.Config) -> None:
    """Become a child subreaper: daemons' orphans (Postfix's processes, a
    killed tracerd's tracers) come back to us to be reaped, not to PID 1,
    which here reaps nothing."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
C_DIR = HERE / "c"
BIN = Path(sys.executable).parent


def script(name: str) -> list[str]:
    """The installed console script, else ``python -m`` of its module."""
    path = BIN / name
    if path.exists():
        return [str(path)]
    module = {"pftrace-hook": "tracerd.hook", "tracerd": "tracerd.daemon.main", "tracerctl": "tracerd.ctl.main"}
    return [sys.executable, "-m", module[name]]


@pytest.fixture(scope="session")
def cbin(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Compile tests/c/NAME.c with -g on first use; returns a builder."""
    out = tmp_path_factory.mktemp("cbin")
    built: dict[str, Path] = {}

    def build(name: str, *flags: str) -> Path:
        if name not in built:
            exe = out / name
            subprocess.run(
                ["gcc", "-g", "-O0", "-Wall", "-o", str(exe), str(C_DIR / f"{name}.c"), *flags],
                check=True,
            )
            built[name] = exe
        return built[name]

    return build


class SyslogReceiver:
    """A unix datagram socket of the test's own standing in for /dev/log.

    A thread reads it all the time, as a real syslog daemon would: a unix
    datagram queue holds only max_dgram_qlen (10) messages.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode("utf-8", "replace"))

    def collect(self) -> list[str]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.collect():
                if text in message:
                    return message
            time.sleep(0.02)
        raise AssertionError(f"no syslog message with {text!r}; got {self.collect()[-5:]!r}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def syslog_receiver(tmp_path: Path) -> Iterator[SyslogReceiver]:
    receiver = SyslogReceiver(tmp_path / "syslog.sock")
    yield receiver
    receiver.close()


class Daemon:
    """A real tracerd subprocess with its own socket, dirs and syslog."""

    def __init__(
        self,
        root: Path,
        syslog: Path,
        extra_config: str = "",
        socket_path: Path | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.root = root
        self.socket = socket_path or root / "run" / "tracerd.sock"
        self.log_dir = (data_dir or root) / "log"
        self.state_dir = (data_dir or root) / "state"
        self.config = root / "tracerd.toml"
        self.config.write_text(
            f'socket = "{self.socket}"\n'
            f'log_dir = "{self.log_dir}"\n'
            f'state_dir = "{self.state_dir}"\n'
            'default_tracer = "strace"\n'
            "attach_timeout = 10.0\n"
            f"{extra_config}\n"
            "[syslog]\n"
            f'address = "{syslog}"\n'
        )
        self.stderr_path = root / "tracerd.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        notify_path = self.root / "notify.sock"
        with contextlib.suppress(FileNotFoundError):
            notify_path.unlink()
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        notify.settimeout(timeout)
        env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
        with open(self.stderr_path, "ab") as stderr:
            self.proc = subprocess.Popen(
                [*script("tracerd"), "--config", str(self.config)], stderr=stderr, env=env
            )
        try:
            message = notify.recv(1024)
        except TimeoutError:
            self.stop()
            raise AssertionError(f"tracerd never said READY=1: {self.stderr()}") from None
        finally:
            notify.close()
        assert message == b"READY=1"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def hook_command(self, syslog: Path | None = None, timeout: float = 15.0) -> str:
        words = [*script("pftrace-hook"), "--socket", str(self.socket), "--timeout", str(timeout)]
        if syslog is not None:
            words += ["--syslog", str(syslog)]
        return " ".join(words)

    def ctl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*script("tracerctl"), "--socket", str(self.socket), *args],
            capture_output=True, text=True, timeout=60, check=check,
        )  # fmt: skip

    def request(self, payload: bytes, timeout: float = 10.0) -> dict[str, Any]:
        """Send raw bytes, return the one reply (or {} when the daemon closed)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.socket))
            sock.sendall(payload)
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        return json.loads(data) if data else {}

    def status(self) -> dict[str, Any]:
        reply = self.request(b'{"op": "status"}\n')
        assert reply["ok"], reply
        return reply

    def session(self, pid: int) -> dict[str, Any]:
        reply = self.request(json.dumps({"op": "show", "pid": pid}).encode() + b"\n")
        assert reply["ok"], reply
        return dict(reply["session"])

    def wait_session(self, pid: int, state: str, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        session: dict[str, Any] = {}
        while time.monotonic() < deadline:
            session = self.session(pid)
            if session["state"] == state:
                return session
            time.sleep(0.05)
        raise AssertionError(f"session {pid} not {state}: {session}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def daemon_factory(tmp_path: Path, syslog_receiver: SyslogReceiver) -> Iterator[Any]:
    daemons: list[Daemon] = []

    def make(
        extra_config: str = "",
        start: bool = True,
        socket_path: Path | None = None,
        syslog_path: Path | None = None,
        data_dir: Path | None = None,
    ) -> Daemon:
        root = tmp_path / f"d{len(daemons)}"
        root.mkdir()
        daemon = Daemon(root, syslog_path or syslog_receiver.path, extra_config, socket_path, data_dir)
        daemons.append(daemon)
        if start:
            daemon.start()
        return daemon

    yield make
    for daemon in daemons:
        if daemon.proc is not None and daemon.proc.poll() is None:
            os.kill(daemon.proc.pid, signal.SIGCONT)  # a test may have stopped it
        daemon.stop()


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory everyone may traverse (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="tracerd-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(daemon_factory: Any) -> Daemon:
    d: Daemon = daemon_factory()
    return d


class Target:
    """A C target process, always reaped."""

    def __init__(self, argv: list[str]) -> None:
        # unbuffered: readline() must not read ahead past what select() saw
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
        )
        self.pid = self.proc.pid

    def readline(self, timeout: float = 30.0) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise AssertionError("target printed nothing in time")
        return self.proc.stdout.readline().decode()

    def release(self) -> None:
        """Let a waiting target go on (one byte on stdin)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"x")
        self.proc.stdin.flush()

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def reap(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
                self.proc.kill()
        self.proc.wait(timeout=30)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@pytest.fixture
def spawn() -> Iterator[Any]:
    targets: list[Target] = []

    def start(*argv: str | Path) -> Target:
        target = Target([str(a) for a in argv])
        targets.append(target)
        return target

    yield start
    for target in targets:
        target.reap()


def proc_state(pid: int) -> str:
    """One-letter state of a process ('t' = tracing stop), '' when gone."""
    try:
        return state_of(pid)
    except TargetGone:
        return ""


@pytest.fixture
def postfix() -> Iterator[PostfixInstance]:
    """A private Postfix instance (not yet created: the test chooses flags).

    In a directory of its own under /tmp that user postfix may traverse
    (pytest's tmp_path is root-only)."""
    if not postfix_available():
        pytest.skip("postfix is not installed")
    root = Path(tempfile.mkdtemp(prefix="tracerd-postfix-"))
    instance = PostfixInstance(root)
    yield instance
    instance.stop()
    shutil.rmtree(root, ignore_errors=True)


def reap_zombies(names: set[str]) -> None:
    """Reap zombie children by name: orphans of a killed daemon come back to us
    (we are a subreaper). Only names the test did not Popen itself."""
    for proc in psutil.Process(os.getpid()).children():
        with contextlib.suppress(psutil.Error, ChildProcessError):
            if proc.status() == psutil.STATUS_ZOMBIE and proc.name() in names:
                os.waitpid(proc.pid, os.WNOHANG)


def have(program: str) -> bool:
    return shutil.which(program) is not None
