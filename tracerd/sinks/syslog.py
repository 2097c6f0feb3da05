"""Syslog forwarding: session events, crash summaries and (where a rule asks) tracer output.

:class:`SyslogSink` owns one connection to ``[syslog] address``: a unix path
(local format), ``udp://`` (RFC 5424) or ``tcp://`` (RFC 5424, octet
counting). :class:`SessionSyslog` is one session's view: ``NAME[PID]: `` once
per message, tracer lines rate limited, summaries not. Loop thread only: no
locks; other threads hop onto the loop first.

Security: the address is root's config. Text is not trusted: control
characters become ``?``, invalid UTF-8 is replaced, a record is cut at 8 KiB.

Diagnostics: :meth:`SyslogSink.send` never blocks nor raises: what cannot go
out is dropped and counted (``dropped``, ``last_error``). Reconnects are lazy
(at least 1 s apart; tcp backs off to 30 s, keeps 256 KiB waiting); names
resolve on a background thread; a loop timer flushes waiting frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from tracerd.config import SyslogConfig
from tracerd.sinks.syslogfmt import (
    DEFAULT_PORT,
    LOG_CRIT,
    LOG_ERR,
    LOG_INFO,
    LOG_NOTICE,
    LOG_WARNING,
    MAX_RECORD_BYTES,
    Endpoint,
    clean,
    fit,
    format_local,
    format_rfc5424,
    header_field,
    parse_address,
)

__all__ = [
    "DEFAULT_PORT", "LOG_CRIT", "LOG_ERR", "LOG_INFO", "LOG_NOTICE", "LOG_WARNING", "MAX_PENDING_BYTES",
    "MAX_RECORD_BYTES", "Endpoint", "SessionSyslog", "SyslogSink", "clean", "fit", "format_local",
    "format_rfc5424", "parse_address",
]  # fmt: skip

MAX_PENDING_BYTES = 256 << 10
RETRY_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
CONNECT_TIMEOUT = 10.0
PUMP_INTERVAL = 0.1  # retry of waiting frames while the socket is full or connecting
OWN_PREFIX = "tracerd: "  # tracerd's own lines in a per-process log start so
# busy receiver or oversize record: drop it, keep the socket; other errors reconnect
_BUSY = {errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EMSGSIZE}
_SEND_FLAGS = socket.MSG_DONTWAIT | getattr(socket, "MSG_NOSIGNAL", 0)


class SyslogSink:
    """One connection to the syslog receiver; send() from the loop thread only."""

    def __init__(self, config: SyslogConfig, *, app: str = "tracerd", hostname: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.config = config
        self.endpoint = parse_address(config.address)
        self.app = header_field(app, 48)
        self.hostname = header_field(hostname or socket.gethostname(), 255)
        self.pid = os.getpid()
        self.sent = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._clock = clock
        self._closed = False
        self._sock: socket.socket | None = None
        self._stream = self.endpoint.kind == "tcp"  # a unix path may turn out to be a stream
        self._connected = False
        self._connect_started = 0.0
        self._retry_at = 0.0
        self._backoff = RETRY_SECONDS
        self._frames: deque[bytes] = deque()  # stream: whole frames waiting to go
        self._offset = 0  # bytes of _frames[0] already sent
        self._pending = 0
        self._addr: tuple[int, Any] | None = None
        self._resolving = False
        self._timer: asyncio.TimerHandle | None = None
        if self.endpoint.kind != "unix":
            self._resolve()

    def send(self, severity: int, message: str, sd: tuple[str, str] | None = None) -> bool:
        """Send one record now or queue it (tcp); False when dropped. Never blocks.

        ``sd``: (MSGID, structured data), RFC 5424 only."""
        if not self.config.enabled or self._closed:
            return False
        try:
            return self._send(severity, message, sd)
        except Exception as err:  # a sink bug must not reach the loop
            self._note(f"internal error: {err}")
            self.dropped += 1
            return False
        finally:
            self._arm()

    def flush(self) -> None:
        """Stream: push waiting frames now (send() and the sink's own timer do it too)."""
        if self._closed or not self._stream:
            return
        with contextlib.suppress(Exception):
            self._maybe_connect()
            self._pump()
        self._arm()

    def close(self) -> None:
        """Push out what the socket takes now, drop (and count) the rest, close."""
        if self._closed:
            return
        with contextlib.suppress(Exception):
            self._pump()
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.dropped += len(self._frames)
        self._frames.clear()
        self._pending = 0
        self._disconnect()

    # -- internals ----------------------------------------------------------

    def _arm(self) -> None:
        """Frames waiting: a loop timer flushes them later (no running loop: flush() is the caller's)."""
        if self._timer is not None or self._closed or not self._frames:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        delay = PUMP_INTERVAL
        if self._sock is None:  # backing off: not before the reconnect is due
            delay = min(max(self._retry_at - self._clock(), PUMP_INTERVAL), MAX_BACKOFF_SECONDS)
        self._timer = loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.flush()

    def _send(self, severity: int, message: str, sd: tuple[str, str] | None = None) -> bool:
        pri = self.config.facility_code * 8 + severity
        now = time.time()
        if self.endpoint.kind == "unix":
            record = format_local(pri, self.app, self.pid, clean(message), now=now)
        else:
            msgid, data = sd or ("-", "-")
            record = format_rfc5424(pri, self.hostname, self.app, self.pid, clean(message), now=now,
                                    msgid=msgid, sd=data)  # fmt: skip
        record = fit(record)
        self._maybe_connect()
        if self._stream:
            accepted = self._queue(record)
            self._pump()
            return accepted
        if self._sock is None:
            self.dropped += 1
            return False
        try:
            self._sock.send(record, _SEND_FLAGS)
        except OSError as err:
            self.dropped += 1
            self._note(f"send to {self.config.address}: {err.strerror or err}")
            if err.errno not in _BUSY:
                # receiver gone or restarted: a fresh socket, but not before a second
                self._disconnect()
                self._retry_at = self._clock() + RETRY_SECONDS
            return False
        self.sent += 1
        self.last_error = None
        return True

    def _queue(self, record: bytes) -> bool:
        # tcp: RFC 6587 octet counting; a unix stream: NUL-terminated, like glibc
        tcp = self.endpoint.kind == "tcp"
        frame = b"%d %s" % (len(record), record) if tcp else record + b"\0"
        if self._pending + len(frame) > MAX_PENDING_BYTES:
            self.dropped += 1
            if self.last_error is None:  # keep the cause (say, connection refused)
                self._note(f"{self.config.address}: {MAX_PENDING_BYTES} bytes waiting; dropping")
            return False
        self._frames.append(frame)
        self._pending += len(frame)
        return True

    def _maybe_connect(self) -> None:
        if self._sock is not None or self._clock() < self._retry_at:
            return
        try:
            self._sock = self._open()
        except OSError as err:
            self._note(f"connect {self.config.address}: {err.strerror or err}")
            self._back_off()

    def _open(self) -> socket.socket:
        endpoint = self.endpoint
        family: int
        target: Any
        if endpoint.kind == "unix":
            if not self._stream:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                try:
                    sock.setblocking(False)
                    sock.connect(endpoint.path)
                except OSError as err:
                    sock.close()
                    if err.errno != errno.EPROTOTYPE:
                        raise
                    self._stream = True  # a stream /dev/log (syslog-ng style)
                else:
                    return sock
            family, kind, target = socket.AF_UNIX, socket.SOCK_STREAM, endpoint.path
        else:
            if self._addr is None:
                self._resolve()
                raise OSError(errno.EAGAIN, f"resolving {endpoint.host}")
            family, target = self._addr
            kind = socket.SOCK_DGRAM if endpoint.kind == "udp" else socket.SOCK_STREAM
        sock = socket.socket(family, kind)
        sock.setblocking(False)
        code = sock.connect_ex(target)
        # a unix stream connect never says EINPROGRESS: EAGAIN there is a full backlog
        if code not in (0, errno.EISCONN) and not (kind == socket.SOCK_STREAM
                                                    and code == errno.EINPROGRESS):  # fmt: skip
            sock.close()
            raise OSError(code, os.strerror(code))
        self._connected = code != errno.EINPROGRESS
        self._connect_started = self._clock()
        return sock

    def _pump(self) -> None:
        """Stream: hand waiting frames to the kernel until it would block."""
        sock = self._sock
        if sock is None or (not self._connected and not self._check_connected(sock)):
            return
        while self._frames:
            head = self._frames[0]
            try:
                count = sock.send(memoryview(head)[self._offset :], _SEND_FLAGS)
            except BlockingIOError:
                return
            except OSError as err:
                self._broken(err)
                return
            self._offset += count
            if self._offset == len(head):
                self._frames.popleft()
                self._pending -= len(head)
                self._offset = 0
                self.sent += 1
                self.last_error = None

    def _check_connected(self, sock: socket.socket) -> bool:
        # poll, not select: the daemon may hold more than FD_SETSIZE fds
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        if not poller.poll(0):
            if self._clock() - self._connect_started > CONNECT_TIMEOUT:
                self._broken(OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT)))
            return False
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._broken(OSError(code, os.strerror(code)))
            return False
        self._connected = True
        self._backoff = RETRY_SECONDS
        return True

    def _broken(self, err: OSError) -> None:
        self._note(f"{self.config.address}: {err.strerror or err}")
        if self._offset:
            # half a frame went out: the rest would garble the next connection
            self._pending -= len(self._frames.popleft())
            self._offset = 0
            self.dropped += 1
        self._disconnect()
        self._back_off()

    def _back_off(self) -> None:
        self._retry_at = self._clock() + self._backoff
        if self.endpoint.kind == "tcp":
            self._backoff = min(self._backoff * 2, MAX_BACKOFF_SECONDS)

    def _disconnect(self) -> None:
        sock, self._sock = self._sock, None
        self._connected = False
        if sock is not None:
            sock.close()

    def _note(self, error: str) -> None:
        self.last_error = error

    def _resolve(self) -> None:
        """Numeric addresses at once; names on a background thread (DNS may hang)."""
        try:
            self._addr = _lookup(self.endpoint, socket.AI_NUMERICHOST)
        except OSError:
            pass
        else:
            return
        if not self._resolving:
            self._resolving = True
            threading.Thread(target=self._resolve_name, name="tracerd-syslog-dns",
                             daemon=True).start()  # fmt: skip

    def _resolve_name(self) -> None:
        try:
            self._addr = _lookup(self.endpoint, 0)
        except (OSError, UnicodeError) as err:
            self._note(f"resolve {self.endpoint.host}: {err}")
        finally:
            self._resolving = False


def _lookup(endpoint: Endpoint, flags: int) -> tuple[int, Any]:
    kind = socket.SOCK_DGRAM if endpoint.kind == "udp" else socket.SOCK_STREAM
    family, _, _, _, addr = socket.getaddrinfo(endpoint.host, endpoint.port, type=kind,
                                               flags=flags)[0]  # fmt: skip
    return family, addr


class SessionSyslog:
    """One session's messages: ``NAME[PID]: `` on each, tracer lines rate limited."""

    def __init__(self, sink: SyslogSink, tag: str, max_lines_per_second: int,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.sink = sink
        self.tag = tag
        self.max_lines_per_second = max(1, max_lines_per_second)
        self.suppressed = 0
        self._clock = clock
        self._unreported = 0
        self._window: float | None = None
        self._in_window = 0

    def line(self, text: str) -> None:
        """One line of tracer output at info; over the per-second budget it is counted."""
        now = self._clock()
        if self._window is None or not self._window <= now < self._window + 1.0:
            self.flush()
            self._window = now
            self._in_window = 0
        if self._in_window >= self.max_lines_per_second:
            self.suppressed += 1
            self._unreported += 1
            return
        self._in_window += 1
        self.sink.send(LOG_INFO, self.tagged(text))

    def notice(self, severity: int, text: str) -> None:
        """A summary (crash at crit, failure at warning): never rate limited."""
        self.sink.send(severity, self.tagged(text))

    def flush(self) -> None:
        """Say how many lines the rate limit ate since the last time it was said."""
        if self._unreported:
            count, self._unreported = self._unreported, 0
            self.sink.send(LOG_INFO, f"{self.tag}: {count} lines suppressed (rate limit)")

    def tagged(self, text: str) -> str:
        """``NAME[PID]: TEXT``, the tag once: ``tracerd: NAME[PID] exited`` -> ``NAME[PID]: exited``."""
        if text.startswith(OWN_PREFIX):
            text = text[len(OWN_PREFIX) :]
            if text.startswith(f"{self.tag} ") or text.startswith(f"{self.tag}: "):
                text = text[len(self.tag) :].removeprefix(":").removeprefix(" ")
        return f"{self.tag}: {text}"
