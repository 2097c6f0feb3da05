"""The compiled pftrace-hook (hook/pftrace-hook.c) is the Python one, faster (docs/performance.md, "Hook
latency"): make builds it; its help, version and usage errors are the Python form's, byte for
byte; it sends tracerd the same request for any name, hostile bytes included; it reads every
answer as the Python form does, and hostile answers (malformed, nested, endless, fuzzed) end in
one warning line, never a crash.  tests/test_hook.py runs every hook behaviour against both."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tracerd
from tests.support import BIN, StubTracerd, python_hook

ROOT = Path(__file__).resolve().parent.parent
COMPILED = BIN / "pftrace-hook"
FORMS = {"compiled": [str(COMPILED)], "python": python_hook()}


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[StubTracerd]:
    server = StubTracerd(tmp_path / "stub.sock")
    yield server
    server.close()


def run(
    form: str, *args: str | bytes, env: dict[str, str] | None = None, **how: Any
) -> subprocess.CompletedProcess[bytes]:
    """One run of the hook in ``form``, its output captured (``how``: other Popen arguments)."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("TRACERD_")}
    output: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **how}
    return subprocess.run([*FORMS[form], *args], timeout=60, check=False, env={**clean, **(env or {})},
                          **output)  # fmt: skip


def outcome(result: subprocess.CompletedProcess[bytes]) -> tuple[int, bytes, bytes]:
    return result.returncode, result.stdout, result.stderr


def test_make_builds_the_hook_from_c_with_the_package_version() -> None:
    """.venv/bin/pftrace-hook is an ELF executable that `make venv` built from hook/pftrace-hook.c
    (make has nothing left to do for it), and its --version is the package's."""
    assert COMPILED.read_bytes()[:4] == b"\x7fELF"
    assert os.stat(COMPILED).st_mtime >= os.stat(ROOT / "hook/pftrace-hook.c").st_mtime
    dry = subprocess.run(["make", "-s", "-q", "-C", str(ROOT), str(COMPILED.relative_to(ROOT))],
                         capture_output=True, timeout=60, check=False)  # fmt: skip
    assert dry.returncode == 0, "make venv's hook is out of date with hook/pftrace-hook.c"
    assert run("compiled", "--version").stdout == f"pftrace-hook {tracerd.__version__}\n".encode()


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--help"], {}), (["-h"], {}), (["--version"], {}), (["x", "--help"], {}),
        ([], {}), (["smtpd"], {}), (["a", "b", "c"], {}), (["smtpd", "12x"], {}), (["smtpd", ""], {}),
        (["--timeout", "0", "x", "1"], {}), (["--timeout=abc", "x", "1"], {}), (["--timeout", "nan", "x", "1"], {}),
        (["--timeout", "inf", "x", "1"], {}), (["--timeout", "0x10", "x", "1"], {}),
        (["--ack-timeout", "3601", "x", "1"], {}), (["--bogus", "x", "1"], {}), (["--socket"], {}),
        (["--socket=", "x", "1"], {}), (["--tracer", "--help"], {}), (["x", "1"], {"TRACERD_ACK_TIMEOUT": "junk"}),
        (["--timeout", "it's", "x", "1"], {}), (["--timeout", 'say "no"', "x", "1"], {}),
        (["--timeout", "\u00e9t\u00e9", "x", "1"], {}), (["--timeout", "1\nx\t\r\x1b", "x", "1"], {}),
        (["--timeout", b"\xff\xfe", "x", "1"], {}), (["smtpd", "\u2028"], {}),
    ],
)  # fmt: skip
def test_help_version_and_usage_errors_are_the_python_forms(args: list[str | bytes], env: dict[str, str]) -> None:
    """For help, version and every kind of usage error, the compiled hook prints what the Python
    hook prints, on the same stream, and exits with the same code (0 or 2)."""
    compiled, python = run("compiled", *args, env=env), run("python", *args, env=env)
    assert outcome(compiled) == outcome(python)
    assert compiled.returncode in (0, 2)


NAMES: list[str | bytes] = [
    "smtpd", "a\"b", "back\\slash", "tab\tnew\nline", "caf\u00e9", "\x7f", "\u2603", "\U0001d11e",
    b"bad\xff\xfeutf8", b"\xc0\xaf overlong", b"\xed\xa0\x80 surrogate", "-D", "--",
]  # fmt: skip


@pytest.mark.parametrize("name", NAMES, ids=range(len(NAMES)))
def test_the_request_is_the_python_forms(stub: StubTracerd, name: str | bytes) -> None:
    """Whatever the name (quotes, control characters, non-ASCII, bytes that are not UTF-8), both
    forms send tracerd one line that json reads as the same request."""
    lines, warnings = [], []
    for form in FORMS:
        stub.answers.append(b'{"ok": false, "error": "denied", "message": "no"}\n')
        result = run(form, "--socket", str(stub.path), "--tracer", "watch", name, "+42")
        assert result.returncode == 1, result.stderr
        assert result.stderr.count(b"\n") == 1, result.stderr
        warnings.append(result.stderr)
        request = stub.requests.pop()
        assert request.endswith(b"\n"), request
        assert request.count(b"\n") == 1, request
        lines.append(json.loads(request))
    assert lines[0] == lines[1]
    assert warnings[0] == warnings[1]
    assert (lines[0]["pid"], lines[0]["ack"], lines[0]["tracer"]) == (42, True, "watch")


ANSWERS: list[bytes] = [
    b'{"ack":true}\n{"ok":true,"session":{"pid":1}}\n',
    b'{"ack": true}\n{"ok": false, "error": "attach_failed", "message": "caf\\u00e9 \\ud834\\udd1e"}\n',
    b'{"ok": false, "error": "denied", "message": "pid 5 is not an ancestor"}\n',
    b'{"ok": false, "error": "bad_request", "message": "hook: unknown field \\"ack\\""}\n',
    b'{"ok": false, "error": "internal"}\n',
    b'{"ok": false, "error": "", "message": ""}\n',
    b'{"ok": false}\n',
    b'{"ok": 1}\n',
    b'{"ok": false, "ok": true}\n',
    b'{"ok": true, "ok": false, "message": "last one counts"}\n',
    b'{"ack": true, "ack": false}\n',
    b'{"ok": true} x\n',
    b'{"ok": true\n',
    b"[1, 2]\n",
    b'"ok"\n',
    b"\xff\xfe\n",
    b'{"ok": false, "message": "\xff"}\n',
    b"[" * 100_000 + b"\n",
    b'{"a": ' + b"[" * 100_000 + b"\n",
    b'{"ok": true}',
    b"",
    b"x" * (1 << 20) + b"y" * 100,
    b'{"ack": true}\n',
    b'{"ack": true}\n{"ok": tru}\n',
    b'  {"ok" : true , "session" : {"n": [1, 2.5e3, -0, null, "\\"}"]}}  \n',
    b'{"ok": false, "message": [ ], "error": "empty list"}\n',
    b'{"ok": false, "message": { }, "error": "empty object"}\n',
    b'{"ok": false, "error": "bad_request\\u0000", "message": "unknown field \\"ack\\""}\n',
    b'{"ok": false, "error": "bad_request", "message": "x\\u0000unknown field \\"ack\\""}\n',
    b'{"ok": false, "error": "x", "message": "one\\ntwo\\u001b[31m \\u0085 \\u2028 \\u007f"}\n',
]


@pytest.mark.parametrize("answer", ANSWERS, ids=range(len(ANSWERS)))
def test_answers_are_read_as_the_python_form_reads_them(stub: StubTracerd, answer: bytes) -> None:
    """For each answer tracerd could send, and many it should not (malformed, nested 100000 deep,
    longer than 1 MiB, repeated keys, bytes that are not UTF-8, a closed connection), both forms
    exit alike and print the same warning line."""
    outcomes = []
    for form in FORMS:
        stub.answers.append(answer)
        result = run(form, "--socket", str(stub.path), "--timeout", "5", "--ack-timeout", "5", "smtpd", "7")
        outcomes.append(outcome(result))
    assert outcomes[0] == outcomes[1]
    code, _, stderr = outcomes[0]
    assert code in (0, 1)
    assert stderr.count(b"\n") == (code == 1)


@pytest.fixture
def syslog_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket standing for /dev/log (its path: .getsockname())."""
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "log.sock"))
    receiver.settimeout(10)
    yield receiver
    receiver.close()


@pytest.mark.parametrize("form", FORMS)
def test_a_reply_cannot_make_a_second_line(stub: StubTracerd, syslog_socket: socket.socket, form: str) -> None:
    """A refusal whose message holds newlines and escape sequences is still one warning line, on
    stderr and in the syslog datagram, with those characters shown as \\xNN."""
    stub.answers.append(b'{"ok": false, "error": "x", "message": "one\\ntwo\\u001b[31m"}\n')
    result = run(form, "--socket", str(stub.path), "--syslog", syslog_socket.getsockname(), "smtpd", "7")
    datagram = syslog_socket.recv(65536)
    assert result.returncode == 1
    assert result.stderr == b"pftrace-hook: warning: smtpd[7]: not traced: one\\x0atwo\\x1b[31m\n"
    assert datagram.startswith(b"<20>")
    assert b" pftrace-hook[" in datagram
    assert datagram.endswith(b"]: warning: smtpd[7]: not traced: one\\x0atwo\\x1b[31m")
    assert b"\n" not in datagram


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
replies = st.dictionaries(
    st.sampled_from(["ok", "ack", "error", "message", "session", "other"]), json_values, max_size=5
).map(lambda reply: json.dumps(reply).encode() + b"\n")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(answer=replies | st.binary(max_size=200))
def test_fuzzed_answers_agree_and_never_crash(stub: StubTracerd, answer: bytes) -> None:
    """Hypothesis-made answers (JSON objects of any shape, and raw bytes): the compiled hook never
    dies of a signal, exits 0 only when the Python form does, and says so in at most one line."""
    codes = []
    for form in FORMS:
        stub.answers.append(answer)
        result = run(form, "--socket", str(stub.path), "--timeout", "5", "--ack-timeout", "2", "smtpd", "7")
        codes.append(result.returncode)
        if form == "compiled":
            assert result.returncode in (0, 1), result
            assert result.stderr.count(b"\n") == (result.returncode == 1), result.stderr
    assert codes[0] == codes[1], answer


@pytest.mark.parametrize("form", FORMS)
def test_a_stderr_nobody_reads_loses_no_syslog_line(stub: StubTracerd, syslog_socket: socket.socket, form: str) -> None:
    """With stderr a pipe whose reader has gone (SIGPIPE at its default, as Postfix leaves it),
    a refusal still reaches syslog and the hook exits 1, not killed by the signal."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        stub.answers.append(b'{"ok": false, "error": "denied", "message": "no"}\n')
        result = run(form, "--socket", str(stub.path), "--syslog", syslog_socket.getsockname(), "smtpd", "7",
                     stderr=write_end)  # fmt: skip
    finally:
        os.close(write_end)
    assert result.returncode == 1
    assert syslog_socket.recv(65536).endswith(b"]: warning: smtpd[7]: not traced: no")


@pytest.mark.parametrize("form", FORMS)
def test_a_closed_stdout_does_not_fail_an_attach(stub: StubTracerd, form: str) -> None:
    """Started with descriptor 1 closed, the hook still reports a confirmed attach with exit 0."""
    stub.answers.append(b'{"ack":true}\n{"ok":true,"session":{}}\n')
    result = run(form, "--socket", str(stub.path), "smtpd", "7", stdout=None, stderr=subprocess.PIPE,
                 preexec_fn=lambda: os.close(1))  # fmt: skip
    assert (result.returncode, result.stderr) == (0, b"")


@pytest.mark.parametrize("form", FORMS)
def test_an_answer_begun_before_a_restart_wait_is_kept(stub: StubTracerd, form: str) -> None:
    """A restarting tracerd (SOCKET.restarting fresh) whose acknowledgement began before
    --ack-timeout and ended after it: the hook keeps the first part and is attached."""
    Path(f"{stub.path}.restarting").touch()
    stub.answers.append((b'{"ack":', 0.6, b'true}\n{"ok":true,"session":{}}\n'))
    result = run(form, "--socket", str(stub.path), "--ack-timeout", "0.2", "--timeout", "30", "smtpd", "7")
    assert (result.returncode, result.stderr) == (0, b"")


def test_the_compiled_hook_attaches_through_system(daemon: Any, cbin: Any, spawn: Any) -> None:
    """As Postfix runs it (system() of debugger_command in the process to trace), the compiled hook
    gets its caller attached and exits 0."""
    target = spawn(cbin("hooked"), f"{COMPILED} --socket {daemon.socket} --timeout 60", "smtpd", "0")
    assert target.readline() == "hook=0\n"
    assert daemon.session(target.pid)["state"] == "attached"
    target.release()
    assert target.wait() == 0
