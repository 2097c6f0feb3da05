"""tracerd's side of the ptrace watcher: start it, talk to it, restart it.

One :class:`WatchSupervisor` per daemon owns the watcher process, sends it
commands (each with an id its answer echoes) and routes its events to each
session's WatchTracer.  When the watcher dies the kernel has detached all, so
processes run on; sessions end ``failed``.  Restarts back off (docs/json.md);
only re-seizes wait the delay, a new attach waits at most ATTACH_WAIT or is
refused at once (Postfix waits on the hook).

Security: the watcher is our own program (``python -m``), no shell; its lines
are parsed as JSON and trusted no further than routing.

Diagnostics: the watcher's stderr lines and delayed restarts are logged; a
command unanswered within its bound fails that request with TracerFailed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sys
from typing import Any, Protocol

import structlog

from tracerd.errors import Busy, TargetGone, TracerFailed
from tracerd.loopsingleton import PerLoop
from tracerd.spawn import Child, restart_delay

log = structlog.get_logger("tracerd.watch")
BACKOFF_FIRST = 0.25  # seconds before restarting a watcher that died once
BACKOFF_MAX = 8.0  # and never more (a hook waits 15 s by default)
BACKOFF_RESET = 60.0  # a watcher that lived this long died "for the first time"
ATTACH_WAIT = 0.5  # seconds a new attach waits for a delayed restart; longer, it is refused


class WatcherDied(TracerFailed):
    """The watcher died with the request pending."""


class WatchClient(Protocol):
    def on_event(self, event: dict[str, Any]) -> None: ...

    def on_watcher_died(self) -> None: ...


class WatchSupervisor:
    def __init__(self) -> None:
        self.child: Child | None = None
        self._ready: asyncio.Future[None] | None = None
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}  # request id -> its answer
        self._ids = itertools.count(1)
        self._died_at = 0.0  # loop time of the last unexpected death
        self.survivors: set[int] = set()  # held by the dead watcher: their re-seize waits the delay
        self.clients: dict[int, WatchClient] = {}
        self._start_lock = asyncio.Lock()
        self.restarts = 0
        self.deaths = 0  # unexpected deaths in a row (see BACKOFF_RESET)
        self._started_at = 0.0
        self.capture_dir: str | None = None  # for crash cores
        self.core_limit = 1 << 30
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    @property
    def restart_delay(self) -> float:
        """How long the next start waits."""
        return restart_delay(self.deaths, BACKOFF_FIRST, BACKOFF_MAX)

    def counters(self) -> dict[str, int]:
        return {
            "watcher_restarts": self.restarts,
            "watcher_deaths": self.deaths,
            "watcher_restart_delay_ms": round(self.restart_delay * 1000),
        }

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child and self.child.returncode is None else None

    def _delay_left(self) -> float:
        if not self.deaths:
            return 0.0
        return max(0.0, self._died_at + self.restart_delay - asyncio.get_running_loop().time())

    async def ensure_started(self, patient: bool = True) -> None:
        """A running watcher, after the backoff; ``patient=False`` (a new attach) is refused at once
        when that is more than ATTACH_WAIT away."""
        if not patient and self._delay_left() > ATTACH_WAIT:
            raise TracerFailed(
                f"the ptrace watcher died {self.deaths} times in a row; it restarts in"
                f" {self._delay_left():.1f} s: not traced"
            )
        async with self._start_lock:
            if self.child is not None and self.child.returncode is None:
                return
            loop = asyncio.get_running_loop()
            delay = self._delay_left()
            if delay:
                log.warning("watcher_restart_delayed", delay=self.restart_delay, left=round(delay, 3),
                            deaths=self.deaths)  # fmt: skip
                await asyncio.sleep(delay)
            self._ready = loop.create_future()
            self._started_at = loop.time()
            argv = [sys.executable, "-m", "tracerd.tracers.watch.watcher", "--core-limit", str(self.core_limit)]
            if self.capture_dir:
                argv += ["--capture-dir", self.capture_dir]
            self.child = Child(argv, self._on_lines, stdin=True)
            self._spawn(self._monitor(self.child))
            try:
                await asyncio.wait_for(asyncio.shield(self._ready), timeout=30.0)
            except TimeoutError:
                raise TracerFailed("the ptrace watcher did not start within 30 s") from None
            log.info("watcher_started", pid=self.child.pid)

    def _on_lines(self, lines: list[str]) -> None:
        for line in lines:
            self._on_line(line)

    def _on_line(self, line: str) -> None:
        if not line.startswith("{"):
            log.warning("watcher_says", line=line[:300])
            return
        try:
            event = json.loads(line)
        except ValueError:
            log.warning("watcher_says", line=line[:300])
            return
        kind = event.get("event")
        if kind == "ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
            return
        pid = int(event.get("pid", 0))
        rid = event.get("id")
        if isinstance(rid, int):
            future = self._waiting.pop(rid, None)
            if future is not None and not future.done():
                future.set_result(event)
        root = int(event.get("root", pid))
        client = self.clients.get(root)
        if client is not None and kind in ("exited", "killed", "fatal", "released"):
            client.on_event(event)
        elif kind == "fatal":
            # nobody to capture it: let it die of its signal as untraced
            log.warning("crash_without_session", pid=event.get("pid"), signal=event.get("signal"))
            self._send({"op": "finish", "pid": pid})
            discard_core(event)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, command: dict[str, Any]) -> None:
        """Fire and forget."""
        if self.child is not None and self.child.returncode is None:
            with contextlib.suppress(OSError):
                self.child.write(json.dumps(command).encode() + b"\n")

    async def _monitor(self, child: Child) -> None:
        code = await child.wait()
        child.close()
        if self.child is not child:
            return
        self.child = None
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(WatcherDied("the ptrace watcher died"))
        self._waiting.clear()
        held = set(self.clients)
        clients = list(self.clients.values())
        self.clients.clear()
        if self._stopping:
            log.info("watcher_stopped", status=code)
        else:
            lived = asyncio.get_running_loop().time() - self._started_at
            self.deaths = 1 if lived >= BACKOFF_RESET else self.deaths + 1
            self._died_at = asyncio.get_running_loop().time()
            self.survivors = held
            if clients:
                self.restarts += 1
            log.warning("watcher_died", status=code, sessions=len(clients), deaths=self.deaths,
                        next_delay=self.restart_delay)  # fmt: skip
        for client in clients:
            client.on_watcher_died()

    async def _request(self, command: dict[str, Any], timeout: float, patient: bool = True) -> dict[str, Any]:
        """Send ``command`` with a fresh id; its answer, bounded by ``timeout``."""
        await self.ensure_started(patient)
        assert self.child is not None
        rid = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        try:
            self.child.write(json.dumps({**command, "id": rid}).encode() + b"\n")
        except OSError as err:
            self._waiting.pop(rid, None)
            raise TracerFailed("the ptrace watcher is gone") from err
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise TracerFailed(f"the ptrace watcher did not answer {command['op']} within {timeout} s") from None
        finally:
            self._waiting.pop(rid, None)

    async def seize(self, client: WatchClient, pid: int, start: int, follow_forks: bool, timeout: float) -> None:
        patient = pid in self.survivors
        self.survivors.discard(pid)
        self.clients[pid] = client
        command = {"op": "seize", "pid": pid, "start": start, "follow_forks": follow_forks}
        try:
            try:
                event = await self._request(command, timeout, patient)
            except WatcherDied:
                # sent to a dying watcher: the next one takes it
                event = await self._request(command, timeout, patient)
        except BaseException:
            if self.clients.get(pid) is client:
                self.clients.pop(pid, None)
            # the seize may still succeed in the watcher
            self._send({"op": "release", "pid": pid})
            raise
        if event.get("event") != "seized":
            if self.clients.get(pid) is client:
                self.clients.pop(pid, None)
            error = str(event.get("error", "seize failed"))
            if "reused" in error or "ended" in error or "no such process" in error:
                raise TargetGone(error)
            raise TracerFailed(f"watch could not attach: {error}")

    async def release(self, pid: int, timeout: float = 10.0) -> None:
        """Detach from pid, leaving it running; Busy while its crash is held."""
        if self.child is None or self.child.returncode is not None:
            self.clients.pop(pid, None)
            return
        try:
            event = await self._request({"op": "release", "pid": pid}, timeout)
        except TracerFailed:
            self.clients.pop(pid, None)
            raise
        if event.get("event") == "release_refused":
            raise Busy(f"pid {pid}: {event.get('error', 'crash capture in progress')}")
        self.clients.pop(pid, None)

    async def finish(self, pid: int, timeout: float = 5.0) -> None:
        """Let a held crash die of its signal."""
        if self.child is None or self.child.returncode is not None:
            return  # a dead watcher has already let it die
        with contextlib.suppress(TracerFailed):
            await self._request({"op": "finish", "pid": pid}, timeout)

    def forget(self, pid: int, client: WatchClient | None = None) -> None:
        """Stop routing pid's events (to ``client`` only, if given: a newer session keeps its own)."""
        if client is None or self.clients.get(pid) is client:
            self.clients.pop(pid, None)

    async def stop(self, timeout: float = 5.0) -> None:
        """Close the watcher's input: it releases everything and exits."""
        self._stopping = True
        child = self.child
        if child is None or child.returncode is not None:
            return
        if child.proc.stdin is not None:
            child.proc.stdin.close()
        await child.exit_or_kill(timeout)


_supervisors: PerLoop[WatchSupervisor] = PerLoop(WatchSupervisor)


def discard_core(event: dict[str, Any]) -> None:
    """Remove the core the watcher wrote for a crash, once it has been read."""
    core = event.get("core")
    if isinstance(core, str) and core and not core.startswith("/proc/"):  # a memfd goes with the watcher
        with contextlib.suppress(OSError):
            os.unlink(core)


def current() -> WatchSupervisor | None:
    return _supervisors.current()


def supervisor() -> WatchSupervisor:
    return _supervisors.get()
