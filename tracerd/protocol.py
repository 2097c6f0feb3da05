"""Wire protocol between tracerd and its clients: JSON lines over a unix socket.

One request object per line; one reply per line, ``{"ok": true, ...}`` or
``{"ok": false, "error": CODE, "message": TEXT}`` (CODE from tracerd.errors).
A hook with ``"ack": true`` first gets :data:`ACK` once authorised (a refusal
replaces it), so the hook tells a hung daemon from a slow attach.  Every op is
declared once, in :data:`OPERATIONS`.  pftrace-hook does not import this: it
tells ACK and success by their first bytes, so keep encode's shape
(tests/test_hook_startup.py).

Security: a request is hostile until :func:`parse_request` checks it: size
cap, name and pid ranges, unknown fields refused.

Diagnostics: every refusal is a one-line :class:`ProtocolError`, answered as
``bad_request``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tracerd.crash.report import CRASH_ID_RE  # the crash format is crash/'s

MAX_REQUEST_BYTES = 16 * 1024
MAX_PID = 4_194_304  # PID_MAX_LIMIT on 64-bit Linux
NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
TRACER_RE = re.compile(r"[a-z]{1,16}")


class ProtocolError(ValueError):
    """A malformed frame or field (answered as BadRequest)."""


@dataclass(frozen=True)
class Request:
    op: str
    pid: int | None = None
    name: str | None = None
    tracer: str | None = None
    id: str | None = None
    ack: bool = False  # the client wants ACK before the final reply (hook only)
    hold: float | None = None  # catch: seconds a caught process waits for the human's gdb
    older_than: float | None = None  # crash-delete: seconds


def check_name(value: object) -> str:
    if not isinstance(value, str):
        raise ProtocolError("name must be a string")
    if not NAME_RE.fullmatch(value):
        shown = value if len(value) <= 70 else value[:67] + "..."
        raise ProtocolError(
            f"bad process name {json.dumps(shown)}: want 1-64 of A-Z a-z 0-9 . _ -, not starting with a dot"
        )
    return value


def check_pid(value: object) -> int:
    """A positive integer (not bool, not float)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError("pid must be an integer")
    if not 1 <= value <= MAX_PID:
        raise ProtocolError(f"bad pid {value}: want 1..{MAX_PID}")
    return value


def check_tracer(value: object) -> str:
    if not isinstance(value, str) or not TRACER_RE.fullmatch(value):
        raise ProtocolError("tracer must be a tracer name such as strace")
    return value


def check_crash_id(value: object) -> str:
    if not isinstance(value, str) or not CRASH_ID_RE.fullmatch(value):
        raise ProtocolError("id must be a crash id")
    return value


def check_flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError("ack must be true or false")
    return value


def check_hold(value: object) -> float:
    """Seconds of a --hold (the daemon caps it at max_gdb_hold)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
        raise ProtocolError("hold must be a number of seconds, 0 < S <= 3600")
    return float(value)


MAX_AGE = 100 * 366 * 86400.0


def check_age(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_AGE:
        raise ProtocolError("older_than must be a number of seconds, 0 < S <= 100 years")
    return float(value)


@dataclass(frozen=True)
class Field:
    """A request field: its checker, and whether JSON null means "absent"."""

    check: Callable[[object], Any]
    nullable: bool = False


FIELDS: dict[str, Field] = {
    "pid": Field(check_pid),
    "name": Field(check_name, nullable=True),
    "tracer": Field(check_tracer, nullable=True),
    "ack": Field(check_flag),
    "id": Field(check_crash_id),
    "hold": Field(check_hold),
    "older_than": Field(check_age),
}


@dataclass(frozen=True)
class Operation:
    """One op: fields from :data:`FIELDS`; ``read_only`` admits socket_group; ``handler`` is the
    TracerdService method.  A new op also needs a renderer in tracerd.ctl.main.RENDERERS."""

    name: str
    required: frozenset[str] = frozenset()
    optional: frozenset[str] = frozenset()
    read_only: bool = False
    handler: str = ""

    @property
    def fields(self) -> frozenset[str]:
        return self.required | self.optional


def _op(name: str, required: str = "", optional: str = "", *, read_only: bool = False) -> Operation:
    handler = f"op_{name.replace('-', '_')}"
    return Operation(name, frozenset(required.split()), frozenset(optional.split()), read_only, handler)


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        _op("hook", "name pid", "tracer ack"),
        _op("attach", "pid", "name tracer"),
        _op("detach", "pid"),
        _op("where", "pid"),
        _op("status", read_only=True),
        _op("show", "pid", read_only=True),
        _op("crashes", read_only=True),
        _op("crash", "id", read_only=True),
        # docs/debugging.md, "Interactive debugging": root only
        _op("handoff", "pid"),
        _op("catch", "name", "hold ack"),
        # docs/crashes.md, "Crash retention": root only
        _op("crash-delete", "", "id older_than"),
        # docs/crashes.md, "Cores and retrace": root only
        _op("crash-retrace", "id"),
    )
}


def parse_request(frame: bytes) -> Request:
    if len(frame) > MAX_REQUEST_BYTES:
        raise ProtocolError(f"request too large (over {MAX_REQUEST_BYTES} bytes)")
    try:
        data = json.loads(frame)
    except (UnicodeDecodeError, ValueError) as err:
        raise ProtocolError(f"malformed JSON: {err}") from err
    except RecursionError as err:  # "[[[[..." within the size cap
        raise ProtocolError("malformed JSON: nested too deeply") from err
    if not isinstance(data, dict):
        raise ProtocolError("request must be a JSON object")
    op = data.get("op")
    if not isinstance(op, str) or op not in OPERATIONS:
        raise ProtocolError(f"unknown op {json.dumps(op)[:40]}")
    operation = OPERATIONS[op]
    fields = set(data) - {"op"}
    missing = operation.required - fields
    if missing:
        raise ProtocolError(f"{op}: missing field {sorted(missing)[0]}")
    unknown = fields - operation.fields
    if unknown:
        raise ProtocolError(f"{op}: unknown field {json.dumps(sorted(unknown)[0])[:40]}")
    values: dict[str, Any] = {"op": op}
    for key, spec in FIELDS.items():
        if key not in fields:
            continue
        if data[key] is None and spec.nullable:
            continue
        values[key] = spec.check(data[key])
    return Request(**values)


ACK: dict[str, Any] = {"ack": True}
# called by a handler once it accepts a hook: sends ACK if asked for
Ack = Callable[[], None]


def encode(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply, separators=(",", ":"), default=str).encode() + b"\n"


def error_reply(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": code, "message": message}
