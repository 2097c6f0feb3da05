"""tracerctl: the administrator's side of the status socket.

``tracerctl [--socket PATH] [--json] COMMAND``.  Every command is one request
and one reply.  Exit codes are the contract: 0 ok, 1 the daemon refused or
the operation failed, 2 usage, 3 the daemon is not reachable.

With ``--json`` the daemon's reply is printed as one JSON document (the
``ok`` field dropped on success, so the shape is DESIGN.md's); without it, a
table made for a terminal.

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
from collections.abc import Sequence
from typing import Any

from tracerd.config import default_socket
from tracerd.protocol import CRASH_ID_RE, check_name, check_pid

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
LOCAL_COMMANDS: tuple[str, ...] = ("tracerd.postfix", "tracerd.triage", "tracerd.bugreport")


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
    sub.add_parser("crashes", help="crash inventory: signature, count, first and last seen")
    crash = sub.add_parser("crash", help="one full crash report (by id, id prefix or signature)")
    crash.add_argument("id", type=_crash_id)
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
    request: dict[str, Any] = {"op": args.command}
    for key in ("pid", "name", "tracer", "id"):
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
        print(f"tracerctl: {err}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if reply.get("ok") is not True:
        if args.json:
            print(json.dumps(reply, indent=2))
        print(f"tracerctl: {reply.get('message') or reply.get('error')}", file=sys.stderr)
        return EXIT_FAILED
    reply.pop("ok")
    if args.json:
        print(json.dumps(reply, indent=2))
    else:
        print(render(args.command, reply))
    return EXIT_OK


# -- tables -------------------------------------------------------------------


def render(command: str, reply: dict[str, Any]) -> str:
    if command == "status":
        return render_status(reply)
    if command == "crashes":
        return render_crashes(reply["crashes"])
    if command == "where":
        return str(reply["where"])
    if command == "crash":
        return render_crash(reply["crash"])
    return render_session(reply["session"])


def render_crashes(crashes: list[dict[str, Any]]) -> str:
    if not crashes:
        return "no crashes recorded"
    rows = [("SIGNATURE", "COUNT", "FIRST SEEN", "LAST SEEN", "PROCESS", "SIGNAL", "TOP FRAMES", "ID")]
    for crash in crashes:
        rows.append(
            (
                str(crash["signature"]),
                str(crash["count"]),
                str(crash["first_seen"])[:19],
                str(crash["last_seen"])[:19],
                f"{crash['name']}[{crash['pid']}]",
                str(crash["signal"]),
                " < ".join(crash.get("top") or []),
                str(crash["id"]),
            )
        )
    return "\n".join(table(rows))


def render_crash(report: dict[str, Any]) -> str:
    process, sig = report.get("process", {}), report.get("signal", {})
    lines = [
        f"crash {report.get('id')}  signature {report.get('signature')}",
        f"process  {process.get('name')}[{process.get('pid')}]  exe {process.get('exe')}  uid {process.get('uid')}",
        f"signal   {sig.get('name')} ({sig.get('number')})  si_code {sig.get('si_code')}"
        f"  fault address {sig.get('fault_address')}",
        f"time     {report.get('time')}",
        f"log      {report.get('log')}",
        "",
    ]
    for thread in sorted(report.get("threads", []), key=lambda t: not t.get("crashed")):
        mark = "  <- crashed" if thread.get("crashed") else ""
        lines.append(f"Thread {thread.get('id')} (LWP {thread.get('tid')}) {thread.get('name') or ''}{mark}")
        for frame in thread.get("frames", []):
            where = f" at {frame['file']}:{frame['line']}" if frame.get("file") else ""
            obj = f" from {frame['object']}" if frame.get("object") and not where else ""
            function = frame.get("function") or "??"
            lines.append(f"  #{frame.get('level')}  {frame.get('address')} in {function}{where}{obj}")
        lines.append("")
    if report.get("registers"):
        lines.append("registers")
        lines += [f"  {name:8} {value}" for name, value in report["registers"].items()]
        lines.append("")
    if report.get("disassembly"):
        lines += ["x/16i $pc", report["disassembly"], ""]
    for missing in report.get("missing_symbols") or []:
        lines.append(f"no symbols for {missing.get('object')} (build-id {missing.get('build_id')});"
                     f" install {missing.get('package') or 'its debug symbols'}")
    return "\n".join(lines).rstrip()


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


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def render_session(session: dict[str, Any]) -> str:
    return "\n".join(f"{key:10} {'-' if value is None else value}" for key, value in session.items())


if __name__ == "__main__":
    sys.exit(main())
