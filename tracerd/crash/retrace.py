"""Retrace: name a stored report's frames again from the debug files available now.

retrace() finds each frame's debug file by build-id (the local ``.build-id``
roots, then debuginfod) and asks binutils' ``addr2line`` for what gdb left
unnamed; a return address is looked up one byte back.  keep() puts the record
(``ID.retrace``) into the stored report and its index entry, atomically, under
the store's lock.  Rules and record: docs/crashes.md, "Cores and retrace".

Security: the report is data: a build-id must be hex and an offset an integer
before either reaches a path or addr2line's argv (no shell); addr2line runs
with a timeout, on files found by build-id only.

Diagnostics: a module without a debug file, a debuginfod or addr2line failure
is one line in ``errors``, its frames unchanged; RetraceError for a report
without the fields a retrace needs.  keep() raises NotFound (no report, no
record) or OSError (the report left as it was).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tracerd.crash import elfinfo
from tracerd.crash.debuginfod import BUILD_ID_RE, Client, FetchError
from tracerd.crash.report import CRASH_ID_RE, Frame, top_functions
from tracerd.crash.signature import report_named_frames
from tracerd.crash.store import CrashStore
from tracerd.errors import NotFound
from tracerd.timefmt import iso_utc

DEFAULT_ROOTS = (Path("/usr/lib/debug"),)
ADDR2LINE_TIMEOUT = 60.0
TRAMPOLINES = frozenset({"<signal handler called>", "__restore_rt", "__kernel_rt_sigreturn"})
# gdb's line for a frame it could not name: "#3  0x00007f... in ?? () from /lib/x.so"
_UNNAMED_LINE = re.compile(r"#(?P<level>\d+)(?P<gap>\s+)(?P<address>0x[0-9a-fA-F]+ in )?\?\? \(\)(?P<tail>.*)")


class RetraceError(Exception):
    """The report cannot be retraced; one line."""


def local_debug_file(roots: Iterable[Path], build_id: str) -> Path | None:
    """``ROOT/.build-id/xx/yyyy.debug`` whose build-id really is ``build_id``."""
    for root in roots:
        path = root / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug"
        if path.is_file() and elfinfo.build_id(path) == build_id:
            return path
    return None


def _frames(report: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    threads = report.get("threads")
    if not isinstance(threads, list):
        raise RetraceError("not a crash report: no threads")
    found = []
    for thread in threads:
        if not isinstance(thread, dict) or not isinstance(thread.get("frames"), list):
            raise RetraceError("not a crash report: a thread without frames")
        found += [(int(thread.get("id") or 0), frame) for frame in thread["frames"] if isinstance(frame, dict)]
    return found


def _lookup_offset(frame: dict[str, Any], after_trampoline: bool) -> int | None:
    try:
        offset = int(str(frame.get("module_offset")), 16)
    except ValueError:
        return None
    return offset if frame.get("level") == 0 or after_trampoline else max(offset - 1, 0)


def retrace(report: dict[str, Any], roots: Iterable[Path] = DEFAULT_ROOTS,
            client: Client | None = None) -> dict[str, Any]:  # fmt: skip
    """The report's frames named from the debug files available now: the retrace record."""
    started = time.monotonic()
    roots = list(roots)
    wanted: dict[str, list[tuple[int, dict[str, Any], int]]] = {}
    previous: dict[str, Any] | None = None
    frames = _frames(report)
    offsets = 0
    for thread_id, frame in frames:
        after = previous is not None and previous.get("function") in TRAMPOLINES
        previous = frame
        build_id, offset = frame.get("build_id"), _lookup_offset(frame, after)
        if isinstance(build_id, str) and BUILD_ID_RE.fullmatch(build_id) and offset is not None:
            offsets += 1
            if not named_by_gdb(frame):
                wanted.setdefault(build_id, []).append((thread_id, frame, offset))
    if not offsets and frames:
        raise RetraceError("the report has no module offsets (taken by a tracerd without retrace support)")
    modules: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    changed: list[dict[str, Any]] = []
    for build_id, entries in wanted.items():
        obj = entries[0][1].get("object")
        path, source = local_debug_file(roots, build_id), "local"
        if path is None and client is not None:
            try:
                path, source = client.fetch(build_id)
            except FetchError as err:
                errors.append(f"{obj}: debuginfod: {err}")
        if path is None:
            modules[build_id] = {"object": obj, "source": None}
            errors.append(f"{obj}: no debug file for build-id {build_id}")
            continue
        modules[build_id] = {"object": obj, "source": source, "file": str(path)}
        try:
            names = _addr2line(path, [offset for _, _, offset in entries])
        except RetraceError as err:
            errors.append(f"{obj}: {err}")
            continue
        for (thread_id, frame, _), (function, file, line) in zip(entries, names, strict=True):
            if function is None and file is None:
                continue
            before = (frame.get("function"), frame.get("file"), frame.get("line"))
            new = (frame.get("function") or function, file or frame.get("file"),
                   line if file else frame.get("line"))  # fmt: skip
            if new != before:
                changed.append({"thread": thread_id, "level": frame.get("level"), "pc": frame.get("pc"),
                                "before": _describe(*before), "after": _describe(*new), "function": new[0],
                                "file": new[1], "line": new[2], "source": source})  # fmt: skip
    return {"time": iso_utc(), "seconds": round(time.monotonic() - started, 3), "frames": len(frames),
            "changed": changed, "modules": modules, "errors": errors}  # fmt: skip


def named_by_gdb(frame: dict[str, Any]) -> bool:
    """gdb named the frame with its function and file:line: a retrace leaves it alone."""
    return bool(frame.get("function") and frame.get("file") and frame.get("line") is not None)


def source_path(name: str) -> str:
    """addr2line's file name normalised (DWARF 5's ``./nptl/./nptl/x.c`` is ``nptl/x.c``)."""
    head, sep, tail = name.partition("/./")
    stem = os.path.normpath(head) if sep else ""
    if sep and stem not in (".", "/") and (tail == stem or tail.startswith(stem + "/")):
        name = tail
    return os.path.normpath(name) if name else name


def _describe(function: object, file: object, line: object) -> str:
    text = f"{function or '??'} ()"
    if file:
        text += f" at {file}" + (f":{line}" if line is not None else "")
    return text


def _addr2line(path: Path, offsets: list[int]) -> list[tuple[str | None, str | None, int | None]]:
    """(function, file, line) per offset from binutils' addr2line; None where it knows nothing."""
    argv = ["addr2line", "-f", "-C", "-e", str(path), *(hex(offset) for offset in offsets)]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                                timeout=ADDR2LINE_TIMEOUT, check=False)  # fmt: skip
    except FileNotFoundError:
        raise RetraceError("addr2line (binutils) is not installed") from None
    except subprocess.TimeoutExpired:
        raise RetraceError(f"addr2line did not answer within {ADDR2LINE_TIMEOUT:g} s") from None
    lines = result.stdout.splitlines()
    if result.returncode != 0 or len(lines) != 2 * len(offsets):
        reason = result.stderr.strip().splitlines()[-1:] or [f"exit {result.returncode}"]
        raise RetraceError(f"addr2line: {reason[0][:200]}")
    out: list[tuple[str | None, str | None, int | None]] = []
    for index in range(len(offsets)):
        function, where = lines[2 * index], lines[2 * index + 1]
        file, _, number = where.partition(" (")[0].rpartition(":")
        out.append((
            None if function == "??" else function,
            None if file in ("", "??") else source_path(file),
            int(number) if number.isdigit() and number != "0" else None,
        ))  # fmt: skip
    return out


def apply(report: dict[str, Any], record: dict[str, Any]) -> int:
    """The record's names into frames gdb left unnamed, their ``bt full`` lines, ``top``; the count."""
    changes = {(c.get("thread"), c.get("level")): c for c in record.get("changed") or [] if isinstance(c, dict)}
    applied = 0
    for thread in report.get("threads") or []:
        if not isinstance(thread, dict):
            continue
        renamed: dict[int, dict[str, Any]] = {}
        for frame in thread.get("frames") or []:
            change = changes.get((thread.get("id"), frame.get("level"))) if isinstance(frame, dict) else None
            if change is None or named_by_gdb(frame) or change.get("pc") != frame.get("pc"):
                continue
            function, file, line = change.get("function"), change.get("file"), change.get("line")
            if not (isinstance(function, str | None) and isinstance(file, str | None)
                    and (line is None or (isinstance(line, int) and not isinstance(line, bool)))):  # fmt: skip
                continue
            frame.update(function=frame.get("function") or function, file=file or frame.get("file"),
                         line=line if file else frame.get("line"), retraced=str(change.get("source")))  # fmt: skip
            renamed[int(frame.get("level") or 0)] = frame
            applied += 1
        if renamed and isinstance(thread.get("text"), str):
            thread["text"] = "\n".join(_rename_line(text, renamed) for text in thread["text"].split("\n"))
    report["top"] = top_functions(_crashed_frames(report))
    if applied:
        _still_missing(report)
    return applied


def _still_missing(report: dict[str, Any]) -> None:
    """``missing_symbols`` without the objects whose frames all have file:line now (and their count)."""
    items = report.get("missing_symbols")
    if not isinstance(items, list):
        return
    counts: dict[str, int] = {}
    for thread in report.get("threads") or []:
        for frame in thread.get("frames") or [] if isinstance(thread, dict) else []:
            if isinstance(frame, dict) and frame.get("object") and not (frame.get("file") and frame.get("line")):
                counts[str(frame["object"])] = counts.get(str(frame["object"]), 0) + 1
    kept = [{**item, "frames": counts[str(item.get("object"))]} for item in items
            if isinstance(item, dict) and str(item.get("object")) in counts]  # fmt: skip
    report["missing_symbols"] = kept
    if not any(item.get("package") for item in kept):
        report["debug_symbols"] = None


def _rename_line(text: str, renamed: dict[int, dict[str, Any]]) -> str:
    """gdb's ``#N  0x... in ?? () from X`` line of a renamed frame, with its name and file:line."""
    found = _UNNAMED_LINE.fullmatch(text)
    frame = renamed.get(int(found["level"])) if found else None
    if found is None or frame is None:
        return text
    where = f" at {frame['file']}" + (f":{frame['line']}" if frame.get("line") is not None else "")
    return (f"#{found['level']}{found['gap']}{found['address'] or ''}{frame.get('function') or '??'} ()"
            + (where if frame.get("file") else found["tail"]))  # fmt: skip


def _crashed_frames(report: dict[str, Any]) -> list[Frame]:
    threads = [t for t in report.get("threads") or [] if isinstance(t, dict)]
    crashed = next((t for t in threads if t.get("crashed")), threads[0] if threads else {})
    return [Frame(int(f.get("level") or 0), _text(f.get("function")), _text(f.get("file")), None,
                  _text(f.get("object")), None, module_offset=_text(f.get("module_offset")))
            for f in crashed.get("frames") or [] if isinstance(f, dict)]  # fmt: skip


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def keep(store: CrashStore, crash_id: str) -> dict[str, Any]:
    """The record ``ID.retrace`` into the report ``ID.json`` and its entry: ``{"id", "applied", "top"}``."""
    if store.read_only:
        raise PermissionError(f"crash store {store.directory} is open read-only")
    with store._lock:
        report = store.get(crash_id)
        rid = report.get("id")
        if not isinstance(rid, str) or not CRASH_ID_RE.fullmatch(rid):
            raise NotFound(f"crash {crash_id}: report unreadable")
        try:
            record = store._read_json(f"{rid}.retrace")
        except (OSError, ValueError):
            raise NotFound(f"crash {rid}: no retrace record (tracerctl retrace {rid} writes it)") from None
        if not isinstance(record, dict) or not isinstance(record.get("changed"), list):
            raise NotFound(f"crash {rid}: retrace record unreadable")
        applied = apply(report, record)
        if applied:
            sources = sorted({str(c.get("source")) for c in record["changed"] if isinstance(c, dict)})
            report["retrace"] = {"time": str(record.get("time")), "frames": applied, "sources": sources}
            store._write_atomic(f"{rid}.json", json.dumps(report, indent=2, default=str).encode())
            for entry in store._entries.values():
                if entry.get("id") == rid:
                    entry.update(top=report["top"], frames=report_named_frames(report))
            store._publish()
            with contextlib.suppress(OSError):  # the report is safe; the index is rebuilt from it at start
                store._save_index()
    return {"id": rid, "applied": applied, "top": report["top"]}
