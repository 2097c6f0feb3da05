"""Sessions: one traced process each, their state machine, limits and history.

``attaching -> attached -> exited | crashed | detached | failed`` (or
``attaching -> failed``); :meth:`Session.transition` is the only way a state
changes. The registry maps active sessions by pid; ended ones go to a bounded
history, and a recycled pid starts a session of its own.

Security: a session holds its (pid, start time) identity; nothing here acts
on a pid alone.

Diagnostics: an illegal move raises IllegalTransition (a tracerd bug); limits
raise Busy, an unknown pid NotFound, each in one line.
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass, field
from typing import Any

from tracerd.errors import Busy, NotFound
from tracerd.procinfo import ProcessIdentity
from tracerd.timefmt import iso_utc
from tracerd.tracers.base import Ending


class State(enum.StrEnum):
    """A session's state; the values are those of the status JSON."""

    ATTACHING = "attaching"
    ATTACHED = "attached"
    EXITED = "exited"
    CRASHED = "crashed"
    DETACHED = "detached"
    FAILED = "failed"


ACTIVE_STATES = frozenset({State.ATTACHING, State.ATTACHED})
ENDINGS = frozenset({State.EXITED, State.CRASHED, State.DETACHED, State.FAILED})
LEGAL: dict[State, frozenset[State]] = {
    State.ATTACHING: frozenset({State.ATTACHED, State.FAILED}),
    State.ATTACHED: ENDINGS,
    **{end: frozenset() for end in ENDINGS},
}


class IllegalTransition(RuntimeError):
    """A state change the machine does not allow (a bug in tracerd)."""


def utcnow() -> str:
    return iso_utc()


@dataclass
class Session:
    identity: ProcessIdentity
    name: str
    tracer: str
    log: str
    state: State = State.ATTACHING
    started: str = field(default_factory=utcnow)
    ended: str | None = None
    lines: int = 0
    bytes: int = 0
    exit_code: int | None = None
    signal: str | None = None
    crash: str | None = None
    error: str | None = None
    tracer_pid: int | None = None
    log_error: str | None = None  # the log cannot be written (disk full...): flagged
    log_dropped: int = 0
    readopted: bool = False  # traced again after a tracerd restart
    lost_events: int = 0  # events the tracer lost (perf), as it reported them
    running: Any = field(default=None, repr=False, compare=False)  # the runner's parts while active

    @property
    def pid(self) -> int:
        return self.identity.pid

    @property
    def tag(self) -> str:
        return f"{self.name}[{self.pid}]"

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def transition(self, new: State | str) -> None:
        """Move to ``new``; IllegalTransition unless LEGAL allows it."""
        try:
            target = State(new)
        except ValueError:
            raise IllegalTransition(f"{self.tag}: no such state {new!r}") from None
        if target not in LEGAL[self.state]:
            raise IllegalTransition(f"{self.tag}: {self.state} -> {target} is not allowed")
        self.state = target
        if target in ENDINGS:
            self.ended = utcnow()

    def end(self, ending: Ending) -> None:
        self.transition(ending.state)
        self.exit_code = ending.exit_code
        self.signal = ending.signal
        self.crash = ending.crash or self.crash
        if ending.state == State.FAILED:
            self.error = ending.reason

    def to_json(self) -> dict[str, Any]:
        """The session as docs/json.md's status JSON lists it."""
        return {
            "pid": self.pid,
            "name": self.name,
            "tracer": self.tracer,
            "state": self.state.value,
            "started": self.started,
            "ended": self.ended,
            "log": self.log,
            "lines": self.lines,
            "bytes": self.bytes,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "crash": self.crash,
            "error": self.error,
            "tracer_pid": self.tracer_pid,
            "log_error": self.log_error,
            "log_dropped": self.log_dropped,
            "readopted": self.readopted,
            "lost_events": self.lost_events,
        }


class SessionRegistry:
    """Active sessions by pid, plus a bounded history of ended ones."""

    def __init__(self, max_sessions: int, history: int) -> None:
        self.max_sessions = max_sessions
        self._active: dict[int, Session] = {}
        self._history: collections.deque[Session] = collections.deque(maxlen=max(history, 0))

    def __len__(self) -> int:
        return len(self._active)

    def active(self) -> list[Session]:
        return list(self._active.values())

    def all(self) -> list[Session]:
        return [*self._history, *self._active.values()]

    def active_by_pid(self, pid: int) -> Session | None:
        return self._active.get(pid)

    def current(self, identity: ProcessIdentity) -> Session | None:
        """The active session for exactly this process, if any."""
        session = self._active.get(identity.pid)
        if session is not None and session.identity == identity:
            return session
        return None

    def add(self, session: Session) -> None:
        old = self._active.get(session.pid)
        if old is not None:
            if old.identity == session.identity:
                raise Busy(f"process {session.pid} is already traced ({old.tracer}, {old.state})")
            # the pid was recycled: the old session's process is gone
            self.retire(old)
        if len(self._active) >= self.max_sessions:
            raise Busy(f"max_sessions ({self.max_sessions}) reached")
        self._active[session.pid] = session

    def retire(self, session: Session) -> None:
        """Move an ended session to the history."""
        if self._active.get(session.pid) is session:
            del self._active[session.pid]
            self._history.append(session)

    def find(self, pid: int) -> Session:
        """The active session for pid, else the newest ended one."""
        if pid in self._active:
            return self._active[pid]
        for session in reversed(self._history):
            if session.pid == pid:
                return session
        raise NotFound(f"no session for pid {pid}")

    def earlier(self, pid: int) -> list[Session]:
        """pid's sessions before the one :meth:`find` gives, newest first."""
        sessions = [*self._history, *([self._active[pid]] if pid in self._active else [])]
        return [session for session in sessions if session.pid == pid][::-1][1:]

    def remember(self, session: Session) -> None:
        """An ended session that never was active here (ended while tracerd was down)."""
        self._history.append(session)

    def resize(self, max_sessions: int, history: int) -> None:
        self.max_sessions = max_sessions
        if history != self._history.maxlen:
            self._history = collections.deque(self._history, maxlen=max(history, 0))
