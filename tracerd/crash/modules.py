"""What retracing a report later needs: each module's bias, range and build-id, each frame's offset.

Read from /proc/PID/maps while the process is held.  The build-id is read from
the mapped copy (``/proc/PID/map_files``), so an upgraded library still gives
the code that ran; from the file on disk only when map_files cannot be opened
(``build_id_source``).  The bias is where ELF vaddr 0 sits; a frame's
``module_offset`` is ``pc - bias`` (docs/crashes.md, "Cores and retrace").

Security: maps and mapped files are the target's; a path is opened only through
the pid's map_files, else when lstat says regular, O_NONBLOCK|O_NOFOLLOW; ELF
headers are parsed with bounds by elfinfo, the one ELF reader.

Diagnostics: nothing raises; a module whose header cannot be read has no bias
(None), and its frames no module offset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tracerd.crash import elfinfo
from tracerd.crash.report import Library, Thread

DELETED = " (deleted)"


@dataclass
class Module:
    path: str  # without " (deleted)"
    start: int
    end: int
    base: int  # the mapping at file offset 0
    base_end: int
    deleted: bool
    bias: int | None = None
    build_id: str | None = None
    source: str | None = None  # map_files | path


def read_modules(pid: int) -> list[Module]:
    """The file-backed ELF mappings of ``pid``, one Module per file."""
    groups: dict[str, Module] = {}
    try:
        with open(f"/proc/{pid}/maps") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) != 6 or not fields[5].startswith("/"):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        offset, name = int(fields[2], 16), fields[5]
        deleted = name.endswith(DELETED)
        path = name[: -len(DELETED)] if deleted else name
        module = groups.get(path)
        if module is None:
            if offset != 0:
                continue  # not an ELF object we can place (no header mapped)
            module = groups[path] = Module(path, start, end, start, end, deleted)
        module.start, module.end = min(module.start, start), max(module.end, end)
    modules = list(groups.values())
    for module in modules:
        mapped = f"/proc/{pid}/map_files/{module.base:x}-{module.base_end:x}"
        module.build_id, module.source = elfinfo.build_id(mapped), "map_files"
        first = elfinfo.first_load_page(mapped)
        if module.build_id is None and not module.deleted:
            module.build_id, module.source = elfinfo.build_id(module.path, untrusted=True), "path"
            first = first if first is not None else elfinfo.first_load_page(module.path, untrusted=True)
        if module.build_id is None and first is None:
            module.source = None
        if first is not None:
            module.bias = module.base - first
    return [m for m in modules if m.bias is not None or m.build_id is not None]


def module_of(modules: list[Module], address: int) -> Module | None:
    return next((m for m in modules if m.start <= address < m.end), None)


def annotate(modules: list[Module], libraries: list[Library], threads: list[Thread]) -> None:
    """Bias, range, deleted flag and mapped build-id into the libraries; pc, offset, build-id into frames."""
    by_path = {m.path: m for m in modules}
    for library in libraries:
        path = library.path[: -len(DELETED)] if library.path.endswith(DELETED) else library.path
        module = by_path.get(path) or by_path.get(os.path.realpath(path))
        if module is None:
            continue
        library.path = module.path
        library.start, library.end = hex(module.start), hex(module.end)
        library.bias = hex(module.bias) if module.bias is not None else None
        library.deleted = module.deleted
        if module.build_id:
            library.build_id = module.build_id
        library.build_id_source = module.source
    for thread in threads:
        for frame in thread.frames:
            try:
                pc = int(frame.address or "", 16)
            except ValueError:
                continue
            frame.pc = hex(pc)
            module = module_of(modules, pc)
            if module is None:
                continue
            frame.object = frame.object or module.path
            frame.build_id = module.build_id
            if module.bias is not None:
                frame.module_offset = hex(pc - module.bias)
