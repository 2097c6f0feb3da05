"""Who may ask what: SO_PEERCRED credentials and the ancestor rule.

Privileged operations need uid 0 (or tracerd's own uid); the read-only ones
(``OPERATIONS[op].read_only``) also admit ``socket_group`` members.

Security: credentials come from the kernel (SO_PEERCRED, SO_PEERGROUPS as of
connect()), never from the request or /proc. A hook may name only one of its
caller's nearest ``MAX_HOOK_DEPTH`` ancestors; nobody may trace pid 1, tracerd,
its ancestors or its tracers. See docs/design.md, "Security model".

Diagnostics: a refusal raises AccessDenied with a one-line reason. Without
SO_PEERGROUPS (kernel < 4.13) supplementary groups are refused, not guessed.
"""

from __future__ import annotations

import ctypes
import errno
import grp
import os
import socket
import struct
from dataclasses import dataclass

from tracerd import procinfo
from tracerd.errors import AccessDenied, TargetGone
from tracerd.procinfo import ProcessIdentity
from tracerd.protocol import OPERATIONS

_UCRED = struct.Struct("3i")
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux; Python names it only on some builds
NGROUPS_MAX = 65536
_libc = ctypes.CDLL(None, use_errno=True)
MAX_HOOK_DEPTH = 3
# tracerd's own ancestry, kept between requests until one of its processes exits
OWN_ANCESTRY = procinfo.OwnAncestry()


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()  # supplementary groups at connect()


def peer_groups(sock: socket.socket) -> frozenset[int]:
    """The peer's supplementary groups as of its connect() (empty if the kernel cannot say)."""
    count = 64  # socket.getsockopt caps its buffer at 1 KiB: ask libc
    while True:
        gids = (ctypes.c_uint32 * count)()
        size = ctypes.c_uint32(ctypes.sizeof(gids))
        if _libc.getsockopt(sock.fileno(), socket.SOL_SOCKET, SO_PEERGROUPS, gids, ctypes.byref(size)) == 0:
            return frozenset(gids[: size.value // ctypes.sizeof(ctypes.c_uint32)])
        if ctypes.get_errno() != errno.ERANGE or count >= NGROUPS_MAX:
            return frozenset()
        count = min(max(count * 2, size.value // ctypes.sizeof(ctypes.c_uint32)), NGROUPS_MAX)


def peer_of(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return Peer(pid, uid, gid, peer_groups(sock))


def group_id(name: str | None) -> int | None:
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


class Authorizer:
    def __init__(self, socket_group: str | None) -> None:
        self.group_gid = group_id(socket_group)
        self.group_name = socket_group

    def privileged(self, peer: Peer) -> bool:
        return peer.uid in (0, os.geteuid())

    def in_group(self, peer: Peer) -> bool:
        if self.group_gid is None:
            return False
        return peer.gid == self.group_gid or self.group_gid in peer.groups

    def check(self, op: str, peer: Peer) -> None:
        """Raise AccessDenied unless ``peer`` may perform ``op``."""
        if self.privileged(peer):
            return
        read_only = op in OPERATIONS and OPERATIONS[op].read_only
        if read_only and self.in_group(peer):
            return
        if read_only:
            group = f" or group {self.group_name}" if self.group_name else ""
            raise AccessDenied(f"{op} needs root{group} (caller uid {peer.uid})")
        raise AccessDenied(f"{op} needs root (caller uid {peer.uid})")

    @staticmethod
    def check_ancestor(target: ProcessIdentity, peer: Peer) -> None:
        """Raise AccessDenied unless ``target`` is an ancestor of the caller."""
        try:
            ancestor = procinfo.is_ancestor(target, peer.pid, MAX_HOOK_DEPTH)
        except TargetGone as err:
            raise AccessDenied("the calling process is gone") from err
        if not ancestor:
            raise AccessDenied(
                f"pid {target.pid} is not an ancestor of the calling process"
                f" (within {MAX_HOOK_DEPTH} generations);"
                " use 'tracerctl attach' to trace an unrelated process"
            )

    @staticmethod
    def check_traceable(target: ProcessIdentity, tracer_pids: set[int]) -> None:
        """Refuse targets whose tracing would harm the system or tracerd itself."""
        if target.pid == 1:
            raise AccessDenied("refusing to trace pid 1 (init)")
        if target.pid in OWN_ANCESTRY.pids():
            raise AccessDenied(f"refusing to trace pid {target.pid}: tracerd itself or its ancestor")
        if target.pid in tracer_pids:
            raise AccessDenied(f"refusing to trace pid {target.pid}: one of tracerd's own tracers")
