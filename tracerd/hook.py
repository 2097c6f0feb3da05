"""pftrace-hook: what Postfix's debugger_command runs.

Asks tracerd to attach a tracer to PID; exits 0 only once tracerd confirms
the attach, 1 otherwise (fail open), 2 on a usage error (man/pftrace-hook.8).
Bounded: ``--ack-timeout`` for the acknowledgement, ``--timeout`` in all,
longer only while ``SOCKET.restarting`` is fresh (docs/design.md, "Reliability").
The Python form of hook/pftrace-hook.c (tests/test_hook_compiled.py holds them
together); run as ``python3 -IS``, it imports only the standard library.

Security: trusts nothing it is given; tracerd checks credentials, name and
ancestry.  From the socket, only one JSON object line of at most MAX_REPLY bytes.

Diagnostics: one line ``pftrace-hook: warning: NAME[PID]: not traced: REASON``
on stderr and at mail.warning to syslog.
"""

import json
import os
import sys
import time
from socket import AF_UNIX, SOCK_DGRAM, SOCK_STREAM
from socket import socket as Socket

VERSION = "0.1.0"  # tracerd.__version__ (tests/test_hook_startup.py checks)
SYSTEM_SOCKET = "/run/tracerd/tracerd.sock"
MAX_REPLY = 1 << 20
ROOT_HINT = "the hook must run as root"
DEFAULT_TIMEOUT = 15.0
DEFAULT_ACK_TIMEOUT = 1.5
RESTART_GRACE = 10.0  # a SOCKET.restarting older than this is a tracerd that never came back
SYSLOG_PATH = "/dev/log"
LOG_MAIL_WARNING = 2 * 8 + 4
USAGE = (
    "usage: pftrace-hook [--socket PATH] [--timeout SECONDS] [--ack-timeout SECONDS]"
    " [--tracer NAME] [--syslog PATH] NAME PID"
)
HELP = f"""{USAGE}

Ask tracerd to trace process PID of Postfix service NAME (Postfix's
debugger_command: pftrace-hook $process_name $process_id).  Exit 0 once the
tracer is attached, 1 (with one warning line here and to syslog) when it is
not: the process then runs on untraced.

positional arguments:
  NAME                   the service name ($process_name)
  PID                    the process to trace ($process_id)

options:
  -h, --help             show this help and exit
  --version              show the version and exit
  --socket PATH          tracerd's socket (default $TRACERD_SOCKET, else {SYSTEM_SOCKET} as root)
  --timeout SECONDS      give up on the attach after SECONDS in all (default {DEFAULT_TIMEOUT:g})
  --ack-timeout SECONDS  give up when tracerd does not acknowledge within SECONDS
                         (default $TRACERD_ACK_TIMEOUT, else {DEFAULT_ACK_TIMEOUT:g})
  --tracer NAME          the tracer to attach (default: tracerd's rules)
  --syslog PATH          the syslog socket for the warning line (default {SYSLOG_PATH})
"""
OPTIONS = ("socket", "timeout", "ack-timeout", "tracer", "syslog")


class HookFailed(Exception):
    """Tracing could not be confirmed; the message is the one-line reason."""


class Answered(Exception):
    """--help or --version: the text to print on stdout, and exit 0."""


class Timeout(Exception):
    """A deadline passed (connect, send or answer)."""


def user_socket() -> str:
    """The per-user socket (tracerd.client's rule)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and xdg.startswith("/"):
        return xdg.rstrip("/") + "/tracerd/tracerd.sock"
    return f"/tmp/tracerd-{os.getuid()}/tracerd.sock"


def default_socket() -> str:
    """As tracerd.client.default_socket (tests/test_hook_startup.py holds them together)."""
    return SYSTEM_SOCKET if os.geteuid() == 0 else user_socket()


def parse_args(argv: list[str]) -> dict[str, str | float | int]:
    """A tiny parser (argparse costs start-up time on every process start)."""
    opts: dict[str, str | float | int] = {
        "socket": os.environ.get("TRACERD_SOCKET") or default_socket(),
        "timeout": DEFAULT_TIMEOUT,
        "ack-timeout": os.environ.get("TRACERD_ACK_TIMEOUT") or DEFAULT_ACK_TIMEOUT,
        "syslog": SYSLOG_PATH,
    }
    given: set[str] = set()
    positional: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in ("-h", "--help"):
            raise Answered(HELP)
        if arg == "--version":
            raise Answered(f"pftrace-hook {VERSION}")
        if arg.startswith("--") and arg != "--":
            key, eq, value = arg[2:].partition("=")
            if key not in OPTIONS:
                raise ValueError(f"unknown option --{key}")
            if not eq:
                value = next(args, "")
            if not value:
                raise ValueError(f"--{key} needs a value")
            opts[key] = value
            given.add(key)
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise ValueError("expected NAME and PID")
    for key in ("timeout", "ack-timeout"):
        where = f"--{key}" if key in given or key == "timeout" else "TRACERD_ACK_TIMEOUT"
        opts[key] = seconds(where, opts[key])
    opts["name"] = positional[0]
    try:
        opts["pid"] = int(positional[1])
    except ValueError as err:
        raise ValueError(f"PID must be a number, not {json.dumps(positional[1])}") from err
    return opts


def seconds(where: str, value: str | float | int) -> float:
    """A number of seconds, 0 < SECONDS <= 3600, from option or variable ``where``."""
    try:
        number = float(value)
    except ValueError:
        number = float("nan")  # and NaN fails the range test below
    if not 0 < number <= 3600:
        raise ValueError(f"{where} wants a number of seconds, 0 < SECONDS <= 3600, not {json.dumps(str(value))}")
    return number


def shown(duration: float) -> str:
    return f"{duration:g} s"


# -- JSON lines ----------------------------------------------------------------


def encode_request(request: dict[str, str | int | bool]) -> bytes:
    return (json.dumps(request) + "\n").encode()


def decode_object(line: bytes) -> dict[str, object] | None:
    """One JSON object from a line, or None when the line holds anything else."""
    try:
        value = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):  # includes JSONDecodeError, UnicodeDecodeError
        return None
    return value if isinstance(value, dict) else None


# -- the socket ----------------------------------------------------------------


def connect(path: str, deadline: float) -> Socket:
    """A connected socket by ``deadline`` (tracerd.client.connect's reasons)."""
    try:
        sock = Socket(AF_UNIX, SOCK_STREAM)
    except OSError as err:  # out of descriptors or memory
        raise HookFailed(f"cannot connect to {path}: {err.strerror or err}") from None
    try:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        sock.connect(path)
    except BaseException as err:
        sock.close()
        if isinstance(err, FileNotFoundError):
            raise HookFailed(f"tracerd is not running (no socket {path})") from None
        if isinstance(err, ConnectionRefusedError):
            raise HookFailed(f"tracerd is not running (nobody listens on {path})") from None
        if isinstance(err, PermissionError):
            raise HookFailed(f"permission denied on {path} ({ROOT_HINT})") from None
        if isinstance(err, BlockingIOError):  # EAGAIN: the listen queue is full, tracerd takes nobody
            raise HookFailed(f"tracerd accepts no connections (its queue on {path} is full: is it hung?)") from None
        if isinstance(err, TimeoutError):
            raise Timeout(f"tracerd did not accept the connection on {path}") from None
        if isinstance(err, OSError):
            raise HookFailed(f"cannot connect to {path}: {err.strerror or err}") from None
        raise
    return sock


def send(sock: Socket, line: bytes, deadline: float) -> None:
    try:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        sock.sendall(line)
    except TimeoutError:
        raise Timeout("tracerd did not take the request") from None
    except OSError as err:
        raise HookFailed(f"talking to tracerd: {err.strerror or err}") from None


def read_line(sock: Socket, pending: bytearray, deadline: float) -> dict[str, object]:
    """One JSON object line by ``deadline``, taken off ``pending`` (which keeps any partial line)."""
    try:
        while b"\n" not in pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                raise HookFailed("tracerd closed the connection without an answer")
            pending += chunk
            if len(pending) > MAX_REPLY:
                raise HookFailed("tracerd's answer is too long")
    except TimeoutError:
        raise Timeout("tracerd did not answer") from None
    except OSError as err:
        raise HookFailed(f"talking to tracerd: {err.strerror or err}") from None
    end = pending.index(b"\n")
    answer = decode_object(bytes(pending[:end]))
    del pending[: end + 1]
    if answer is None:
        raise HookFailed("tracerd sent a malformed answer")
    return answer


def request_attach(opts: dict[str, str | float | int]) -> dict[str, object]:
    """Send the request; wait ``--ack-timeout`` for the ack, then the rest of ``--timeout``."""
    started = time.monotonic()
    deadline = started + float(opts["timeout"])
    ack_deadline = min(deadline, started + float(opts["ack-timeout"]))
    unacknowledged = (
        f"tracerd did not acknowledge within {shown(ack_deadline - started)} (is it hung? see --ack-timeout)"
    )
    request: dict[str, str | int | bool] = {"op": "hook", "name": str(opts["name"]), "pid": int(opts["pid"])}
    request["ack"] = True
    if "tracer" in opts:
        request["tracer"] = str(opts["tracer"])
    try:
        sock = connect(str(opts["socket"]), ack_deadline)
    except Timeout:
        raise HookFailed(unacknowledged) from None
    try:
        try:
            send(sock, encode_request(request), ack_deadline)
        except Timeout:
            raise HookFailed(unacknowledged) from None
        pending = bytearray()
        try:
            answer = read_line(sock, pending, ack_deadline)
        except Timeout:
            if not restarting(str(opts["socket"])):
                raise HookFailed(unacknowledged) from None
            try:  # in the backlog of a restarting tracerd: wait for the next one
                answer = read_line(sock, pending, deadline)
            except Timeout:
                raise HookFailed(
                    f"tracerd was restarting and did not acknowledge within {shown(float(opts['timeout']))}"
                ) from None
        if answer.get("error") == "bad_request" and 'unknown field "ack"' in str(answer.get("message")):
            raise HookFailed("tracerd is older than this pftrace-hook (no acknowledgements): restart tracerd")
        if answer.get("ack") is True and "ok" not in answer:
            try:
                answer = read_line(sock, pending, deadline)
            except Timeout:
                raise HookFailed(
                    f"tracerd acknowledged, but no attach confirmed within {shown(float(opts['timeout']))}"
                    " (see --timeout and tracerd's attach_timeout)"
                ) from None
    finally:
        sock.close()
    return answer


def restarting(socket_path: str) -> bool:
    """A SOCKET.restarting younger than RESTART_GRACE, owned by root or our euid."""
    try:
        info = os.stat(socket_path + ".restarting")
    except (OSError, ValueError):
        return False
    return info.st_uid in (0, os.geteuid()) and 0 <= time.time() - info.st_mtime < RESTART_GRACE


def one_line(text: str) -> str:
    """``text`` escaped for one line, as the compiled hook does (\\xNN, \\uNNNN, U+FFFD)."""
    if text.isprintable():
        return text
    shown = []
    for char in text:
        code = ord(char)
        if code < 0x20 or code == 0x7F:
            shown.append(f"\\x{code:02x}")
        elif 0xDC80 <= code <= 0xDCFF:
            shown.append(f"\\x{code - 0xDC00:02x}")
        elif 0x80 <= code < 0xA0 or code in (0x2028, 0x2029):
            shown.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            shown.append("\ufffd")
        else:
            shown.append(char)
    return "".join(shown)


def warn_syslog(path: str, message: str) -> None:
    """mail.warning to the local syslog socket; never blocks, never fails."""
    stamp = time.strftime("%b %d %H:%M:%S")
    line = f"<{LOG_MAIL_WARNING}>{stamp} pftrace-hook[{os.getpid()}]: {message}"
    try:
        sock = Socket(AF_UNIX, SOCK_DGRAM)
    except OSError:
        return  # no syslog: stderr still carries the reason
    try:
        sock.setblocking(False)
        sock.sendto(line.encode("utf-8", "replace")[:8192], path)
    except OSError:
        pass
    finally:
        sock.close()


def run() -> None:
    """:func:`main`, then os._exit: skipping finalization saves a millisecond per process start."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # its descriptor was closed when the hook started
            continue
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 1  # as the interpreter would, without the 120: Postfix reads only 0 or not
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        opts = parse_args(args)
    except Answered as text:
        return 0 if say(str(text)) else 1
    except ValueError as err:
        say(f"pftrace-hook: {err}\n{USAGE}", error=True)
        return 2
    try:
        answer = request_attach(opts)
        if answer.get("ok") is not True:
            raise HookFailed(str(answer.get("message") or answer.get("error") or "refused"))
    except HookFailed as err:
        # "warning:" as Postfix writes it: triage and bugreport grep for it
        reason = f"warning: {one_line(str(opts['name']))}[{opts['pid']}]: not traced: {one_line(str(err))}"
        warn_syslog(str(opts["syslog"]), reason)  # first: a stderr nobody reads must not lose it
        say(f"pftrace-hook: {reason}", error=True)
        return 1
    return 0


def say(text: str, *, error: bool = False) -> bool:
    """``text`` on stdout (stderr if ``error``); False, never a traceback, when it cannot be written."""
    stream = sys.stderr if error else sys.stdout
    if stream is None:
        return False
    try:
        stream.write(text + "\n")
        stream.flush()
    except (OSError, ValueError):
        return False
    return True


if __name__ == "__main__":
    run()
