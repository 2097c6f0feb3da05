"""Wire protocol between tracerd and its clients: JSON lines over a unix socket.

Each request is one JSON object on one line; each reply is one JSON object on
one line: ``{"ok": true, ...}`` or ``{"ok": false, "error": CODE, "message":
TEXT}``.  CODE is one of the stable codes of :mod:`tracerd.errors`.

A hook request may ask for an acknowledgement with ``"ack": true``: once the
daemon has read and authorised it, before the tracer starts, it writes the
interim line :data:`ACK` (``{"ack": true}``), then the final reply.  A
refusal comes instead of the acknowledgement, as the only line.  So the hook
can tell a hung daemon (no acknowledgement within ``--ack-timeout``) from a
slow attach (acknowledged, no reply yet within ``--timeout``).  Without the
field, and for every other op, there is one reply and nothing else.

Security: everything in a request is hostile until :func:`parse_request` has
checked it.  A frame is capped at :data:`MAX_REQUEST_BYTES`; names must match
:data:`NAME_RE`; pids are positive integers no larger than the kernel allows;
unknown fields are refused, so a typo is an error rather than a silent no-op.

Diagnostics: every refusal raises :class:`~tracerd.errors.BadRequest` with a
one-line message fit to show an administrator.

Standard library only: the hook imports this module and must start fast.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_REQUEST_BYTES = 16 * 1024
MAX_PID = 4_194_304  # PID_MAX_LIMIT on 64-bit Linux
NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
TRACER_RE = re.compile(r"[a-z]{1,16}")
CRASH_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")

# op -> (required fields, optional fields)
OPS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "hook": (frozenset({"name", "pid"}), frozenset({"tracer", "ack"})),
    "attach": (frozenset({"pid"}), frozenset({"name", "tracer"})),
    "detach": (frozenset({"pid"}), frozenset()),
    "status": (frozenset(), frozenset()),
    "show": (frozenset({"pid"}), frozenset()),
    "crashes": (frozenset(), frozenset()),
    "crash": (frozenset({"id"}), frozenset()),
    "where": (frozenset({"pid"}), frozenset()),
}
READ_ONLY_OPS = frozenset({"status", "show", "crashes", "crash"})


class ProtocolError(ValueError):
    """A frame or field is malformed (mapped to BadRequest by the server)."""


@dataclass(frozen=True)
class Request:
    op: str
    pid: int | None = None
    name: str | None = None
    tracer: str | None = None
    id: str | None = None
    ack: bool = False  # the client wants ACK before the final reply (hook only)


def check_name(value: object) -> str:
    """A process name as Postfix passes it: ``[A-Za-z0-9._-]{1,64}``, no leading dot."""
    if not isinstance(value, str):
        raise ProtocolError("name must be a string")
    if not NAME_RE.fullmatch(value):
        shown = value if len(value) <= 70 else value[:67] + "..."
        raise ProtocolError(
            f"bad process name {json.dumps(shown)}: "
            "want 1-64 of A-Z a-z 0-9 . _ -, not starting with a dot"
        )
    return value


def check_pid(value: object) -> int:
    """A pid: a positive integer (JSON number, not bool, not float)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError("pid must be an integer")
    if not 1 <= value <= MAX_PID:
        raise ProtocolError(f"bad pid {value}: want 1..{MAX_PID}")
    return value


def parse_request(frame: bytes) -> Request:
    """Decode and validate one request line."""
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
    if not isinstance(op, str) or op not in OPS:
        raise ProtocolError(f"unknown op {json.dumps(op)[:40]}")
    required, optional = OPS[op]
    fields = set(data) - {"op"}
    missing = required - fields
    if missing:
        raise ProtocolError(f"{op}: missing field {sorted(missing)[0]}")
    unknown = fields - required - optional
    if unknown:
        raise ProtocolError(f"{op}: unknown field {json.dumps(sorted(unknown)[0])[:40]}")
    values: dict[str, Any] = {"op": op}
    if "pid" in data:
        values["pid"] = check_pid(data["pid"])
    if data.get("name") is not None:
        values["name"] = check_name(data["name"])
    if data.get("tracer") is not None:
        tracer = data["tracer"]
        if not isinstance(tracer, str) or not TRACER_RE.fullmatch(tracer):
            raise ProtocolError("tracer must be a tracer name such as strace")
        values["tracer"] = tracer
    if "ack" in data:
        if not isinstance(data["ack"], bool):
            raise ProtocolError("ack must be true or false")
        values["ack"] = data["ack"]
    if "id" in data:
        crash_id = data["id"]
        if not isinstance(crash_id, str) or not CRASH_ID_RE.fullmatch(crash_id):
            raise ProtocolError("id must be a crash id")
        values["id"] = crash_id
    return Request(**values)


ACK: dict[str, Any] = {"ack": True}
# what a request handler calls once it accepts a hook: sends ACK if asked for
Ack = Callable[[], None]


def encode(reply: dict[str, Any]) -> bytes:
    """One reply line."""
    return json.dumps(reply, separators=(",", ":"), default=str).encode() + b"\n"


def error_reply(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": code, "message": message}
