"""The unix-socket server: framing, peer credentials, per-connection isolation.

Binds the socket (umask first, then 0660 and ``socket_group``, else 0600),
replacing only a dead socket file; under socket activation it takes systemd's
and never unlinks it. A request with ``"ack": true`` gets ``{"ack": true}``
when its handler calls ``ack``, then its reply.

Security: hostile bytes arrive here. Frames are capped (oversize: error, then
close); idle connections close; connections are capped in total and per peer.
Credentials are SO_PEERCRED's, taken once at accept.

Diagnostics: an exception for one connection is an error reply to it only
(``{"ok": false, "error": CODE, "message": TEXT}``), logged; cancellation is
re-raised. The first accept is logged with the time since exec.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from tracerd.daemon.auth import Peer, peer_of
from tracerd.errors import ConfigError, TracerdError
from tracerd.protocol import ACK, MAX_REQUEST_BYTES, Ack, ProtocolError, Request, encode, error_reply, parse_request

log = structlog.get_logger("tracerd.daemon.server")

# (request, caller, ack): ack() sends {"ack": true} if the request asked for it
Handler = Callable[[Request, Peer, Ack], Awaitable[dict[str, Any]]]


class Server:
    def __init__(
        self,
        path: Path,
        handler: Handler,
        *,
        group_gid: int | None = None,
        idle_timeout: float = 30.0,
        max_connections: int = 512,
        max_per_peer: int = 32,
        on_bad_request: Callable[[], None] | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        self.path = path
        self.inherited = sock  # systemd's listening socket (socket activation), else None
        self.handler = handler
        self.group_gid = group_gid
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_per_peer = max_per_peer
        self.on_bad_request = on_bad_request or (lambda: None)
        self._server: asyncio.AbstractServer | None = None
        self._per_peer: Counter[tuple[str, int]] = Counter()
        self._connections = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._accepted = False

    async def start(self) -> None:
        if self.inherited is not None:
            sock = self.inherited
            set_access(self.path, self.group_gid)
        else:
            sock = bind_socket(self.path, self.group_gid)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_REQUEST_BYTES + 1)

    async def close(self) -> None:
        """Stop accepting; requests in flight are cancelled."""
        if self._server is not None:
            self._server.close()
            if self.inherited is None:  # systemd's socket stays for the next tracerd
                with contextlib.suppress(OSError):
                    self.path.unlink()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        if not self._accepted:
            self._accepted = True
            log.info("first_accept", since_exec_ms=round(seconds_since_exec() * 1000),
                     activated=self.inherited is not None)  # fmt: skip
        peer = peer_of(writer.get_extra_info("socket"))
        key = _peer_key(peer)
        self._connections += 1
        self._per_peer[key] += 1
        try:
            if self._connections > self.max_connections or self._per_peer[key] > self.max_per_peer:
                await self._reply(writer, error_reply("busy", "too many connections; try again"))
                return
            await self._converse(reader, writer, peer)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stopped reading: its problem only
        except Exception:
            log.exception("connection_failed", peer=peer.pid)
        finally:
            self._connections -= 1
            self._per_peer[key] -= 1
            if self._per_peer[key] <= 0:
                del self._per_peer[key]
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), timeout=1.0)
            self._tasks.discard(task)

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        while True:
            try:
                frame = await asyncio.wait_for(reader.readuntil(b"\n"), self.idle_timeout)
            except asyncio.IncompleteReadError as err:
                if err.partial.strip():
                    self.on_bad_request()
                    await self._reply(writer, error_reply("bad_request", "request not terminated by a newline"))
                return
            except asyncio.LimitOverrunError:
                self.on_bad_request()
                await self._reply(
                    writer, error_reply("bad_request", f"request too large (over {MAX_REQUEST_BYTES} bytes)")
                )
                return
            except TimeoutError:
                return
            if not frame.strip():
                continue
            try:
                request = parse_request(frame)
            except ProtocolError as err:
                self.on_bad_request()
                await self._reply(writer, error_reply("bad_request", str(err)))
                continue
            try:
                reply = await self.handler(request, peer, _acknowledger(writer, request))
            except TracerdError as err:
                reply = error_reply(err.code, str(err))
            except Exception as err:
                log.exception("request_failed", op=request.op)
                reply = error_reply("internal", f"internal error: {type(err).__name__}: {err}")
            await self._reply(writer, reply)

    async def _reply(self, writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
        writer.write(encode(reply))
        await asyncio.wait_for(writer.drain(), self.idle_timeout)


def _acknowledger(writer: asyncio.StreamWriter, request: Request) -> Ack:
    """The ``ack`` callback for one request: the first call writes ACK, if asked for.

    Queued, not drained (it never blocks nor raises); the reply that follows is drained."""
    wanted = [request.ack]

    def ack() -> None:
        if wanted[0] and not writer.is_closing():
            wanted[0] = False
            writer.write(encode(ACK))

    return ack


def _peer_key(peer: Peer) -> tuple[str, int]:
    """Whose share of the connections: a non-root uid as a whole, root per process
    (each Postfix daemon start is a root hook of its own; a burst must all get in)."""
    return ("pid", peer.pid) if peer.uid == 0 else ("uid", peer.uid)


def seconds_since_exec() -> float:
    """How long this process has existed (its start time in /proc), for first_accept."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            start = int(stat.read().rsplit(b")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime", "rb") as uptime:
            return max(0.0, float(uptime.read().split()[0]) - start)
    except (OSError, ValueError, IndexError):
        return -1.0


def set_access(path: Path, group_gid: int | None) -> None:
    """The socket's mode and group from the config: 0660 and socket_group, else 0600."""
    try:
        if group_gid is not None:
            os.chown(path, -1, group_gid)
        os.chmod(path, 0o660 if group_gid is not None else 0o600)
    except OSError as err:
        raise ConfigError(f"cannot set the mode or group of {path}: {err.strerror}", key="socket") from err


def bind_socket(path: Path, group_gid: int | None) -> socket.socket:
    """A listening unix socket at ``path``, replacing only a dead socket file."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(f"refusing to replace {path}: it is not a socket", key="socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale: nobody listens
        else:
            raise ConfigError(f"another tracerd already listens on {path}", key="socket")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot bind {path}: {err.strerror}", key="socket") from err
    finally:
        os.umask(old_umask)
    if group_gid is not None:
        os.chown(path, -1, group_gid)
        os.chmod(path, 0o660)
    # a burst of Postfix daemon starts must not find the backlog full
    sock.listen(1024)
    sock.setblocking(False)
    return sock
