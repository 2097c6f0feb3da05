"""End to end on a private Postfix instance: ``tracerctl postfix enable`` puts
smtpd under tracerd, mail flows, a crash is reported and master restarts the
service, a missing tracerd costs nothing but a warning, and ``disable`` leaves
the configuration as it found it."""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import have, proc_state
from tests.postfix_instance import PostfixInstance
from tests.support import wait_until

pytestmark = pytest.mark.skipif(not (have("gdb") and have("strace")), reason="gdb and strace are needed")

SEED_GDB_RECIPE = (
    "PATH=/bin:/usr/bin:/usr/local/bin; export PATH; (echo cont; echo where; sleep 8640000) | gdb\n"
    "    $daemon_directory/$process_name $process_id 2>&1 >$config_directory/$process_name.$process_id.log & sleep 5"
)


def wait_for(what: str, check: Any, timeout: float = 30.0) -> Any:
    return wait_until(check, what, timeout)


def smtpd_generation(postfix: PostfixInstance, debug: bool) -> None:
    """Wait until every smtpd of the instance has (or lacks) -D: after a
    reload, master retires the processes started from the old master.cf."""
    wait_for(
        f"every smtpd {'with' if debug else 'without'} -D",
        lambda: all(("-D" in p.cmdline()) == debug for p in postfix.processes("smtpd")) or None,
    )


# epoll_wait and epoll_pwait: where an idle Postfix daemon sits, in event_loop()
EPOLL_SYSCALLS = {"x86_64": ("232", "281"), "aarch64": ("22",)}.get(platform.machine(), ())


def wait_idle(pid: int) -> None:
    """Wait until a daemon that has served a client is back in its event loop.

    Only then has it told master it is available again, so that master counts
    it as used and a crash is no "bad command startup" (which throttles the
    service for service_throttle_time, 60 s)."""
    if not EPOLL_SYSCALLS:
        pytest.skip(f"no epoll_wait syscall number known for {platform.machine()}")
    wait_for(f"{pid} in epoll_wait", lambda: Path(f"/proc/{pid}/syscall").read_text().split()[0] in EPOLL_SYSCALLS)


class Client:
    """One SMTP connection to the instance, and the smtpd pid serving it."""

    def __init__(self, postfix: PostfixInstance) -> None:
        self.sock = socket.create_connection(("127.0.0.1", postfix.port), timeout=30)
        self.banner = self.sock.makefile("rb").readline().decode()
        port = self.sock.getsockname()[1]
        # the smtpd holding the server end of this very connection
        self.pid: int = wait_for("the smtpd serving the connection", lambda: next(
            (p.pid for p in postfix.processes("smtpd") for c in _tcp(p) if c.raddr and c.raddr.port == port), None
        ))  # fmt: skip

    def quit(self) -> None:
        self.sock.sendall(b"QUIT\r\n")
        assert self.sock.recv(100).startswith(b"221")
        self.sock.close()


def _tcp(proc: psutil.Process) -> list[Any]:
    try:
        return list(proc.net_connections("tcp"))
    except psutil.Error:
        return []


def enable(daemon: Any, postfix: PostfixInstance, *extra: str) -> str:
    result = daemon.ctl("postfix", "enable", "smtpd", "-c", str(postfix.config_dir), *extra)
    assert result.returncode == 0, result.stderr
    assert f"{postfix.listen}/inet/command=smtpd -D" in result.stdout
    assert "reload" in result.stdout.splitlines()[-1]
    smtpd_generation(postfix, debug=True)
    return str(result.stdout)


def test_watch_attaches_before_the_banner_and_mail_flows(daemon_factory: Any, postfix: PostfixInstance) -> None:
    """With the watch tracer, a new smtpd's tracer is attached before the
    smtpd sends its banner (the hook returned on tracerd's confirmation, not
    after a sleep); tracerctl postfix status shows the session attached; 200
    messages pass through traced smtpd processes."""
    daemon = daemon_factory()
    postfix.create()
    postfix.start()
    enable(daemon, postfix, "--tracer", "watch")
    client = Client(postfix)
    assert client.banner.startswith("220 ")
    # read at once, no polling: attached already when the banner arrived
    session = daemon.session(client.pid)
    assert (session["state"], session["tracer"], session["name"]) == ("attached", "watch", "smtpd")
    result = daemon.ctl("--json", "postfix", "status", "-c", str(postfix.config_dir))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (service,) = report["services"]
    assert service["service"] == f"{postfix.listen}/inet"
    expected = {"pid": client.pid, "debug": True, "traced": True, "state": "attached", "tracer": "watch"}
    assert expected in service["processes"]
    table = daemon.ctl("postfix", "status", "-c", str(postfix.config_dir)).stdout
    assert f"{client.pid}  attached (watch)" in table
    client.quit()
    postfix.smtp_source(messages=200)
    log = postfix.wait_log("status=sent", count=200, timeout=120)
    assert log.count("status=sent") == 200
    # every smtpd was traced; those that reached max_use exited normally
    endings = {(s["state"], s["exit_code"]) for s in daemon.status()["sessions"] if s["name"] == "smtpd"}
    assert endings <= {("attached", None), ("exited", 0)}, endings
    assert daemon.status()["counters"]["sessions_failed"] == 0


@pytest.mark.parametrize("tracer", ["watch", "gdb", "strace"])
def test_sigsegv_of_a_traced_smtpd(daemon_factory: Any, postfix: PostfixInstance, tracer: str) -> None:
    """kill -SEGV of a traced, idle smtpd: tracerd records the crash (watch
    and gdb: a report whose frames are Postfix's event loop; strace: a report
    of what strace saw, its siginfo naming the sender and no backtrace),
    master sees the death ("killed by signal 11"), nothing is left stopped,
    and the next connection is served by a new, traced smtpd."""
    daemon = daemon_factory()
    postfix.create()
    postfix.start()
    enable(daemon, postfix, "--tracer", tracer)
    client = Client(postfix)
    daemon.wait_session(client.pid, "attached")
    client.quit()
    wait_idle(client.pid)
    os.kill(client.pid, signal.SIGSEGV)
    session = daemon.wait_session(client.pid, "crashed", timeout=60)
    assert session["signal"] == "SIGSEGV"
    postfix.wait_log(f"pid {client.pid} killed by signal 11")
    assert proc_state(client.pid) in ("", "Z")
    assert session["crash"], (session, daemon.stderr()[-4000:], Path(session["log"]).read_text()[-2000:])
    report = json.loads(daemon.ctl("--json", "crash", session["crash"]).stdout)["crash"]
    if tracer == "strace":
        assert "+++ killed by SIGSEGV" in Path(session["log"]).read_text()
        assert report["trace"][-1].endswith("+++ killed by SIGSEGV +++")
        assert report["signal"]["si_code_name"] == "SI_USER"
        assert (report["signal"]["sender_pid"], report["signal"]["self_sent"]) == (os.getpid(), False)
        assert report["notice"].startswith("strace gives no backtrace")
    else:
        crashed = next(t for t in report["threads"] if t["crashed"])
        names = [frame["function"] for frame in crashed["frames"]]
        assert names.index("event_loop") < names.index("single_server_main"), names
        assert report["signal"]["name"] == "SIGSEGV"
        assert report["signal"]["si_code"] == 0  # SI_USER: sent by kill, not a fault
        assert report["process"]["name"] == "smtpd"
    following = Client(postfix)
    assert following.banner.startswith("220 ")
    assert following.pid != client.pid
    assert daemon.session(following.pid)["state"] == "attached"
    following.quit()


def test_tracerd_stopped_mail_flows_with_a_warning(
    daemon_factory: Any, postfix: PostfixInstance, syslog_receiver: Any
) -> None:
    """With tracerd stopped, the hook fails at once (no socket: not a timeout),
    warns at mail.warning through syslog, and smtpd serves mail untraced."""
    daemon = daemon_factory()
    hook = daemon.hook_command(syslog=syslog_receiver.path) + " $process_name $process_id"
    postfix.create(smtpd_flags=" -D", debugger_command=hook)
    daemon.stop()
    postfix.start()
    client = Client(postfix)
    assert client.banner.startswith("220 ")
    warning = syslog_receiver.wait_for(f"smtpd[{client.pid}]: not traced: tracerd is not running (no socket")
    assert warning.startswith("<20>")  # mail.warning
    assert "pftrace-hook[" in warning
    client.quit()
    postfix.smtp_source(messages=5)
    postfix.wait_log("status=sent", count=5)


def test_enable_disable_round_trip_restores_the_configuration(daemon_factory: Any, postfix: PostfixInstance) -> None:
    """enable --force over the seed's gdb recipe, then disable, on a running
    instance: master.cf and main.cf are byte for byte as before, the recipe is
    debugger_command again, and new smtpd processes run without -D."""
    daemon = daemon_factory()
    postfix.create(debugger_command=SEED_GDB_RECIPE)
    postfix.start()
    master_cf, main_cf = postfix.config_dir / "master.cf", postfix.config_dir / "main.cf"
    before = (master_cf.read_bytes(), main_cf.read_bytes())
    recipe = postfix.postconf("-nh", "debugger_command")
    refused = daemon.ctl("postfix", "enable", "smtpd", "-c", str(postfix.config_dir))
    assert refused.returncode == 1
    assert "already holds something else" in refused.stderr
    assert (master_cf.read_bytes(), main_cf.read_bytes()) == before
    enable(daemon, postfix, "--force")
    client = Client(postfix)
    assert daemon.session(client.pid)["state"] == "attached"
    client.quit()
    result = daemon.ctl("postfix", "disable", "smtpd", "-c", str(postfix.config_dir))
    assert result.returncode == 0, result.stderr
    assert "reload" in result.stdout.splitlines()[-1]
    assert (master_cf.read_bytes(), main_cf.read_bytes()) == before
    assert postfix.postconf("-nh", "debugger_command") == recipe
    assert not (postfix.config_dir / "tracerd-postfix.json").exists()
    smtpd_generation(postfix, debug=False)
    untraced = Client(postfix)
    assert "-D" not in psutil.Process(untraced.pid).cmdline()
    untraced.quit()


def debug_generation(postfix: PostfixInstance, program: str) -> list[int]:
    """The pids of ``program`` once it runs and every process of it has -D
    (after a reload master retires the processes started without)."""

    def check() -> list[int] | None:
        try:
            procs = [(p.pid, p.cmdline()) for p in postfix.processes(program)]
        except psutil.Error:
            return None
        return [pid for pid, _ in procs] if procs and all("-D" in argv for _, argv in procs) else None

    pids: list[int] = wait_for(f"{program} running with -D", check, timeout=60)
    return pids


def smtp_command(client: Client, line: str, code: str) -> None:
    client.sock.sendall(line.encode() + b"\r\n")
    reply = b""
    while not reply.endswith(b"\r\n") or reply.splitlines()[-1][3:4] == b"-":
        chunk = client.sock.recv(4096)
        assert chunk, f"connection closed after {line!r}"
        reply += chunk
    assert reply.startswith(code.encode()), (line, reply)


def test_status_sees_every_kind_of_traced_daemon(
    daemon_factory: Any, postfix: PostfixInstance, syslog_receiver: Any
) -> None:
    """enable for qmgr and pickup (event servers), cleanup and smtpd (single
    servers, unix and inet), rewrite (trivial-rewrite, a multi server) and
    postlog (postlogd, a unix-dgram server): master runs them as "qmgr -l -t
    unix -u -D", "cleanup -z -t unix -u -D" (no -n: the service is named after
    its program), "trivial-rewrite -n rewrite -t unix -u -D", "smtpd -n
    127.0.0.1:PORT -t inet -u -D"; tracerctl --json postfix status lists every
    process of each (smtpd and cleanup held busy by an open SMTP transaction)
    as traced, attached; then mail submitted by SMTP and by sendmail passes
    through them.  After a reload the old qmgr exits, and syslog gets exactly
    "tracerd[PID]: qmgr[QPID]: exited with status 0" (the tag once)."""
    daemon = daemon_factory()
    postfix.create()
    postfix.start()
    directory = str(postfix.config_dir)
    programs = {"qmgr/unix": "qmgr", "cleanup/unix": "cleanup", "pickup/unix": "pickup",
                "rewrite/unix": "trivial-rewrite", "postlog/unix-dgram": "postlogd",
                f"{postfix.listen}/inet": "smtpd"}  # fmt: skip
    for service in ("qmgr", "cleanup", "pickup", "rewrite", "postlog", "smtpd"):
        result = daemon.ctl("postfix", "enable", service, "-c", directory, "--tracer", "watch")
        assert result.returncode == 0, result.stderr
    for program in ("qmgr", "pickup", "postlogd"):  # master runs these at once
        debug_generation(postfix, program)
    client = Client(postfix)
    assert client.banner.startswith("220 ")
    smtp_command(client, "EHLO client.example.com", "250")
    smtp_command(client, "MAIL FROM:<sender@example.com>", "250")
    # smtpd asks rewrite about the recipient, then opens its cleanup stream
    # at the first accepted one (smtpd_delay_open_until_valid_rcpt)
    smtp_command(client, "RCPT TO:<rcpt@example.com>", "250")
    debug_generation(postfix, "cleanup")
    debug_generation(postfix, "trivial-rewrite")

    def all_traced() -> dict[str, Any] | None:
        result = daemon.ctl("--json", "postfix", "status", "-c", directory)
        assert result.returncode == 0, result.stderr
        report: dict[str, Any] = json.loads(result.stdout)
        listed = {s["service"]: s["processes"] for s in report["services"]}
        running = {key: sorted(p.pid for p in postfix.processes(program)) for key, program in programs.items()}
        if sorted(listed) != sorted(programs) or any(
            not procs or sorted(p["pid"] for p in procs) != running[key] or not all(p["traced"] for p in procs)
            for key, procs in listed.items()
        ):
            return None
        return report

    report = wait_for("every process of the six services listed as traced", all_traced, timeout=60)
    for service in report["services"]:
        assert service["command"].split()[:2] == [programs[service["service"]], "-D"]
        for proc in service["processes"]:
            assert proc == {"pid": proc["pid"], "debug": True, "traced": True, "state": "attached",
                            "tracer": "watch"}, service  # fmt: skip
            assert daemon.session(proc["pid"])["name"] == programs[service["service"]]
    assert client.pid in [p["pid"] for s in report["services"] for p in s["processes"]]
    table = daemon.ctl("postfix", "status", "-c", directory).stdout
    for service in report["services"]:
        key = service["service"]
        for proc in service["processes"]:
            assert re.search(rf"{re.escape(key)} +{programs[key]} -D +{proc['pid']} +attached \(watch\)", table), table
    smtp_command(client, "DATA", "354")
    smtp_command(client, "Subject: smtp\r\n\r\nthrough smtpd\r\n.", "250")
    client.quit()
    sendmail = subprocess.run(["/usr/sbin/sendmail", "-C", directory, "-f", "sender@example.com", "rcpt@example.com"],
                              input=b"Subject: pickup\n\nthrough pickup\n", capture_output=True, timeout=60,
                              check=False)  # fmt: skip
    assert sendmail.returncode == 0, sendmail.stderr
    log = postfix.wait_log("status=sent", count=2, timeout=60)
    assert "postfix/pickup[" in log
    counters = daemon.status()["counters"]
    assert counters["sessions_failed"] == 0
    (qmgr,) = [p["pid"] for s in report["services"] if s["service"] == "qmgr/unix" for p in s["processes"]]
    postfix.reload()  # master retires its children; qmgr exits at once
    daemon.wait_session(qmgr, "exited", timeout=60)
    record = syslog_receiver.wait_for(f"qmgr[{qmgr}]: exited")
    header = rf"<22>\w{{3}} [ \d]\d [\d:]{{8}} tracerd\[{daemon.proc.pid}\]: "
    assert re.fullmatch(rf"{header}qmgr\[{qmgr}\]: exited with status 0", record), record


@pytest.mark.slow
def test_sigabrt_of_smtpd_keeps_its_last_mail_log_lines_and_a_core(
    daemon_factory: Any, postfix: PostfixInstance
) -> None:
    """kill -ABRT of a watched smtpd that served a client: the report has
    smtpd's own last mail-log lines (the log found through the process's
    MAIL_CONFIG and postconf maillog_file), a core (core = "first"), and gdb
    on that core (run_postmortem, batch) shows Postfix's event loop."""
    daemon = daemon_factory()
    postfix.create()
    postfix.start()
    enable(daemon, postfix, "--tracer", "watch")
    client = Client(postfix)
    daemon.wait_session(client.pid, "attached")
    client.quit()
    postfix.wait_log(f"smtpd[{client.pid}]: disconnect from")
    wait_idle(client.pid)
    os.kill(client.pid, signal.SIGABRT)
    session = daemon.wait_session(client.pid, "crashed", timeout=60)
    postfix.wait_log(f"pid {client.pid} killed by signal 6")
    report = json.loads(daemon.ctl("--json", "crash", session["crash"]).stdout)["crash"]
    assert report["signal"]["name"] == "SIGABRT"
    lines = report["mail_log"]
    assert lines, report["process"]
    assert all(f"/smtpd[{client.pid}]: " in line for line in lines), lines
    assert any("]: connect from " in line for line in lines), lines
    assert "]: disconnect from " in lines[-1], lines
    assert report["core"]["state"] == "saved", report["core"]
    human = daemon.ctl("crash", report["id"]).stdout  # tracerctl crash ID shows them too
    assert f"mail log, this pid's last {len(lines)} lines:" in human, human
    assert lines[-1].split("]: ", 1)[1] in human, human
    result = subprocess.run([sys.executable, "-m", "tracerd.ctl.postmortem", report["id"], "--ui", "batch",
                             "--state-dir", str(daemon.state_dir)],
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert "event_loop" in result.stdout, result.stdout + result.stderr
