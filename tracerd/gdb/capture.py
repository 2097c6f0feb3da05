"""Crash capture: everything gdb can tell about a process stopped by a fatal signal.

Shared by the gdb and watch tracers. Given a GdbMI whose inferior is stopped
at the signal, it collects every thread's frames and ``bt full``, registers,
the signal (from ``$_siginfo`` alone), ``x/16i $pc``, libraries with
build-ids and debug-symbol advice into a CrashReport. Fields: docs/design.md,
"Files".

Security: the target is read through gdb and /proc; its strings are data
only. ELF reads and dpkg/apt-cache run in a worker thread, off the loop.

Diagnostics: every step is bounded and optional: one that fails or times out
leaves its part empty and says so in ``capture_errors``; the report is still
written and the process still released.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal as signalmod
import time
from typing import Any

import psutil

from tracerd.crash import debugsyms, elfinfo, facts, modules, overflow, segv, siginfo
from tracerd.crash.report import CrashReport, Frame, Library, Thread
from tracerd.errors import TracerFailed
from tracerd.gdb import frames
from tracerd.gdb.mi import GdbMI
from tracerd.procinfo import ProcessIdentity
from tracerd.timefmt import iso_utc

_THREAD_HEAD = re.compile(r"^Thread (\d+) \(", re.MULTILINE)
_LWP = re.compile(r"LWP (\d+)")
_ASSERTION = re.compile(r"Assertion `.*' failed")
_C_STRING = re.compile(r'^0x[0-9a-f]+ "(.*)"(?:\.\.\.)?$', re.DOTALL)
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


def process_info(identity: ProcessIdentity, name: str) -> dict[str, Any]:
    info: dict[str, Any] = {"name": name, "pid": identity.pid, "exe": None, "cmdline": [], "uid": None}
    try:
        proc = psutil.Process(identity.pid)
        info["exe"] = proc.exe()
        info["cmdline"] = proc.cmdline()
        info["uid"] = proc.uids().real
    except (psutil.Error, OSError):
        pass
    info.update(facts.process_facts(identity.pid))  # ppid, gid, cwd, cgroup, unit, exe_mtime; never environ
    return info


async def host_and_package(process: dict[str, Any], deadline: float | None) -> dict[str, Any]:
    """The host's facts; the executable's package into ``process`` (dpkg in a thread, bounded)."""
    process.update(package=None, package_version=None)
    try:
        async with asyncio.timeout(left(deadline, PACKAGE_TIMEOUT) or 0.1):
            process.update(await asyncio.to_thread(facts.package_facts, process.get("exe")))
    except TimeoutError:
        process.setdefault("capture_errors", []).append("package: dpkg did not answer in time")
    return await asyncio.to_thread(facts.host_facts)


PACKAGE_TIMEOUT = 10.0


async def capture(
    mi: GdbMI,
    identity: ProcessIdentity,
    name: str,
    stop: dict[str, Any],
    *,
    tracer: str,
    log_path: str | None,
    deadline: float | None = None,
    sysroot: str | None = None,
) -> CrashReport:
    """The crash report of the process gdb holds at ``stop``; steps past ``deadline``
    (time.monotonic()) are skipped, and said so."""
    errors: list[str] = []

    async def step(what: str, cli: str | None = None, mi_command: str | None = None) -> Any:
        timeout = left(deadline, 60.0 if cli is not None else 30.0)
        if timeout is None:
            errors.append(f"{what}: skipped, the capture's deadline was reached")
            return None
        try:
            if cli is not None:
                return await mi.console(cli, timeout=timeout)
            assert mi_command is not None
            return (await mi.command(mi_command, timeout=timeout)).payload
        except TracerFailed as err:
            errors.append(f"{what}: {err}")
            return None

    crashed_id = str(stop.get("thread-id") or "1")
    info = await step("threads", mi_command="-thread-info") or {}
    await step("select", mi_command=f"-thread-select {crashed_id}")
    registers_text = await step("registers", cli="info registers") or ""
    registers = {m.group(1): m.group(2) for m in _REGISTER.finditer(registers_text)}
    disassembly = await step("disassembly", cli="x/16i $pc") or ""
    signal = await _signal(mi, identity.pid, stop.get("signal-name"), errors, deadline)
    maps = await asyncio.to_thread(segv.read_maps, identity.pid)
    found = overflow.recognise(signal, registers, maps)

    async def run(what: str, command: str) -> Any:
        return await step(what, mi_command=command)

    threads: list[Thread] = []
    stack_overflow = None
    for raw in info.get("threads", []):
        tid_match = _LWP.search(str(raw.get("target-id", "")))
        crashed = str(raw["id"]) == crashed_id
        if crashed and found:
            stack, stack_overflow = await _overflowed(run, str(raw["id"]), found)
        else:
            limit = frames.DEPTH_LIMIT if crashed else frames.OTHER_DEPTH_LIMIT
            stack = [_frame(frame) for frame in (await frames.unwind(run, str(raw["id"]), limit=limit)).frames]
        threads.append(Thread(id=int(raw["id"]), tid=int(tid_match.group(1)) if tid_match else None,
                              name=raw.get("name"), crashed=crashed, frames=stack))  # fmt: skip
    if stack_overflow is not None:
        signal["analysis"] = "stack overflow"
    signal["analysis"] = segv.analyse(signal, registers, maps, disassembly)  # apport's SegvAnalysis
    _fill_objects(threads, [(m.start, m.end, m.path) for m in maps if m.path.startswith("/")])
    full = await step("bt full", cli=f"thread apply all bt full {frames.BT_FULL}") or ""
    full = _without_sysroot(threads, full, sysroot)
    _attach_text(threads, full)
    facts.number_threads(threads, identity.pid, stack_overflow)  # numbered alike under both tracers
    libs_payload = await step("libraries", mi_command="-file-list-shared-libraries") or {}
    process = process_info(identity, name)
    host = await host_and_package(process, deadline)
    libraries, missing, advice = await asyncio.to_thread(_objects, libs_payload, process.get("exe"), threads)
    # for a later retrace: each module's range and build-id, each pc's module offset
    modules.annotate(await asyncio.to_thread(modules.read_modules, identity.pid), libraries, threads)
    abort_message = await _abort_message(mi, deadline) if signal.get("name") == "SIGABRT" else None
    report = CrashReport(
        process=process,
        signal=signal,
        time=iso_utc(),
        threads=threads,
        registers=registers,
        disassembly=disassembly.strip(),
        libraries=libraries,
        log=log_path,
        tracer=tracer,
        missing_symbols=missing,
        debug_symbols=advice,
        abort_message=abort_message,
        assertion=abort_message if abort_message and _ASSERTION.search(abort_message) else None,
        stack_overflow=stack_overflow,
        host=host,
    )
    if errors:
        report.process.setdefault("capture_errors", []).extend(errors)
    return report


async def _overflowed(run: frames.Run, thread: str, found: dict[str, Any]) -> tuple[list[Frame], dict[str, Any]]:
    """The overflowed thread's bounded frames and analysis; unwound fully only if the estimate
    is under the depth limit."""
    stack = await frames.unwind(run, thread, limit=frames.DEPTH_LIMIT, count_depth=False)
    inner = [_frame(raw) for raw in stack.frames]
    if stack.complete:  # a short stack after all
        return inner, overflow.analyse(found, inner, [], thread=int(thread), depth=len(inner), sp_at_last=None)
    sp_last = segv.number(await frames.sp_at(run, thread, len(inner) - 1))
    guess = overflow.analyse(found, inner, [], thread=int(thread), depth=None, sp_at_last=sp_last)
    if int(guess.get("depth") or 0) >= frames.DEPTH_LIMIT:
        return inner, guess  # too deep to unwind within the time a held process may wait
    stack = await frames.unwind(run, thread, limit=frames.DEPTH_LIMIT)
    listed = [_frame(raw) for raw in stack.frames]
    if stack.depth is None:
        return inner, guess
    outer = [frame for frame in listed if frame.level >= frames.INNER]
    return listed, overflow.analyse(found, inner, outer, thread=int(thread), depth=stack.depth, sp_at_last=sp_last)


def left(deadline: float | None, timeout: float) -> float | None:
    """``timeout`` cut to what is left before ``deadline``; None once it has passed."""
    if deadline is None:
        return timeout
    remaining = deadline - time.monotonic()
    return min(timeout, remaining) if remaining > 0 else None


async def _abort_message(mi: GdbMI, deadline: float | None) -> str | None:
    """glibc's ``__abort_msg->msg`` (abort_msg_s: an unsigned size, then the text), set by
    assert() and glibc's fatal errors; None when unset or unreadable."""
    try:
        pointer = siginfo.parse_int(await mi.evaluate("*(long *)&__abort_msg", timeout=left(deadline, 10.0) or 0.1))
        if not pointer:
            return None
        text = await mi.evaluate(f"(char *){pointer + 4:#x}", timeout=left(deadline, 10.0) or 0.1)
    except TracerFailed:
        return None
    found = _C_STRING.match(text or "")
    if not found:
        return None
    return found.group(1).encode("latin-1", "backslashreplace").decode("unicode_escape", "replace").strip() or None


async def _signal(mi: GdbMI, pid: int, stop_name: object, errors: list[str],
                  deadline: float | None = None) -> dict[str, Any]:  # fmt: skip
    """The signal dict, decoded from ``$_siginfo`` only; fields it cannot vouch for stay None."""
    expected = signalmod.Signals.__members__.get(str(stop_name))

    async def read(expression: str) -> int | None:
        try:
            return siginfo.parse_int(await mi.evaluate(expression, timeout=left(deadline, 10.0) or 0.1))
        except TracerFailed as err:
            errors.append(f"siginfo: {err}")
            return None

    signo, si_code = await read(siginfo.SIGNO), await read(siginfo.CODE)
    fallback = int(expected or signalmod.SIGSEGV)
    if signo is None or si_code is None or not 0 < signo < signalmod.NSIG:
        errors.append("siginfo: gdb could not read $_siginfo; si_code unknown")
        return siginfo.decode(fallback, None)
    if expected is not None and signo != expected:
        # gdb attached to a process someone else stopped: the siginfo is the SIGSTOP's
        errors.append(f"siginfo: $_siginfo is {siginfo.signal_name(signo)}'s, not {expected.name}'s; si_code unknown")
        return siginfo.decode(fallback, None)
    fields = {key: await read(expression) for key, expression in siginfo.fields_to_read(signo, si_code).items()}
    return siginfo.decode(signo, si_code, fields, own_pid=_own_pid(pid))


def _own_pid(pid: int) -> int:
    """The process's pid as it knows itself (innermost NSpid): si_pid is in its namespace."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError, IndexError):
        pass
    return pid


def _objects(
    payload: dict[str, Any], exe: str | None, threads: list[Thread]
) -> tuple[list[Library], list[dict[str, Any]], dict[str, Any] | None]:
    """Libraries with build-ids, objects lacking line info, the advice: files and dpkg, so in a thread."""
    libraries = _libraries(payload, exe)
    build_ids = {lib.path: lib.build_id for lib in libraries}
    missing = debugsyms.missing_symbols(threads, build_ids)
    by_path = {lib.path: lib for lib in libraries}
    for entry in missing:
        lib = by_path.get(entry["object"])
        if lib is not None:
            lib.debug_package = entry.get("debug_package")
    return libraries, missing, debugsyms.advice(missing, os.environ)


def _without_sysroot(threads: list[Thread], full: str, sysroot: str | None) -> str:
    """Strip the sysroot gdb read objects from (``/SYSROOT/usr/lib/...``) off frames and ``bt full``."""
    if not sysroot:
        return full
    for thread in threads:
        for frame in thread.frames:
            if frame.object and frame.object.startswith(sysroot + "/"):
                frame.object = frame.object[len(sysroot) :]
    return full.replace(f" {sysroot}/", " /")


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
        libraries.append(Library(path=exe, start=None, end=None, build_id=elfinfo.build_id(exe, untrusted=True)))
    for raw in payload.get("shared-libraries", []):
        path = str(raw.get("target-name") or raw.get("id"))
        ranges = raw.get("ranges") or [{}]
        libraries.append(
            Library(
                path=path,
                start=ranges[0].get("from"),
                end=ranges[-1].get("to"),
                build_id=elfinfo.build_id(path, untrusted=True),
            )
        )
    return libraries
