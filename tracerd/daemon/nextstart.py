"""Armed catches: ``tracerctl gdb --next NAME`` waits for the next start of NAME.

One catch per NAME, alive exactly as long as its ``catch`` request; the next
``hook`` for NAME takes it. When tracerctl ends (seen through its pidfd) the
catch is disarmed at once. See docs/debugging.md.

Security: root only (not read-only); the name was checked by tracerd.protocol;
the caller's pid is SO_PEERCRED's, its pidfd opened against its start time.

Diagnostics: a second catch for NAME gets Busy naming the first; a caller
gone before arming gets TargetGone (CallerGone once armed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

from tracerd import procinfo
from tracerd.errors import Busy, TargetGone, TracerdError
from tracerd.timefmt import iso_utc


class CallerGone(TracerdError):
    """tracerctl ended while its catch was armed (nobody to answer)."""

    code = "no_such_process"


@dataclass
class Catch:
    name: str
    hold: float
    by: int  # tracerctl's pid (SO_PEERCRED)
    armed: str = field(default_factory=iso_utc)
    caught: asyncio.Future[dict[str, Any]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "hold": self.hold, "by": self.by, "armed": self.armed}


class Catches:
    """The armed catches, by name."""

    def __init__(self) -> None:
        self._armed: dict[str, Catch] = {}

    def arm(self, name: str, hold: float, by: int) -> Catch:
        first = self._armed.get(name)
        if first is not None:
            raise Busy(
                f"{name} is already armed by tracerctl pid {first.by} since {first.armed}"
                f" (--hold {first.hold:g}): one catch per name"
            )
        catch = Catch(name, hold, by)
        self._armed[name] = catch
        return catch

    def disarm(self, catch: Catch) -> None:
        if self._armed.get(catch.name) is catch:
            del self._armed[catch.name]
        if not catch.caught.done():
            catch.caught.cancel()

    def take(self, name: str) -> Catch | None:
        """The catch armed for ``name``, disarmed (a hook for NAME takes it), or None."""
        catch = self._armed.pop(name, None)
        if catch is not None and catch.caught.done():
            return None
        return catch

    def to_json(self) -> list[dict[str, Any]]:
        return [catch.to_json() for catch in self._armed.values()]

    async def wait(self, catch: Catch) -> dict[str, Any]:
        """The caught process, once a hook takes the catch; CallerGone when tracerctl ends first."""
        loop = asyncio.get_running_loop()
        try:
            pidfd = procinfo.open_pidfd(procinfo.identify(catch.by))
        except TargetGone:
            raise CallerGone("tracerctl ended before the catch was armed") from None
        gone = loop.create_future()

        def on_exit() -> None:
            loop.remove_reader(pidfd)
            if not gone.done():
                gone.set_result(None)

        loop.add_reader(pidfd, on_exit)
        try:
            await asyncio.wait({catch.caught, gone}, return_when=asyncio.FIRST_COMPLETED)
            if catch.caught.done() and not catch.caught.cancelled():
                return catch.caught.result()
            raise CallerGone(f"tracerctl (pid {catch.by}) ended: {catch.name} disarmed")
        finally:
            loop.remove_reader(pidfd)
            with contextlib.suppress(OSError):
                os.close(pidfd)
            self.disarm(catch)
