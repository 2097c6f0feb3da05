"""The report of a watch crash whose gdb failed or ran out of time (issue 23).

A crash is never lost for want of gdb: the process is released on time, and the
report holds what is known without it: the signal from the watcher's ``fatal``
event, each thread's registers and pc from the core's NT_PRSTATUS (the crashing
thread first), the modules from /proc/PID, so that ``tracerctl retrace`` can
name each thread's one frame later.  Why gdb failed: ``notice`` and
``process.capture_errors``.

Security: the core is tracerd's own file or the watcher's memfd, opened as
corefile does (regular, O_NONBLOCK, no symlink); headers and notes are parsed
with bounds, notes capped at MAX_NOTES.  What it holds is the target's: data.

Diagnostics: nothing raises; an unreadable core leaves the report without
registers or threads and says so in ``capture_errors``.
"""

from __future__ import annotations

import contextlib
import os
import signal as signalmod
import stat
import struct
from typing import Any

from tracerd.crash import modules, siginfo
from tracerd.crash.report import CrashReport, Frame, Library, Thread
from tracerd.timefmt import iso_utc

NT_PRSTATUS = 1
PT_NOTE = 4
MAX_NOTES = 16 << 20
# x86-64 elf_gregset_t, in the kernel's order (struct user_regs_struct)
GREGS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi", "rdi",
         "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs")  # fmt: skip
PR_PID, PR_REG = 32, 112  # offsets in struct elf_prstatus


def thread_registers(core: str) -> list[tuple[int, dict[str, int]]]:
    """(tid, registers) of each NT_PRSTATUS of an x86-64 ELF core, in the core's order."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if core.startswith("/proc/") else os.O_NOFOLLOW)
    fd = os.open(core, flags)
    with os.fdopen(fd, "rb") as elf:
        size = os.fstat(elf.fileno()).st_size
        if not stat.S_ISREG(os.fstat(elf.fileno()).st_mode):
            raise OSError(0, "not a regular file")
        header = elf.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            raise ValueError("not a 64-bit little-endian ELF core")
        (phoff,) = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        out: list[tuple[int, dict[str, int]]] = []
        budget = MAX_NOTES
        for index in range(min(phnum, 4096)):
            elf.seek(phoff + index * phentsize)
            p_type, _, p_offset, _, _, p_filesz = struct.unpack("<IIQQQQ", elf.read(40))
            if p_type != PT_NOTE or p_offset + p_filesz > size or p_filesz > budget:
                continue
            budget -= p_filesz
            elf.seek(p_offset)
            out += _prstatus_notes(elf.read(p_filesz))
        return out


def _prstatus_notes(blob: bytes) -> list[tuple[int, dict[str, int]]]:
    out = []
    at = 0
    while at + 12 <= len(blob):
        namesz, descsz, kind = struct.unpack_from("<III", blob, at)
        desc = at + 12 + (namesz + 3) // 4 * 4
        if desc + descsz > len(blob):
            break
        if kind == NT_PRSTATUS and descsz >= PR_REG + 8 * len(GREGS):
            (tid,) = struct.unpack_from("<i", blob, desc + PR_PID)
            values = struct.unpack_from(f"<{len(GREGS)}Q", blob, desc + PR_REG)
            out.append((tid, dict(zip(GREGS, values, strict=True))))
        at = desc + (descsz + 3) // 4 * 4
    return out


def report(process: dict[str, Any], event: dict[str, Any], reason: str, *, tracer: str,
           log_path: str | None) -> CrashReport:  # fmt: skip
    """The report of what is known without gdb; blocking (files, /proc): call it from a thread."""
    pid = int(event["pid"])
    errors = [f"gdb: {reason}"]
    threads: list[Thread] = []
    registers: dict[str, str] = {}
    core = str(event.get("core") or "")
    try:
        states = thread_registers(core) if core else []
        if not core:
            errors.append(f"no core: {event.get('core_error') or 'the watcher wrote none'}")
    except (OSError, ValueError, struct.error) as err:
        states = []
        errors.append(f"core unreadable: {err}")
    for index, (tid, regs) in enumerate(states):
        if index == 0:
            registers = {name: hex(value) for name, value in regs.items()}
        frame = Frame(level=0, function=None, file=None, line=None, object=None, address=hex(regs["rip"]))
        threads.append(Thread(id=index + 1, tid=tid, name=_comm(pid, tid), crashed=index == 0, frames=[frame]))
    mods = modules.read_modules(pid)
    libraries = [Library(path=m.path, start=None, end=None, build_id=None) for m in mods]
    modules.annotate(mods, libraries, threads)
    report = CrashReport(
        process=process,
        signal=_signal(event),
        time=iso_utc(),
        threads=threads,
        registers=registers,
        disassembly="",
        libraries=libraries,
        log=log_path,
        tracer=tracer,
        notice=f"no backtrace: gdb failed ({reason}); the registers, each thread's pc and the modules"
               " are from the core and /proc: tracerctl retrace symbolizes them",
    )  # fmt: skip
    report.process["capture_errors"] = errors
    return report


def _signal(event: dict[str, Any]) -> dict[str, Any]:
    name = str(event.get("signal"))
    signo = int(signalmod.Signals.__members__.get(name, signalmod.SIGSEGV))
    si_code = event.get("si_code")
    fields: dict[str, int | None] = {}
    with contextlib.suppress(TypeError, ValueError):
        fields["fault_address"] = int(str(event.get("fault_address")), 16)
    return siginfo.decode(signo, int(si_code) if isinstance(si_code, int) else None, fields)


def _comm(pid: int, tid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/task/{tid}/comm", encoding="utf-8", errors="replace") as comm:
            return comm.read().strip() or None
    except OSError:
        return None
