"""Crash reports after a restart and while tracerd is down, and `tracerctl crash ID`
for humans: real crashes (tests/c/crash.c under the watch tracer) into a real
tracerd's store, then tracerctl against that daemon, against no daemon, and
against a new tracerd on the same state_dir."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import have, script
from tests.test_crash import make_report
from tests.test_crash_contract import crash_bin
from tests.test_triage import syslog_stamp, write_log
from tracerd.crash.store import CrashStore
from tracerd.ctl.crashview import render_crash, render_crashes, signal_line
from tracerd.errors import ConfigError

pytestmark = pytest.mark.skipif(not have("gdb"), reason="the watch tracer takes its backtrace with gdb")

WATCH_CRASHD = '[[rule]]\nprocess = "crash*"\ntracer = "watch"\n'


def crash(daemon: Any, cbin: Any, spawn: Any, mode: str = "segv", exe: Path | None = None) -> tuple[int, str]:
    """One crashd crash through the hook; its pid and the crash id its session names."""
    target = spawn(exe or crash_bin(cbin), daemon.hook_command(), "crashd", mode)
    assert target.readline() == "hook=0\n"
    target.release()
    assert target.wait() == -signal.SIGSEGV
    session = daemon.wait_session(target.pid, "crashed")
    assert session["crash"], daemon.stderr()[-2000:]
    return target.pid, str(session["crash"])


def tracerctl(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*script("tracerctl"), *argv], capture_output=True, text=True, timeout=60, check=False,
                          env=env)  # fmt: skip


def killed_line(pid: int, name: str = "crashd") -> str:
    stamp = syslog_stamp(dt.datetime.now())
    return f"{stamp} mx postfix/master[10]: warning: process /usr/lib/postfix/sbin/{name} pid {pid} killed by signal 11"


# -- tracerd down ----------------------------------------------------------------------


def test_crashes_and_crash_read_from_the_store_while_tracerd_is_down(
    daemon_factory: Any, cbin: Any, spawn: Any
) -> None:
    """With tracerd stopped, `crashes` and `crash ID` (text and --json) answer from
    its crash store, found through tracerd's configuration or --state-dir: the
    same inventory and report the daemon gave, exit 0, a one-line notice on
    stderr that the daemon is down, and "source": "store" in the JSON; an
    unknown id is exit 1."""
    daemon = daemon_factory(WATCH_CRASHD)
    pid, crash_id = crash(daemon, cbin, spawn)
    online_list = json.loads(daemon.ctl("--json", "crashes").stdout)["crashes"]
    online_report = json.loads(daemon.ctl("--json", "crash", crash_id).stdout)["crash"]
    daemon.stop()

    # no --state-dir: tracerd's configured state_dir, as triage reads it
    configured = dict(os.environ, TRACERD_CONFIG=str(daemon.config))
    listed = tracerctl("--socket", str(daemon.socket), "crashes", env=configured)
    assert listed.returncode == 0, listed.stderr
    store = daemon.state_dir / "crashes"
    assert listed.stderr == (f"tracerctl: tracerd is not running (no socket {daemon.socket});"
                             f" read from the crash store {store}\n")  # fmt: skip
    assert crash_id in listed.stdout
    assert f"crashd[{pid}]" in listed.stdout
    assert "crash_here < level_two < level_one" in listed.stdout

    state = ["--state-dir", str(daemon.state_dir)]
    as_json = tracerctl("--socket", str(daemon.socket), "--json", "crashes", *state)
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert (document["source"], document["daemon"], document["store"]) == ("store", "unreachable", str(store))
    assert document["crashes"] == online_list

    shown = tracerctl("--socket", str(daemon.socket), "crash", crash_id, *state)
    assert shown.returncode == 0, shown.stderr
    assert shown.stderr.count("\n") == 1
    assert "read from the crash store" in shown.stderr
    assert f"crash {crash_id}  signature {online_report['signature']}" in shown.stdout
    assert "crash_here" in shown.stdout

    report = tracerctl("--socket", str(daemon.socket), "--json", "crash", crash_id[:20], *state)
    assert report.returncode == 0, report.stderr
    document = json.loads(report.stdout)
    assert document["crash"] == online_report
    assert document["source"] == "store"

    missing = tracerctl("--socket", str(daemon.socket), "crash", "20200101T000000Z-nope", *state)
    assert missing.returncode == 1
    assert missing.stderr.splitlines()[-1] == "tracerctl: no crash 20200101T000000Z-nope"


def _as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    """tracerctl run by uid/gid nobody (nogroup): tracerd's modules are loaded
    first, then every file it reads is read as nobody."""
    code = (
        "import os, sys\n"
        "import tracerd.ctl.main, tracerd.crash.inventory, tracerd.ctl.crashview, tracerd.ctl.postfix\n"
        "import tracerd.ctl.triage, tracerd.ctl.bugreport\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "sys.exit(tracerd.ctl.main.main(sys.argv[1:]))\n"
    )
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to uid nobody")
def test_a_reader_without_permission_gets_one_line_and_exit_1(
    daemon_factory: Any, cbin: Any, spawn: Any, public_dir: Path
) -> None:
    """A uid that may not read root's crash store (0750 root) gets one clear
    line and exit 1, not "no crashes"; once the admin lets its group read the
    store, the same uid reads it (the store need not be its own)."""
    daemon = daemon_factory(WATCH_CRASHD, data_dir=public_dir, socket_path=public_dir / "tracerd.sock")
    _, crash_id = crash(daemon, cbin, spawn)
    daemon.stop()
    store = daemon.state_dir / "crashes"
    assert store.stat().st_mode & 0o777 == 0o750
    sock, state = ["--socket", str(daemon.socket)], ["--state-dir", str(daemon.state_dir)]

    for command in (["crashes"], ["crash", crash_id]):
        denied = _as_nobody(*sock, *command, *state)
        assert denied.returncode == 1, denied
        assert denied.stdout == ""
        assert denied.stderr == (f"tracerctl: tracerd is not running (no socket {daemon.socket}); crash store"
                                 f" {store}: permission denied (reading it needs root, or read access to"
                                 " tracerd's state_dir)\n")  # fmt: skip

    # the directories open to group nogroup, the files still root's alone: still refused
    for directory in (daemon.state_dir, store):
        shutil.chown(directory, group="nogroup")
    denied = _as_nobody(*sock, "crashes", *state)
    assert (denied.returncode, "permission denied" in denied.stderr) == (1, True)

    for path in store.iterdir():
        shutil.chown(path, group="nogroup")
    allowed = _as_nobody(*sock, "--json", "crash", crash_id, *state)
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["crash"]["id"] == crash_id


def test_no_store_at_all_is_still_daemon_unreachable(tmp_path: Path) -> None:
    """No daemon and no store: exit 3, one line naming both."""
    result = tracerctl("--socket", str(tmp_path / "none.sock"), "crashes", "--state-dir", str(tmp_path / "nothing"))
    assert result.returncode == 3
    assert result.stderr == (f"tracerctl: tracerd is not running (no socket {tmp_path / 'none.sock'});"
                             f" no crash store in {tmp_path / 'nothing' / 'crashes'}\n")  # fmt: skip


# -- after a restart -------------------------------------------------------------------


def test_triage_after_a_restart_ties_older_reports_of_a_signature(
    daemon_factory: Any, cbin: Any, spawn: Any, tmp_path: Path
) -> None:
    """Two crashes of one signature, each with a full report (flood window 0):
    after tracerd is replaced by a new one on the same state_dir, triage ties
    master's "killed by signal 11" line of each pid to that pid's own report,
    the older one included (the daemon's inventory lists every report of a
    signature, not only the latest)."""
    data = tmp_path / "data"
    first = daemon_factory("crash_flood_window = 0\n" + WATCH_CRASHD, data_dir=data)
    older_pid, older_id = crash(first, cbin, spawn)
    newer_pid, newer_id = crash(first, cbin, spawn)
    assert older_id != newer_id
    first.stop()
    second = daemon_factory("crash_flood_window = 0\n" + WATCH_CRASHD, data_dir=data)
    assert second.status()["sessions"] == []

    log = write_log(tmp_path / "mail.log", [killed_line(older_pid), killed_line(newer_pid)])
    result = second.ctl("--json", "triage", str(log))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["crash_index"] == {"source": "daemon", "error": None}
    ties = [(line["crash"] or {}).get("id") for line in document["lines"]]
    assert ties == [older_id, newer_id], [line["note"] for line in document["lines"]]
    assert all(line["crash"]["repeat"] is False for line in document["lines"])
    text = second.ctl("triage", str(log)).stdout
    assert f"-> crash {older_id}: crashd[{older_pid}] SIGSEGV in crash_here < level_two < level_one" in text
    (entry,) = json.loads(second.ctl("--json", "crashes").stdout)["crashes"]
    assert entry["reports"] == sorted([older_id, newer_id])

    # and with the new tracerd down too, from the store
    second.stop()
    offline = json.loads(second.ctl("--json", "triage", "--state-dir", str(second.state_dir), str(log)).stdout)
    assert offline["crash_index"]["source"] == "index"
    assert [line["crash"]["id"] for line in offline["lines"]] == [older_id, newer_id]


# -- crash ID for humans ---------------------------------------------------------------


def test_crash_report_for_humans_has_every_section(daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """`tracerctl crash ID` shows the process, the signal line with si_code and
    fault address, the crashing thread's gdb `bt full` (the other thread in one
    line, its bt full only with --full), the registers four to a line, every
    library with its build-id on one line, and the log path: the real report's
    content, not a summary of it."""
    daemon = daemon_factory(WATCH_CRASHD)
    pid, crash_id = crash(daemon, cbin, spawn, mode="thread")
    report = json.loads(daemon.ctl("--json", "crash", crash_id).stdout)["crash"]
    result = daemon.ctl("crash", crash_id)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    lines = out.splitlines()

    assert f"process  crashd[{pid}]  uid {report['process']['uid']}  exe {report['process']['exe']}" in lines
    assert f"signal   SIGSEGV (11)  si_code {report['signal']['si_code']}" in out
    assert "fault address 0x0" in out
    assert f"log      {report['log']}" in lines

    crashed = next(t for t in report["threads"] if t["crashed"])
    other = next(t for t in report["threads"] if not t["crashed"])
    name = f' "{crashed["name"]}"' if crashed["name"] else ""  # gdb reading a core names no threads
    assert f"Thread {crashed['id']} (LWP {crashed['tid']}{name}) [crashed]" in lines
    body = crashed["text"].splitlines()[1:]  # gdb's own "Thread N (Thread 0x... (LWP n))" head is ours instead
    assert any(line.startswith("#0  thread_crash") for line in body)
    start = lines.index(body[0])
    assert lines[start : start + len(body)] == body
    other_body = [line for line in other["text"].splitlines()[1:] if line.startswith("#")]
    assert other_body
    assert not any(line in lines for line in other_body)
    assert any(line.startswith(f"  Thread {other['id']} (LWP {other['tid']}") for line in lines)
    full = daemon.ctl("crash", "--full", crash_id).stdout.splitlines()
    assert all(line in full for line in other_body)

    register_lines = lines[lines.index("registers:") + 1 :]
    first_row = register_lines[0].split()
    names = list(report["registers"])
    assert first_row == [names[0], report["registers"][names[0]], names[1], report["registers"][names[1]],
                         names[2], report["registers"][names[2]], names[3], report["registers"][names[3]]]  # fmt: skip
    assert any(f"rip {report['registers']['rip']}" in line for line in register_lines)

    with_ids = [lib for lib in report["libraries"] if lib["build_id"]]
    assert len(with_ids) >= 2  # the program and libc at least
    for lib in with_ids:
        (row,) = [line for line in lines if line.split()[:1] == [lib["path"]]]
        assert row.split()[:2] == [lib["path"], lib["build_id"]]
    assert "x/16i $pc:" in lines
    assert report["disassembly"].splitlines()[0] in lines


def test_missing_symbols_rendered_with_whatever_they_carry(
    daemon_factory: Any, cbin: Any, spawn: Any, tmp_path: Path
) -> None:
    """A stripped binary's report lists the object without symbols and its
    build-id; keys another part of tracerd adds to those items (a package, its
    version, advice) are rendered generically, one item a line."""
    stripped = tmp_path / "crash-stripped"
    shutil.copy(crash_bin(cbin), stripped)
    subprocess.run(["strip", "-s", str(stripped)], check=True)
    daemon = daemon_factory(WATCH_CRASHD)
    _, crash_id = crash(daemon, cbin, spawn, exe=stripped)
    report = json.loads(daemon.ctl("--json", "crash", crash_id).stdout)["crash"]
    missing = next(m for m in report["missing_symbols"] if m["object"] == str(stripped))
    out = daemon.ctl("crash", crash_id).stdout
    assert "frames without symbols" in out
    assert f"  {stripped}: build-id {missing['build_id']}" in out.splitlines()

    assert f"    {missing['note']}" in out.splitlines()
    missing.update(package="crashd", version="1.0-1", install="crashd-dbgsym=1.0-1")
    text = render_crash(report)
    (facts,) = [line for line in text.splitlines() if "install: crashd-dbgsym=1.0-1" in line]
    assert "package: crashd" in facts
    assert "version: 1.0-1" in facts
    assert report["debug_symbols"] is None  # no package owns it: its note, and no archive or debuginfod advice
    assert not any("debian-debug" in line for line in text.splitlines())


def test_signal_line_shows_the_sender_when_the_report_has_one() -> None:
    """si_code's name and a sender's pid and uid are shown when the report has
    them (then no fault address, which means nothing for a sent signal); a
    report without those keys shows the fault address; control characters
    in any field are replaced."""
    fault = {"number": 11, "name": "SIGSEGV", "si_code": 1, "fault_address": "0x0"}
    assert signal_line(fault) == "SIGSEGV (11)  si_code 1  fault address 0x0"
    assert signal_line({**fault, "si_code_name": "SEGV_MAPERR"}) == (
        "SIGSEGV (11)  si_code 1 SEGV_MAPERR  fault address 0x0"
    )
    sent = {"number": 11, "name": "SIGSEGV", "si_code": 0, "si_code_name": "SI_USER", "fault_address": "0x4d2",
            "sender_pid": 1234, "sender_uid": 0, "user_sent": True}  # fmt: skip
    assert signal_line(sent) == "SIGSEGV (11)  si_code 0 SI_USER  sent by pid 1234 uid 0"
    assert "\x1b" not in signal_line({"name": "SIG\x1b[2J", "number": 11})


def test_a_report_without_backtrace_says_why() -> None:
    """A report whose capture was interrupted (tracerd died while it ran: no
    threads, no exe, no signal number) renders with a capture line saying
    so, "?" for what is unknown, and is marked in the crashes table."""
    report = {
        "id": "20261124T161814Z-1a2b3c4d-1234", "signature": "1a2b3c4d5e6f7a8b", "time": "2026-11-24T16:18:14Z",
        "process": {"name": "smtpd", "pid": 1234, "exe": None, "cmdline": [], "uid": None, "capture": "interrupted",
                    "capture_errors": ["capture interrupted: tracerd stopped while it ran"]},
        "signal": {"number": None, "name": "SIGSEGV", "si_code": None, "fault_address": None},
        "threads": [], "registers": {}, "disassembly": "", "libraries": [], "log": None, "tracer": "watch",
    }  # fmt: skip
    lines = render_crash(report).splitlines()
    assert "process  smtpd[1234]  uid ?  exe ?" in lines
    assert "signal   SIGSEGV" in lines
    assert "capture  interrupted: capture interrupted: tracerd stopped while it ran" in lines
    assert lines[-1] == "no backtrace in this report (see the capture line above, and the log)"
    entry = {"id": report["id"], "signature": report["signature"], "count": 1, "first_seen": "", "last_seen": "",
             "name": "smtpd", "pid": 1234, "signal": "SIGSEGV", "top": [], "capture": "interrupted"}  # fmt: skip
    assert "SIGSEGV (interrupted)" in render_crashes([entry])


def test_the_read_only_store_never_writes(tmp_path: Path) -> None:
    """Opened read-only (tracerctl while tracerd is down), the store lists what
    is on disk, reconciled in memory (a report the index lost is listed) but
    writes nothing: no index rebuilt, no temp file removed, no record; a
    symlink or a group-writable directory is refused."""
    directory = tmp_path / "crashes"
    with CrashStore(directory, flood_window=0) as store:
        first = store.record(make_report("crash_here", "main", pid=11))
        second = store.record(make_report("crash_here", "main", pid=12))
    (directory / "index.json").unlink()
    (directory / ".tmp-leftover").write_text("half a report")
    before = sorted(p.name for p in directory.iterdir())

    with CrashStore(directory, read_only=True) as reader:
        (entry,) = reader.list()
        assert entry["reports"] == sorted([first["id"], second["id"]])
        assert reader.get(first["id"])["process"]["pid"] == 11
        with pytest.raises(PermissionError):
            reader.record(make_report("other", pid=13))
    assert sorted(p.name for p in directory.iterdir()) == before

    (tmp_path / "link").symlink_to(directory)
    with pytest.raises(ConfigError, match="symlink"):
        CrashStore(tmp_path / "link", read_only=True)
    directory.chmod(0o770)
    with pytest.raises(ConfigError, match="writable by group or others"):
        CrashStore(directory, read_only=True)


def test_a_strace_report_shows_its_notice_and_trace() -> None:
    """A strace crash report (no frames) renders its plain no-backtrace notice
    and the last lines the tracer saw."""
    report = {
        "id": "20261124T161814Z-1a2b3c4d-1234", "signature": "1a2b3c4d5e6f7a8b", "time": "2026-11-24T16:18:14Z",
        "process": {"name": "smtpd", "pid": 1234, "exe": "/usr/lib/postfix/sbin/smtpd", "cmdline": [], "uid": 0},
        "signal": {"number": 11, "name": "SIGSEGV", "si_code": 1, "fault_address": "0x0"},
        "threads": [], "registers": {}, "disassembly": "", "libraries": [], "log": None, "tracer": "strace",
        "notice": "strace gives no backtrace", "trace": ["read(0, ...) = 1", "--- SIGSEGV {si_signo=SIGSEGV} ---"],
    }  # fmt: skip
    lines = render_crash(report).splitlines()
    assert "notice   strace gives no backtrace" in lines
    assert "last 2 lines of the trace:" in lines
    assert lines[-1] == "  --- SIGSEGV {si_signo=SIGSEGV} ---"
