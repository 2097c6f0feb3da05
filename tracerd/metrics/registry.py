"""tracerd's metrics: a prometheus_client registry of its own (never the global one).

:class:`Metrics` holds the metrics docs/fleet.md lists; prometheus_client
writes every exposition.  Values tracerd keeps anyway (active sessions,
drops, the watcher) are read at collection time by :class:`_Live`.

Security: labels are bounded, so hostile names cannot grow the exposition:
``program`` a Postfix daemon or a literal ``[[rule]]`` name, ``signal`` a
fatal signal, ``reason`` a :mod:`tracerd.errors` code, ``syscall`` at most
64 a program, else ``other``; ``tracer`` a registry name; never the signature.

Diagnostics: nothing here raises on a value from outside; the watcher's RSS
is 0 when /proc cannot be read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tracerd import tracers

# Postfix 3.x's daemons: the program label knows them without a rule, whatever the service's name.
POSTFIX_PROGRAMS = frozenset({
    "anvil", "bounce", "cleanup", "discard", "dnsblog", "error", "flush", "lmtp", "local", "master",
    "oqmgr", "pickup", "pipe", "postlogd", "postscreen", "proxymap", "qmgr", "qmqpd", "scache",
    "showq", "smtp", "smtpd", "spawn", "tlsmgr", "tlsproxy", "trivial-rewrite", "verify", "virtual",
})  # fmt: skip
FATAL_SIGNALS = frozenset({"SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT", "SIGSYS", "SIGTRAP"})
REASONS = frozenset({"bad_request", "denied", "no_such_process", "not_found", "busy", "tracer_failed",
                     "tracer_unavailable", "config", "internal"})  # fmt: skip
OTHER = "other"
HOOK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)
REPORT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_WILDCARDS = set("*?[")


@dataclass
class LiveValues:
    """What tracerd keeps itself, read at each collection."""

    active: dict[str, int] = field(default_factory=dict)  # tracer -> active sessions
    syslog_dropped: int = 0
    journal_dropped: int = 0
    watcher_rss_bytes: int | None = None  # None: no watcher running
    syscalls: dict[tuple[str, str], int] = field(default_factory=dict)  # (program, syscall) -> calls (syscount)


def known_programs(rule_patterns: Iterable[str]) -> frozenset[str]:
    """Postfix's daemons and every rule pattern that is a plain name (no wildcard)."""
    plain = {pattern for pattern in rule_patterns if pattern and not _WILDCARDS & set(pattern)}
    return POSTFIX_PROGRAMS | frozenset(plain)


class Metrics:
    """Every metric tracerd exports, in a registry of its own."""

    def __init__(self, programs: frozenset[str], live: Callable[[], LiveValues]) -> None:
        self.programs = programs
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_started = Counter("tracerd_sessions_started", "Sessions whose tracer attached",
                                        ["tracer"], registry=r)  # fmt: skip
        self.sessions_failed = Counter("tracerd_sessions_failed", "Sessions whose tracer failed to attach",
                                       ["tracer"], registry=r)  # fmt: skip
        self.crashes = Counter("tracerd_crashes", "Traced processes killed by a fatal signal",
                               ["program", "signal"], registry=r)  # fmt: skip
        self.reports_suppressed = Counter("tracerd_crash_reports_suppressed",
                                          "Crashes only counted: a repeat of a signature within crash_flood_window",
                                          registry=r)  # fmt: skip
        self.hooks_refused = Counter("tracerd_hooks_refused", "Hook requests that did not end attached",
                                     ["reason"], registry=r)  # fmt: skip
        self.hook_latency = Histogram("tracerd_hook_attach_seconds", "From a hook request to its tracer attached",
                                      ["tracer"], buckets=HOOK_BUCKETS, registry=r)  # fmt: skip
        self.report_latency = Histogram("tracerd_crash_report_seconds",
                                        "From the fatal signal seen to the crash report stored",
                                        buckets=REPORT_BUCKETS, registry=r)  # fmt: skip
        for name in tracers.NAMES:  # every tracer's series exists from the start, at 0
            self.sessions_started.labels(name)
            self.sessions_failed.labels(name)
        r.register(_Live(live))

    def program(self, name: str) -> str:
        return name if name in self.programs else OTHER

    def tracer(self, name: str) -> str:
        return name if name in tracers.NAMES else OTHER

    def crashed(self, program: str, signal: str | None) -> None:
        self.crashes.labels(self.program(program), signal if signal in FATAL_SIGNALS else OTHER).inc()

    def refused(self, reason: str) -> None:
        self.hooks_refused.labels(reason if reason in REASONS else OTHER).inc()


class _Live(Collector):
    """Gauges and counters whose values tracerd keeps anyway."""

    def __init__(self, live: Callable[[], LiveValues]) -> None:
        self._live = live

    def collect(self) -> Iterator[Metric]:
        values = self._live()
        active = GaugeMetricFamily("tracerd_sessions_active", "Sessions attaching or attached", labels=["tracer"])
        for name in sorted(set(tracers.NAMES) | set(values.active)):
            active.add_metric([name], values.active.get(name, 0))
        yield active
        yield CounterMetricFamily("tracerd_syslog_dropped", "Syslog records dropped (receiver absent or full)",
                                  value=values.syslog_dropped)  # fmt: skip
        yield CounterMetricFamily("tracerd_journal_dropped", "journald entries dropped (journald absent or full)",
                                  value=values.journal_dropped)  # fmt: skip
        rss = GaugeMetricFamily("tracerd_watcher_rss_bytes", "Resident memory of the watch tracer's watcher "
                                "(0: none running)", value=values.watcher_rss_bytes or 0)  # fmt: skip
        yield rss
        calls = CounterMetricFamily("tracerd_syscalls", "System calls counted by the syscount tracer, per program"
                                    " and system call name (at most 64 names a program, the rest: other)",
                                    labels=["program", "syscall"])  # fmt: skip
        for (program, syscall), value in sorted(values.syscalls.items()):
            calls.add_metric([program, syscall], value)
        yield calls


def rss_bytes(pid: int | None) -> int | None:
    """VmRSS of ``pid`` in bytes, None when it cannot be read."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
