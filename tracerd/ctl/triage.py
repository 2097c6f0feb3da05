"""tracerctl triage: DEBUG_README's first step, "look for obvious signs of trouble".

``grep -E '(warning|error|fatal|panic):'`` over the mail log (:mod:`maillog`
picks and reads it), earliest first across files, grouped by daemon,
severity and message shape, each severity explained, and master's ``killed
by signal`` lines tied to tracerd's crash reports (:mod:`tracerd.crash.inventory`).
Options, output and JSON: docs/crashes.md, "Triage and bug reports".

Security: log lines are untrusted: capped at 8 KiB, control characters
replaced before printing, never evaluated; postconf is the only program run
(argv list, timeout).  At most :data:`MAX_KEPT` lines are kept; the rest are
only counted, so a flooded log costs bounded memory.

Diagnostics: ``tracerctl: PATH: REASON`` for each unreadable log, exit 1, the
rest still reported; exit 2 for a bad ``--since``.  An unreachable daemon is
no failure: the report names the crash index used or why there is none.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracerd.crash.inventory import CrashInventory, CrashMatch, default_state_dir, load_inventory
from tracerd.ctl.anonymize import find_spans
from tracerd.ctl.maillog import LogError, LogLine, default_logs, parse_since, read_log, with_rotated

EXIT_OK, EXIT_FAILED = 0, 1
MAX_KEPT = 100_000
SEVERITIES = ("panic", "fatal", "error", "warning")
MEANINGS = {
    "panic": "a problem in the software itself that only a programmer can fix;"
             " Postfix cannot proceed until this is fixed",
    "fatal": "missing files, incorrect permissions or incorrect configuration file settings"
             " that you can fix; Postfix cannot proceed until this is fixed",
    "error": "an error condition; for safety a Postfix process terminates"
             " when more than 13 of these happen",
    "warning": "a non-fatal error: maybe a problem you cannot fix (such as a broken DNS server"
               " elsewhere on the network), maybe a local configuration error that could become"
               " a problem later",
}  # fmt: skip
CRASH_SIGNALS = {4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE", 11: "SIGSEGV", 31: "SIGSYS"}

_SEVERITY = re.compile(r"(?<![A-Za-z])(panic|fatal|error|warning):")
_KILLED = re.compile(r"process (?P<path>\S+) pid (?P<pid>\d{1,10}) killed by signal (?P<signal>\d{1,3})")
# Queue ids (global/mail_queue.h): long ones (base 52, "z", base 51) fold anywhere; classic hex ones
# look like OpenSSL's error:0A000086:, so fold only at a message's start and in a queue file's path.
_LONG_QUEUE_ID = re.compile(r"\b[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{10,}z[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-y]+\b")
_SHORT_QUEUE_ID = re.compile(r"^(?=[0-9A-F]*[0-9])[0-9A-F]{6,21}(?=:)")
_QUEUE_FILE = re.compile(r"\b(?P<queue>maildrop|incoming|active|deferred|hold|corrupt|bounce|defer|trace|flush|saved)"
                         r"/(?:[0-9A-Za-z]/)*[0-9A-Za-z]{6,}\b")  # fmt: skip
_HEX = re.compile(r"\b0x[0-9a-fA-F]+\b")
# a whole number, or one with a short lower-case unit (30s, 10ms); never digits inside a word or a hex code
_NUMBER = re.compile(r"(?<![A-Za-z0-9_])\d+(?=(?:[a-z]{1,3})?(?![A-Za-z0-9_]))")
_PLACEHOLDER = {"address": "*", "email": "*@*", "host": "HOST", "ip": "IP"}


def severity_of(message: str) -> tuple[str, str] | None:
    """The first ``warning:``/``error:``/``fatal:``/``panic:`` in a message, and the text after it."""
    found = _SEVERITY.search(message)
    if not found:
        return None
    return found.group(1), message[found.end() :].strip()


def message_shape(text: str) -> str:
    """``text`` with queue ids, numbers, hex, IPs, addresses and host names folded."""
    out, last = [], 0
    for span in find_spans(text):
        out += [text[last : span.start], _PLACEHOLDER[span.kind]]
        last = span.end
    out.append(text[last:])
    shape = "".join(out)
    shape = _LONG_QUEUE_ID.sub("QUEUEID", shape)
    shape = _SHORT_QUEUE_ID.sub("QUEUEID", shape)
    shape = _QUEUE_FILE.sub(r"\g<queue>/QUEUEID", shape)
    shape = _HEX.sub("0xN", shape)
    return _NUMBER.sub("N", shape)


@dataclass
class Problem:
    line: LogLine
    severity: str
    detail: str  # the message after "severity:"
    time: dt.datetime | None  # the line's, or the last one before it in its file
    order: tuple[int, int]  # (file index, line number): the tie-break after time
    key: tuple[str, str, str]  # (daemon, severity, shape): its group
    crash: CrashMatch | None = None
    note: str | None = None  # why a killed-by-signal line has no crash tied to it
    group: int = -1


@dataclass
class Group:
    daemon: str
    severity: str
    shape: str
    first_problem: Problem
    count: int = 0
    first: dt.datetime | None = None
    last: dt.datetime | None = None
    crashes: list[CrashMatch] = field(default_factory=list)


@dataclass
class LogFile:
    path: str
    lines: int = 0
    problems: int = 0
    error: str | None = None
    skipped: str | None = None


@dataclass
class Triage:
    files: list[LogFile]
    since: dt.datetime | None
    inventory: CrashInventory
    chosen_by: str = "named on the command line"
    problems: list[Problem] = field(default_factory=list)  # earliest first, at most MAX_KEPT
    groups: list[Group] = field(default_factory=list)  # by first occurrence
    total: int = 0  # problem lines, kept or not

    @property
    def lines_read(self) -> int:
        return sum(f.lines for f in self.files)

    def severity_counts(self) -> dict[str, int]:
        counts = {s: sum(g.count for g in self.groups if g.severity == s) for s in SEVERITIES}
        return {s: n for s, n in counts.items() if n}


def resolve_logs(named: list[str], config_dir: str | None, rotated: bool) -> tuple[list[Path], str]:
    """The files to read, oldest first, and how they were chosen; raises LogError."""
    if named:
        paths, how = [Path(p) for p in named], "named on the command line"
    else:
        paths, how = default_logs(config_dir)
    if rotated:
        paths = [p for base in paths for p in with_rotated(base)]
        how += ", with rotated files"
    return paths, how


def triage(paths: list[Path], since: dt.datetime | None, inventory: CrashInventory) -> Triage:
    """Read every file, keep the problem lines, group them and tie crashes."""
    result = Triage([], since, inventory)
    keys: dict[tuple[str, str, str], Group] = {}
    kept: list[Problem] = []
    for index, path in enumerate(paths):
        log = LogFile(str(path))
        result.files.append(log)
        if since is not None and _older_than(path, since):
            # a log's lines are never later than its last write: nothing to read
            log.skipped = "last written before --since"
            continue
        carried: dt.datetime | None = None
        try:
            for line in read_log(path):
                log.lines += 1
                carried = line.time or carried
                found = severity_of(line.message)
                if found is None or (since is not None and (carried is None or carried < since)):
                    continue
                problem = Problem(line, found[0], found[1], carried, (index, line.number),
                                  (line.daemon, found[0], message_shape(found[1])))  # fmt: skip
                log.problems += 1
                result.total += 1
                _count(problem, keys, inventory)
                if len(kept) < MAX_KEPT:
                    kept.append(problem)
        except LogError as err:
            log.error = str(err)
    kept.sort(key=lambda p: (p.time.timestamp() if p.time else float("-inf"), p.order))
    result.problems = kept
    result.groups = sorted(keys.values(), key=lambda g: (g.first.timestamp() if g.first else float("-inf"),
                                                         g.first_problem.order))  # fmt: skip
    numbers = {id(group): n for n, group in enumerate(result.groups)}
    for problem in kept:
        problem.group = numbers[id(keys[problem.key])]
    return result


def _older_than(path: Path, since: dt.datetime) -> bool:
    try:
        return dt.datetime.fromtimestamp(path.stat().st_mtime).astimezone() < since
    except OSError:
        return False  # read_log will say what is wrong with it


def _count(problem: Problem, keys: dict[tuple[str, str, str], Group], inventory: CrashInventory) -> None:
    group = keys.get(problem.key)
    if group is None:
        group = keys[problem.key] = Group(*problem.key, first_problem=problem)
    group.count += 1
    if problem.time is not None:
        if group.first is None or problem.time < group.first:
            group.first, group.first_problem = problem.time, problem
        if group.last is None or problem.time > group.last:
            group.last = problem.time
    killed = _KILLED.search(problem.detail)
    if killed is None:
        return
    pid, signal = int(killed.group("pid")), int(killed.group("signal"))
    problem.crash = inventory.match(pid, Path(killed.group("path")).name, problem.time)
    if problem.crash is not None:
        if all(c.crash_id != problem.crash.crash_id or c.pid != pid for c in group.crashes):
            group.crashes.append(problem.crash)
    elif signal not in CRASH_SIGNALS:
        problem.note = f"signal {signal} is not a crash signal: no crash report is expected"
    elif inventory.source is None:
        problem.note = f"crash reports unavailable ({inventory.error})"
    else:
        problem.note = (f"no tracerd crash report for pid {pid}: was the service traced"
                        " (-D in master.cf, debugger_command = pftrace-hook ...)?")  # fmt: skip


# -- output ---------------------------------------------------------------------


def _when(time: dt.datetime | None) -> str:
    return time.astimezone().strftime("%Y-%m-%d %H:%M:%S") if time else "?"


def render_text(result: Triage, *, all_lines: bool = False, max_lines: int = MAX_KEPT) -> str:
    names = ", ".join(f.path for f in result.files if f.skipped is None) or "(none)"
    lines = [
        f"triage of {names} ({result.chosen_by}): {result.lines_read} lines read,"
        f" {result.total} problem lines in {len(result.groups)} groups"
        + (f" since {_when(result.since)}" if result.since else ""),
    ]
    lines += [f"  could not read {f.error}" for f in result.files if f.error]
    if not result.groups:
        lines.append("no warning, error, fatal or panic lines")
    else:
        lines += ["The most important message is near the beginning: start with the first group.", ""]
    notes: dict[int, set[str]] = {}
    for problem in result.problems:
        if problem.note:
            notes.setdefault(problem.group, set()).add(problem.note)
    for number, group in enumerate(result.groups, start=1):
        span = _when(group.first) if group.first == group.last else f"{_when(group.first)} .. {_when(group.last)}"
        lines.append(f"#{number}  {group.severity}  {group.daemon}  {group.count}x  {span}")
        lines.append(f"    {group.severity}: {group.shape}")
        sample = group.first_problem.line
        lines.append(f"    first: {sample.source}:{sample.number}: {sample.text}")
        for crash in group.crashes:
            lines.append(f"    -> {crash.describe()}")
            lines.append(f"       (tracerctl crash {crash.crash_id})")
        lines += [f"    -> {note}" for note in sorted(notes.get(number - 1, ()))]
    if result.groups:
        lines += ["", 'What the severities mean (DEBUG_README, "Look for obvious signs of trouble"):']
        lines += [f"  {severity:8} {count:>6}x  {MEANINGS[severity]}" for severity, count in
                  result.severity_counts().items()]  # fmt: skip
    if all_lines and result.problems:
        lines += ["", "Every problem line, earliest first:"]
        lines += [f"  {p.line.text}" for p in result.problems[:max_lines]]
        if result.total > min(max_lines, len(result.problems)):
            lines.append(f"  ... and {result.total - min(max_lines, len(result.problems))} more")
    inventory = result.inventory
    if inventory.source is not None:
        lines += ["", f"crash reports: from {'tracerd' if inventory.source == 'daemon' else 'the crash index'}"
                  + (f" ({inventory.error})" if inventory.error else "")]  # fmt: skip
    else:
        lines += ["", f"crash reports: unavailable ({inventory.error})"]
    return "\n".join(lines)


def to_json(result: Triage) -> dict[str, Any]:
    def when(time: dt.datetime | None) -> str | None:
        return time.isoformat() if time else None

    return {
        "files": [vars(f) for f in result.files],
        "chosen_by": result.chosen_by,
        "since": when(result.since),
        "lines_read": result.lines_read,
        "problem_lines": result.total,
        "severities": {s: {"count": n, "meaning": MEANINGS[s]} for s, n in result.severity_counts().items()},
        "groups": [
            {"daemon": g.daemon, "severity": g.severity, "message": g.shape, "count": g.count,
             "first": when(g.first), "last": when(g.last), "example": g.first_problem.line.text,
             "source": f"{g.first_problem.line.source}:{g.first_problem.line.number}",
             "crashes": [c.to_json() for c in g.crashes]}
            for g in result.groups
        ],
        "lines": [
            {"time": when(p.time), "file": p.line.source, "line": p.line.number, "daemon": p.line.daemon,
             "pid": p.line.pid, "severity": p.severity, "text": p.line.text, "group": p.group,
             "crash": p.crash.to_json() if p.crash else None, "note": p.note}
            for p in result.problems
        ],
        "lines_omitted": result.total - len(result.problems),
        "crash_index": {"source": result.inventory.source, "error": result.inventory.error},
    }  # fmt: skip


# -- command line -----------------------------------------------------------------


def since_argument(text: str) -> dt.datetime:
    try:
        return parse_since(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_log_options(parser: argparse.ArgumentParser) -> None:
    """The options triage and bugreport share: which logs, since when, where crashes are."""
    parser.add_argument("-c", dest="config_dir", metavar="CONFIG_DIR",
                        help="Postfix configuration directory (for maillog_file)")  # fmt: skip
    parser.add_argument("--since", type=since_argument, metavar="TIME",
                        help="only lines from TIME on: 2h, 30m, 7d, 2026-11-24, 2026-11-24T10:00")  # fmt: skip
    parser.add_argument("--rotated", action="store_true",
                        help="also read each log's rotated files (NAME.1, NAME.2.gz, NAME-DATE...)")  # fmt: skip
    parser.add_argument("--state-dir", type=Path, metavar="DIR",
                        help="tracerd's state_dir, for crash reports when the daemon does not answer")  # fmt: skip


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "triage",
        help="warning/error/fatal/panic lines of the mail log, earliest first",
        description="The warning, error, fatal and panic lines of the mail log, earliest first, grouped by"
        " daemon and message shape, each severity explained, and master's 'killed by signal' lines tied"
        " to tracerd's crash reports.",
        epilog="Exit status: 0 the logs were read; 1 a log could not be read; 2 usage.",
    )
    parser.add_argument("logfiles", nargs="*", metavar="LOGFILE",
                        help="default: postconf maillog_file, else /var/log/mail.log, /var/log/maillog")  # fmt: skip
    add_log_options(parser)
    parser.add_argument("--all", action="store_true", dest="all_lines", help="also list every problem line")
    # SUPPRESS: tracerctl's own --json (before the command) must not be reset by this one's default
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        paths, how = resolve_logs(args.logfiles, args.config_dir, args.rotated)
    except LogError as err:
        print(f"tracerctl: {err}", file=sys.stderr)
        return EXIT_FAILED
    inventory = load_inventory(args.socket, args.state_dir or default_state_dir(), getattr(args, "timeout", 30.0))
    result = triage(paths, args.since, inventory)
    result.chosen_by = how
    if args.json:
        print(json.dumps(to_json(result), indent=2))
    else:
        print(render_text(result, all_lines=args.all_lines))
    failed = [f for f in result.files if f.error]
    for log in failed:
        print(f"tracerctl: {log.error}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK
