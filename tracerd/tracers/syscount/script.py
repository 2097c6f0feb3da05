"""The bpftrace program every syscount session shares, and how its maps are read.

``@pids[tgid] = root`` (children added at fork, removed at exit; threads
looked up by tgid), ``@c[root, nr]`` calls, ``@e[root, nr, errno]`` failures,
with latency ``@ns``/``@h`` from ``@t[tid]``.  With ``raw`` the returning
calls are counted by :mod:`rawcount`, and bpftrace only counts exit and
exit_group.  Maps are cumulative; a root's exit prints ``exit ROOT CODE``.

Security: the program is ours; tracerd writes only pids into ``@pids``.

Diagnostics: none here; bpftrace's errors go to its output, which the loader reads.
"""

from __future__ import annotations

from tracerd.tracers.syscount.table import Counts

KEYS_MAX = 32768  # BPFTRACE_MAP_KEYS_MAX: entries per map (sessions x distinct system calls)

_BEGIN = 'BEGIN { @pids[0] = (uint64)0; %s printf("syscount-ready\\n"); }'
_COMMON = """
tracepoint:sched:sched_process_fork /@pids[pid]/ { @pids[(uint64)args->child_pid] = @pids[pid]; }
tracepoint:sched:sched_process_exit /@pids[pid] && pid == tid/ {
  if (@pids[pid] == pid) { printf("exit %d %d\\n", pid, curtask->exit_code); } else { delete(@pids[pid]); }
}
"""
_PLAIN = """
tracepoint:raw_syscalls:sys_enter { $r = @pids[pid]; if ($r) { @c[$r, args->id] = count(); } }
tracepoint:raw_syscalls:sys_exit /args->ret < 0 && args->ret > -4096/ {
  $r = @pids[pid]; if ($r) { @e[$r, args->id, - args->ret] = count(); }
}
END { clear(@pids); clear(@c); clear(@e); }
"""
# with rawcount's sys_exit program: the maps it counts into, and the two calls that never return
_RAW = """
tracepoint:syscalls:sys_enter_exit, tracepoint:syscalls:sys_enter_exit_group {
  $r = @pids[pid]; if ($r) { @c[$r, (int64)args->__syscall_nr] = count(); }
}
END { clear(@pids); clear(@c); clear(@e); }
"""
_RAW_MAPS = "@c[(uint64)0, (int64)0] = count(); @e[(uint64)0, (int64)0, (int64)0] = count();"
_TIMED = """
tracepoint:raw_syscalls:sys_enter { $r = @pids[pid]; if ($r) { @c[$r, args->id] = count(); @t[tid] = nsecs; } }
tracepoint:raw_syscalls:sys_exit /@t[tid]/ {
  $d = nsecs - @t[tid]; delete(@t[tid]);
  if (@pids[pid]) {
    @ns[@pids[pid], args->id] = sum($d); @h[@pids[pid], args->id] = hist($d);
    if (args->ret < 0 && args->ret > -4096) { @e[@pids[pid], args->id, - args->ret] = count(); }
  }
}
tracepoint:sched:sched_process_exit /@t[tid]/ { delete(@t[tid]); }
END { clear(@pids); clear(@c); clear(@e); clear(@t); clear(@ns); clear(@h); }
"""


def program(latency: bool, raw: bool = False) -> str:
    """bpftrace's program: ``raw`` leaves the counting of returning calls to :mod:`rawcount`."""
    if latency:
        return _BEGIN % "@t[0] = (uint64)0;" + _COMMON + _TIMED
    return _BEGIN % (_RAW_MAPS if raw else "") + _COMMON + (_RAW if raw else _PLAIN)


def u64s(raw: bytes) -> list[int]:
    """A map key as its 8-byte little-endian signed integers."""
    return [int.from_bytes(raw[i : i + 8], "little", signed=True) for i in range(0, len(raw) - len(raw) % 8, 8)]


def parse_dump(kind: str, entries: list[tuple[bytes, int]], into: dict[int, Counts]) -> None:
    """Add one map's (key, value) pairs (``kind``: c, e, ns or h) to the counts per root."""
    for key, value in entries:
        keys = u64s(key)
        if len(keys) < 2 or keys[0] <= 0:
            continue
        call = into.setdefault(keys[0], Counts()).call(keys[1])
        if kind == "c":
            call.calls += value
        elif kind == "e" and len(keys) >= 3:
            call.errors[keys[2]] = call.errors.get(keys[2], 0) + value
        elif kind == "ns":
            call.ns += value
        elif kind == "h" and len(keys) >= 3:
            call.hist[keys[2]] = call.hist.get(keys[2], 0) + value


def pid_key(pid: int) -> bytes:
    """A pid as an @pids key (or value): 8 bytes, little-endian."""
    return pid.to_bytes(8, "little")
