"""A target that turns its crash capture against gdb (issue 23 item 2).

tests/c/fifo_lib.c dlopen()s a library, replaces the file with a FIFO at the
same path, then faults: a gdb that opened the library by its path (as root)
blocked on the FIFO, the process was held 30 s and no crash entry was
written.  The capture's gdb now reads only files tracerd verified (a sysroot
of its own); and a gdb that fails or hangs anyway still gives a report of
what is known, with the process dead of its signal within 10 s of its fault.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import have
from tests.support import C_DIR

pytestmark = pytest.mark.skipif(not have("gdb"), reason="gdb not installed")
RULE = '[[rule]]\nprocess = "*"\ntracer = "watch"\n'
HOLD_BOUND = 10.0  # the bound: the process dies of its signal within 10 s of its fault

# A gdb that answers until it is asked to read a core, then never answers again
# (but exits, reaping the real gdb, when asked to: tracerd's close of a gdb).
HANGING_GDB = """\
import os, subprocess, sys
real = subprocess.Popen([os.environ["REAL_GDB"], *sys.argv[1:]], stdin=subprocess.PIPE)
hung = False
for line in sys.stdin.buffer:
    hung = hung or b"-target-select core" in line
    if hung and b"-gdb-exit" not in line:
        continue
    real.stdin.write(line)
    real.stdin.flush()
    if b"-gdb-exit" in line:
        break
real.stdin.close()
sys.exit(real.wait())
"""


@pytest.fixture(scope="module")
def fifo_lib(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(target, where its library goes): tests/c/fifo_lib.c and the library built from it."""
    out = tmp_path_factory.mktemp("fifo_lib")
    lib = out / "libfifo.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-g", "-O0", "-Wall", "-DFIFO_LIB_SO", "-o", str(lib),
                    str(C_DIR / "fifo_lib.c")], check=True)  # fmt: skip
    exe = out / "fifo_lib"
    subprocess.run(["gcc", "-g", "-O0", "-Wall", "-o", str(exe), str(C_DIR / "fifo_lib.c"), "-ldl"], check=True)
    return exe, lib


def library_copy(lib: Path, where: Path) -> Path:
    """A fresh copy of the library (each run turns its copy into a FIFO)."""
    where.mkdir(exist_ok=True)
    copy = where / lib.name
    shutil.copyfile(lib, copy)
    return copy


def crash(daemon: Any, spawn: Any, exe: Path, lib: Path, *mode: str) -> tuple[Any, float, dict[str, Any]]:
    """Run the target to its fault: (target, seconds from the fault to its death, report)."""
    target = spawn(exe, daemon.hook_command(), "fifolib", lib, *mode)
    assert target.readline() == "hook=0\n"
    target.release()
    assert target.readline() == "fifo\n"  # the library is a FIFO now; the fault follows at once
    fault = time.monotonic()
    assert target.wait(timeout=60) == -signal.SIGSEGV
    held = time.monotonic() - fault
    assert stat.S_ISFIFO(os.lstat(lib).st_mode) == (mode != ("keep",))
    session = daemon.wait_session(target.pid, "crashed")
    assert session["crash"], session
    result = daemon.ctl("--json", "crash", session["crash"])
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)["crash"]
    return target, held, report


def test_library_replaced_by_a_fifo_gives_a_full_report_at_once(
    daemon_factory: Any, spawn: Any, fifo_lib: tuple[Path, Path], tmp_path: Path
) -> None:
    """gdb never opens the FIFO: the report has the frames (in the executable),
    the library (read from the mapped copy), no gdb error; the process dies of
    SIGSEGV well within the bound."""
    exe, built = fifo_lib
    daemon = daemon_factory(RULE)
    lib = library_copy(built, tmp_path / "lib")
    target, held, report = crash(daemon, spawn, exe, lib)
    assert held < HOLD_BOUND, f"held {held:.1f} s"
    crashed = next(t for t in report["threads"] if t["crashed"])
    assert [f["function"] for f in crashed["frames"][:2]] == ["fault", "main"]
    assert report["signal"]["name"] == "SIGSEGV"
    assert report["signal"]["fault_address"] == "0x0"
    ours = next(entry for entry in report["libraries"] if entry["path"] == str(lib))
    assert ours["deleted"] is True
    assert ours["build_id"]
    assert ours["build_id_source"] == "map_files"
    assert not any("gdb" in error for error in report["process"].get("capture_errors", [])), report["process"]
    assert report.get("notice") is None
    assert "watch_capture_without_gdb" not in daemon.stderr()
    assert target.pid == report["process"]["pid"]


def test_a_gdb_that_hangs_still_gives_the_report_of_what_is_known(
    daemon_factory: Any, spawn: Any, fifo_lib: tuple[Path, Path], tmp_path: Path
) -> None:
    """gdb never answers once asked for the core: within 10 s of the fault the
    process is dead of SIGSEGV and its report has the signal and fault address,
    the registers and pc from the core, the modules and the reason."""
    exe, built = fifo_lib
    real = shutil.which("gdb")
    assert real is not None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "gdb"
    wrapper.write_text(f"#!{sys.executable}\n{HANGING_GDB}")
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}", "REAL_GDB": real}
    daemon = daemon_factory(RULE, env=env)
    lib = library_copy(built, tmp_path / "lib")
    target, held, report = crash(daemon, spawn, exe, lib)
    assert held < HOLD_BOUND, f"held {held:.1f} s"
    assert report["signal"]["name"] == "SIGSEGV"
    assert report["signal"]["si_code_name"] == "SEGV_MAPERR"
    assert report["signal"]["fault_address"] == "0x0"
    assert report["registers"]["rip"].startswith("0x")
    crashed = next(t for t in report["threads"] if t["crashed"])
    assert crashed["tid"] == target.pid
    (frame,) = crashed["frames"]
    assert frame["pc"] == report["registers"]["rip"]
    assert frame["object"] == str(exe)
    assert frame["module_offset"]
    paths = [entry["path"] for entry in report["libraries"]]
    assert str(exe) in paths
    assert str(lib) in paths
    errors = report["process"]["capture_errors"]
    assert any(error.startswith("gdb: ") and "did not" in error for error in errors), errors
    assert "gdb failed" in report["notice"]
    assert "watch_capture_without_gdb" in daemon.stderr()


def test_under_the_gdb_tracer_the_fifo_library_is_never_reopened(
    daemon_factory: Any, spawn: Any, fifo_lib: tuple[Path, Path], tmp_path: Path
) -> None:
    """The gdb tracer's gdb read the library at its dlopen, as a regular file: the
    crash after the swap is reported with its frames, within the same bound."""
    exe, built = fifo_lib
    daemon = daemon_factory('[[rule]]\nprocess = "*"\ntracer = "gdb"\n')
    lib = library_copy(built, tmp_path / "lib")
    _target, held, report = crash(daemon, spawn, exe, lib)
    assert held < HOLD_BOUND, f"held {held:.1f} s"
    crashed = next(t for t in report["threads"] if t["crashed"])
    assert [f["function"] for f in crashed["frames"][:2]] == ["fault", "main"]
    assert str(lib) in [entry["path"] for entry in report["libraries"]]


def test_the_capture_gdb_gets_the_sysroot_itself_not_a_quoted_name(tmp_path: Path) -> None:
    """The sysroot commands give gdb the very directory (``-gdb-set`` keeps quotes as
    part of the name: a quoted sysroot loaded no library, frames without functions),
    and a path gdb could not take verbatim is refused (the report without gdb)."""
    import asyncio  # noqa: PLC0415

    from tracerd.errors import TracerFailed  # noqa: PLC0415
    from tracerd.gdb.mi import GdbMI  # noqa: PLC0415
    from tracerd.gdb.sysroot import gdb_commands  # noqa: PLC0415

    root = tmp_path / ".sysroot-1-abc_9"
    root.mkdir()

    async def shown() -> tuple[str, str]:
        mi = GdbMI()
        await mi.start()
        try:
            for command in gdb_commands(str(root)):
                await mi.command(command, timeout=30.0)
            value = (await mi.command("-gdb-show sysroot", timeout=30.0)).payload["value"]
            return str(value), "".join(await mi.console("pwd", timeout=30.0))
        finally:
            await mi.close()

    value, pwd = asyncio.run(shown())
    assert value == str(root)
    assert pwd == f"Working directory {root}.\n"
    with pytest.raises(TracerFailed, match="plain"):
        gdb_commands(str(tmp_path / "a dir"))


GDB_RULE = '[[rule]]\nprocess = "*"\ntracer = "gdb"\n'


def debuglinked_copy(lib: Path, where: Path) -> Path:
    """A stripped copy of the library whose .gnu_debuglink names a FIFO beside it: gdb
    looks for that file in the library's real directory, and blocked there."""
    copy = library_copy(lib, where)
    debug = where.parent / f"{where.name}-debug" / lib.name.replace(".so", ".debug")
    debug.parent.mkdir()
    subprocess.run(["objcopy", "--only-keep-debug", str(lib), str(debug)], check=True)
    subprocess.run(["strip", "-g", str(copy)], check=True)
    subprocess.run(["objcopy", f"--add-gnu-debuglink={debug}", str(copy)], check=True)
    os.mkfifo(where / debug.name)
    return copy


def test_a_debuglink_naming_a_fifo_beside_the_library_is_never_opened(
    daemon_factory: Any, spawn: Any, fifo_lib: tuple[Path, Path], tmp_path: Path
) -> None:
    """gdb looks for a library's .gnu_debuglink file beside its real path (a directory
    the target writes) and opened a FIFO there, blocking (gdb's budget cut it: a report
    without gdb): such a library is served to
    gdb only from a directory root alone writes, so the report is whole and prompt."""
    exe, built = fifo_lib
    daemon = daemon_factory(RULE)
    lib = debuglinked_copy(built, tmp_path / "lib")
    _target, held, report = crash(daemon, spawn, exe, lib, "keep")
    assert held < HOLD_BOUND, f"held {held:.1f} s"
    crashed = next(t for t in report["threads"] if t["crashed"])
    assert [f["function"] for f in crashed["frames"][:2]] == ["fault", "main"]
    assert report.get("notice") is None, report.get("notice")
    assert not report["process"].get("capture_errors"), report["process"]
    assert str(lib) in [entry["path"] for entry in report["libraries"]]


def test_the_gdb_tracer_attaches_to_a_process_whose_library_is_a_fifo(
    daemon_factory: Any, spawn: Any, fifo_lib: tuple[Path, Path], tmp_path: Path
) -> None:
    """The library is a FIFO (and its debuglink names one) before the hook runs: the gdb
    tracer's gdb, reading objects only through its sysroot, attaches at once instead
    of blocking until attach_timeout, and the crash is reported with its frames."""
    exe, built = fifo_lib
    daemon = daemon_factory(GDB_RULE)
    lib = debuglinked_copy(built, tmp_path / "lib")
    target = spawn(exe, daemon.hook_command(), "fifolib", lib, "early")
    assert target.readline() == "hook=0\n"
    assert stat.S_ISFIFO(os.lstat(lib).st_mode)
    session = daemon.session(target.pid)
    assert session["state"] == "attached", session
    target.release()
    assert target.readline() == "fifo\n"
    fault = time.monotonic()
    assert target.wait(timeout=60) == -signal.SIGSEGV
    held = time.monotonic() - fault
    assert held < HOLD_BOUND, f"held {held:.1f} s"
    ended = daemon.wait_session(target.pid, "crashed")
    result = daemon.ctl("--json", "crash", ended["crash"])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["crash"]
    crashed = next(t for t in report["threads"] if t["crashed"])
    assert [f["function"] for f in crashed["frames"][:2]] == ["fault", "main"]
    assert str(lib) in [entry["path"] for entry in report["libraries"]]
    assert ".sysroot-" not in json.dumps(report), "an object named by the sysroot gdb read it from"
    assert not list((daemon.root).rglob(".sysroot-*")), "the sysroots outlived the session"


def test_which_objects_gdb_may_be_given(tmp_path: Path, fifo_lib: tuple[Path, Path]) -> None:
    """An object naming a debuglink or an altlink is given to gdb only from a directory
    root alone writes (libc's), with a plain debuglink and an altlink in /usr/lib/debug."""
    from tracerd.gdb.sysroot import symbols_safe  # noqa: PLC0415

    _exe, built = fifo_lib

    def safe(path: Path | str) -> bool:
        fd = os.open(path, os.O_RDONLY)
        try:
            return symbols_safe(fd)
        finally:
            os.close(fd)

    plain = library_copy(built, tmp_path / "plain")
    assert safe(plain)  # no link to follow: anywhere
    assert not safe(debuglinked_copy(built, tmp_path / "linked"))  # /tmp: anyone writes there
    libc = "/usr/lib/x86_64-linux-gnu/libc.so.6"
    if os.path.exists(libc):
        assert safe(libc)
    alt = tmp_path / "alt"
    alt.write_bytes(b"/tmp/fifo\0" + b"\0" * 20)
    altlinked = library_copy(built, tmp_path / "altlinked")
    subprocess.run(["objcopy", f"--add-section=.gnu_debugaltlink={alt}", str(altlinked)], check=True)
    assert not safe(altlinked)
