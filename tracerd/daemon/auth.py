"""Who may ask what: SO_PEERCRED credentials and the ancestor rule.

Security (docs/design.md, "Security model"):
- hook, attach, detach, where, crash-delete and crash-retrace need uid 0
  (or the daemon's own uid, so that an unprivileged tracerd serves the user
  who runs it and nobody else);
- the read-only operations (``read_only`` in tracerd.protocol.OPERATIONS:
  status, show, crashes and crash) also admit members of ``socket_group``
  (primary or supplementary group of the connecting process, as the kernel
  recorded them at connect(): SO_PEERGROUPS, never /proc of a pid that may
  have exited and been reused since);
- a hook request may only name one of the *nearest* ancestors of the
  connecting process (``MAX_HOOK_DEPTH``): Postfix's daemon is the hook's
  parent or grandparent through ``sh -c`` (one more for a subshell).  So a
  hook cannot be abused to attach a debugger to an arbitrary process, nor to
  Postfix's master or init further up the chain;
- nobody, root included, may trace pid 1, tracerd itself or its ancestors,
  or one of tracerd's own tracers.

Credentials come from the kernel (SO_PEERCRED, SO_PEERGROUPS), never from
the request.
Diagnostics: a refusal raises :class:`~tracerd.errors.AccessDenied` with the
reason in one line.  A kernel without SO_PEERGROUPS (before 4.13) gives no
supplementary groups: members through one are refused, not guessed at.
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
    count = 64  # socket.getsockopt caps its buffer at 1 KiB: ask libc, for any NGROUPS_MAX
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
        """Raise AccessDenied unless ``peer`` may perform ``op`` at all."""
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
