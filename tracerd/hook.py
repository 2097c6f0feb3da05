"""pftrace-hook: what Postfix's debugger_command runs.

``pftrace-hook [--socket PATH] [--timeout S] [--ack-timeout S] [--tracer T]
NAME PID`` asks the resident tracerd to attach a tracer to PID and returns 0
only once tracerd confirms that the tracer *is* attached.  Postfix waits for
this command, so it must never hang: a missing daemon fails at once; a daemon
that does not acknowledge the request (connect, send, its ``{"ack": true}``
line) within ``--ack-timeout`` (default 1.5 s) is taken for hung and given
up on; an acknowledged request gets the rest of ``--timeout`` (default 15 s,
counted from the start) for the attach itself.  A tracerd that is restarting
under socket activation is no hung one: it leaves ``SOCKET.restarting`` beside
its socket (tracerd.daemon.listenfds), and while that file is younger than
:data:`RESTART_GRACE` the hook waits for the acknowledgement, in the socket's
backlog, up to ``--timeout`` (docs/design.md, "Reliability").  On any failure it exits 1
with one line ``pftrace-hook: warning: NAME[PID]: not traced: REASON`` on
stderr and the same at mail.warning to syslog (where ``tracerctl triage``
finds it), since Postfix throws stderr away; the daemon then runs on
untraced ("fail open for mail").  ``--help`` and ``--version`` print on
stdout and exit 0; a usage error exits 2.

This is the Python form of the hook: pip's entry point, and what make writes
where there is no C compiler.  make builds the compiled form,
hook/pftrace-hook.c, the same program; tests/test_hook_compiled.py holds the
two together (what they print, send and read) and tests/test_hook.py runs
every hook behaviour against both.

Start-up is the whole cost: Postfix pays it on every traced process start
(docs/performance.md, "Hook latency").  So this module is a script of its own: it imports
nothing of tracerd (not even the package's ``__init__``), only the standard
library (``json``, ``socket``, ``os``, ``sys``, ``time``), and ``make install``
runs it from a stub (contrib/pftrace-hook.in) as ``/usr/bin/python3 -IS``:
isolated mode and no site, so neither the environment (PYTHONPATH,
PYTHONHOME, PYTHONSTARTUP, ...) nor anything in site-packages runs with it.
The socket rule (:func:`default_socket`) is :mod:`tracerd.client`'s, written
again here for that reason (tests/test_hook_startup.py holds the two together).

Security: the hook trusts nothing it is given; tracerd checks the caller's
credentials (SO_PEERCRED), the name, and that PID is an ancestor of the hook.
Nothing from the socket is trusted beyond being one JSON object line of at
most :data:`MAX_REPLY` bytes.

Diagnostics: every failure is the one warning line above, on stderr and to
syslog; the reasons are :mod:`tracerd.client`'s wording.
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
    """The per-user socket of a tracerd run by this (non-root) user (tracerd.client's rule)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and xdg.startswith("/"):
        return xdg.rstrip("/") + "/tracerd/tracerd.sock"
    return f"/tmp/tracerd-{os.getuid()}/tracerd.sock"


def default_socket() -> str:
    """The socket tracerd listens on when nothing says (tracerd.client.default_socket)."""
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
    """One request line (tracerd.protocol's form: ASCII, one line)."""
    return (json.dumps(request) + "\n").encode()


def decode_object(line: bytes) -> dict[str, object] | None:
    """One JSON object from a line, or None when the line holds anything else."""
    try:
        value = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
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
    """The request line, by ``deadline``."""
    try:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        sock.sendall(line)
    except TimeoutError:
        raise Timeout("tracerd did not take the request") from None
    except OSError as err:
        raise HookFailed(f"talking to tracerd: {err.strerror or err}") from None


def read_line(sock: Socket, pending: bytearray, deadline: float) -> dict[str, object]:
    """One JSON object line from tracerd by ``deadline``, taken off ``pending``, which keeps what
    came after it (and, on a timeout, what came of a line so far, for a longer wait to go on)."""
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
    """Send the hook request and wait, bounded, for tracerd's verdict.

    Two waits: up to ``--ack-timeout`` for tracerd to accept the connection
    and acknowledge (or refuse) the request, then up to the rest of
    ``--timeout`` for its final answer.  Neither goes past ``--timeout``."""
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
    """Whether tracerd said, less than RESTART_GRACE ago, that it is restarting (SOCKET.restarting,
    root's or the hook's own uid's, as the socket's directory is)."""
    try:
        info = os.stat(socket_path + ".restarting")
    except (OSError, ValueError):
        return False
    return info.st_uid in (0, os.geteuid()) and 0 <= time.time() - info.st_mtime < RESTART_GRACE


def one_line(text: str) -> str:
    """``text`` for a one-line warning, as the compiled hook shows it: control characters, and
    bytes that were not UTF-8 (surrogateescape's U+DC80..U+DCFF), as \\xNN; C1 controls and the
    line and paragraph separators as \\uNNNN; a lone surrogate from JSON as U+FFFD."""
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
        pass  # no syslog: stderr still carries the reason
    finally:
        sock.close()


def run() -> None:
    """The command: :func:`main`, then exit at once.

    Skipping the interpreter's finalization (module teardown, collection)
    saves more than a millisecond on every process start; all the hook
    leaves behind is its output, flushed here, and descriptors, which the
    kernel closes."""
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
        # "warning:" as Postfix's own lines have it: triage and bugreport grep for it
        reason = f"warning: {one_line(str(opts['name']))}[{opts['pid']}]: not traced: {one_line(str(err))}"
        warn_syslog(str(opts["syslog"]), reason)  # first: a stderr nobody reads must not lose it
        say(f"pftrace-hook: {reason}", error=True)
        return 1
    return 0


def say(text: str, *, error: bool = False) -> bool:
    """``text`` and a newline on stdout (stderr if ``error``); False when it cannot be written
    (closed at start, a pipe whose reader went away), which must not turn into a traceback."""
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
