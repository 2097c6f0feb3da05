"""tracerctl's client of tracerd's socket (and the tests' and bench's).

One JSON line out, one JSON object line back (README, "The socket"); each step
is bounded by an absolute monotonic deadline.  :func:`find_socket` also gives a
``socket_group`` member the system socket (README, "Non-root users").  Standard
library only; tracerd.hook repeats the socket rule and the reasons.

Security: nothing from the daemon is trusted beyond one JSON object of at most
:data:`MAX_REPLY` bytes.

Diagnostics: every failure is Unreachable (or Timeout, BadAnswer) with a
one-line reason naming the socket.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from typing import Any

SYSTEM_SOCKET = "/run/tracerd/tracerd.sock"
MAX_REPLY = 64 << 20  # a crash report of hundreds of threads is megabytes
ROOT_HINT = "the hook must run as root"
CTL_HINT = "need root or socket_group"


class Unreachable(Exception):
    """Nobody answered; the message is the one-line reason."""


class Timeout(Unreachable):
    """A deadline passed."""


class BadAnswer(Unreachable):
    """tracerd closed the connection without a line, or sent no JSON object."""


def user_socket() -> str:
    """The per-user socket of a non-root tracerd."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "tracerd", "tracerd.sock")
    return f"/tmp/tracerd-{os.getuid()}/tracerd.sock"


def default_socket() -> str:
    """The daemon's default socket: the system one for root, else the per-user one."""
    return SYSTEM_SOCKET if os.geteuid() == 0 else user_socket()


def find_socket(system: str = SYSTEM_SOCKET) -> str:
    """The system socket for root or anyone who may connect to it; else the per-user one."""
    if os.geteuid() == 0:
        return system
    try:
        is_socket = stat.S_ISSOCK(os.stat(system).st_mode)
    except OSError:  # absent, or a directory on the way we may not search
        return user_socket()
    # connect(2) on a unix socket needs write permission on it
    return system if is_socket and os.access(system, os.W_OK) else user_socket()


def connect(path: str, deadline: float, hint: str = CTL_HINT) -> socket.socket:
    """A connected socket by ``deadline``; ``hint`` says who may connect, for EACCES."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        sock.connect(path)
    except FileNotFoundError:
        sock.close()
        raise Unreachable(f"tracerd is not running (no socket {path})") from None
    except ConnectionRefusedError:
        sock.close()
        raise Unreachable(f"tracerd is not running (nobody listens on {path})") from None
    except PermissionError:
        sock.close()
        raise Unreachable(f"permission denied on {path} ({hint})") from None
    except BlockingIOError:  # EAGAIN: the listen queue is full, tracerd takes nobody
        sock.close()
        raise Unreachable(f"tracerd accepts no connections (its queue on {path} is full: is it hung?)") from None
    except TimeoutError:
        sock.close()
        raise Timeout(f"tracerd did not accept the connection on {path}") from None
    except OSError as err:
        sock.close()
        raise Unreachable(f"cannot connect to {path}: {err.strerror}") from None
    return sock


def send(sock: socket.socket, request: dict[str, Any], deadline: float) -> None:
    try:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        sock.sendall(json.dumps(request).encode() + b"\n")
    except TimeoutError:
        raise Timeout("tracerd did not take the request") from None
    except OSError as err:
        raise Unreachable(f"talking to tracerd: {err.strerror or err}") from None


def read_line(sock: socket.socket, pending: bytes, deadline: float) -> tuple[dict[str, Any], bytes]:
    """One JSON object line by ``deadline``, and what came after it."""
    try:
        while b"\n" not in pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                raise BadAnswer("tracerd closed the connection without an answer")
            pending += chunk
            if len(pending) > MAX_REPLY:
                raise BadAnswer("tracerd's answer is too long")
    except TimeoutError:
        raise Timeout("tracerd did not answer") from None
    except BadAnswer:
        raise
    except OSError as err:
        raise Unreachable(f"talking to tracerd: {err.strerror or err}") from None
    line, _, rest = pending.partition(b"\n")
    try:
        answer = json.loads(line)
    except ValueError:
        raise BadAnswer("tracerd sent a malformed answer") from None
    if not isinstance(answer, dict):
        raise BadAnswer("tracerd sent a malformed answer")
    return answer, rest


def call(path: str, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """One request, one reply within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    try:
        with connect(path, deadline) as sock:
            send(sock, request, deadline)
            reply, _ = read_line(sock, b"", deadline)
    except Timeout:
        raise Timeout(f"tracerd did not answer within {timeout:g} s") from None
    return reply
