"""A crash report as a ``socket_group`` member may see it: without the target's memory.

for_group() drops gdb's ``bt full`` text (arguments, locals) and a strace or
ltrace report's last lines (call buffers), keeps the rest (process, signal,
frames, registers, code, libraries...) and says what it withheld in
``redacted``.  See docs/design.md, "Security model".

Security: a key is kept only if listed here as free of the target's data (KEPT,
THREAD_KEPT, FRAME_KEPT); an unknown key is left out, so a new report field is
root's until listed (tests/test_group_secrets.py checks every field).

Diagnostics: none; any JSON value is accepted and the answer is always a
report (a thread or frame that is not an object is left out).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tracerd.crash.report import Frame

REASON = "locals and memory are root's (README, \"Security model\")"
# what the group gets of a report: everything but the target's memory
KEPT = frozenset({
    "id", "signature", "signature_basis", "top", "stored", "process", "signal", "time", "threads", "registers",
    "disassembly", "libraries", "log", "tracer", "missing_symbols", "debug_symbols", "notice", "core", "mail_log",
    "abort_message", "assertion", "host", "stack_overflow",  # the machine's names; depths and addresses
})  # fmt: skip
# what it does not, named for the ``redacted`` note (threads' ``text`` is bt full's)
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

