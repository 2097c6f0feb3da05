"""pftrace-hook: what Postfix's debugger_command runs.

``pftrace-hook [--socket PATH] [--timeout S] [--tracer T] NAME PID`` asks the
resident tracerd to attach a tracer to PID and returns 0 only once tracerd
confirms that the tracer *is* attached.  Postfix waits for this command, so it
must never hang: every step is bounded by ``--timeout`` and a missing daemon
fails at once.  On any failure it exits 1 with one line ``pftrace-hook:
REASON`` on stderr and the same line at mail.warning to syslog, since Postfix
throws stderr away; the daemon then runs on untraced ("fail open for mail").

Security: the hook trusts nothing it is given; tracerd checks the caller's
credentials (SO_PEERCRED), the name, and that PID is an ancestor of the hook.

Standard library only, imported lazily where it can be, so that it starts
fast: Postfix pays its start-up on every traced process start.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

DEFAULT_TIMEOUT = 15.0
SYSLOG_PATH = "/dev/log"
LOG_MAIL_WARNING = 2 * 8 + 4
USAGE = "usage: pftrace-hook [--socket PATH] [--timeout SECONDS] [--tracer NAME] [--syslog PATH] NAME PID"


class HookFailed(Exception):
    """Tracing could not be confirmed; the message is the one-line reason."""


def default_socket() -> str:
    # Same rule as tracerd.config.default_socket, restated so that the hook
    # needs no third-party import.
    if os.geteuid() == 0:
        return "/run/tracerd/tracerd.sock"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "tracerd", "tracerd.sock")
    return f"/tmp/tracerd-{os.getuid()}/tracerd.sock"


def parse_args(argv: list[str]) -> dict[str, str | float | int]:
    """A tiny parser (argparse costs start-up time on every process start)."""
    opts: dict[str, str | float | int] = {
        "socket": os.environ.get("TRACERD_SOCKET") or default_socket(),
        "timeout": DEFAULT_TIMEOUT,
        "syslog": SYSLOG_PATH,
    }
    positional: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in ("-h", "--help"):
            raise SystemExit(USAGE)
        if arg.startswith("--") and arg != "--":
            key, eq, value = arg[2:].partition("=")
            if key not in ("socket", "timeout", "tracer", "syslog"):
                raise ValueError(f"unknown option --{key}")
            if not eq:
                value = next(args, "")
            if not value:
                raise ValueError(f"--{key} needs a value")
            opts[key] = value
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise ValueError("expected NAME and PID")
    try:
        opts["timeout"] = float(opts["timeout"])
    except ValueError as err:
        raise ValueError("--timeout wants a number of seconds") from err
    if not 0 < float(opts["timeout"]) <= 3600:
        raise ValueError("--timeout wants 0 < SECONDS <= 3600")
    opts["name"] = positional[0]
    try:
        opts["pid"] = int(positional[1])
    except ValueError as err:
        raise ValueError(f"PID must be a number, not {positional[1]!r}") from err
    return opts


def request_attach(opts: dict[str, str | float | int]) -> dict[str, object]:
    """Send the hook request and wait, bounded, for tracerd's verdict."""
    deadline = time.monotonic() + float(opts["timeout"])
    request: dict[str, object] = {"op": "hook", "name": opts["name"], "pid": opts["pid"]}
    if "tracer" in opts:
        request["tracer"] = opts["tracer"]
    path = str(opts["socket"])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(float(opts["timeout"]))
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise HookFailed(f"tracerd is not running (no socket {path})") from None
        except ConnectionRefusedError:
            raise HookFailed(f"tracerd is not running (nobody listens on {path})") from None
        except PermissionError:
            raise HookFailed(f"permission denied on {path} (the hook must run as root)") from None
        except TimeoutError:
            raise HookFailed(f"tracerd did not accept within {opts['timeout']} s") from None
        except OSError as err:
            raise HookFailed(f"cannot connect to {path}: {err.strerror}") from None
        sock.sendall(json.dumps(request).encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                raise HookFailed("tracerd closed the connection without an answer")
            reply += chunk
            if len(reply) > 1 << 20:
                raise HookFailed("tracerd's answer is too long")
    except TimeoutError:
        raise HookFailed(
            f"no answer from tracerd within {opts['timeout']} s (is it hung? see --timeout)"
        ) from None
    except OSError as err:
        raise HookFailed(f"talking to tracerd: {err.strerror or err}") from None
    finally:
        sock.close()
    try:
        answer = json.loads(reply)
    except ValueError:
        raise HookFailed("tracerd sent a malformed answer") from None
    if not isinstance(answer, dict):
        raise HookFailed("tracerd sent a malformed answer")
    return answer


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
    except ValueError as err:
        print(f"pftrace-hook: {err}\n{USAGE}", file=sys.stderr)
        return 2
    try:
        answer = request_attach(opts)
        if answer.get("ok") is not True:
            raise HookFailed(str(answer.get("message") or answer.get("error") or "refused"))
    except HookFailed as err:
        reason = f"{opts['name']}[{opts['pid']}]: not traced: {err}"
        print(f"pftrace-hook: {reason}", file=sys.stderr)
        warn_syslog(str(opts["syslog"]), reason)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
