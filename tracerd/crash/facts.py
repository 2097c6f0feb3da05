"""The facts around a crash that coredumpctl and apport show: process, host, package, threads.

process_facts() (ppid, gid, cwd, cgroup, unit, exe mtime: read while the
process is held), host_facts(), package_facts() (runs dpkg: call it from a
thread), number_threads() (both tracers alike: the main thread first, then by
tid) and frame_label() (``(smtpd + 0x1427)``).  /proc/PID/environ is never read:
it holds secrets.

Security: what is read is the target's and data only; paths are /proc's own
(integer pid and tid), never a name the target chose.

Diagnostics: nothing raises; a fact that cannot be read is None.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
from typing import Any

from tracerd.crash import debugsyms, elfinfo
from tracerd.crash.signature import FrameLike
from tracerd.timefmt import iso_utc

_UNIT = re.compile(r"[^/]+\.(?:service|scope)$")
_THREAD_HEAD = re.compile(r"^Thread \d+ ")


def _read(path: str, limit: int = 65536) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as text:
            return text.read(limit)
    except OSError:
        return None


def process_facts(pid: int) -> dict[str, Any]:
    """ppid, gid (real), cwd, cgroup, unit and exe_mtime of ``pid`` (each None when unreadable)."""
    facts: dict[str, Any] = {"ppid": None, "gid": None, "cwd": None, "cgroup": None, "unit": None,
                             "exe_mtime": None}  # fmt: skip
    for line in (_read(f"/proc/{pid}/status") or "").splitlines():
        key, _, value = line.partition(":")
        if key == "PPid" and value.strip().isdigit():
            facts["ppid"] = int(value)
        elif key == "Gid" and value.split() and value.split()[0].isdigit():
            facts["gid"] = int(value.split()[0])
    with contextlib.suppress(OSError):
        facts["cwd"] = os.readlink(f"/proc/{pid}/cwd")
    facts["cgroup"] = cgroup_of(_read(f"/proc/{pid}/cgroup") or "")
    facts["unit"] = unit_of(facts["cgroup"])
    with contextlib.suppress(OSError):
        facts["exe_mtime"] = iso_utc(os.stat(f"/proc/{pid}/exe").st_mtime)  # the mapped file, even if replaced
    return facts


def cgroup_of(text: str) -> str | None:
    """The unified (v2) cgroup path, else v1's name=systemd one, else the first listed."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            paths.setdefault(parts[1], parts[2].strip())
    for key in ("", "name=systemd"):
        if key in paths:
            return paths[key]
    return next(iter(paths.values()), None)


def unit_of(cgroup: str | None) -> str | None:
    """The systemd unit in a cgroup path (``/system.slice/postfix@-.service`` -> ``postfix@-.service``)."""
    units = [part for part in (cgroup or "").split("/") if _UNIT.fullmatch(part)]
    return units[-1] if units else None


def host_facts() -> dict[str, Any]:
    """hostname, boot_id, kernel (release) and distro (os-release's PRETTY_NAME)."""
    boot_id = (_read("/proc/sys/kernel/random/boot_id") or "").strip() or None
    return {"hostname": socket.gethostname() or None, "boot_id": boot_id, "kernel": os.uname().release,
            "distro": debugsyms.os_release().get("PRETTY_NAME")}  # fmt: skip


def package_facts(exe: str | None) -> dict[str, Any]:
    """{"package", "package_version"} of the executable (None, None when no package owns it)."""
    try:
        stamp = os.stat(exe).st_mtime_ns if exe else 0
    except OSError:
        stamp = 0
    return dict(_package_facts(exe, stamp))


@functools.lru_cache(maxsize=256)
def _package_facts(exe: str | None, _stamp: int) -> dict[str, Any]:
    facts: dict[str, Any] = {"package": None, "package_version": None}
    found = elfinfo.owner(exe) if exe else None
    if found is not None:
        package, arch = found
        facts["package"] = package
        facts["package_version"] = debugsyms.installed_version(f"{package}:{arch}" if arch else package)
    return facts


def comm(pid: int, tid: int) -> str | None:
    return (_read(f"/proc/{pid}/task/{tid}/comm", 64) or "").strip() or None


def number_threads(threads: list[Any], pid: int, stack_overflow: dict[str, Any] | None = None) -> dict[int, int]:
    """Renumber ``threads`` in place (1..N, main first, then by tid), named by comm; {old id: new id}.
    gdb's ``Thread N`` heads and a stack overflow's ``thread`` follow."""
    ordered = sorted(threads, key=lambda t: (t.tid != pid, t.tid if t.tid is not None else 1 << 62, t.id))
    renumbered: dict[int, int] = {}
    for number, thread in enumerate(ordered, start=1):
        renumbered[thread.id] = number
        thread.id = number
        if thread.tid is not None:
            thread.name = comm(pid, thread.tid) or thread.name
        if thread.text:
            thread.text = _THREAD_HEAD.sub(f"Thread {number} ", thread.text, count=1)
    threads[:] = ordered
    if stack_overflow is not None and stack_overflow.get("thread") in renumbered:
        stack_overflow["thread"] = renumbered[stack_overflow["thread"]]
    return renumbered


def frame_label(frame: FrameLike) -> str:
    """The function, else ``(module + 0xOFFSET)`` as coredumpctl shows it, else ``(module)`` or ``??``."""
    if frame.function:
        return frame.function
    if not frame.object:
        return "??"
    module = os.path.basename(frame.object)
    return f"({module} + {frame.module_offset})" if frame.module_offset else f"({module})"


def describe(process: object, host: object) -> list[tuple[str, str]]:
    """(label, text) lines of the facts for a human, what is lacking left out; the renderer cleans them."""
    proc = process if isinstance(process, dict) else {}
    box = host if isinstance(host, dict) else {}

    def known(*pairs: tuple[str, object]) -> str:
        return "  ".join(f"{name} {value}" if name else str(value) for name, value in pairs if value not in (None, ""))

    out = [
        ("ppid", known(("", proc.get("ppid")), ("uid", proc.get("uid")), ("gid", proc.get("gid")),
                       ("cwd", proc.get("cwd")))),
        ("unit" if proc.get("unit") else "cgroup", known(("", proc.get("unit")), ("cgroup" if proc.get("unit") else "",
                                                                                proc.get("cgroup")))),
        ("package", known(("", proc.get("package") or ("(no package owns it)" if "package" in proc else None)),
                          ("", proc.get("package_version")), ("exe mtime", proc.get("exe_mtime")))),
        ("host", known(("", box.get("hostname")), ("boot id", box.get("boot_id")), ("kernel", box.get("kernel")),
                       ("", box.get("distro")))),
    ]  # fmt: skip
    return [(label, text) for label, text in out if text]
