"""Where the metrics go: an HTTP endpoint on the loop, and a node_exporter textfile.

:class:`MetricsEndpoint` answers ``GET /metrics`` on ``[metrics] listen``
on tracerd's asyncio loop (so the registry is never read mid-change);
:class:`Textfile` rewrites ``[metrics] textfile`` atomically every interval
and at shutdown.  See docs/fleet.md.

Security: a scraper is untrusted: a request head of at most 8 KiB in 5 s,
only GET/HEAD of ``/metrics`` or ``/``, 16 connections at once, one answer
each.  A routable address needs ``allow_remote``; a unix socket is 0666, as
open as a loopback port; a stale socket is replaced, any other file refused.

Diagnostics: a port in use, a bad socket path or a missing textfile
directory give one warning each (``metrics_unavailable``,
``metrics_textfile_failed``) and tracing goes on; ``metrics_textfile_recovered``
says when the textfile works again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import choose_encoder

from tracerd import atomic
from tracerd.journalmetricsconfig import parse_listen

log = structlog.get_logger("tracerd")
MAX_HEAD = 8192
HEAD_TIMEOUT = 5.0
MAX_CLIENTS = 16
_STATUS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


class MetricsEndpoint:
    """``GET /metrics`` on a loopback address or a unix socket."""

    def __init__(self, registry: CollectorRegistry, listen: str) -> None:
        self.registry = registry
        self.listen = listen
        self.error: str | None = None
        self.address: str | None = None  # where it listens, once it does (port 0 resolved)
        self.scrapes = 0
        self._server: asyncio.Server | None = None
        self._clients = 0

    async def start(self) -> bool:
        """Listen; on failure one warning, and False (tracing goes on)."""
        kind, host, port = parse_listen(self.listen)
        try:
            if kind == "unix":
                _clear_stale_socket(host)
                self._server = await asyncio.start_unix_server(self._serve, host, limit=MAX_HEAD)
                os.chmod(host, 0o666)  # noqa: S103 (as open as a loopback port, see Security)
                self.address = host
            else:
                self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD,
                                                          reuse_address=True)  # fmt: skip
                bound = self._server.sockets[0].getsockname()
                self.address = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
        except OSError as err:
            self.error = f"cannot listen on {self.listen}: {os.strerror(err.errno) if err.errno else err}"
            log.warning("metrics_unavailable", listen=self.listen, error=self.error,
                        consequence="metrics are not served; tracing goes on")  # fmt: skip
            return False
        log.info("metrics_listening", address=self.address)
        return True

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)
        if self.listen.startswith("/"):
            with contextlib.suppress(OSError):
                os.unlink(self.listen)
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients >= MAX_CLIENTS:
            writer.close()
            return
        self._clients += 1
        try:
            status, headers, body = await self._answer(reader)
            head = f"HTTP/1.1 {status} {_STATUS[status]}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
            writer.write(head.encode("latin-1") + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                         .encode() + body)  # fmt: skip
            await asyncio.wait_for(writer.drain(), HEAD_TIMEOUT)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients -= 1
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, list[tuple[str, str]], bytes]:
        plain = [("Content-Type", "text/plain; charset=utf-8")]
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except (asyncio.LimitOverrunError, ValueError):
            return 400, plain, b"request head too large\n"
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, plain, b"bad request line\n"
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, [*plain, ("Allow", "GET, HEAD")], b"only GET\n"
        if target not in ("/metrics", "/"):
            return 404, plain, b"see /metrics\n"
        accept = next((line.split(":", 1)[1].strip() for line in lines[1:]
                       if line.lower().startswith("accept:")), "")  # fmt: skip
        encoder, content_type = choose_encoder(accept)
        body = encoder(self.registry)
        self.scrapes += 1
        return 200, [("Content-Type", content_type)], b"" if method == "HEAD" else body


def _clear_stale_socket(path: str) -> None:
    """A socket left by an earlier tracerd is replaced; any other file is refused."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(17, f"{path} exists and is not a socket")
    os.unlink(path)


class Textfile:
    """The exposition in node_exporter's textfile directory, rewritten every interval."""

    def __init__(self, registry: CollectorRegistry, path: str, interval: float) -> None:
        self.registry = registry
        self.path = Path(path)
        self.interval = interval
        self.writes = 0
        self.error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.write()
        self._task = asyncio.get_running_loop().create_task(self._every())

    async def _every(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.write()

    def write(self) -> bool:
        """One atomic write; the first failure in a row warns, later ones are quiet."""
        try:
            atomic.write_file(self.path, generate_latest(self.registry), 0o644)
        except OSError as err:
            error = f"cannot write {self.path}: {err.strerror or err}"
            if self.error is None:
                log.warning("metrics_textfile_failed", textfile=str(self.path), error=error,
                            consequence="retried every interval; tracing goes on")  # fmt: skip
            self.error = error
            return False
        if self.error is not None:
            log.info("metrics_textfile_recovered", textfile=str(self.path))
        self.error = None
        self.writes += 1
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.write()  # the final values
