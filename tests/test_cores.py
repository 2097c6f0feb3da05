"""Cores by policy (docs/crashes.md "Cores and retrace"): taken while the crashed
process is held, kept zstd-compressed beside the report, budgeted apart from
the reports, opened by gdb; bad input gets one line and damages nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tests.conftest import have
from tests.support import C_DIR
from tracerd.crash import corefile
from tracerd.crash.store import CrashStore

pytestmark = pytest.mark.skipif(not have("gdb"), reason="gdb not installed")


def core_daemon(daemon_factory: Any, extra: str = "") -> Any:
    return daemon_factory(f'crash_flood_window = 0\n{extra}\n[[rule]]\nprocess = "*"\ntracer = "watch"\n')


def crash_once(daemon: Any, spawn: Any, binary: Path, name: str = "crasher", mode: str = "segv") -> dict[str, Any]:
    target = spawn(binary, daemon.hook_command(), name, mode)
    assert target.readline() == "hook=0\n"
    target.release()
    assert target.wait() == -(signal.SIGABRT if mode == "abort" else signal.SIGSEGV)
    session = daemon.wait_session(target.pid, "crashed")
    assert session["crash"], (session, daemon.stderr()[-3000:])
    result = daemon.ctl("--json", "crash", session["crash"])
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)["crash"]
    return report


def gdb_bt(executable: Path | str, core: Path) -> str:
    result = subprocess.run(["gdb", "-nx", "-batch", "-ex", "bt", str(executable), str(core)],
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    return result.stdout + result.stderr


def unpacked(store_dir: Path, report: dict[str, Any], out: Path) -> Path:
    fd = os.open(store_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with open(out, "wb") as raw:
            corefile.decompress(fd, report["core"]["file"], raw)
    finally:
        os.close(fd)
    return out


def test_core_first_keeps_one_core_per_signature_and_gdb_opens_it(
    daemon_factory: Any, cbin: Any, spawn: Any, tmp_path: Path
) -> None:
    """core = "first": two crashes of one signature give two reports and one
    core; the second report says why it has none; the core opens with
    ``gdb -batch`` and shows the report's top frames; ``--json crashes``
    names the core."""
    daemon = core_daemon(daemon_factory, 'core = "first"')
    binary = cbin("crash", "-pthread")
    first = crash_once(daemon, spawn, binary)
    second = crash_once(daemon, spawn, binary)
    assert first["signature"] == second["signature"]
    assert first["core"]["state"] == "saved", first["core"]
    assert first["core"]["raw_bytes"] > first["core"]["bytes"] > 0
    assert second["core"]["state"] == "skipped"
    assert "this signature has a core" in second["core"]["reason"]
    store = daemon.state_dir / "crashes"
    assert sorted(p.name for p in store.glob("*.core.zst")) == [f"{first['id']}.core.zst"]
    assert oct((store / f"{first['id']}.core.zst").stat().st_mode & 0o777) == "0o600"
    crashed = next(t for t in first["threads"] if t["crashed"])
    top = [f["function"] for f in crashed["frames"][:3]]
    assert top == ["crash_here", "level_two", "level_one"]
    text = gdb_bt(binary, unpacked(store, first, tmp_path / "core"))
    for name in top:
        assert name in text, text
    listed = json.loads(daemon.ctl("--json", "crashes").stdout)["crashes"]
    assert [entry["core"] for entry in listed] == [f"{first['id']}.core.zst"]


def test_core_none_and_process_limit_keep_no_core_and_say_why(daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """core = "none" keeps no core; a rule's core = "all" overrides it, and a
    core over max_core_process_bytes is not kept, with the reason in the report."""
    daemon = daemon_factory(
        'crash_flood_window = 0\ncore = "none"\nmax_core_process_bytes = 4096\n'
        '[[rule]]\nprocess = "big*"\ntracer = "watch"\ncore = "all"\n'
        '[[rule]]\nprocess = "*"\ntracer = "watch"\n'
    )  # fmt: skip
    binary = cbin("crash", "-pthread")
    plain = crash_once(daemon, spawn, binary, "plain")
    assert plain["core"] == {**plain["core"], "state": "skipped", "reason": 'core = "none"'}
    big = crash_once(daemon, spawn, binary, "bigone")
    assert big["core"]["state"] == "skipped"
    assert "over max_core_process_bytes (4096)" in big["core"]["reason"]
    assert not list((daemon.state_dir / "crashes").glob("*.core.zst"))
    assert not list((daemon.state_dir / "capture").glob("*.core"))  # the raw cores are gone too


def test_core_budget_evicts_old_cores_and_keeps_every_report(
    daemon_factory: Any, cbin: Any, spawn: Any
) -> None:
    """Cores filling max_core_bytes: the oldest core goes first, every report
    stays, and the report whose core went says so."""
    daemon = core_daemon(daemon_factory, 'core = "all"')
    binary = cbin("crash", "-pthread")
    first = crash_once(daemon, spawn, binary)
    size = first["core"]["bytes"]
    daemon.stop()
    config = daemon.config.read_text().replace('core = "all"', f'core = "all"\nmax_core_bytes = {size * 2 + size // 2}')
    daemon.config.write_text(config)
    daemon.start()
    later = [crash_once(daemon, spawn, binary) for _ in range(2)]
    store = daemon.state_dir / "crashes"
    cores = sorted(p.name for p in store.glob("*.core.zst"))
    assert cores == sorted(f"{r['id']}.core.zst" for r in later)
    for report in (first, *later):
        assert (store / f"{report['id']}.json").exists()
    evicted = json.loads(daemon.ctl("--json", "crash", first["id"]).stdout)["crash"]["core"]
    assert evicted["state"] == "evicted"
    assert "max_core_bytes" in evicted["reason"]


def test_core_timeout_releases_the_process_without_a_core(tmp_path: Path) -> None:
    """At the core_timeout bound the compression stops: no core file, no temp
    file, the reason in the report's core field."""
    raw = tmp_path / "raw.core"
    raw.write_bytes(os.urandom(4 << 20))
    with CrashStore(tmp_path / "crashes") as store:
        request = corefile.CoreRequest(str(raw), "all", 1 << 30, deadline=0.0, timeout=0.5)
        kept = corefile.keep(store.fd, "x", request, temp_prefix=".tmp-")
        assert kept["state"] == "skipped"
        assert "core_timeout (0.5 s)" in kept["reason"]
        assert os.listdir(store.fd) == ["index.json"]  # no core, no temp file


def test_damaged_core_is_one_line_and_the_store_is_untouched(tmp_path: Path) -> None:
    """A truncated or garbage core file: decompress raises CoreError with one
    line naming the file; the file stays as it was."""
    directory = tmp_path / "crashes"
    directory.mkdir(mode=0o750)
    good = zstandard.ZstdCompressor(write_checksum=True).compress(b"\x7fELF" + os.urandom(1 << 16))
    (directory / "a.core.zst").write_bytes(good[: len(good) // 2])
    (directory / "b.core.zst").write_bytes(b"not zstd at all")
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in ("a.core.zst", "b.core.zst"):
            with open(tmp_path / "out", "wb") as out, pytest.raises(corefile.CoreError) as err:
                corefile.decompress(fd, name, out)
            assert str(err.value).startswith(f"core {name}: ")
            assert "\n" not in str(err.value)
    finally:
        os.close(fd)
    assert (directory / "b.core.zst").read_bytes() == b"not zstd at all"


def test_gdb_tracer_keeps_a_gcore_that_gdb_opens(daemon_factory: Any, cbin: Any, spawn: Any, tmp_path: Path) -> None:
    """The gdb tracer takes gdb's gcore while it holds the crashed process; the
    store keeps it compressed, the raw gcore is removed, and gdb -batch on it
    shows the report's top frames."""
    daemon = daemon_factory('core = "all"\n[[rule]]\nprocess = "*"\ntracer = "gdb"\n')
    binary = cbin("crash", "-pthread")
    report = crash_once(daemon, spawn, binary)
    assert report["tracer"] == "gdb"
    assert report["core"]["state"] == "saved", report["core"]
    assert not list((daemon.state_dir / "capture").glob("*.gcore"))
    text = gdb_bt(binary, unpacked(daemon.state_dir / "crashes", report, tmp_path / "core"))
    for name in ("crash_here", "level_two", "level_one"):
        assert name in text, text


def postmortem(state_dir: Path, crash_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tracerd.ctl.postmortem", crash_id, "--ui", "batch",
                           "--state-dir", str(state_dir)], capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip


def test_postmortem_bad_input_is_one_line_and_damages_nothing(
    daemon_factory: Any, cbin: Any, spawn: Any, tmp_path: Path
) -> None:
    """``tracerctl gdb CRASH-ID`` (run_postmortem) on: no such crash, a report
    without a core, a damaged core, a missing executable, a corrupt report:
    one line each, exit 1 (2 for a bad id), and every stored file stays as it was."""
    daemon = core_daemon(daemon_factory, 'core = "first"')
    copy = tmp_path / "crash-copy"
    shutil.copy(cbin("crash", "-pthread"), copy)
    with_core = crash_once(daemon, spawn, copy)
    without = crash_once(daemon, spawn, copy)
    store = daemon.state_dir / "crashes"
    (store / "20260101T000000Z-deadbeef-1.json").write_text("{not json")
    good = postmortem(daemon.state_dir, with_core["id"])
    assert "crash_here" in good.stdout, good.stdout + good.stderr
    core = store / f"{with_core['id']}.core.zst"
    intact = core.read_bytes()
    core.write_bytes(intact[: len(intact) // 3])
    damaged = core.read_bytes()
    cases = {
        "nosuchcrash": "no crash nosuchcrash",
        without["id"]: "this signature has a core",
        with_core["id"]: f"core {with_core['id']}.core.zst: truncated",
        "20260101T000000Z-deadbeef-1": "report unreadable",
        "../etc/passwd": "not a crash id",
    }
    before = {p.name: p.read_bytes() for p in store.iterdir()}
    for crash_id, reason in cases.items():
        result = postmortem(daemon.state_dir, crash_id)
        assert result.returncode == (2 if "/" in crash_id else 1), result
        assert result.stderr.count("\n") == 1, result.stderr
        assert reason in result.stderr, result.stderr
    core.write_bytes(intact)
    copy.unlink()
    missing = postmortem(daemon.state_dir, with_core["id"])
    assert missing.returncode == 1
    assert f"executable {copy} is missing" in missing.stderr
    assert damaged != intact
    assert {p.name: p.read_bytes() for p in store.iterdir() if p.name != core.name} == \
        {name: data for name, data in before.items() if name != core.name}  # fmt: skip


def test_gcore_over_core_timeout_releases_the_process_without_a_core(
    daemon_factory: Any, spawn: Any, tmp_path: Path
) -> None:
    """The gdb tracer's gcore of a 64 MB process against core_timeout = 0.001 s:
    no core, the reason in the report, and the process released: it dies of its own SIGSEGV."""
    daemon = daemon_factory('core = "all"\ncore_timeout = 0.001\n[[rule]]\nprocess = "*"\ntracer = "gdb"\n')
    subprocess.run(["gcc", "-g", "-shared", "-fPIC", "-o", str(tmp_path / "libretracelib.so"),
                    str(C_DIR / "retracelib.c")], check=True)  # fmt: skip
    exe = tmp_path / "retrace_target"
    subprocess.run(["gcc", "-g", "-o", str(exe), str(C_DIR / "retrace_target.c"), f"-L{tmp_path}",
                    "-lretracelib", f"-Wl,-rpath,{tmp_path}"], check=True)  # fmt: skip
    target = spawn(exe, daemon.hook_command(), "big", "mem64")
    assert target.readline() == "hook=0\n"
    target.release()
    assert target.wait(timeout=120) == -signal.SIGSEGV
    session = daemon.wait_session(target.pid, "crashed", timeout=60)
    report = json.loads(daemon.ctl("--json", "crash", session["crash"]).stdout)["crash"]
    assert report["core"]["state"] == "skipped"
    assert "core_timeout (0.001 s)" in report["core"]["reason"]
    assert not list((daemon.state_dir / "crashes").glob("*.core.zst"))
    assert not list((daemon.state_dir / "capture").glob("*.gcore"))
