"""Debug-symbol advice that works here: which objects lack line info, and how to get it.

missing_symbols() gives each object with frames lacking file:line its Debian
package and version, its ``-dbgsym`` package and whether apt offers that exact
version; advice() says once how to get them on this system (the debian-debug
archive line, debuginfod).  Fields: docs/design.md, "Files".  These run dpkg
and apt-cache: call them from a thread.  Answers are cached per object and
build-id, apt's until apt's lists change.

Security: object paths are the crashed process's, untrusted: dpkg gets only
absolute paths without glob characters (elfinfo), package names are checked
against Debian's syntax, every program runs from an argv with a fixed
environment and a timeout.

Diagnostics: none raise.  A missing or slow dpkg or apt-cache leaves its fields
None, and the note says what is not known.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

from tracerd.crash import elfinfo

TIMEOUT = 10.0
DEBUGINFOD_URL = "https://debuginfod.debian.net"
DEBUGINFOD_PROFILE = "/etc/profile.d/debuginfod.sh"
DEBUG_LIST = "/etc/apt/sources.list.d/debian-debug.list"
APT_LISTS = "/var/lib/apt/lists"
SOURCES = ("/etc/apt/sources.list", "/etc/apt/sources.list.d/*.list", "/etc/apt/sources.list.d/*.sources")
OS_RELEASE = ("/etc/os-release", "/usr/lib/os-release")
_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?")
_VERSION = re.compile(r"[0-9][A-Za-z0-9.+~:-]*")
_CODENAME = re.compile(r"[a-z]+")
_TABLE_ROW = re.compile(r"^ (?:\*\*\*| {3}) (\S+) -?\d+$", re.MULTILINE)


def _run(*argv: str) -> str | None:
    """stdout of a successful run, bounded; None otherwise."""
    program = shutil.which(argv[0], path=_ENV["PATH"])
    if program is None:
        return None
    try:
        done = subprocess.run([program, *argv[1:]], capture_output=True, text=True, timeout=TIMEOUT,
                              check=False, env=_ENV)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def installed_version(package: str) -> str | None:
    """The installed version of ``package`` (``name`` or ``name:arch``), per dpkg-query."""
    if not _PACKAGE.fullmatch(package):
        return None
    out = _run("dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Version}\n", package)
    for line in (out or "").splitlines():
        status, _, version = line.partition(" ")
        version = version.strip()
        if status.startswith("ii") and _VERSION.fullmatch(version):
            return version
    return None


def apt_versions(package: str) -> list[str] | None:
    """The versions ``apt-cache policy`` knows for ``package`` ([] none; None: apt-cache failed)."""
    return _apt_versions(package, _lists_stamp())


def _lists_stamp() -> int:
    try:
        return os.stat(APT_LISTS).st_mtime_ns
    except OSError:
        return 0


@functools.lru_cache(maxsize=512)
def _apt_versions(package: str, _stamp: int) -> list[str] | None:
    if not _PACKAGE.fullmatch(package):
        return []
    out = _run("apt-cache", "policy", package)
    if out is None:
        return None
    return [version for version in _TABLE_ROW.findall(out) if _VERSION.fullmatch(version)]


def os_release() -> dict[str, str]:
    """/etc/os-release (else /usr/lib/os-release) as a dict, quotes removed."""
    for path in OS_RELEASE:
        try:
            with open(path, encoding="utf-8", errors="replace") as text:
                lines = text.read(65536).splitlines()
        except OSError:
            continue
        pairs = (line.partition("=") for line in lines if "=" in line and not line.startswith("#"))
        return {key.strip(): value.strip().strip("\"'") for key, _, value in pairs}
    return {}


def debian_debug_source() -> str | None:
    """The apt sources file that already enables the debian-debug archive, or None."""
    for pattern in SOURCES:
        for path in sorted(glob.glob(pattern)):
            try:
                with open(path, encoding="utf-8", errors="replace") as text:
                    lines = text.read(1 << 20).splitlines()
            except OSError:
                continue
            if path.endswith(".sources") and any(line.strip().lower() == "enabled: no" for line in lines):
                continue
            if any("debian-debug" in line.split("#")[0] for line in lines):
                return path
    return None


def debuginfod_source(environ: Mapping[str, str]) -> str | None:
    """Where DEBUGINFOD_URLS is set for gdb: tracerd's environment, the profile script, or None."""
    if environ.get("DEBUGINFOD_URLS", "").strip():
        return "DEBUGINFOD_URLS in tracerd's environment"
    if os.path.isfile(DEBUGINFOD_PROFILE):
        return DEBUGINFOD_PROFILE
    return None


def lookup(path: str, build_id: str | None) -> dict[str, Any]:
    """Package facts of one object: package, version, debug package, what apt offers."""
    facts = dict(_owner_facts(path, build_id))
    debug, version = facts["debug_package"], facts["version"]
    if debug and version:
        known = apt_versions(debug)
        facts["apt_versions"] = known
        facts["debug_available"] = None if known is None else version in known
    return facts


@functools.lru_cache(maxsize=1024)
def _owner_facts(path: str, build_id: str | None) -> dict[str, Any]:
    found = elfinfo.owner(path)
    facts: dict[str, Any] = {"package": None, "version": None, "debug_package": None, "install": None,
                             "debug_installed": None, "apt_versions": None, "debug_available": None}  # fmt: skip
    if found is None:
        return facts
    package, arch = found
    facts["package"] = package
    facts["version"] = version = installed_version(f"{package}:{arch}" if arch else package)
    debug = elfinfo.debug_file_owner(build_id) or elfinfo.debug_package_of(package)
    facts["debug_package"] = debug
    if version:
        facts["install"] = f"{debug}={version}"
        facts["debug_installed"] = installed_version(f"{debug}:{arch}" if arch else debug) == version
    return facts


def _note(entry: dict[str, Any], debian_debug: str | None) -> str:
    package, debug, version = entry.get("package"), entry.get("debug_package"), entry.get("version")
    if package is None:
        return ("not from a Debian package (dpkg -S knows no owner): rebuild it with -g, or put its"
                " unstripped copy under /usr/lib/debug/.build-id/")  # fmt: skip
    if version is None:
        return f"from {package}, whose installed version dpkg-query cannot tell"
    if entry.get("debug_installed"):
        return f"{debug}={version} is installed, yet gdb found no line info for this build-id"
    known = entry.get("apt_versions")
    if entry.get("debug_available"):
        return f"apt can install it now: apt-get install {debug}={version}"
    if known is None:
        return f"apt-cache policy did not answer; the symbols are in {debug}={version}"
    if known:
        return (f"apt knows {debug} only as {', '.join(known)}, not {version}: upgrade {package} to the"
                " version apt offers, or fetch the symbols by build-id through debuginfod")  # fmt: skip
    if not _is_debian():
        return f"apt cannot see {debug}: enable your distribution's debug-symbol archive, or use debuginfod"
    if debian_debug is None:
        return f"apt cannot see {debug}: add the debian-debug archive, apt-get update, then install {debug}={version}"
    return (f"apt cannot see {debug} although {debian_debug} enables debian-debug: apt-get update"
            " (a point-release update may still be in the *-proposed-updates-debug suite), or use debuginfod")


def _is_debian() -> bool:
    release = os_release()
    return release.get("ID") == "debian" and bool(_CODENAME.fullmatch(release.get("VERSION_CODENAME", "")))


def missing_symbols(threads: list[Any], build_ids: Mapping[str, str | None]) -> list[dict[str, Any]]:
    """Every object with frames lacking file:line, its package facts and a note; not on the loop."""
    counts: dict[str, int] = {}
    for thread in threads:
        for frame in thread.frames:
            if frame.object and not (frame.file and frame.line is not None):
                counts[frame.object] = counts.get(frame.object, 0) + 1
    debian_debug = debian_debug_source()
    out = []
    first: dict[str, str] = {}  # install (P-dbgsym=VERSION) -> the first object it names
    for path, frames in counts.items():
        build_id = build_ids[path] if path in build_ids else elfinfo.build_id(path)
        entry: dict[str, Any] = {"object": path, "build_id": build_id, "frames": frames, **lookup(path, build_id)}
        install = entry.get("install")
        if install and install in first:
            entry["note"] = f"symbols in {install} too, as for {first[install]}"
        else:
            entry["note"] = _note(entry, debian_debug)
            if install:
                first[install] = path
        out.append(entry)
    return out


def advice(missing: list[dict[str, Any]], environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """How to get ``missing``'s symbols on this system; None when no package owns any of them."""
    owned = [entry for entry in missing if entry.get("package")]
    if not owned:
        return None
    codename = os_release().get("VERSION_CODENAME", "")
    line = f"deb http://deb.debian.org/debian-debug/ {codename}-debug main" if _is_debian() else None
    debian_debug = debian_debug_source()
    debuginfod = debuginfod_source(os.environ if environ is None else environ)
    wanted = [entry for entry in owned if entry.get("install") and not entry.get("debug_installed")]
    install = "apt-get install " + " ".join(dict.fromkeys(entry["install"] for entry in wanted)) if wanted else None
    text = []
    if wanted:
        if line and any(entry.get("debug_available") is False for entry in wanted):
            if debian_debug is None:
                text.append(f"apt cannot see the -dbgsym packages: the debian-debug archive is not configured."
                            f" Add it: echo '{line}' > {DEBUG_LIST}; apt-get update")  # fmt: skip
            else:
                text.append(f"debian-debug is configured ({debian_debug}) but apt cannot see every -dbgsym"
                            " package at the installed version: apt-get update first")  # fmt: skip
        text.append(f"install: {install} (a -dbgsym package must match its package's exact version)")
    ids = list(dict.fromkeys(str(entry["build_id"]) for entry in owned if entry.get("build_id")))
    state = f"configured ({debuginfod})" if debuginfod else "not configured"
    if ids:
        text.append(f"or debuginfod, {state}: export DEBUGINFOD_URLS={DEBUGINFOD_URL} and gdb fetches the symbols"
                    f" by build-id ({', '.join(ids)}); tracerd's own gdb never downloads during a capture")
    return {
        "suite": codename or None,
        "debian_debug": {"line": line, "configured": debian_debug is not None, "source": debian_debug},
        "debuginfod": {"url": DEBUGINFOD_URL, "configured": debuginfod is not None, "source": debuginfod},
        "install": install,
        "advice": text,
    }
