"""pftrace-hook fails fast and open: exit 1 with one ``warning:`` line, never past
--timeout, and a hung tracerd costs only --ack-timeout."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests import support
from tests.conftest import script
from tests.support import wait_until
from tests.test_postfix_e2e import Client
from tracerd.ctl import main as ctl
from tracerd.ctl.triage import severity_of

# Every test here runs against the compiled pftrace-hook (what make builds: the product); the Python
# form (make's fallback with no C compiler) runs this parity subset of the hook's own behaviour: fail
# open with no daemon, the ack timeout, the full timeout once acknowledged, a refusal, usage errors
# (tests/test_hook_compiled.py holds the two forms' answers together byte for byte).  The rest test
# the daemon's side, the same whichever form asks.
PYTHON_FORM_PARITY = {
    "test_no_daemon_fails_at_once_with_one_line_and_syslog",
    "test_socket_without_listener_fails_at_once",
    "test_hung_daemon_costs_only_the_ack_timeout",
    "test_normal_path_attaches",
    "test_acknowledged_slow_attach_gets_the_full_timeout",
    "test_usage_errors_exit_2",
    "test_refusal_is_reported_with_the_daemons_reason",
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    forms = support.HOOK_FORMS if metafunc.function.__name__ in PYTHON_FORM_PARITY else ("compiled",)
    metafunc.parametrize("hook_form", forms, indirect=True)


@pytest.fixture(autouse=True)
def hook_form(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The form of pftrace-hook this test runs: compiled, or Python (PYTHON_FORM_PARITY)."""
    monkeypatch.setattr(support, "hook_form", request.param)
    return str(request.param)


def run_hook(
    *args: str, timeout: float = 30.0, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [*script("pftrace-hook"), *args], capture_output=True, text=True, timeout=timeout, check=False,
        env=None if env is None else {**os.environ, **env},
    )  # fmt: skip
    return result, time.monotonic() - started


def test_no_daemon_fails_at_once_with_one_line_and_syslog(tmp_path: Path, syslog_receiver: Any) -> None:
    """No daemon listening: exit 1 at once, one stderr line, the same at mail.warning."""
    result, _ = run_hook(
        "--socket", str(tmp_path / "absent.sock"), "--syslog", str(syslog_receiver.path),
        "--timeout", "60", "smtpd", str(os.getpid()),
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(
        f"pftrace-hook: warning: smtpd[{os.getpid()}]: not traced: tracerd is not running"
    )
    message = syslog_receiver.wait_for("tracerd is not running")
    assert message.startswith("<20>")  # mail.warning
    assert f"pftrace-hook[{os.getpid()}]" not in message  # the hook's own pid, not the target's
    assert f"]: warning: smtpd[{os.getpid()}]: not traced: tracerd is not running" in message


def test_socket_without_listener_fails_at_once(tmp_path: Path) -> None:
    """A stale socket file (daemon died): connection refused, exit 1."""
    path = tmp_path / "stale.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()  # bound, never listening: ECONNREFUSED
    result, _ = run_hook("--socket", str(path), "--timeout", "60", "smtpd", "1")
    assert result.returncode == 1
    assert "nobody listens" in result.stderr


def test_hung_daemon_costs_only_the_ack_timeout(daemon: Any, cbin: Any, spawn: Any, syslog_receiver: Any) -> None:
    """A SIGSTOPped tracerd (connect() still succeeds, into the listen backlog):
    the hook gives up once --ack-timeout has passed, long before --timeout,
    exits 1 and says so on stderr and at mail.warning in syslog."""
    assert daemon.proc is not None
    hook = f"{daemon.hook_command(syslog_receiver.path, timeout=60)} --ack-timeout 0.5"
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        target = spawn(cbin("hooked"), hook, "smtpd", "0")
        # a liveness bound well below the attach timeout (60 s), not a speed claim
        assert target.readline(timeout=30) == "hook=1\n"
        target.release()
        assert target.wait() == 0
        assert target.proc.stderr is not None
        stderr = target.proc.stderr.read().decode()
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    reason = f"warning: smtpd[{target.pid}]: not traced: tracerd did not acknowledge within 0.5 s"
    assert stderr.startswith(f"pftrace-hook: {reason} (is it hung? see --ack-timeout)")
    message = syslog_receiver.wait_for(reason)
    assert message.startswith("<20>")  # mail.warning
    # the daemon still serves once it runs again
    assert daemon.status()["daemon"]["pid"] == daemon.proc.pid


def test_stopped_tracerd_costs_smtpd_only_the_ack_timeout(
    daemon_factory: Any, postfix: Any, syslog_receiver: Any
) -> None:
    """Issue 16's case: a real smtpd under Postfix with tracerd SIGSTOPped.
    The banner comes after the acknowledgement wait, not after --timeout
    (60 s here: the 30 s client timeout is a liveness bound), the warning says
    tracerd did not acknowledge, and smtpd serves mail untraced."""
    daemon = daemon_factory()
    hook = f"{daemon.hook_command(syslog_receiver.path, timeout=60)} --ack-timeout 0.5 $process_name $process_id"
    postfix.create(smtpd_flags=" -D", debugger_command=hook)
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        postfix.start()
        client = Client(postfix)
        assert client.banner.startswith("220 ")
        warning = syslog_receiver.wait_for(f"smtpd[{client.pid}]: not traced: tracerd did not acknowledge within 0.5 s")
        assert warning.startswith("<20>")  # mail.warning
        assert "]: warning: smtpd[" in warning
        client.quit()
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    assert daemon.status()["counters"]["sessions_started"] == 0


def test_full_listen_queue_of_a_hung_tracerd_fails_at_once(daemon: Any) -> None:
    """After enough process starts against a stopped tracerd its listen queue
    is full: connect() fails (EAGAIN) and the hook says why, without waiting."""
    assert daemon.proc is not None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    queued: list[socket.socket] = []
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        while len(queued) < 3000:  # the daemon listens with a backlog of 1024
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(str(daemon.socket))
            except BlockingIOError:
                sock.close()
                break
            queued.append(sock)
        else:
            raise AssertionError("the listen queue never filled")
        result, _ = run_hook("--socket", str(daemon.socket), "--timeout", "60", "--ack-timeout", "20", "smtpd", "1",
                             timeout=15)  # fmt: skip
    finally:
        for sock in queued:
            sock.close()
        os.kill(daemon.proc.pid, signal.SIGCONT)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert result.returncode == 1
    assert result.stderr == (
        f"pftrace-hook: warning: smtpd[1]: not traced: tracerd accepts no connections"
        f" (its queue on {daemon.socket} is full: is it hung?)\n"
    )
    # running again, the daemon works through its queue and serves once more
    def serving() -> bool:
        try:
            reply = daemon.request(b'{"op": "status"}\n')
        except BlockingIOError:
            return False
        return reply.get("error") != "busy" and reply["daemon"]["pid"] == daemon.proc.pid  # busy: still closing

    assert wait_until(serving, "the daemon drained its listen queue", 60, interval=0.1)


def test_normal_path_attaches(daemon: Any, cbin: Any, spawn: Any) -> None:
    """With a short --ack-timeout the hook still returns 0 only once the tracer
    is attached: the process's own write after the hook is in the trace."""
    target = spawn(cbin("hooked"), f"{daemon.hook_command(timeout=60)} --ack-timeout 0.5", "smtpd", "0")
    assert target.readline() == "hook=0\n"
    session = daemon.session(target.pid)
    assert session["state"] == "attached"
    target.release()
    assert target.wait() == 0
    daemon.wait_session(target.pid, "exited")
    assert "MARKER-after-hook" in Path(session["log"]).read_text()


def slow_attach_daemon(daemon_factory: Any, tmp_path: Path, attach_timeout: float) -> tuple[Any, Path]:
    """A tracerd whose strace for smtpd writes to a FIFO: strace opens its output
    before it attaches, so it attaches only once someone opens the FIFO."""
    fifo = tmp_path / "trace.fifo"
    os.mkfifo(fifo)
    daemon = daemon_factory(f'[[rule]]\nprocess = "smtpd"\ntracer = "strace"\nargs = ["-o", "{fifo}"]\n', start=False)
    text = daemon.config.read_text()
    assert "attach_timeout = 10.0\n" in text
    daemon.config.write_text(text.replace("attach_timeout = 10.0\n", f"attach_timeout = {attach_timeout}\n"))
    daemon.start()
    return daemon, fifo


def wait_attaching(daemon: Any, pid: int) -> None:
    """Until the daemon has a session for pid: it has acknowledged the hook."""
    show = json.dumps({"op": "show", "pid": pid}).encode() + b"\n"
    wait_until(lambda: daemon.request(show).get("ok"), f"a session for {pid}", 30)


def test_acknowledged_slow_attach_gets_the_full_timeout(
    daemon_factory: Any, tmp_path: Path, cbin: Any, spawn: Any
) -> None:
    """A daemon that acknowledges at once but whose tracer takes longer than
    --ack-timeout to attach: the hook waits on (up to --timeout) and returns 0
    once the tracer is attached, and the process is traced."""
    daemon, fifo = slow_attach_daemon(daemon_factory, tmp_path, attach_timeout=60)
    hook = f"{daemon.hook_command(timeout=60)} --ack-timeout 0.3"
    target = spawn(cbin("hooked"), hook, "smtpd", "0")
    wait_attaching(daemon, target.pid)
    time.sleep(1.0)  # hold the attach past the hook's --ack-timeout (0.3 s)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # strace opens, then attaches
    try:
        assert target.readline(timeout=30) == "hook=0\n"
        assert daemon.session(target.pid)["state"] == "attached"
        target.release()
        assert target.wait() == 0
        daemon.wait_session(target.pid, "exited")
        trace = b""
        while chunk := os.read(reader, 65536):
            trace += chunk
    finally:
        os.close(reader)
    assert b"MARKER-after-hook" in trace


def test_acknowledged_attach_timeout_reaches_the_hook(
    daemon_factory: Any, tmp_path: Path, cbin: Any, spawn: Any, syslog_receiver: Any
) -> None:
    """A tracer that never attaches, with tracerd's attach_timeout (2 s) above
    the hook's --ack-timeout (0.3 s): the hook waits for and reports tracerd's
    own verdict, not a missing acknowledgement."""
    daemon, _fifo = slow_attach_daemon(daemon_factory, tmp_path, attach_timeout=2)
    hook = f"{daemon.hook_command(syslog_receiver.path, timeout=60)} --ack-timeout 0.3"
    target = spawn(cbin("hooked"), hook, "smtpd", "0")
    assert target.readline(timeout=30) == "hook=1\n"
    target.release()
    assert target.wait() == 0
    message = syslog_receiver.wait_for(f"smtpd[{target.pid}]: not traced: ")
    assert "strace did not attach within 2.0 s" in message
    assert "acknowledge" not in message


def test_hook_warning_is_found_by_triage(
    tmp_path: Path, syslog_receiver: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hook's syslog line, as a syslog daemon writes it to the mail log, is
    listed by `tracerctl triage` as a pftrace-hook warning."""
    result, _ = run_hook(
        "--socket", str(tmp_path / "absent.sock"), "--syslog", str(syslog_receiver.path), "smtpd", "4242"
    )  # fmt: skip
    assert result.returncode == 1
    datagram = syslog_receiver.wait_for("smtpd[4242]: not traced:")
    # what rsyslog makes of "<PRI>TIMESTAMP TAG: MSG": "TIMESTAMP HOST TAG: MSG"
    pri, _, rest = datagram.partition(">")
    assert pri == "<20"
    stamp, tag_and_message = rest[:15], rest[16:]
    log = tmp_path / "mail.log"
    log.write_text(f"{stamp} mx {tag_and_message}\n")
    code = ctl.main(["--socket", str(tmp_path / "no.sock"), "--json", "triage", str(log)])
    out, err = capsys.readouterr()
    assert code == 0, err
    (line,) = json.loads(out)["lines"]
    assert (line["daemon"], line["severity"]) == ("pftrace-hook", "warning")
    assert "smtpd[4242]: not traced: tracerd is not running" in line["text"]
    # and the stderr line carries the same severity
    assert severity_of(result.stderr) == ("warning", result.stderr.split("warning: ", 1)[1].strip())


def test_older_daemon_refusing_ack_is_named(tmp_path: Path) -> None:
    """A tracerd from before acknowledgements refuses the unknown "ack" field:
    the hook says that tracerd is older and wants a restart."""
    path = tmp_path / "old.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    listener.settimeout(30)
    seen: list[bytes] = []

    def old_daemon() -> None:
        # the reply the previous parse_request gave to a field it did not know
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(30)
            seen.append(conn.recv(65536))
            conn.sendall(b'{"ok":false,"error":"bad_request","message":"hook: unknown field \\"ack\\""}\n')

    thread = threading.Thread(target=old_daemon)
    thread.start()
    try:
        result, _ = run_hook("--socket", str(path), "smtpd", "4242")
    finally:
        thread.join(timeout=30)
        listener.close()
    assert json.loads(seen[0]) == {"op": "hook", "name": "smtpd", "pid": 4242, "ack": True}
    assert result.returncode == 1
    assert result.stderr == (
        "pftrace-hook: warning: smtpd[4242]: not traced: tracerd is older than this pftrace-hook"
        " (no acknowledgements): restart tracerd\n"
    )


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    """Missing arguments, a non-numeric pid or an unknown option: exit 2."""
    for args in (
        [], ["smtpd"], ["smtpd", "12x"], ["--bogus", "smtpd", "1"], ["--timeout", "-1", "smtpd", "1"],
        ["--ack-timeout", "0", "smtpd", "1"], ["--ack-timeout=nan", "smtpd", "1"], ["--ack-timeout", "smtpd", "1"],
    ):  # fmt: skip
        result, _ = run_hook(*args)
        assert result.returncode == 2, args
        assert result.stderr.startswith("pftrace-hook: "), args
    result, _ = run_hook("smtpd", "1", env={"TRACERD_ACK_TIMEOUT": "soon"})
    assert result.returncode == 2
    assert result.stderr.startswith("pftrace-hook: TRACERD_ACK_TIMEOUT wants a number of seconds")


def test_ack_timeout_from_the_environment(daemon: Any) -> None:
    """$TRACERD_ACK_TIMEOUT sets the acknowledgement wait; --ack-timeout wins over it."""
    assert daemon.proc is not None
    me = str(os.getpid())
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        by_env, _ = run_hook("--socket", str(daemon.socket), "--timeout", "60", "smtpd", me,
                             env={"TRACERD_ACK_TIMEOUT": "0.4"})  # fmt: skip
        by_option, _ = run_hook("--socket", str(daemon.socket), "--timeout", "60", "--ack-timeout", "0.3",
                                "smtpd", me, env={"TRACERD_ACK_TIMEOUT": "0.4"})  # fmt: skip
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    assert by_env.returncode == by_option.returncode == 1
    assert "tracerd did not acknowledge within 0.4 s" in by_env.stderr
    assert "tracerd did not acknowledge within 0.3 s" in by_option.stderr


def test_refusal_is_reported_with_the_daemons_reason(shared_daemon: Any, cbin: Any, spawn: Any) -> None:
    """The hook naming a non-ancestor: exit 1 with the daemon's reason; pid 1 never.  Refusals only:
    the module's one tracerd."""
    daemon = shared_daemon
    sleeper = spawn(cbin("sleeper"))
    assert sleeper.readline() == "ready\n"
    result, _ = run_hook("--socket", str(daemon.socket), "smtpd", str(sleeper.pid))
    assert result.returncode == 1
    assert "not an ancestor" in result.stderr
    result, _ = run_hook("--socket", str(daemon.socket), "smtpd", "1")
    assert result.returncode == 1
    assert result.stderr == "pftrace-hook: warning: smtpd[1]: not traced: refusing to trace pid 1 (init)\n"


def test_daemon_refuses_to_trace_itself(shared_daemon: Any) -> None:
    """attach of tracerd's own pid is refused, even for root (the module's one tracerd)."""
    daemon = shared_daemon
    result = daemon.ctl("attach", str(daemon.proc.pid))
    assert result.returncode == 1
    assert "tracerd itself" in result.stderr
