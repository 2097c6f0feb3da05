"""The session runner: start, run, finish, reattach, detach and shut down sessions.

:class:`SessionRunner` drives one backend per traced process through its
states: opens the log, builds the backend (tracerd.tracers), waits for the
attach and the ending, closes the log with its final line. A tracer gone
while its process runs on is attached again. Shutdown is bounded (README).

Security: acts only on a (pid, start time) identity the request handler has
authorized; backends start tracers without a shell.

Diagnostics: a failing tracer fails its own session (``failed``, a syslog
warning) and the request; never other sessions or the daemon. A tracer that
does not let go at shutdown is logged ``shutdown_abandoned``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import structlog

from tracerd import procinfo, tracers
from tracerd.config import Config
from tracerd.crash import inflight
from tracerd.crash.report import CrashReport
from tracerd.daemon import journalmetrics
from tracerd.daemon.sessions import Session, SessionRegistry, State, utcnow
from tracerd.errors import Busy, NotFound, TracerdError, TracerFailed
from tracerd.procinfo import ProcessIdentity
from tracerd.sinks import sdata
from tracerd.sinks.logfile import LogDir, LogFile
from tracerd.sinks.syslog import LOG_CRIT, LOG_INFO, LOG_WARNING, SessionSyslog, SyslogSink
from tracerd.tracers.base import Ending, Target, Tracer

log = structlog.get_logger("tracerd")
# the watcher needs a core for its capture gdb even when max_core_process_bytes keeps none
MIN_CAPTURE_CORE = 256 * 1024 * 1024
FD_RESERVE = 64
RecordCrash = Callable[[CrashReport], Awaitable[dict[str, Any] | None]]


class SessionOutput:
    """A backend's output to the session counters, its log and syslog.

    Lines reach syslog only when ``forward``; warnings and crash summaries always."""

    def __init__(self, session: Session, logfile: LogFile, syslog: SessionSyslog, *, forward: bool = True,
                 record_crash: RecordCrash, capture_dir: Path | None) -> None:  # fmt: skip
        self.session = session
        self.forward = forward
        self.logfile = logfile
        self.syslog = syslog
        self.log_path = session.log
        self._record_crash = record_crash
        self._capture_dir = capture_dir

    def line(self, text: str) -> None:
        self.lines([text])

    def lines(self, texts: list[str]) -> None:
        self.session.lines += len(texts)
        self.session.bytes += sum(map(len, texts)) + len(texts)
        self.logfile.write_lines(texts)
        if self.forward and self.syslog.sink.config.enabled:
            for text in texts:
                self.syslog.line(text)

    def warn(self, text: str) -> None:
        self.syslog.notice(LOG_WARNING, text)
        log.warning("session_warning", pid=self.session.pid, name=self.session.name, message=text)

    def capturing(self, identity: ProcessIdentity, name: str, signal: str) -> contextlib.AbstractContextManager[Any]:
        """A marker that lives exactly as long as this crash's capture (see inflight)."""
        record = {
            "pid": identity.pid, "start": identity.start, "name": name, "signal": signal,
            "tracer": self.session.tracer, "log": self.log_path, "time": utcnow(),
        }  # fmt: skip
        journalmetrics.hub.fault(identity.pid)
        return inflight.marker(self._capture_dir, record)

    async def crash(self, report: CrashReport) -> str | None:
        """Backtrace to the log, report to the store (atomically), summary to syslog."""
        self.logfile.write_block(report.readable())
        entry = await self._record_crash(report)
        where = entry["report"] if entry and entry.get("report") else "not stored (see the log)"
        journalmetrics.hub.crash(report, entry)
        # the summary names NAME[PID] itself: straight to the sink, untagged
        self.syslog.sink.send(LOG_CRIT, report.summary(str(where)), sd=("crash", sdata.crash_element(report, entry)))
        self.session.crash = entry["id"] if entry else None
        return self.session.crash


class Running:
    """A session's moving parts while it is active (``Session.running``)."""

    def __init__(self, backend: Tracer, output: SessionOutput) -> None:
        self.backend = backend
        self.output = output
        self.attached: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None


def _copy_health(session: Session, running: Running) -> None:
    """A live session's log health and lost events onto the session."""
    session.log_error = running.output.logfile.error
    session.log_dropped = running.output.logfile.dropped
    session.lost_events = running.backend.lost_events


class SessionRunner:
    """Every session's life, from the accepted request to the log's last line."""

    def __init__(self, config: Config, logdir: LogDir, sink: SyslogSink, counters: dict[str, int], *,
                 record_crash: RecordCrash, capture_dir: Path | None) -> None:  # fmt: skip
        self.config = config
        self.logdir = logdir
        self.sink = sink
        self.counters = counters
        self.registry = SessionRegistry(config.max_sessions, config.history)
        self.record_crash = record_crash
        self.capture_dir = capture_dir
        self.shutting_down = False
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_change: Callable[[], None] = lambda: None  # the attached set changed (sessions.json)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def running(self) -> list[Running]:
        return [s.running for s in self.registry.active() if s.running is not None]

    def get(self, pid: int) -> Running:
        """The moving parts of pid's active session, or NotFound."""
        session = self.registry.active_by_pid(pid)
        if session is None or session.running is None:
            raise NotFound(f"pid {pid} is not traced")
        running: Running = session.running
        return running

    def tracer_pids(self) -> set[int]:
        return {r.backend.tracer_pid for r in self.running() if r.backend.tracer_pid}

    def refresh(self) -> None:
        """Copy each live log's health onto its session (for status and show)."""
        for running in self.running():
            _copy_health(running.output.session, running)

    async def start(
        self, identity: ProcessIdentity, name: str, requested: str | None, *, readopt_started: str | None = None
    ) -> Session:
        """Start tracing ``identity``; return once the tracer is attached.

        ``readopt_started``: a re-adopted session (tracerd.daemon.resume) keeps that ``started``."""
        if self.shutting_down:
            raise Busy("tracerd is shutting down")
        existing = self.registry.current(identity)
        if existing is not None and existing.running is not None:
            await asyncio.shield(existing.running.attached)
            return existing
        if not procinfo.free_fds(FD_RESERVE):
            # keep descriptors for what must not fail: crash capture, its log, status clients
            raise Busy("too few file descriptors left for a new session (RLIMIT_NOFILE); raise LimitNOFILE")
        tracer_name, args = self.config.tracer_for(name, requested)
        backend_cls = tracers.backend(tracer_name)
        log_name = f"{name}.{identity.pid}.log"
        session = Session(identity, name, tracer_name, log=str(self.logdir.path / log_name))
        if readopt_started is not None:
            session.started, session.readopted = readopt_started, True
        self.registry.add(session)
        try:
            logfile = self.logdir.open_log(log_name)
        except OSError as err:
            self.registry.retire(session)
            session.end(Ending("failed", reason=f"cannot open log {log_name}: {err.strerror}"))
            self.counters["sessions_failed"] += 1
            journalmetrics.hub.session_failed(session, f"cannot open log {log_name}: {err.strerror}")
            raise TracerFailed(f"cannot open log {session.log}: {err.strerror}") from err
        syslog = SessionSyslog(self.sink, session.tag, self.config.syslog.max_lines_per_second)
        output = SessionOutput(session, logfile, syslog, forward=self.config.syslog_output_for(name, tracer_name),
                               record_crash=self.record_crash, capture_dir=self.capture_dir)  # fmt: skip
        logfile.on_error = self._log_error_reporter(output)
        capture = str(self.capture_dir) if self.capture_dir else None
        target = Target(identity, name, args, self.config.attach_timeout, capture_dir=capture,
                        core=self.config.core_for(name), core_timeout=self.config.core_timeout,
                        core_limit=max(self.config.max_core_process_bytes, MIN_CAPTURE_CORE),
                        syscount=self.config.syscount)  # fmt: skip
        running = Running(backend_cls(target, output), output)
        session.running = running
        running.task = self._spawn(self._run(session, running))
        await asyncio.shield(running.attached)
        return session

    def _log_error_reporter(self, output: SessionOutput) -> Callable[[str], None]:
        def report(error: str) -> None:
            # called from the log writer's thread
            message = f"tracerd: cannot write {output.session.log}: {error}; output dropped"
            self._loop.call_soon_threadsafe(output.warn, message)

        return report

    async def _run(self, session: Session, running: Running) -> None:
        # this task's context only: its events and its tracer's name the session
        structlog.contextvars.bind_contextvars(pid=session.pid, name=session.name, tracer=session.tracer)
        backend, output = running.backend, running.output
        try:
            await asyncio.wait_for(backend.attach(), timeout=self.config.attach_timeout + 2.0)
        except (Exception, asyncio.CancelledError) as err:
            reason = str(err) or type(err).__name__
            if isinstance(err, TimeoutError):
                err = TracerFailed(f"{session.tracer} did not attach within {self.config.attach_timeout} s")
                reason = str(err)
            self.finish(session, Ending("failed", reason=reason))
            running.attached.set_exception(err if isinstance(err, TracerdError) else TracerFailed(reason))
            running.attached.exception()  # retrieved: the hook's handler may be gone
            if isinstance(err, asyncio.CancelledError):
                raise
            return
        session.transition(State.ATTACHED)
        session.tracer_pid = backend.tracer_pid
        self.counters["sessions_started"] += 1
        journalmetrics.hub.session_started(session)
        attached = f"tracerd: {session.tag} attached with {session.tracer}" + (
            f" (tracer pid {backend.tracer_pid})" if backend.tracer_pid else "")  # fmt: skip
        output.logfile.write_line(attached)
        if session.readopted:
            attached = f"tracerd: {session.tag} re-attached after tracerd restart"
            output.logfile.write_line(attached)
        output.syslog.notice(LOG_INFO, attached)  # whatever ``forward`` says
        log.info("attached")  # pid, name, tracer: bound above
        running.attached.set_result(None)
        self.on_change()
        try:
            ending = await backend.wait()
        except Exception as err:  # a backend bug must not take the daemon down
            log.exception("backend_failed")
            await _quietly(backend.detach())
            ending = Ending("failed", reason=f"internal error: {err}")
        self.finish(session, ending)
        if ending.reattach and session.identity.alive() and not self.shutting_down:
            self._spawn(self._reattach(session))

    async def _reattach(self, session: Session) -> None:
        """The tracer went away, the process did not: trace it again."""
        try:
            await self.start(session.identity, session.name, session.tracer)
            log.info("reattached", pid=session.pid, name=session.name)
        except TracerdError as err:
            log.warning("reattach_failed", pid=session.pid, error=str(err))

    def finish(self, session: Session, ending: Ending) -> None:
        """The session ended: its state, its log's last line, syslog, counters, history."""
        running: Running | None = session.running
        if session.state not in (State.ATTACHING, State.ATTACHED):
            return  # already finished (shutdown gave up on it, then it ended after all)
        if ending.state == State.DETACHED and ending.reason is None:
            reason = "tracerd shutting down" if self.shutting_down else "on request"
            ending = dataclasses.replace(ending, reason=reason)
        if ending.state == State.FAILED and session.state == State.ATTACHING:
            self.counters["sessions_failed"] += 1
        journalmetrics.hub.session_ended(session, ending)
        session.end(ending)
        closing = ending.describe(session.tag)
        if running is not None:
            _copy_health(session, running)
            running.output.logfile.close(final_line=closing)
            running.output.syslog.flush()
            syslog = running.output.syslog
            if ending.state == State.CRASHED:
                self.counters["crashes"] += 1
                # with a report, its summary was the crit line; else this is it
                syslog.notice(LOG_INFO if ending.crash else LOG_CRIT, closing)
            elif ending.state == State.FAILED:
                syslog.notice(LOG_WARNING, closing)
            else:
                self.counters[ending.state] = self.counters.get(ending.state, 0) + 1
                syslog.notice(LOG_INFO, closing)
        log.info("session_ended", pid=session.pid, name=session.name, state=ending.state,
                 exit_code=ending.exit_code, signal=ending.signal, reason=ending.reason)  # fmt: skip
        session.running = None
        self.registry.retire(session)
        self.on_change()

    async def detach(self, pid: int) -> Session:
        running = self.get(pid)
        session = running.output.session
        await asyncio.shield(running.attached)
        await running.backend.detach()
        if running.task is not None:
            await asyncio.wait({running.task}, timeout=10.0)
        return session

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Let go of every process and stop every backend, all within ``timeout``."""
        self.shutting_down = True
        deadline = self._loop.time() + timeout
        active = self.running()
        detaches = [self._spawn(_quietly(r.backend.detach())) for r in active]
        tasks = [r.task for r in active if r.task is not None]
        pending = {*detaches, *tasks, *self._tasks}
        if pending:
            # 80% for the sessions, the rest for the backends' own shutdown
            await asyncio.wait(pending, timeout=max(0.0, (deadline - self._loop.time()) * 0.8))
        for running in active:
            session = running.output.session
            if session.state in (State.ATTACHING, State.ATTACHED):
                log.warning("shutdown_abandoned", pid=session.pid, name=session.name, tracer=session.tracer)
                self.finish(session, Ending("failed", reason=f"{session.tracer} did not let go within {timeout:g} s"))
        left = list(self._tasks)
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=max(0.0, (deadline - self._loop.time()) / 2))
        await tracers.shutdown(max(0.1, deadline - self._loop.time()))


async def _quietly(coro: Awaitable[Any]) -> None:
    try:
        await coro
    except Exception:
        log.exception("detach_failed")
