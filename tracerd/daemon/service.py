"""The daemon's requests: who may ask, what each operation answers, and SIGHUP.

The server hands each validated request here with the caller's credentials.
Operations are declared in tracerd.protocol.OPERATIONS; this module holds
their handlers (``op_NAME``), the crash store, ``status`` and the live part
of a reload. Sessions are the runner's.

Security: :meth:`TracerdService.handle` authorizes before any /proc read of
the target; hooks also pass the ancestor rule (:func:`hook_target` maps a
container's pid). :meth:`TracerdService.check_target` refuses what no tracer
may get. A hook is acked only after every check.

Diagnostics: a refusal is one ``request_refused`` line and an error reply; a
failing tracer fails its own session only. SIGHUP logs what only a restart
applies (``restart_needed``); ``status`` shows the values in force.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import time
from pathlib import Path
from typing import Any

import structlog

from tracerd import __version__, procinfo, tracers
from tracerd.config import Config
from tracerd.crash import corefile, inflight, lastwords, redact, retention, retrace
from tracerd.crash.report import CrashReport
from tracerd.crash.store import CrashStore
from tracerd.daemon import journalmetrics, syslogcheck
from tracerd.daemon.auth import MAX_HOOK_DEPTH, Authorizer, Peer
from tracerd.daemon.gdbhandoff import HandOffs
from tracerd.daemon.nextstart import Catch, Catches
from tracerd.daemon.runner import SessionRunner
from tracerd.errors import AccessDenied, BadRequest, ConfigError, NotFound, TracerdError
from tracerd.gdb import warm
from tracerd.protocol import OPERATIONS, Ack, Request
from tracerd.sinks.logfile import LogDir
from tracerd.sinks.syslog import LOG_WARNING, SyslogSink

log = structlog.get_logger("tracerd")
RESTART_KEYS = ("socket", "state_dir", "socket_group", "metrics")  # what a SIGHUP cannot change


class TracerdService:
    def __init__(self, config: Config, logdir: LogDir, sink: SyslogSink) -> None:
        self.config = config
        self.logdir = logdir
        self.sink = sink
        self.auth = Authorizer(config.socket_group)
        self.started = time.monotonic()
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "sessions_started", "sessions_failed", "exited", "crashes", "detached",
                "refused", "bad_requests", "requests",
            ),
            0,
        )  # fmt: skip
        self.crashes = CrashStore(
            config.state_dir / "crashes",
            flood_window=config.crash_flood_window,
            max_bytes=config.max_crash_bytes,
            max_core_bytes=config.max_core_bytes,
        )
        self._crash_lock = asyncio.Lock()
        self.config_error: str | None = None  # why the last SIGHUP's config did not load
        self.restart_needed: list[str] = []
        self._retired_logdirs: list[LogDir] = []  # log_dir before a SIGHUP moved it (live logs use it)
        self._old_sinks_sent = self._old_sinks_dropped = 0
        self.capture_dir: Path | None = None
        try:
            self.capture_dir = inflight.prepare(config.state_dir / "capture")
            self._record_interrupted(inflight.leftovers(self.capture_dir))
        except (OSError, ConfigError) as err:
            log.error("capture_dir_unusable", error=str(err))
        self.runner = SessionRunner(config, logdir, sink, self.counters,
                                    record_crash=self.record_crash, capture_dir=self.capture_dir)  # fmt: skip
        self.registry = self.runner.registry
        journalmetrics.hub.open(config, self)
        self.catches = Catches()  # tracerctl gdb (docs/debugging.md)
        self.handoffs = HandOffs(self.runner, lambda: self.sink)

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

    def _store_crash(self, config: Config, report: CrashReport) -> dict[str, Any]:
        """In the store's thread: the mail log and core request, then the report."""
        return self.crashes.record(report, postmortem_input(config, report))

    async def record_crash(self, report: CrashReport) -> dict[str, Any] | None:
        """Store a report off the event loop (it fsyncs), one at a time."""
        async with self._crash_lock:
            try:
                return await asyncio.to_thread(self._store_crash, self.config, report)
            except OSError as err:
                log.error("crash_store_failed", error=str(err))
                return None
            except Exception:  # a bug in the store must not cost the process its release
                log.exception("crash_store_failed")
                return None

    # -- requests -------------------------------------------------------------

    async def handle(self, request: Request, peer: Peer, ack: Ack = lambda: None) -> dict[str, Any]:
        """One request's reply; ``ack`` tells a hook its request was accepted. Log lines name the peer."""
        self.counters["requests"] += 1
        structlog.contextvars.bind_contextvars(peer=peer.pid, peer_uid=peer.uid)  # this connection's task only
        try:
            self.auth.check(request.op, peer)
            handler = getattr(self, OPERATIONS[request.op].handler)
            reply: dict[str, Any] = await handler(request, peer, ack)
        except TracerdError as err:
            if err.code in ("denied", "busy", "no_such_process", "bad_request"):
                self.counters["refused"] += 1
            if request.op == "hook":
                journalmetrics.hub.hook_refused(err.code)
            log.info("request_refused", op=request.op, pid=request.pid, error=err.code, message=str(err))
            raise
        return {"ok": True, **reply}

    def check_target(self, identity: procinfo.ProcessIdentity) -> None:
        """tracerd's rules (auth) and ptrace's (no kernel thread, zombie, non-leader thread,
        or process another tracer holds), each a one-line refusal."""
        ours = self.runner.tracer_pids()
        self.auth.check_traceable(identity, ours)
        procinfo.check_ptraceable(identity.pid, ours)

    async def op_status(self, request: Request, peer: Peer, ack: Ack) -> dict[str, Any]:
        return self.status()

    async def op_show(self, request: Request, peer: Peer, ack: Ack) -> dict[str, Any]:
        assert request.pid is not None
        self.runner.refresh()
        # the pid's earlier sessions (README: `status` shows the latest one only)
        history = [session.to_json() for session in self.registry.earlier(request.pid)]
        found = self.registry.find(request.pid)
        reply: dict[str, Any] = {"session": found.to_json(), "history": history}
        live = getattr(found.running.backend, "syscalls", None) if found.running is not None else None
        if live is not None:  # syscount: the live top system calls (tracerctl show)
            reply["syscalls"] = await live()
        return reply

    async def op_hook(self, request: Request, peer: Peer, ack: Ack) -> dict[str, Any]:
        assert request.pid is not None
        assert request.name is not None
        started = time.monotonic()
        identity = procinfo.identify(hook_target(request.pid, peer))
        self.check_target(identity)
        self.auth.check_ancestor(identity, peer)
        ack()  # the hook now waits its --timeout for the attach
        catch = self.catches.take(request.name)
        if catch is not None:
            return await self._caught(identity, request, peer, catch)
        session = await self.runner.start(identity, request.name, request.tracer)
        journalmetrics.hub.hook_attached(session.tracer, time.monotonic() - started)
        return {"session": session.to_json()}

    # -- tracerctl gdb (docs/debugging.md) -----------------------------------

    async def _caught(self, identity: procinfo.ProcessIdentity, request: Request, peer: Peer,
                      catch: Catch) -> dict[str, Any]:  # fmt: skip
        """A hook for an armed name: answered once the human's gdb attached, or the process is back."""
        assert request.name is not None
        handoff = self.handoffs.caught(identity, request.name, request.tracer, by=catch.by, hold=catch.hold,
                                       hook=peer.pid)  # fmt: skip
        catch.caught.set_result(handoff.to_json())
        if await asyncio.shield(handoff.attached):
            return {"session": None, "caught": handoff.to_json()}
        session = await asyncio.shield(handoff.returned)
        if session is None:
            raise NotFound(f"process {identity.pid} ended while held for tracerctl gdb")
        return {"session": session.to_json()}

    def _traces_name(self, name: str) -> bool:
        """tracerd has had a session of ``name``, or a [[rule]] names it exactly (not by pattern)."""
        return any(session.name == name for session in self.registry.all()) or any(
            rule.process == name for rule in self.config.rules
        )

    async def op_catch(self, request: Request, peer: Peer, ack: Ack) -> dict[str, Any]:
        assert request.name is not None
        hold = 60.0 if request.hold is None else request.hold
        if hold > self.config.max_gdb_hold:
            raise BadRequest(f"--hold {hold:g} is over max_gdb_hold ({self.config.max_gdb_hold:g} s, tracerd.toml)")
        if not self._traces_name(request.name):
            raise NotFound(f"no service traces {request.name}: tracerd has had no session of that name"
                           " and no [[rule]] names it")  # fmt: skip
        catch = self.catches.arm(request.name, hold, peer.pid)
        log.info("catch_armed", name=request.name, hold=hold, by=peer.pid)
        ack()
        try:
            return {"caught": await self.catches.wait(catch)}
        finally:
            log.info("catch_disarmed", name=request.name, by=peer.pid)

    async def op_handoff(self, request: Request, peer: Peer, ack: Ack) -> dict[str, Any]:
        assert request.pid is not None
        identity = procinfo.identify(request.pid)
        self.check_target(identity)
        handoff = await self.handoffs.give(identity, comm_name(request.pid), peer.pid)
        return {"handoff": handoff.to_json()}

    async def op_attach(self, request: Request, peer: Peer, ack: Ack) -> dict[str, Any]:
        assert request.pid is not None
        identity = procinfo.identify(request.pid)
        self.check_target(identity)
        name = request.name or comm_name(request.pid)
        session = await self.runner.start(identity, name, request.tracer)
        return {"session": session.to_json()}

    async def op_detach(self, request: Request, peer: Peer, ack: Ack) -> dict[str, Any]:
        assert request.pid is not None
        session = await self.runner.detach(request.pid)
        return {"session": session.to_json()}

    async def op_crashes(self, request: Request, peer: Peer, ack: Ack) -> dict[str, Any]:
        return {"crashes": self.crashes.list()}

    async def op_crash(self, request: Request, peer: Peer, ack: Ack) -> dict[str, Any]:
        assert request.id is not None
        report = self.crashes.get(request.id)
        # locals and memory are root's (docs/design.md, "Security model")
        return {"crash": report if self.auth.privileged(peer) else redact.for_group(report)}

    async def op_crash_delete(self, request: Request, peer: Peer, ack: Ack) -> dict[str, Any]:
        """One crash, or all older than ``older_than`` seconds (tracerd.crash.retention)."""
        if (request.id is None) == (request.older_than is None):
            raise BadRequest("crash-delete: give a crash id or older_than (one of them)")
        async with self._crash_lock:  # not while a crash is being recorded
            result = await asyncio.to_thread(retention.delete, self.crashes, request.id, request.older_than)
        log.info("crashes_deleted", uid=peer.uid, pid=peer.pid, id=request.id, older_than=request.older_than,
                 reports=len(result["deleted"]), cores=len(result["cores"]))  # fmt: skip
        return result

    async def op_crash_retrace(self, request: Request, peer: Peer, ack: Ack) -> dict[str, Any]:
        """``tracerctl retrace``: its record (ID.retrace) into the stored report and the index."""
        assert request.id is not None
        async with self._crash_lock:  # not while a crash is being recorded
            result = await asyncio.to_thread(retrace.keep, self.crashes, request.id)
        log.info("crash_retraced", uid=peer.uid, pid=peer.pid, id=result["id"], frames=result["applied"])
        return result

    async def op_where(self, request: Request, peer: Peer, ack: Ack) -> dict[str, Any]:
        assert request.pid is not None
        running = self.runner.get(request.pid)
        running.output.session.identity.require()
        text = await running.backend.where()
        return {"pid": request.pid, "where": text}

    def status(self) -> dict[str, Any]:
        self.runner.refresh()
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
                "max_log_bytes": self.config.max_log_bytes,
                "syslog": dataclasses.asdict(self.config.syslog),
                "config_error": self.config_error,
                "restart_needed": self.restart_needed,
                "syslog_warning": syslogcheck.warning(
                    self.config.syslog, self._old_sinks_dropped + self.sink.dropped, self.sink.last_error
                ),
            },
            "counters": {
                **self.counters,
                "active": len(self.registry),
                "syslog_sent": self._old_sinks_sent + self.sink.sent,
                "syslog_dropped": self._old_sinks_dropped + self.sink.dropped,
                **tracers.counters(),
                **journalmetrics.hub.counters(),
            },
            "warm_gdb": warm.status(),  # None until a watch session
            "sessions": [session.to_json() for session in self.registry.all()],
            "catches": self.catches.to_json(),
            "handoffs": self.handoffs.to_json(),
        }

    # -- daemon life ----------------------------------------------------------

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Detach every tracer and stop every backend within ``timeout``; close the store."""
        try:
            await self.handoffs.shutdown()
            await self.runner.shutdown(timeout)
        finally:
            self.crashes.close()
            await journalmetrics.hub.close()

    def close(self) -> None:
        """After shutdown: the log directories and the syslog sink."""
        for logdir in [*self._retired_logdirs, self.logdir]:
            logdir.close()
        self._retired_logdirs.clear()
        self.sink.close()

    def reload(self, config: Config) -> None:
        """SIGHUP: apply what can change live (all but RESTART_KEYS); the rest waits, and says so."""
        old = self.config
        self.restart_needed = [key for key in RESTART_KEYS if getattr(config, key) != getattr(old, key)]
        applied = dataclasses.replace(config, socket=old.socket, state_dir=old.state_dir)
        if self.restart_needed:
            log.warning("restart_needed", keys=self.restart_needed)
            self.sink.send(LOG_WARNING, "config reloaded, but " + ", ".join(self.restart_needed)
                           + " changed: restart tracerd to apply")  # fmt: skip
        self.auth = Authorizer(config.socket_group)
        self.registry.resize(config.max_sessions, config.history)
        self.crashes.flood_window = config.crash_flood_window
        self.crashes.max_bytes = config.max_crash_bytes
        self.crashes.max_core_bytes = config.max_core_bytes
        applied = self._reload_logs(applied, old)
        applied = self._reload_syslog(applied, old)
        self.config = applied
        self.runner.config = applied
        journalmetrics.hub.reload(applied)

    def _reload_logs(self, new: Config, old: Config) -> Config:
        if new.log_dir != old.log_dir:
            try:
                logdir = LogDir(new.log_dir, max_log_bytes=new.max_log_bytes, writer=self.logdir.writer)
            except ConfigError as err:
                log.error("log_dir_unusable", log_dir=str(new.log_dir), error=str(err))
                new = dataclasses.replace(new, log_dir=old.log_dir)
            else:
                self._retired_logdirs.append(self.logdir)
                self.logdir = self.runner.logdir = logdir
        if new.log_dir == old.log_dir:
            try:
                self.logdir.reopen_dir()
            except ConfigError as err:
                # the old directory fd stays in use: logging carries on
                log.error("log_dir_reopen_failed", error=str(err))
        self.logdir.max_log_bytes = new.max_log_bytes
        for running in self.runner.running():
            # LogFile has no setter for its cap: the new one applies from the next line
            running.output.logfile._limit = new.max_log_bytes
            running.output.logfile.reopen()
        return new

    def _reload_syslog(self, new: Config, old: Config) -> Config:
        if new.syslog == old.syslog:
            return new
        try:
            sink = SyslogSink(new.syslog)
        except (ConfigError, OSError) as err:
            log.error("syslog_reload_failed", error=str(err))
            return dataclasses.replace(new, syslog=old.syslog)
        previous, self.sink = self.sink, sink
        self.runner.sink = sink
        for running in self.runner.running():
            running.output.syslog.sink = sink
            running.output.syslog.max_lines_per_second = max(1, new.syslog.max_lines_per_second)
        previous.close()
        if (problem := syslogcheck.probe(new.syslog)) is not None:
            log.warning("syslog_unreachable", warning=problem)
        self._old_sinks_sent += previous.sent
        self._old_sinks_dropped += previous.dropped
        return new


def hook_target(pid: int, peer: Peer) -> int:
    """Our pid for a hook's pid; a container's is found among the caller's nearest ancestors, or refused."""
    if procinfo.pid_namespace(peer.pid) == procinfo.pid_namespace("self"):
        return pid
    found = procinfo.ancestor_by_inner_pid(pid, peer.pid, MAX_HOOK_DEPTH)
    if found is None:
        raise AccessDenied(f"pid {pid} of the caller's pid namespace is not an ancestor of the calling process"
                           f" (within {MAX_HOOK_DEPTH} generations)")  # fmt: skip
    return found


def comm_name(pid: int) -> str:
    """A safe session name from /proc/PID/comm (for attach without --name)."""
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as comm:
            raw = comm.read().strip()
    except OSError:
        raw = ""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", raw).lstrip(".")[:64]
    return name or "process"


__all__ = ["TracerdService", "comm_name"]


def postmortem_input(config: Config, report: CrashReport) -> corefile.CoreRequest | None:
    """The pid's last mail log lines into the report, and its core's rules (docs/crashes.md);
    runs while the process is held, so both are bounded."""
    errors: list[str] = []
    if report.process.get("capture") != "interrupted":
        try:
            report.mail_log = lastwords.collect(config.mail_log, report.process.get("pid"),
                                                report.process.get("name"), errors)  # fmt: skip
        except Exception as err:  # a bug here must not cost the report
            log.exception("mail_log_failed")
            errors.append(f"mail log: {err}")
    if errors:
        report.process.setdefault("capture_errors", []).extend(errors)
    if not report.core_source:
        return None
    policy = config.core_for(str(report.process.get("name")))
    return corefile.CoreRequest(report.core_source, policy, config.max_core_process_bytes,
                                time.monotonic() + config.core_timeout, config.core_timeout)  # fmt: skip
