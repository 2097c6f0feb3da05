"""Crash reports and the crash inventory, rendered for a terminal.

``tracerctl crash ID``: process, signal line, time and tracer, the crashing
thread's ``bt full`` (every thread's with ``--full``), registers, ``x/16i
$pc``, shared libraries with build-ids, and what would name the frames
without symbols (``missing_symbols``, rendered generically as ``key:
value``), in README's order.  A redacted report (``socket_group``) says so
on one line and shows frames.  ``tracerctl crashes``: one signature a row.

Security: a report holds strings from a crashed program, or is a file read
from the store: all data, never evaluated, control characters made ``?``
(newlines and tabs kept only in gdb's text blocks), so no string drives the
terminal or forges lines.

Diagnostics: none of its own; a key the report lacks is left out or shown
as ``?``; an interrupted or failed capture says so on a ``capture`` line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from tracerd import textclean
from tracerd.crash import facts, overflow

REGISTERS_PER_LINE = 4
_UNNAMED = re.compile(r"^#(\d+)\s.*\?\? \(\)")
_SIGNAL_KEYS = frozenset({"number", "name", "si_code", "si_code_name", "fault_address", "sender_pid", "sender_uid",
                          "user_sent", "analysis"})  # fmt: skip


def clean(value: object) -> str:
    """One line of untrusted text, safe to print."""
    return textclean.clean(value)


def clean_block(value: object) -> str:
    """Untrusted text of several lines (gdb's output), safe to print."""
    return textclean.clean(value, textclean.LINES)


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def render_crashes(crashes: list[dict[str, Any]]) -> str:
    """The inventory: one row per signature, the most recently seen first."""
    if not crashes:
        return "no crashes recorded"
    rows = [("SIGNATURE", "COUNT", "FIRST SEEN", "LAST SEEN", "PROCESS", "SIGNAL", "TOP FRAMES", "ID")]
    for crash in crashes:
        rows.append(
            (
                clean(crash.get("signature")),
                clean(crash.get("count")),
                clean(crash.get("first_seen"))[:19],
                clean(crash.get("last_seen"))[:19],
                f"{clean(crash.get('name'))}[{clean(crash.get('pid'))}]",
                clean(crash.get("signal")) + (" (interrupted)" if crash.get("capture") == "interrupted" else ""),
                " < ".join(clean(name) for name in crash.get("top") or []),
                clean(crash.get("id")),
            )
        )
    return "\n".join(table(rows))


def render_crash(report: dict[str, Any], *, full: bool = False) -> str:
    """One crash report for a human; ``full``: every thread's ``bt full``, not only the crashing one's."""
    process = _dict(report.get("process"))
    lines = [
        f"crash {clean(report.get('id'))}  signature {clean(report.get('signature'))}",
        f"process  {_known(process.get('name'))}[{_known(process.get('pid'))}]  uid {_known(process.get('uid'))}"
        f"  exe {_known(process.get('exe'))}",
    ]
    cmdline = process.get("cmdline")
    if isinstance(cmdline, list) and cmdline:
        lines.append(f"cmdline  {' '.join(clean(arg) for arg in cmdline)}")
    lines.append(f"signal   {signal_line(_dict(report.get('signal')))}")
    if _dict(report.get("signal")).get("analysis"):
        lines.append(f"fault    {clean(report['signal']['analysis'])}")  # apport's SegvAnalysis
    lines += [f"{label:<8} {clean(text)}" for label, text in facts.describe(process, report.get("host"))]
    if isinstance(report.get("stack_overflow"), dict):
        lines.append(f"overflow {clean(overflow.describe(report['stack_overflow']))}")
    lines.append(f"time     {clean(report.get('time'))}  tracer {clean(report.get('tracer'))}")
    lines.append(f"log      {clean(report.get('log') or '(none)')}")
    withheld = withheld_line(report.get("redacted"))
    if withheld:
        lines.append(f"redacted {withheld}")
    errors = process.get("capture_errors")
    errors = [clean(error) for error in errors] if isinstance(errors, list) else []
    state = process.get("capture")  # "complete", or "interrupted": a previous tracerd died while it ran
    if errors or state not in (None, "complete"):
        lines.append(f"capture  {clean(state or 'incomplete')}" + (f": {'; '.join(errors)}" if errors else ""))
    if report.get("notice"):
        lines.append(f"notice   {clean(report['notice'])}")
    message = report.get("assertion") or report.get("abort_message")
    if message:
        lines.append(f"abort    {clean(message)}")
    core = report.get("core")
    if isinstance(core, dict):
        lines.append(f"core     {_core_line(core, clean(report.get('id')))}")
    lines += _threads(report, full)
    mail_log = report.get("mail_log")
    if isinstance(mail_log, list) and mail_log:
        lines += ["", f"mail log, this pid's last {len(mail_log)} lines:"] + ["  " + clean(text) for text in mail_log]
    trace = report.get("trace")
    if isinstance(trace, list) and trace:
        lines += ["", f"last {len(trace)} lines of the trace:"] + ["  " + clean(line) for line in trace]
    registers = _dict(report.get("registers"))
    if registers:
        pairs = [f"{clean(name)} {clean(value)}" for name, value in registers.items()]
        width = max(len(pair) for pair in pairs)
        lines += ["", "registers:"]
        lines += ["  " + "  ".join(pair.ljust(width) for pair in pairs[i : i + REGISTERS_PER_LINE]).rstrip()
                  for i in range(0, len(pairs), REGISTERS_PER_LINE)]  # fmt: skip
    if report.get("disassembly"):
        lines += ["", "x/16i $pc:", clean_block(report["disassembly"])]
    lines += _libraries(report.get("libraries"))
    lines += _missing_symbols(report.get("missing_symbols"), report.get("debug_symbols"))
    return "\n".join(lines).rstrip()


def withheld_line(redacted: object) -> str | None:
    """A ``socket_group`` member's report (tracerd.crash.redact): what it lacks and why, one line."""
    if not isinstance(redacted, dict):
        return None
    withheld = redacted.get("withheld")
    what = "; ".join(clean(item) for item in withheld) if isinstance(withheld, list) and withheld else "some fields"
    return f"{what} withheld: {clean(redacted.get('reason') or 'root only')}; root sees them"


def _core_line(core: dict[str, Any], crash_id: str) -> str:
    """The report's ``core`` (docs/crashes.md "Cores and retrace"): kept, skipped or evicted, and why."""
    state = clean(core.get("state") or "?")
    if state == "saved":
        size = core.get("bytes")
        shown = f" ({human_size(size)})" if isinstance(size, int) else ""
        return f"saved {clean(core.get('file'))}{shown}: tracerctl gdb {crash_id}"
    reason = core.get("reason")
    return state + (f": {clean(reason)}" if reason else "")


def human_size(size: int) -> str:
    """``512 B``, ``25 KB``, ``3.4 MB``, ``1.2 GB``: powers of 1024, one decimal below 10."""
    value, unit = float(size), "B"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1023.5 or unit == "TB":  # 1023.6 KB would print as "1024 KB"
            break
        value /= 1024
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"


def signal_line(sig: dict[str, Any]) -> str:
    """``SIGSEGV (11)  si_code 1 SEGV_MAPERR  fault address 0x0``, or the sender of a sent signal."""
    text = clean(sig.get("name") or "?")
    if sig.get("number") is not None:
        text += f" ({clean(sig['number'])})"
    if sig.get("si_code") is not None:
        text += f"  si_code {clean(sig['si_code'])}"
        if sig.get("si_code_name"):
            text += f" {clean(sig['si_code_name'])}"
    if sig.get("sender_pid") is not None:
        text += f"  sent by pid {clean(sig['sender_pid'])}"
        if sig.get("sender_uid") is not None:
            text += f" uid {clean(sig['sender_uid'])}"
    elif sig.get("user_sent"):
        text += "  sent by a process (kill, tgkill, raise)"
    if sig.get("fault_address") is not None and not sig.get("user_sent") and sig.get("sender_pid") is None:
        text += f"  fault address {clean(sig['fault_address'])}"
    extra = [f"{clean(key)} {clean(value)}" for key, value in sig.items()
             if key not in _SIGNAL_KEYS and value is not None]  # fmt: skip
    return "  ".join([text, *extra])


def _threads(report: dict[str, Any], full: bool) -> list[str]:
    threads = [t for t in report.get("threads") or [] if isinstance(t, dict)]
    if not threads:
        return ["", "no backtrace in this report (see the capture line above, and the log)"]
    crashed = next((t for t in threads if t.get("crashed")), threads[0])
    lines: list[str] = []
    others = [t for t in threads if t is not crashed]
    for thread in [crashed, *others]:
        name = f' "{clean(thread["name"])}"' if thread.get("name") else ""
        head = f"Thread {clean(thread.get('id'))} (LWP {clean(thread.get('tid'))}{name})"
        if thread is crashed:
            lines += ["", f"{head} [crashed]" if thread.get("crashed") else head]
            lines += _bt_full(thread)
        elif full:
            lines += ["", head]
            lines += _bt_full(thread)
        else:
            if thread is others[0]:
                lines += ["", f"other threads ({len(others)}; every thread's bt full with --full):"]
            top = [clean(_frame_name(frame)) for frame in thread.get("frames") or [] if isinstance(frame, dict)]
            lines.append(f"  {head}: {' < '.join(top[:5]) or '(no frames)'}")
    return lines


def _bt_full(thread: dict[str, Any]) -> list[str]:
    """gdb's ``bt full`` of one thread, without gdb's own "Thread N (...)" head; else its frames."""
    text = str(thread.get("text") or "").strip()
    if text:
        if text.startswith("Thread "):
            text = text.partition("\n")[2]
        return _label_unnamed(clean_block(text).splitlines(), thread.get("frames")) or ["(no frames)"]
    frames = [frame for frame in thread.get("frames") or [] if isinstance(frame, dict)]
    return [_frame_line(frame) for frame in frames] or ["(no frames)"]


def _frame_name(frame: dict[str, Any]) -> str:
    """The function, else coredumpctl's ``(smtpd + 0x1427)``."""
    if frame.get("function"):
        return str(frame["function"])
    obj, offset = frame.get("object"), frame.get("module_offset")
    if not obj:
        return "??"
    module = str(obj).rsplit("/", 1)[-1]
    return f"({module} + {offset})" if offset else f"({module})"


def _label_unnamed(lines: list[str], frames: object) -> list[str]:
    """gdb's ``#3  0x... in ?? ()`` lines with the frame's ``(module + 0xOFFSET)`` after them."""
    rows = [frame for frame in frames if isinstance(frame, dict)] if isinstance(frames, list) else []
    labels = {frame.get("level"): _frame_name(frame) for frame in rows
              if not frame.get("function") and frame.get("module_offset")}  # fmt: skip
    out = []
    for line in lines:
        found = _UNNAMED.match(line)
        label = labels.get(int(found.group(1))) if found else None
        out.append(line.replace("?? ()", f"?? () {clean(label)}", 1) if label else line)
    return out


def _frame_line(frame: dict[str, Any]) -> str:
    function = clean(frame.get("function") or "??")
    text = f"#{clean(frame.get('level')):<3} {clean(frame.get('address') or '?')} in {function}"
    if not frame.get("function") and frame.get("object") and frame.get("module_offset"):
        text += f" {clean(_frame_name(frame))}"
    if frame.get("file"):
        text += f" at {clean(frame['file'])}" + (f":{clean(frame['line'])}" if frame.get("line") is not None else "")
    elif frame.get("object"):
        text += f" from {clean(frame['object'])}"
    return text


def _libraries(libraries: object) -> list[str]:
    rows = [lib for lib in libraries if isinstance(lib, dict)] if isinstance(libraries, list) else []
    if not rows:
        return []
    width = max(len(clean(lib.get("path"))) for lib in rows)
    lines = ["", "libraries (path, build-id):"]
    for lib in rows:
        line = f"  {clean(lib.get('path')).ljust(width)}  {clean(lib.get('build_id') or '(no build-id)')}"
        if lib.get("debug_package"):
            line += f"  debug symbols: {clean(lib['debug_package'])}"
        lines.append(line)
    return lines


def _missing_symbols(missing: object, debug: object = None) -> list[str]:
    """Each object lacking file:line (build-id, package, what to do), then ``debug_symbols``' advice."""
    items = [item for item in missing if isinstance(item, dict)] if isinstance(missing, list) else []
    if not items:
        return []
    lines = ["", "frames without symbols (with debug symbols installed, the next report names them):"]
    for item in items:
        lines.append(f"  {clean(item.get('object') or '?')}: build-id {clean(item.get('build_id') or '?')}")
        facts = [f"{clean(key).replace('_', ' ')}: {clean(value)}" for key, value in item.items()
                 if key not in ("object", "build_id", "note") and value not in (None, "", [])]  # fmt: skip
        if facts:
            lines.append("    " + "; ".join(facts))
        if item.get("note"):
            lines.append(f"    {clean(item['note'])}")
    if isinstance(debug, dict):  # its advice lines say whether debian-debug and debuginfod are configured
        advice = debug.get("advice")
        for text in advice if isinstance(advice, list) else []:
            lines.append(f"  {clean(text)}")
    return lines


def _known(value: object) -> str:
    return "?" if value is None else clean(value)


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def render_deleted(reply: dict[str, Any]) -> str:
    """``tracerctl crash-delete``: what went, one line a report."""
    reports, cores = reply.get("deleted") or [], reply.get("cores") or []
    if not reports and not cores:
        return "nothing to delete" + (f" stored before {clean(reply['cutoff'])}" if reply.get("cutoff") else "")
    head = f"deleted {len(reports)} crash report(s) and {len(cores)} core(s)"
    if reply.get("signatures"):
        head += f"; signature(s) gone: {', '.join(clean(sig) for sig in reply['signatures'])}"
    return "\n".join([head, *(f"  {clean(rid)}" for rid in reports)])
