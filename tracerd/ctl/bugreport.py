"""tracerctl bugreport: the report DEBUG_README asks for, "Reporting problems".

Sections, in order: summary (to fill in), environment, postconf-n,
postconf-Mf, triage (every problem line), crashes (with ``bt full``),
qshape, tracerd-status.  Text on stdout or ``-o FILE`` (``.tar.gz``: one
file per section); ``--anonymize`` applies :mod:`tracestrings` and
:mod:`anonymize` to the data sections, never the summary.  A section that
cannot be had says why inside it.  See docs/crashes.md.

Security: postconf and qshape run from argv lists with timeouts; their
output and every log or crash string are control-character cleaned and
capped at :data:`MAX_SECTION`.  The file is written 0600 through a temp file
and a rename: never readable by others, half-written, or through a symlink.

Diagnostics: ``tracerctl: cannot write FILE: REASON``, exit 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracerd import __version__, atomic, textclean
from tracerd.client import Unreachable, call
from tracerd.crash.inventory import CrashInventory, default_state_dir, load_inventory
from tracerd.ctl.anonymize import Anonymizer
from tracerd.ctl.common import EXIT_FAILED, EXIT_OK, fail, program_path, render_status
from tracerd.ctl.crashview import render_crash, render_crashes
from tracerd.ctl.maillog import LogError
from tracerd.ctl.triage import add_log_options, render_text, resolve_logs, triage

MAX_SECTION = 4 << 20
POSTCONF_TIMEOUT = 30.0
QSHAPE_TIMEOUT = 120.0  # qshape reads every queue file
MAX_TRIAGE_LINES = 1000

SUMMARY = """\
Describe the problem in your own words: the helpers on postfix-users are
volunteers, and logging without an explanation of what YOU believe is wrong
is hard to help with (DEBUG_README, "Reporting problems").

What did you do?


What did you expect to happen?


What happened instead (complete error messages, cut and paste)?


Since when, and what changed then (upgrade, configuration, network)?

"""


@dataclass
class Section:
    name: str  # the file in the archive: NN-NAME.txt
    title: str
    body: str
    data: bool = True  # False: our own text, never anonymized


def clean_block(text: str) -> str:
    """Untrusted text for a report: control characters but newline and tab become ``?``, size capped."""
    if len(text) > MAX_SECTION:
        text = text[:MAX_SECTION] + f"\n[... cut at {MAX_SECTION} bytes]\n"
    return textclean.clean(text, textclean.LINES)


def run_command(argv: list[str], timeout: float) -> str:
    """A command's output for the report; a failure is described, never raised."""
    shown = " ".join(argv)
    program = program_path(argv[0])
    if program is None:
        return f"({argv[0]} is not installed)"
    argv = [program, *argv[1:]]
    try:
        result = subprocess.run(argv, capture_output=True, timeout=timeout, check=False,
                                env={**os.environ, "LC_ALL": "C"})  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"({shown}: no answer within {timeout:g} s)"
    except OSError as err:
        return f"({shown}: {err.strerror})"
    text = result.stdout.decode("utf-8", "replace")
    if result.returncode != 0:
        errors = result.stderr.decode("utf-8", "replace").strip()
        text += f"({shown}: exit status {result.returncode}{': ' + errors if errors else ''})\n"
    return clean_block(text)


def _config_args(config_dir: str | None) -> list[str]:
    return ["-c", config_dir] if config_dir else []


def postfix_command(argv: list[str], config: list[str], timeout: float) -> str:
    """postconf or qshape, run only where there is a main.cf (postconf fails without, after a 1 s sleep)."""
    where = config[1] if config else os.environ.get("MAIL_CONFIG") or "/etc/postfix"
    if not os.path.isfile(os.path.join(where, "main.cf")):
        return f"({' '.join(argv)}: not run: no main.cf in {where})\n"
    return run_command(argv, timeout)


def gather(args: argparse.Namespace) -> list[Section]:
    """Every section, in report order."""
    config = _config_args(args.config_dir)
    inventory = load_inventory(args.socket, args.state_dir or default_state_dir(), getattr(args, "timeout", 30.0))
    return [
        Section("summary", "Summary (fill in)", SUMMARY, data=False),
        Section("environment", "Environment", environment(config)),
        Section("postconf-n", "postconf -n", postfix_command(["postconf", *config, "-n"], config, POSTCONF_TIMEOUT)),
        Section("postconf-Mf", "postconf -Mf", postfix_command(["postconf", *config, "-Mf"], config, POSTCONF_TIMEOUT)),
        Section("triage", "Mail log triage (tracerctl triage)", triage_section(args, inventory)),
        Section("crashes", "tracerd crash reports", crashes_section(inventory, args.max_crashes)),
        Section("qshape", "qshape", qshape_section(config)),
        Section("tracerd-status", "tracerd status", status_section(args.socket)),
    ]


def environment(config: list[str]) -> str:
    uname = platform.uname()
    version = postfix_command(["postconf", *config, "-h", "mail_version"], config, POSTCONF_TIMEOUT).strip()
    directory = postfix_command(["postconf", *config, "-h", "config_directory"], config, POSTCONF_TIMEOUT).strip()
    return "\n".join([
        f"generated        {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"tracerd          {__version__}",
        f"postfix          {version}",
        f"config_directory {directory}",
        # not uname.node: the host's name is the reader's business only if the summary says so
        f"system           {uname.system} {uname.release} {uname.machine}",
        f"python           {platform.python_version()}",
    ]) + "\n"  # fmt: skip


def triage_section(args: argparse.Namespace, inventory: CrashInventory) -> str:
    try:
        paths, how = resolve_logs(args.logs or [], args.config_dir, args.rotated)
    except LogError as err:
        return f"(no triage: {err})\n"
    result = triage(paths, args.since, inventory)
    result.chosen_by = how
    return clean_block(render_text(result, all_lines=True, max_lines=MAX_TRIAGE_LINES) + "\n")


def crashes_section(inventory: CrashInventory, limit: int) -> str:
    if inventory.source is None:
        return f"(crash reports unavailable: {inventory.error})\n"
    parts = [_rendered(render_crashes, inventory.entries), ""]
    for entry in inventory.entries[:limit]:
        crash_id = str(entry.get("id"))
        report = inventory.report(crash_id)
        parts.append(f"---- crash {crash_id} ----")
        if report is None:
            parts += [f"(report {crash_id} unavailable: deleted to stay under max_crash_bytes, or unreadable)", ""]
            continue
        parts.append(_rendered(render_crash, report))  # with the crashed thread's bt full
        repeats = entry.get("repeats") or []
        if repeats:
            pids = ", ".join(str(r.get("pid")) for r in repeats if isinstance(r, dict))
            parts.append(f"\nrepeats of this signature without a report of their own: pids {pids}")
        parts.append("")
    if len(inventory.entries) > limit:
        parts.append(f"({len(inventory.entries) - limit} older signatures left out: --max-crashes)")
    return clean_block("\n".join(parts) + "\n")


def qshape_section(config: list[str]) -> str:
    if program_path("qshape") is None:
        return "(qshape is not installed)\n"
    incoming = postfix_command(["qshape", *config], config, QSHAPE_TIMEOUT)
    deferred = postfix_command(["qshape", *config, "deferred"], config, QSHAPE_TIMEOUT)
    return f"qshape (incoming and active queues):\n{incoming}\nqshape deferred:\n{deferred}"


def status_section(socket_path: str) -> str:
    try:
        reply = call(socket_path, {"op": "status"}, timeout=10.0)
    except Unreachable as err:
        return f"({err})\n"
    if reply.get("ok") is not True:
        return f"(tracerd refused: {reply.get('message') or reply.get('error')})\n"
    return clean_block(_rendered(render_status, reply) + "\n")


def _rendered(render: Callable[[Any], str], data: Any) -> str:
    """tracerctl's table of ``data``; the JSON itself when the table cannot be made of it."""
    try:
        return render(data)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        # a report or index from another tracerd version, or damaged: show it raw rather than nothing
        return f"(cannot lay this out: {err!r}; as JSON:)\n{json.dumps(data, indent=2, default=str)}"


def anonymize(sections: list[Section]) -> None:
    """Mask the data sections, learning every name from all of them first (consistency)."""
    anonymizer = Anonymizer()
    for section in sections:
        if section.data:
            anonymizer.learn(section.body)
    for section in sections:
        if section.data:
            section.body = anonymizer.apply(section.body)


# -- output ---------------------------------------------------------------------


def as_text(sections: list[Section], anonymized: bool) -> str:
    how = "anonymized: trace strings as <N bytes>, addresses, host names and IPs masked A/D"
    how = how if anonymized else "not anonymized"
    parts = [f"tracerctl bugreport ({how})", ""]
    for section in sections:
        parts += [f"===== {section.title} =====", section.body.rstrip("\n"), ""]
    return "\n".join(parts)


def as_tarball(sections: list[Section]) -> bytes:
    top = "tracerd-bugreport-" + dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for number, section in enumerate(sections, start=1):
            data = section.body.encode("utf-8", "replace")
            member = tarfile.TarInfo(f"{top}/{number:02d}-{section.name}.txt")
            member.size, member.mode, member.mtime = len(data), 0o600, int(time.time())
            member.uname = member.gname = ""  # whose account made it is nobody's business
            tar.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def write_private(path: Path, data: bytes) -> None:
    """Write ``path`` 0600 via a temp file and rename: never half-written, never through a symlink."""
    atomic.write_file(path, data, 0o600, prefix=".bugreport-")


def is_tarball(path: str) -> bool:
    return path.endswith((".tar.gz", ".tgz"))


# -- command line -------------------------------------------------------------------


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "bugreport",
        help="the report DEBUG_README asks for: config, logs, crashes, queue",
        description="A problem report for postfix-users: a summary to fill in, postconf -n, postconf -Mf,"
        " the mail log's problem lines, tracerd's crash reports with backtraces, qshape and tracerd's status.",
        epilog="Exit status: 0 the report was written; 1 it could not be written; 2 usage.",
    )
    add_log_options(parser)
    parser.add_argument("--anonymize", action="store_true",
                        help="trace strings as <N bytes>; addresses, hosts, IPs: letters A, digits D")  # fmt: skip
    parser.add_argument("-o", dest="output", metavar="FILE",
                        help="write to FILE (a .tar.gz or .tgz: one file per section); default stdout")  # fmt: skip
    parser.add_argument("--log", dest="logs", action="append", metavar="LOGFILE",
                        help="the mail log to triage (repeat for more); default as tracerctl triage")  # fmt: skip
    parser.add_argument("--max-crashes", type=int, default=10, metavar="N",
                        help="full reports of the N most recent crash signatures (default 10)")  # fmt: skip
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    sections = gather(args)
    if args.anonymize:
        anonymize(sections)
    output = args.output if args.output not in (None, "-") else None
    if output is not None:
        data = as_tarball(sections) if is_tarball(output) else as_text(sections, args.anonymize).encode()
        try:
            write_private(Path(output), data)
        except OSError as err:
            return fail(f"cannot write {output}: {err.strerror or err}", EXIT_FAILED, as_json=args.json)
    if args.json:
        document: dict[str, Any] = {"output": output, "anonymized": args.anonymize}
        if output is None:
            document["sections"] = [{"name": s.name, "title": s.title, "text": s.body} for s in sections]
        else:
            document["sections"] = [s.name for s in sections]
        print(json.dumps(document, indent=2))
    elif output is None:
        print(as_text(sections, args.anonymize))
    else:
        print(f"bug report written to {output}")
    return EXIT_OK
