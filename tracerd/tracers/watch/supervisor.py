"""tracerd's side of the ptrace watcher: start it, talk to it, restart it.

One :class:`WatchSupervisor` per daemon owns the watcher process
(:mod:`tracerd.tracers.watch.watcher`), sends it seize and release commands, and routes its
events to the :class:`~tracerd.tracers.watch.backend.WatchTracer` of each session.
When the watcher dies (even by SIGKILL) the kernel has already detached every
watched process, so they run on; the supervisor tells every session, which
ends ``failed`` and asks to be traced again, and the next seize starts a new
watcher.  A watcher that keeps dying is restarted after a growing delay
(:data:`BACKOFF_FIRST` doubling up to :data:`BACKOFF_MAX`; reset once one has
lived :data:`BACKOFF_RESET` seconds), so a broken watcher cannot spin the
daemon; ``status`` shows ``watcher_restarts``, ``watcher_deaths`` (in a row)
and ``watcher_restart_delay_ms``.

Security: the watcher is our own program (``python -m``), started with no
shell; its lines are parsed as JSON and trusted no further than routing.

Diagnostics: the watcher's stderr lines are logged, each delayed restart too
(``watcher_restart_delayed``); a command that gets no
answer within its bound fails that one request with TracerFailed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from typing import Any, Protocol

import structlog

from tracerd.errors import TargetGone, TracerFailed
from tracerd.perloop import PerLoop
from tracerd.spawn import Child, restart_delay

log = structlog.get_logger("tracerd.watch")
BACKOFF_FIRST = 0.25  # seconds before restarting a watcher that died once
BACKOFF_MAX = 8.0  # and never more (a hook waits 15 s by default)
BACKOFF_RESET = 60.0  # a watcher that lived this long died "for the first time"


class WatchClient(Protocol):
    def on_event(self, event: dict[str, Any]) -> None: ...

    def on_watcher_died(self) -> None: ...


class WatchSupervisor:
    def __init__(self) -> None:
        self.child: Child | None = None
        self._ready: asyncio.Future[None] | None = None
        self._waiting: dict[tuple[str, int], asyncio.Future[dict[str, Any]]] = {}
        self.clients: dict[int, WatchClient] = {}
        self._start_lock = asyncio.Lock()
        self.restarts = 0
        self.deaths = 0  # unexpected deaths in a row (see BACKOFF_RESET)
        self._started_at = 0.0
        self.capture_dir: str | None = None  # where the watcher writes crash cores
        self.core_limit = 1 << 30
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    @property
    def restart_delay(self) -> float:
        """How long the next start waits: 0, then BACKOFF_FIRST doubling per death in a row."""
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

    async def ensure_started(self) -> None:
        async with self._start_lock:
            if self.child is not None and self.child.returncode is None:
                return
            loop = asyncio.get_running_loop()
            if self.deaths:
                delay = self.restart_delay
                log.warning("watcher_restart_delayed", delay=delay, deaths=self.deaths)
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
        if kind in ("seized", "seize_failed"):
            self._resolve(("seize", pid), event)
        elif kind == "released":
            self._resolve(("release", pid), event)
        elif kind == "finished":
            self._resolve(("finish", pid), event)
        elif kind == "pong":
            self._resolve(("ping", 0), event)
        root = int(event.get("root", pid))
        client = self.clients.get(root)
        if client is not None and kind in ("exited", "killed", "fatal", "released"):
            client.on_event(event)
        elif kind == "fatal":
            # nobody to capture it (its session gave up): it must not stay
            # held; let it die of its signal as it would untraced
            log.warning("crash_without_session", pid=event.get("pid"), signal=event.get("signal"))
            self._send({"op": "finish", "pid": pid})
            discard_core(event)

    def _spawn(self, coro: Any) -> None:
        """A background task we keep a reference to until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, command: dict[str, Any]) -> None:
        """Fire and forget (no answer awaited)."""
        if self.child is not None and self.child.returncode is None:
            with contextlib.suppress(OSError):
                self.child.write(json.dumps(command).encode() + b"\n")

    def _resolve(self, key: tuple[str, int], event: dict[str, Any]) -> None:
        future = self._waiting.pop(key, None)
        if future is not None and not future.done():
            future.set_result(event)

    async def _monitor(self, child: Child) -> None:
        code = await child.wait()
        child.close()
        if self.child is not child:
            return
        self.child = None
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(TracerFailed("the ptrace watcher died"))
        self._waiting.clear()
        clients = list(self.clients.values())
        self.clients.clear()
        if self._stopping:
            log.info("watcher_stopped", status=code)
        else:
            lived = asyncio.get_running_loop().time() - self._started_at
            self.deaths = 1 if lived >= BACKOFF_RESET else self.deaths + 1
            if clients:
                self.restarts += 1
            log.warning("watcher_died", status=code, sessions=len(clients), deaths=self.deaths,
                        next_delay=self.restart_delay)  # fmt: skip
        for client in clients:
            client.on_watcher_died()

    async def _request(self, key: tuple[str, int], command: dict[str, Any], timeout: float) -> dict[str, Any]:
        await self.ensure_started()
        assert self.child is not None
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        try:
            self.child.write(json.dumps(command).encode() + b"\n")
        except OSError as err:
            self._waiting.pop(key, None)
            raise TracerFailed("the ptrace watcher is gone") from err
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self._waiting.pop(key, None)
            raise TracerFailed(f"the ptrace watcher did not answer {command['op']} within {timeout} s") from None

    async def seize(self, client: WatchClient, pid: int, start: int, follow_forks: bool, timeout: float) -> None:
        self.clients[pid] = client
        command = {"op": "seize", "pid": pid, "start": start, "follow_forks": follow_forks}
        try:
            event = await self._request(("seize", pid), command, timeout)
        except BaseException:
            self.clients.pop(pid, None)
            # the seize may still succeed in the watcher: let go of it then
            self._send({"op": "release", "pid": pid})
            raise
        if event.get("event") != "seized":
            self.clients.pop(pid, None)
            error = str(event.get("error", "seize failed"))
            if "reused" in error or "ended" in error or "no such process" in error:
                raise TargetGone(error)
            raise TracerFailed(f"watch could not attach: {error}")

    async def release(self, pid: int, timeout: float = 10.0) -> None:
        """Detach from pid, leaving it running; the client stops hearing of it."""
        if self.child is None or self.child.returncode is not None:
            self.clients.pop(pid, None)
            return
        try:
            await self._request(("release", pid), {"op": "release", "pid": pid}, timeout)
        finally:
            self.clients.pop(pid, None)

    async def finish(self, pid: int, timeout: float = 5.0) -> None:
        """Let a held crash die of its signal (the watcher detaches it delivering it)."""
        if self.child is None or self.child.returncode is not None:
            return  # a dead watcher has already let it die
        with contextlib.suppress(TracerFailed):
            await self._request(("finish", pid), {"op": "finish", "pid": pid}, timeout)

    def forget(self, pid: int, client: WatchClient | None = None) -> None:
        """Stop routing pid's events (to ``client`` only, when given: a newer
        session of the same process keeps its own)."""
        if client is None or self.clients.get(pid) is client:
            self.clients.pop(pid, None)

    async def stop(self, timeout: float = 5.0) -> None:
        """End of input: the watcher releases everything and exits."""
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
    """The running loop's supervisor if one was made (None: watch never used)."""
    return _supervisors.current()


def supervisor() -> WatchSupervisor:
    """The supervisor of the running event loop (one daemon, one watcher)."""
    return _supervisors.get()
