"""tracerctl: the administrator's side of the status socket.

``tracerctl [--socket PATH] [--json] COMMAND``: one request, one reply,
printed as a table or (``--json``, before or after the command) as the
reply without its ``ok`` field.  ``crashes`` and ``crash`` answer from the
crash store, read only, while tracerd is down; ``crash-delete`` does not
(the daemon keeps the index).  Local commands (:data:`LOCAL_COMMANDS`) are
imported only when named.  Contract: tracerctl(8), docs/json.md.

Security: pids, names, crash ids and ages are checked before they reach the
socket; who may do what is tracerd's decision (SO_PEERCRED).

Diagnostics: one line ``tracerctl: REASON`` on stderr; under ``--json`` also
``{"error": REASON, "exit": N}`` on stdout.  Exit 0 ok, 1 refused or
failed, 2 usage, 3 tracerd not reachable (or no crash store).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

from tracerd import __version__
from tracerd.client import Unreachable, call, find_socket
from tracerd.crash.report import CRASH_ID_RE
from tracerd.ctl import complete
from tracerd.ctl.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    fail,
    print_json,
    render_session,
    render_status,
)
from tracerd.ctl.crashview import render_crash, render_crashes, render_deleted
from tracerd.protocol import MAX_AGE, check_name, check_pid

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_UNREACHABLE", "EXIT_USAGE", "Unreachable", "call", "main"]
# imported only when the command line names them (`status` loads none); else the help text stands in
LOCAL_COMMANDS: dict[str, tuple[str, str]] = {
    "postfix": ("tracerd.ctl.postfix", "trace Postfix services: enable, disable, status (through postconf)"),
    "triage": ("tracerd.ctl.triage", "warning/error/fatal/panic lines of the mail log, earliest first"),
    "bugreport": ("tracerd.ctl.bugreport", "the report DEBUG_README asks for: config, logs, crashes, queue"),
    "retrace": ("tracerd.ctl.retrace", "name a crash's frames again from the debug symbols available now"),
    "gdb": ("tracerd.ctl.gdbcmd", "an interactive gdb on a traced process (PID), the next start of NAME, a crash"),
}
STORE_COMMANDS = frozenset({"crashes", "crash"})  # answered from the crash store when tracerd is down


class UsageError(Exception):
    """argparse found a usage error; the message is its one line."""


class Parser(argparse.ArgumentParser):
    """argparse raising :class:`UsageError`, so that ``--json`` can report a usage error as JSON too."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


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


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (given ``argv``) one that imports only the local commands it names."""
    parser = Parser(prog="tracerctl", description="Query and steer tracerd.",
                    epilog="Exit status: 0 ok, 1 refused or failed, 2 usage, 3 tracerd not reachable.")  # fmt: skip
    parser.add_argument("--version", action="version", version=f"tracerctl {__version__}")
    parser.add_argument("--socket", metavar="PATH",
                        help="tracerd's socket (default $TRACERD_SOCKET; else the system socket for root and for"
                        " socket_group members who may reach it; else the per-user one)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON document (also after the command)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="give up on tracerd after SECONDS (default 30)")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("status", help="daemon, counters and sessions")
    show = sub.add_parser("show", help="one session")
    show.add_argument("pid", type=_pid, help="the traced process")
    attach = sub.add_parser("attach", help="trace a running process")
    attach.add_argument("pid", type=_pid, help="the process to trace")
    attach.add_argument("--name", type=_name, help="its service name (default: from its argv)")
    attach.add_argument("--tracer", help="the tracer to attach (default: tracerd's rules)")
    detach = sub.add_parser("detach", help="stop tracing a process; it runs on")
    detach.add_argument("pid", type=_pid, help="the traced process")
    where = sub.add_parser("where", help="live backtrace of every thread of a traced process")
    where.add_argument("pid", type=_pid, help="the traced process")
    crashes = sub.add_parser("crashes", help="crash inventory: signature, count, first and last seen")
    crash = sub.add_parser("crash", help="one full crash report (by id, id prefix or signature)")
    crash.add_argument("id", type=_crash_id, help="the crash id (or a prefix of it, or a signature)")
    crash.add_argument("--full", action="store_true", help="every thread's bt full, not only the crashing one's")
    delete = sub.add_parser("crash-delete", help="delete a crash's report and core, or all older than AGE (root)")
    which = delete.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", type=_crash_id, help="a crash id as `crashes` lists it, or a signature")
    which.add_argument("--older-than", dest="older_than", type=_age, metavar="AGE",
                       help="every crash stored more than AGE ago: a number and s, m, h or d (30d)")  # fmt: skip
    for each in (crashes, crash):
        each.add_argument("--state-dir", type=Path, metavar="DIR",
                          help="tracerd's state_dir, read when it is down (default: the configured one)")  # fmt: skip
    for name, (module, text) in LOCAL_COMMANDS.items():
        # each module adds its own subparser and sets ``run`` (args -> exit code)
        if argv is None or name in argv:
            importlib.import_module(module).register(sub)
        else:
            sub.add_parser(name, help=text, add_help=False)
    complete.register(sub)
    _json_after_command(parser)
    return parser


def _json_after_command(parser: argparse.ArgumentParser) -> None:
    """Every subcommand takes --json too; SUPPRESS, so its default does not reset the global one."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                if "--json" not in subparser._option_string_actions:
                    subparser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                                           help="print one JSON document")  # fmt: skip
                _json_after_command(subparser)


def _crash_id(text: str) -> str:
    if not CRASH_ID_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"not a crash id: {text!r}")
    return text


AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _age(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``3600s`` -> seconds (at most 100 years)."""
    match = re.fullmatch(r"([0-9]{1,9})([smhd])", text)
    seconds = int(match.group(1)) * AGE_UNITS[match.group(2)] if match else 0
    if not 0 < seconds <= MAX_AGE:
        raise argparse.ArgumentTypeError(f"bad age {text!r}: want a whole number above 0 and a unit:"
                                         " s, m, h or d (30d), at most 100 years")  # fmt: skip
    return float(seconds)


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
        return _main(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:
        # `tracerctl status | head`: the reader left; that is not our error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


def _main(argv: list[str]) -> int:
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version: printed on stdout
        return EXIT_USAGE if exit_.code else EXIT_OK
    except UsageError as err:
        wants_json = "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv
        if not wants_json:
            parser.print_usage(sys.stderr)
        return fail(str(err).removeprefix("tracerctl: "), EXIT_USAGE, as_json=wants_json)
    if args.socket is None:
        args.socket = os.environ.get("TRACERD_SOCKET") or find_socket()
    if getattr(args, "run", None) is not None:
        code: int = args.run(args)
        return code
    try:
        reply = call(args.socket, request_for(args), timeout=args.timeout)
    except Unreachable as err:
        if args.command in STORE_COMMANDS:
            return from_store(args, str(err))
        if args.command == "crash-delete":  # docs/crashes.md "Crash retention": the daemon keeps the store's index
            return fail(f"{err}; crash-delete goes through tracerd: start it", EXIT_UNREACHABLE, as_json=args.json)
        return fail(str(err), EXIT_UNREACHABLE, as_json=args.json)
    return output(args, reply)


def from_store(args: argparse.Namespace, unreachable: str) -> int:
    """``crashes`` and ``crash ID`` while tracerd is down: the same answers, read from its crash store."""
    # imported here: only these two commands, and only when tracerd is down, read the store
    from tracerd.crash.inventory import StoreUnreadable, default_state_dir, store_reply  # noqa: PLC0415

    try:
        reply = store_reply(args.command, getattr(args, "id", None), args.state_dir or default_state_dir())
    except StoreUnreadable as err:
        return fail(f"{unreachable}; {err}", EXIT_UNREACHABLE if err.missing else EXIT_FAILED, as_json=args.json)
    print(f"tracerctl: {unreachable}; read from the crash store {reply['store']}", file=sys.stderr)
    reply["daemon"] = "unreachable"
    return output(args, reply)


def output(args: argparse.Namespace, reply: dict[str, Any]) -> int:
    """Print a reply (the daemon's, or the store's in its shape); the exit code."""
    if reply.get("ok") is not True:
        if args.json:
            print_json({**reply, "exit": EXIT_FAILED})
        print(f"tracerctl: {reply.get('message') or reply.get('error')}", file=sys.stderr)
        return EXIT_FAILED
    reply.pop("ok")
    if args.json:
        print_json(reply)
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
        "crash-delete": lambda reply, full: render_deleted(reply),
        "show": lambda reply, full: render_session(reply["session"], reply.get("history"), reply.get("syscalls")),
        "attach": lambda reply, full: render_session(reply["session"]),
        "detach": lambda reply, full: render_session(reply["session"]),
    }
    return renderers[command](reply, full)


if __name__ == "__main__":
    sys.exit(main())
