"""journald's native protocol: one datagram of ``KEY=VALUE`` fields per entry.

Sent as sd_journal_sendv() does (length-prefixed values for newlines or
binary; an oversize entry as a sealed memfd), standard library only, so a
journal namespace's socket works too. MESSAGE_IDs and fields: docs/fleet.md.

Security: the socket path is root's config. Field names are ours
(:func:`encode` refuses anything but ``[A-Z0-9_]``); values may hold any bytes
and the length prefix keeps them from forging a field.

Diagnostics: :meth:`JournalSink.send` never blocks nor raises: what journald
cannot take is dropped and counted (``dropped``, ``last_error``), with one
``journal_unavailable`` warning until ``journal_recovered``.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import re
import socket
import stat
import struct
from collections.abc import Mapping
from typing import Any

import structlog

log = structlog.get_logger("tracerd")

JOURNAL_SOCKET = "/run/systemd/journal/socket"
# documented in docs/fleet.md: `journalctl MESSAGE_ID=...`
MESSAGE_CRASH = "0c6e0a9e258b4252923570996a2fc059"
MESSAGE_SESSION_STARTED = "0ebc6f015f5642b683fa1ffe44367abd"
MESSAGE_SESSION_ENDED = "b8944b91a5074f9a9239322fa579f256"
MESSAGE_SESSION_FAILED = "94d1bbbaf04c4966ab3e99bdc98ff6ee"
PRIORITY_CRIT, PRIORITY_WARNING, PRIORITY_INFO = 2, 4, 6
SYSLOG_IDENTIFIER = "tracerd"
_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_FLAGS = socket.MSG_DONTWAIT | getattr(socket, "MSG_NOSIGNAL", 0)
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
Fields = Mapping[str, object]


def encode(fields: Fields) -> bytes:
    """The entry as journald reads it; ValueError for a field name it would refuse."""
    out = bytearray()
    for name, value in fields.items():
        if not _NAME.fullmatch(name):
            raise ValueError(f"not a journal field name: {name!r}")
        data = value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")
        if b"\n" in data or b"\0" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalSink:
    """Entries to journald's native socket; send() from the loop thread only."""

    def __init__(self, path: str = JOURNAL_SOCKET, *, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        self.sent = 0
        self.dropped = 0
        self.large = 0  # entries that went as a memfd
        self.last_error: str | None = None
        self._sock: socket.socket | None = None
        self._warned = False

    def send(self, fields: Fields) -> bool:
        """One entry now; False when dropped (journald absent or full).  Never blocks."""
        if not self.enabled:
            return False
        try:
            data = encode({**fields, "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER, "SYSLOG_PID": os.getpid()})
            self._send(data)
        except OSError as err:
            return self._failed(err.strerror or str(err))
        except Exception as err:  # a sink bug must not reach the loop
            return self._failed(f"internal error: {err}")
        self.sent += 1
        if self._warned:
            log.info("journal_recovered", socket=self.path, dropped=self.dropped)
            self._warned = False
        self.last_error = None
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        return self._sock

    def _send(self, data: bytes) -> None:
        sock = self._socket()
        try:
            sock.sendto(data, _FLAGS, self.path)
        except OSError as err:
            if err.errno not in (errno.EMSGSIZE, errno.ENOBUFS):  # too big for one datagram
                raise
            self._send_memfd(sock, data)

    def _send_memfd(self, sock: socket.socket, data: bytes) -> None:
        """A sealed memfd holding the entry, its descriptor as the only content."""
        fd = os.memfd_create("tracerd-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
            sock.sendmsg([], rights, _FLAGS, self.path)
        finally:
            os.close(fd)
        self.large += 1

    def _failed(self, error: str) -> bool:
        self.dropped += 1
        self.last_error = error
        if not self._warned:
            self._warned = True
            log.warning("journal_unavailable", socket=self.path, error=error,
                        consequence="journal entries are dropped and counted; tracing goes on")  # fmt: skip
        return False


def crash_fields(report: Any, entry: Mapping[str, Any] | None, host_repeats: int) -> dict[str, object]:
    """The crash entry: MESSAGE_ID, PRIORITY=2 and the TRACERD_* fields (docs/fleet.md)."""
    process, signal = report.process, report.signal
    path = entry.get("report") if entry else None
    summary = report.summary(str(path or "not stored (see the log)"))
    fields: dict[str, object] = {
        "MESSAGE": summary,
        "MESSAGE_ID": MESSAGE_CRASH,
        "PRIORITY": PRIORITY_CRIT,
        "TRACERD_SIGNATURE": report.signature,
        "TRACERD_SIGNATURE_BASIS": report.signature_basis,
        "TRACERD_PROGRAM": process.get("name"),
        "TRACERD_PID": process.get("pid"),
        "TRACERD_EXE": process.get("exe") or "",
        "TRACERD_SIGNAL": signal.get("name"),
        "TRACERD_SI_CODE": signal.get("si_code_name") or signal.get("si_code") or "",
        "TRACERD_TOP": "\n".join(report.top),
        "TRACERD_BUILD_IDS": "\n".join(
            sorted({f"{lib.path} {lib.build_id}" for lib in report.libraries if lib.build_id})
        ),
        "TRACERD_REPORT": path or "",
        "TRACERD_CRASH_ID": (entry or {}).get("id") or "",
        "TRACERD_COUNT": (entry or {}).get("count") or 1,
        "TRACERD_HOST_REPEATS": host_repeats,
        "TRACERD_FULL_REPORT": 1 if entry and entry.get("full") else 0,
        "TRACERD_TRACER": report.tracer,
    }
    if signal.get("fault_address"):
        fields["TRACERD_FAULT_ADDRESS"] = signal["fault_address"]
    return fields


def session_fields(message_id: str, priority: int, text: str, *, program: str, pid: int, tracer: str,
                   state: str, reason: str | None = None) -> dict[str, object]:  # fmt: skip
    """A session start, end or failure entry."""
    fields: dict[str, object] = {
        "MESSAGE": text, "MESSAGE_ID": message_id, "PRIORITY": priority, "TRACERD_PROGRAM": program,
        "TRACERD_PID": pid, "TRACERD_TRACER": tracer, "TRACERD_STATE": state,
    }  # fmt: skip
    if reason:
        fields["TRACERD_REASON"] = reason
    return fields


def available(path: str) -> bool:
    """Is there a socket at ``path`` (``[journal] enabled = "auto"``)?"""
    with contextlib.suppress(OSError):
        return stat.S_ISSOCK(os.stat(path).st_mode)
    return False
