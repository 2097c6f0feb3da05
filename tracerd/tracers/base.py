"""The interface every tracer backend implements, and the pidfd exit watch they share.

The session runner (:mod:`tracerd.daemon.service`) drives a backend:
``attach()`` returns once the kernel or the tracer confirms the attachment;
``wait()`` returns the :class:`Ending`; ``detach()`` leaves the process
running.  :meth:`Tracer.shutdown` ends what a backend keeps for all its
sessions, at daemon exit; :meth:`Tracer.counters` feeds ``status``.

Security: a backend trusts its Target (checked by the daemon) and nothing a
traced process writes; :class:`ExitWatch` re-checks the identity through the pidfd.

Diagnostics: backends raise the project's exceptions (``raise ... from err``),
never OS errors; a target gone before the watch opens raises TargetGone.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import shutil
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from tracerd import procinfo
from tracerd.errors import TracerFailed
from tracerd.procinfo import ProcessIdentity

if TYPE_CHECKING:
    from tracerd.crash.report import CrashReport


@dataclass(frozen=True)
class Target:
    identity: ProcessIdentity
    name: str
    args: tuple[str, ...] = ()
    attach_timeout: float = 10.0
    capture_dir: str | None = None  # where crash cores and capture markers go (None: nowhere)
    core: str = "first"  # the core policy for this process (docs/crashes.md "Cores and retrace")
    core_timeout: float = 60.0  # how long the gdb tracer's gcore may hold the process
    # the watcher's capture core: memory past it is left out (and no core is kept)
    core_limit: int = 2 * 1024 * 1024 * 1024
    syscount: Any = None  # the [syscount] settings in force (tracerd.syscountconfig.SyscountConfig)

    @property
    def pid(self) -> int:
        return self.identity.pid


class ExitWatch:
    """A pidfd on the target: ``gone`` is done once it has exited; ``close()`` ends the watch."""

    def __init__(self, identity: ProcessIdentity) -> None:
        self._loop = asyncio.get_running_loop()
        self.fd = procinfo.open_pidfd(identity)
        self.gone: asyncio.Future[None] = self._loop.create_future()
        self._loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        self._loop.remove_reader(self.fd)
        if not self.gone.done():
            self.gone.set_result(None)

    def close(self) -> None:
        """Stop watching and close the pidfd (again: nothing); ``gone`` keeps its state."""
        if self.fd >= 0:
            with contextlib.suppress(Exception):  # the loop may be closed already
                self._loop.remove_reader(self.fd)
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


@dataclass(frozen=True)
class Ending:
    """How a session ended: state is exited, crashed, detached or failed."""

    state: str
    exit_code: int | None = None
    signal: str | None = None
    reason: str | None = None
    crash: str | None = None
    reattach: bool = False  # the tracer (not the process) went away: trace it again

    def describe(self, tag: str) -> str:
        """The closing line of the per-process log."""
        if self.state == "detached":
            return f"tracerd: {tag} detached ({self.reason or 'on request'}); it runs on untraced"
        if self.state == "failed":
            return f"tracerd: {tag} tracer failed: {self.reason}; the process runs on untraced"
        if self.signal:
            how = "crashed" if self.state == "crashed" else "ended"
            return f"tracerd: {tag} {how}: killed by {self.signal}"
        if self.exit_code is not None:
            return f"tracerd: {tag} exited with status {self.exit_code}"
        return f"tracerd: {tag} ended ({self.reason or 'exit status unknown'})"


class Output(Protocol):
    """Where a backend sends what it learns; the session fans it out to log and syslog."""

    log_path: str

    def line(self, text: str) -> None:
        """One line of tracer output (log at info, syslog at info, rate limited)."""

    def lines(self, texts: list[str]) -> None:
        """Several lines of tracer output at once (what one read brought)."""

    def warn(self, text: str) -> None:
        """A problem worth one syslog warning."""

    def capturing(self, identity: ProcessIdentity, name: str, signal: str) -> AbstractContextManager[Any]:
        """Mark a crash capture as running while the context lasts (left over: an interrupted capture)."""

    async def crash(self, report: CrashReport) -> str | None:
        """Store the report atomically, log its backtrace, syslog its summary; the crash id or None."""


class Tracer(abc.ABC):
    """A tracer backend; one instance per traced process."""

    name: ClassVar[str]
    program: ClassVar[str | None] = None

    def __init__(self, target: Target, output: Output) -> None:
        self.target = target
        self.output = output
        self.tracer_pid: int | None = None
        self.lost_events = 0  # events the tracer reported it could not record (perf's LOST lines)

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this backend cannot run here, or None when it can."""
        if cls.program and shutil.which(cls.program) is None:
            return f"{cls.program} is not installed on this system"
        return None

    @classmethod
    async def shutdown(cls) -> None:
        """tracerd is stopping: end what this backend keeps for all its sessions."""
        return

    @classmethod
    def counters(cls) -> dict[str, int]:
        """This backend's own counters for ``status`` (none by default)."""
        return {}

    @abc.abstractmethod
    async def attach(self) -> None: ...

    @abc.abstractmethod
    async def wait(self) -> Ending: ...

    @abc.abstractmethod
    async def detach(self) -> None: ...

    async def where(self) -> str:
        """A live backtrace of every thread; the process keeps running, still traced."""
        raise TracerFailed(f"where needs the watch or gdb tracer (this session uses {self.name})")


async def poll_until(check: Check, timeout: float, what: str) -> None:
    """Poll ``check`` (first at once, then 1 ms growing to 20 ms) until True; TimeoutError past ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    interval = 0.001
    while not check():
        if loop.time() >= deadline:
            raise TimeoutError(what)
        await asyncio.sleep(interval)
        interval = min(interval * 2, 0.02)


class Check(Protocol):
    def __call__(self) -> bool: ...
