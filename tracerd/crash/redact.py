"""A crash report as a ``socket_group`` member may see it: without the target's memory.

Locals and memory are root's (docs/design.md, "Security model"), as cores are (0600):
gdb's ``bt full`` text prints every frame's arguments and locals (a
password in a buffer, a session key), and a strace or ltrace report's last
lines print the buffers of the calls.  :func:`for_group` keeps the rest of a
report: the process, the signal, the frames (function, file, line, object,
addresses, build-ids; no values), registers, the disassembly (the program's
code), libraries, missing symbols, the core's state, the mail log lines, and
an abort or assertion message (composed by glibc and assert() from the
program's own text), and says what it withheld in ``redacted``.

Security: a key is kept only when it is listed here as free of the
target's data (:data:`KEPT`, :data:`THREAD_KEPT`, :data:`FRAME_KEPT`); a key
this module does not know, from a newer report or a damaged file, is left
out, so a field added to the report is root's until someone lists it.
tests/test_group_secrets.py checks that every field of
:class:`~tracerd.crash.report.CrashReport` is either kept or withheld.

Diagnostics: none; any JSON value is accepted and the answer is always a
report (a thread or frame that is not an object is left out).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tracerd.crash.report import Frame

REASON = "locals and memory are root's (README, \"Security model\")"
# What the group gets of a report: everything but the target's memory.
KEPT = frozenset({
    "id", "signature", "signature_basis", "top", "stored", "process", "signal", "time", "threads", "registers",
    "disassembly", "libraries", "log", "tracer", "missing_symbols", "debug_symbols", "notice", "core", "mail_log",
    "abort_message", "assertion", "host", "stack_overflow",  # the machine's names; depths and addresses
})  # fmt: skip
# What it does not: memory, named for the ``redacted`` note (threads' ``text`` is bt full's).
WITHHELD = {"text": "bt full (arguments and locals)", "trace": "the trace's last lines (call arguments, buffers)"}
THREAD_KEPT = frozenset({"id", "tid", "name", "crashed", "frames"})
FRAME_KEPT = frozenset(field.name for field in dataclasses.fields(Frame))


def for_group(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` without locals and memory, with ``redacted`` saying so (a new dict; ``report`` is untouched)."""
    shown = {key: value for key, value in report.items() if key in KEPT}
    threads = report.get("threads")
    shown["threads"] = [_thread(thread) for thread in threads if isinstance(thread, dict)] \
        if isinstance(threads, list) else []  # fmt: skip
    shown["redacted"] = {"reason": REASON, "withheld": list(WITHHELD.values())}
    return shown


def _thread(thread: dict[str, Any]) -> dict[str, Any]:
    kept = {key: value for key, value in thread.items() if key in THREAD_KEPT}
    frames = thread.get("frames")
    kept["frames"] = [{key: value for key, value in frame.items() if key in FRAME_KEPT}
                      for frame in frames if isinstance(frame, dict)] if isinstance(frames, list) else []  # fmt: skip
    return kept

