"""One control-character cleaner for text that came from outside.

Whatever shows or stores text a traced process, a core or a log file wrote
(syslog, crash reports and views, mail log excerpts, bug reports) passes it
through :func:`clean` first.

Security: the text is hostile.  C0, DEL and C1 controls become ``?`` (no forged
log record, no terminal escape); only the layout characters in ``keep`` pass.

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
