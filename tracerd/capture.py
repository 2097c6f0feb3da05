"""Crash capture: everything gdb can tell about a process stopped by a fatal signal.

Shared by the gdb tracer (gdb is attached for the process's life) and the
watch tracer (gdb is attached only once the signal came).  Given a
:class:`~tracerd.gdbmi.GdbMI` whose inferior is stopped at the signal, it
collects every thread's frames and ``bt full``, the registers,
``$_siginfo`` (si_code, fault address), ``x/16i $pc`` and the shared
libraries with build-ids, into a :class:`~tracerd.crash.CrashReport`.

Security: all of it reads the target through gdb and /proc; the report's
strings are the target's own and are treated as data only.

Diagnostics: each step is bounded and optional: a step that fails or times
out leaves its part of the report empty and says so in ``errors``, so a
half-broken target still gets a report and is still released.
"""

from __future__ import annotations

import datetime as dt
import re
import signal as signalmod
from typing import Any

import psutil

from tracerd import elfinfo
from tracerd.crash import CrashReport, Frame, Library, Thread
from tracerd.errors import TracerFailed
from tracerd.gdbmi import GdbMI
from tracerd.procinfo import ProcessIdentity

_THREAD_HEAD = re.compile(r"^Thread (\d+) \(", re.MULTILINE)
_LWP = re.compile(r"LWP (\d+)")
_REGISTER = re.compile(r"^(\w+)\s+(0x[0-9a-f]+)", re.MULTILINE)


def _frame(raw: dict[str, Any]) -> Frame:
    line = raw.get("line")
    return Frame(
        level=int(raw.get("level", 0)),
        function=raw.get("func") if raw.get("func") not in (None, "??") else None,
        file=raw.get("fullname") or raw.get("file"),
        line=int(line) if line and str(line).isdigit() else None,
        object=raw.get("from"),
        address=raw.get("addr"),
    )


def _mappings(pid: int) -> list[tuple[int, int, str]]:
    """(start, end, path) of the file-backed mappings, to name a frame's object."""
    out = []
    try:
        with open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].startswith("/"):
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    out.append((start, end, fields[5].strip()))
    except OSError:
        pass
    return out


def _fill_objects(threads: list[Thread], maps: list[tuple[int, int, str]]) -> None:
    """gdb names a frame's object only for shared libraries: the rest from the maps."""
    for thread in threads:
        for frame in thread.frames:
            if frame.object or not frame.address:
                continue
            try:
                address = int(frame.address, 16)
            except ValueError:
                continue
            frame.object = next((path for start, end, path in maps if start <= address < end), None)


def _process_info(identity: ProcessIdentity, name: str) -> dict[str, Any]:
    info: dict[str, Any] = {"name": name, "pid": identity.pid, "exe": None, "cmdline": [], "uid": None}
    try:
        proc = psutil.Process(identity.pid)
        info["exe"] = proc.exe()
        info["cmdline"] = proc.cmdline()
        info["uid"] = proc.uids().real
    except (psutil.Error, OSError):
        pass
    return info


async def capture(
    mi: GdbMI,
    identity: ProcessIdentity,
    name: str,
    stop: dict[str, Any],
    *,
    tracer: str,
    log_path: str | None,
) -> CrashReport:
    """Collect the crash report of the process gdb holds stopped at ``stop``."""
    errors: list[str] = []

    async def step(what: str, cli: str | None = None, mi_command: str | None = None) -> Any:
        try:
            if cli is not None:
                return await mi.console(cli, timeout=60.0)
            assert mi_command is not None
            return (await mi.command(mi_command, timeout=30.0)).payload
        except TracerFailed as err:
            errors.append(f"{what}: {err}")
            return None

    signal_name = str(stop.get("signal-name") or "SIGSEGV")
    crashed_id = str(stop.get("thread-id") or "1")
    info = await step("threads", mi_command="-thread-info") or {}
    threads: list[Thread] = []
    for raw in info.get("threads", []):
        tid_match = _LWP.search(str(raw.get("target-id", "")))
        payload = await step("frames", mi_command=f"-stack-list-frames --thread {raw['id']}") or {}
        threads.append(
            Thread(
                id=int(raw["id"]),
                tid=int(tid_match.group(1)) if tid_match else None,
                name=raw.get("name"),
                crashed=str(raw["id"]) == crashed_id,
                frames=[_frame(frame) for frame in payload.get("stack", [])],
            )
        )
    _fill_objects(threads, _mappings(identity.pid))
    full = await step("bt full", cli="thread apply all bt full") or ""
    _attach_text(threads, full)
    await step("select", mi_command=f"-thread-select {crashed_id}")
    registers_text = await step("registers", cli="info registers") or ""
    registers = {m.group(1): m.group(2) for m in _REGISTER.finditer(registers_text)}
    disassembly = await step("disassembly", cli="x/16i $pc") or ""
    si_code = await mi.evaluate("$_siginfo.si_code")
    fault = await mi.evaluate("$_siginfo._sifields._sigfault.si_addr")
    libs_payload = await step("libraries", mi_command="-file-list-shared-libraries") or {}
    libraries = _libraries(libs_payload, _process_info(identity, name).get("exe"))
    signo = int(getattr(signalmod.Signals, signal_name, 0))
    report = CrashReport(
        process=_process_info(identity, name),
        signal={
            "number": signo,
            "name": signal_name,
            "si_code": int(si_code) if si_code and si_code.lstrip("-").isdigit() else None,
            "fault_address": fault.split()[0] if fault else None,
        },
        time=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        threads=threads,
        registers=registers,
        disassembly=disassembly.strip(),
        libraries=libraries,
        log=log_path,
        tracer=tracer,
    )
    report.missing_symbols = _missing_symbols(report)
    if errors:
        report.process["capture_errors"] = errors
    return report


def _attach_text(threads: list[Thread], full: str) -> None:
    """Split ``thread apply all bt full`` into each thread's own text."""
    heads = list(_THREAD_HEAD.finditer(full))
    by_id = {thread.id: thread for thread in threads}
    for index, head in enumerate(heads):
        end = heads[index + 1].start() if index + 1 < len(heads) else len(full)
        thread = by_id.get(int(head.group(1)))
        if thread is not None:
            thread.text = full[head.start() : end].strip()


def _libraries(payload: dict[str, Any], exe: str | None) -> list[Library]:
    libraries = []
    if exe:
        libraries.append(Library(path=exe, start=None, end=None, build_id=elfinfo.build_id(exe)))
    for raw in payload.get("shared-libraries", []):
        path = str(raw.get("target-name") or raw.get("id"))
        ranges = raw.get("ranges") or [{}]
        libraries.append(
            Library(
                path=path,
                start=ranges[0].get("from"),
                end=ranges[-1].get("to"),
                build_id=elfinfo.build_id(path),
            )
        )
    return libraries


def _missing_symbols(report: CrashReport) -> list[dict[str, str | None]]:
    """Objects whose frames have no function name, with the package that would name them."""
    by_path = {lib.path: lib for lib in report.libraries}
    seen: dict[str, dict[str, str | None]] = {}
    for thread in report.threads:
        for frame in thread.frames:
            if frame.function or not frame.object or frame.object in seen:
                continue
            lib = by_path.get(frame.object)
            build_id = lib.build_id if lib else elfinfo.build_id(frame.object)
            package = elfinfo.debug_package(frame.object, build_id)
            if lib is not None:
                lib.debug_package = package
            seen[frame.object] = {"object": frame.object, "build_id": build_id, "package": package}
    return list(seen.values())
