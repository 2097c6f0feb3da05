"""ELF facts a crash report needs: the GNU build-id, and who ships the symbols.

build_id() reads the ``NT_GNU_BUILD_ID`` note (32/64-bit, either endian) from
the PT_NOTE segments, else the SHT_NOTE sections (detached ``.debug`` files).
owner(), debug_file_owner() and debug_package_of() name the Debian package of a
file or of its symbols (``-dbgsym``; ``libc6-dbg``); they run dpkg: call them
from a thread.

Security: the files are the crashed process's objects, untrusted: opened
O_NONBLOCK, read only if regular; an ``untrusted`` path is resolved by readlink
alone, opened O_NOFOLLOW and only if lstat says regular.  Offsets and sizes are
checked against the file's size, note reads capped.  dpkg runs from an argv, no
shell, 5 s timeout, given only absolute paths without glob characters.

Diagnostics: none raise.  Not ELF, truncated, no build-id, unreadable: None;
likewise a missing or slow dpkg, and a file no package owns.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import struct
import subprocess
from pathlib import Path
from typing import BinaryIO

PT_NOTE = 4
SHT_NOTE = 7
NT_GNU_BUILD_ID = 3
MAX_NOTE_BYTES = 1 << 20  # a real note area is a few hundred bytes
MAX_NOTE_AREAS = 256
MAX_SECTIONS = 65535
DPKG_TIMEOUT = 5.0
DEBUG_ROOT = "/usr/lib/debug/.build-id"

# Packages whose symbols are not in PACKAGE-dbgsym.
DEBUG_PACKAGE_EXCEPTIONS = {"libc6": "libc6-dbg"}

_PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_HEX_RE = re.compile(r"[0-9a-f]{4,512}")
# usrmerge: dpkg knows the shipped path, maybe across a /lib -> usr/lib symlink
_MERGED = (("/usr/lib/", "/lib/"), ("/usr/lib64/", "/lib64/"), ("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/"))

# per ELF class: the header after e_ident; header table rows, where (type, offset, size, align) sit
_HEADER = {1: "HHIIIIIHHHHHH", 2: "HHIQQQIHHHHHH"}
_PHDR = {1: ("IIIIIIII", (0, 1, 4, 7)), 2: ("IIQQQQQQ", (0, 2, 5, 7))}
_SHDR = {1: ("IIIIIIIIII", (1, 4, 5, 8)), 2: ("IIQQQQIIQQ", (1, 4, 5, 8))}
_VADDR = {1: (1, 2, 2), 2: (2, 3, 3)}  # where a program header's (offset, vaddr) sit, padded to 3
PT_LOAD = 1
PAGE = os.sysconf("SC_PAGE_SIZE")


def build_id(path: str | Path, *, untrusted: bool = False) -> str | None:
    """The GNU build-id of the ELF file at ``path`` as hex, or None; ``untrusted``: see open_regular."""
    try:
        fd = open_regular(path, untrusted=untrusted)
    except (OSError, ValueError, TypeError):
        return None
    try:
        with os.fdopen(fd, "rb") as elf:
            info = os.fstat(elf.fileno())
            if not stat.S_ISREG(info.st_mode):
                return None
            return _build_id(elf, info.st_size)
    except (OSError, ValueError, struct.error, OverflowError):
        return None


def open_regular(path: str | Path, *, untrusted: bool = False) -> int:
    """``path`` read-only, non-blocking (a FIFO cannot hang us); ``untrusted``: no symlink, no device."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    if untrusted:  # links resolved by readlink alone (a SONAME), then the file itself, never a device
        path = os.path.realpath(path)
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise OSError(0, "not a regular file")
        flags |= os.O_NOFOLLOW
    return os.open(path, flags)


def debug_links(fd: int) -> tuple[bytes | None, bytes | None]:
    """The ``.gnu_debuglink`` name and ``.gnu_debugaltlink`` path of the ELF at ``fd``, None when absent."""
    try:
        with os.fdopen(os.dup(fd), "rb") as elf:
            return _debug_links(elf, os.fstat(elf.fileno()).st_size)
    except (OSError, ValueError, struct.error, OverflowError, IndexError):
        return None, None


def _debug_links(elf: BinaryIO, file_size: int) -> tuple[bytes | None, bytes | None]:
    parsed = _header(elf, file_size)
    if parsed is None:
        return None, None
    order, elf_class, fields = parsed
    row_fmt = order + _SHDR[elf_class][0]
    shoff, entsize, count, names_at = fields[5], fields[10], fields[11], fields[12]
    if not shoff or not 0 < count <= MAX_SECTIONS or entsize < struct.calcsize(row_fmt) or names_at >= count:
        return None, None
    raw = _read(elf, shoff, entsize * count, file_size) or b""
    rows = [struct.unpack_from(row_fmt, raw, index * entsize) for index in range(count)] if raw else []
    names = _read(elf, rows[names_at][4], min(rows[names_at][5], MAX_NOTE_BYTES), file_size) if rows else None
    found: dict[bytes, bytes] = {}
    for row in rows if names else []:
        name = names[row[0] : names.find(b"\0", row[0])] if names else b""
        if name in (b".gnu_debuglink", b".gnu_debugaltlink"):
            found[name] = (_read(elf, row[4], min(row[5], 4096), file_size) or b"").split(b"\0", 1)[0]
    return found.get(b".gnu_debuglink"), found.get(b".gnu_debugaltlink")


def _read(elf: BinaryIO, offset: int, size: int, file_size: int) -> bytes | None:
    if offset < 0 or size < 0 or offset + size > file_size:
        return None
    elf.seek(offset)
    data = elf.read(size)
    return data if len(data) == size else None


def _header(elf: BinaryIO, file_size: int) -> tuple[str, int, tuple[int, ...]] | None:
    """(byte order, ELF class, the header's fields after e_ident), or None for no ELF."""
    ident = _read(elf, 0, 16, file_size)
    if ident is None or ident[:4] != b"\x7fELF" or ident[4] not in _HEADER or ident[5] not in (1, 2):
        return None
    order = "<" if ident[5] == 1 else ">"
    header_fmt = order + _HEADER[ident[4]]
    header = _read(elf, 16, struct.calcsize(header_fmt), file_size)
    return None if header is None else (order, ident[4], struct.unpack(header_fmt, header))


def _build_id(elf: BinaryIO, file_size: int) -> str | None:
    parsed = _header(elf, file_size)
    if parsed is None:
        return None
    order, elf_class, fields = parsed
    phoff, shoff, phentsize, phnum, shentsize, shnum = fields[4], fields[5], *fields[8:12]
    # Program headers first: they are what the loader (and gdb) see.
    areas = [
        row[1:]
        for row in _table(elf, file_size, (phoff, phentsize, phnum), order, _PHDR[elf_class])
        if row[0] == PT_NOTE
    ]
    areas += [
        row[1:]
        for row in _table(elf, file_size, (shoff, shentsize, shnum), order, _SHDR[elf_class])
        if row[0] == SHT_NOTE
    ]
    for offset, size, align in areas[:MAX_NOTE_AREAS]:
        blob = _read(elf, offset, min(size, MAX_NOTE_BYTES), file_size)
        found = _gnu_build_id(blob, order, align) if blob else None
        if found:
            return found
    return None


def first_load_page(path: str, *, untrusted: bool = False) -> int | None:
    """The page of the vaddr of the PT_LOAD with the lowest file offset (what the mapping at
    file offset 0 holds), or None; ``untrusted`` as for :func:`build_id`."""
    try:
        with os.fdopen(open_regular(path, untrusted=untrusted), "rb") as elf:
            size = os.fstat(elf.fileno()).st_size
            parsed = _header(elf, size)
            if parsed is None:
                return None
            order, elf_class, fields = parsed
            layout = (_PHDR[elf_class][0], (0, *_VADDR[elf_class]))  # (type, offset, vaddr, -)
            loads = [row[1:3] for row in _table(elf, size, (fields[4], fields[8], fields[9]), order, layout)
                     if row[0] == PT_LOAD]  # fmt: skip
    except (OSError, ValueError, struct.error, OverflowError):
        return None
    if not loads:
        return None
    p_offset, p_vaddr = min(loads)
    return int((p_vaddr - p_offset) & ~(PAGE - 1))


def _table(
    elf: BinaryIO, file_size: int, where: tuple[int, int, int], order: str, layout: tuple[str, tuple[int, ...]]
) -> list[tuple[int, int, int, int]]:
    """Rows of the header table at ``where`` (offset, entry size, count) as (type, offset, size, align)."""
    offset, entsize, count = where
    fmt, (kind, at, size, align) = order + layout[0], layout[1]
    if not offset or not count or entsize < struct.calcsize(fmt):
        return []
    raw = _read(elf, offset, entsize * count, file_size)
    if raw is None:
        return []
    rows = []
    for index in range(count):
        row = struct.unpack_from(fmt, raw, index * entsize)
        rows.append((row[kind], row[at], row[size], row[align]))
    return rows


def _gnu_build_id(blob: bytes, order: str, align: int) -> str | None:
    """Walk one note area; notes are padded to 4 bytes, or 8 in an 8-aligned area."""
    step = 8 if align == 8 else 4
    pos = 0
    while pos + 12 <= len(blob):
        namesz, descsz, kind = struct.unpack_from(order + "III", blob, pos)
        name_at = pos + 12
        desc_at = name_at + -(-namesz // step) * step
        pos = desc_at + -(-descsz // step) * step
        if desc_at + descsz > len(blob):
            return None
        if kind == NT_GNU_BUILD_ID and blob[name_at : name_at + namesz] == b"GNU\x00" and 0 < descsz <= 256:
            return blob[desc_at : desc_at + descsz].hex()
    return None


def debug_file_owner(build_id: str | None) -> str | None:
    """The package owning ``/usr/lib/debug/.build-id/xx/rest.debug`` (libc6-dbg, foo-dbgsym), if installed."""
    dpkg = _dpkg()
    if dpkg is None or not build_id or not _HEX_RE.fullmatch(build_id):
        return None
    debug_file = f"{DEBUG_ROOT}/{build_id[:2]}/{build_id[2:]}.debug"
    if not os.path.isfile(debug_file):
        return None
    found = _dpkg_owner(dpkg, debug_file)
    return found[0] if found else None


def debug_package_of(package: str) -> str:
    """The package with the detached symbols of binary package ``package``."""
    if package.endswith(("-dbg", "-dbgsym")):
        return package
    return DEBUG_PACKAGE_EXCEPTIONS.get(package, package + "-dbgsym")


def owner(path: str) -> tuple[str, str | None] | None:
    """(package, architecture or None) that ``dpkg -S`` says installed ``path``, under any of its names."""
    dpkg = _dpkg()
    if dpkg is None:
        return None
    for candidate in _candidates(str(path)):
        found = _dpkg_owner(dpkg, candidate)
        if found:
            return found
    return None


def _dpkg() -> str | None:
    return shutil.which("dpkg", path=os.environ.get("PATH", os.defpath) + os.pathsep + "/usr/bin:/bin")


def _candidates(path: str) -> list[str]:
    """The names dpkg may know the file by: as given, resolved, and its usrmerge twin."""
    if not os.path.isabs(path) or any(char in path for char in "*?[]\\\n"):
        return []
    names = [path, os.path.realpath(path)]
    for name in list(names):
        for merged, legacy in _MERGED:
            if name.startswith(merged):
                names.append(legacy + name[len(merged) :])
            elif name.startswith(legacy):
                names.append(merged + name[len(legacy) :])
    return list(dict.fromkeys(names))


def _dpkg_owner(dpkg: str, path: str) -> tuple[str, str | None] | None:
    """(package, architecture or None) that ``dpkg -S`` says owns ``path``."""
    try:
        done = subprocess.run(
            [dpkg, "-S", path],
            capture_output=True,
            text=True,
            timeout=DPKG_TIMEOUT,
            check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    for line in done.stdout.splitlines():
        if line.startswith("diversion by") or ": " not in line:
            continue
        packages, _, _owned = line.partition(": ")
        first, _, arch = packages.split(",")[0].strip().partition(":")
        if _PACKAGE_RE.fullmatch(first):
            return first, arch if _PACKAGE_RE.fullmatch(arch) else None
    return None
