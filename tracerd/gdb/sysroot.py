"""A sysroot of verified files for the gdb of one crash (issue 23).

gdb opens objects by names the target gives (maps, link map). So each
capture's gdb gets a 0700 sysroot whose only entries are links to
``/proc/TRACERD/fd/N`` of files tracerd opened itself: each mapping through
``/proc/PID/map_files`` (else its path, ``O_NOFOLLOW|O_NONBLOCK``), kept only
if regular and the (device, inode) the maps show; placed under the mapping's
path and each link-map name in it. See docs/design.md, "Tracers".

Security: no file is opened by a target path but as above; names not absolute
and normalized get no entry; gdb's cwd is the sysroot and it is never asked
for a source line. Objects with a debuglink or altlink need a root-only
directory (:func:`symbols_safe`). The link map is read with bounds.

Diagnostics: an unverifiable mapping gets no entry (gdb lacks its symbols;
the report still lists its module); only creating the directory raises.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import struct
import tempfile
from dataclasses import dataclass, field

from tracerd.crash import elfinfo
from tracerd.errors import TracerFailed

DELETED = " (deleted)"
AT_PHDR, AT_PHNUM = 3, 5
PT_DYNAMIC, PT_PHDR = 2, 6
DT_NULL, DT_DEBUG = 0, 21
MAX_NAME = 4096
MAX_OBJECTS = 4096
PLAIN_PATH = re.compile(r"/[A-Za-z0-9._/+-]+")  # what gdb takes verbatim, unquoted


@dataclass
class _Mapped:
    start: int  # of the whole file's mappings
    end: int
    base: tuple[int, int] | None  # the mapping at file offset 0
    dev: int
    inode: int


@dataclass
class Sysroot:
    path: str
    exe: str | None = None  # the program, inside the sysroot
    files: dict[str, str] = field(default_factory=dict)  # target path -> verified /proc/TRACERD/fd/N
    fds: list[int] = field(default_factory=list)

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()
        shutil.rmtree(self.path, ignore_errors=True)  # our own directory: rmtree never follows a link


def clean(name: str) -> bool:
    """An absolute, normalized name of plain bytes: safe under the sysroot."""
    return (name.startswith("/") and name != "/" and len(name) < MAX_NAME and os.path.normpath(name) == name
            and not name.startswith("//") and not any(c in name for c in "\0\n"))  # fmt: skip


def build(pid: int, parent: str | None) -> Sysroot:
    """The sysroot of held ``pid`` in a new 0700 directory under ``parent`` (else the temporary
    directory, where ``parent`` is not a plain path gdb takes verbatim)."""
    if parent is not None and not PLAIN_PATH.fullmatch(parent):
        parent = None
    root = Sysroot(tempfile.mkdtemp(prefix=f".sysroot-{pid}-", dir=parent))
    try:
        mapped = _maps(pid)
        by_fd: list[tuple[_Mapped, str]] = []
        for path, mapping in mapped.items():
            fd = _open_mapped(pid, path, mapping)
            if fd is None:
                continue
            if not symbols_safe(fd):
                os.close(fd)
                continue
            root.fds.append(fd)
            link = f"/proc/{os.getpid()}/fd/{fd}"
            root.files[path] = link
            by_fd.append((mapping, link))
            _place(root, path, link)
            _place(root, path + DELETED, link)
        exe = _open_exe(pid)
        if exe is not None and not symbols_safe(exe[0]):
            os.close(exe[0])
            exe = None
        if exe is not None:
            fd, name = exe
            root.fds.append(fd)
            link = f"/proc/{os.getpid()}/fd/{fd}"
            mapped_as = root.files.get(name)  # the same file, checked already: its entry
            root.exe = (_place(root, name, mapped_as) if mapped_as else _place(root, name, link)) or _place(
                root, "/.tracerd-exe", link
            )
        for name, l_ld in link_map(pid):
            owner = next((link for m, link in by_fd if m.start <= l_ld < m.end), None)
            if owner is not None:
                _place(root, name, owner)
    except BaseException:
        root.close()
        raise
    return root


def gdb_commands(path: str) -> list[str]:
    """gdb settings to find every object in the sysroot and nothing beside it (cwd, no auto-load).
    ``-gdb-set`` takes its line verbatim, quotes included, so the path must be plain."""
    if not PLAIN_PATH.fullmatch(path):
        raise TracerFailed(f"gdb cannot use a sysroot at {path!r}: use a plain state_dir path")
    return [f"-gdb-set sysroot {path}", f'-environment-cd "{path}"', "-gdb-set auto-load off",
            "-gdb-set exec-file-mismatch off"]  # fmt: skip


def missing(root: Sysroot, pid: int) -> bool:
    """Does the link map of ``pid`` name an object ``root`` has no entry for (one loaded since)?"""
    return any(clean(name) and not os.path.lexists(root.path + name) for name, _ in link_map(pid))


def symbols_safe(fd: int) -> bool:
    """May gdb get the object at ``fd``? gdb opens its debuglink beside the real path and its
    altlink as written, blocking: only a plain debuglink name, an altlink under /usr/lib/debug/,
    in a directory (and ``.debug``) root's alone."""
    debuglink, altlink = elfinfo.debug_links(fd)
    if debuglink is None and altlink is None:
        return True
    if altlink is not None and not (altlink.startswith(b"/usr/lib/debug/") and clean(os.fsdecode(altlink))):
        return False
    if debuglink is not None and (not debuglink or b"/" in debuglink or debuglink in (b".", b"..")):
        return False
    try:
        directory = os.path.dirname(os.readlink(f"/proc/self/fd/{fd}").removesuffix(DELETED))
        extra = os.path.join(directory, ".debug")
        return _roots_alone(directory) and (not os.path.lexists(extra) or _roots_alone(extra))
    except OSError:
        return False


def _roots_alone(directory: str) -> bool:
    """Is ``directory`` and every directory above it owned by root, written by no one else?"""
    path = os.path.realpath(directory)
    while True:
        info = os.stat(path)
        if info.st_uid != 0 or info.st_mode & 0o022 or not stat.S_ISDIR(info.st_mode):
            return False
        if path == "/":
            return True
        path = os.path.dirname(path)


def _place(root: Sysroot, name: str, link: str) -> str | None:
    """``root.path + name`` -> ``link``; the entry's path, None when the name cannot have one."""
    if not clean(name):
        return None
    where = root.path + name
    try:
        os.makedirs(os.path.dirname(where), mode=0o700, exist_ok=True)
        os.symlink(link, where)
    except FileExistsError:
        return where if os.readlink(where) == link else None
    except OSError:  # a component is one of our links: that name stays out
        return None
    return where


def _maps(pid: int) -> dict[str, _Mapped]:
    out: dict[str, _Mapped] = {}
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="surrogateescape") as maps:
        for line in maps:
            fields = line.rstrip("\n").split(maxsplit=5)
            if len(fields) != 6 or not fields[5].startswith("/"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            major, minor = (int(x, 16) for x in fields[3].split(":"))
            path = fields[5].removesuffix(DELETED)
            entry = out.setdefault(path, _Mapped(start, end, None, os.makedev(major, minor), int(fields[4])))
            entry.start, entry.end = min(entry.start, start), max(entry.end, end)
            if int(fields[2], 16) == 0 and entry.base is None:
                entry.base = (start, end)
    return out


def _same_regular(fd: int, dev: int, inode: int) -> bool:
    info = os.fstat(fd)
    return stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) == (dev, inode)


def _open_checked(path: str, flags: int, dev: int, inode: int, *, link: bool) -> int | None:
    """``path`` opened only if (l)stat says regular, kept only if it is the (dev, inode) expected."""
    try:
        info = os.stat(path) if link else os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != (dev, inode):
            return None
        fd = os.open(path, flags | os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    if _same_regular(fd, dev, inode):
        return fd
    os.close(fd)
    return None


def _open_mapped(pid: int, path: str, mapping: _Mapped) -> int | None:
    start, end = mapping.base or (mapping.start, mapping.end)
    via = f"/proc/{pid}/map_files/{start:x}-{end:x}"
    fd = _open_checked(via, 0, mapping.dev, mapping.inode, link=True)
    if fd is None:  # no CAP_SYS_ADMIN: the path, never through a symlink, never a FIFO or device
        fd = _open_checked(path, os.O_NOFOLLOW, mapping.dev, mapping.inode, link=False)
    return fd


def _open_exe(pid: int) -> tuple[int, str] | None:
    exe = f"/proc/{pid}/exe"
    try:
        info = os.stat(exe)
        name = os.readlink(exe).removesuffix(DELETED)
    except OSError:
        return None
    fd = _open_checked(exe, 0, info.st_dev, info.st_ino, link=True)
    return (fd, name) if fd is not None else None


def link_map(pid: int) -> list[tuple[str, int]]:
    """(l_name, l_ld) of each object in the held process's link map (x86-64/aarch64: 64-bit LE)."""
    try:
        with open(f"/proc/{pid}/auxv", "rb") as auxv_file:
            auxv = auxv_file.read()
        mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        return _walk(mem, auxv)
    except (OSError, struct.error, ValueError, OverflowError):
        return []
    finally:
        os.close(mem)


def _walk(mem: int, auxv: bytes) -> list[tuple[str, int]]:
    def word(address: int) -> int:
        data = os.pread(mem, 8, address)
        if len(data) != 8:
            raise ValueError("short read")
        return int(struct.unpack("<Q", data)[0])

    aux = dict(struct.iter_unpack("<QQ", auxv[: len(auxv) // 16 * 16]))
    phdr, phnum = aux.get(AT_PHDR, 0), min(aux.get(AT_PHNUM, 0), 256)
    headers = [struct.unpack("<IIQQ", os.pread(mem, 24, phdr + 56 * i)) for i in range(phnum)]
    bias = next((phdr - vaddr for kind, _, _, vaddr in headers if kind == PT_PHDR), None)
    dynamic = next((vaddr for kind, _, _, vaddr in headers if kind == PT_DYNAMIC), None)
    if bias is None or dynamic is None:
        return []
    r_debug = 0
    for index in range(4096):
        tag = word(bias + dynamic + 16 * index)
        if tag == DT_NULL:
            break
        if tag == DT_DEBUG:
            r_debug = word(bias + dynamic + 16 * index + 8)
            break
    if not r_debug:
        return []
    found: list[tuple[str, int]] = []
    entry, seen = word(r_debug + 8), set()
    while entry and entry not in seen and len(found) < MAX_OBJECTS:
        seen.add(entry)
        name_at, l_ld = word(entry + 8), word(entry + 16)
        raw = os.pread(mem, MAX_NAME, name_at) if name_at else b""
        name = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        if name:
            found.append((name, l_ld))
        entry = word(entry + 24)
    return found
