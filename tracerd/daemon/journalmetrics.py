"""Fleet outputs: journald entries and metrics for each session and crash.

The runner and request handler call :data:`hub` where things happen (session
attached, ended, failed; crash stored; hook refused or attached); it feeds the
journal sink and the metrics. Inert until :meth:`Fleet.open` (tracerd's
start). See docs/fleet.md.

Security: the journal gets only what the report and session already hold;
metric labels are bounded by tracerd.metrics.registry.

Diagnostics: nothing raises into callers: journald absent, a metrics port in
use or a missing textfile directory each give one warning; tracing goes on.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Mapping
from typing import Any, Protocol

import structlog

from tracerd.config import Config
from tracerd.metrics.registry import LiveValues, Metrics, known_programs, rss_bytes
from tracerd.metrics.serve import MetricsEndpoint, Textfile
from tracerd.sinks import journal
from tracerd.sinks.journal import JournalSink

log = structlog.get_logger("tracerd")
FAULT_MEMORY = 4096  # fatal signals seen whose report is not stored yet, at most


class _Service(Protocol):
    """What the hub reads of TracerdService at each collection."""

    registry: Any
    sink: Any
    _old_sinks_dropped: int


class Fleet:
    """journald and metrics for one tracerd; inert until open()."""

    def __init__(self) -> None:
        self.journal: JournalSink | None = None
        self.sessions_to_journal = True
        self.metrics: Metrics | None = None
        self.endpoint: MetricsEndpoint | None = None
        self.textfile: Textfile | None = None
        self._service: _Service | None = None
        self._faults: dict[int, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- life -------------------------------------------------------------

    def open(self, config: Config, service: _Service) -> None:
        """At start, on the loop: the journal sink, the registry, and (in a task) the endpoint."""
        self._service = service
        self.metrics, self.endpoint, self.textfile = None, None, None
        self._open_journal(config)
        if not config.metrics.enabled:
            return
        self.metrics = Metrics(known_programs(rule.process for rule in config.rules), self._live)
        if config.metrics.listen:
            self.endpoint = MetricsEndpoint(self.metrics.registry, config.metrics.listen)
            self._spawn(self.endpoint.start())
        if config.metrics.textfile:
            self.textfile = Textfile(self.metrics.registry, config.metrics.textfile, config.metrics.textfile_interval)
            self.textfile.start()

    def _open_journal(self, config: Config) -> None:
        wanted = config.journal.enabled
        enabled = journal.available(config.journal.socket) if wanted == "auto" else bool(wanted)
        if self.journal is not None:
            self.journal.close()
        self.journal = JournalSink(config.journal.socket, enabled=enabled) if enabled else None
        self.sessions_to_journal = config.journal.sessions

    def reload(self, config: Config) -> None:
        """SIGHUP: [journal] and program label names apply at once; [metrics] waits for a restart."""
        dropped = self.journal.dropped if self.journal else 0
        self._open_journal(config)
        if self.journal is not None:
            self.journal.dropped = dropped
        if self.metrics is not None:
            self.metrics.programs = known_programs(rule.process for rule in config.rules)

    async def close(self) -> None:
        if self.endpoint is not None:
            await self.endpoint.close()
        if self.textfile is not None:
            await self.textfile.close()
        if self.journal is not None:
            self.journal.close()
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _live(self) -> LiveValues:
        values = LiveValues(journal_dropped=self.journal.dropped if self.journal else 0)
        service = self._service
        if service is not None:
            for session in service.registry.active():
                values.active[session.tracer] = values.active.get(session.tracer, 0) + 1
            values.syslog_dropped = service._old_sinks_dropped + service.sink.dropped
        watch = sys.modules.get("tracerd.tracers.watch.supervisor")  # only if the watch tracer was used
        running = watch.current() if watch is not None else None
        values.watcher_rss_bytes = rss_bytes(running.pid) if running is not None else None
        syscount = sys.modules.get("tracerd.tracers.syscount.loader")  # only if the syscount tracer was used
        loader = syscount.current() if syscount is not None else None
        if loader is not None and self.metrics is not None:
            for service_name, calls in loader.by_service.items():
                program = self.metrics.program(service_name)
                for name, count in calls.items():
                    values.syscalls[program, name] = values.syscalls.get((program, name), 0) + count
        return values

    def counters(self) -> dict[str, int]:
        """For ``status``: journal entries sent and dropped (when the journal is on)."""
        if self.journal is None:
            return {}
        return {"journal_sent": self.journal.sent, "journal_dropped": self.journal.dropped}

    # -- events -------------------------------------------------------------

    def session_started(self, session: Any) -> None:
        if self.metrics is not None:
            self.metrics.sessions_started.labels(self.metrics.tracer(session.tracer)).inc()
        self._session_entry(journal.MESSAGE_SESSION_STARTED, journal.PRIORITY_INFO, session, "attached",
                            f"{session.tag}: attached with {session.tracer}")  # fmt: skip

    def session_ended(self, session: Any, ending: Any) -> None:
        """Called before the session takes ``ending``: its state still says whether it attached."""
        attaching = str(session.state) == "attaching"
        if self.metrics is not None:
            if ending.state == "failed" and attaching:
                self.metrics.sessions_failed.labels(self.metrics.tracer(session.tracer)).inc()
            if ending.state == "crashed":
                self.metrics.crashed(session.name, ending.signal)
        self._faults.pop(session.pid, None)
        text = ending.describe(session.tag).removeprefix("tracerd: ")
        if ending.state == "failed":
            self._session_entry(journal.MESSAGE_SESSION_FAILED, journal.PRIORITY_WARNING, session, "failed", text,
                                reason=ending.reason)  # fmt: skip
        else:
            self._session_entry(journal.MESSAGE_SESSION_ENDED, journal.PRIORITY_INFO, session, str(ending.state),
                                text, reason=ending.reason)  # fmt: skip

    def session_failed(self, session: Any, reason: str) -> None:
        """A session that failed before it had a tracer (its log could not be opened)."""
        if self.metrics is not None:
            self.metrics.sessions_failed.labels(self.metrics.tracer(session.tracer)).inc()
        self._session_entry(journal.MESSAGE_SESSION_FAILED, journal.PRIORITY_WARNING, session, "failed",
                            f"{session.tag}: tracer failed: {reason}", reason=reason)  # fmt: skip

    def _session_entry(self, message_id: str, priority: int, session: Any, state: str, text: str, *,
                       reason: str | None = None) -> None:  # fmt: skip
        if self.journal is not None and self.sessions_to_journal:
            self.journal.send(journal.session_fields(message_id, priority, text, program=session.name,
                                                     pid=session.pid, tracer=session.tracer, state=state,
                                                     reason=reason))  # fmt: skip

    def fault(self, pid: int) -> None:
        """A fatal signal seen (a capture starts): the clock of fault-to-report."""
        if len(self._faults) < FAULT_MEMORY:
            self._faults[pid] = time.monotonic()

    def crash(self, report: Any, entry: Mapping[str, Any] | None) -> None:
        """A crash recorded by the store (``entry``: its public entry, None if it was not stored)."""
        try:
            self._crash(report, entry)
        except Exception:  # a bug here must not cost the crashed process its release
            log.exception("fleet_crash_failed")

    def _crash(self, report: Any, entry: Mapping[str, Any] | None) -> None:
        pid = report.process.get("pid")
        seen = self._faults.pop(pid, None) if isinstance(pid, int) else None
        if self.metrics is not None:
            if entry is not None and not entry.get("full"):
                self.metrics.reports_suppressed.inc()
            if entry is not None and seen is not None:
                self.metrics.report_latency.observe(time.monotonic() - seen)
        if self.journal is not None:
            repeats = len(entry.get("repeats") or []) if entry else 0
            self.journal.send(journal.crash_fields(report, entry, repeats))

    def hook_attached(self, tracer: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.hook_latency.labels(self.metrics.tracer(tracer)).observe(seconds)

    def hook_refused(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.refused(reason)


hub = Fleet()
