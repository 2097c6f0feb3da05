"""Re-adoption: the sessions a previous tracerd left in sessions.json, traced again.

Once the socket accepts, each entry is checked, then handled
:data:`CONCURRENCY` at a time: the same process (pid, start time) is traced
again, keeping ``started`` and log; one gone or recycled is only listed
``ended while tracerd was down``. See docs/design.md, "Restart".

Security: the file is hostile; an entry is used only when every field has
its form, its log is ``log_dir/NAME.PID.log`` in force, and it passes every
request's rules. Recorded args are ignored: the rules in force give them.

Diagnostics: ``sessions_file_entry_ignored`` per bad entry,
``sessions_file_ignored`` for an unusable file, ``readopt_failed`` per process
(a failed tracer is tried once more). None of these stops the start.
"""

from __future__ import annotations

import asyncio
import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from tracerd import procinfo, tracers
from tracerd.daemon.auth import OWN_ANCESTRY, Authorizer
from tracerd.daemon.service import TracerdService
from tracerd.daemon.sessions import Session, State, utcnow
from tracerd.daemon.sessionsfile import SessionsFile, SessionsFileError, load
from tracerd.errors import TargetGone, TracerdError, TracerFailed
from tracerd.procinfo import ProcessIdentity
from tracerd.protocol import NAME_RE

log = structlog.get_logger("tracerd")
CONCURRENCY = 32
PID_MAX = 1 << 22  # the kernel's highest pid_max
ATTEMPTS = 2  # per entry, when the tracer failed
RELEASE_WAIT = 5.0  # a dead tracerd's tracer may still be letting go (pdeathsig)
ENDED = "ended while tracerd was down"


class Invalid(Exception):
    """The entry cannot be used; the message says why."""


@dataclass(frozen=True)
class Entry:
    pid: int
    start: int
    name: str
    tracer: str
    args: tuple[str, ...]
    log: str
    started: str

    def record(self) -> dict[str, Any]:
        return {"pid": self.pid, "start": self.start, "name": self.name, "tracer": self.tracer,
                "args": list(self.args), "log": self.log, "started": self.started}  # fmt: skip


def _int(raw: dict[str, Any], key: str) -> int:
    value = raw.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise Invalid(f"{key} is not an integer: {value!r:.40}")
    return value


def _str(raw: dict[str, Any], key: str, limit: int = 4096) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value or len(value) > limit or "\0" in value:
        raise Invalid(f"{key} is not a string: {value!r:.40}")
    return value


def validate(raw: Any, log_dir: Path) -> Entry:
    """An entry whose every field has its type and form, or Invalid."""
    if not isinstance(raw, dict):
        raise Invalid(f"not an object: {raw!r:.40}")
    pid, start = _int(raw, "pid"), _int(raw, "start")
    if not 1 < pid <= PID_MAX:
        raise Invalid(f"pid {pid} is out of range" + (" (init)" if pid == 1 else ""))
    if start < 0:
        raise Invalid(f"start {start} is negative")
    name, tracer = _str(raw, "name", 64), _str(raw, "tracer", 16)
    where, started = _str(raw, "log"), _str(raw, "started", 64)
    if not NAME_RE.fullmatch(name):
        raise Invalid(f"name {name!r:.70} is not a valid process name")
    if tracer not in tracers.NAMES:
        raise Invalid(f"tracer {tracer!r} is not one of {', '.join(tracers.NAMES)}")
    args = raw.get("args", [])
    if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
        raise Invalid("args is not a list of strings")
    expected = log_dir / f"{name}.{pid}.log"
    if where != str(expected):
        raise Invalid(f"log {where!r:.200} is not {str(expected)!r} (log_dir in force)")
    try:
        datetime.datetime.fromisoformat(started.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(f"started {started!r:.70} is not a timestamp") from None
    return Entry(pid, start, name, tracer, tuple(args), where, started)


def check_rules(entry: Entry, refused: set[int]) -> None:
    """The rules every request obeys, else Invalid: a traceable target, a tracer found."""
    try:  # a kernel thread or a non-leader thread is refused; a zombie: adopt() ends it
        procinfo.check_user_process(entry.pid)
    except TargetGone:
        pass
    except TracerdError as err:
        raise Invalid(str(err)) from None
    if entry.pid in refused:
        try:  # the same words as a request's refusal
            Authorizer.check_traceable(ProcessIdentity(entry.pid, entry.start), refused)
        except TracerdError as err:
            raise Invalid(str(err)) from None
    try:
        tracers.backend(entry.tracer)
    except TracerdError as err:
        raise Invalid(str(err)) from None


def _zombie(pid: int) -> bool:
    try:
        procinfo.check_user_process(pid)
    except TargetGone:
        return True
    except TracerdError:
        return False
    return False


def untraceable(tracer_pids: set[int]) -> set[int]:
    """What Authorizer.check_traceable refuses, computed once for all entries."""
    return {1, *OWN_ANCESTRY.pids(), *tracer_pids}


class Readoption:
    """One start's re-adoption of the sessions in sessions.json."""

    def __init__(self, service: TracerdService, sessions_file: SessionsFile) -> None:
        self.service = service
        self.runner = service.runner
        self.file = sessions_file
        self.entries: list[Entry] = []
        service.counters.setdefault("readopted", 0)
        service.counters.setdefault("ended_while_down", 0)

    def read(self) -> None:
        """Load and validate the file, entry by entry; the good ones become pending."""
        try:
            raw_entries = load(self.service.config.state_dir)
        except SessionsFileError as err:
            log.warning("sessions_file_ignored", error=str(err))
            return
        seen: set[int] = set()
        refused = untraceable(self.runner.tracer_pids())
        for index, raw in enumerate(raw_entries):
            try:
                entry = validate(raw, self.service.logdir.path)
                if entry.pid in seen:
                    raise Invalid(f"pid {entry.pid} is listed twice")
                check_rules(entry, refused)
            except Invalid as err:
                pid = raw.get("pid") if isinstance(raw, dict) else None
                log.warning("sessions_file_entry_ignored", index=index, pid=pid if isinstance(pid, int) else None,
                            reason=str(err))  # fmt: skip
                continue
            seen.add(entry.pid)
            self.entries.append(entry)
            self.file.pending[entry.pid] = entry.record()

    async def run(self) -> None:
        """Handle every pending entry; log how many came back and how long it took."""
        began = asyncio.get_running_loop().time()
        await asyncio.sleep(0)  # the hooks queued in the backlog first
        self.read()
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(entry: Entry) -> None:
            async with gate:
                try:
                    await self.adopt(entry)
                except Exception:  # a bug costs this entry only
                    log.exception("readopt_failed", pid=entry.pid, name=entry.name)
                finally:
                    self.file.pending.pop(entry.pid, None)
                    self.file.changed()

        await asyncio.gather(*(one(entry) for entry in self.entries))
        if self.entries:
            log.info("readopt_done", entries=len(self.entries), readopted=self.service.counters["readopted"],
                     ended=self.service.counters["ended_while_down"],
                     seconds=round(asyncio.get_running_loop().time() - began, 3))  # fmt: skip

    async def adopt(self, entry: Entry) -> None:
        try:
            identity = procinfo.identify(entry.pid)
        except TargetGone:
            identity = None
        except TracerdError as err:
            log.warning("readopt_failed", pid=entry.pid, name=entry.name, error=str(err))
            return
        if identity is None or identity.start != entry.start or _zombie(entry.pid):
            self.ended(entry)  # gone, or the pid is another process's now: never touched
            return
        if self.runner.registry.current(identity) is not None:
            return  # a hook or attach was quicker
        if not await self._released(identity):
            log.warning("readopt_failed", pid=entry.pid, name=entry.name,
                        error=f"still traced by another tracer after {RELEASE_WAIT:g} s")  # fmt: skip
            return
        for attempt in range(1, ATTEMPTS + 1):
            try:
                await self.runner.start(identity, entry.name, entry.tracer, readopt_started=entry.started)
            except TracerdError as err:
                again = attempt < ATTEMPTS and isinstance(err, TracerFailed) and identity.alive()
                log.warning("readopt_failed", pid=entry.pid, name=entry.name, tracer=entry.tracer, error=str(err),
                            attempt=attempt, again=again)  # fmt: skip
                if again and self.runner.registry.current(identity) is None:
                    continue
                return
            self.service.counters["readopted"] += 1
            return

    async def _released(self, identity: ProcessIdentity) -> bool:
        """Wait (bounded) until no tracer holds it: a killed tracerd's tracers are letting go."""
        deadline = asyncio.get_running_loop().time() + RELEASE_WAIT
        while True:
            try:
                if procinfo.tracer_pid(identity.pid) == 0:
                    return True
            except TracerdError:
                return True  # gone: the attach says so
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0.02)

    def ended(self, entry: Entry) -> None:
        session = Session(ProcessIdentity(entry.pid, entry.start), entry.name, entry.tracer, entry.log,
                          state=State.EXITED, started=entry.started, ended=utcnow(), error=ENDED)  # fmt: skip
        self.runner.registry.remember(session)
        self.service.counters["ended_while_down"] += 1
        log.info("session_ended", pid=entry.pid, name=entry.name, state="exited", reason=ENDED)
        try:
            logfile = self.service.logdir.open_log(os.path.basename(entry.log))
            logfile.close(final_line=f"tracerd: {session.tag} {ENDED}")
        except OSError as err:
            log.warning("readopt_log_failed", pid=entry.pid, log=entry.log, error=str(err))


def snapshot(service: TracerdService) -> list[dict[str, Any]]:
    """The attached sessions as sessions.json records them."""
    records = []
    for session in service.registry.active():
        if session.state == State.ATTACHED:
            args = service.config.tracer_for(session.name, session.tracer)[1]
            records.append(Entry(session.pid, session.identity.start, session.name, session.tracer, args,
                                 session.log, session.started).record())  # fmt: skip
    return records
