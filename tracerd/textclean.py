"""One control-character cleaner for text that came from outside.

Everything that shows or stores text a traced process, a core or a log file
wrote (syslog records, crash reports, ``tracerctl crash`` views, mail log
excerpts, bug reports) passes it through :func:`clean` first.

Security: the text is hostile.  C0 controls (``\\x00``-``\\x1f``), DEL and the
C1 controls (``\\x80``-``\\x9f``, which some terminals take as escape
sequences) become ``?``, so no forged second log record and no terminal escape
survives; only the layout characters the caller names in ``keep`` (tab,
newline) pass.

Diagnostics: none; :func:`clean` never raises (any object is ``str()``-ed).
"""

from __future__ import annotations

from functools import cache

CONTROLS = (*range(0x20), 0x7F, *range(0x80, 0xA0))
TAB = "\t"
LINES = "\t\n"  # a multi-line block keeps its layout


@cache
def _table(keep: str) -> dict[int, str]:
    kept = {ord(c) for c in keep}
    return {c: "?" for c in CONTROLS if c not in kept}


def clean(value: object, keep: str = "") -> str:
    """``str(value)`` with each control character but those in ``keep`` replaced by '?'."""
    return str(value).translate(_table(keep))
