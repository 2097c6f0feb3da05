"""Releasing a crashed process: it must die of its own signal, as untraced.

After a crash report was taken (or could not be), the process is stopped
and untraced; this sends what is needed, through a pidfd so that a recycled
pid can never receive it, and waits (bounded) until the process is gone.

Diagnostics: a process that will not die is reported through ``warn``; it
is never killed with another signal than its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal as signalmod
from collections.abc import Callable
from typing import Any

from tracerd.procinfo import ProcessIdentity


async def make_it_die(
    pidfd: int, identity: ProcessIdentity, signal_name: str, si_code: int, warn: Callable[..., Any]
) -> None:
    """After the capture: the process must die of its signal, as untraced.

    A fault (si_code > 0) happens again as soon as the thread runs; a signal
    sent by kill()/raise() is sent again.  SIGCONT first: a process that gdb
    left stopped would otherwise wait forever.
    """
    signo = int(getattr(signalmod.Signals, signal_name))
    loop = asyncio.get_running_loop()
    dead: asyncio.Future[None] = loop.create_future()

    def on_death() -> None:
        if not dead.done():
            dead.set_result(None)

    loop.add_reader(pidfd, on_death)
    try:
        with contextlib.suppress(ProcessLookupError):
            if si_code <= 0:
                signalmod.pidfd_send_signal(pidfd, signo)
            signalmod.pidfd_send_signal(pidfd, signalmod.SIGCONT)
        for _ in range(2):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(dead), timeout=5.0)
            if dead.done():
                return
            with contextlib.suppress(ProcessLookupError):
                signalmod.pidfd_send_signal(pidfd, signo)
                signalmod.pidfd_send_signal(pidfd, signalmod.SIGCONT)
        warn(f"process {identity.pid} did not die of {signal_name} after its crash report")
    finally:
        loop.remove_reader(pidfd)
