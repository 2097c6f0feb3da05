"""Retrace: name a stored report's frames again from the debug files available now.

A report keeps, for each frame, its module's build-id and the offset of its
pc in that module (:mod:`tracerd.crash.modules`).  :func:`retrace` looks
for each build-id's debug file, first under the local roots
(``/usr/lib/debug/.build-id/xx/yyyy.debug``, where Debian's ``-dbgsym``
packages put them), then from debuginfod (:mod:`tracerd.crash.debuginfod`),
and asks binutils' ``addr2line`` for the function and file:line of every
frame of that module at once.  A return address (every frame but the
innermost, and the one a signal interrupted) is looked up one byte back, so
that the line is the call's.  The result records which frames changed, to
what, and from which source (README "Cores and retrace").

Security: the report is data: a build-id must be hex and an offset an
integer before either reaches a path or addr2line's argv (no shell);
addr2line runs with a timeout on files found by build-id only.

Diagnostics: a module without a debug file, a debuginfod failure or an
addr2line failure is one line in ``errors`` and its frames stay as they
were; nothing raises past :class:`RetraceError` (a report without the
fields a retrace needs).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tracerd.crash import elfinfo
from tracerd.crash.debuginfod import BUILD_ID_RE, Client, FetchError
from tracerd.timefmt import iso_utc

DEFAULT_ROOTS = (Path("/usr/lib/debug"),)
ADDR2LINE_TIMEOUT = 60.0
TRAMPOLINES = frozenset({"<signal handler called>", "__restore_rt", "__kernel_rt_sigreturn"})


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
    for thread_id, frame in frames:
        after = previous is not None and previous.get("function") in TRAMPOLINES
        previous = frame
        build_id, offset = frame.get("build_id"), _lookup_offset(frame, after)
        if isinstance(build_id, str) and BUILD_ID_RE.fullmatch(build_id) and offset is not None:
            wanted.setdefault(build_id, []).append((thread_id, frame, offset))
    if not wanted and frames:
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
            new = (function or frame.get("function"), file or frame.get("file"),
                   line if file else frame.get("line"))  # fmt: skip
            if new != before:
                changed.append({"thread": thread_id, "level": frame.get("level"), "pc": frame.get("pc"),
                                "before": _describe(*before), "after": _describe(*new), "function": new[0],
                                "file": new[1], "line": new[2], "source": source})  # fmt: skip
    return {"time": iso_utc(), "seconds": round(time.monotonic() - started, 3), "frames": len(frames),
            "changed": changed, "modules": modules, "errors": errors}  # fmt: skip


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
            None if file in ("", "??") else file,
            int(number) if number.isdigit() and number != "0" else None,
        ))  # fmt: skip
    return out


def apply(report: dict[str, Any], record: dict[str, Any]) -> None:
    """The record's names into the report's frames (for printing the retraced backtrace)."""
    by_key = {(c["thread"], c["level"]): c for c in record.get("changed", [])}
    for thread in report.get("threads") or []:
        for frame in thread.get("frames") or []:
            change = by_key.get((thread.get("id"), frame.get("level")))
            if change is not None:
                frame.update(function=change["function"], file=change["file"], line=change["line"])
