"""Crash reports: signature, ELF build-ids, debug packages, and the crash store.

Real files throughout: gcc-built binaries (read back against binutils'
readelf), the system's dpkg, a real directory (and a real full tmpfs) for the
store.  Time is the only thing faked: the store takes a clock.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracerd.crash import elfinfo
from tracerd.crash.report import CrashReport, Frame, Library, Thread, signature, top_functions
from tracerd.crash.store import CrashStore
from tracerd.errors import ConfigError, NotFound

# -- helpers ------------------------------------------------------------------


def frames(*functions: str | None, base: int = 0x401000, obj: str = "/usr/lib/postfix/sbin/smtpd") -> list[Frame]:
    """Frames innermost first; ``base`` shifts every address (another pid, ASLR)."""
    return [
        Frame(level, function, "smtpd.c" if function else None, 10 + level if function else None, obj,
              hex(base + 0x10 * level))
        for level, function in enumerate(functions)
    ]  # fmt: skip


def make_report(*functions: str | None, pid: int = 1234, base: int = 0x401000, text: str = "") -> CrashReport:
    crashed = Thread(id=1, tid=pid, name="smtpd", crashed=True, frames=frames(*functions, base=base), text=text)
    idle = Thread(id=2, tid=pid + 1, name="worker", crashed=False, frames=frames("epoll_wait", "worker_main"))
    return CrashReport(
        process={"name": "smtpd", "pid": pid, "exe": "/usr/lib/postfix/sbin/smtpd", "cmdline": ["smtpd", "-n"],
                 "uid": 0},
        signal={"number": 11, "name": "SIGSEGV", "si_code": 1, "fault_address": "0x0"},
        time="2026-11-24T16:18:14.000Z",
        threads=[idle, crashed],
        registers={"rip": hex(base), "rsp": "0x7ffc0000"},
        disassembly=f"=> {hex(base)} <crash_here+4>:\tmov    (%rax),%eax",
        libraries=[Library("/lib/x86_64-linux-gnu/libc.so.6", "0x7f0000", "0x7f8000", "ab" * 20)],
        log=f"/var/log/tracerd/smtpd.{pid}.log",
        tracer="gdb",
    )  # fmt: skip


class FakeClock:
    """Seconds since the epoch, moved by hand."""

    def __init__(self) -> None:
        self.now = 1_795_000_000.0

    def __call__(self) -> float:
        return self.now


def report_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".json") and p.name != "index.json")


def temp_files(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


def disk_bytes(directory: Path) -> int:
    return sum(p.lstat().st_size for p in directory.iterdir())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def open_store(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[..., CrashStore]]:
    """Opens CrashStores on tmp_path/crashes (or another dir); closes them all after the test."""
    stores: list[CrashStore] = []

    def make(directory: Path | None = None, **options: Any) -> CrashStore:
        store = CrashStore(directory or tmp_path / "crashes", clock=clock, **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/c/crash_store_target.c linked with a build-id."""
    exe = tmp_path_factory.mktemp("elf") / "crash_store_target"
    source = Path(__file__).parent / "c" / "crash_store_target.c"
    subprocess.run(["gcc", "-O0", "-Wl,--build-id", "-o", str(exe), str(source)], check=True)
    return exe


def readelf_build_id(path: Path | str) -> str:
    out = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True, check=True).stdout
    match = re.search(r"Build ID: ([0-9a-f]+)", out)
    assert match, out
    return match.group(1)


def libc_of(exe: Path) -> str:
    out = subprocess.run(["ldd", str(exe)], capture_output=True, text=True, check=True).stdout
    match = re.search(r"libc\.so\.6 => (\S+)", out)
    assert match, out
    return match.group(1)


# -- signature ----------------------------------------------------------------


def test_signature_ignores_addresses_and_pids() -> None:
    """The same call chain at other addresses, in another pid, has the same signature."""
    one = make_report("crash_here", "level_two", "level_one", "main", pid=100, base=0x401000)
    other = make_report("crash_here", "level_two", "level_one", "main", pid=200, base=0x55D0_0000_1000)
    assert one.signature == other.signature
    assert re.fullmatch(r"[0-9a-f]{16}", one.signature)


def test_signature_depends_on_function_names_only_in_the_top_five() -> None:
    """Other names or another order change the signature; a difference below frame 5 does not."""
    chain = ["a", "b", "c", "d", "e"]
    assert signature(frames(*chain)) != signature(frames("a", "b", "c", "d", "x"))
    assert signature(frames(*chain)) != signature(frames("b", "a", "c", "d", "e"))
    assert signature(frames(*chain, "main")) == signature(frames(*chain, "other_main"))
    assert signature(frames("a", "b"), depth=1) == signature(frames("a", "z"), depth=1)


def test_unnamed_frames_contribute_their_object_basename() -> None:
    """A frame without symbols counts as ?@basename(object): same library anywhere, not another one."""
    libc_lib = frames("crash_here", None, obj="/lib/x86_64-linux-gnu/libc.so.6")
    libc_usr = frames("crash_here", None, obj="/usr/lib/x86_64-linux-gnu/libc.so.6")
    libm = frames("crash_here", None, obj="/lib/x86_64-linux-gnu/libm.so.6")
    assert signature(libc_lib) == signature(libc_usr)
    assert signature(libc_lib) != signature(libm)
    assert signature(libc_lib) == signature(frames("crash_here", "?@libc.so.6"))
    nowhere = [Frame(0, None, None, None, None, "0x1")]
    assert top_functions(nowhere) == ["??"]
    assert top_functions(libm) == ["crash_here", "(libm.so.6)"]  # coredumpctl's form; with an offset (libm.so.6 + 0x..)


def test_leading_signal_trampolines_are_skipped() -> None:
    """Frames of the signal trampoline on top do not change the signature or the top functions."""
    plain = frames("crash_here", "level_two", "main")
    trampolined = frames("<signal handler called>", "__restore_rt", "crash_here", "level_two", "main")
    assert signature(trampolined) == signature(plain)
    assert top_functions(trampolined) == ["crash_here", "level_two", "main"]


def test_report_json_carries_derived_fields() -> None:
    """to_json() is the whole report plus id, signature and top, all JSON; crashed_thread() finds the crashed one."""
    report = make_report("crash_here", "level_two", "level_one", "main")
    data = json.loads(json.dumps(report.to_json()))
    assert data["signature"] == report.signature
    assert data["top"] == ["crash_here", "level_two", "level_one"]
    assert data["id"] is None
    assert set(data) >= {"process", "signal", "time", "threads", "registers", "disassembly", "libraries", "log",
                         "tracer", "missing_symbols"}  # fmt: skip
    assert data["threads"][1]["frames"][0] == {
        "level": 0, "function": "crash_here", "file": "smtpd.c", "line": 10,
        "object": "/usr/lib/postfix/sbin/smtpd", "address": "0x401000",
        "pc": None, "module_offset": None, "build_id": None,  # filled from the maps by a live capture
    }  # fmt: skip
    assert report.crashed_thread().id == 1
    report.threads[1].crashed = False
    assert report.crashed_thread().id == 2  # none marked: the first


def test_summary_is_one_line_for_syslog() -> None:
    """The crit summary names process, signal, top three functions and the report path."""
    report = make_report("crash_here", "level_two", "main")
    assert report.summary("/var/lib/tracerd/crashes/X.json") == (
        "smtpd[1234]: crashed: SIGSEGV in crash_here < level_two < main; report /var/lib/tracerd/crashes/X.json"
    )
    report.threads[1].frames[0].function = "evil\nJan 1 00:00:00 host forged: line"
    assert "\n" not in report.summary("r")


def test_readable_block_puts_the_crashed_thread_first() -> None:
    """The log block: signal line, fault address, gdb-style frames, crashed thread first and marked."""
    report = make_report("crash_here", None, "main", text="#0  crash_here (depth=2) at t.c:12\n        x = 1")
    report.missing_symbols = [{"object": "/usr/lib/postfix/sbin/smtpd", "build_id": "ab", "frames": 1,
                               "package": "postfix", "version": "3.7.11-0+deb12u1", "debug_package": "postfix-dbgsym",
                               "note": "apt can install it now: apt-get install postfix-dbgsym=3.7.11-0+deb12u1"}]
    report.debug_symbols = {"advice": ["install: apt-get install postfix-dbgsym=3.7.11-0+deb12u1"]}
    text = report.readable()
    lines = text.splitlines()
    assert "SIGSEGV" in lines[0]
    assert "smtpd[1234]" in lines[0]
    assert lines[1] == "fault address: 0x0"
    assert text.index("Thread 1 (LWP 1234") < text.index("Thread 2 (LWP 1235")
    assert 'Thread 1 (LWP 1234 "smtpd") [crashed]:' in lines
    assert "#0  0x401000 in crash_here () at smtpd.c:10" in lines
    assert "#1  0x401010 in ?? () from /usr/lib/postfix/sbin/smtpd" in lines
    assert "        x = 1" in lines  # bt full of the crashed thread
    assert ("no line info for /usr/lib/postfix/sbin/smtpd (postfix 3.7.11-0+deb12u1): apt can install it now:"
            " apt-get install postfix-dbgsym=3.7.11-0+deb12u1") in lines
    assert lines[-2:] == ["debug symbols:", "  install: apt-get install postfix-dbgsym=3.7.11-0+deb12u1"]


def test_a_report_without_threads_is_still_usable(open_store: Callable[..., CrashStore]) -> None:
    """When gdb could list no thread, the report still has a signature, a summary, a log block and is stored."""
    report = make_report("x")
    report.threads = []
    assert report.summary("r") == "smtpd[1234]: crashed: SIGSEGV in ??; report r"
    assert "SIGSEGV" in report.readable()
    assert open_store().record(report)["top"] == []


# -- ELF build-id -------------------------------------------------------------


def test_build_id_matches_readelf(target: Path) -> None:
    """The build-id of a gcc-linked binary and of its libc is what readelf -n reports."""
    assert elfinfo.build_id(target) == readelf_build_id(target)
    assert elfinfo.build_id(str(target)) == readelf_build_id(target)
    libc = libc_of(target)
    assert elfinfo.build_id(libc) == readelf_build_id(libc)


@pytest.mark.skipif(shutil.which("objcopy") is None, reason="binutils' objcopy is not installed")
def test_build_id_of_32_bit_and_big_endian_files(target: Path, tmp_path: Path) -> None:
    """32-bit (program headers) and big-endian 32/64-bit (note sections only) files are read as readelf reads them."""
    elf32 = tmp_path / "target32"
    subprocess.run(["objcopy", "-O", "elf32-i386", str(target), str(elf32)], check=True)
    assert (elf32.read_bytes()[4], elf32.read_bytes()[5]) == (1, 1)  # ELFCLASS32, little endian
    assert elfinfo.build_id(elf32) == readelf_build_id(elf32) == readelf_build_id(target)

    desc = bytes.fromhex("00112233445566778899aabbccddeeff01020304")
    note = tmp_path / "note"
    note.write_bytes(len(b"GNU\0").to_bytes(4, "big") + len(desc).to_bytes(4, "big") + (3).to_bytes(4, "big")
                     + b"GNU\0" + desc)  # fmt: skip
    (tmp_path / "blob").write_bytes(b"payload\n")
    for kind, elf_class in (("elf32-big", 1), ("elf64-big", 2)):
        out = tmp_path / kind
        subprocess.run(
            ["objcopy", "-I", "binary", "-O", kind, f"--add-section=.note.gnu.build-id={note}",
             "--set-section-flags=.note.gnu.build-id=alloc,readonly,contents", "blob", str(out)],
            check=True, cwd=tmp_path,
        )  # fmt: skip
        assert (out.read_bytes()[4], out.read_bytes()[5]) == (elf_class, 2)  # big endian
        assert elfinfo.build_id(out) == readelf_build_id(out) == desc.hex()


def test_build_id_is_none_for_junk(target: Path, tmp_path: Path) -> None:
    """Not ELF, empty, cut before its build-id ends, no build-id, a directory, a FIFO, missing: None, never a hang."""
    junk = tmp_path / "junk"
    junk.write_bytes(b"#!/bin/sh\necho not an ELF\n" * 20)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    plain = tmp_path / "no-build-id"
    subprocess.run(["gcc", "-Wl,--build-id=none", "-o", str(plain), str(Path(__file__).parent / "c" /
                    "crash_store_target.c")], check=True)  # fmt: skip
    cases: list[Path | str] = [junk, empty, fifo, plain, tmp_path, tmp_path / "missing", "bad\0path", ""]
    whole = target.read_bytes()
    note_end = whole.index(bytes.fromhex(readelf_build_id(target))) + 20
    for size in (4, 16, 40, 63, 64, 100, note_end - 12, note_end - 1):
        cut = tmp_path / f"cut{size}"
        cut.write_bytes(whole[:size])
        cases.append(cut)
    for case in cases:
        assert elfinfo.build_id(case) is None, case
    # Cut after the note segments (section headers and code gone): the notes still answer.
    half = tmp_path / "half"
    half.write_bytes(whole[:0x1000])
    assert note_end < 0x1000
    assert elfinfo.build_id(half) == readelf_build_id(target)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(elf_class=st.sampled_from([1, 2, 3]), order=st.sampled_from([1, 2, 0]), body=st.binary(max_size=600))
def test_build_id_never_raises_on_elf_shaped_noise(tmp_path: Path, elf_class: int, order: int, body: bytes) -> None:
    """Random bytes behind an ELF magic give a hex string or None, never an exception."""
    path = tmp_path / "noise"
    path.write_bytes(b"\x7fELF" + bytes([elf_class, order]) + body)
    found = elfinfo.build_id(path)
    assert found is None or re.fullmatch(r"[0-9a-f]+", found)


# -- debug packages -----------------------------------------------------------

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg") is None, reason="dpkg is not installed (not Debian)")


def debug_package(path: str) -> str | None:
    """The package debugsyms names for an object's symbols: its owner's debug package."""
    found = elfinfo.owner(path)
    return elfinfo.debug_package_of(found[0]) if found else None


@needs_dpkg
def test_debug_package_of_libc_is_libc6_dbg(target: Path) -> None:
    """libc, by the path ldd resolves, its real path, or its usrmerge twin, gets its symbols from libc6-dbg."""
    libc = libc_of(target)
    assert debug_package(str(libc)) == "libc6-dbg"
    assert debug_package(os.path.realpath(libc)) == "libc6-dbg"
    assert debug_package("/usr/lib/x86_64-linux-gnu/libc.so.6") == "libc6-dbg"


@needs_dpkg
def test_debug_package_of_other_packages_is_dbgsym() -> None:
    """An object owned by package P gets its symbols from P-dbgsym."""
    dpkg = os.path.realpath(shutil.which("dpkg") or "")
    assert debug_package(dpkg) == "dpkg-dbgsym"


@needs_dpkg
def test_debug_package_is_none_when_dpkg_cannot_tell(target: Path) -> None:
    """A file no package owns, a relative path or a glob pattern: None (dpkg -S would search by pattern)."""
    assert debug_package(str(target)) is None
    assert debug_package("libc.so.6") is None
    assert debug_package("/usr/lib/*/libc.so.6") is None


# -- store --------------------------------------------------------------------


def test_first_crash_writes_a_full_report(open_store: Callable[..., CrashStore], tmp_path: Path) -> None:
    """The first crash of a signature: a full report file (valid JSON, 0640) and an index entry with count 1."""
    store = open_store()
    report = make_report("crash_here", "level_two", "main")
    entry = store.record(report)
    directory = tmp_path / "crashes"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o750
    assert entry["full"] is True
    assert entry["count"] == 1
    assert entry["signature"] == report.signature
    assert (entry["name"], entry["pid"], entry["signal"]) == ("smtpd", 1234, "SIGSEGV")
    assert entry["top"] == ["crash_here", "level_two", "main"]
    assert entry["first_seen"] == entry["last_seen"] == "2026-11-18T11:06:40.000Z"
    assert re.fullmatch(rf"20261118T110640Z-{report.signature[:8]}-1234", entry["id"])
    path = Path(entry["report"])
    assert path == directory / f"{entry['id']}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    on_disk = json.loads(path.read_text())
    assert on_disk["id"] == entry["id"] == report.id
    assert on_disk["threads"] == report.to_json()["threads"]
    assert json.loads((directory / "index.json").read_text())["crashes"][0]["count"] == 1
    assert temp_files(directory) == []


def test_repeats_within_the_flood_window_only_count(
    open_store: Callable[..., CrashStore], clock: FakeClock, tmp_path: Path
) -> None:
    """Four more crashes of the signature within the window: count 5, four repeats, still one report file."""
    store = open_store(flood_window=60.0)
    first = store.record(make_report("crash_here", "main", pid=100))
    for pid in (101, 102, 103, 104):
        clock.now += 10
        entry = store.record(make_report("crash_here", "main", pid=pid, base=0x1000 * pid))
        assert entry["full"] is False
    assert entry["count"] == 5
    assert entry["id"] == first["id"]
    assert [repeat["pid"] for repeat in entry["repeats"]] == [101, 102, 103, 104]
    assert entry["repeats"][0]["top"] == ["crash_here", "main"]
    assert entry["last_seen"] == "2026-11-18T11:07:20.000Z"
    assert len(report_files(tmp_path / "crashes")) == 1
    assert temp_files(tmp_path / "crashes") == []

    clock.now += 30  # 70 s after the full report: a new one
    again = store.record(make_report("crash_here", "main", pid=105))
    assert again["full"] is True
    assert again["count"] == 6
    assert again["id"] != first["id"]
    assert again["first_seen"] == first["first_seen"]
    assert len(report_files(tmp_path / "crashes")) == 2

    clock.now -= 3600  # the clock stepped back: not a reason to stay silent for an hour
    assert store.record(make_report("crash_here", "main", pid=106))["full"] is True


def test_repeats_keep_the_newest_hundred(open_store: Callable[..., CrashStore], clock: FakeClock) -> None:
    """A crash loop keeps counting but remembers only the newest 100 repeats."""
    store = open_store(flood_window=1e9)
    for pid in range(1, 152):
        clock.now += 1
        entry = store.record(make_report("loop", pid=pid))
    assert entry["count"] == 151
    assert len(entry["repeats"]) == 100
    assert entry["repeats"][-1]["pid"] == 151
    assert entry["repeats"][0]["pid"] == 52


def test_each_signature_has_its_entry_newest_first(open_store: Callable[..., CrashStore], clock: FakeClock) -> None:
    """Different signatures get their own entries; list() shows the most recently seen first."""
    store = open_store()
    a = store.record(make_report("a_crash", "main"))
    clock.now += 5
    b = store.record(make_report("b_crash", "main"))
    clock.now += 5
    store.record(make_report("a_crash", "main", pid=999))
    assert a["signature"] != b["signature"]
    listed = store.list()
    assert [e["signature"] for e in listed] == [a["signature"], b["signature"]]
    assert [e["count"] for e in listed] == [2, 1]


def test_get_by_id_signature_or_unique_prefix(open_store: Callable[..., CrashStore], clock: FakeClock) -> None:
    """get() takes an id, a signature (its latest report) or a unique id prefix; anything else is NotFound."""
    store = open_store(flood_window=10)
    first = store.record(make_report("a_crash", "main", pid=1))
    clock.now += 20
    second = store.record(make_report("a_crash", "main", pid=2))
    other = store.record(make_report("b_crash", "main", pid=3))
    assert store.get(first["id"])["process"]["pid"] == 1
    assert store.get(first["signature"])["id"] == second["id"]
    assert store.get(other["id"][:-2])["id"] == other["id"]  # unique prefix
    with pytest.raises(NotFound, match="3 crashes match"):
        store.get(first["id"][:8])  # the same day: all three
    with pytest.raises(NotFound):
        store.get("20991231T000000Z")


def test_get_never_leaves_the_directory(open_store: Callable[..., CrashStore], tmp_path: Path) -> None:
    """Paths, the index, odd names and a planted symlink are NotFound, never read."""
    store = open_store()
    store.record(make_report("a_crash"))
    (tmp_path / "crashes" / "planted.json").symlink_to("/etc/passwd")
    for bad in ("../../etc/passwd", "/etc/passwd", "index", "index.json", "", ".", "..", "a" * 129, "planted"):
        with pytest.raises(NotFound):
            store.get(bad)


def test_storage_cap_deletes_the_oldest_reports(
    open_store: Callable[..., CrashStore], clock: FakeClock, tmp_path: Path
) -> None:
    """Over max_bytes the oldest report files go first (their entries say report null); the newest always stays."""
    directory = tmp_path / "crashes"
    cap = 16_000
    store = open_store(max_bytes=cap)
    ids = []
    for n in range(8):
        clock.now += 10
        entry = store.record(make_report(f"crash_{n}", "main", pid=n + 1, text="x" * 2500))
        ids.append(entry["id"])
        assert f"{entry['id']}.json" in report_files(directory)
        assert disk_bytes(directory) <= cap
    kept = [name[:-5] for name in report_files(directory)]
    assert 1 < len(kept) < 8
    assert kept == ids[-len(kept) :]  # the newest ones, in order
    by_id = {e["id"]: e for e in store.list()}
    assert [by_id[i]["report"] for i in ids[: -len(kept)]] == [None] * (8 - len(kept))
    with pytest.raises(NotFound, match="deleted"):
        store.get(by_id[ids[0]]["signature"])

    clock.now += 10
    huge = store.record(make_report("huge", text="y" * 40_000))  # bigger than the cap on its own
    assert report_files(directory) == [f"{huge['id']}.json"]
    assert temp_files(directory) == []


def test_restart_lists_the_same_crashes(
    open_store: Callable[..., CrashStore], clock: FakeClock, tmp_path: Path
) -> None:
    """A new CrashStore on the same directory (tracerd restarted) lists the same crashes, repeats included."""
    store = open_store()
    store.record(make_report("a_crash"))
    clock.now += 1
    store.record(make_report("a_crash", pid=7))
    store.record(make_report("b_crash"))
    before = store.list()
    store.close()
    assert open_store().list() == before


def test_corrupt_or_stale_index_is_rebuilt_from_reports(
    open_store: Callable[..., CrashStore], clock: FakeClock, tmp_path: Path
) -> None:
    """A corrupt index is rebuilt from the report files, a stale one completed; leftover temp files go."""
    directory = tmp_path / "crashes"
    store = open_store()
    a = store.record(make_report("a_crash", pid=1))
    clock.now += 1
    b = store.record(make_report("b_crash", pid=2))
    stale_index = (directory / "index.json").read_bytes()
    clock.now += 1
    c = store.record(make_report("c_crash", pid=3))
    store.close()

    (directory / "index.json").write_bytes(stale_index)  # as if tracerd died between report and index
    (directory / ".tmp-0123456789abcdef").write_bytes(b'{"half": ')
    rebuilt = open_store().list()
    assert [(e["id"], e["count"], e["pid"]) for e in rebuilt] == [(c["id"], 1, 3), (b["id"], 1, 2), (a["id"], 1, 1)]
    assert temp_files(directory) == []

    (directory / "index.json").write_bytes(b'{"format": 1, "crashes": [{"signature": ')
    again = open_store().list()
    assert [(e["id"], e["signature"], e["name"]) for e in again] == [(e["id"], e["signature"], e["name"]) for e in
                                                                      rebuilt]  # fmt: skip
    assert json.loads((directory / "index.json").read_text())["format"] == 1


def test_unsafe_directories_are_refused(open_store: Callable[..., CrashStore], tmp_path: Path) -> None:
    """A symlinked (or dangling-symlink, or group-writable) crash directory is a ConfigError; a missing one is made."""
    real = tmp_path / "real"
    real.mkdir(mode=0o750)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match="symlink"):
        open_store(link)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError):
        open_store(dangling)
    assert not (tmp_path / "nowhere").exists()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o770)
    with pytest.raises(ConfigError, match="writable"):
        open_store(shared)
    made = tmp_path / "state" / "crashes"
    open_store(made)
    assert stat.S_IMODE(made.stat().st_mode) == 0o750


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs to fill up; skipped where mounting is not allowed."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(path: Path) -> int:
    """Write zeros to ``path`` until the file system refuses; returns the errno."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as err:
        return err.errno or 0
    finally:
        os.close(fd)


def test_disk_full_raises_and_leaves_nothing_half_written(small_fs: Path, clock: FakeClock) -> None:
    """ENOSPC: record() raises OSError, no temp file stays, earlier crashes are intact; space back, it works."""
    directory = small_fs / "crashes"
    with CrashStore(directory, clock=clock) as store:
        first = store.record(make_report("a_crash"))
        assert fill(small_fs / "filler") == errno.ENOSPC

        with pytest.raises(OSError) as failed:
            store.record(make_report("b_crash", text="z" * 8000))
        assert failed.value.errno == errno.ENOSPC
        assert temp_files(directory) == []
        assert report_files(directory) == [f"{first['id']}.json"]
        assert [e["id"] for e in store.list()] == [first["id"]]
        assert json.loads((directory / "index.json").read_text())["crashes"][0]["count"] == 1

        clock.now += 1  # a repeat needs only the index: counted in memory, the failed write reported
        repeat = store.record(make_report("a_crash", pid=5))
        assert repeat["count"] == 2
        assert "index_error" in repeat
        assert temp_files(directory) == []

        (small_fs / "filler").unlink()
        stored = store.record(make_report("b_crash", text="z" * 8000))
        assert stored["full"] is True
        assert json.loads(Path(stored["report"]).read_text())["id"] == stored["id"]
        assert {e["signature"]: e["count"] for e in store.list()}[first["signature"]] == 2
