"""Fail points: named instants where a test can freeze tracerd to kill things.

For the tests of "nothing left stopped at every instant of a capture":
``TRACERD_FAILPOINTS=NAME:SECONDS[,...]`` makes reaching NAME log ``failpoint
NAME`` on stderr and pause that task for SECONDS.  Names: ``capture-start``,
``capture-running``, ``report-written``; ``rawcount-refused`` makes
syscount's raw tracepoint load fail instead (:func:`fails`).  Unset, it costs a dict lookup.

Security: only tracerd's own environment sets them (root's or the unit's).

Diagnostics: a malformed item is ignored.
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


def fails(name: str) -> bool:
    """Whether fail point NAME is set (it makes that step fail instead of pausing)."""
    return name in _POINTS
