"""An ELF core file of a process the watcher holds stopped, for gdb to read.

gdb cannot attach to a process already traced, so the watcher writes what gdb
needs into a core, as the kernel would: per thread NT_PRSTATUS and NT_FPREGSET
(the crashing thread first: gdb's current thread), NT_PRPSINFO, NT_SIGINFO,
NT_AUXV, NT_FILE; then the memory coremaps plans, zero pages left as holes (a
sparse file).  x86-64 Linux only.

Security: registers and memory are the target's; the file is created
O_EXCL|O_NOFOLLOW, mode 0600, in a directory tracerd owns, and only gdb reads it.

Diagnostics: with the disk full or read-only the core can go to a memfd
(write_core_in_memory); an unreadable mapping is a hole; ptrace failures raise
OSError.  Over ``limit`` the least needed memory goes first, named in
``CoreFile.skipped``; ``CoreFile.size`` is the bytes written.
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass, field

from tracerd import arch
from tracerd.crash import coremaps
from tracerd.crash.coremaps import Mapping

PTRACE_GETREGS = 12
PTRACE_GETFPREGS = 14
PTRACE_GETSIGINFO = 0x4202
NT_PRSTATUS = 1
NT_FPREGSET = 2
NT_PRPSINFO = 3
NT_AUXV = 6
NT_SIGINFO = 0x53494749
NT_FILE = 0x46494C45
PAGE = os.sysconf("SC_PAGE_SIZE")
CHUNK = 1 << 20
ELF_MAGIC = b"\x7fELF"
ZERO = bytes(CHUNK)
ZERO_PAGE = bytes(PAGE)
PRSTATUS = struct.Struct("<3ih2xQQ4i8q216sI4x")  # struct elf_prstatus, 336 bytes
PRPSINFO = struct.Struct("<bcbb4xQII4i16s80s")  # struct elf_prpsinfo, 136 bytes
RSP = 19  # index of rsp in elf_gregset_t

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)


def supported() -> bool:
    return arch.watch_unsupported() is None


def _ptrace_read(request: int, tid: int, size: int) -> bytes:
    buffer = ctypes.create_string_buffer(size)
    if _libc.ptrace(request, tid, None, buffer) == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"ptrace({request}, {tid}): {os.strerror(err)}")
    return buffer.raw


@dataclass
class ThreadState:
    """What the kernel would put in a core for one stopped, traced thread."""

    tid: int
    regs: bytes
    fpregs: bytes
    signal: int = 0

    @classmethod
    def read(cls, tid: int, signal: int = 0) -> ThreadState:
        return cls(tid, _ptrace_read(PTRACE_GETREGS, tid, 216), _ptrace_read(PTRACE_GETFPREGS, tid, 512), signal)

    @property
    def stack_pointer(self) -> int:
        return int(struct.unpack_from("<Q", self.regs, RSP * 8)[0])


def read_siginfo(tid: int) -> bytes:
    """The raw 128-byte siginfo of a thread in signal-delivery-stop."""
    return _ptrace_read(PTRACE_GETSIGINFO, tid, 128)


@dataclass
class CoreFile:
    path: str
    size: int = 0
    skipped: list[str] = field(default_factory=list)


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _note(name: bytes, kind: int, desc: bytes) -> bytes:
    name = name + b"\0"
    return struct.pack("<3I", len(name), len(desc), kind) + _pad4(name) + _pad4(desc)


def _prstatus(thread: ThreadState, pid: int, ppid: int, pgrp: int, sid: int) -> bytes:
    return PRSTATUS.pack(
        thread.signal, 0, 0, thread.signal, 0, 0, thread.tid, ppid, pgrp, sid,
        0, 0, 0, 0, 0, 0, 0, 0, thread.regs, 1,
    )  # fmt: skip


def _stat_fields(pid: int) -> tuple[str, list[str]]:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        text = stat.read().decode("utf-8", "replace")
    comm = text[text.index("(") + 1 : text.rindex(")")]
    return comm, text[text.rindex(")") + 2 :].split()


def _prpsinfo(pid: int, comm: str, rest: list[str]) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        args = cmdline.read(80).replace(b"\0", b" ").strip()
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status if ":" in line)
    uid, gid = int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0])
    state = rest[0]
    return PRPSINFO.pack(
        0, state.encode()[:1], 0, int(rest[16]), 0, uid, gid,
        pid, int(rest[1]), int(rest[2]), int(rest[3]), comm.encode()[:15], args[:79],
    )  # fmt: skip


def _nt_file(mappings: list[Mapping]) -> bytes:
    files = [m for m in mappings if m.file_backed and not m.path.endswith(" (deleted)")]
    head = struct.pack("<2Q", len(files), PAGE)
    ranges = b"".join(struct.pack("<3Q", m.start, m.end, m.offset // PAGE) for m in files)
    names = b"".join(os.fsencode(m.path) + b"\0" for m in files)
    return head + ranges + names


def write_core(pid: int, threads: list[ThreadState], siginfo: bytes, path: str, limit: int) -> CoreFile:
    """The core of ``pid`` (all ``threads`` stopped by us) at ``path``, whole or not at all."""
    partial = path + ".part"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        core = write_core_to(fd, pid, threads, siginfo, limit)
    except BaseException:
        os.close(fd)
        os.unlink(partial)
        raise
    os.close(fd)
    os.rename(partial, path)
    core.path = path
    return core


def write_core_in_memory(pid: int, threads: list[ThreadState], siginfo: bytes, limit: int) -> tuple[int, CoreFile]:
    """The same core in a memfd, for gdb as ``/proc/OURPID/fd/FD``; the caller closes the fd."""
    fd = os.memfd_create("tracerd-core", os.MFD_CLOEXEC)
    try:
        core = write_core_to(fd, pid, threads, siginfo, limit)
    except BaseException:
        os.close(fd)
        raise
    core.path = f"/proc/{os.getpid()}/fd/{fd}"
    return fd, core


def write_core_to(fd: int, pid: int, threads: list[ThreadState], siginfo: bytes, limit: int) -> CoreFile:
    """Write the core of ``pid`` into the open, empty file ``fd``."""
    comm, rest = _stat_fields(pid)
    ppid, pgrp, sid = int(rest[1]), int(rest[2]), int(rest[3])
    with open(f"/proc/{pid}/auxv", "rb") as auxv_file:
        auxv = auxv_file.read()
    core = CoreFile("")
    mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        memory = coremaps.plan(pid, [t.stack_pointer for t in threads], limit, mem)
        mappings, core.skipped = memory.mappings, memory.skipped
        notes = [_note(b"CORE", NT_PRSTATUS, _prstatus(threads[0], pid, ppid, pgrp, sid))]
        notes.append(_note(b"CORE", NT_PRPSINFO, _prpsinfo(pid, comm, rest)))
        notes.append(_note(b"CORE", NT_SIGINFO, siginfo))
        notes.append(_note(b"CORE", NT_AUXV, auxv))
        notes.append(_note(b"CORE", NT_FILE, _nt_file(mappings)))
        notes.append(_note(b"CORE", NT_FPREGSET, threads[0].fpregs))
        for thread in threads[1:]:
            notes.append(_note(b"CORE", NT_PRSTATUS, _prstatus(thread, pid, ppid, pgrp, sid)))
            notes.append(_note(b"CORE", NT_FPREGSET, thread.fpregs))
        note_bytes = b"".join(notes)
        phnum = 1 + len(mappings)
        data_start = 64 + 56 * phnum + len(note_bytes)
        first = offset = data_start + (-data_start % PAGE)
        headers = [struct.pack("<2I6Q", 4, 0, 64 + 56 * phnum, 0, 0, len(note_bytes), 0, 4)]  # PT_NOTE
        for mapping in mappings:
            flags = (4 if "r" in mapping.perms else 0) | (2 if "w" in mapping.perms else 0)
            flags |= 1 if "x" in mapping.perms else 0
            headers.append(
                struct.pack("<2I6Q", 1, flags, offset, mapping.start, 0, mapping.dump, mapping.size, PAGE)
            )
            offset += mapping.dump
        elf = ELF_MAGIC + bytes([2, 1, 1, 0]) + bytes(8)
        elf += struct.pack("<2HI3QI6H", 4, 62, 1, 0, 64, 0, 0, 64, 56, phnum, 64, 0, 0)
        head = elf + b"".join(headers) + note_bytes
        os.pwrite(fd, head, 0)
        written, offset = len(head), first
        for mapping in mappings:
            written += _copy(mem, fd, mapping, offset)
            offset += mapping.dump
        os.ftruncate(fd, offset)
        core.size = written
    finally:
        os.close(mem)
    return core


def _copy(mem: int, fd: int, mapping: Mapping, offset: int) -> int:
    """A mapping's planned runs, zero or unreadable pages left as holes; the bytes written."""
    written = 0
    for start, length in mapping.runs:
        done = 0
        while done < length:
            size = min(CHUNK, length - done)
            at = start + done
            done += size
            try:
                chunk = os.pread(mem, size, mapping.start + at)
            except OSError:
                continue
            if not chunk or chunk == ZERO[: len(chunk)]:
                continue
            view, page = memoryview(chunk), 0
            while page < len(chunk):  # runs of non-zero pages, one write each
                while page < len(chunk) and view[page : page + PAGE] == ZERO_PAGE:
                    page += PAGE
                end = page
                while end < len(chunk) and view[end : end + PAGE] != ZERO_PAGE:
                    end += PAGE
                if end > page:
                    os.pwrite(fd, view[page:end], offset + at + page)
                    written += end - page
                page = end
    return written
