"""After a crash capture: make sure the process has died of its own signal.

The tracer lets the process go delivering its signal (the watcher's ``finish``,
gdb's detach); this waits, bounded, on a pidfd for it to be gone.  A process
still there is sent its own signal again, and SIGCONT.

Security: every signal goes through the pidfd, so a recycled pid is never
signalled; never a signal but its own.

Diagnostics: a process that will not die is reported through ``warn``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal as signalmod
from collections.abc import Callable
from typing import Any

from tracerd.procinfo import ProcessIdentity

FIRST_WAIT = 2.0  # the README's bound: dead of its signal within 2 s of its release


async def wait_for_death(pidfd: int, identity: ProcessIdentity, signal_name: str, warn: Callable[..., Any]) -> bool:
    """True once the process is gone; False (after a warning) if it would not die."""
    signo = int(getattr(signalmod.Signals, signal_name, signalmod.SIGSEGV))
    loop = asyncio.get_running_loop()
    dead: asyncio.Future[None] = loop.create_future()

    def on_death() -> None:
        if not dead.done():
            dead.set_result(None)

    loop.add_reader(pidfd, on_death)
    try:
        for wait in (FIRST_WAIT, 3.0):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(dead), timeout=wait)
            if dead.done():
                return True
            with contextlib.suppress(ProcessLookupError):
                signalmod.pidfd_send_signal(pidfd, signo)
                signalmod.pidfd_send_signal(pidfd, signalmod.SIGCONT)
        warn(f"process {identity.pid} did not die of {signal_name} after its crash report")
        return False
    finally:
        loop.remove_reader(pidfd)
