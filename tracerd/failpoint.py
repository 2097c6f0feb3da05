"""Fail points: named instants where a test can freeze tracerd to kill things.

The README promises that nothing is left stopped "at every instant of a
capture".  To prove it, the tests must kill tracerd, the watcher or gdb at
chosen instants, which no timing can hit reliably.  With
``TRACERD_FAILPOINTS=NAME:SECONDS[,NAME:SECONDS]`` in tracerd's environment,
reaching NAME logs ``failpoint NAME`` on stderr and pauses that one task (not
the daemon) for SECONDS.  Without the variable this is a dictionary lookup.

Names: ``capture-start`` (marker written, no gdb yet), ``capture-running``
(gdb holds or reads the crash, no report yet), ``report-written`` (report
stored, process not yet released).

Security: only the environment tracerd was started with can set them: that
is root's (or the unit's) to decide, like every other setting.
"""

from __future__ import annotations

import asyncio
import os
import sys


def _parse(text: str) -> dict[str, float]:
    points: dict[str, float] = {}
    for item in text.split(","):
        name, _, seconds = item.partition(":")
        try:
            points[name.strip()] = float(seconds or "3600")
        except ValueError:
            continue
    return points


_POINTS = _parse(os.environ.get("TRACERD_FAILPOINTS", ""))


async def reached(name: str) -> None:
    seconds = _POINTS.get(name)
    if seconds is None:
        return
    print(f"failpoint {name}", file=sys.stderr, flush=True)
    await asyncio.sleep(seconds)
