"""Syslog forwarding: exact wire formats, rate limiting, and never blocking.

Every receiver is the test's own real socket (unix datagram and stream in
tmp_path, UDP and TCP on 127.0.0.1); nothing is mocked.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SyslogReceiver as ThreadedReceiver
from tests.support import wait_until
from tracerd.config import SyslogConfig
from tracerd.errors import ConfigError
from tracerd.sinks.syslog import (
    LOG_CRIT,
    LOG_INFO,
    LOG_WARNING,
    MAX_PENDING_BYTES,
    MAX_RECORD_BYTES,
    Endpoint,
    SessionSyslog,
    SyslogSink,
    parse_address,
)

PID = os.getpid()
LOCAL = re.compile(
    r"<(?P<pri>\d+)>(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ \d]\d "
    rf"\d\d:\d\d:\d\d tracerd\[{PID}\]: (?P<msg>.*)",
    re.DOTALL,
)
LOCAL_ANY = re.compile(r"<\d+>\w{3} [ \d]\d \d\d:\d\d:\d\d tracerd\[\d+\]: (?P<msg>.*)", re.DOTALL)
RFC5424 = re.compile(
    r"<(?P<pri>\d+)>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00 "
    rf"testhost tracerd {PID} - - (?P<msg>.*)",
    re.DOTALL,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_sink(address: str, clock: Callable[[], float] = time.monotonic) -> SyslogSink:
    config = SyslogConfig(address=address, facility="mail")
    return SyslogSink(config, hostname="testhost", clock=clock)


class SyslogReceiver:
    """A plain unix datagram socket read by the test itself, datagram by datagram."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def collect(self) -> list[str]:
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(self.sock.recv(65536).decode("utf-8", "replace"))
        except BlockingIOError:
            return out
        finally:
            self.sock.setblocking(True)


@pytest.fixture
def syslog_receiver(tmp_path: Path) -> Iterator[SyslogReceiver]:
    """Overrides conftest's threaded receiver: these tests read the socket directly."""
    receiver = SyslogReceiver(tmp_path / "syslog.sock")
    yield receiver
    receiver.sock.close()


@pytest.fixture
def sinks() -> Iterator[list[SyslogSink]]:
    """Sinks a test made; all closed afterwards."""
    made: list[SyslogSink] = []
    yield made
    for sink in made:
        sink.close()


def recv_dgram(sock: socket.socket) -> str:
    sock.settimeout(10)
    return sock.recv(65536).decode("utf-8")


def recv_frames(conn: socket.socket, count: int, sink: SyslogSink, sep: bytes | None) -> list[str]:
    """Read ``count`` frames: octet-counted when sep is None, else sep-terminated."""
    conn.settimeout(0.1)
    data = b""
    frames: list[str] = []

    def received() -> bool:
        nonlocal data
        sink.flush()
        try:
            data += conn.recv(65536)
        except TimeoutError:
            return False
        while True:
            if sep is None:
                length, space, rest = data.partition(b" ")
                if not space or len(rest) < int(length):
                    break
                frames.append(rest[: int(length)].decode("utf-8"))
                data = rest[int(length) :]
            else:
                frame, found, rest = data.partition(sep)
                if not found:
                    break
                frames.append(frame.decode("utf-8"))
                data = rest
        return len(frames) >= count

    wait_until(received, f"{count} frames (got {frames!r})", 10, interval=0)
    assert len(frames) == count, f"got {frames!r}"
    return frames


def test_unix_datagram_gets_the_traditional_local_format(
    syslog_receiver: SyslogReceiver, sinks: list[SyslogSink]
) -> None:
    """/dev/log style: <22>Mmm dd hh:mm:ss tracerd[PID]: NAME[PID]: text (mail.info = 22)."""
    sink = make_sink(str(syslog_receiver.path))
    sinks.append(sink)
    session = SessionSyslog(sink, "smtpd[1234]", 200)
    session.line("connect from unknown[10.0.0.1]")
    session.notice(LOG_CRIT, "killed by SIGSEGV")
    first = LOCAL.fullmatch(recv_dgram(syslog_receiver.sock))
    second = LOCAL.fullmatch(recv_dgram(syslog_receiver.sock))
    assert first is not None
    assert second is not None
    assert first["pri"] == "22"
    assert first["msg"] == "smtpd[1234]: connect from unknown[10.0.0.1]"
    assert second["pri"] == str(2 * 8 + LOG_CRIT)
    assert second["msg"] == "smtpd[1234]: killed by SIGSEGV"
    assert sink.sent == 2
    assert sink.dropped == 0


def test_udp_gets_rfc5424(sinks: list[SyslogSink]) -> None:
    """udp://127.0.0.1:PORT: <22>1 ISO-TIMESTAMP HOST tracerd PID - - NAME[PID]: text."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        sink = make_sink(f"udp://127.0.0.1:{receiver.getsockname()[1]}")
        sinks.append(sink)
        SessionSyslog(sink, "qmgr[99]", 200).notice(LOG_WARNING, "cannot write log")
        found = RFC5424.fullmatch(recv_dgram(receiver))
    assert found is not None
    assert found["pri"] == str(2 * 8 + LOG_WARNING)
    assert found["msg"] == "qmgr[99]: cannot write log"


def test_tcp_gets_rfc5424_with_octet_counting(sinks: list[SyslogSink]) -> None:
    """tcp://127.0.0.1:PORT: each record framed 'LEN SP MSG' (RFC 6587), RFC 5424 inside."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(10)
        sink = make_sink(f"tcp://127.0.0.1:{listener.getsockname()[1]}")
        sinks.append(sink)
        session = SessionSyslog(sink, "smtpd[7]", 200)
        texts = ["one", "two with spaces", "dreißig ünïcode"]
        for text in texts:
            session.line(text)
        conn, _ = listener.accept()
        with conn:
            frames = recv_frames(conn, 3, sink, sep=None)
    messages = [RFC5424.fullmatch(frame) for frame in frames]
    assert all(found is not None and found["pri"] == "22" for found in messages)
    assert [found["msg"] for found in messages if found] == [f"smtpd[7]: {t}" for t in texts]
    assert sink.sent == 3


def test_unix_stream_socket_gets_nul_terminated_records(
    tmp_path: Path, sinks: list[SyslogSink]
) -> None:
    """A stream socket at the path (EPROTOTYPE on datagram): local format, NUL-terminated."""
    path = tmp_path / "stream.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen()
        listener.settimeout(10)
        sink = make_sink(str(path))
        sinks.append(sink)
        session = SessionSyslog(sink, "pickup[3]", 200)
        session.line("a")
        session.line("b")
        conn, _ = listener.accept()
        with conn:
            frames = recv_frames(conn, 2, sink, sep=b"\0")
    messages = [LOCAL.fullmatch(frame) for frame in frames]
    assert [found["msg"] for found in messages if found] == ["pickup[3]: a", "pickup[3]: b"]


def test_control_characters_are_replaced_and_records_capped(
    syslog_receiver: SyslogReceiver, sinks: list[SyslogSink]
) -> None:
    """A tracer line cannot forge a record or send escapes; records stop at 8 KiB, valid UTF-8."""
    sink = make_sink(str(syslog_receiver.path))
    sinks.append(sink)
    session = SessionSyslog(sink, "smtpd[1]", 200)
    session.line("a\nb\rc\x1b[31md\te\x85f\x00g é")
    session.line("é" * 10000)
    first = LOCAL.fullmatch(recv_dgram(syslog_receiver.sock))
    raw = syslog_receiver.sock.recv(65536)
    assert first is not None
    assert first["msg"] == "smtpd[1]: a?b?c?[31md\te?f?g é"
    assert len(raw) <= MAX_RECORD_BYTES
    assert raw.decode("utf-8").endswith("é")  # strict decode: no character cut in half


def test_rate_limit_counts_the_excess_and_reports_it(
    syslog_receiver: SyslogReceiver, sinks: list[SyslogSink]
) -> None:
    """Max 5/s: 20 lines -> 5 sent, 15 suppressed; the next second starts with the report."""
    sink = make_sink(str(syslog_receiver.path))
    sinks.append(sink)
    clock = FakeClock()
    session = SessionSyslog(sink, "smtpd[1234]", 5, clock=clock)
    for number in range(20):
        session.line(f"line {number}")
    assert sink.sent == 5
    assert session.suppressed == 15
    session.notice(LOG_CRIT, "crashed")  # summaries are never rate limited
    clock.now += 1.0
    session.line("next second")
    received = [LOCAL.fullmatch(recv_dgram(syslog_receiver.sock)) for _ in range(8)]
    assert [found["msg"] for found in received if found] == [
        *(f"smtpd[1234]: line {number}" for number in range(5)),
        "smtpd[1234]: crashed",
        "smtpd[1234]: 15 lines suppressed (rate limit)",
        "smtpd[1234]: next second",
    ]
    assert session.suppressed == 15


def test_flush_reports_suppression_once(
    syslog_receiver: SyslogReceiver, sinks: list[SyslogSink]
) -> None:
    """flush() sends the suppressed count once; a second flush has nothing to say."""
    sink = make_sink(str(syslog_receiver.path))
    sinks.append(sink)
    session = SessionSyslog(sink, "smtpd[2]", 1, clock=FakeClock())
    session.line("kept")
    session.line("eaten")
    session.flush()
    session.flush()
    assert sink.sent == 2
    assert recv_dgram(syslog_receiver.sock).endswith("smtpd[2]: kept")
    assert recv_dgram(syslog_receiver.sock).endswith("smtpd[2]: 1 lines suppressed (rate limit)")


def test_tracerds_own_lines_name_the_process_once(
    syslog_receiver: SyslogReceiver, sinks: list[SyslogSink]
) -> None:
    """tracerd's own lines (written "tracerd: NAME[PID] ..." to the per-process
    log) reach syslog as "NAME[PID]: ...": the tag once, no "tracerd:" inside
    (the record's APP[PID] is tracerd already); other text is left alone."""
    sink = make_sink(str(syslog_receiver.path))
    sinks.append(sink)
    session = SessionSyslog(sink, "qmgr[21096]", 200)
    session.notice(LOG_INFO, "tracerd: qmgr[21096] exited with status 0")
    session.notice(LOG_WARNING, "tracerd: qmgr[21096] tracer failed: gdb exited; the process runs on untraced")
    session.notice(LOG_WARNING, "tracerd: cannot write /var/log/tracerd/qmgr.21096.log: disk full; output dropped")
    session.line("tracerd: child 21100 exited with status 0")
    session.line("qmgr[21096] wrote tracerd: x")
    session.line("tracerd: qmgr[210960] is another process")
    received = [LOCAL.fullmatch(recv_dgram(syslog_receiver.sock)) for _ in range(6)]
    assert [found["msg"] for found in received if found] == [
        "qmgr[21096]: exited with status 0",
        "qmgr[21096]: tracer failed: gdb exited; the process runs on untraced",
        "qmgr[21096]: cannot write /var/log/tracerd/qmgr.21096.log: disk full; output dropped",
        "qmgr[21096]: child 21100 exited with status 0",
        "qmgr[21096]: qmgr[21096] wrote tracerd: x",
        "qmgr[21096]: qmgr[210960] is another process",
    ]


def test_exited_process_closing_line_on_the_wire(daemon_factory: Any, cbin: Any, spawn: Any, tmp_path: Path) -> None:
    """A real process traced by strace exits: the closing record tracerd sends
    to syslog is exactly "<22>DATE tracerd[DAEMON_PID]: NAME[PID]: exited with
    status 3", and no record of the session repeats NAME[PID] or says "tracerd:".
    No rule asks for strace's lines: only the session's start and end are sent."""
    # conftest's receiver, which a thread reads all the time: a datagram queue holds only 10
    receiver = ThreadedReceiver(tmp_path / "threaded-syslog.sock")
    try:
        daemon = daemon_factory(syslog_path=receiver.path)
        target = spawn(cbin("hooked"), daemon.hook_command(), "hookedd", "3")
        assert target.readline() == "hook=0\n"
        assert target.readline() == "MARKER-after-hook\n"
        target.release()
        assert target.wait() == 3
        daemon.wait_session(target.pid, "exited")
        tag = f"hookedd[{target.pid}]"
        closing = receiver.wait_for(f"{tag}: exited with status 3")
        received = receiver.collect()
    finally:
        receiver.close()
    record = re.fullmatch(r"<22>\w{3} [ \d]\d \d\d:\d\d:\d\d tracerd\[(?P<pid>\d+)\]: (?P<msg>.*)", closing)
    assert record is not None, closing
    assert int(record["pid"]) == daemon.proc.pid
    assert record["msg"] == f"{tag}: exited with status 3"
    messages = [LOCAL_ANY.fullmatch(r) for r in received]
    assert all(m is not None and m["msg"].count(tag) == 1 and "tracerd:" not in m["msg"] for m in messages), received
    ours = [m["msg"] for m in messages if m is not None and tag in m["msg"]]
    assert len(ours) == 2, received  # strace's lines stay in the log (syslog_output is off for strace)
    assert re.fullmatch(rf"{re.escape(tag)}: attached with strace \(tracer pid \d+\)", ours[0])


SYSCALL_LINE = re.compile(r"\b(?:read|write)\(\d+, |^--- SIG|\+\+\+ ")  # strace's lines, never tracerd's


@pytest.mark.parametrize("opt_in", [False, True], ids=["no-rule-asks", "syslog_output"])
def test_strace_lines_reach_syslog_only_where_a_rule_asks(
    opt_in: bool, daemon_factory: Any, cbin: Any, spawn: Any, tmp_path: Path
) -> None:
    """issue 24: under a strace rule the per-process logs hold the system calls; syslog gets
    each session's start and end and the crash summary, and strace's lines (mail content, one
    per call) only with ``syslog_output = true``."""
    receiver = ThreadedReceiver(tmp_path / "threaded-syslog.sock")
    try:
        option = "syslog_output = true\n" if opt_in else ""
        # few lines (reads and writes only): a unix datagram queue holds 10, a burst past it would be dropped
        rule = f'[[rule]]\nprocess = "tgt*"\ntracer = "strace"\nargs = ["-e", "trace=read,write"]\n{option}'
        daemon = daemon_factory(rule, syslog_path=receiver.path)
        exiter = spawn(cbin("hooked"), daemon.hook_command(), "tgtexit", "3")
        crasher = spawn(cbin("crash", "-pthread"), daemon.hook_command(), "tgtcrash", "segv")
        assert exiter.readline() == "hook=0\n"
        assert exiter.readline() == "MARKER-after-hook\n"
        assert crasher.readline() == "hook=0\n"
        exiter.release()
        crasher.release()
        assert exiter.wait() == 3
        assert crasher.wait() == -11
        sessions = [daemon.wait_session(exiter.pid, "exited"), daemon.wait_session(crasher.pid, "crashed")]
        receiver.wait_for(f"tgtexit[{exiter.pid}]: exited with status 3")
        summary = receiver.wait_for(f"tgtcrash[{crasher.pid}]: crashed: SIGSEGV")  # the crit summary: always
        receiver.wait_for(f"tgtcrash[{crasher.pid}]: crashed: killed by SIGSEGV")  # the closing line, last
        received = receiver.collect()
    finally:
        receiver.close()
    assert summary.startswith("<18>")  # mail.crit
    logs = [Path(session["log"]).read_text() for session in sessions]
    assert 'write(1, "MARKER-after-hook\\n", 18)' in logs[0]
    assert "--- SIGSEGV {si_signo=SIGSEGV" in logs[1]
    for target in (exiter, crasher):
        assert any(re.search(rf"\[{target.pid}\]: attached with strace", r) for r in received), received
    syscalls = [r for r in received if SYSCALL_LINE.search(r.partition("]: ")[2].partition(": ")[2])]
    if opt_in:
        assert any('write(1, "MARKER-after-hook\\n", 18)' in r for r in syscalls), received
        assert any("--- SIGSEGV {si_signo=SIGSEGV" in r for r in syscalls), received
    else:
        assert syscalls == [], syscalls
        assert not any("MARKER" in r for r in received), received


def test_receiver_that_never_reads_does_not_block(
    tmp_path: Path, sinks: list[SyslogSink]
) -> None:
    """A unix receiver with a tiny buffer, never read: 10000 sends all return, drops counted."""
    path = tmp_path / "stuck.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        receiver.bind(str(path))
        sink = make_sink(str(path))
        sinks.append(sink)
        results = [sink.send(LOG_INFO, f"smtpd[1]: line {n}") for n in range(10000)]
    assert len(results) == 10000
    assert sink.dropped > 0
    assert sink.sent + sink.dropped == 10000
    assert results.count(False) == sink.dropped


def test_absent_receiver_counts_drops_without_raising(
    tmp_path: Path, sinks: list[SyslogSink]
) -> None:
    """No socket at the path: every send returns False, is counted, and says why."""
    sink = make_sink(str(tmp_path / "nobody.sock"))
    sinks.append(sink)
    assert [sink.send(LOG_INFO, "x") for _ in range(3)] == [False] * 3
    assert sink.dropped == 3
    assert sink.last_error is not None
    assert "No such file" in sink.last_error


def test_restarted_receiver_is_reconnected_after_a_second(
    tmp_path: Path, sinks: list[SyslogSink]
) -> None:
    """Receiver restarted at the same path: drops until the 1 s retry, then delivery resumes."""
    path = tmp_path / "log.sock"
    clock = FakeClock()
    first = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    first.bind(str(path))
    sink = make_sink(str(path), clock=clock)
    sinks.append(sink)
    with first:
        assert sink.send(LOG_INFO, "to the first")
        assert recv_dgram(first).endswith("to the first")
    path.unlink()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as second:
        second.bind(str(path))
        assert not sink.send(LOG_INFO, "lost: old socket refused")
        assert not sink.send(LOG_INFO, "lost: retry not due")
        clock.now += 1.0
        assert sink.send(LOG_INFO, "to the second")
        assert recv_dgram(second).endswith("to the second")
    assert sink.dropped == 2


def test_tcp_receiver_absent_queues_then_drops(sinks: list[SyslogSink]) -> None:
    """tcp to a closed port: sends return, the buffer fills to its bound, then drops counted."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        sink = make_sink(f"tcp://127.0.0.1:{port}")
        sinks.append(sink)
        for _ in range(100):
            sink.send(LOG_INFO, "x" * 8000)
    assert sink.dropped > 0
    assert sink._pending <= MAX_PENDING_BYTES
    assert sink.last_error is not None
    assert "refused" in sink.last_error


def test_tcp_receiver_that_never_reads_does_not_block(sinks: list[SyslogSink]) -> None:
    """tcp receiver accepts but never reads: every send returns, drops counted once full."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(10)
        sink = make_sink(f"tcp://127.0.0.1:{listener.getsockname()[1]}")
        sinks.append(sink)
        sink.send(LOG_INFO, "hello")
        conn, _ = listener.accept()
        with conn:
            # 3000 records of 8 KiB: far more than socket buffers and our 256 KiB hold
            results = [sink.send(LOG_INFO, "x" * MAX_RECORD_BYTES) for _ in range(3000)]
            assert len(results) == 3000
            assert sink.dropped > 0
            assert results.count(False) == sink.dropped
            assert sink._pending <= MAX_PENDING_BYTES


def test_disabled_sink_sends_nothing_and_counts_nothing(
    syslog_receiver: SyslogReceiver, sinks: list[SyslogSink]
) -> None:
    """enabled = false: send() returns False, nothing is sent, no drop is counted."""
    config = SyslogConfig(enabled=False, address=str(syslog_receiver.path))
    sink = SyslogSink(config)
    sinks.append(sink)
    assert not sink.send(LOG_INFO, "quiet")
    assert (sink.sent, sink.dropped) == (0, 0)
    assert syslog_receiver.collect() == []


@pytest.mark.parametrize(
    ("address", "endpoint"),
    [
        ("/dev/log", Endpoint("unix", path="/dev/log")),
        ("udp://loghost", Endpoint("udp", host="loghost", port=514)),
        ("udp://10.1.2.3:1514", Endpoint("udp", host="10.1.2.3", port=1514)),
        ("tcp://[2001:db8::1]:6514", Endpoint("tcp", host="2001:db8::1", port=6514)),
        ("tcp://[::1]", Endpoint("tcp", host="::1", port=514)),
    ],
)
def test_addresses_parse(address: str, endpoint: Endpoint) -> None:
    """Unix paths, udp/tcp host[:port], IPv6 in brackets; the port defaults to 514."""
    assert parse_address(address) == endpoint


@pytest.mark.parametrize("address", ["dev/log", "udp://", "tcp://host:99999", "http://x:1",
                                     "tcp://::1:514"])  # fmt: skip
def test_bad_addresses_are_config_errors(address: str) -> None:
    """Anything else is a ConfigError on syslog.address, not a surprise at first send."""
    with pytest.raises(ConfigError, match=r"syslog\.address"):
        parse_address(address)


def test_tcp_queued_frame_goes_out_without_another_message(sinks: list[SyslogSink]) -> None:
    """tcp: a crash summary queued while the receiver was down reaches it once it is up,
    with no later send() or flush() call: the sink's own loop timer pushes it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))  # bound, not yet listening: the first connect is refused
        port = listener.getsockname()[1]

        async def scenario() -> bytes:
            sink = make_sink(f"tcp://127.0.0.1:{port}")
            sinks.append(sink)
            SessionSyslog(sink, "smtpd[7]", 200).notice(LOG_CRIT, "crashed: SIGSEGV")
            assert sink._pending > 0  # queued: nobody listens yet
            listener.listen()
            listener.setblocking(False)
            data = b""
            for _ in range(200):  # bounded: 20 s at most
                await asyncio.sleep(0.1)
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                with conn:
                    conn.settimeout(10)
                    while b"SIGSEGV" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                break
            return data

        data = asyncio.run(scenario())
    assert b"smtpd[7]: crashed: SIGSEGV" in data

