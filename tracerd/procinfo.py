"""What the kernel says about a process, read from /proc.

A process is (pid, start time in ticks since boot), never a pid alone: pids
are recycled, and acting on a recycled one would hit the wrong process.

Security: values come from the kernel for a pid the caller chose.  The comm in
/proc/PID/stat is the process's own choice, so parsing starts after the last ')'.

Diagnostics: a process gone, or a pid now naming another, raises TargetGone;
our own fd or memory shortage raises Busy.
"""

from __future__ import annotations

import errno
import os
import resource
import select
import signal as signalmod
from dataclasses import dataclass

from tracerd.errors import AccessDenied, Busy, TargetGone, TracerdError


def _translate(pid: int, err: OSError) -> TracerdError:
    """Our own resource shortage is not the target's fault."""
    if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
        return Busy(f"tracerd is short of resources ({err.strerror}); raise LimitNOFILE or max_sessions")
    if err.errno == errno.ESRCH:
        return TargetGone(f"no such process {pid}")
    return TargetGone(f"cannot read process {pid}: {err.strerror}")


def free_fds(reserve: int) -> bool:
    """Whether at least ``reserve`` more descriptors may be opened (RLIMIT_NOFILE)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return True
    try:
        # Linux 6.2+: the directory's size is the count (one stat, not a listing, per hook)
        used = os.stat("/proc/self/fd").st_size or len(os.listdir("/proc/self/fd"))
    except OSError:
        return False
    return soft - used >= reserve


@dataclass(frozen=True)
class ProcessIdentity:
    pid: int
    start: int  # field 22 of /proc/PID/stat: start time in clock ticks since boot

    def alive(self) -> bool:
        """True while this very process (not a recycled pid) exists."""
        try:
            return identify(self.pid).start == self.start
        except TargetGone:
            return False

    def require(self) -> None:
        if not self.alive():
            raise TargetGone(f"process {self.pid} is gone (or its pid was reused)")


def _stat_fields(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            raw = stat.read()
    except (FileNotFoundError, ProcessLookupError) as err:
        raise TargetGone(f"no such process {pid}") from err
    except OSError as err:
        raise _translate(pid, err) from err
    # the comm may hold spaces and parentheses
    return raw[raw.rindex(b")") + 2 :].decode("ascii", "replace").split()


def identify(pid: int) -> ProcessIdentity:
    """The identity of the process now holding ``pid``."""
    fields = _stat_fields(pid)
    return ProcessIdentity(pid, int(fields[19]))


def parent_of(pid: int) -> int:
    return int(_stat_fields(pid)[1])


def ancestors(pid: int, limit: int = 32) -> list[ProcessIdentity]:
    """The parents of ``pid``, nearest first, up to (not including) pid 0."""
    chain: list[ProcessIdentity] = []
    parent = parent_of(pid)
    for _ in range(limit):
        if parent <= 0:
            break
        fields = _stat_fields(parent)
        chain.append(ProcessIdentity(parent, int(fields[19])))
        parent = int(fields[1])
    return chain


def is_ancestor(target: ProcessIdentity, pid: int, limit: int) -> bool:
    """Whether ``target`` is one of the ``limit`` nearest ancestors of ``pid`` (TargetGone if one
    on the way is gone)."""
    parent = parent_of(pid)
    for _ in range(limit):
        if parent <= 0:
            return False
        fields = _stat_fields(parent)
        if parent == target.pid:
            return int(fields[19]) == target.start
        parent = int(fields[1])
    return False


class OwnAncestry:
    """The pids of this process and its ancestors, cached until an ancestor's pidfd turns readable
    (ancestry changes only when one exits).  Without pidfds every call reads /proc."""

    def __init__(self) -> None:
        self._pids: frozenset[int] | None = None
        self._owner = 0
        self._fds: list[int] = []
        self._poll = select.poll()

    def pids(self) -> frozenset[int]:
        if self._pids is not None and not self._poll.poll(0) and self._owner == os.getpid():
            return self._pids
        self.close()
        self._owner = os.getpid()
        chain = ancestors(self._owner)
        pids = frozenset({self._owner, *(identity.pid for identity in chain)})
        try:
            for identity in chain:
                fd = open_pidfd(identity)
                self._fds.append(fd)
                self._poll.register(fd, select.POLLIN)
        except (OSError, TargetGone):  # an ancestor gone meanwhile, or no pidfd: read again next time
            self.close()
            return pids
        self._pids = pids
        return pids

    def close(self) -> None:
        for fd in self._fds:
            self._poll.unregister(fd)
            os.close(fd)
        self._fds = []
        self._pids = None


PF_KTHREAD = 0x00200000  # field 9 of /proc/PID/stat


def check_ptraceable(pid: int, ours: set[int]) -> None:
    """As :func:`check_user_process`, and Busy for a process another tracer (not ``ours``) holds."""
    status = check_user_process(pid)
    current = int(status.get(b"TracerPid", 0))
    if current and current not in ours:
        raise Busy(f"process {pid} is already traced by pid {current}")


def check_user_process(pid: int) -> dict[bytes, bytes]:
    """Refuse a kernel thread or a non-leader thread (AccessDenied), a zombie (TargetGone);
    else /proc/PID/status."""
    fields = _stat_fields(pid)
    if int(fields[6]) & PF_KTHREAD:
        raise AccessDenied(f"pid {pid} is a kernel thread; only user processes can be traced")
    if fields[0] in ("Z", "X"):
        raise TargetGone(f"process {pid} has exited (a zombie its parent has not reaped)")
    status = _status(pid)
    if int(status.get(b"Tgid", pid)) != pid:
        raise AccessDenied(f"pid {pid} is a thread of process {int(status[b'Tgid'])}; trace the process")
    return status


def _status(pid: int) -> dict[bytes, bytes]:
    """/proc/PID/status as key: value (the value's first word)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            return {key: rest.split()[0] for key, _, rest in (line.partition(b":") for line in status) if rest.split()}
    except (FileNotFoundError, ProcessLookupError) as err:
        raise TargetGone(f"no such process {pid}") from err
    except OSError as err:
        raise _translate(pid, err) from err


def pid_namespace(pid: int | str) -> tuple[int, int]:
    """(device, inode) of a process's pid namespace ("self" for ours)."""
    try:
        info = os.stat(f"/proc/{pid}/ns/pid")
    except (FileNotFoundError, ProcessLookupError) as err:
        raise TargetGone(f"no such process {pid}") from err
    except OSError as err:
        raise _translate(int(pid) if pid != "self" else os.getpid(), err) from err
    return info.st_dev, info.st_ino


def ancestor_by_inner_pid(inner: int, pid: int, limit: int) -> int | None:
    """Our pid of the nearest ancestor of ``pid`` that is ``inner`` in ``pid``'s pid namespace
    (how a hook in a container names its caller), else None."""
    try:
        namespace = pid_namespace(pid)
        parent = parent_of(pid)
        for _ in range(limit):
            if parent <= 0:
                return None
            if pid_namespace(parent) == namespace and int(_ns_pids(parent)[-1]) == inner:
                return parent
            parent = parent_of(parent)
    except (OSError, TracerdError, ValueError, IndexError):  # a process on the way is gone
        return None
    return None


def _ns_pids(pid: int) -> list[bytes]:
    """NSpid: its pid in each pid namespace, ours first, its own last."""
    with open(f"/proc/{pid}/status", "rb") as status:
        for line in status:
            if line.startswith(b"NSpid:"):
                return line.split()[1:]
    return []


def tracer_pid(pid: int) -> int:
    """TracerPid: 0 when nobody traces the process."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"TracerPid:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError) as err:
        raise TargetGone(f"no such process {pid}") from err
    except OSError as err:
        raise _translate(pid, err) from err
    return 0


def open_pidfd(identity: ProcessIdentity) -> int:
    """A pidfd for exactly this process (re-checked after opening, against reuse)."""
    try:
        fd = os.pidfd_open(identity.pid)
    except ProcessLookupError as err:
        raise TargetGone(f"no such process {identity.pid}") from err
    if not identity.alive():
        os.close(fd)
        raise TargetGone(f"process {identity.pid} is gone (or its pid was reused)")
    return fd


def _mask(pid: int, field: str, tid: int | None = None) -> int:
    path = f"/proc/{pid}/task/{tid}/status" if tid else f"/proc/{pid}/status"
    try:
        with open(path, "rb") as status:
            for line in status:
                if line.startswith(field.encode() + b":"):
                    return int(line.split()[1], 16)
    except OSError:
        return 0
    return 0


def signal_is_fatal(pid: int, tid: int | None, signal_name: str, si_code: int | None) -> bool:
    """Will this signal kill the process, as untraced?  An unblocked handler runs instead; an ignored
    kill() is dropped; a fault (si_code > 0) blocked or ignored is forced on by the kernel."""
    try:
        signo = int(getattr(signalmod.Signals, signal_name))
    except AttributeError:
        return False
    bit = 1 << (signo - 1)
    caught = bool(_mask(pid, "SigCgt") & bit)
    ignored = bool(_mask(pid, "SigIgn") & bit)
    blocked = bool(_mask(pid, "SigBlk", tid) & bit)
    fault = si_code is not None and si_code > 0
    if caught and not blocked:
        return False
    return not (ignored and not fault)
