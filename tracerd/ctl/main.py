"""tracerctl: the administrator's side of the status socket.

``tracerctl [--socket PATH] [--json] COMMAND``.  Every command is one request
and one reply.  Exit codes are the contract: 0 ok, 1 the daemon refused or
the operation failed, 2 usage, 3 the daemon is not reachable.

With ``--json`` the daemon's reply is printed as one JSON document (the
``ok`` field dropped on success, so the shape is DESIGN.md's); without it, a
table made for a terminal (a crash report: :mod:`tracerd.ctl.crashview`).

``crashes`` and ``crash ID`` still answer while tracerd is down: from its
crash store (``--state-dir``, else tracerd's configured state_dir), read
only, with a one-line notice on stderr and ``"source": "store"``,
``"daemon": "unreachable"`` in the JSON; exit 0 when the store was read, 1
when it may not be read (permission), 3 when there is none.

Diagnostics: one line ``tracerctl: REASON`` on stderr for every failure.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from tracerd.config import default_socket
from tracerd.ctl.crashview import render_crash, render_crashes
from tracerd.ctl.crashview import table as table  # noqa: PLC0414 -- re-exported: postfix status lays out with it
from tracerd.protocol import CRASH_ID_RE, check_name, check_pid

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
LOCAL_COMMANDS: tuple[str, ...] = ("tracerd.ctl.postfix", "tracerd.ctl.triage", "tracerd.ctl.bugreport")
STORE_COMMANDS = frozenset({"crashes", "crash"})  # answered from the crash store when tracerd is down


class Unreachable(Exception):
    pass


def call(path: str, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """One request, one reply; raises Unreachable when nobody answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise Unreachable(f"tracerd is not running (no socket {path})") from None
        except ConnectionRefusedError:
            raise Unreachable(f"tracerd is not running (nobody listens on {path})") from None
        except PermissionError:
            raise Unreachable(f"permission denied on {path} (need root or socket_group)") from None
        except OSError as err:
            raise Unreachable(f"cannot connect to {path}: {err.strerror}") from None
        try:
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            raise Unreachable(f"tracerd did not answer within {timeout} s") from None
        except OSError as err:
            raise Unreachable(f"talking to tracerd: {err.strerror}") from None
    if not data:
        raise Unreachable("tracerd closed the connection without an answer")
    reply = json.loads(data)
    if not isinstance(reply, dict):
        raise Unreachable("tracerd sent a malformed answer")
    return reply


def _pid(text: str) -> int:
    try:
        return check_pid(int(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err) if "pid" in str(err) else f"not a pid: {text!r}") from None


def _name(text: str) -> str:
    try:
        return check_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tracerctl", description="Query and steer tracerd.")
    parser.add_argument("--socket", default=os.environ.get("TRACERD_SOCKET") or str(default_socket()))
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("status", help="daemon, counters and sessions")
    show = sub.add_parser("show", help="one session")
    show.add_argument("pid", type=_pid)
    attach = sub.add_parser("attach", help="trace a running process")
    attach.add_argument("pid", type=_pid)
    attach.add_argument("--name", type=_name)
    attach.add_argument("--tracer")
    detach = sub.add_parser("detach", help="stop tracing a process; it runs on")
    detach.add_argument("pid", type=_pid)
    where = sub.add_parser("where", help="live backtrace of every thread of a traced process")
    where.add_argument("pid", type=_pid)
    crashes = sub.add_parser("crashes", help="crash inventory: signature, count, first and last seen")
    crash = sub.add_parser("crash", help="one full crash report (by id, id prefix or signature)")
    crash.add_argument("id", type=_crash_id)
    crash.add_argument("--full", action="store_true", help="every thread's bt full, not only the crashing one's")
    for each in (crashes, crash):
        each.add_argument("--state-dir", type=Path, metavar="DIR",
                          help="tracerd's state_dir, read when it is down (default: the configured one)")  # fmt: skip
    for module in LOCAL_COMMANDS:
        # commands that work on files and Postfix rather than the socket; each
        # module adds its own subparser and sets ``run`` (args -> exit code)
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module).register(sub)
    return parser


def _crash_id(text: str) -> str:
    if not CRASH_ID_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"not a crash id: {text!r}")
    return text


def request_for(args: argparse.Namespace) -> dict[str, Any]:
    """The request for a daemon command: its declared fields (tracerd.protocol.OPERATIONS) that were given."""
    from tracerd.protocol import OPERATIONS  # noqa: PLC0415 -- kept inside: only this function needs the table

    request: dict[str, Any] = {"op": args.command}
    for key in sorted(OPERATIONS[args.command].fields):
        value = getattr(args, key, None)
        if value is not None:
            request[key] = value
    return request


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # `tracerctl status | head`: the reader left; that is not our error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


def _main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return EXIT_USAGE if exit_.code else EXIT_OK
    if getattr(args, "run", None) is not None:
        code: int = args.run(args)
        return code
    try:
        reply = call(args.socket, request_for(args), timeout=args.timeout)
    except Unreachable as err:
        if args.command in STORE_COMMANDS:
            return from_store(args, str(err))
        print(f"tracerctl: {err}", file=sys.stderr)
        return EXIT_UNREACHABLE
    return output(args, reply)


def from_store(args: argparse.Namespace, unreachable: str) -> int:
    """``crashes`` and ``crash ID`` while tracerd is down: the same answers, read from its crash store."""
    # imported here: crashindex asks the daemon through this module's call()
    from tracerd.crash.inventory import StoreUnreadable, default_state_dir, store_reply  # noqa: PLC0415

    try:
        reply = store_reply(args.command, getattr(args, "id", None), args.state_dir or default_state_dir())
    except StoreUnreadable as err:
        print(f"tracerctl: {unreachable}; {err}", file=sys.stderr)
        return EXIT_UNREACHABLE if err.missing else EXIT_FAILED
    print(f"tracerctl: {unreachable}; read from the crash store {reply['store']}", file=sys.stderr)
    reply["daemon"] = "unreachable"
    return output(args, reply)


def output(args: argparse.Namespace, reply: dict[str, Any]) -> int:
    """Print a reply (the daemon's, or the store's in its shape); the exit code."""
    if reply.get("ok") is not True:
        if args.json:
            print(json.dumps(reply, indent=2))
        print(f"tracerctl: {reply.get('message') or reply.get('error')}", file=sys.stderr)
        return EXIT_FAILED
    reply.pop("ok")
    if args.json:
        print(json.dumps(reply, indent=2))
    else:
        print(render(args.command, reply, full=getattr(args, "full", False)))
    return EXIT_OK


# -- tables -------------------------------------------------------------------


def render(command: str, reply: dict[str, Any], *, full: bool = False) -> str:
    """A reply as a terminal table: one renderer per daemon operation, by its name."""
    renderers = {
        "status": lambda reply, full: render_status(reply),
        "crashes": lambda reply, full: render_crashes(reply["crashes"]),
        "crash": lambda reply, full: render_crash(reply["crash"], full=full),
        "where": lambda reply, full: str(reply["where"]),
        "show": lambda reply, full: render_session(reply["session"]),
        "attach": lambda reply, full: render_session(reply["session"]),
        "detach": lambda reply, full: render_session(reply["session"]),
    }
    return renderers[command](reply, full)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def render_status(reply: dict[str, Any]) -> str:
    daemon, counters, sessions = reply["daemon"], reply["counters"], reply["sessions"]
    lines = [
        f"tracerd {daemon['version']}  pid {daemon['pid']}  up {_duration(daemon['uptime'])}"
        f"  config: {daemon['config']}",
        "counters: " + ", ".join(f"{key} {value}" for key, value in counters.items()),
        "",
    ]
    if daemon.get("config_error"):
        lines[1:1] = [f"config error (the previous config stays in force): {daemon['config_error']}"]
    if not sessions:
        lines.append("no sessions")
        return "\n".join(lines)
    rows = [("PID", "NAME", "TRACER", "STATE", "STARTED", "LINES", "ENDING", "LOG")]
    for session in sessions:
        rows.append(
            (
                str(session["pid"]),
                session["name"],
                session["tracer"],
                session["state"],
                session["started"][11:19],
                str(session["lines"]),
                _ending(session),
                session["log"],
            )
        )
    lines += table(rows)
    return "\n".join(lines)


def _ending(session: dict[str, Any]) -> str:
    if session.get("signal"):
        return str(session["signal"])
    if session.get("exit_code") is not None:
        return f"status {session['exit_code']}"
    if session.get("error"):
        return str(session["error"])[:40]
    return "-"


def render_session(session: dict[str, Any]) -> str:
    return "\n".join(f"{key:10} {'-' if value is None else value}" for key, value in session.items())


if __name__ == "__main__":
    sys.exit(main())
