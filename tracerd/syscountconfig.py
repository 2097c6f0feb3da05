"""The ``[syscount]`` section of the configuration (docs/syscount.md, tracerd.toml(5)).

tracerd.config calls :func:`syscount` with the table and its error reporter:
``interval`` (1 to 86400 s) and ``latency`` (applies from the shared
bpftrace's next start, i.e. a tracerd restart).

Security: root's file; every value is checked.

Diagnostics: each problem goes to ``error(message, key)`` as one line; the
section keeps its valid keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Report = Callable[[str, str], None]  # (message, key)


@dataclass(frozen=True)
class SyscountConfig:
    interval: float = 10.0
    latency: bool = False


_KEYS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "interval": ("a number of seconds, 1 <= t <= 86400", lambda v: isinstance(v, int | float)
                 and not isinstance(v, bool) and math.isfinite(v) and 1 <= v <= 86400),
    "latency": ("true or false", lambda v: isinstance(v, bool)),
}  # fmt: skip


def syscount(value: object, error: Report) -> SyscountConfig | None:
    if not isinstance(value, dict):
        error("must be a table", "syscount")
        return None
    good: dict[str, Any] = {}
    for key, item in value.items():
        if key not in _KEYS:
            error("unknown key", f"syscount.{key}")
        elif _KEYS[key][1](item):
            good[key] = float(item) if key == "interval" else item
        else:
            error(f"must be {_KEYS[key][0]}", f"syscount.{key}")
    return SyscountConfig(**good)
