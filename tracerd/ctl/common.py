"""What tracerctl's commands share: exit codes, error output, tables, programs.

Every ``tracerd/ctl`` module may import this one; it imports none of theirs
(no cycle; tests/test_layout.py checks).  Exit codes: tracerctl(8).

Security: the replies rendered here are the daemon's (or its store's),
laid out as text without being interpreted.

Diagnostics: :func:`fail` is the one place a command's failure is printed.
"""

from __future__ import annotations

import json
import shutil
import sys
from typing import Any

from tracerd.ctl.crashview import table as table  # noqa: PLC0414 -- re-exported: the commands lay out with it

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
SBIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # Postfix's programs, when root's PATH is not ours


def program_path(name: str) -> str | None:
    """A program on PATH, else in the system directories (postconf, qshape are in /usr/sbin)."""
    return shutil.which(name) or shutil.which(name, path=SBIN_PATH)


def print_json(document: Any) -> None:
    print(json.dumps(document, indent=2))


def fail(message: str, code: int, *, as_json: bool = False, extra: dict[str, Any] | None = None) -> int:
    """``tracerctl: MESSAGE`` on stderr; under --json also ``{"error", "exit"}`` (and ``extra``) on stdout."""
    if as_json:
        print_json({**(extra or {}), "error": message, "exit": code})
    print(f"tracerctl: {message}", file=sys.stderr)
    return code


# -- tables -------------------------------------------------------------------


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
    if daemon.get("syslog_warning"):  # docs/json.md "Status JSON": lines are being dropped
        lines[1:1] = [f"warning: {daemon['syslog_warning']}"]
    if daemon.get("config_error"):
        lines[1:1] = [f"config error (the previous config stays in force): {daemon['config_error']}"]
    # tracerctl gdb (docs/debugging.md, "Interactive debugging")
    for catch in reply.get("catches", []):
        lines.insert(-1, f"armed: tracerctl gdb --next {catch['name']} (hold {catch['hold']:g} s,"
                         f" tracerctl pid {catch['by']}, since {catch['armed']})")  # fmt: skip
    for handoff in reply.get("handoffs", []):
        lines.insert(-1, f"with gdb: {handoff['name']}[{handoff['pid']}] ({handoff['state']},"
                         f" tracerctl pid {handoff['by']})")  # fmt: skip
    if not sessions:
        lines.append("no sessions")
        return "\n".join(lines)
    # one line a process: its latest session (the list is oldest first); the rest is `show PID`'s
    latest = {session["pid"]: session for session in sessions}
    earlier = len(sessions) - len(latest)
    sessions = sorted(latest.values(), key=sessions.index)
    if earlier:
        lines.insert(-1, f"{earlier} earlier session(s) of these pids not shown: tracerctl show PID")
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
    if any(session["tracer"] == "perf" for session in sessions):
        # events perf lost are never hidden: a LOST column while a perf session is listed
        lost = ["LOST"] + [str(session.get("lost_events", 0)) for session in sessions]
        lines += table([(*row[:6], count, *row[6:]) for row, count in zip(rows, lost, strict=True)])
        return "\n".join(lines)
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


def render_session(session: dict[str, Any], history: list[dict[str, Any]] | None = None,
                   syscalls: list[dict[str, Any]] | None = None) -> str:  # fmt: skip
    """One session, key by key; a syscount session's live top calls; then its pid's earlier sessions."""
    lines = [f"{key:10} {'-' if value is None else value}" for key, value in session.items()]
    if syscalls is not None:
        from tracerd.tracers.syscount.table import render  # noqa: PLC0415 -- only show of a syscount session

        lines += ["", "top system calls since the attach (live):", *render(syscalls)]
    if history:
        lines += ["", "earlier sessions of this pid:"]
        lines += [f"  {old['started']}  {old['tracer']}  {old['state']}  ended {old['ended'] or '-'}  {_ending(old)}"
                  f"  {old['log']}" for old in history]  # fmt: skip
    return "\n".join(lines)
