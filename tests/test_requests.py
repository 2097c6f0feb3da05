"""Hostile and malformed requests: each gets a clear error, the daemon serves on."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tracerd.protocol import MAX_REQUEST_BYTES


def hook_request(name: Any, pid: Any) -> bytes:
    return json.dumps({"op": "hook", "name": name, "pid": pid}).encode() + b"\n"


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"{not json\n", "malformed JSON"),
        (b"[1, 2]\n", "must be a JSON object"),
        (b'{"op": "explode"}\n', "unknown op"),
        (b'{"op": "hook", "pid": 5}\n', "missing field name"),
        (b'{"op": "status", "extra": 1}\n', "unknown field"),
        (b'\xff\xfe\x00garbage\n', "malformed JSON"),
        (hook_request("../x", os.getpid()), "bad process name"),
        (hook_request("", os.getpid()), "bad process name"),
        (hook_request("a" * 65, os.getpid()), "bad process name"),
        (hook_request("smtpd\nfake", os.getpid()), "bad process name"),
        (hook_request(".hidden", os.getpid()), "bad process name"),
        (hook_request("..", os.getpid()), "bad process name"),
        (hook_request("a/b", os.getpid()), "bad process name"),
        (hook_request("smtpd\x00", os.getpid()), "bad process name"),
        (hook_request(7, os.getpid()), "name must be a string"),
        (hook_request("smtpd", 0), "bad pid 0"),
        (hook_request("smtpd", -1), "bad pid -1"),
        (hook_request("smtpd", "12"), "pid must be an integer"),
        (hook_request("smtpd", True), "pid must be an integer"),
        (hook_request("smtpd", 1.5), "pid must be an integer"),
    ],
    # the same ids in every pytest-xdist worker (each has its own pid)
    ids=lambda value: value.decode("latin-1").replace(str(os.getpid()), "PID") if isinstance(value, bytes) else None,
)
def test_bad_requests_get_a_clear_error(shared_daemon: Any, payload: bytes, needle: str) -> None:
    """Every malformed request: ok false, code bad_request, a message naming the fault."""
    before = shared_daemon.status()["counters"]["bad_requests"]  # one tracerd for the module's readers
    reply = shared_daemon.request(payload)
    assert reply["ok"] is False
    assert reply["error"] == "bad_request"
    assert needle in reply["message"]
    assert shared_daemon.status()["counters"]["bad_requests"] > before


def test_oversize_request_is_refused_and_connection_closed(shared_daemon: Any) -> None:
    """A frame over the cap: one error reply, then the connection is closed."""
    daemon = shared_daemon  # the connection is closed, tracerd serves on: the module's one tracerd
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(daemon.socket))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"{" + b" " * (MAX_REQUEST_BYTES * 4) + b"}\n")
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    reply = json.loads(data.splitlines()[0])
    assert reply["error"] == "bad_request"
    assert "too large" in reply["message"]
    assert daemon.status()["daemon"]["pid"] == daemon.proc.pid


def test_nonexistent_pid(shared_daemon: Any) -> None:
    """A pid that names no process: no_such_process."""
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    reply = shared_daemon.request(hook_request("smtpd", pid_max))
    assert reply == {"ok": False, "error": "no_such_process", "message": f"no such process {pid_max}"}


def test_pid_that_is_not_an_ancestor_is_refused(shared_daemon: Any, cbin: Any, spawn: Any) -> None:
    """A root caller naming a sibling process with a hook request is refused."""
    daemon = shared_daemon  # a refusal: the module's one tracerd
    sleeper = spawn(cbin("sleeper"))
    assert sleeper.readline() == "ready\n"
    before = daemon.status()["counters"]["refused"]
    reply = daemon.request(hook_request("smtpd", sleeper.pid))
    assert reply["ok"] is False
    assert reply["error"] == "denied"
    assert "not an ancestor" in reply["message"]
    assert daemon.status()["counters"]["refused"] == before + 1
    # the sibling was not traced
    assert "TracerPid:\t0" in Path(f"/proc/{sleeper.pid}/status").read_text()


def _as_nobody(socket_path: str, payload: bytes) -> tuple[int, str]:
    """Send payload from a child that dropped to uid/gid nobody."""
    code = (
        "import os, socket, sys\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "try:\n"
        f"    s.connect({socket_path!r})\n"
        "except PermissionError:\n"
        "    print('EACCES'); sys.exit(0)\n"
        f"s.sendall({payload!r})\n"
        "print(s.recv(65536).decode())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False)
    return result.returncode, result.stdout.strip()


ALL_OPS = [
    b'{"op": "status"}\n', b'{"op": "show", "pid": 1}\n', b'{"op": "crashes"}\n', b'{"op": "crash", "id": "x"}\n',
    b'{"op": "attach", "pid": 1}\n', b'{"op": "detach", "pid": 1}\n', b'{"op": "where", "pid": 1}\n',
    b'{"op": "hook", "name": "smtpd", "pid": 1}\n',
]  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to uid nobody")
@pytest.mark.parametrize("group", [None, "adm"])
def test_non_root_outside_socket_group_is_refused_everything(
    daemon_factory: Any, public_dir: Path, group: str | None
) -> None:
    """A uid outside socket_group (or with none set) cannot even connect: the
    socket is 0600 root, or 0660 root:group; every operation is refused."""
    extra = f'socket_group = "{group}"' if group else ""
    daemon = daemon_factory(extra, socket_path=public_dir / "tracerd.sock")
    mode = daemon.socket.stat().st_mode & 0o777
    assert mode == (0o660 if group else 0o600)
    for payload in ALL_OPS:
        code, out = _as_nobody(str(daemon.socket), payload)
        assert (code, out) == (0, "EACCES"), payload


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to uid nobody")
def test_socket_group_member_reads_status_but_cannot_attach(daemon_factory: Any, public_dir: Path) -> None:
    """A socket_group member may read status; attach and hook are refused."""
    daemon = daemon_factory('socket_group = "nogroup"', socket_path=public_dir / "tracerd.sock")
    _, out = _as_nobody(str(daemon.socket), b'{"op": "status"}\n')
    assert json.loads(out)["ok"] is True
    _, out = _as_nobody(str(daemon.socket), b'{"op": "attach", "pid": 1}\n')
    reply = json.loads(out)
    assert reply["ok"] is False
    assert reply["error"] == "denied"
    assert reply["message"] == "attach needs root (caller uid 65534)"
    for payload in ALL_OPS[4:]:
        _, out = _as_nobody(str(daemon.socket), payload)
        reply = json.loads(out)
        assert reply["error"] == "denied", payload
    for payload in ALL_OPS[:4]:
        _, out = _as_nobody(str(daemon.socket), payload)
        assert json.loads(out).get("error") != "denied", payload
    assert daemon.status()["daemon"]["pid"] == daemon.proc.pid


def test_one_bad_client_does_not_harm_another(shared_daemon: Any) -> None:
    """A client that connects and sends half a frame does not block others."""
    daemon = shared_daemon  # the half frame goes with its connection: the module's one tracerd
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow:
        slow.connect(str(daemon.socket))
        slow.sendall(b'{"op": "sta')
        for _ in range(5):
            assert daemon.status()["daemon"]["pid"] == daemon.proc.pid


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b'{"op": "hook", "name": "smtpd", "pid": 5, "ack": 1}\n', "ack must be true or false"),
        (b'{"op": "hook", "name": "smtpd", "pid": 5, "ack": "yes"}\n', "ack must be true or false"),
        (b'{"op": "status", "ack": true}\n', 'status: unknown field "ack"'),
        (b'{"op": "attach", "pid": 5, "ack": true}\n', 'attach: unknown field "ack"'),
    ],
)
def test_ack_is_a_hook_only_boolean(shared_daemon: Any, payload: bytes, needle: str) -> None:
    """``ack`` is admitted on hook requests only, and only as true or false."""
    reply = shared_daemon.request(payload)
    assert (reply["ok"], reply["error"]) == (False, "bad_request")
    assert needle in reply["message"]


def test_refused_hook_gets_no_acknowledgement(shared_daemon: Any) -> None:
    """A hook that asks for an acknowledgement but is refused gets the refusal
    as its only line (the daemon acknowledges only what it accepted)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(shared_daemon.socket))
        sock.sendall(b'{"op": "hook", "name": "smtpd", "pid": 1, "ack": true}\n')
        sock.shutdown(socket.SHUT_WR)  # then the daemon closes after its reply
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert [json.loads(line) for line in data.splitlines()] == [
        {"ok": False, "error": "denied", "message": "refusing to trace pid 1 (init)"}
    ]


# Run by the "hooked" target as its debugger command: sends one hook request
# for its grandparent (the target; sh is its parent) and records every line.
RAW_HOOK = """
import json, socket, sys
path, ack, out, name, pid = sys.argv[1:]
request = {"op": "hook", "name": name, "pid": int(pid)}
if ack == "ack":
    request["ack"] = True
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
    sock.settimeout(30)
    sock.connect(path)
    sock.sendall(json.dumps(request).encode() + b"\\n")
    data = b""
    while data.count(b"\\n") < (2 if ack == "ack" else 1):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(5)
    while chunk := sock.recv(65536):
        data += chunk  # anything more before the daemon closes
open(out, "wb").write(data)
"""


@pytest.mark.parametrize("ack", ["ack", "noack"])
def test_hook_acknowledgement_on_the_wire(daemon: Any, cbin: Any, spawn: Any, tmp_path: Path, ack: str) -> None:
    """An accepted hook with ``"ack": true`` gets ``{"ack": true}`` and then the
    final reply; without it (older hooks) the final reply is the only line."""
    client = tmp_path / "raw_hook.py"
    client.write_text(RAW_HOOK)
    out = tmp_path / "lines"
    command = f"{sys.executable} {client} {daemon.socket} {ack} {out}"
    target = spawn(cbin("hooked"), command, "smtpd", "0")
    assert target.readline() == "hook=0\n"
    target.release()
    assert target.wait() == 0
    lines = [json.loads(line) for line in out.read_bytes().splitlines()]
    final = lines.pop()
    assert final["ok"] is True
    assert final["session"]["pid"] == target.pid
    assert final["session"]["state"] == "attached"
    assert lines == ([{"ack": True}] if ack == "ack" else [])
