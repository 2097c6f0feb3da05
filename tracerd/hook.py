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
backlog, up to ``--timeout`` (README, "Reliability").  On any failure it exits 1
with one line ``pftrace-hook: warning: NAME[PID]: not traced: REASON`` on
stderr and the same at mail.warning to syslog (where ``tracerctl triage``
finds it), since Postfix throws stderr away; the daemon then runs on
untraced ("fail open for mail").

Security: the hook trusts nothing it is given; tracerd checks the caller's
credentials (SO_PEERCRED), the name, and that PID is an ancestor of the hook.

Standard library only (the socket client is :mod:`tracerd.client`, and the
package's ``__init__`` imports nothing), so that it starts fast: Postfix pays
its start-up on every traced process start.  ``--help`` and ``--version``
print on stdout and exit 0; a usage error exits 2.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any

from tracerd import __version__, client

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
  --socket PATH          tracerd's socket (default $TRACERD_SOCKET, else {client.SYSTEM_SOCKET} as root)
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


def parse_args(argv: list[str]) -> dict[str, str | float | int]:
    """A tiny parser (argparse costs start-up time on every process start)."""
    opts: dict[str, str | float | int] = {
        "socket": os.environ.get("TRACERD_SOCKET") or client.default_socket(),
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
            raise Answered(f"pftrace-hook {__version__}")
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
        raise ValueError(f"PID must be a number, not {positional[1]!r}") from err
    return opts


def seconds(where: str, value: str | float | int) -> float:
    """A number of seconds, 0 < SECONDS <= 3600, from option or variable ``where``."""
    try:
        number = float(value)
    except ValueError:
        number = float("nan")  # and NaN fails the range test below
    if not 0 < number <= 3600:
        raise ValueError(f"{where} wants a number of seconds, 0 < SECONDS <= 3600, not {value!r}")
    return number


def shown(duration: float) -> str:
    return f"{duration:g} s"


def request_attach(opts: dict[str, str | float | int]) -> dict[str, Any]:
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
    request: dict[str, Any] = {"op": "hook", "name": opts["name"], "pid": opts["pid"], "ack": True}
    if "tracer" in opts:
        request["tracer"] = opts["tracer"]
    try:
        with client.connect(str(opts["socket"]), ack_deadline, client.ROOT_HINT) as sock:
            try:
                client.send(sock, request, ack_deadline)
            except client.Timeout:
                raise HookFailed(unacknowledged) from None
            try:
                answer, pending = client.read_line(sock, b"", ack_deadline)
            except client.Timeout:
                if not restarting(str(opts["socket"])):
                    raise HookFailed(unacknowledged) from None
                try:  # in the backlog of a restarting tracerd: wait for the next one
                    answer, pending = client.read_line(sock, b"", deadline)
                except client.Timeout:
                    raise HookFailed(
                        f"tracerd was restarting and did not acknowledge within {shown(float(opts['timeout']))}"
                    ) from None
            if answer.get("error") == "bad_request" and 'unknown field "ack"' in str(answer.get("message")):
                raise HookFailed("tracerd is older than this pftrace-hook (no acknowledgements): restart tracerd")
            if answer.get("ack") is True and "ok" not in answer:
                try:
                    answer, pending = client.read_line(sock, pending, deadline)
                except client.Timeout:
                    raise HookFailed(
                        f"tracerd acknowledged, but no attach confirmed within {shown(float(opts['timeout']))}"
                        " (see --timeout and tracerd's attach_timeout)"
                    ) from None
    except client.Timeout:
        raise HookFailed(unacknowledged) from None
    except client.Unreachable as err:
        raise HookFailed(str(err)) from None
    return answer


def restarting(socket_path: str) -> bool:
    """Whether tracerd said, less than RESTART_GRACE ago, that it is restarting (SOCKET.restarting,
    root's or the hook's own uid's, as the socket's directory is)."""
    try:
        info = os.stat(socket_path + ".restarting")
    except (OSError, ValueError):
        return False
    return info.st_uid in (0, os.geteuid()) and 0 <= time.time() - info.st_mtime < RESTART_GRACE


def warn_syslog(path: str, message: str) -> None:
    """mail.warning to the local syslog socket; never blocks, never fails."""
    stamp = time.strftime("%b %d %H:%M:%S")
    line = f"<{LOG_MAIL_WARNING}>{stamp} pftrace-hook[{os.getpid()}]: {message}"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(line.encode("utf-8", "replace")[:8192], path)
    except OSError:
        pass  # no syslog: stderr still carries the reason


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        opts = parse_args(args)
    except Answered as text:
        print(text)
        return 0
    except ValueError as err:
        print(f"pftrace-hook: {err}\n{USAGE}", file=sys.stderr)
        return 2
    try:
        answer = request_attach(opts)
        if answer.get("ok") is not True:
            raise HookFailed(str(answer.get("message") or answer.get("error") or "refused"))
    except HookFailed as err:
        # "warning:" as Postfix's own lines have it: triage and bugreport grep for it
        reason = f"warning: {opts['name']}[{opts['pid']}]: not traced: {err}"
        print(f"pftrace-hook: {reason}", file=sys.stderr)
        warn_syslog(str(opts["syslog"]), reason)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
