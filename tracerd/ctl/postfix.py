"""tracerctl postfix: trace a Postfix service through tracerd, and stop.

``enable SERVICE`` adds ``-D`` in master.cf, points debugger_command at the
installed pftrace-hook and reloads; ``disable`` undoes it byte for byte from
``$config_directory/tracerd-postfix.json`` (postconf re-lays-out what it
writes); ``status`` lists the ``-D`` services and whether tracerd traces them.
A process's service is read from its argv as its getopt reads it
(:func:`master_child`).  See docs/postfix.md and tracerctl(8).

Security: every edit goes through postconf, argv lists, never a shell.
Trusted: postconf's output and the state file, only if a regular file of
ours that no one else may write (its lines go back into main.cf, run as
root).  SERVICE must match :data:`SERVICE_RE`, debugger_command words
:data:`SAFE_WORD` (no ``$``, no shell syntax); a hook root cannot run needs ``--force``.

Diagnostics: ``tracerctl: postfix: REASON``, exit 1, on failure or refusal;
``tracerctl: warning: ...`` for what goes on regardless; ``status`` exits 1
for a missing hook, 3 when tracerd does not answer (services listed anyway).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from tracerd.client import SYSTEM_SOCKET, Unreachable, call
from tracerd.ctl.common import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, fail, print_json, table
from tracerd.ctl.postconf import Instance, PostfixError, locked
from tracerd.hookcheck import hook_path, hook_problem
from tracerd.tracers import NAMES as TRACER_NAMES

SERVICE_RE = re.compile(r"[A-Za-z0-9\[][A-Za-z0-9._:\[\]+-]{0,127}(?:/(?:inet|unix|unix-dgram|fifo|pass))?")
SAFE_WORD = re.compile(r"[A-Za-z0-9._/+:@,-]+")
HOOK_SOCKET = SYSTEM_SOCKET  # the hook's default as root, which is how Postfix runs it
ACTIVE = ("attaching", "attached")


def _service(text: str) -> str:
    if not SERVICE_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"not a master.cf service name: {text!r} (e.g. smtp, smtp/inet)")
    return text


def command_words(command: str) -> list[str]:
    """master.cf command words; a ``{ ... }`` group is one word."""
    return re.findall(r"\{[^}]*\}|\S+", command)


# Postfix daemons' getopt("+cdDi:lm:n:o:r:s:St:uvVz") (libpostfix-master): flags cluster,
# the first non-option ends them all, so pipe's "argv=uux -r -n -z" holds none of pipe's.
OPTIONS_WITH_ARGUMENT = frozenset("imnorst")


@dataclass(frozen=True)
class Option:
    word: int  # index in the argv (or command words) of the word holding the letter
    at: int  # the letter's offset in that word
    letter: str
    value: str | None  # the argument of -i -m -n -o -r -s -t


def master_options(words: list[str]) -> list[Option]:
    """The options a Postfix daemon's getopt finds in ``words`` (words[0] is the program)."""
    options: list[Option] = []
    index = 1
    while index < len(words):
        word = words[index]
        if word == "--" or len(word) < 2 or word[0] != "-":
            break
        for at in range(1, len(word)):
            letter = word[at]
            if letter not in OPTIONS_WITH_ARGUMENT:
                options.append(Option(index, at, letter, None))
                continue
            value = word[at + 1 :]
            if not value:
                if index + 1 == len(words):
                    return options  # an argument missing: the daemon would not start
                value = words[index + 1]
            options.append(Option(index, at, letter, value))
            index += 1 if word[at + 1 :] else 2
            break
        else:
            index += 1
    return options


@dataclass(frozen=True)
class Child:
    """What a process master started says about itself, as its own getopt reads it."""

    service: str  # -n SERVICE, else the program's basename (as Postfix's *_server_main)
    type: str | None  # -t TYPE
    debug: bool  # -D: it ran debugger_command when it started

    @property
    def key(self) -> str:
        return f"{self.service}/{self.type}"


def master_child(argv: list[str]) -> Child | None:
    """The service a master child runs, from its argv (None for an empty one: a zombie)."""
    if not argv:
        return None
    values: dict[str, str | None] = {}
    for option in master_options(argv):
        values[option.letter] = option.value  # the last one counts, as with getopt
    service = values.get("n") or os.path.basename(argv[0])
    return Child(service, values.get("t"), "D" in values)


def has_debug(command: str) -> bool:
    """Whether a master.cf command gives its daemon -D (never an -o value, nor pipe's argv=...)."""
    return any(option.letter == "D" for option in master_options(command_words(command)))


def with_debug(command: str) -> str:
    words = command_words(command)
    return " ".join([words[0], "-D", *words[1:]])


def without_debug(command: str) -> str:
    """The command without -D, alone (-D) or in a cluster (-vD becomes -v)."""
    words = command_words(command)
    drop = {(option.word, option.at) for option in master_options(words) if option.letter == "D"}
    kept = ["".join(c for at, c in enumerate(word) if (index, at) not in drop) for index, word in enumerate(words)]
    return " ".join(word for index, word in enumerate(kept) if word != "-" or words[index] == "-")


def hook_command(hook: str, socket: str, tracer: str | None) -> str:
    words = [hook] + (["--socket", socket] if socket != HOOK_SOCKET else []) + (["--tracer", tracer] if tracer else [])
    for word in words:
        # debugger_command goes through Postfix's $-expansion, then /bin/sh
        if not SAFE_WORD.fullmatch(word):
            raise PostfixError(f"{word!r} cannot go into debugger_command as is ($ or shell characters)")
    return " ".join([*words, "$process_name", "$process_id"])


def is_hook(value: str | None) -> bool:
    return hook_path(value) is not None


def find_hook() -> str:
    """The pftrace-hook installed with this tracerctl: PREFIX/sbin's when ``make install``
    linked tracerctl into PREFIX/bin (README "Install"), else the one beside its interpreter."""
    invoked = Path(os.path.abspath(sys.argv[0]))
    beside = Path(sys.executable).parent / "pftrace-hook"
    candidates = [invoked.parent.parent / "sbin" / "pftrace-hook", beside] if invoked.parent.name == "bin" else [beside]
    found = next((str(hook) for hook in candidates if os.access(hook, os.X_OK)), None) or shutil.which("pftrace-hook")
    if found is None:
        raise PostfixError(f"pftrace-hook is neither next to {sys.executable} nor on PATH")
    return os.path.abspath(found)


# -- the three actions ------------------------------------------------------


def enable(inst: Instance, args: argparse.Namespace) -> str:
    services = inst.services()
    key = inst.resolve(args.service, services)
    hook = os.path.abspath(args.hook) if args.hook else find_hook()
    problem = hook_problem(hook)
    if problem is not None:
        if not args.force:
            raise PostfixError(f"hook missing: {hook} {problem}: debugger_command would run nothing"
                               " (--hook PATH names the installed one; --force writes it anyway)")  # fmt: skip
        inst.notes.append(f"hook missing: {hook} {problem}: every {args.service} process will start untraced")
    wanted = hook_command(hook, os.path.abspath(args.socket), args.tracer)
    current = inst.debugger_command()
    state = inst.load_state() or {"version": 1, "original": current, "ours": None, "main_cf": None, "services": {}}
    if current != wanted:
        if current and not is_hook(current) and current != state["ours"]:
            if not args.force:
                raise PostfixError(f"debugger_command already holds something else: {current!r};"
                                   " --force replaces it (and disable restores it)")  # fmt: skip
            if current != state["original"]:
                inst.notes.append(f"replacing debugger_command = {current}; disable restores {state['original']!r}")
        patch, first = inst.edit(inst.main_cf, "-e", f"debugger_command={wanted}"), state["main_cf"]
        if first:  # our second edit of our own line: one patch from the original, if they chain
            patch = {"before": first["before"], "after": patch["after"]} if patch["before"] == first["after"] else {}
        state.update(main_cf=patch or None, ours=wanted)
        inst.save_state(state)
    command = services[key]
    if not has_debug(command):
        patch = inst.edit(inst.master_cf, "-F", f"{key}/command={with_debug(command)}")
        state["services"][key] = {"command": command, "master_cf": patch}
        inst.save_state(state)
    return key


def disable(inst: Instance, args: argparse.Namespace) -> str:
    services = inst.services()
    key = inst.resolve(args.service, services)
    state = inst.load_state()
    command = services[key]
    if has_debug(command):
        saved = state["services"].pop(key, None) if state else None
        services[key] = without_debug(command)
        if not (saved and inst.restore(inst.master_cf, saved["master_cf"],
                                       lambda: inst.services().get(key) == saved["command"])):  # fmt: skip
            inst.edit(inst.master_cf, "-F", f"{key}/command={services[key]}")
            if saved:
                inst.notes.append(f"{key} was edited since enable: -D removed, its old layout not restored")
        inst.save_state(state)
    still = sorted(key for key, command in services.items() if has_debug(command))
    current = inst.debugger_command()
    if still:
        inst.notes.append(f"debugger_command kept: still used by {', '.join(still)}")
        return key
    if state and current not in (state["ours"], state["original"]):
        inst.notes.append("debugger_command was changed since enable: left as it is")
    elif state and current != state["original"]:
        original = state["original"]
        if not inst.restore(inst.main_cf, state["main_cf"], lambda: inst.debugger_command() == original):
            inst.edit(inst.main_cf, *(["-e", f"debugger_command={original}"] if original is not None
                                      else ["-X", "debugger_command"]))  # fmt: skip
    elif not state and current:
        inst.notes.append("debugger_command left as it is: tracerctl did not set it")
    inst.save_state(None)
    return key


def change(args: argparse.Namespace) -> int:
    inst = Instance(args.config_dir, dry_run=args.dry_run)
    with locked(inst.config_dir):
        key = (enable if args.postfix_command == "enable" else disable)(inst, args)
        if inst.actions:
            inst.reload()
    if args.postfix_command == "enable" and (down := daemon_down(args.socket, args.timeout)) is not None:
        inst.notes.append(f"{down}: every new {args.service} process will log \"not traced\" (syslog,"
                          " mail.warning) until tracerd runs")  # fmt: skip
    if args.json:
        print_json({"service": key, "config_directory": str(inst.config_dir), "dry_run": args.dry_run,
                          "actions": inst.actions, "notes": inst.notes})  # fmt: skip
        return EXIT_OK
    print("\n".join(inst.actions) or f"{key}: nothing to do ({args.postfix_command}d already)")
    for note in inst.notes:
        print(f"tracerctl: warning: {note}", file=sys.stderr)
    return EXIT_OK


def daemon_down(socket: str, timeout: float) -> str | None:
    """Why tracerd does not answer on ``socket`` (None: it answers)."""
    try:
        call(socket, {"op": "status"}, timeout=min(timeout, 5.0))
    except Unreachable as err:
        return str(err)
    return None


def status(args: argparse.Namespace) -> dict[str, Any]:
    inst = Instance(args.config_dir)
    all_services = inst.services()
    only = inst.resolve(args.service, all_services) if args.service else None
    master, sessions = inst.master(), {}
    daemon: dict[str, Any] = {"socket": args.socket, "reachable": True, "error": None}
    catches: list[dict[str, Any]] = []  # tracerctl gdb (docs/debugging.md, "Interactive debugging")
    handoffs: list[dict[str, Any]] = []
    try:
        reply = call(args.socket, {"op": "status"}, timeout=args.timeout)
        sessions = {s["pid"]: s for s in reply.get("sessions", []) if s["state"] in ACTIVE}
        catches, handoffs = reply.get("catches", []), reply.get("handoffs", [])
        if reply.get("ok") is not True:
            raise Unreachable(str(reply.get("message") or reply.get("error")))
    except Unreachable as err:
        daemon.update(reachable=False, error=str(err))
    children: dict[str, list[tuple[int, Child]]] = {}
    for process in master.children() if master else []:
        with contextlib.suppress(psutil.Error):
            child = master_child(process.cmdline())  # a zombie's argv is empty
            if child is not None:
                children.setdefault(child.key, []).append((process.pid, child))
    services: list[dict[str, Any]] = []
    for key, command in sorted(all_services.items()):
        if key == only or (only is None and has_debug(command)):
            processes = [{"pid": pid, "debug": child.debug, "traced": pid in sessions,
                          "state": sessions.get(pid, {}).get("state"), "tracer": sessions.get(pid, {}).get("tracer")}
                         for pid, child in sorted(children.get(key, []), key=lambda found: found[0])]  # fmt: skip
            services.append({"service": key, "command": command, "debug": has_debug(command),
                             "master_cf": inst.postconf("-M", key).strip() if only else None,
                             "processes": processes})  # fmt: skip
    current = inst.debugger_command()
    path = hook_path(current)
    problem = hook_problem(path) if path else None
    return {"config_directory": str(inst.config_dir), "master_pid": master.pid if master else None,
            "master": "running" if master else inst.master_state, "debugger_command": current,
            "hook": is_hook(current), "hook_path": path, "hook_problem": problem,
            "daemon": daemon, "service": only, "services": services, "catches": catches,
            "handoffs": handoffs}  # fmt: skip


def render_status(report: dict[str, Any]) -> str:
    daemon = report["daemon"]
    hook = (f"  (hook missing: {report['hook_path']} {report['hook_problem']})" if report["hook_problem"]
            else "  (tracerd's hook)" if report["hook"] else "  (not tracerd's hook)")  # fmt: skip
    lines = [f"postfix {report['config_directory']}: "
             + (f"running (master pid {report['master_pid']})" if report["master_pid"] else report["master"]),
             f"debugger_command = {report['debugger_command'] or ''}{hook}",
             f"tracerd {daemon['socket']}: " + ("reachable" if daemon["reachable"] else
                                                f"NOT reachable: {daemon['error']}"), ""]  # fmt: skip
    for service in report["services"] if report.get("service") else []:  # postfix status SERVICE
        lines[-1:-1] = [
            f"master.cf: {service['master_cf']}",
            f"{service['service']}: -D "
            + ("on" if service["debug"] else "off: not traced (tracerctl postfix enable turns it on)"),
        ]
    rows = [("SERVICE", "COMMAND", "PID", "TRACED")]
    for service in report["services"]:
        if not service["processes"]:
            rows.append((service["service"], service["command"], "-", "no process now"))
        for proc in service["processes"]:
            traced = (f"{proc['state']} ({proc['tracer']})" if proc["traced"] else
                      "not traced" if proc["debug"] else "not traced (started without -D)")  # fmt: skip
            rows.append((service["service"], service["command"], str(proc["pid"]),
                         traced if daemon["reachable"] else "unknown"))  # fmt: skip
    extra = [f"armed: tracerctl gdb --next {c['name']} (hold {c['hold']:g} s, tracerctl pid {c['by']},"
             f" since {c['armed']})" for c in report.get("catches", [])]  # fmt: skip
    extra += [f"with gdb: {h['name']}[{h['pid']}] ({h['state']}, tracerctl pid {h['by']})"
              for h in report.get("handoffs", [])]  # fmt: skip
    return "\n".join(lines + (table(rows) if report["services"] else ["no service has -D"])
                     + (["", *extra] if extra else []))  # fmt: skip


def run(args: argparse.Namespace) -> int:
    try:
        if args.postfix_command != "status":
            return change(args)
        report = status(args)
    except (PostfixError, OSError) as err:
        return fail(f"postfix: {err}", EXIT_FAILED, as_json=args.json)
    if args.json:
        print_json(report)
    else:
        print(render_status(report))
    if report["hook_problem"]:
        print(f"tracerctl: hook missing: {report['hook_path']} {report['hook_problem']}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK if report["daemon"]["reachable"] else EXIT_UNREACHABLE


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("postfix", help="trace Postfix services: enable, disable, status (through postconf)")
    actions = parser.add_subparsers(dest="postfix_command", required=True, metavar="ACTION")
    for action, text in (("enable", "add -D to SERVICE and point debugger_command at pftrace-hook"),
                         ("disable", "remove -D from SERVICE; restore debugger_command when no -D is left"),
                         ("status", "services with -D and whether their processes are traced now")):  # fmt: skip
        one = actions.add_parser(action, help=text)
        if action != "status":
            one.add_argument("service", type=_service, metavar="SERVICE", help="smtp, smtp/inet, 127.0.0.1:10025/inet")
            one.add_argument("--dry-run", action="store_true", help="print the commands, change nothing")
        else:
            one.add_argument("service", type=_service, metavar="SERVICE", nargs="?",
                             help="this service only, with -D or not: its master.cf entry and processes")  # fmt: skip
        if action == "enable":
            one.add_argument("--tracer", choices=TRACER_NAMES, help="the hook's --tracer (else tracerd's rules)")
            one.add_argument("--force", action="store_true",
                             help="replace someone else's debugger_command; write a hook that is missing")  # fmt: skip
            one.add_argument("--hook", metavar="PATH",
                             help="the pftrace-hook to name (default: beside tracerctl, else on PATH)")  # fmt: skip
        one.add_argument("-c", dest="config_dir", metavar="CONFIG_DIR", help="Postfix configuration directory")
    parser.set_defaults(run=run)
