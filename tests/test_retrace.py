"""Retrace and post-mortem (docs/crashes.md "Cores and retrace"): a stripped target's
unnamed frames named again from split debug files (a local .build-id root,
a real debuginfod), bounded against a server that hangs or answers garbage;
build-ids of the mapped copies (a library replaced on disk after the start);
glibc's assertion message; gdb on the saved core in a pseudo-terminal."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import have
from tests.support import C_DIR, script, wait_until
from tracerd.crash import elfinfo
from tracerd.crash import retrace as retrace_mod
from tracerd.ctl.crashview import human_size

pytestmark = pytest.mark.skipif(not (have("gdb") and have("objcopy")), reason="gdb and binutils are needed")


class Built:
    """retrace_target stripped, its debug file split off, and libretracelib.so beside it."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "bin"
        self.dir.mkdir()
        self.lib = self.dir / "libretracelib.so"
        self.build_lib(self.lib, 1)
        self.exe = self.dir / "retrace_target"
        subprocess.run(["gcc", "-g", "-O0", "-Wall", "-o", str(self.exe), str(C_DIR / "retrace_target.c"),
                        f"-L{self.dir}", "-lretracelib", f"-Wl,-rpath,{self.dir}"], check=True)  # fmt: skip
        self.debug = root / "retrace_target.debug"
        subprocess.run(["objcopy", "--only-keep-debug", str(self.exe), str(self.debug)], check=True)
        subprocess.run(["strip", "--strip-all", str(self.exe)], check=True)
        build_id = elfinfo.build_id(self.exe)
        assert build_id
        assert build_id == elfinfo.build_id(self.debug)
        self.build_id = build_id
        self.debug_root = root / "debug"  # stands for /usr/lib/debug
        placed = self.debug_root / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug"
        placed.parent.mkdir(parents=True)
        shutil.copy(self.debug, placed)

    def build_lib(self, path: Path, variant: int) -> None:
        subprocess.run(["gcc", "-g", "-shared", "-fPIC", f"-DVARIANT={variant}", "-o", str(path),
                        str(C_DIR / "retracelib.c")], check=True)  # fmt: skip


@pytest.fixture
def built(tmp_path: Path) -> Built:
    return Built(tmp_path)


@pytest.fixture
def retrace_daemon(daemon_factory: Any) -> Any:
    return daemon_factory('crash_flood_window = 0\ncore = "all"\n[[rule]]\nprocess = "*"\ntracer = "watch"\n')


def crash(daemon: Any, spawn: Any, exe: Path, mode: str, before_release: Any = None) -> dict[str, Any]:
    target = spawn(exe, daemon.hook_command(), "retraced", mode)
    assert target.readline() == "hook=0\n"
    if before_release is not None:
        before_release()
    target.release()
    assert target.wait() in (-signal.SIGSEGV, -signal.SIGABRT)
    session = daemon.wait_session(target.pid, "crashed")
    assert session["crash"], (session, daemon.stderr()[-3000:])
    report: dict[str, Any] = json.loads(daemon.ctl("--json", "crash", session["crash"]).stdout)["crash"]
    return report


def retrace(
    daemon: Any, crash_id: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*script("tracerctl"), "--socket", str(daemon.socket), "retrace", crash_id,
                           "--state-dir", str(daemon.state_dir), *args],
                          capture_output=True, text=True, timeout=120, env=env, check=False)  # fmt: skip


def crashed_frames(report: dict[str, Any]) -> list[dict[str, Any]]:
    return list(next(t for t in report["threads"] if t["crashed"])["frames"])


def test_retrace_names_stripped_frames_from_a_local_build_id_root(
    retrace_daemon: Any, spawn: Any, built: Built, tmp_path: Path
) -> None:
    """A stripped target's frames have no names but a pc, a module offset and
    the build-id; retrace with the split debug file under a .build-id root
    names them with file:line, says the source, and keeps the record beside the report."""
    report = crash(retrace_daemon, spawn, built.exe, "deep3")
    frames = crashed_frames(report)
    ours = [f for f in frames if f["build_id"] == built.build_id]
    assert len(ours) >= 5
    assert all(f["function"] is None and f["module_offset"] and f["pc"] for f in ours), ours
    exe = next(lib for lib in report["libraries"] if lib["build_id"] == built.build_id)
    assert exe["build_id_source"] == "map_files"
    assert exe["bias"]
    assert exe["deleted"] is False
    empty = tmp_path / "nothing"
    plain = retrace(retrace_daemon, report["id"], "--json", "--no-debuginfod", "--debug-dir", str(empty))
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["changed"] == []
    result = retrace(retrace_daemon, report["id"], "--json", "--no-debuginfod", "--debug-dir", str(built.debug_root))
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    named = {(c["level"], c["function"]) for c in record["changed"]}
    assert (0, "retrace_crash_here") in named
    assert {"descend", "main"} <= {function for _, function in named}
    top = next(c for c in record["changed"] if c["level"] == 0)
    assert top["file"].endswith("retrace_target.c")
    assert top["line"] == 22
    assert top["source"] == "local"
    assert json.loads(Path(record["saved"]).read_text())["changed"] == record["changed"]
    text = retrace(retrace_daemon, report["id"], "--no-debuginfod", "--debug-dir", str(built.debug_root)).stdout
    assert "retrace_crash_here () at " in text


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def debuginfod_server(tmp_path: Path, built: Built) -> Iterator[str]:
    """A real debuginfod (elfutils) on a loopback port over a directory holding the split debug file."""
    if not have("debuginfod"):
        pytest.skip("debuginfod is not installed")
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(built.debug, served / "retrace_target.debug")
    port = free_port()
    log = open(tmp_path / "debuginfod.log", "wb")  # noqa: SIM115 -- closed below
    proc = subprocess.Popen(["debuginfod", "-F", "-p", str(port), "-d", str(tmp_path / "db.sqlite"), "-t", "0",
                             "-c", "1", str(served)], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def serving() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/buildid/{built.build_id}/debuginfo", timeout=5) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    try:
        wait_until(serving, "debuginfod serving the debug file", 60)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_retrace_from_a_real_debuginfod(
    retrace_daemon: Any, spawn: Any, built: Built, debuginfod_server: str, tmp_path: Path
) -> None:
    """With DEBUGINFOD_URLS naming a real debuginfod and no local debug file,
    retrace fetches the debug file by build-id (cached, checked) and names the frames."""
    report = crash(retrace_daemon, spawn, built.exe, "deep2")
    env = {**os.environ, "DEBUGINFOD_URLS": debuginfod_server, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = retrace(retrace_daemon, report["id"], "--json", "--debug-dir", str(tmp_path / "none"), env=env)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    top = next(c for c in record["changed"] if c["level"] == 0)
    assert (top["function"], top["line"]) == ("retrace_crash_here", 22)
    assert top["source"] == f"debuginfod {debuginfod_server}"
    cached = tmp_path / "cache" / "tracerd" / "debuginfod" / f"{built.build_id}.debug"
    assert elfinfo.build_id(cached) == built.build_id


class Garbage(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"this is no ELF file\n" * 100)

    def log_message(self, *args: Any) -> None:
        pass


def test_retrace_bounded_against_a_hanging_or_lying_debuginfod(
    retrace_daemon: Any, spawn: Any, built: Built, tmp_path: Path
) -> None:
    """A server that accepts and never answers is given up after
    DEBUGINFOD_MAXTIME; one that answers garbage is refused (not ELF); each is
    one line in the record, the frames stay as they were, nothing is cached."""
    report = crash(retrace_daemon, spawn, built.exe, "deep1")
    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(8)  # connections complete in the backlog; nothing is ever read or answered
    garbage = http.server.HTTPServer(("127.0.0.1", 0), Garbage)
    thread = threading.Thread(target=garbage.serve_forever, daemon=True)
    thread.start()
    try:
        cache = tmp_path / "cache"
        cases = ((f"http://127.0.0.1:{hanging.getsockname()[1]}", "no answer within DEBUGINFOD_MAXTIME (2 s)"),
                 (f"http://127.0.0.1:{garbage.server_address[1]}", "answered not an ELF file"))  # fmt: skip
        for url, reason in cases:
            env = {**os.environ, "DEBUGINFOD_URLS": url, "DEBUGINFOD_MAXTIME": "2", "XDG_CACHE_HOME": str(cache)}
            result = retrace(retrace_daemon, report["id"], "--json", "--debug-dir", str(tmp_path / "none"), env=env)
            assert result.returncode == 0, result.stderr
            record = json.loads(result.stdout)
            assert record["changed"] == []
            assert any(reason in error and url in error for error in record["errors"]), record["errors"]
            assert not list(cache.rglob("*.debug"))
            assert not list(cache.rglob(".*"))
    finally:
        garbage.shutdown()
        garbage.server_close()
        hanging.close()


def test_retrace_of_a_bad_report_is_one_line(retrace_daemon: Any, tmp_path: Path) -> None:
    """A crash id that does not exist, a report file that is garbage: one line, exit 1, nothing changed."""
    store = retrace_daemon.state_dir / "crashes"
    (store / "20260101T000000Z-deadbeef-1.json").write_text("{not json")
    for crash_id in ("nosuchcrash", "20260101T000000Z-deadbeef-1", "../etc"):
        result = retrace(retrace_daemon, crash_id)
        assert result.returncode in (1, 2), result
        assert len(result.stderr.strip().splitlines()) == 1
        assert result.stderr.startswith("tracerctl: ")
    assert (store / "20260101T000000Z-deadbeef-1.json").read_text() == "{not json"


def test_library_replaced_on_disk_keeps_the_mapped_build_id_and_gdb_names_it(
    retrace_daemon: Any, spawn: Any, built: Built, tmp_path: Path
) -> None:
    """A library replaced on disk (an upgrade: a new file renamed over it)
    after the process started: the report has the build-id of the mapped copy,
    read through map_files, and flags it deleted; ``tracerctl gdb CRASH-ID``
    (run_postmortem) says which file differs and still shows the crash frames."""
    original = elfinfo.build_id(built.lib)
    upgraded = tmp_path / "libretracelib.so.new"
    built.build_lib(upgraded, 2)
    assert elfinfo.build_id(upgraded) != original

    def upgrade() -> None:
        os.rename(upgraded, built.lib)

    report = crash(retrace_daemon, spawn, built.exe, "lib", before_release=upgrade)
    lib = next(lib for lib in report["libraries"] if lib["path"] == str(built.lib))
    assert (lib["build_id"], lib["build_id_source"], lib["deleted"]) == (original, "map_files", True)
    top = crashed_frames(report)[0]
    assert (top["function"], top["build_id"]) == ("retrace_lib_inner", original)
    result = subprocess.run([sys.executable, "-m", "tracerd.ctl.postmortem", report["id"], "--ui", "batch",
                             "--state-dir", str(retrace_daemon.state_dir)],
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert f"differs from the crashed process: {built.lib}: build-id {elfinfo.build_id(built.lib)} on disk," \
           f" {original} in the crashed process" in result.stderr, result.stderr
    assert "1 file(s) changed since the crash" in result.stderr


def test_assertion_message_in_the_report(retrace_daemon: Any, spawn: Any, built: Built) -> None:
    """SIGABRT of a failed assert(): the report has glibc's __abort_msg and,
    as apport's AssertionMessage, the assertion."""
    report = crash(retrace_daemon, spawn, built.exe, "assert")
    assert report["signal"]["name"] == "SIGABRT"
    assert "Assertion `value == 42 && \"the invariant holds\"' failed." in report["assertion"], report
    assert report["abort_message"] == report["assertion"]
    assert "retrace_target.c:34: check_invariant" in report["assertion"]
    human = retrace_daemon.ctl("crash", report["id"])
    assert human.returncode == 0, human.stderr
    assert "abort    " in human.stdout, human.stdout
    assert "the invariant holds" in human.stdout, human.stdout
    assert f"core     saved {report['id']}.core.zst" in human.stdout, human.stdout
    assert f"tracerctl gdb {report['id']}" in human.stdout, human.stdout


def test_postmortem_gdb_in_a_terminal_shows_the_crash_frames(
    retrace_daemon: Any, spawn: Any, cbin: Any
) -> None:
    """``tracerctl gdb CRASH-ID`` in a pseudo-terminal: gdb on
    the saved core, ``bt`` shows the crash frames; the unpacked core is removed at the end."""
    binary = cbin("crash", "-pthread")
    target = spawn(binary, retrace_daemon.hook_command(), "crasher", "segv")
    assert target.readline() == "hook=0\n"
    target.release()
    target.wait()
    crash_id = retrace_daemon.wait_session(target.pid, "crashed")["crash"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command in the terminal
        argv = [*script("tracerctl"), "gdb", crash_id, "--state-dir", str(retrace_daemon.state_dir)]
        os.execv(argv[0], argv)
    seen = b""
    try:
        os.write(fd, b"set pagination off\nbt\nprint 123456789+1\nquit\n")
        deadline = time.monotonic() + 120
        while b"123456790" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if ready:
                with contextlib.suppress(OSError):
                    seen += os.read(fd, 65536)
    finally:
        with contextlib.suppress(OSError):
            os.write(fd, b"quit\n")
        wait_until(lambda: os.waitpid(pid, os.WNOHANG)[0] == pid, "gdb's exit", 60)
        os.close(fd)
    text = seen.decode(errors="replace")
    for name in ("crash_here", "level_two", "level_one", "main"):
        assert name in text, text
    assert not list(Path("/tmp").glob("tracerd-core-*"))


def test_watch_process_over_max_core_process_bytes_keeps_no_core_but_a_full_report(
    daemon_factory: Any, spawn: Any, built: Built
) -> None:
    """The watch tracer's capture core follows max_core_process_bytes (at least
    256 MiB, which the capture gdb needs): a 300 MB process with a 4 KB limit
    gets a report with its frames, memory left out of the capture core, and no
    kept core, with the reason in the report."""
    daemon = daemon_factory('crash_flood_window = 0\ncore = "all"\nmax_core_process_bytes = 4096\n'
                            '[[rule]]\nprocess = "*"\ntracer = "watch"\n')  # fmt: skip
    report = crash(daemon, spawn, built.exe, "mem300")
    assert report["core"]["state"] == "skipped", report["core"]
    assert "over max_core_process_bytes" in report["core"]["reason"], report["core"]
    assert any("memory left out of the core" in e for e in report["process"].get("capture_errors", [])), report
    assert len(crashed_frames(report)) >= 2, report  # the capture gdb read the trimmed core
    assert not list((daemon.state_dir / "crashes").glob("*.core.zst"))
    assert not list((daemon.state_dir / "capture").glob("*.core"))


def test_retrace_is_stored_and_shown_by_crash_and_crashes(
    retrace_daemon: Any, spawn: Any, built: Built, tmp_path: Path
) -> None:
    """``tracerctl --socket S retrace ID`` (no --state-dir: the daemon of S says
    where its store is) keeps the names in that daemon's report: ``crash ID``,
    ``crashes`` and the report retrace prints show them, not ``??``."""
    report = crash(retrace_daemon, spawn, built.exe, "deep2")
    assert not any(f.get("function") == "retrace_crash_here" for f in crashed_frames(report))
    result = subprocess.run([*script("tracerctl"), "--socket", str(retrace_daemon.socket), "retrace", report["id"],
                             "--no-debuginfod", "--debug-dir", str(built.debug_root)],
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = result.stdout.partition("\n\n")[2]
    assert "retrace_crash_here () at " in printed, result.stdout
    assert "?? ()" not in printed.partition("other threads")[0].split("x/16i")[0], result.stdout
    human = retrace_daemon.ctl("crash", report["id"]).stdout
    assert report["core"]["bytes"] < 1 << 20  # a small core: its size in KB, not "0.0 MB"
    assert f"core     saved {report['id']}.core.zst ({human_size(report['core']['bytes'])}):" in human, human
    assert " KB):" in human
    assert "retrace_crash_here () at " in human, human
    assert "retrace_target.c:22" in human, human
    stored = json.loads(retrace_daemon.ctl("--json", "crash", report["id"]).stdout)["crash"]
    top = crashed_frames(stored)[0]
    assert (top["function"], top["line"]) == ("retrace_crash_here", 22)
    assert stored["top"][:2] == ["retrace_crash_here", "descend"], stored["top"]
    before = {m["object"]: m["frames"] for m in report["missing_symbols"]}
    after = {m["object"]: m["frames"] for m in stored["missing_symbols"]}
    assert after.get(str(built.exe), 0) < before[str(built.exe)], (before, after)  # named now: no longer missing
    assert stored["signature"] == report["signature"]
    listed = retrace_daemon.ctl("crashes").stdout
    assert "retrace_crash_here < descend" in listed, listed
    entry = next(e for e in json.loads(retrace_daemon.ctl("--json", "crashes").stdout)["crashes"]
                 if e["signature"] == report["signature"])  # fmt: skip
    assert entry["top"][:2] == ["retrace_crash_here", "descend"]


def test_retrace_leaves_frames_gdb_named_alone(retrace_daemon: Any, spawn: Any, built: Built) -> None:
    """glibc's symbols installed (libc6-dbg under /usr/lib/debug): gdb named
    ``__libc_start_call_main`` at ``libc_start_call_main.h:58`` (an inlined
    frame, which addr2line without -i puts at libc-start.c:58); retrace fills
    only the frames gdb left unnamed and keeps gdb's file:line."""
    report = crash(retrace_daemon, spawn, built.exe, "deep1")
    gdb_named = [f for f in crashed_frames(report) if f["function"] and f["file"] and f["line"] is not None]
    libc = [f for f in gdb_named if f["function"] == "__libc_start_call_main"]
    if not libc or retrace_mod.local_debug_file(retrace_mod.DEFAULT_ROOTS, libc[0]["build_id"]) is None:
        pytest.skip("glibc's debug symbols (libc6-dbg) are not installed")
    result = retrace(retrace_daemon, report["id"], "--json", "--no-debuginfod", "--debug-dir", str(built.debug_root),
                     "--debug-dir", "/usr/lib/debug")  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert {c["level"] for c in record["changed"]}.isdisjoint(f["level"] for f in gdb_named), record["changed"]
    assert any(c["function"] == "retrace_crash_here" for c in record["changed"])
    stored = crashed_frames(json.loads(retrace_daemon.ctl("--json", "crash", report["id"]).stdout)["crash"])
    for before in gdb_named:
        after = next(f for f in stored if f["level"] == before["level"])
        assert (after["function"], after["file"], after["line"]) == (before["function"], before["file"], before["line"])
    assert any(f["file"].endswith("libc_start_call_main.h") and f["line"] == 58 for f in stored if f["file"])


@pytest.mark.parametrize(("given", "wanted"), [
    ("./nptl/./nptl/pthread_create.c", "nptl/pthread_create.c"),
    ("./csu/../sysdeps/x86/libc-start.c", "sysdeps/x86/libc-start.c"),
    ("/build/glibc/./nptl/x.c", "/build/glibc/nptl/x.c"),
    ("/src/a/../b.c", "/src/b.c"),
    ("/work/tests/c/retrace_target.c", "/work/tests/c/retrace_target.c"),
    ("x.c", "x.c"),
])  # fmt: skip
def test_addr2line_source_paths_are_normalised(given: str, wanted: str) -> None:
    assert retrace_mod.source_path(given) == wanted


@pytest.mark.parametrize(("size", "shown"), [
    (0, "0 B"), (512, "512 B"), (1023, "1023 B"), (1024, "1.0 KB"), (25 * 1024, "25 KB"), (25_600, "25 KB"),
    ((1 << 20) - 1, "1.0 MB"), (1 << 20, "1.0 MB"), (3_565_158, "3.4 MB"), (50 << 20, "50 MB"), (1 << 30, "1.0 GB"),
])  # fmt: skip
def test_core_sizes_are_human(size: int, shown: str) -> None:
    assert human_size(size) == shown


def test_addr2line_paths_of_glibcs_debug_file_are_normalised() -> None:
    """The real libc6-dbg file: addr2line says ``./nptl/./nptl/pthread_create.c``
    for start_thread; the retrace says ``nptl/pthread_create.c``."""
    libc = "/lib/x86_64-linux-gnu/libc.so.6"
    build_id = elfinfo.build_id(libc) if os.path.exists(libc) else None
    debug = retrace_mod.local_debug_file(retrace_mod.DEFAULT_ROOTS, build_id) if build_id else None
    if debug is None:
        pytest.skip("glibc's debug symbols (libc6-dbg) are not installed")
    symbols = subprocess.run(["nm", str(debug)], capture_output=True, text=True, check=True).stdout.splitlines()
    start = next(int(line.split()[0], 16) for line in symbols if line.endswith(" t start_thread"))
    offsets = [start + step for step in range(0, 0x400, 0x10)]
    raw = subprocess.run(["addr2line", "-e", str(debug), *map(hex, offsets)], capture_output=True, text=True,
                         check=True).stdout.splitlines()  # fmt: skip
    doubled = [(offset, where) for offset, where in zip(offsets, raw, strict=True) if "/./" in where]
    if not doubled:
        pytest.skip("this binutils does not double the directory")
    ours = retrace_mod._addr2line(debug, [offset for offset, _ in doubled])
    assert [file for _, file, _ in ours] == [retrace_mod.source_path(where.partition(":")[0]) for _, where in doubled]
    assert "nptl/pthread_create.c" in [file for _, file, _ in ours]
    assert not [file for _, file, _ in ours if file is None or "/./" in file or file.startswith("./")]


def test_retrace_with_tracerd_down_keeps_the_names_in_the_store(
    retrace_daemon: Any, spawn: Any, built: Built
) -> None:
    """No tracerd serves the store: tracerctl puts the record into the report
    and the index itself (``kept``: ``store``); the store read while tracerd is
    down, and a tracerd started on it, show the names."""
    report = crash(retrace_daemon, spawn, built.exe, "deep1")
    retrace_daemon.stop()
    result = retrace(retrace_daemon, report["id"], "--json", "--no-debuginfod", "--debug-dir", str(built.debug_root))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["kept"] == "store"
    listed = retrace_daemon.ctl("crashes", "--state-dir", str(retrace_daemon.state_dir)).stdout
    assert "retrace_crash_here < descend" in listed, listed
    retrace_daemon.start()
    assert "retrace_crash_here () at " in retrace_daemon.ctl("crash", report["id"]).stdout
    assert "retrace_crash_here < descend" in retrace_daemon.ctl("crashes").stdout
