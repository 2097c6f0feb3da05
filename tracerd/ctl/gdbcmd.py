"""``tracerctl gdb``: an interactive gdb on a traced process, handed over and taken back by tracerd.

``gdb PID`` asks tracerd (op ``handoff``) to let go of PID stopped and runs
the front-end here; ``gdb --next NAME`` arms a catch (op ``catch``) and waits
for NAME's next hook; a CRASH-ID is a post-mortem (:mod:`postmortem`).  Our
gdb set-up (``-nx`` and a command file) queues SIGSTOP on detach or quit so
tracerd gets the process back, and leaves a fatal signal's process at its
fault for tracerd to report.  Contract: docs/debugging.md, "Interactive
debugging"; the daemon's half: :mod:`tracerd.daemon.gdbhandoff`.

Security: tracerd admits root only (SO_PEERCRED).  Only plain paths from the
process reach gdb's command file.  gdbserver gets no address: tracerctl binds
a loopback or unix socket (0600) itself and hands over the one connection.

Diagnostics: ``tracerctl: gdb: REASON``; exit 0 when the front-end ran
(whatever its own status), 1 refused or failed, 2 usage, 3 unreachable.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from tracerd.client import Unreachable, call, connect, read_line, send
from tracerd.ctl.common import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, fail
from tracerd.protocol import check_name

UIS = ("gdb", "tui", "ddd", "gdbserver")
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9._/+-]+")
FATAL = ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT", "SIGSYS")
LIB_DIRS = ("lib", "lib64", "usr/lib", "lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")
GIVE_BACK = """\
python
import gdb, os, signal
def _tracerd_give_back():
    # tracerd (tracerctl gdb) takes the process back: stop it before gdb lets go
    inferior = gdb.selected_inferior()
    if inferior is None or inferior.pid <= 0:
        return
    name = None
    try:
        name = signal.Signals(int(gdb.parse_and_eval("$_siginfo.si_signo"))).name
    except Exception:
        pass
    if name in (%(fatal)s):
        # detached without it, the process stays at the fault; tracerd's tracer sees it again
        gdb.execute("handle %%s nopass" %% name, to_string=True)
        print("tracerctl: %%s left at the fault: tracerd will report it and let the process die" %% name)
    os.kill(inferior.pid, signal.SIGSTOP)
end
define hook-detach
python _tracerd_give_back()
end
define hook-quit
python _tracerd_give_back()
end
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "gdb", help="an interactive gdb on a traced process (PID), the next start of a daemon, or a crash",
        description="Hand a process traced by tracerd to an interactive gdb and give it back when gdb"
        " detaches or quits; --next NAME catches the next start of NAME before its first request;"
        " CRASH-ID opens a post-mortem session.",
        epilog="Exit status: 0 the front-end ran; 1 refused or failed; 2 usage; 3 tracerd not reachable.",
    )  # fmt: skip
    parser.add_argument("target", nargs="?", metavar="PID|CRASH-ID", help="the process, or a crash id")
    parser.add_argument("--next", dest="next_name", metavar="NAME", help="catch the next start of NAME")
    parser.add_argument("--hold", type=float, metavar="SECONDS",
                        help="with --next: how long the caught process waits for gdb (default 60)")  # fmt: skip
    parser.add_argument("--ui", choices=UIS, default="gdb", help="the front-end (default gdb)")
    parser.add_argument("--listen", metavar="HOST:PORT|unix:PATH",
                        help="with --ui gdbserver: a loopback address or a unix socket")  # fmt: skip
    parser.add_argument("--state-dir", metavar="DIR", help="with CRASH-ID: tracerd's state_dir")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    as_json = bool(getattr(args, "json", False))
    try:
        if args.target is not None and not args.target.isdigit():
            return _postmortem(args)
        frontend = Frontend(args.ui, args.listen)
        if (args.target is None) == (args.next_name is None):
            raise UsageError("give a PID, a CRASH-ID or --next NAME")
        if args.hold is not None and args.next_name is None:
            raise UsageError("--hold goes with --next")
        if args.next_name is not None:
            check_name(args.next_name)
            reply = _catch(args)
            handed = reply["caught"]
        else:
            reply = call(args.socket, {"op": "handoff", "pid": int(args.target)}, timeout=args.timeout)
            if reply.get("ok") is not True:
                raise Refused(str(reply.get("message") or reply.get("error")))
            handed = reply["handoff"]
    except UsageError as err:
        return fail(f"gdb: {err}", EXIT_USAGE, as_json=as_json)
    except ValueError as err:
        return fail(f"gdb: {err}", EXIT_USAGE, as_json=as_json)
    except Refused as err:
        return fail(f"gdb: {err}", EXIT_FAILED, as_json=as_json)
    except Unreachable as err:
        return fail(f"gdb: {err}", EXIT_UNREACHABLE, as_json=as_json)
    pid = int(handed["pid"])
    print(f"tracerctl: gdb: {handed['name']}[{pid}] handed over by tracerd; detach or quit to give it back",
          file=sys.stderr, flush=True)  # fmt: skip
    try:
        frontend.run(pid, handed)
    except (OSError, subprocess.SubprocessError, Refused) as err:
        return fail(f"gdb: {err}", EXIT_FAILED, as_json=as_json)
    _report_back(args, pid)
    return EXIT_OK


class UsageError(Exception):
    """Bad options (exit 2)."""


class Refused(Exception):
    """tracerd refused, or the front-end cannot run (exit 1)."""


def _postmortem(args: argparse.Namespace) -> int:
    try:
        module = importlib.import_module("tracerd.ctl.postmortem")
    except ImportError:
        return fail("gdb: post-mortem not available", EXIT_FAILED)
    ui = {"gdb": "cli", "tui": "tui"}.get(args.ui)
    if ui is None:
        return fail(f"gdb: a crash opens with --ui gdb or --ui tui, not --ui {args.ui}", EXIT_USAGE)
    code: int = module.run_postmortem(args.target, ui, args.state_dir)
    return code


def _catch(args: argparse.Namespace) -> dict[str, Any]:
    """Arm the catch; wait (as long as it takes, until interrupted) for the caught process."""
    request: dict[str, Any] = {"op": "catch", "name": args.next_name, "ack": True}
    if args.hold is not None:
        request["hold"] = args.hold
    deadline = time.monotonic() + args.timeout
    with connect(args.socket, deadline) as sock:
        send(sock, request, deadline)
        answer, pending = read_line(sock, b"", deadline)
        if answer.get("ack") is not True:
            raise Refused(str(answer.get("message") or answer.get("error")))
        hold = args.hold if args.hold is not None else 60
        print(f"tracerctl: gdb: armed: the next {args.next_name} waits up to {hold:g} s for gdb"
              " (interrupt to disarm)", file=sys.stderr, flush=True)  # fmt: skip
        try:
            answer, _ = read_line(sock, pending, time.monotonic() + 10 * 365 * 86400.0)
        except KeyboardInterrupt:
            raise Refused(f"interrupted: {args.next_name} disarmed") from None
    if answer.get("ok") is not True:
        raise Refused(str(answer.get("message") or answer.get("error")))
    return answer


def _report_back(args: argparse.Namespace, pid: int) -> None:
    """Say whether tracerd has the process again (bounded: tracerd polls every few ms)."""
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        with contextlib.suppress(Unreachable):
            reply = call(args.socket, {"op": "status"}, timeout=5.0)
            if not any(h.get("pid") == pid for h in reply.get("handoffs", [])):
                sessions = [s for s in reply.get("sessions", []) if s.get("pid") == pid]
                active = [s for s in sessions if s.get("state") in ("attaching", "attached")]
                if active:
                    print(f"tracerctl: gdb: {pid} is back under {active[-1]['tracer']}", file=sys.stderr)
                else:
                    print(f"tracerctl: gdb: {pid} is no longer traced by tracerd", file=sys.stderr)
                return
        time.sleep(0.05)
    print(f"tracerctl: gdb: tracerd has not taken {pid} back yet (see tracerctl status)", file=sys.stderr)


def command_file(pid: int, handed: dict[str, Any], directory: str) -> str:
    """Our gdb set-up for the process (docs/debugging.md); its path."""
    exe = str(handed.get("exe") or "")
    root = str(handed.get("root") or "/")
    # SIGSTOP: tracerd handed the process over stopped; passing that stop on would stop it again
    lines = ["set confirm off", "handle SIGPIPE nostop noprint pass", "handle SIGSTOP nostop noprint nopass",
             "set sysroot /"]  # fmt: skip
    if root != "/" and _PLAIN_PATH.fullmatch(root):
        # libraries loaded after chroot() are named inside it (loaded before: outside)
        lines.append("set solib-search-path " + ":".join(f"{root}/{lib}" for lib in LIB_DIRS))
    lines.append(f"file {exe if _PLAIN_PATH.fullmatch(exe) else f'/proc/{pid}/exe'}")
    lines.append(GIVE_BACK % {"fatal": ", ".join(repr(name) for name in FATAL)})
    lines.append(f"attach {pid}")
    path = os.path.join(directory, "tracerd.gdb")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write("\n".join(lines) + "\n")
    return path


class Frontend:
    """The human's front-end, checked before tracerd is asked for anything."""

    def __init__(self, ui: str, listen: str | None) -> None:
        self.ui = ui
        self.listen = listen
        if ui == "gdbserver":
            if not listen:
                raise UsageError("--ui gdbserver needs --listen 127.0.0.1:PORT or unix:PATH")
            self.address = listen_address(listen)
            if shutil.which("gdbserver") is None:
                raise Refused("gdbserver is not installed (Debian: apt install gdbserver)")
        elif listen:
            raise UsageError("--listen goes with --ui gdbserver")
        if ui == "ddd":
            if not os.environ.get("DISPLAY"):
                raise Refused("--ui ddd needs an X display (DISPLAY is not set)")
            if shutil.which("ddd") is None:
                raise Refused("ddd is not installed (Debian: apt install ddd)")
        if ui in ("gdb", "tui") and shutil.which("gdb") is None:
            raise Refused("gdb is not installed")

    def run(self, pid: int, handed: dict[str, Any]) -> None:
        if self.ui == "gdbserver":
            self._gdbserver(pid)
            return
        with tempfile.TemporaryDirectory(prefix="tracerctl-gdb.") as directory:
            script = command_file(pid, handed, directory)
            if self.ui == "ddd":
                argv = ["ddd", "--debugger", f"gdb -nx -x {script}"]
            else:
                argv = ["gdb", "-nx", "-q", *(["-tui"] if self.ui == "tui" else []), "-x", script]
            _foreground(argv)

    def _gdbserver(self, pid: int) -> None:
        """Listen (loopback or unix socket only), take one client, bridge it to gdbserver's stdio."""
        family, address = self.address
        with socket.socket(family, socket.SOCK_STREAM) as listener:
            if family == socket.AF_UNIX:
                old = os.umask(0o177)
                try:
                    listener.bind(address)
                finally:
                    os.umask(old)
            else:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind(address)
            listener.listen(1)
            shown = f"unix:{address}" if family == socket.AF_UNIX else f"{address[0]}:{listener.getsockname()[1]}"
            print(f"tracerctl: gdb: gdbserver for {pid} listens on {shown}: target remote {shown}",
                  file=sys.stderr, flush=True)  # fmt: skip
            try:
                connection, _ = listener.accept()
            finally:
                if family == socket.AF_UNIX:
                    with contextlib.suppress(OSError):
                        os.unlink(address)
        with connection:
            proc = subprocess.Popen(["gdbserver", "--once", "--attach", "-", str(pid)],
                                    stdin=connection.fileno(), stdout=connection.fileno())  # fmt: skip
            _wait_reaped(proc)


def listen_address(text: str) -> tuple[socket.AddressFamily, Any]:
    """``unix:PATH`` or ``HOST:PORT`` with a loopback HOST; ValueError otherwise."""
    if text.startswith("unix:"):
        path = text[5:]
        if not path or "\0" in path:
            raise UsageError(f"--listen {text}: want unix:PATH")
        return socket.AF_UNIX, path
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(f"--listen {text}: want HOST:PORT or unix:PATH")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise Refused(f"--listen {text}: not a loopback address; use 127.0.0.1:PORT and an ssh tunnel")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return family, (host, int(port))


def _foreground(argv: list[str]) -> None:
    """Run the front-end on this terminal; our SIGINT goes to it (gdb interrupts its process)."""
    proc = subprocess.Popen(argv)
    _wait_reaped(proc)


def _wait_reaped(proc: subprocess.Popen[bytes]) -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
        if proc.returncode is None:
            proc.kill()
            proc.wait()
