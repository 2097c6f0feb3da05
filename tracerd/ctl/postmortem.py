"""``tracerctl gdb CRASH-ID``: gdb on a crash's saved core (docs/crashes.md "Cores and retrace").

:func:`run_postmortem` finds the report and core in the crash store (read
only), checks the executable and libraries on disk by build-id (naming the
ones that changed since), decompresses the core into a private temporary
directory and runs gdb on it; the copy goes when gdb exits.

Security: the core is the process's memory: the store is root's (0750), the
copy 0600 in a 0700 :func:`tempfile.mkdtemp`.  The report's paths are only
stat'ed, read for a build-id and passed to gdb as argv; a crash id must
match the store's pattern.

Diagnostics: one ``tracerctl: ...`` line (no store, no crash, no core and
why, a damaged core, a missing executable), exit 1; 2 for a bad argument;
else gdb's own exit status.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tracerd.crash import corefile, elfinfo
from tracerd.crash.inventory import StoreUnreadable, default_state_dir, open_store
from tracerd.crash.report import CRASH_ID_RE
from tracerd.ctl.common import EXIT_FAILED, EXIT_USAGE, fail
from tracerd.errors import NotFound

UIS = ("cli", "tui", "batch")
DELETED = " (deleted)"


def mismatches(report: dict[str, Any]) -> list[str]:
    """One line per executable or library whose file on disk is not the one that ran."""
    found = []
    for library in report.get("libraries") or []:
        if not isinstance(library, dict) or not isinstance(library.get("path"), str):
            continue
        path, wanted = library["path"].removesuffix(DELETED), library.get("build_id")
        if not wanted:
            continue
        if not os.path.exists(path):
            found.append(f"{path}: missing (the crashed process had build-id {wanted})")
            continue
        have = elfinfo.build_id(path)
        if have != wanted:
            found.append(f"{path}: build-id {have} on disk, {wanted} in the crashed process")
    return found


def executable(report: dict[str, Any]) -> str | None:
    process = report.get("process")
    exe = process.get("exe") if isinstance(process, dict) else None
    return exe.removesuffix(DELETED) if isinstance(exe, str) and exe else None


def run_postmortem(crash_id: str, ui: str, state_dir: str | None) -> int:
    """gdb on the core of ``crash_id``; gdb's exit status, or 1/2 with one line on stderr."""
    if not isinstance(crash_id, str) or not CRASH_ID_RE.fullmatch(crash_id):
        return fail(f"not a crash id: {crash_id!r}", EXIT_USAGE)
    if ui not in UIS:
        return fail(f"unknown ui {ui!r}: one of {', '.join(UIS)}", EXIT_USAGE)
    if shutil.which("gdb") is None:
        return fail("gdb is not installed", EXIT_FAILED)
    try:
        store = open_store(Path(state_dir) if state_dir else default_state_dir())
    except StoreUnreadable as err:
        return fail(str(err), EXIT_FAILED)
    with store:
        try:
            report, name = store.core_path(crash_id)
        except NotFound as err:
            return fail(str(err), EXIT_FAILED)
        exe = executable(report)
        if exe is None:
            return fail(f"crash {report.get('id')}: the report names no executable", EXIT_FAILED)
        if not os.path.exists(exe):
            return fail(f"crash {report.get('id')}: executable {exe} is missing (removed or upgraded since)",
                        EXIT_FAILED)  # fmt: skip
        differ = mismatches(report)
        for line in differ:
            print(f"tracerctl: differs from the crashed process: {line}", file=sys.stderr)
        if differ:
            print(f"tracerctl: {len(differ)} file(s) changed since the crash: gdb may show wrong frames"
                  " for them", file=sys.stderr)  # fmt: skip
        workdir = tempfile.mkdtemp(prefix="tracerd-core-")
        try:
            core = Path(workdir) / "core"
            try:
                fd = os.open(core, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    corefile.decompress(store.fd, name, out)
            except corefile.CoreError as err:
                return fail(str(err), EXIT_FAILED)
            except OSError as err:
                return fail(f"cannot unpack the core into {workdir}: {err.strerror}", EXIT_FAILED)
            return _gdb(exe, core, ui)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _gdb(exe: str, core: Path, ui: str) -> int:
    argv = ["gdb", "-q", "-nx", "-ex", "set sysroot /"]
    if ui == "tui":
        argv.append("-tui")
    if ui == "batch":
        argv += ["-batch", "-ex", "thread apply all bt"]
    argv += [exe, str(core)]
    try:
        return subprocess.call(argv)
    except OSError as err:
        return fail(f"gdb: {err.strerror}", EXIT_FAILED)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tracerd.ctl.postmortem",
                                     description="gdb on a crash's saved core (tracerctl gdb CRASH-ID)")  # fmt: skip
    parser.add_argument("id", help="the crash id (or a prefix of it, or a signature)")
    parser.add_argument("--ui", default="cli", choices=UIS, help="gdb's interface (batch: print bt and exit)")
    parser.add_argument("--state-dir", metavar="DIR", help="tracerd's state_dir (default: the configured one)")
    args = parser.parse_args(argv)
    return run_postmortem(args.id, args.ui, args.state_dir)


if __name__ == "__main__":
    sys.exit(main())
