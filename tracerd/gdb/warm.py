"""The warm gdb: one gdb kept ready for the next watch crash (a pool of one).

Started ahead: settings loaded, no target, libc's and ld.so's symbols read
at a kernel-space address for the core's copies to reuse. :meth:`WarmPool.borrow`
lends it to one capture, then a fresh one starts; with none ready a capture
waits or starts a cold gdb: slower, never lost. See docs/design.md, "Tracers".

Security: gdb starts as in tracerd.gdb.mi (argv, ``-nx``); preloaded paths
are tracerd's own mappings, plain paths only, quoted as MI c-strings.

Diagnostics: a death is ``warm_gdb_died``, replaced at once, then after
:data:`BACKOFF_FIRST` doubling to :data:`BACKOFF_MAX`; a failed start is
``warm_gdb_failed`` (the next crash starts cold); over :data:`MAX_RSS_KB` it is
replaced by a bare one. ``status`` shows it (``warm_gdb``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import structlog

from tracerd.errors import TracerdError
from tracerd.gdb.mi import GdbMI, MIError, quote
from tracerd.loopsingleton import PerLoop
from tracerd.spawn import restart_delay

log = structlog.get_logger("tracerd.gdb.warm")
MAX_RSS_KB = 128 * 1024  # an idle warm gdb above this is replaced by a bare one
START_TIMEOUT = 30.0  # bound on a start-up and its preloads
WAIT_FOR_WARM = 10.0  # a crash waits this long for a warm gdb being started, then starts its own
HEALTH_TIMEOUT = 2.0  # a warm gdb that does not answer within this is replaced
BACKOFF_FIRST = 1.0  # seconds before replacing a warm gdb that died
BACKOFF_MAX = 60.0
# where the preloaded symbols go: kernel space, never a user process's address
PRELOAD_BASE = 0xFFFF900000000000
PRELOAD_STRIDE = 0x100000000
_PRELOAD_NAMES = re.compile(r"/(libc\.so\.6|ld-linux[A-Za-z0-9_.-]*\.so\.\d+)$")
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9._/+-]+")


def common_libraries(maps: str = "/proc/self/maps") -> list[str]:
    """libc and the dynamic loader as this process maps them, by real path (gdb's name for
    an add-symbol-file)."""
    found: list[str] = []
    with contextlib.suppress(OSError), open(maps) as lines:
        for line in lines:
            fields = line.split(maxsplit=5)
            path = fields[5].strip() if len(fields) == 6 else ""
            if _PRELOAD_NAMES.search(path) and _PLAIN_PATH.fullmatch(path):
                real = os.path.realpath(path)
                if _PLAIN_PATH.fullmatch(real) and real not in found:
                    found.append(real)
    return found


def rss_kb(pid: int | None) -> int | None:
    """Resident set of pid in kB (None once it is gone)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * 4
    except (OSError, ValueError, IndexError):
        return None


async def start_gdb(preload: list[str]) -> GdbMI:
    """A gdb with our settings and ``preload`` symbols read, waited for until idle."""
    mi = GdbMI()
    try:
        await mi.start()
        for index, path in enumerate(preload):
            where = PRELOAD_BASE + index * PRELOAD_STRIDE
            await mi.console(f"add-symbol-file {quote(path)} -o {where:#x}", timeout=START_TIMEOUT)
        if preload:
            # gdb indexes debug info in worker threads: a symbol lookup waits for them
            with contextlib.suppress(MIError):
                await mi.command("-data-evaluate-expression tracerd_warm_probe", timeout=START_TIMEOUT)
    except BaseException:
        await mi.close()
        raise
    return mi


async def forget_preloads(mi: GdbMI, preload: list[str]) -> None:
    """Drop the preloads once the core's copies are loaded, so ``__abort_msg`` is the core's
    libc's, not the copy at :data:`PRELOAD_BASE`; errors (no preloads) are ignored."""
    for path in preload:
        with contextlib.suppress(MIError, TracerdError):
            await mi.console(f"remove-symbol-file {quote(path)}", timeout=5.0)


class WarmPool:
    """One warm gdb, replaced after each use and after its death."""

    def __init__(self) -> None:
        self.preload = common_libraries()
        self.max_rss_kb = MAX_RSS_KB
        self._ready: GdbMI | None = None
        self._ready_preload: list[str] = []
        self._starting: asyncio.Task[None] | None = None
        self._stopped = False
        self._backing_off = False  # the start under way is waiting out a delay
        self.started = 0
        self.taken = 0  # captures that got a warm gdb
        self.cold = 0  # captures that had to start their own
        self.deaths = 0  # warm gdbs that died idle or failed to start, in a row
        self.died = 0  # warm gdbs that died idle, in all
        self._tasks: set[asyncio.Task[None]] = set()

    # -- life -----------------------------------------------------------------

    def ensure(self) -> None:
        """Start a warm gdb unless one is ready or starting (returns at once)."""
        if self._stopped or self._ready is not None or self._starting is not None:
            return
        self._starting = asyncio.get_running_loop().create_task(self._start())
        self._starting.add_done_callback(self._started_done)

    def _started_done(self, task: asyncio.Task[None]) -> None:
        if self._starting is task:
            self._starting = None
        if not task.cancelled() and task.exception() is not None:
            self.deaths += 1  # back off: a broken gdb must not spin the daemon
            log.warning("warm_gdb_failed", error=str(task.exception()), deaths=self.deaths)

    async def _start(self) -> None:
        if self.deaths > 1:  # the first replacement at once
            self._backing_off = True
            try:
                await asyncio.sleep(restart_delay(self.deaths - 1, BACKOFF_FIRST, BACKOFF_MAX))
            finally:
                self._backing_off = False
        preload = list(self.preload)
        mi = await asyncio.wait_for(start_gdb(preload), START_TIMEOUT * 2)
        size = rss_kb(mi.pid)
        if preload and size is not None and size > self.max_rss_kb:
            log.warning("warm_gdb_too_big", rss_kb=size, max_rss_kb=self.max_rss_kb, preload=preload)
            await mi.close()
            self.preload, preload = [], []
            mi = await asyncio.wait_for(start_gdb(preload), START_TIMEOUT * 2)
        if self._stopped:
            await mi.close()
            return
        self.started += 1
        self._ready, self._ready_preload = mi, preload
        log.info("warm_gdb_ready", pid=mi.pid, rss_kb=rss_kb(mi.pid), preload=preload)
        self._spawn(self._watch(mi))

    async def _watch(self, mi: GdbMI) -> None:
        """Replace the warm gdb if it dies while waiting for a crash."""
        assert mi.child is not None
        born = asyncio.get_running_loop().time()
        code = await mi.child.wait()
        if self._ready is not mi:
            return  # handed out (or replaced): its end is its borrower's business
        self._ready = None
        mi.child.close()
        if self._stopped:
            return
        lived = asyncio.get_running_loop().time() - born
        self.deaths = 1 if lived >= BACKOFF_MAX else self.deaths + 1
        self.died += 1
        log.warning("warm_gdb_died", pid=mi.pid, status=code, deaths=self.deaths)
        self.ensure()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Daemon stop: no more warm gdbs; the idle one exits."""
        self._stopped = True
        if self._starting is not None:
            self._starting.cancel()
            with contextlib.suppress(BaseException):
                await self._starting
        ready, self._ready = self._ready, None
        if ready is not None:
            await ready.close()
        if self._tasks:  # used gdbs still closing, watchers of gdbs gone
            await asyncio.wait(list(self._tasks), timeout=3.0)

    # -- use ------------------------------------------------------------------

    async def _take(self) -> GdbMI:
        """The warm gdb if one is ready and sound, else one being started, else a cold one."""
        for _ in range(2):
            mi, self._ready = self._ready, None
            if mi is not None:
                if await self._sound(mi):
                    self.taken += 1
                    self.deaths = 0
                    return mi
                self.died += 1  # dead or broken before its watcher task saw it
                await mi.close()
            starting = self._starting
            if starting is None or self._backing_off:
                break  # a crash never waits out a restart delay: it starts its own
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(starting), WAIT_FOR_WARM)
        self.cold += 1
        log.info("warm_gdb_missing", cold=self.cold)
        return await start_gdb([])

    async def _sound(self, mi: GdbMI) -> bool:
        """Health check before a hand-out: alive, answering, within its memory bound."""
        size = rss_kb(mi.pid)
        if mi.child is None or mi.child.returncode is not None or not size:  # a zombie has no RSS
            log.warning("warm_gdb_died", pid=mi.pid, found="at a crash")
            return False
        if size > self.max_rss_kb:
            log.warning("warm_gdb_too_big", pid=mi.pid, rss_kb=size, max_rss_kb=self.max_rss_kb)
            return False
        try:
            await mi.command("-gdb-show confirm", timeout=HEALTH_TIMEOUT)
        except TracerdError as err:
            log.warning("warm_gdb_unsound", pid=mi.pid, error=str(err))
            return False
        return True

    @contextlib.asynccontextmanager
    async def borrow(self) -> AsyncIterator[GdbMI]:
        """A gdb with settings loaded and no target, for one capture; closed after it."""
        mi = await self._take()
        try:
            yield mi
        finally:
            # in the background: the crashed process need not wait for gdb's exit
            self._spawn(self._retire(mi))

    async def _retire(self, mi: GdbMI) -> None:
        """Close a used gdb, then start its replacement (not before: it would slow the capture)."""
        try:
            await mi.close()
        finally:
            self.ensure()

    def status(self) -> dict[str, Any]:
        ready = self._ready
        pid = ready.pid if ready is not None and ready.child and ready.child.returncode is None else None
        return {
            "pid": pid,
            "rss_kb": rss_kb(pid),
            "max_rss_kb": self.max_rss_kb,
            "preloaded": list(self._ready_preload) if pid else [],
            "starting": self._starting is not None,
            "started": self.started,
            "taken": self.taken,
            "cold_starts": self.cold,
            "died": self.died,
            "deaths_in_a_row": self.deaths,
        }


_pools: PerLoop[WarmPool] = PerLoop(WarmPool)


def pool() -> WarmPool:
    """The running event loop's pool (one daemon, one warm gdb)."""
    return _pools.get()


def current() -> WarmPool | None:
    """The running loop's pool if one was made (None: no watch session yet)."""
    return _pools.current()


def status() -> dict[str, Any] | None:
    """``status``'s ``warm_gdb``: None until the watch tracer was first used."""
    running = current()
    return running.status() if running is not None else None
