"""The counting half of syscount on x86-64: tracerd's own raw tracepoint program at ``sys_exit``.

One program a call instead of bpftrace's two tracepoint programs, and no
perf buffer: it looks the tgid up in bpftrace's ``@pids`` and adds one to
``@c[root, nr]`` and, for a failure, ``@e[root, nr, errno]`` (the number
from ``pt_regs->orig_ax``).  bpftrace 0.17 has no raw tracepoint probe: the
40 instructions are assembled here and loaded with bpf(2).  The link is a
descriptor of tracerd's, so it ends with tracerd, as bpftrace does.

Security: the program is a constant of ours, checked by the kernel's verifier;
the maps are our own bpftrace's.

Diagnostics: :func:`attach` raises OSError with the errno and the verifier's last words.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
from dataclasses import dataclass

from tracerd.tracers.syscount.bpfmap import ATTR_SIZE, bpf

PROG_LOAD, RAW_TRACEPOINT_OPEN = 5, 17
RAW_TRACEPOINT = 17  # BPF_PROG_TYPE_RAW_TRACEPOINT
ORIG_AX = 15 * 8  # offsetof(struct pt_regs, orig_ax) on x86-64: the system call's number
GET_PID_TGID, LOOKUP, UPDATE, PROBE_READ_KERNEL = 14, 1, 2, 113  # helper ids
NOEXIST = 1
R0, R1, R2, R3, R4, R6, R7, R8, FP = 0, 1, 2, 3, 4, 6, 7, 8, 10
KEY_PID, KEY_C, KEY_E, ONE = -8, -32, -56, -64  # stack slots: @pids key, @c key (root, nr), @e key (root, nr, errno)


class Asm:
    """Just enough of an eBPF assembler: 64-bit moves, loads, stores, calls and labelled jumps."""

    def __init__(self) -> None:
        self.code: list[tuple[int, int, int, int, int, str]] = []  # code, dst, src, off, imm, jump label
        self.labels: dict[str, int] = {}

    def op(self, code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0, *, to: str = "") -> None:
        self.code.append((code, dst, src, off, imm, to))

    def mov(self, dst: int, src: int) -> None:
        self.op(0xBF, dst, src)

    def movi(self, dst: int, imm: int) -> None:
        self.op(0xB7, dst, imm=imm)

    def addi(self, dst: int, imm: int) -> None:
        self.op(0x07, dst, imm=imm)

    def load(self, dst: int, src: int, off: int) -> None:
        self.op(0x79, dst, src, off)

    def store(self, dst: int, off: int, src: int) -> None:
        self.op(0x7B, dst, src, off)

    def call(self, helper: int) -> None:
        self.op(0x85, imm=helper)

    def map_fd(self, dst: int, fd: int) -> None:
        self.op(0x18, dst, 1, 0, fd)  # BPF_LD_IMM64 with BPF_PSEUDO_MAP_FD: two slots
        self.op(0)

    def pointer(self, dst: int, off: int) -> None:
        """``dst = fp + off``: the address of a stack slot."""
        self.mov(dst, FP)
        self.addi(dst, off)

    def map_key(self, fd: int, key: int) -> None:
        """The first two arguments of a map helper: r1 = the map, r2 = the key at ``fp + key``."""
        self.map_fd(R1, fd)
        self.pointer(R2, key)

    def jump(self, code: int, dst: int, imm: int, label: str) -> None:
        self.op(code, dst, imm=imm, to=label)

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def bytes(self) -> bytes:
        return b"".join(
            struct.pack("<BBhi", code, (src << 4) | dst, self.labels[to] - index - 1 if to else off, imm)
            for index, (code, dst, src, off, imm, to) in enumerate(self.code)
        )


def _count(asm: Asm, fd: int, key: int, name: str) -> None:
    """``map[key at fp+key] += 1`` on this CPU; created at 1 when absent (a lost creation race adds again)."""
    asm.map_key(fd, key)
    asm.call(LOOKUP)
    asm.jump(0x15, R0, 0, f"{name}_new")  # if r0 == 0
    asm.label(f"{name}_add")
    asm.load(R1, R0, 0)
    asm.addi(R1, 1)
    asm.store(R0, 0, R1)
    asm.jump(0x05, 0, 0, f"{name}_done")
    asm.label(f"{name}_new")
    asm.op(0x7A, FP, off=ONE, imm=1)  # *(u64 *)(fp + ONE) = 1
    asm.map_key(fd, key)
    asm.pointer(R3, ONE)
    asm.movi(R4, NOEXIST)
    asm.call(UPDATE)
    asm.jump(0x15, R0, 0, f"{name}_done")
    asm.map_key(fd, key)
    asm.call(LOOKUP)
    asm.jump(0x55, R0, 0, f"{name}_add")  # if r0 != 0: another CPU created it first
    asm.label(f"{name}_done")


def program(pids: int, calls: int, errors: int) -> bytes:
    """The instructions, for the three maps' descriptors (as this process holds them)."""
    asm = Asm()
    asm.mov(R6, R1)  # ctx: args[0] = struct pt_regs *, args[1] = the return value
    asm.call(GET_PID_TGID)
    asm.op(0x77, R0, imm=32)  # r0 >>= 32: the tgid
    asm.store(FP, KEY_PID, R0)
    asm.map_key(pids, KEY_PID)
    asm.call(LOOKUP)
    asm.jump(0x15, R0, 0, "out")
    asm.load(R7, R0, 0)  # the root
    asm.store(FP, KEY_C, R7)
    asm.load(R8, R6, 8)  # the return value
    asm.load(R3, R6, 0)
    asm.addi(R3, ORIG_AX)
    asm.pointer(R1, KEY_C + 8)
    asm.movi(R2, 8)
    asm.call(PROBE_READ_KERNEL)  # the number (zeroed when unreadable)
    _count(asm, calls, KEY_C, "c")
    asm.jump(0x75, R8, 0, "out")  # if (s64) ret >= 0
    asm.jump(0xC5, R8, -4095, "out")  # if (s64) ret < -4095
    asm.op(0x87, R8)  # r8 = -r8: errno
    asm.store(FP, KEY_E, R7)
    asm.load(R1, FP, KEY_C + 8)
    asm.store(FP, KEY_E + 8, R1)
    asm.store(FP, KEY_E + 16, R8)
    _count(asm, errors, KEY_E, "e")
    asm.label("out")
    asm.movi(R0, 0)
    asm.op(0x95)
    return asm.bytes()


def available() -> bool:
    """Whether this machine takes the raw tracepoint program: x86-64 (the number's place in pt_regs)."""
    return os.uname().machine == "x86_64"


@dataclass
class Attached:
    prog: int
    link: int

    def close(self) -> None:
        for fd in (self.link, self.prog):
            with contextlib.suppress(OSError):
                os.close(fd)


def _load(code: bytes, log_size: int) -> int:
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"GPL")  # bpf_probe_read_kernel is GPL-only
    words = ctypes.create_string_buffer(max(log_size, 1))
    attr = ctypes.create_string_buffer(ATTR_SIZE)
    struct.pack_into("<IIQQIIQ", attr, 0, RAW_TRACEPOINT, len(code) // 8, ctypes.addressof(insns),
                     ctypes.addressof(license_), 1 if log_size else 0, log_size,
                     ctypes.addressof(words) if log_size else 0)  # fmt: skip
    struct.pack_into("16s", attr, 48, b"tracerd_count")  # prog_name
    try:
        return bpf(PROG_LOAD, attr)
    except OSError as err:
        said = words.value.decode("ascii", "replace").strip().splitlines()[-2:]
        raise OSError(err.errno, " ".join([err.strerror or "", *said]).strip()) from None


def load(code: bytes) -> int:
    """A raw tracepoint program's descriptor; OSError with the verifier's last words when refused."""
    try:
        return _load(code, 0)
    except OSError:
        return _load(code, 1 << 16)  # again, for the verifier's words


def link(prog: int, tracepoint: bytes = b"sys_exit") -> int:
    """Attach ``prog`` to ``tracepoint``: the link's descriptor (closing it detaches)."""
    name = ctypes.create_string_buffer(tracepoint)
    attr = ctypes.create_string_buffer(ATTR_SIZE)
    struct.pack_into("<QI", attr, 0, ctypes.addressof(name), prog)
    return bpf(RAW_TRACEPOINT_OPEN, attr)


def attach(pids: int, calls: int, errors: int) -> Attached:
    """Load the program for these maps and attach it to ``sys_exit``; the caller closes it."""
    prog = load(program(pids, calls, errors))
    try:
        return Attached(prog, link(prog))
    except OSError:
        os.close(prog)
        raise
