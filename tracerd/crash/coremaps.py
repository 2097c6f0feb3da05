"""Which memory goes into the watcher's core, and what it costs: the pages written.

plan() chooses as the kernel's default ``coredump_filter`` does: anonymous and
written private mappings whole, file-backed ones only an ELF header page; of
anonymous memory only pages present or swapped (pagemap) are read, the rest stay
holes.  Over ``max_core_process_bytes`` (pages written, not address space) the
stack below each sp goes first, then the largest anonymous mappings; never what
gdb needs to unwind (stacks, heap, vdso, libraries and their .bss, ld.so's link
map).  Each drop is listed in ``Plan.skipped`` (docs/crashes.md).

Security: maps, pagemap and memory are the target's; the link map walk is
bounded and reads only through ``/proc/PID/mem``.

Diagnostics: an unreadable pagemap counts (and reads) the whole mapping; a link
map that cannot be walked protects nothing more.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field

PAGE = os.sysconf("SC_PAGE_SIZE")
ELF_MAGIC = b"\x7fELF"
BATCH = 1 << 16  # pagemap entries per read: 512 KiB covering 256 MiB
MAX_LINK_MAPS = 4096
# the top byte of a pagemap entry: bit 63 present, bit 62 swapped
_PRESENT = bytes(1 if b & 0xC0 else 0 for b in range(256))
_RUN = re.compile(b"\x01+")
AT_PHDR, AT_PHNUM, PT_DYNAMIC, PT_PHDR, DT_DEBUG = 3, 5, 2, 6, 21
NEVER = ("[vvar]", "[vvar_vclock]", "[vsyscall]")


@dataclass
class Mapping:
    start: int
    end: int
    perms: str
    offset: int
    path: str
    anonymous_kb: int = 0
    resident_kb: int = 0  # Rss + Swap
    dump: int = 0  # bytes of it the core covers, from start (p_filesz); the rest reads as absent
    runs: list[tuple[int, int]] = field(default_factory=list)  # (offset, length) read; the rest are holes
    role: str = ""  # why it is never dropped: stack, heap, vdso, library, library bss, link map

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def written(self) -> int:
        return sum(length for _, length in self.runs)

    @property
    def file_backed(self) -> bool:
        return self.path.startswith("/") and not self.path.startswith(("/dev/zero", "/SYSV"))


@dataclass
class Plan:
    mappings: list[Mapping]
    skipped: list[str] = field(default_factory=list)

    @property
    def written(self) -> int:
        return sum(m.written for m in self.mappings)


def read_mappings(pid: int) -> list[Mapping]:
    out: list[Mapping] = []
    with open(f"/proc/{pid}/smaps", "rb") as smaps:
        for raw in smaps:
            line = raw.decode("utf-8", "surrogateescape")
            head = line.split(maxsplit=5)
            if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                start, end = (int(x, 16) for x in head[0].split("-"))
                path = head[5].rstrip("\n") if len(head) == 6 else ""
                out.append(Mapping(start, end, head[1], int(head[2], 16), path))
            elif out and line.startswith("Anonymous:"):
                out[-1].anonymous_kb = int(line.split()[1])
            elif out and line.startswith(("Rss:", "Swap:")):
                out[-1].resident_kb += int(line.split()[1])
    return out


def plan(pid: int, stack_pointers: list[int], limit: int, mem: int | None = None) -> Plan:
    """The memory of ``pid``'s core (its threads' ``stack_pointers``) within ``limit`` bytes written."""
    own = mem is None
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC) if mem is None else mem
    try:
        mappings = read_mappings(pid)
        try:
            pagemap = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            pagemap = -1
        try:
            for mapping in mappings:
                _choose(mapping, fd, pagemap)
        finally:
            if pagemap >= 0:
                os.close(pagemap)
        _roles(mappings, stack_pointers, _link_map_addresses(pid, fd))
        result = Plan(mappings)
        _trim(result, stack_pointers, limit)
        return result
    finally:
        if own:
            os.close(fd)


def _choose(mapping: Mapping, mem: int, pagemap: int) -> None:
    """What of one mapping goes into the core (the kernel's default filter), and which pages are read."""
    perms, path = mapping.perms, mapping.path
    if "r" not in perms or path in NEVER:
        return
    if not mapping.file_backed:  # heap, stacks, anonymous and shared anonymous memory, vdso
        mapping.dump = mapping.size
        if path == "[vdso]":
            mapping.runs = [(0, mapping.size)]
        elif mapping.resident_kb:
            mapping.runs = _present(pagemap, mapping)
        return
    if perms[3] == "p" and (mapping.anonymous_kb > 0 or "w" in perms):
        # written private file mapping (relocations, .data, r_debug): whole, its pages are the file's or ours
        mapping.dump, mapping.runs = mapping.size, [(0, mapping.size)]
        return
    if mapping.offset == 0:
        try:
            if os.pread(mem, 4, mapping.start) == ELF_MAGIC:
                mapping.dump, mapping.runs = PAGE, [(0, PAGE)]  # the ELF header: gdb matches build-ids
        except OSError:
            pass


def _present(pagemap: int, mapping: Mapping) -> list[tuple[int, int]]:
    """Runs of pages present or swapped; the whole mapping when pagemap cannot say."""
    if pagemap < 0:
        return [(0, mapping.size)]
    first, count, runs = mapping.start // PAGE, mapping.size // PAGE, list[tuple[int, int]]()
    try:
        for base in range(0, count, BATCH):
            data = os.pread(pagemap, min(BATCH, count - base) * 8, (first + base) * 8)
            for match in _RUN.finditer(data[7::8].translate(_PRESENT)):
                start, length = (base + match.start()) * PAGE, (match.end() - match.start()) * PAGE
                if runs and runs[-1][0] + runs[-1][1] == start:
                    start, length = runs[-1][0], runs.pop()[1] + length
                runs.append((start, length))
    except OSError:
        return [(0, mapping.size)]
    return runs


def _roles(mappings: list[Mapping], stack_pointers: list[int], link_maps: list[int]) -> None:
    previous: Mapping | None = None
    for m in mappings:
        if m.path == "[stack]" or any(m.start <= sp < m.end for sp in stack_pointers):
            m.role = "stack"
        elif m.path in ("[heap]", "[vdso]"):
            m.role = m.path[1:-1]
        elif m.file_backed:
            m.role = "library"
        elif any(m.start <= address < m.end for address in link_maps):
            m.role = "link map"
        elif previous is not None and previous.file_backed and "w" in previous.perms and previous.end == m.start:
            m.role = "library bss"
        previous = m


def _trim(result: Plan, stack_pointers: list[int], limit: int) -> None:
    """Drop the least needed memory until the pages written fit ``limit``."""
    total = result.written
    if total <= limit:
        return
    for m in [m for m in result.mappings if m.role == "stack"]:
        if total <= limit:
            return
        sp = min((sp for sp in stack_pointers if m.start <= sp < m.end), default=None)
        if sp is None:
            continue
        cut = ((sp - 128) & ~(PAGE - 1)) - m.start  # the red zone stays
        dead = sum(min(length, max(0, cut - offset)) for offset, length in m.runs)
        if dead <= 0:
            continue
        m.runs = [(max(offset, cut), offset + length - max(offset, cut)) for offset, length in m.runs
                  if offset + length > cut]  # fmt: skip
        total -= dead
        result.skipped.append(f"{m.start:#x}-{m.start + cut:#x} [stack below sp] ({dead} bytes)")
    for m in sorted(result.mappings, key=lambda m: m.written, reverse=True):
        if total <= limit:
            return
        if m.written and not m.role:
            total -= m.written
            result.skipped.append(f"{m.start:#x}-{m.end:#x} {m.path or '[anon]'} ({m.written} bytes)")
            m.dump, m.runs = 0, []


def _link_map_addresses(pid: int, mem: int) -> list[int]:
    """Addresses of ld.so's ``link_map`` nodes and names (r_debug via DT_DEBUG), never dropped; [] if none."""
    try:
        with open(f"/proc/{pid}/auxv", "rb") as file:
            raw = file.read()
        auxv = dict(struct.iter_unpack("<2Q", raw[: len(raw) // 16 * 16]))
        phdr, phnum = auxv.get(AT_PHDR, 0), min(auxv.get(AT_PHNUM, 0), 64)
        headers = [struct.unpack_from("<2I6Q", os.pread(mem, 56 * phnum, phdr), 56 * i) for i in range(phnum)]
        bias = next((phdr - h[3] for h in headers if h[0] == PT_PHDR), None)
        dynamic = next((h for h in headers if h[0] == PT_DYNAMIC), None)
        if bias is None or dynamic is None:
            return []
        data = os.pread(mem, min(dynamic[6], 1 << 16), bias + dynamic[3])
        r_debug = next((value for tag, value in struct.iter_unpack("<2Q", data[: len(data) // 16 * 16])
                        if tag == DT_DEBUG), 0)  # fmt: skip
        if not r_debug:
            return []
        found, node = [r_debug], struct.unpack("<Q", os.pread(mem, 8, r_debug + 8))[0]
        while node and node not in found and len(found) < MAX_LINK_MAPS:
            _addr, name, _ld, following = struct.unpack("<4Q", os.pread(mem, 32, node))
            found += [node, name]
            node = following
    except (OSError, struct.error, ValueError):
        return []
    return found
