"""The daemon's operations: what each request does, and the session runner.

The server (:mod:`tracerd.daemon.server`) hands every validated request here with
the caller's kernel credentials.  This module decides, runs tracers through
their backends, fans their output out to the per-process log and syslog, and
records how each session ended.

Security: authorization happens first, in :meth:`TracerdService.handle`,
before any /proc read about the target; hook requests also pass the ancestor
rule.  Every process is an identity (pid, start time) from the moment the
request is accepted.  A hook request is acknowledged (``ack``) only after
all of those checks, just before its tracer starts.

Diagnostics: a failing tracer fails its own session (state ``failed``, a
syslog warning saying why) and the request's reply; it never reaches the
other sessions or the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import time
from pathlib import Path
from typing import Any

import structlog

from tracerd import __version__, procinfo, tracers
from tracerd.config import Config
from tracerd.crash import inflight
from tracerd.crash.report import CrashReport
from tracerd.crash.store import CrashStore
from tracerd.daemon.auth import Authorizer, Peer
from tracerd.daemon.sessions import Session, SessionRegistry, utcnow
from tracerd.errors import Busy, ConfigError, NotFound, TracerdError, TracerFailed
from tracerd.procinfo import ProcessIdentity
from tracerd.protocol import Ack, Request
from tracerd.sinks.logfile import LogDir, LogFile, LogWriter
from tracerd.sinks.syslog import LOG_CRIT, LOG_INFO, LOG_WARNING, SessionSyslog, SyslogSink
from tracerd.tracers.base import Ending, Target, Tracer
from tracerd.tracers.watch.supervisor import supervisor

log = structlog.get_logger("tracerd")
FD_RESERVE = 64


class SessionOutput:
    """Fans a backend's output out to the session counters, its log and syslog."""

    def __init__(self, session: Session, logfile: LogFile, syslog: SessionSyslog, service: TracerdService) -> None:
        self.session = session
        self.logfile = logfile
        self.syslog = syslog
        self.log_path = session.log
        self._service = service

    def line(self, text: str) -> None:
        self.lines([text])

    def lines(self, texts: list[str]) -> None:
        self.session.lines += len(texts)
        self.session.bytes += sum(map(len, texts)) + len(texts)
        self.logfile.write_lines(texts)
        if self.syslog.sink.config.enabled:
            for text in texts:
                self.syslog.line(text)

    def block(self, text: str) -> None:
        self.logfile.write_block(text)

    def warn(self, text: str) -> None:
        self.syslog.notice(LOG_WARNING, text)
        log.warning("session_warning", pid=self.session.pid, name=self.session.name, message=text)

    def capturing(self, identity: ProcessIdentity, name: str, signal: str) -> contextlib.AbstractContextManager[Any]:
        """A marker that lives exactly as long as this crash's capture (see inflight)."""
        record = {
            "pid": identity.pid, "start": identity.start, "name": name, "signal": signal,
            "tracer": self.session.tracer, "log": self.log_path, "time": utcnow(),
        }  # fmt: skip
        return inflight.marker(self._service.capture_dir, record)

    async def crash(self, report: CrashReport) -> str | None:
        """Backtrace to the log, report to the store (atomically), summary to syslog."""
        self.logfile.write_block(report.readable())
        entry = await self._service.record_crash(report)
        where = entry["report"] if entry and entry.get("report") else "not stored (see the log)"
        # the summary names NAME[PID] itself: straight to the sink, untagged
        self.syslog.sink.send(LOG_CRIT, report.summary(str(where)))
        self.session.crash = entry["id"] if entry else None
        return self.session.crash


class Running:
    """A session's moving parts while it is active."""

    def __init__(self, backend: Tracer, output: SessionOutput) -> None:
        self.backend = backend
        self.output = output
        self.attached: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None


class TracerdService:
    def __init__(self, config: Config, logdir: LogDir, sink: SyslogSink) -> None:
        self.config = config
        self.logdir = logdir
        self.sink = sink
        self.auth = Authorizer(config.socket_group)
        self.registry = SessionRegistry(config.max_sessions, config.history)
        self.running: dict[int, Running] = {}
        self.started = time.monotonic()
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "sessions_started", "sessions_failed", "exited", "crashes", "detached",
                "refused", "bad_requests", "requests",
            ),
            0,
        )  # fmt: skip
        self._loop = asyncio.get_running_loop()
        self.crashes = CrashStore(
            config.state_dir / "crashes", flood_window=config.crash_flood_window, max_bytes=config.max_crash_bytes
        )
        self._crash_lock = asyncio.Lock()
        self._shutting_down = False
        # why the last SIGHUP's config did not load (None: the one in force loaded fine)
        self.config_error: str | None = None
        self.capture_dir: Path | None = None
        try:
            self.capture_dir = inflight.prepare(config.state_dir / "capture")
            self._record_interrupted(inflight.leftovers(self.capture_dir))
        except (OSError, ConfigError) as err:
            log.error("capture_dir_unusable", error=str(err))
        watch = supervisor()
        watch.capture_dir = str(self.capture_dir) if self.capture_dir else None

    def _record_interrupted(self, markers: list[dict[str, Any]]) -> None:
        """Crashes whose capture a previous tracerd did not live to finish."""
        for mark in markers:
            report = CrashReport(
                process={"name": str(mark.get("name")), "pid": mark.get("pid"), "exe": None, "cmdline": [],
                         "uid": None, "capture": "interrupted",
                         "capture_errors": ["capture interrupted: tracerd stopped while it ran; "
                                            "the process died of its signal untraced"]},
                signal={"number": None, "name": str(mark.get("signal")), "si_code": None, "fault_address": None},
                time=str(mark.get("time")), threads=[], registers={}, disassembly="", libraries=[],
                log=mark.get("log") if isinstance(mark.get("log"), str) else None, tracer=str(mark.get("tracer")),
            )  # fmt: skip
            try:
                entry = self.crashes.record(report)
                log.warning("capture_interrupted", pid=mark.get("pid"), name=mark.get("name"), crash=entry.get("id"))
            except OSError as err:
                log.error("crash_store_failed", error=str(err))

    async def record_crash(self, report: CrashReport) -> dict[str, Any] | None:
        """Store a report off the event loop (it fsyncs), one at a time."""
        async with self._crash_lock:
            try:
                return await asyncio.to_thread(self.crashes.record, report)
            except OSError as err:
                log.error("crash_store_failed", error=str(err))
                return None
            except Exception:  # a bug in the store must not cost the process its release
                log.exception("crash_store_failed")
                return None

    # -- requests -------------------------------------------------------------

    async def handle(self, request: Request, peer: Peer, ack: Ack = lambda: None) -> dict[str, Any]:
        """One request's reply; ``ack`` tells a hook that its request was accepted."""
        self.counters["requests"] += 1
        try:
            self.auth.check(request.op, peer)
            return await self._dispatch(request, peer, ack)
        except TracerdError as err:
            if err.code in ("denied", "busy", "no_such_process", "bad_request"):
                self.counters["refused"] += 1
            log.info("request_refused", op=request.op, pid=request.pid, peer=peer.pid,
                     uid=peer.uid, error=err.code, message=str(err))  # fmt: skip
            raise

    async def _dispatch(self, request: Request, peer: Peer, ack: Ack) -> dict[str, Any]:
        op = request.op
        if op == "status":
            return {"ok": True, **self.status()}
        if op == "show":
            assert request.pid is not None
            self._refresh()
            return {"ok": True, "session": self.registry.find(request.pid).to_json()}
        if op in ("hook", "attach"):
            assert request.pid is not None
            identity = procinfo.identify(request.pid)
            self.auth.check_traceable(identity, self.tracer_pids())
            if op == "hook":
                assert request.name is not None
                self.auth.check_ancestor(identity, peer)
                name = request.name
                ack()  # accepted: the hook now waits its --timeout for the attach
            else:
                name = request.name or comm_name(request.pid)
            session = await self.start(identity, name, request.tracer)
            return {"ok": True, "session": session.to_json()}
        if op == "detach":
            assert request.pid is not None
            session = await self.detach(request.pid)
            return {"ok": True, "session": session.to_json()}
        if op == "crashes":
            return {"ok": True, "crashes": self.crashes.list()}
        if op == "crash":
            assert request.id is not None
            return {"ok": True, "crash": self.crashes.get(request.id)}
        if op == "where":
            assert request.pid is not None
            running = self.running.get(request.pid)
            if running is None:
                raise NotFound(f"pid {request.pid} is not traced")
            running.output.session.identity.require()
            text = await running.backend.where()
            return {"ok": True, "pid": request.pid, "where": text}
        raise TracerdError(f"unhandled op {op}")  # parse_request admits only known ops

    def tracer_pids(self) -> set[int]:
        return {r.backend.tracer_pid for r in self.running.values() if r.backend.tracer_pid}

    def _refresh(self) -> None:
        """Copy each live log's health onto its session (for status and show)."""
        for running in self.running.values():
            logfile, session = running.output.logfile, running.output.session
            session.log_error = logfile.error
            session.log_dropped = logfile.dropped

    def status(self) -> dict[str, Any]:
        self._refresh()
        return {
            "daemon": {
                "pid": os.getpid(),
                "version": __version__,
                "uptime": round(time.monotonic() - self.started, 3),
                "config": str(self.config.source) if self.config.source else "built-in defaults",
                "socket": str(self.config.socket),
                "log_dir": str(self.config.log_dir),
                "state_dir": str(self.config.state_dir),
                "default_tracer": self.config.default_tracer,
                "config_error": self.config_error,
            },
            "counters": {
                **self.counters,
                "active": len(self.registry),
                "syslog_sent": self.sink.sent,
                "syslog_dropped": self.sink.dropped,
            },
            "sessions": [session.to_json() for session in self.registry.all()],
        }

    # -- sessions -------------------------------------------------------------

    async def start(self, identity: ProcessIdentity, name: str, requested: str | None) -> Session:
        """Start tracing ``identity``; return once the tracer is attached."""
        existing = self.registry.current(identity)
        if existing is not None and existing.pid in self.running:
            # a second hook for the same process: it is (being) traced already
            await asyncio.shield(self.running[existing.pid].attached)
            return existing
        if not procinfo.free_fds(FD_RESERVE):
            # keep descriptors for what must not fail: crash capture (gdb's
            # pipes), the log of a crash, and clients asking what is going on
            raise Busy("too few file descriptors left for a new session (RLIMIT_NOFILE); raise LimitNOFILE")
        tracer_name, args = self.config.tracer_for(name, requested)
        backend_cls = tracers.backend(tracer_name)
        log_name = f"{name}.{identity.pid}.log"
        session = Session(identity, name, tracer_name, log=str(self.logdir.path / log_name))
        self.registry.add(session)
        try:
            logfile = self.logdir.open_log(log_name)
        except OSError as err:
            self.registry.retire(session)
            session.end(Ending("failed", reason=f"cannot open log {log_name}: {err.strerror}"))
            self.counters["sessions_failed"] += 1
            raise TracerFailed(f"cannot open log {session.log}: {err.strerror}") from err
        syslog = SessionSyslog(self.sink, session.tag, self.config.syslog.max_lines_per_second)
        output = SessionOutput(session, logfile, syslog, self)
        logfile.on_error = self._log_error_reporter(output)
        target = Target(identity, name, args, self.config.attach_timeout)
        running = Running(backend_cls(target, output), output)
        self.running[identity.pid] = running
        running.task = asyncio.create_task(self._run(session, running))
        await asyncio.shield(running.attached)
        return session

    def _log_error_reporter(self, output: SessionOutput) -> Any:
        def report(error: str) -> None:
            # called from the log writer's thread: hop onto the loop
            message = f"tracerd: cannot write {output.session.log}: {error}; output dropped"
            self._loop.call_soon_threadsafe(output.warn, message)

        return report

    async def _run(self, session: Session, running: Running) -> None:
        backend, output = running.backend, running.output
        try:
            await asyncio.wait_for(backend.attach(), timeout=self.config.attach_timeout + 2.0)
        except (Exception, asyncio.CancelledError) as err:
            reason = str(err) or type(err).__name__
            if isinstance(err, TimeoutError):
                err = TracerFailed(f"{session.tracer} did not attach within {self.config.attach_timeout} s")
                reason = str(err)
            self._finish(session, running, Ending("failed", reason=reason))
            self.counters["sessions_failed"] += 1
            running.attached.set_exception(
                err if isinstance(err, TracerdError) else TracerFailed(reason)
            )
            running.attached.exception()  # retrieved: the hook's handler may be gone
            if isinstance(err, asyncio.CancelledError):
                raise
            return
        session.state = "attached"
        session.tracer_pid = backend.tracer_pid
        self.counters["sessions_started"] += 1
        output.logfile.write_line(
            f"tracerd: {session.tag} attached with {session.tracer}"
            + (f" (tracer pid {backend.tracer_pid})" if backend.tracer_pid else "")
        )
        log.info("attached", pid=session.pid, name=session.name, tracer=session.tracer)
        running.attached.set_result(None)
        try:
            ending = await backend.wait()
        except Exception as err:  # a backend bug must not take the daemon down
            log.exception("backend_failed", pid=session.pid)
            await _quietly(backend.detach())
            ending = Ending("failed", reason=f"internal error: {err}")
        self._finish(session, running, ending)
        if ending.reattach and session.identity.alive():
            self._loop.create_task(self._reattach(session))

    async def _reattach(self, session: Session) -> None:
        """The tracer went away, the process did not: trace it again."""
        try:
            await self.start(session.identity, session.name, session.tracer)
            log.info("reattached", pid=session.pid, name=session.name)
        except TracerdError as err:
            log.warning("reattach_failed", pid=session.pid, error=str(err))

    def _finish(self, session: Session, running: Running, ending: Ending) -> None:
        if ending.state == "detached" and ending.reason is None:
            reason = "tracerd shutting down" if self._shutting_down else "on request"
            ending = dataclasses.replace(ending, reason=reason)
        session.end(ending)
        session.log_error = running.output.logfile.error
        session.log_dropped = running.output.logfile.dropped
        closing = ending.describe(session.tag)
        running.output.logfile.close(final_line=closing)
        running.output.syslog.flush()
        if ending.state == "crashed":
            self.counters["crashes"] += 1
            # with a report, its summary was the crit line; else this is it
            running.output.syslog.notice(LOG_INFO if ending.crash else LOG_CRIT, closing)
        elif ending.state == "failed":
            running.output.syslog.notice(LOG_WARNING, closing)
        else:
            self.counters[ending.state] = self.counters.get(ending.state, 0) + 1
            running.output.syslog.notice(LOG_INFO, closing)
        log.info("session_ended", pid=session.pid, name=session.name, state=ending.state,
                 exit_code=ending.exit_code, signal=ending.signal, reason=ending.reason)  # fmt: skip
        self.registry.retire(session)
        if self.running.get(session.pid) is running:
            del self.running[session.pid]

    async def detach(self, pid: int) -> Session:
        running = self.running.get(pid)
        if running is None:
            raise NotFound(f"pid {pid} is not traced")
        session = running.output.session
        await asyncio.shield(running.attached)
        await running.backend.detach()
        if running.task is not None:
            await asyncio.wait({running.task}, timeout=10.0)
        return session

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Detach every tracer; every log gets its closing line."""
        self._shutting_down = True
        tasks = [r.task for r in self.running.values() if r.task is not None]
        await asyncio.gather(
            *(_quietly(r.backend.detach()) for r in list(self.running.values()))
        )
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        await supervisor().stop()
        self.crashes.close()

    def reload(self, config: Config) -> None:
        """SIGHUP: new settings for new sessions; every open log is reopened."""
        self.config = config
        self.auth = Authorizer(config.socket_group)
        self.registry.resize(config.max_sessions, config.history)
        # the crash store's limits apply to the next crash (its directory stays)
        self.crashes.flood_window = config.crash_flood_window
        self.crashes.max_bytes = config.max_crash_bytes
        try:
            self.logdir.reopen_dir()
        except ConfigError as err:
            # the old directory fd stays in use: logging carries on
            log.error("log_dir_reopen_failed", error=str(err))
        for running in self.running.values():
            running.output.logfile.reopen()


def comm_name(pid: int) -> str:
    """A safe session name from /proc/PID/comm (for attach without --name)."""
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as comm:
            raw = comm.read().strip()
    except OSError:
        raw = ""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", raw).lstrip(".")[:64]
    return name or "process"


async def _quietly(coro: Any) -> None:
    try:
        await coro
    except Exception:
        log.exception("detach_failed")


__all__ = ["LogWriter", "TracerdService", "comm_name"]
