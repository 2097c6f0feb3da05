"""One object per running event loop, made on first use.

The watcher supervisor and the warm gdb pool.  A new loop (a daemon started
again in one process, as in tests) gets a new object; the old one is dropped.

Security: holds nothing from outside.

Diagnostics: none; :meth:`PerLoop.current` is None outside a running loop or
before the first :meth:`PerLoop.get`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerLoop(Generic[T]):
    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._loop: int | None = None
        self._value: T | None = None

    def get(self) -> T:
        """The running loop's object, made now if this loop has none."""
        loop = id(asyncio.get_running_loop())
        if self._value is None or self._loop != loop:
            self._loop, self._value = loop, self._make()
        return self._value

    def current(self) -> T | None:
        try:
            loop = id(asyncio.get_running_loop())
        except RuntimeError:
            return None
        return self._value if self._loop == loop else None
