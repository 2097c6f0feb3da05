"""Can ``perf trace`` work from here?  The perf tracer's checks before it runs.

:func:`refusal` names in one line what is missing (docs/design.md, "Tracers"):
a tracefs mount in tracerd's own mount namespace (perf's too), and the kernel's
leave to open the raw_syscalls:sys_enter event on the target, probed once
(EACCES: perf_event_paranoid; EPERM: a seccomp filter).  Under a seccomp
filter the probe runs in a child, as a filter may kill the caller (SIGSYS).

Security: reads only /proc/self, perf_event_paranoid and the tracepoint's id;
the probe event is disabled and closed at once and never reads the target.

Diagnostics: every failure is a one-line string; nothing raises past
:func:`refusal`.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import signal
import sys

from tracerd import arch

TRACEFS_MOUNTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
EVENT = "events/raw_syscalls/sys_enter/id"
PARANOID = "/proc/sys/kernel/perf_event_paranoid"
MOUNT_HINT = "mount -t tracefs nodev /sys/kernel/tracing"
CAP_PERFMON = 38
CAP_SYS_ADMIN = 21
PERF_TYPE_TRACEPOINT = 2
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FD_CLOEXEC = 1 << 3
ATTR_SIZE = 128  # PERF_ATTR_SIZE_VER7: any kernel since 5.4 takes it whole
PROBE_TIMEOUT = 5.0
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the child's probe: the same function, run by the same interpreter, stdlib only
PROBE_CHILD = (
    "import sys; sys.path[:0] = [sys.argv[3]]; "
    "from tracerd.tracers.perfcheck import open_event; "
    "sys.exit(open_event(int(sys.argv[1]), int(sys.argv[2])))"
)


def tracefs_mount(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as file:
            lines = file.read().splitlines()
    except OSError:
        return None
    found: set[str] = set()
    for line in lines:
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        fstype = line.split(" - ", 1)[1].split()[0]
        if fstype == "tracefs":
            found.add(fields[4].replace("\\040", " "))
    for path in TRACEFS_MOUNTS:
        if path in found:
            return path
    return None


def seccomp_filtered(status: str = "/proc/self/status") -> bool:
    """A seccomp filter in force on tracerd (``Seccomp: 2``, or 1: strict)."""
    try:
        with open(status, encoding="ascii", errors="replace") as file:
            for line in file:
                if line.startswith("Seccomp:"):
                    return line.split()[1] != "0"
    except (OSError, IndexError):
        pass
    return False


def paranoid() -> str:
    try:
        with open(PARANOID, encoding="ascii") as file:
            return file.read().strip()
    except OSError as err:
        return f"unreadable ({err.strerror})"


def has_capability(number: int, status: str = "/proc/self/status") -> bool:
    try:
        with open(status, encoding="ascii", errors="replace") as file:
            for line in file:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> number & 1)
    except (OSError, IndexError, ValueError):
        pass
    return False


def open_event(pid: int, tracepoint: int) -> int:
    """Open and close the tracepoint event on ``pid``: 0, or the errno it failed with."""
    facts = arch.of()
    if facts is None:
        return 0  # an unknown machine: let perf itself say
    number = facts.perf_event_open
    attr = (ctypes.c_uint8 * ATTR_SIZE)()
    # struct perf_event_attr: u32 type, u32 size, u64 config, u64 sample_period, u64 sample_type, ...
    ctypes.c_uint32.from_buffer(attr, 0).value = PERF_TYPE_TRACEPOINT
    ctypes.c_uint32.from_buffer(attr, 4).value = ATTR_SIZE
    ctypes.c_uint64.from_buffer(attr, 8).value = tracepoint
    ctypes.c_uint64.from_buffer(attr, 16).value = 1
    ctypes.c_uint64.from_buffer(attr, 24).value = PERF_SAMPLE_RAW
    ctypes.c_uint64.from_buffer(attr, 40).value = 1  # flags: disabled
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(
        ctypes.c_long(number), attr, ctypes.c_int(pid), ctypes.c_int(-1), ctypes.c_int(-1),
        ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC),
    )  # fmt: skip
    if fd < 0:
        return ctypes.get_errno() or errno.EIO
    os.close(fd)
    return 0


async def _probe_in_child(pid: int, tracepoint: int) -> int:
    """open_event in a child process: its errno, or -SIGNAL if the filter killed it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-S", "-c", PROBE_CHILD, str(pid), str(tracepoint), PACKAGE_ROOT,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        return await asyncio.wait_for(proc.wait(), PROBE_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return 0  # inconclusive: let perf itself say


def tracepoint_id() -> int | str:
    """raw_syscalls:sys_enter's id in tracefs, or the one line saying why there is none."""
    mount = tracefs_mount()
    if mount is None:
        return f"perf tracer: tracefs is not mounted ({MOUNT_HINT})"
    id_path = os.path.join(mount, EVENT)
    try:
        with open(id_path, encoding="ascii") as file:
            return int(file.read().strip())
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not a number"
        return f"perf tracer: cannot read the system-call tracepoint {id_path}: {reason}"


async def refusal(pid: int) -> str | None:
    tracepoint = tracepoint_id()
    if isinstance(tracepoint, str):
        return tracepoint
    filtered = seccomp_filtered()
    status = await _probe_in_child(pid, tracepoint) if filtered else open_event(pid, tracepoint)
    if status in (0, errno.ESRCH):
        return None  # ESRCH: the process is gone, which the session finds out by itself
    if (status < 0 and -status == signal.SIGSYS) or (status == errno.EPERM and filtered):
        return (
            "perf tracer: perf_event_open is refused by tracerd's seccomp filter"
            " (allow it in the unit's SystemCallFilter=, e.g. @debug)"
        )
    if status in (errno.EACCES, errno.EPERM):
        perfmon = "has" if has_capability(CAP_PERFMON) or has_capability(CAP_SYS_ADMIN) else "lacks"
        return (
            f"perf tracer: perf_event_open is not allowed: kernel.perf_event_paranoid is {paranoid()}"
            f" and tracerd {perfmon} CAP_PERFMON (sysctl kernel.perf_event_paranoid=1,"
            " or CAP_PERFMON in the unit's CapabilityBoundingSet=)"
        )
    if status < 0:
        return f"perf tracer: the perf_event_open probe was killed by signal {-status}"
    return f"perf tracer: perf_event_open failed: {os.strerror(status)}"
