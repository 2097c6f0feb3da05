"""What tests/ and bench/ share: bounded waits, process checks, a real tracerd, C targets.

Nothing here mocks ptrace, sockets or /proc: the helpers read the kernel's
own view (/proc/PID/stat, /proc/PID/status) and run real processes, and each
one started here is reaped by its owner (PID 1 here reaps nothing).  No pytest
import: bench/ runs these without it.

Diagnostics: every wait is bounded and fails with an AssertionError that says
what was awaited and what was last seen; a process check names the pid and the
state it found ('' = gone).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil

HERE = Path(__file__).parent
C_DIR = HERE / "c"
BIN = Path(sys.executable).parent

T = TypeVar("T")


def send_signal(pid: int | None, sig: int) -> None:
    """``os.kill`` for a pid a test found (not a Popen's): never 0 or below, which name process groups
    (0 is the test run's own: a ``kill(0, SIGKILL)`` ends the whole run)."""
    if pid is None or int(pid) <= 0:
        raise AssertionError(f"no process to send signal {sig} to (pid {pid!r})")
    os.kill(int(pid), sig)


def wait_until(check: Callable[[], T], what: str, timeout: float = 10.0, interval: float = 0.05) -> T:
    """Call ``check`` until it returns something true; return that.

    Raises AssertionError naming ``what`` (and the last value seen) once
    ``timeout`` seconds have passed; ``check`` may itself raise to fail at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last seen: {value!r})")
        time.sleep(interval)


# pftrace-hook comes in two forms (docs/performance.md, "Hook latency"): the compiled one make writes, and the
# Python one (tracerd/hook.py: pip's entry point, and what make writes with no C compiler).  Tests of
# the hook's behaviour run against both by setting hook_form (tests/test_hook.py).
HOOK_FORMS = ("compiled", "python")
hook_form = "compiled"


def python_hook() -> list[str]:
    """The Python form of pftrace-hook, run as make's stub runs it (``-IS``, hook.py alone)."""
    return [sys.executable, "-IS", str(HERE.parent / "tracerd" / "hook.py")]


TRACEFS = "/sys/kernel/tracing"


@contextlib.contextmanager
def tracefs_mounted() -> Iterator[str]:
    """tracefs at /sys/kernel/tracing (what the perf tracer needs): mounted here if it is not, and
    then unmounted after, so that the machine is left as it was found."""
    from tracerd.tracers import perfcheck  # noqa: PLC0415 (only the perf tests and benches need it)

    if perfcheck.tracefs_mount() is not None:
        yield TRACEFS
        return
    subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], check=True, timeout=30)
    try:
        yield TRACEFS
    finally:
        subprocess.run(["umount", TRACEFS], check=False, timeout=30)


SYSTEM_PYTHON = "/usr/bin/python3"


def installed_python_hook(out: Path) -> Path:
    """The Python form as `make install` writes it with no C compiler (the Makefile's sed of
    contrib/pftrace-hook.in: the system interpreter, -IS, this checkout's tracerd/hook.py)."""
    text = (HERE.parent / "contrib/pftrace-hook.in").read_text()
    out.write_text(text.replace("@PYTHON@", SYSTEM_PYTHON).replace("@HOOKDIR@", str(HERE.parent / "tracerd")))
    out.chmod(0o755)
    return out


def script(name: str) -> list[str]:
    """The installed console script, else ``python -m`` of its module (pftrace-hook: the
    form that ``hook_form`` names)."""
    if name == "pftrace-hook" and hook_form == "python":
        return python_hook()
    path = BIN / name
    if path.exists():
        return [str(path)]
    module = {"pftrace-hook": "tracerd.hook", "tracerd": "tracerd.daemon.main", "tracerctl": "tracerd.ctl.main"}
    return [sys.executable, "-m", module[name]]


# what systemd does between fork and exec for a socket unit (sd_listen_fds(3)):
# the listening socket becomes fd 3, LISTEN_FDS=1 and LISTEN_PID = the pid that execs
_ACTIVATE = (
    "import os, sys; fd = int(sys.argv[1]);"
    " (os.dup2(fd, 3), os.close(fd)) if fd != 3 else os.set_inheritable(3, True);"
    " os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()));"
    " os.execv(sys.argv[2], sys.argv[2:])"
)


def activated(listen_fd: int, argv: list[str]) -> list[str]:
    """``argv`` run as systemd runs a socket-activated service, given ``listen_fd``
    (pass it to Popen in pass_fds)."""
    return [sys.executable, "-c", _ACTIVATE, str(listen_fd), *argv]


def listening_socket(path: Path) -> socket.socket:
    """A listening unix socket at ``path``, as tracerd.socket's ListenStream= makes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(1024)
    return sock


def have(program: str) -> bool:
    return shutil.which(program) is not None


def compile_c(name: str, out: Path, *flags: str, optimize: str = "-O0") -> Path:
    """Build tests/c/NAME.c with -g into ``out``; returns the executable."""
    exe = out / name
    subprocess.run(["gcc", "-g", optimize, "-Wall", "-o", str(exe), str(C_DIR / f"{name}.c"), *flags], check=True)
    return exe


# -- processes ----------------------------------------------------------------


def proc_state(pid: int) -> str:
    """One-letter state of a process ('t' = tracing stop), '' when gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return ""


def task_states(pid: int) -> list[tuple[int, str, int]]:
    """(tid, one-letter state, TracerPid) of every task of pid ('t' = ptrace-stop); [] when gone."""
    found = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue  # the thread just ended
        found.append((int(tid), stat.rsplit(")", 1)[1].split()[0], int(status.split("TracerPid:")[1].split()[0])))
    return found


def tracer_pid(pid: int) -> int:
    """TracerPid of a live process (0 = untraced); AssertionError when it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        raise AssertionError(f"process {pid} is gone") from None
    return int(text.split("TracerPid:")[1].split()[0])


def assert_running(pid: int) -> None:
    """The process exists and runs (sleeping or running): not gone, not a
    zombie, not in a (tracing) stop."""
    state = proc_state(pid)
    assert state in ("S", "R"), f"process {pid} is not running: state {state!r} ('' = gone)"


def assert_untraced(pid: int) -> None:
    """The process runs and no tracer holds it."""
    assert_running(pid)
    assert tracer_pid(pid) == 0, f"process {pid} is still traced by pid {tracer_pid(pid)}"


def reap(proc: subprocess.Popen[bytes]) -> None:
    """Kill (if still running), wait for and close one process we started."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)  # a stopped process dies of SIGKILL too, but say it
            proc.kill()
    proc.wait(timeout=30)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def reap_zombies(names: set[str]) -> None:
    """Reap zombie children by name: orphans of a killed daemon come back to us
    (we are a subreaper). Only names the test did not Popen itself."""
    for proc in psutil.Process(os.getpid()).children():
        with contextlib.suppress(psutil.Error, ChildProcessError):
            if proc.status() == psutil.STATUS_ZOMBIE and proc.name() in names:
                os.waitpid(proc.pid, os.WNOHANG)


class StubTracerd:
    """A unix socket standing for tracerd: for each connection it reads the request line, keeps
    it, and answers with the next of the answers it was given, else ``default`` (then closes).
    tests/test_hook_compiled.py feeds it hostile answers; bench/hook_latency times the hook
    against it."""

    def __init__(self, path: Path, default: bytes = b"") -> None:
        self.path = path
        self.default = default
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        # each answer: bytes, or a tuple of bytes and pauses (seconds) between them
        self.answers: list[bytes | tuple[bytes | float, ...]] = []
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                request = b""
                try:
                    while b"\n" not in request:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        request += chunk
                    self.requests.append(request)
                    answer = self.answers.pop(0) if self.answers else self.default
                    for part in answer if isinstance(answer, tuple) else (answer,):
                        if isinstance(part, float):
                            time.sleep(part)
                        else:
                            conn.sendall(part)
                except OSError:
                    pass

    def __enter__(self) -> StubTracerd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(10)


# tracerctl's commands that only ask tracerd over its socket (or read its crash store): Daemon.ctl runs
# them in-process, sparing a Python start for each
CTL_IN_PROCESS = frozenset({"status", "show", "crashes", "crash", "where", "crash-delete", "attach", "detach"})


class Daemon:
    """A real tracerd subprocess with its own socket, dirs and syslog."""

    def __init__(
        self,
        root: Path,
        syslog: Path,
        extra_config: str = "",
        socket_path: Path | None = None,
        data_dir: Path | None = None,
        *,
        env: dict[str, str] | None = None,
        attach_timeout: float = 10.0,
    ) -> None:
        self.root = root
        self.env = env
        self.socket = socket_path or root / "run" / "tracerd.sock"
        self.log_dir = (data_dir or root) / "log"
        self.state_dir = (data_dir or root) / "state"
        self.config = root / "tracerd.toml"
        self.config.write_text(
            f'socket = "{self.socket}"\n'
            f'log_dir = "{self.log_dir}"\n'
            f'state_dir = "{self.state_dir}"\n'
            'default_tracer = "strace"\n'
            f"attach_timeout = {attach_timeout}\n"
            f"{extra_config}\n"
            "[syslog]\n"
            f'address = "{syslog}"\n'
        )
        self.stderr_path = root / "tracerd.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0, listen_fd: int | None = None) -> None:
        """Start tracerd and wait for its READY=1; ``listen_fd``: socket-activated with that socket."""
        notify_path = self.root / "notify.sock"
        with contextlib.suppress(FileNotFoundError):
            notify_path.unlink()
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        notify.settimeout(0.05)
        env = dict(self.env or os.environ, NOTIFY_SOCKET=str(notify_path))
        with open(self.stderr_path, "ab") as stderr:
            argv = [*script("tracerd"), "--config", str(self.config)]
            if listen_fd is not None:
                argv = activated(listen_fd, argv)
            passed = () if listen_fd is None else (listen_fd,)
            self.proc = subprocess.Popen(argv, stderr=stderr, env=env, pass_fds=passed)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    message = notify.recv(1024)
                    break
                except TimeoutError:  # no READY=1 yet: fails at once if tracerd has exited
                    if self.proc.poll() is not None or time.monotonic() >= deadline:
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

    def ctl(self, *args: str, check: bool = False, fresh: bool = False) -> subprocess.CompletedProcess[str]:
        """tracerctl --socket SOCKET ARGS: its exit code, stdout and stderr.  A command that only asks
        tracerd (CTL_IN_PROCESS) runs tracerctl's main() in this process, as the same user; the
        others, and any call with ``fresh``, run a tracerctl process (where the process is under test)."""
        argv = ["--socket", str(self.socket), *args]
        command = next((arg for arg in args if not arg.startswith("-")), None)
        if fresh or command not in CTL_IN_PROCESS:
            return subprocess.run([*script("tracerctl"), *argv], capture_output=True, text=True, timeout=60,
                                  check=check)  # fmt: skip
        from tracerd.ctl import main as ctl_main  # noqa: PLC0415 (bench/ has no need of it)

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = ctl_main.main(argv)
        result = subprocess.CompletedProcess(["tracerctl", *argv], code, out.getvalue(), err.getvalue())
        if check:
            result.check_returncode()
        return result

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
        """The session of pid once it is in ``state`` (it may not exist yet)."""
        seen: list[dict[str, Any]] = [{}]

        def reached() -> dict[str, Any] | None:
            reply = self.request(json.dumps({"op": "show", "pid": pid}).encode() + b"\n")
            seen[0] = reply.get("session") or reply  # no session yet: the error says so
            return seen[0] if seen[0].get("state") == state else None

        try:
            return wait_until(reached, f"session {pid} {state}", timeout)
        except AssertionError:
            raise AssertionError(f"session {pid} not {state}: {seen[0]}") from None

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

    def close_stdin(self) -> None:
        """End a target that runs until end of file on stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def reap(self) -> None:
        reap(self.proc)
