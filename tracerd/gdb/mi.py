"""An asyncio client for gdb's machine interface (MI3), parsed by pygdbmi.

Every command carries a token; :meth:`GdbMI.command` waits for that token's
result record, bounded (why not pygdbmi's controller: docs/design.md,
"Development"). ``*stopped`` records go to a queue. Commands are serialized,
so console output before a result is that command's; a timed-out command's
late result discards what the current one gathered so far.

Security: gdb runs from an argv list with ``-nx``; CLI text is quoted as an
MI c-string, so a hostile name cannot inject commands.

Diagnostics: ``^error`` raises MIError with gdb's message; a timeout raises
TracerFailed naming the command; gdb's death fails every pending command.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from pygdbmi.gdbmiparser import parse_response

from tracerd.errors import TracerFailed
from tracerd.spawn import Child

GDB_ARGV = ("gdb", "--interpreter=mi3", "-nx", "-q")
# one MI record is one line: ``-thread-info`` of 300 threads is ~140 KB
MAX_RECORD = 32 * 1024 * 1024
SETTINGS = (
    "-gdb-set mi-async on",
    "-gdb-set pagination off",
    "-gdb-set confirm off",
    "-gdb-set width 0",
    "-gdb-set height 0",
    "-gdb-set print thread-events off",
    "-gdb-set print inferior-events off",
    # "target:" needs CAP_SYS_ADMIN to enter the target's mount namespace: read ours
    "-gdb-set sysroot /",
    # no network, and a prompt would stall the session
    "-gdb-set debuginfod enabled off",
)


class MIError(TracerFailed):
    """gdb answered ^error."""


@dataclass
class Result:
    message: str
    payload: dict[str, Any]
    console: str = ""


@dataclass
class _Pending:
    future: asyncio.Future[Result]
    console: list[str] = field(default_factory=list)


def quote(text: str) -> str:
    """An MI c-string: JSON's escaping is a safe subset of C's."""
    return json.dumps(text)


class GdbMI:
    def __init__(self) -> None:
        self._tokens = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._current: _Pending | None = None
        self._late: set[int] = set()  # tokens of timed-out commands whose result has not come
        self._lock = asyncio.Lock()
        self.stops: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.child: Child | None = None
        self.log: list[str] = []  # gdb's own complaints (&"..."), newest last

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child else None

    async def start(self, *extra: str) -> None:
        self.child = Child([*GDB_ARGV, *extra], self._on_lines, stdin=True, max_line=MAX_RECORD)
        for setting in SETTINGS:
            try:
                await self.command(setting, timeout=30.0)
            except MIError:
                if "debuginfod" not in setting:  # older gdb has no debuginfod
                    raise

    def _on_lines(self, lines: list[str]) -> None:
        for line in lines:
            self._on_line(line)

    def _on_line(self, line: str) -> None:
        if not line or line.startswith("(gdb)"):
            return
        try:
            record = parse_response(line)
        except Exception:  # pygdbmi raises on junk; gdb's own stdout noise is not ours
            return
        kind = record.get("type")
        if kind == "result":
            token = record.get("token") or -1
            if token in self._late:
                self._late.discard(token)
                if self._current is not None:  # what it gathered so far was the late command's
                    self._current.console.clear()
                return
            pending = self._pending.pop(token, None)
            if pending is not None and not pending.future.done():
                payload = record.get("payload") or {}
                pending.future.set_result(
                    Result(str(record.get("message")), payload if isinstance(payload, dict) else {},
                           "".join(pending.console))
                )  # fmt: skip
        elif kind == "notify" and record.get("message") == "stopped":
            self.stops.put_nowait(record.get("payload") or {})
        elif kind == "console" and self._current is not None:
            self._current.console.append(str(record.get("payload") or ""))
        elif kind == "log":
            self.log.append(str(record.get("payload") or "").strip())
            del self.log[:-20]

    async def command(self, text: str, timeout: float = 10.0) -> Result:
        """Send one MI command; wait for its own result record, bounded."""
        if self.child is None or self.child.returncode is not None:
            raise TracerFailed("gdb is not running")
        async with self._lock:
            token = next(self._tokens)
            pending = _Pending(asyncio.get_running_loop().create_future())
            self._pending[token] = pending
            self._current = pending
            try:
                self.child.write(f"{token}{text}\n".encode())
                exited: asyncio.Future[Any] = asyncio.ensure_future(self.child.wait())
                waiting: set[asyncio.Future[Any]] = {pending.future, exited}
                done, _ = await asyncio.wait(waiting, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                exited.cancel()
            except (BrokenPipeError, OSError) as err:
                raise TracerFailed(f"gdb went away during {text!r}") from err
            finally:
                self._pending.pop(token, None)
                self._current = None
            if pending.future not in done:
                if self.child.returncode is not None:
                    raise TracerFailed(f"gdb exited during {text!r}: {self.last_complaint()}")
                self._late.add(token)
                raise TracerFailed(f"gdb did not answer {text!r} within {timeout} s")
            result = pending.future.result()
        if result.message == "error":
            raise MIError(str(result.payload.get("msg", "gdb error")))
        return result

    async def console(self, cli: str, timeout: float = 30.0) -> str:
        """Run a CLI command and return what it printed."""
        result = await self.command(f"-interpreter-exec console {quote(cli)}", timeout=timeout)
        return result.console

    async def evaluate(self, expression: str, timeout: float = 10.0) -> str | None:
        try:
            result = await self.command(f"-data-evaluate-expression {quote(expression)}", timeout=timeout)
        except MIError:
            return None
        value = result.payload.get("value")
        return str(value) if value is not None else None

    def last_complaint(self) -> str:
        meaningful = [line for line in self.log if line]
        return meaningful[-1] if meaningful else "no message"

    async def close(self, timeout: float = 5.0) -> None:
        """Ask gdb to exit; kill it if it will not."""
        if self.child is None:
            return
        if self.child.returncode is None:
            with contextlib.suppress(OSError):
                self.child.write(b"-gdb-exit\n")
            await self.child.exit_or_kill(timeout)
        self.child.close()
