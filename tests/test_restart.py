"""A tracerd restart loses no coverage (docs/design.md, "Reliability"): sessions.json,
re-adoption, socket activation.

Real processes throughout: tests/c/crash.c targets traced through the hook,
a real tracerd stopped with SIGTERM or killed with -9 and started again on the
same state_dir, and for socket activation a listening socket the test binds
and passes as fd 3 with LISTEN_FDS/LISTEN_PID, as systemd does.  Every wait
is bounded and generous: the restart's duration is a bench figure
(bench/restart.py), not a test threshold.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import have, proc_state, reap_zombies
from tests.postfix_instance import PostfixInstance
from tests.support import Daemon, listening_socket, send_signal, tracer_pid, wait_until
from tests.test_faults import LOAD_RULES as RULES
from tests.test_faults import TRACER_NAMES as HELPERS
from tests.test_faults import start_load
from tests.test_postfix_e2e import debug_generation, wait_idle

pytestmark = pytest.mark.skipif(not (have("gdb") and have("strace")), reason="needs gdb and strace")

REATTACHED = "re-attached after tracerd restart"
ENDED = "ended while tracerd was down"


def tracer_kind(pid: int) -> str:
    """Which kind of tracer holds pid, from /proc: strace, gdb or watch ('' = none)."""
    holder = tracer_pid(pid)
    if not holder:
        return ""
    argv = Path(f"/proc/{holder}/cmdline").read_bytes().split(b"\0")
    words = [os.path.basename(word.decode()) for word in argv if word]
    for kind in ("strace", "gdb"):
        if kind in words:
            return kind
    return "watch" if "tracerd.tracers.watch.watcher" in words else " ".join(words)


def wait_readopted(daemon: Daemon, before: dict[int, dict[str, Any]], timeout: float = 120.0) -> dict[int, Any]:
    """Every session of ``before`` attached again, re-adopted, by the same kind of tracer."""

    def done() -> dict[int, Any] | None:
        now = {s["pid"]: s for s in daemon.status()["sessions"] if s["state"] == "attached"}
        if all(pid in now and now[pid]["readopted"] for pid in before):
            return now
        return None

    now: dict[int, Any] = wait_until(done, "every session re-adopted", timeout, interval=0.2)
    for pid, old in before.items():
        session = now[pid]
        assert (session["tracer"], session["started"], session["log"]) == (old["tracer"], old["started"], old["log"])
        assert tracer_kind(pid) == old["tracer"], (pid, old["tracer"], tracer_kind(pid))
        log = Path(session["log"])
        wait_until(lambda log=log: REATTACHED in log.read_text(), f"{log} re-attach line", 15)
    return now


def listed(daemon: Daemon) -> set[int]:
    """The pids sessions.json lists (none while it cannot be read)."""
    try:
        return {entry["pid"] for entry in json.loads((daemon.state_dir / "sessions.json").read_text())["sessions"]}
    except (OSError, ValueError):
        return set()


def run_restart(daemon_factory: Any, cbin: Any, spawn: Any, *, kill9: bool) -> None:
    daemon = daemon_factory(RULES)
    targets = start_load(daemon, cbin, spawn, watched=100, straced=5, gdbed=2)
    before = {s["pid"]: s for s in daemon.status()["sessions"] if s["state"] == "attached"}
    assert {t.pid for t in targets} == set(before)
    if kill9:
        # sessions.json is written at most COALESCE_SECONDS behind: kill once it lists all
        wait_until(lambda: listed(daemon) == set(before), "sessions.json listing every session", 30)
        assert daemon.proc is not None
        daemon.proc.kill()
        daemon.proc.wait()
    else:
        assert daemon.stop() == 0
    try:
        # nothing stays stopped, nobody holds them (the dead tracerd's tracers let go)
        wait_until(lambda: not [t.pid for t in targets if tracer_pid(t.pid) or proc_state(t.pid) != "S"],
                   "every target running untraced", 30, interval=0.1)  # fmt: skip
    finally:
        reap_zombies(HELPERS)
    gone = targets.pop()  # a gdb target ends while tracerd is down
    gone.reap()
    survivors = {pid: s for pid, s in before.items() if pid != gone.pid}
    daemon.start()
    wait_readopted(daemon, survivors)
    status = daemon.status()
    assert status["counters"]["readopted"] == len(survivors)
    ended = daemon.wait_session(gone.pid, "exited")
    assert (ended["error"], ended["started"]) == (ENDED, before[gone.pid]["started"])
    assert ENDED in Path(ended["log"]).read_text()
    for target in targets:  # still traced: ending one is seen as before
        assert proc_state(target.pid) == "S"


def test_sigterm_then_start_readopts_every_survivor_with_its_tracer(daemon_factory: Any, cbin: Any,
                                                                    spawn: Any) -> None:  # fmt: skip
    """100 watched, 5 strace and 2 gdb sessions; SIGTERM (exit 0, all released);
    one gdb target ends meanwhile.  The next tracerd traces every survivor again
    with the same kind of tracer (TracerPid's program in /proc), keeps its
    original ``started`` and log, which gets the re-attach line; ``readopted``
    counts them; the one that ended is listed ``ended while tracerd was down``."""
    run_restart(daemon_factory, cbin, spawn, kill9=False)


def test_kill9_then_start_leaves_nothing_stopped_and_readopts(daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """The same after kill -9 of tracerd: every target runs on, in no stop and
    untraced, while no tracerd runs; the next tracerd re-adopts them all."""
    run_restart(daemon_factory, cbin, spawn, kill9=True)


def test_hook_waits_in_the_backlog_for_a_socket_activated_tracerd(daemon_factory: Any, cbin: Any,
                                                                   spawn: Any) -> None:  # fmt: skip
    """As systemd's tracerd.socket would, the test holds the listening socket
    and starts tracerd with it as fd 3 (LISTEN_FDS=1, LISTEN_PID its pid):
    tracerd gives it the config's mode and, on SIGTERM, leaves it in place with
    SOCKET.restarting beside it.  A hook started then, while no tracerd runs,
    with the default --ack-timeout (1.5 s), is served by the tracerd started
    2 s later: it waited in the backlog and exits 0, the target attached; the
    new tracerd removes the marker (once it has re-adopted what there was).  A marker older than the hook's grace
    (a tracerd that never came back) is ignored: that hook fails open after
    its --ack-timeout as with a hung tracerd."""
    daemon = daemon_factory("", start=False)
    listener = listening_socket(daemon.socket)
    marker = daemon.socket.with_name(daemon.socket.name + ".restarting")
    crash = cbin("crash", "-pthread")
    try:
        os.chmod(daemon.socket, 0o666)
        daemon.start(listen_fd=listener.fileno())
        assert oct(os.stat(daemon.socket).st_mode & 0o777) == "0o600"
        assert '"activated": true' in daemon.stderr()
        assert daemon.stop() == 0
        assert daemon.socket.exists()
        assert marker.exists()
        early = spawn(crash, daemon.hook_command(), "early", "wait")
        time.sleep(2.0)  # past the hook's 1.5 s ack wait, in the backlog: nothing accepts yet
        assert early.proc.poll() is None
        daemon.start(listen_fd=listener.fileno())
        assert early.readline() == "hook=0\n"
        session = daemon.session(early.pid)
        assert session["state"] == "attached"
        # LISTEN_FDS and LISTEN_PID were removed: the tracer did not inherit them
        assert b"LISTEN_" not in Path(f"/proc/{session['tracer_pid']}/environ").read_bytes()
        wait_until(lambda: not marker.exists(), "the marker removed once re-adoption is done", 15)
        assert daemon.stop() == 0
        stale = time.time() - 60
        os.utime(marker, (stale, stale))
        late = spawn(crash, daemon.hook_command(), "late", "wait")
        assert late.readline(timeout=30) == "hook=1\n"
        assert late.proc.stderr is not None
        assert "did not acknowledge within 1.5 s" in late.proc.stderr.read(65536).decode()
    finally:
        daemon.stop()
        listener.close()


def test_listen_fds_for_another_pid_is_ignored(daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """LISTEN_FDS with a LISTEN_PID that is not tracerd's (inherited from some
    parent) means nothing (sd_listen_fds): tracerd binds its socket itself,
    serves hooks on it, and its tracers do not inherit the variables."""
    env = {**os.environ, "LISTEN_FDS": "1", "LISTEN_PID": "1"}
    daemon = daemon_factory(env=env)
    assert '"activated": false' in daemon.stderr()
    target = spawn(cbin("crash", "-pthread"), daemon.hook_command(), "byhand", "wait")
    assert target.readline() == "hook=0\n"
    session = daemon.session(target.pid)
    assert session["state"] == "attached"
    assert b"LISTEN_" not in Path(f"/proc/{session['tracer_pid']}/environ").read_bytes()


def test_recycled_pid_in_sessions_json_is_not_traced(daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """An entry whose pid now names another process (its start time differs)
    is never touched: that process stays untraced and the entry is listed
    ended while tracerd was down (tracerctl status shows it too)."""
    daemon = daemon_factory(RULES, start=False)
    other = spawn(cbin("crash", "-pthread"), "-", "other", "wait")
    wait_until(lambda: proc_state(other.pid) == "S", "the process waiting", 10)
    start = int(Path(f"/proc/{other.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    entry = record(daemon, other.pid, "watchload", "watch", start=start - 1)
    write_sessions(daemon, [entry])
    daemon.start()
    ended = daemon.wait_session(other.pid, "exited")
    assert ended["error"] == ENDED
    assert tracer_pid(other.pid) == 0
    assert daemon.status()["counters"]["readopted"] == 0
    shown = daemon.ctl("status")
    assert shown.returncode == 0, shown.stderr
    assert str(other.pid) in shown.stdout


def record(daemon: Daemon, pid: int, name: str, tracer: str, *, start: int) -> dict[str, Any]:
    return {"pid": pid, "start": start, "name": name, "tracer": tracer, "args": [],
            "log": str(daemon.log_dir / f"{name}.{pid}.log"), "started": "2026-01-01T00:00:00.000Z"}  # fmt: skip


def write_sessions(daemon: Daemon, entries: Any, raw: bytes | None = None) -> None:
    daemon.state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    data = raw if raw is not None else json.dumps({"version": 1, "sessions": entries}).encode()
    (daemon.state_dir / "sessions.json").write_bytes(data)


def hostile_variants(daemon: Daemon, pid: int, start: int) -> list[tuple[str, Any, int]]:
    """(label, entries, warnings expected) for entries that must each be refused."""
    good = record(daemon, pid, "watchload", "watch", start=start)
    parent = os.getppid()
    return [
        ("not an object", ["x"], 1),
        ("pid a string", [{**good, "pid": str(pid)}], 1),
        ("pid true", [{**good, "pid": True}], 1),
        ("start a float", [{**good, "start": 1.5}], 1),
        ("pid 1", [{**good, "pid": 1, "log": str(daemon.log_dir / "watchload.1.log")}], 1),
        ("tracerd's parent", [{**good, "pid": parent, "log": str(daemon.log_dir / f"watchload.{parent}.log")}], 1),
        ("log outside log_dir", [{**good, "log": "/etc/passwd"}], 1),
        ("log with ..", [{**good, "log": str(daemon.log_dir / ".." / f"watchload.{pid}.log")}], 1),
        ("name with a slash", [{**good, "name": "../x", "log": str(daemon.log_dir / f"../x.{pid}.log")}], 1),
        ("unknown tracer", [{**good, "tracer": "sh"}], 1),
        ("args not strings", [{**good, "args": [1]}], 1),
        ("started not a time", [{**good, "started": "yesterday"}], 1),
        ("listed twice", [good, good], 1),
    ] + [("a kernel thread", [record(daemon, k, "watchload", "watch", start=start_of(k))], 1)
         for k in [kernel_thread()] if k is not None]  # fmt: skip


def start_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def kernel_thread() -> int | None:
    """A kernel thread's pid (PF_KTHREAD), if this pid namespace shows one."""
    for entry in sorted(os.listdir("/proc")):
        if entry.isdigit():
            try:
                if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[6]) & 0x00200000:
                    return int(entry)
            except OSError:
                continue
    return None


def test_a_zombie_in_sessions_json_ended_while_down(daemon_factory: Any) -> None:
    """A process that exited while tracerd was down, its parent not yet reaping it (a
    zombie with the very start time), counts as ended while down: no attach tried."""
    import subprocess  # noqa: PLC0415

    proc = subprocess.Popen(["true"])
    try:
        wait_until(lambda: proc_state(proc.pid) == "Z", "a zombie", 10)
        daemon = daemon_factory(RULES, start=False)
        write_sessions(daemon, [record(daemon, proc.pid, "watchload", "watch", start=start_of(proc.pid))])
        daemon.start()
        wait_until(lambda: daemon.status()["counters"].get("ended_while_down") == 1, "ended while down", 15)
        assert "readopt_failed" not in daemon.stderr()
        assert daemon.status()["counters"].get("readopted", 0) == 0
    finally:
        proc.wait()


@pytest.mark.slow
def test_hostile_sessions_json_variants_each_warn_and_start_clean(daemon_factory: Any, cbin: Any,
                                                                   spawn: Any) -> None:  # fmt: skip
    """Each damaged or hostile sessions.json (truncated, not JSON, wrong
    version, a symlink; entries of wrong types, pid 1, tracerd's ancestor, a
    log outside log_dir, a bad name or tracer) gives its warning(s) and a clean
    start: tracerd serves, and traces nothing the file named except the one
    good entry of the "listed twice" case."""
    target = spawn(cbin("crash", "-pthread"), "-", "victim", "wait")
    wait_until(lambda: proc_state(target.pid) == "S", "the process waiting", 10)
    start = int(Path(f"/proc/{target.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    daemon = daemon_factory(RULES, start=False)
    whole_file: list[tuple[str, bytes]] = [
        ("truncated", b'{"version": 1, "sessions": [{"pid": 12'),
        ("not JSON", b"\x00\xff garbage"),
        ("wrong version", b'{"version": 99, "sessions": []}'),
        ("sessions not a list", b'{"version": 1, "sessions": {}}'),
        ("deep nesting", b"[" * 100000),
    ]
    cases: list[tuple[str, Any, bytes | None, str, int]] = [
        (label, None, raw, "sessions_file_ignored", 1) for label, raw in whole_file
    ]
    cases += [(label, entries, None, "sessions_file_entry_ignored", n)
              for label, entries, n in hostile_variants(daemon, target.pid, start)]  # fmt: skip
    for label, entries, raw, event, count in cases:
        write_sessions(daemon, entries, raw)
        daemon.stderr_path.write_bytes(b"")
        daemon.start()
        try:

            def warned(event: str = event, count: int = count) -> bool:
                return daemon.stderr().count(f'"event": "{event}"') >= count

            wait_until(warned, f"{label}: {event} warning", 15)
            assert daemon.stderr().count(f'"event": "{event}"') == count, (label, daemon.stderr())
            assert daemon.status()["daemon"]["pid"] == daemon.proc.pid  # type: ignore[union-attr]
            if label == "listed twice":
                wait_until(lambda: tracer_pid(target.pid) != 0, "the good entry re-adopted", 30)
            else:
                assert tracer_pid(target.pid) == 0, label
        finally:
            assert daemon.stop() == 0
        wait_until(lambda: tracer_pid(target.pid) == 0, "released", 15)
    link = daemon.state_dir / "sessions.json"
    link.unlink()
    link.symlink_to(daemon.root / "elsewhere.json")
    (daemon.root / "elsewhere.json").write_text(json.dumps({"version": 1, "sessions": [
        record(daemon, target.pid, "watchload", "watch", start=start)]}))  # fmt: skip
    daemon.stderr_path.write_bytes(b"")
    daemon.start()
    wait_until(lambda: "symlink" in daemon.stderr(), "symlink refused", 15)
    assert tracer_pid(target.pid) == 0


def test_sessions_json_follows_attach_detach_and_end(daemon: Daemon, cbin: Any, spawn: Any) -> None:
    """sessions.json (0600) lists each attached session with its identity; a
    session detached on request, or whose process ended, leaves it."""
    crash = cbin("crash", "-pthread")
    first = spawn(crash, daemon.hook_command(), "filed", "wait")
    second = spawn(crash, daemon.hook_command(), "filed", "wait")
    assert first.readline() == second.readline() == "hook=0\n"
    path = daemon.state_dir / "sessions.json"

    def listed() -> list[tuple[int, int]]:
        try:
            return sorted((e["pid"], e["start"]) for e in json.loads(path.read_text())["sessions"])
        except (OSError, ValueError):
            return []

    def identity(pid: int) -> tuple[int, int]:
        return pid, int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])

    both = sorted([identity(first.pid), identity(second.pid)])
    wait_until(lambda: listed() == both, "both sessions in sessions.json", 10)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert daemon.ctl("detach", str(first.pid)).returncode == 0
    wait_until(lambda: listed() == [identity(second.pid)], "the detached session gone", 10)
    second.proc.kill()
    second.wait()
    daemon.wait_session(second.pid, "exited")
    wait_until(lambda: listed() == [], "the ended session gone", 10)


def test_postfix_qmgr_watched_again_after_a_restart_and_its_crash_reported(
    daemon_factory: Any, postfix: PostfixInstance
) -> None:
    """A private Postfix whose qmgr is watched (tracerctl postfix enable qmgr
    --tracer watch); tracerd gets SIGTERM and starts again: the same qmgr is
    watched again (readopted, by the watcher, its log with the re-attach
    line).  A SIGSEGV of qmgr then gives a crash report whose frames are
    qmgr's event loop, and master sees qmgr killed by signal 11."""
    daemon = daemon_factory()
    postfix.create()
    postfix.start()
    result = daemon.ctl("postfix", "enable", "qmgr", "-c", str(postfix.config_dir), "--tracer", "watch")
    assert result.returncode == 0, result.stderr
    (qmgr,) = debug_generation(postfix, "qmgr")
    before = daemon.wait_session(qmgr, "attached", timeout=60)
    assert daemon.stop() == 0
    wait_until(lambda: tracer_pid(qmgr) == 0, "qmgr released", 15)
    daemon.start()
    wait_readopted(daemon, {qmgr: before})
    wait_idle(qmgr)
    send_signal(qmgr, signal.SIGSEGV)
    session = daemon.wait_session(qmgr, "crashed", timeout=60)
    assert session["crash"], (session, daemon.stderr()[-4000:])
    report = json.loads(daemon.ctl("--json", "crash", session["crash"]).stdout)["crash"]
    assert report["process"]["name"] == "qmgr"
    crashed = next(t for t in report["threads"] if t["crashed"])
    assert "event_loop" in [frame["function"] for frame in crashed["frames"]]
    postfix.wait_log(f"pid {qmgr} killed by signal 11")
