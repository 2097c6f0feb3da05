"""The one bpftrace of a daemon, shared by every syscount session: started, fed pids, read, restarted.

Started at the first session and kept (docs/syscount.md, "Design").  Its
maps are taken from its own descriptors (:mod:`bpfmap`); on x86-64 the
returning calls are counted by tracerd's own program (:mod:`rawcount`).  A
session's pid goes into ``@pids`` with one bpf(2) call; the maps are read
every tick and at the session's end, which deletes its keys.  A dead
bpftrace is restarted (growing delay) with every live root put back.
Metrics keep at most :data:`MAX_NAMES` names a service, :data:`MAX_SERVICES`
services.

Security: bpftrace runs from a fixed argv (no shell); of its output only the
ready line and ``exit PID CODE`` lines are read.

Diagnostics: bpftrace's words, deaths and restarts are logged
(``syscount_bpftrace_*``); a failing bpf(2) call raises TracerFailed.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from tracerd import failpoint
from tracerd.errors import TracerFailed
from tracerd.loopsingleton import PerLoop
from tracerd.spawn import Child, restart_delay
from tracerd.tracers.syscount import check, rawcount, script
from tracerd.tracers.syscount.bpfmap import BpfMap, open_maps
from tracerd.tracers.syscount.table import Counts, syscall_name

log = structlog.get_logger("tracerd.syscount")
START_TIMEOUT = 30.0
BACKOFF_RESET = 60.0  # a bpftrace that lived this long died "for the first time" (restart delay reset)
BPFTOOL_TIMEOUT = 10.0
MAX_NAMES = 64  # system call names a service's metrics keep; the rest are "other"
MAX_SERVICES = 256  # services the metrics keep apart; the rest are "other"
KINDS = {"AT_c": "c", "AT_e": "e", "AT_pids": "pids", "AT_ns": "ns", "AT_h": "h"}


class Client(Protocol):
    def on_exit(self, code: int) -> None: ...

    def on_failed(self, reason: str) -> None: ...


@dataclass
class Tally:
    client: Client
    service: str
    interval: float
    base: Counts = field(default_factory=Counts)  # what earlier bpftraces counted
    last: Counts = field(default_factory=Counts)  # what this one has, as last read

    def totals(self) -> Counts:
        return self.base.add(self.last)


def descendants(roots: set[int]) -> dict[int, int]:
    """Every live descendant of ``roots`` (one pass over /proc): pid -> its root."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as file:
                    stat = file.read()
                parents[int(entry)] = int(stat[stat.rindex(b")") + 2 :].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found: dict[int, int] = {}
    for pid in parents:
        seen, up = 0, parents.get(pid, 0)
        while up > 1 and seen < 64:
            if up in roots:
                found[pid] = up
                break
            up, seen = parents.get(up, 0), seen + 1
    return found


class Loader:
    def __init__(self) -> None:
        self.child: Child | None = None
        self.maps: dict[str, BpfMap] = {}
        self.tallies: dict[int, Tally] = {}  # root pid -> its session's counts
        self.latency = False
        self.restarts = 0
        self.deaths = 0  # unexpected deaths in a row (reset by one that lived BACKOFF_RESET seconds)
        self.died = 0  # every unexpected death (sessions compare it to say one happened)
        self._started_at = 0.0
        self._removing: dict[int, asyncio.Future[Counts]] = {}
        self.by_service: dict[str, dict[str, int]] = {}  # metrics: service -> syscall name -> calls
        self._lock = asyncio.Lock()
        self._start_lock = asyncio.Lock()
        self._ready: asyncio.Future[None] | None = None
        self._stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._recent: list[str] = []
        self.counter: rawcount.Attached | None = None  # the sys_exit program counting for bpftrace's maps
        self.raw_refused: str | None = None  # why the kernel refused it (then bpftrace counts, as it can)

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None and self.child.returncode is None else None

    def counters(self) -> dict[str, int]:
        return {"syscount_restarts": self.restarts, "syscount_sessions": len(self.tallies),
                "syscount_rawcount": int(self.counter is not None)}  # fmt: skip

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def ensure_started(self, latency: bool) -> None:
        async with self._start_lock:
            if self.pid is not None:
                return
            await asyncio.sleep(restart_delay(self.deaths, 0.25, 8.0))
            reason = check.refusal()  # again: tracefs may have been unmounted since (it is mounted again then)
            if reason:
                raise TracerFailed(reason)
            self._close_maps()
            self.latency, self._recent = latency, []
            raw = not latency and self.raw_refused is None and rawcount.available()
            child = await self._start(latency, raw)
            if raw:
                try:
                    if failpoint.fails("rawcount-refused"):
                        raise OSError(errno.EPERM, "refused by fail point rawcount-refused")
                    self.counter = rawcount.attach(self.maps["pids"].fd, self.maps["c"].fd, self.maps["e"].fd)
                except (OSError, KeyError) as err:  # counted by bpftrace's tracepoints instead, from now on
                    self.raw_refused = str(err)
                    log.warning("syscount_rawcount_refused", error=self.raw_refused)
                    self.child = None  # not a death to restart from
                    await child.stop()
                    self._close_maps()
                    child = await self._start(latency, False)
            log.info("syscount_bpftrace_started", pid=child.pid, latency=latency, maps=sorted(self.maps),
                     rawcount=self.counter is not None)  # fmt: skip
            if self._ticker is None or self._ticker.done():
                self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _start(self, latency: bool, raw: bool) -> Child:
        """bpftrace started with its program, its maps taken: TracerFailed saying why not."""
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._started_at = loop.time()
        env = {**os.environ, "BPFTRACE_MAP_KEYS_MAX": str(script.KEYS_MAX)}
        self.child = child = Child(["bpftrace", "-e", script.program(latency, raw)], self._on_lines, env=env)
        self._spawn(self._monitor(child))
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT)
            self.maps = self._find_maps(child.pid)
        except (TimeoutError, TracerFailed) as err:
            await child.stop()
            why = "; ".join(self._recent[-2:]) or str(err) or "no word from it"
            raise TracerFailed(f"syscount: bpftrace did not start: {why}") from None
        return child

    def _find_maps(self, pid: int) -> dict[str, BpfMap]:
        try:
            found = open_maps(pid)
        except OSError as err:
            raise TracerFailed(f"cannot take bpftrace's maps: {err.strerror}") from None
        maps = {KINDS[name]: bpf for name, bpf in found.items() if name in KINDS}
        for name, bpf in found.items():
            if name not in KINDS:
                bpf.close()
        if "pids" not in maps or "c" not in maps:
            for bpf in maps.values():
                bpf.close()
            raise TracerFailed(f"bpftrace's maps not found among {sorted(found)}")
        return maps

    def _close_maps(self) -> None:
        if self.counter is not None:
            self.counter.close()
            self.counter = None
        for bpf in self.maps.values():
            bpf.close()
        self.maps = {}

    def _on_lines(self, lines: list[str]) -> None:
        for line in lines:
            if line == "syscount-ready":
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(None)
            elif line.startswith("exit "):
                words = line.split()
                if len(words) == 3 and words[1].isdigit() and words[2].lstrip("-").isdigit():
                    tally = self.tallies.get(int(words[1]))
                    if tally is not None:
                        tally.client.on_exit(int(words[2]))
            elif line and not line.startswith(("Attaching ", "ERROR: Unknown error -1: couldn't set RLIMIT_MEMLOCK")):
                self._recent = [*self._recent[-3:], line[:300]]
                log.warning("syscount_bpftrace_says", line=line[:300])

    async def _monitor(self, child: Child) -> None:
        code = await child.wait()
        child.close()
        ready = self._ready
        if self.child is child and ready is not None and not ready.done():  # died starting: its starter says why
            ready.set_exception(TracerFailed(f"bpftrace exited with status {code}"))
            ready.exception()  # retrieved (a starter that timed out is gone)
            self.child = None
            self.deaths += 1
            return
        if self.child is not child or self._stopping:
            return
        self.child = None
        self._close_maps()
        lived = asyncio.get_running_loop().time() - self._started_at
        self.deaths = 1 if lived >= BACKOFF_RESET else self.deaths + 1
        self.died += 1
        for tally in self.tallies.values():  # what this bpftrace counted and we read is kept
            tally.base, tally.last = tally.totals(), Counts()
        log.warning("syscount_bpftrace_died", status=code, sessions=len(self.tallies))
        if self.tallies:
            self._spawn(self._restart())

    async def _restart(self) -> None:
        try:
            await self.ensure_started(self.latency)
            roots = set(self.tallies)
            await self._put(roots, descendants(roots))
        except TracerFailed as err:
            log.warning("syscount_restart_failed", error=str(err))
            for tally in list(self.tallies.values()):  # they end failed, saying why; their processes run on
                tally.client.on_failed(f"syscount's bpftrace died and could not be restarted: {err}")
            return
        self.restarts += 1
        log.info("syscount_bpftrace_restarted", pid=self.pid, sessions=len(roots))

    async def _put(self, roots: set[int], children: dict[int, int]) -> None:
        pairs = [(pid, pid) for pid in roots] + list(children.items())
        try:
            for pid, root in pairs:
                self.maps["pids"].update(script.pid_key(pid), script.pid_key(root))
        except (OSError, KeyError) as err:
            raise TracerFailed(f"cannot add pid to bpftrace's map: {err}") from None

    async def add(self, root: int, client: Client, service: str, interval: float, latency: bool) -> None:
        """Count ``root`` (and its threads and later children): returns once it is in @pids."""
        await self.ensure_started(latency)
        async with self._lock:
            self.tallies[root] = Tally(client, service, interval)
            try:
                await self._put({root}, {})
            except BaseException:
                self.tallies.pop(root, None)
                raise

    async def remove(self, root: int) -> Counts:
        """Stop counting ``root`` and its children: its final totals (read now), then its keys deleted.

        Sessions ending together (a shutdown) share the work: one batch of dumps, one batch of deletes."""
        future: asyncio.Future[Counts] = asyncio.get_running_loop().create_future()
        self._removing[root] = future
        async with self._lock:
            if self._removing:
                await self._remove_all(dict(self._removing))
        return await future

    async def _remove_all(self, futures: dict[int, asyncio.Future[Counts]]) -> None:
        for root in futures:
            self._removing.pop(root, None)
        try:
            if self.pid is not None and any(root in self.tallies for root in futures):
                mine = await self._read_locked(with_pids=True, roots=set(futures))
                self._delete([(kind, key) for kind, entries in mine.items() for key, _ in entries])
        except TracerFailed as err:
            log.warning("syscount_remove_failed", pids=sorted(futures), error=str(err))
        finally:
            for root, future in futures.items():
                tally = self.tallies.pop(root, None)
                if not future.done():
                    future.set_result(tally.totals() if tally is not None else Counts())

    def _delete(self, keys: Sequence[tuple[str, bytes]]) -> None:
        """Delete ``keys`` (kind, key), a batch per map; one the program deleted meanwhile is no error."""
        by_kind: dict[str, list[bytes]] = {}
        for kind, key in keys:
            by_kind.setdefault(kind, []).append(key)
        try:
            for kind, kind_keys in by_kind.items():
                self.maps[kind].delete_many(kind_keys)
        except (OSError, KeyError) as err:
            raise TracerFailed(f"cannot remove a key of bpftrace's map: {err}") from None

    def _dumps(self, kinds: Sequence[str]) -> dict[str, list[tuple[bytes, int]]]:
        """Every map of ``kinds``, read now (a bpf(2) batch call per 1,024 keys, no process started)."""
        try:
            return {kind: self.maps[kind].items() for kind in kinds if kind in self.maps}
        except OSError as err:
            raise TracerFailed(f"cannot read bpftrace's maps: {err.strerror}") from None

    async def read(self) -> None:
        """Read every map once: each live session's counts, and the metrics' increases."""
        async with self._lock:
            await self._read_locked()

    async def _read_locked(self, with_pids: bool = False,
                           roots: set[int] | None = None) -> dict[str, list[tuple[bytes, int]]]:  # fmt: skip
        """Read the maps; the counts of ``roots`` only (ending sessions: the dumps returned are their
        keys, ``@pids`` by value), or of every session."""
        if self.pid is None:
            return {}
        dumps = self._dumps(("c", "e", "ns", "h", "pids") if with_pids else ("c", "e", "ns", "h"))
        if roots is not None:  # the others' keys are parsed at the next full read, not at every end
            prefixes = {script.pid_key(root) for root in roots}
            dumps = {kind: [(key, value) for key, value in entries
                            if (key[:8] in prefixes if kind != "pids" else value in roots)]
                     for kind, entries in dumps.items()}  # fmt: skip
        fresh: dict[int, Counts] = {}
        for kind in ("c", "e", "ns", "h"):
            script.parse_dump(kind, dumps.get(kind, []), fresh)
        for root, tally in self.tallies.items():
            if roots is not None and root not in roots:
                continue
            now = fresh.get(root, Counts())
            kept = tally.service in self.by_service or len(self.by_service) < MAX_SERVICES
            service = tally.service if kept else "other"
            names = self.by_service.setdefault(service, {})
            for number, call in now.calls.items():
                before = tally.last.calls.get(number)
                delta = call.calls - (before.calls if before else 0)
                if delta > 0:
                    name = syscall_name(number)
                    name = name if name in names or len(names) < MAX_NAMES else "other"
                    names[name] = names.get(name, 0) + delta
            tally.last = now
        return dumps

    async def _tick(self) -> None:
        """Read the maps every shortest interval, and have each session log its table when due."""
        while True:
            interval = min((t.interval for t in self.tallies.values()), default=10.0)
            await asyncio.sleep(interval)
            if not self.tallies or self.pid is None:
                continue
            try:
                await self.read()
            except TracerFailed as err:
                log.warning("syscount_read_failed", error=str(err))
                continue
            for tally in list(self.tallies.values()):
                due = getattr(tally.client, "tick", None)
                if due is not None:
                    due()

    async def stop(self) -> None:
        self._stopping = True
        if self._ticker is not None:
            self._ticker.cancel()
        if self.child is not None and self.child.returncode is None:
            await self.child.stop()
        self._close_maps()


_loaders: PerLoop[Loader] = PerLoop(Loader)


def current() -> Loader | None:
    return _loaders.current()


def loader() -> Loader:
    return _loaders.get()
