"""Crash signatures that tell bugs apart, the report an entry keeps, and the
top frames `tracerctl crashes` shows (issue 22, items 1-3).

Real crashes: tests/c/bugs.c (two asserts, SIGFPE, SIGILL, a wait for a
kill), plain and stripped, traced by one real tracerd for the whole module
(watch tracer; strace where the hook asks for it).  The store's own rules
(which report an entry shows) are also checked on a real directory with a
hand-moved clock.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SyslogReceiver, have
from tests.support import Daemon
from tests.test_crash import FakeClock, make_report
from tracerd.crash.report import Frame
from tracerd.crash.signature import assertion_location, frames_signature, meaningful
from tracerd.crash.store import CrashStore

CONFIG = 'crash_flood_window = 600.0\ncore = "none"\n[[rule]]\nprocess = "bug*"\ntracer = "watch"\n'
LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
ABORT_PATH = ["__pthread_kill_implementation", "__pthread_kill_internal", "__GI_raise", "__GI_abort",
              "__assert_fail_base", "__GI___assert_fail"]  # fmt: skip

needs_gdb = pytest.mark.skipif(not have("gdb"), reason="the watch tracer takes its backtrace with gdb")


@pytest.fixture(scope="module")
def tracerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One tracerd for the module's real crashes (each test uses its own service names)."""
    root = tmp_path_factory.mktemp("signatures")
    receiver = SyslogReceiver(root / "syslog.sock")
    daemon = Daemon(root, receiver.path, CONFIG)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        receiver.close()


@pytest.fixture(scope="module")
def bugs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tests/c/bugs.c built with -g, the same binary stripped, under the same name)."""
    out = tmp_path_factory.mktemp("bugs")
    exe = out / "bugs"
    subprocess.run(["gcc", "-g", "-O0", "-Wall", "-o", str(exe), str(Path(__file__).parent / "c" / "bugs.c")],
                   check=True)  # fmt: skip
    (out / "stripped").mkdir()
    stripped = out / "stripped" / "bugs"
    subprocess.run(["strip", "-o", str(stripped), str(exe)], check=True)
    return exe, stripped


SIGNALS = {"assert_a": signal.SIGABRT, "assert_b": signal.SIGABRT, "fpe": signal.SIGFPE, "ill": signal.SIGILL}


def run_bug(daemon: Daemon, spawn: Any, exe: Path, name: str, mode: str) -> int:
    """One crash of ``exe MODE`` as service ``name``, traced; its pid once tracerd has its report."""
    target = spawn(exe, daemon.hook_command(), name, mode)
    assert target.readline() == "hook=0\n"
    target.release()
    assert target.wait(timeout=60) == -SIGNALS[mode]
    session = daemon.wait_session(target.pid, "crashed", timeout=60)
    assert session["crash"], daemon.stderr()[-2000:]
    return int(target.pid)


def kill_segv(daemon: Daemon, spawn: Any, exe: Path, name: str, tracer: str) -> int:
    """A waiting target, traced by ``tracer``, killed by SIGSEGV from here."""
    target = spawn(exe, f"{daemon.hook_command()} --tracer {tracer}", name, "wait")
    assert target.readline() == "hook=0\n"
    target.release()
    assert target.readline() == "waiting\n"
    os.kill(target.pid, signal.SIGSEGV)
    assert target.wait(timeout=60) == -signal.SIGSEGV
    session = daemon.wait_session(target.pid, "crashed", timeout=60)
    assert session["crash"], daemon.stderr()[-2000:]
    return int(target.pid)


def entries(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    listed = daemon.ctl("--json", "crashes")
    assert listed.returncode == 0, listed.stderr
    return [entry for entry in json.loads(listed.stdout)["crashes"] if entry["name"] == name]


def report(daemon: Daemon, crash_id: str) -> dict[str, Any]:
    shown = daemon.ctl("--json", "crash", crash_id)
    assert shown.returncode == 0, shown.stderr
    crash: dict[str, Any] = json.loads(shown.stdout)["crash"]
    return crash


# -- real crashes ---------------------------------------------------------------------


@needs_gdb
def test_two_asserts_in_two_functions_are_two_entries_shown_by_their_functions(
    tracerd: Daemon, spawn: Any, bugs: tuple[Path, Path]
) -> None:
    """Each assert is its own entry; the signature's basis names program, signal,
    the assertion's file:line and the user's frames; `crashes` shows
    `check_invariant < main`, none of glibc's abort path."""
    exe, _ = bugs
    run_bug(tracerd, spawn, exe, "bugassert", "assert_a")
    run_bug(tracerd, spawn, exe, "bugassert", "assert_b")
    found = {entry["top"][0]: entry for entry in entries(tracerd, "bugassert")}
    assert sorted(found) == ["check_invariant", "check_other"], found
    assert found["check_invariant"]["top"][:2] == ["check_invariant", "main"]
    basis = report(tracerd, found["check_invariant"]["id"])["signature_basis"]
    assert re.fullmatch(r"frames: bugassert SIGABRT, assertion at bugs\.c:\d+, check_invariant < main( < .*)?", basis)

    table = tracerd.ctl("crashes")
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if "bugassert[" in line]
    assert len(rows) == 2, table.stdout
    assert not [row for row in rows if "__pthread_kill" in row or "raise" in row], rows
    assert any("check_invariant < main" in row for row in rows), rows
    assert any("check_other < main" in row for row in rows), rows


@needs_gdb
def test_one_assert_in_two_programs_is_two_entries(tracerd: Daemon, spawn: Any, bugs: tuple[Path, Path]) -> None:
    """The program (the service name) is part of the signature."""
    exe, _ = bugs
    run_bug(tracerd, spawn, exe, "bugprog1", "assert_a")
    run_bug(tracerd, spawn, exe, "bugprog2", "assert_a")
    one, two = entries(tracerd, "bugprog1"), entries(tracerd, "bugprog2")
    assert [entry["count"] for entry in one + two] == [1, 1], (one, two)
    assert one[0]["signature"] != two[0]["signature"]


@needs_gdb
def test_sigfpe_and_sigill_in_one_stripped_binary_are_two_entries(
    tracerd: Daemon, spawn: Any, bugs: tuple[Path, Path]
) -> None:
    """No symbols: each frame of the binary counts as module + offset, which
    tells the two crash sites apart (and the signal does too)."""
    _, stripped = bugs
    run_bug(tracerd, spawn, stripped, "bugstrip", "fpe")
    run_bug(tracerd, spawn, stripped, "bugstrip", "ill")
    found = {entry["signal"]: entry for entry in entries(tracerd, "bugstrip")}
    assert sorted(found) == ["SIGFPE", "SIGILL"], found
    fpe, ill = found["SIGFPE"]["top"], found["SIGILL"]["top"]
    assert re.fullmatch(r"\(bugs \+ 0x[0-9a-f]+\)", fpe[0]), fpe
    assert re.fullmatch(r"\(bugs \+ 0x[0-9a-f]+\)", ill[0]), ill
    assert fpe[0] != ill[0]


@needs_gdb
def test_the_stripped_and_the_unstripped_binary_of_one_bug_are_two_entries(
    tracerd: Daemon, spawn: Any, bugs: tuple[Path, Path]
) -> None:
    """As README says: the debug build is signed by function names, the stripped
    one by module offsets, so one bug gives an entry per build."""
    exe, stripped = bugs
    run_bug(tracerd, spawn, exe, "bugbuild", "fpe")
    run_bug(tracerd, spawn, stripped, "bugbuild", "fpe")
    tops = sorted(entry["top"][0] for entry in entries(tracerd, "bugbuild"))
    assert len(tops) == 2, tops
    assert tops[1] == "divide_here", tops
    assert re.fullmatch(r"\(bugs \+ 0x[0-9a-f]+\)", tops[0]), tops


@needs_gdb
def test_twenty_runs_of_one_bug_are_one_entry_of_count_twenty(
    tracerd: Daemon, spawn: Any, bugs: tuple[Path, Path]
) -> None:
    """Twenty pids, each at its own ASLR addresses: one entry, count 20, one full report."""
    exe, _ = bugs
    pids = [run_bug(tracerd, spawn, exe, "bugloop", "assert_a") for _ in range(20)]
    assert len(set(pids)) == 20
    [entry] = entries(tracerd, "bugloop")
    assert entry["count"] == 20, entry
    assert entry["top"][:2] == ["check_invariant", "main"]
    assert len(entry["reports"]) == 1
    assert len(entry["repeats"]) == 19


@needs_gdb
@pytest.mark.skipif(not have("strace"), reason="the first kill is traced by strace")
def test_the_watchers_report_replaces_stracess_as_the_one_shown(
    tracerd: Daemon, spawn: Any, bugs: tuple[Path, Path]
) -> None:
    """kill -SEGV under strace (no frames), then under the watcher (frames):
    one entry, count 2, both reports kept, the watcher's shown with its top frames."""
    exe, _ = bugs
    kill_segv(tracerd, spawn, exe, "bugkill", "strace")
    second = kill_segv(tracerd, spawn, exe, "bugkill", "watch")
    [entry] = entries(tracerd, "bugkill")
    assert (entry["count"], len(entry["reports"]), entry["pid"]) == (2, 2, second), entry
    assert entry["top"], entry  # where the kill found it: read(), or still in printf's write()
    shown = report(tracerd, entry["id"])
    assert shown["tracer"] == "watch"
    [crashed] = [thread for thread in shown["threads"] if thread["crashed"]]
    assert "main" in [frame["function"] for frame in crashed["frames"]]
    table = tracerd.ctl("crashes").stdout
    [row] = [line for line in table.splitlines() if f"bugkill[{second}]" in line]
    assert " < ".join(entry["top"]) in row, table


# -- the rules, without a daemon ----------------------------------------------------------


def test_libc_abort_path_is_skipped_but_not_a_programs_own_abort() -> None:
    """glibc's and ld.so's fatal-path frames go; a function of the program named
    like one of them stays; a chain of only such frames is kept whole."""
    libc = [Frame(n, name, None, None, LIBC, hex(0x7F00 + n)) for n, name in enumerate(ABORT_PATH)]
    mine = [Frame(6, "check_invariant", "bugs.c", 22, "/usr/sbin/bugs", "0x1"),
            Frame(7, "main", None, None, None, "0x2")]  # fmt: skip
    assert [f.function for f in meaningful(libc + mine)] == ["check_invariant", "main"]
    own_abort = [Frame(0, "abort", "mine.c", 3, "/usr/sbin/mine", "0x1"), *mine]
    assert meaningful(own_abort)[0].function == "abort"
    assert meaningful(libc) == libc


def test_assertion_location_is_read_from_glibcs_message() -> None:
    message = "bugs: bugs.c:22: check_invariant: Assertion `x > 0' failed."
    assert assertion_location(message) == "bugs.c:22"
    assert assertion_location("smtpd: /build/src/global/x.c:7: f: Assertion `p' failed.") == "x.c:7"
    assert assertion_location("free(): invalid pointer") is None
    assert assertion_location(None) is None
    frames = [Frame(0, "check_invariant", None, None, None, None)]
    at_22 = frames_signature(frames, program="bugs", signal_name="SIGABRT", location="bugs.c:22")
    assert at_22 != frames_signature(frames, program="bugs", signal_name="SIGABRT", location="bugs.c:23")


def test_an_unnamed_frame_counts_as_module_and_offset() -> None:
    """Two crash sites of one stripped module differ; the same site at another load address does not."""
    def site(offset: str, address: str) -> list[Frame]:
        return [Frame(0, None, None, None, "/usr/sbin/bugs", address, module_offset=offset)]

    assert frames_signature(site("0x1189", "0x5555")) == frames_signature(site("0x1189", "0x7777"))
    assert frames_signature(site("0x1189", "0x5555")) != frames_signature(site("0x11a0", "0x5555"))


def test_a_repeat_naming_more_frames_is_kept_and_shown_a_poorer_one_is_not(tmp_path: Path) -> None:
    """Within the flood window: no frames, then frames -> a second full report, shown;
    then a report naming fewer frames only counts.  Out of the window a poorer
    report is written but the entry still shows the best one, also after a restart."""
    clock = FakeClock()
    with CrashStore(tmp_path / "crashes", clock=clock, flood_window=60.0) as store:
        bare = make_report("main", pid=1)
        bare.process["name"] = "bugkill"
        bare.signal = {"number": 11, "name": "SIGSEGV", "si_code": 0, "user_sent": True, "sender_pid": 9,
                       "self_sent": False}
        rich = make_report("read", "loop", "main", pid=2)
        rich.process, rich.signal = bare.process | {"pid": 2}, bare.signal
        bare.threads[1].frames = []
        assert bare.signature == rich.signature
        first = store.record(bare)
        clock.now += 1
        second = store.record(rich)
        assert (second["full"], second["pid"], second["count"]) == (True, 2, 2)
        assert second["id"] != first["id"]
        assert second["top"] == ["read", "loop", "main"]
        clock.now += 1
        bare.process = bare.process | {"pid": 3}
        assert store.record(bare)["full"] is False
        clock.now += 120
        bare.process = bare.process | {"pid": 4}
        late = store.record(bare)
        assert (late["full"], late["count"], late["pid"], len(late["reports"])) == (True, 4, 2, 3)
    with CrashStore(tmp_path / "crashes", clock=clock) as store:
        [entry] = store.list()
        assert (entry["pid"], entry["top"]) == (2, ["read", "loop", "main"])
