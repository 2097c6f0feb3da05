"""Debug-symbol advice that works here: every object whose frames lack
file:line, its Debian package and exact version, and the way to get the
symbols on this system (the debian-debug archive line, debuginfod), each
said to be configured or not.

A real crash under the gdb tracer: a -g target calls a library of the test's
own (built here with gcc, then stripped: its functions keep their names but
lose file:line, as Postfix's libpostfix-*.so do), which crashes inside zlib
(zlib1g, a Debian package installed without its -dbgsym).  Package facts come
from the system's real dpkg, dpkg-query and apt-cache.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import have
from tests.support import wait_until
from tracerd.crash import debugsyms

C_DIR = Path(__file__).parent / "c"


def installed(package: str) -> str | None:
    """The installed version of ``package``, asked of dpkg-query directly."""
    done = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}|${Version}", package],
                          capture_output=True, text=True, check=False)  # fmt: skip
    status, _, version = done.stdout.partition("|")
    return version if done.returncode == 0 and status.startswith("ii") else None


def debian_debug_configured() -> bool:
    """Does any apt source already name the debian-debug archive? (read here independently)"""
    files = ["/etc/apt/sources.list", *glob.glob("/etc/apt/sources.list.d/*")]
    for name in files:
        if name.endswith((".list", ".sources")) and os.path.isfile(name):
            lines = Path(name).read_text(errors="replace").splitlines()
            if any("debian-debug" in line.split("#")[0] for line in lines):
                return True
    return False


def codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.partition("=")[2].strip().strip('"')
    return ""


ZLIB = installed("zlib1g") if have("dpkg-query") else None
needs_zlib = pytest.mark.skipif(
    not have("dpkg") or ZLIB is None or installed("zlib1g-dbgsym") is not None,
    reason="needs Debian's dpkg and zlib1g installed without zlib1g-dbgsym",
)


@pytest.fixture(scope="module")
def crash_in_lib(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(target, library): tests/c/crash_in_lib.c linked to a stripped libcrashlib.so."""
    out = tmp_path_factory.mktemp("lib")
    lib = out / "libcrashlib.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-g", "-O0", "-Wall", "-o", str(lib), str(C_DIR / "crashlib.c")],
                   check=True)  # fmt: skip
    subprocess.run(["strip", "-s", str(lib)], check=True)
    exe = out / "crash_in_lib"
    subprocess.run(["gcc", "-g", "-O0", "-Wall", "-o", str(exe), str(C_DIR / "crash_in_lib.c"), f"-L{out}",
                    "-lcrashlib", f"-Wl,-rpath,{out}"], check=True)  # fmt: skip
    return exe, lib


@needs_zlib
@pytest.mark.skipif(not have("gdb"), reason="gdb not installed")
def test_every_object_without_line_info_is_named_with_package_version_and_advice(
    daemon_factory: Any, spawn: Any, crash_in_lib: tuple[Path, Path]
) -> None:
    """A crash in zlib called from a stripped library of our own: both objects are
    listed (their frames have names but no file:line), zlib with package zlib1g,
    its exact version and zlib1g-dbgsym=VERSION, ours as no package's; the
    executable (built -g) is not; the advice gives this release's debian-debug
    line and says whether it and debuginfod are configured."""
    exe, lib = crash_in_lib
    daemon = daemon_factory('[[rule]]\nprocess = "crash*"\ntracer = "gdb"\n')
    target = spawn(exe, daemon.hook_command(), "crashlib")
    assert target.readline() == "hook=0\n"
    target.release()
    assert target.wait() == -signal.SIGSEGV
    session = daemon.wait_session(target.pid, "crashed")
    report = json.loads(daemon.ctl("--json", "crash", session["crash"]).stdout)["crash"]
    crashed = next(t for t in report["threads"] if t["crashed"])
    assert [f["function"] for f in crashed["frames"]][1:4] == ["lib_inner", "lib_outer", "main"]

    missing = {os.path.basename(m["object"]): m for m in report["missing_symbols"]}
    assert str(exe) not in [m["object"] for m in report["missing_symbols"]]
    ours = missing["libcrashlib.so"]
    assert ours["object"] == str(lib)
    assert (ours["package"], ours["version"], ours["install"], ours["frames"]) == (None, None, None, 2)
    assert "not from a Debian package" in ours["note"]
    (zlib,) = [m for name, m in missing.items() if name.startswith("libz.so")]
    assert (zlib["package"], zlib["version"], zlib["debug_package"]) == ("zlib1g", ZLIB, "zlib1g-dbgsym")
    assert zlib["install"] == f"zlib1g-dbgsym={ZLIB}"
    assert zlib["frames"] >= 1
    assert zlib["build_id"]

    advice = report["debug_symbols"]
    line = f"deb http://deb.debian.org/debian-debug/ {codename()}-debug main"
    assert advice["suite"] == codename()
    assert advice["debian_debug"]["line"] == line
    assert advice["debian_debug"]["configured"] is debian_debug_configured()
    assert advice["install"] == f"apt-get install zlib1g-dbgsym={ZLIB}"
    text = "\n".join(advice["advice"])
    if not debian_debug_configured():
        assert zlib["debug_available"] is False
        assert f"echo '{line}' > /etc/apt/sources.list.d/debian-debug.list" in text
        assert "add the debian-debug archive" in zlib["note"]
    expect_debuginfod = bool(os.environ.get("DEBUGINFOD_URLS")) or os.path.isfile("/etc/profile.d/debuginfod.sh")
    assert advice["debuginfod"]["configured"] is expect_debuginfod
    assert advice["debuginfod"]["url"] == "https://debuginfod.debian.net"
    assert zlib["build_id"] in text
    assert str(lib) not in text  # its note says what to do, once
    log = Path(report["log"]).read_text()
    assert f"no line info for {lib} (no package)" in log
    assert f"(zlib1g {ZLIB})" in log


@needs_zlib
def test_lookup_of_a_package_file_and_of_a_stray_file(tmp_path: Path) -> None:
    """lookup(): zlib's library by any of its names gives zlib1g at its installed
    version, asked of dpkg once per path and build-id (then cached); a file no
    package owns gives no package and no install line."""
    for name in ("/lib/x86_64-linux-gnu/libz.so.1", os.path.realpath("/lib/x86_64-linux-gnu/libz.so.1")):
        if not os.path.exists(name):
            pytest.skip("not an x86_64 multiarch layout")
        facts = debugsyms.lookup(name, None)
        assert (facts["package"], facts["version"], facts["install"]) == ("zlib1g", ZLIB, f"zlib1g-dbgsym={ZLIB}")
        hits = debugsyms._owner_facts.cache_info().hits
        assert debugsyms.lookup(name, None) == facts
        assert debugsyms._owner_facts.cache_info().hits == hits + 1
    stray = tmp_path / "libstray.so"
    shutil.copy("/lib/x86_64-linux-gnu/libz.so.1", stray)
    facts = debugsyms.lookup(str(stray), None)
    assert (facts["package"], facts["version"], facts["debug_package"], facts["install"]) == (None, None, None, None)


def test_advice_says_where_debuginfod_is_configured() -> None:
    """DEBUGINFOD_URLS in tracerd's environment counts as configured and is named;
    nothing missing, no advice."""
    entry = {"object": "/x/libfoo.so", "build_id": "ab12", "package": "foo", "note": "n"}
    with_env = debugsyms.advice([entry], {"DEBUGINFOD_URLS": "https://debuginfod.debian.net"})
    assert with_env is not None
    assert with_env["debuginfod"] == {"url": "https://debuginfod.debian.net", "configured": True,
                                      "source": "DEBUGINFOD_URLS in tracerd's environment"}  # fmt: skip
    without = debugsyms.advice([entry], {})
    assert without is not None
    assert without["debuginfod"]["configured"] is os.path.isfile("/etc/profile.d/debuginfod.sh")
    assert without["install"] is None
    assert any("ab12" in line for line in without["advice"])
    assert debugsyms.advice([], {}) is None


def _crash_text(daemon: Any, crash_id: str) -> tuple[dict[str, Any], str, str]:
    """(the report, ``tracerctl crash ID``'s text, the per-process log)."""
    report = json.loads(daemon.ctl("--json", "crash", crash_id).stdout)["crash"]
    return report, daemon.ctl("crash", crash_id).stdout, Path(report["log"]).read_text()


ADVICE_WORDS = ("debian-debug", "debuginfod", "apt-get install")


@pytest.mark.skipif(not (have("gdb") and have("strip")), reason="gdb and binutils are needed")
def test_a_binary_no_package_owns_gets_its_note_once_and_no_advice(
    daemon_factory: Any, spawn: Any, cbin: Any, tmp_path: Path
) -> None:
    """A stripped test binary (dpkg knows no owner) crashes under the watch
    tracer: the report lists it with its note, said once in ``crash ID`` and
    once in the log; no debian-debug, debuginfod or install advice, which
    could not name it."""
    stripped = tmp_path / "crash-stripped"
    shutil.copy(cbin("crash", "-pthread"), stripped)
    subprocess.run(["strip", "-s", str(stripped)], check=True)
    daemon = daemon_factory('crash_flood_window = 0\n[[rule]]\nprocess = "*"\ntracer = "watch"\n')
    target = spawn(stripped, daemon.hook_command(), "strayd", "segv")
    assert target.readline() == "hook=0\n"
    target.release()
    assert target.wait() == -signal.SIGSEGV
    report, text, log = _crash_text(daemon, daemon.wait_session(target.pid, "crashed")["crash"])
    (ours,) = [m for m in report["missing_symbols"] if m["object"] == str(stripped)]
    assert ours["package"] is None
    assert report["debug_symbols"] is None
    for shown in (text, log):
        assert shown.count("not from a Debian package") == 1, shown
        assert not [line for line in shown.splitlines() if any(word in line for word in ADVICE_WORDS)], shown


@pytest.mark.skipif(not (have("gdb") and have("dpkg")), reason="gdb and dpkg are needed")
def test_a_debian_binary_gets_one_deduplicated_advice(daemon_factory: Any, spawn: Any, tmp_path: Path) -> None:
    """Debian's postmap (package postfix, no postfix-dbgsym) waits in read()
    under libpostfix-util.so, is attached by the watch tracer and killed with
    SIGSEGV: both objects lack line info; the advice installs
    postfix-dbgsym=VERSION once, and is printed once in ``crash ID`` and once in the log."""
    version = installed("postfix")
    if version is None or not os.path.exists("/usr/sbin/postmap") or installed("postfix-dbgsym") is not None:
        pytest.skip("needs Debian's postfix installed without postfix-dbgsym")
    config = tmp_path / "postfix"
    config.mkdir()
    (config / "main.cf").write_text("")
    daemon = daemon_factory("crash_flood_window = 0\n")
    target = spawn("/usr/sbin/postmap", "-c", str(config), "-q", "-", "inline:{a=b}")
    wait_until(lambda: Path(f"/proc/{target.pid}/syscall").read_text().split()[0] == "0", "postmap in read()")
    assert daemon.ctl("attach", str(target.pid), "--tracer", "watch").returncode == 0
    daemon.wait_session(target.pid, "attached")
    os.kill(target.pid, signal.SIGSEGV)
    assert target.wait() == -signal.SIGSEGV
    report, text, log = _crash_text(daemon, daemon.wait_session(target.pid, "crashed")["crash"])
    owned = [m for m in report["missing_symbols"] if m["package"] == "postfix"]
    assert {os.path.basename(m["object"]) for m in owned} >= {"postmap", "libpostfix-util.so"}, owned
    install = f"postfix-dbgsym={version}"
    assert report["debug_symbols"]["install"] == f"apt-get install {install}"
    for shown in (text, log):
        assert shown.count(f"apt-get install {install}") == 1, shown
        assert shown.count("export DEBUGINFOD_URLS=") == 1, shown
        assert not [line for line in shown.splitlines() if f"{install} {install}" in line], shown
