"""The one UTC time format of tracerd's files and JSON: ``2026-11-24T16:18:14.123Z``.

Security: none needed: a clock reading in, text out.

Diagnostics: none: it cannot fail for a valid epoch.
"""

from __future__ import annotations

import datetime as dt
import time


def iso_utc(epoch: float | None = None) -> str:
    """``epoch`` (default: now) as ISO 8601 UTC with milliseconds and a ``Z``."""
    when = time.time() if epoch is None else epoch
    return dt.datetime.fromtimestamp(when, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
