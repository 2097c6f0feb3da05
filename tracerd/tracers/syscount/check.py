"""Can syscount count here?  Its checks before the shared bpftrace starts, each a one-line refusal.

bpftrace installed, the kernel's BTF, tracefs (mounted by tracerd itself
with CAP_SYS_ADMIN, logged ``tracefs_mounted``), CAP_BPF and CAP_PERFMON (or
CAP_SYS_ADMIN).  The lines and fixes: docs/syscount.md, "Requirements".

Security: reads /proc/self/status and mountinfo; runs ``mount`` with a fixed argv.

Diagnostics: :func:`refusal` returns the one line, or None; it never raises.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import structlog

from tracerd.tracers.perfcheck import CAP_PERFMON, CAP_SYS_ADMIN, has_capability, tracefs_mount

log = structlog.get_logger("tracerd")
BTF = "/sys/kernel/btf/vmlinux"
TRACEFS = "/sys/kernel/tracing"
MOUNT = ("mount", "-t", "tracefs", "nodev", TRACEFS)
CAP_BPF = 39
PREFIX = "syscount tracer: "


def mount_tracefs() -> str | None:
    """Mount tracefs (root with CAP_SYS_ADMIN only): None once mounted, else why not."""
    if not has_capability(CAP_SYS_ADMIN):
        return "tracerd lacks CAP_SYS_ADMIN to mount it"
    try:
        done = subprocess.run(MOUNT, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as err:
        return str(err)
    if done.returncode != 0 or tracefs_mount() is None:
        return (done.stderr.strip().splitlines() or [f"mount exited {done.returncode}"])[-1]
    log.info("tracefs_mounted", path=TRACEFS)
    return None


def missing_program() -> str | None:
    """bpftrace not installed (the backend's ``unavailable``, and ``tracerd --check``'s)."""
    if shutil.which("bpftrace") is None:
        return PREFIX + "bpftrace is not installed (apt install bpftrace)"
    return None


def refusal(btf: str = BTF) -> str | None:
    """Why syscount cannot run here (one line with the fix), or None; checked before each bpftrace start."""
    missing = missing_program()
    if missing:
        return missing
    if not os.path.exists(btf):
        return PREFIX + (f"the kernel has no BTF ({btf} is missing): bpftrace needs a kernel built with"
                         " CONFIG_DEBUG_INFO_BTF=y (Debian's since 11); use the strace or perf tracer")  # fmt: skip
    bpf = has_capability(CAP_SYS_ADMIN) or (has_capability(CAP_BPF) and has_capability(CAP_PERFMON))
    if not bpf:
        return PREFIX + ("tracerd lacks CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) to load BPF programs: add"
                         " CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_SYS_ADMIN in a drop-in"
                         " (systemctl edit tracerd)")  # fmt: skip
    if tracefs_mount() is None:
        why = mount_tracefs()
        if why is not None:
            return PREFIX + f"tracefs is not mounted and tracerd could not mount it ({why}): {' '.join(MOUNT)}"
    return None
