"""The syscount tracer (docs/syscount.md): exact counts from one shared bpftrace, on real processes.

The target (tests/c/syscount_target.c) does rounds of a known number of
getppid() and failing close(-1) calls in several threads and a forked child.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Daemon, Target, proc_state, send_signal, wait_until
from tracerd.tracers.syscount import check

pytestmark = [
    pytest.mark.skipif(check.refusal() is not None, reason=str(check.refusal())),
    pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool (looks at the maps here) is not installed"),
]

GETPPIDS, CLOSES, THREADS = 25000, 1250, 3  # a round: 100000 getppid, 5000 close -> EBADF
ROUND_GETPPID, ROUND_CLOSE = (THREADS + 1) * GETPPIDS, (THREADS + 1) * CLOSES
CONFIG = "[syscount]\ninterval = 1\n"
ROW = re.compile(r"^\s*(\d+)\s+(\d*)\s+(\w+)\s*(.*)$")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the tests that only read (each target is its own)."""
    root = tmp_path_factory.mktemp("syscount")
    daemon = Daemon(root, root / "no-syslog.sock", CONFIG)
    daemon.start()
    yield daemon
    daemon.stop()


def start(daemon: Daemon, cbin: Any, spawn: Any, exit_code: int = 3) -> Target:
    hook = daemon.hook_command(timeout=60) + " --tracer syscount"
    target: Target = spawn(cbin("syscount_target", "-pthread"), hook, "smtpd", str(GETPPIDS), str(CLOSES),
                           str(THREADS), str(exit_code))  # fmt: skip
    assert target.readline() == "hook=0\n"
    return target


def one_round(target: Target, number: int) -> None:
    target.release()
    assert target.readline() == f"round {number}\n"


CLOSING = re.compile(r"^tracerd: \S+ (exited|detached|ended|failed|crashed)", re.M)


def closed_log(path: str | Path) -> str:
    """The log once its closing line is written (the log writer is a thread of its own)."""
    log = Path(path)
    wait_until(lambda: CLOSING.search(log.read_text()), f"the closing line of {log}", 15)
    return log.read_text()


def last_table(text: str, when: str = "at the end") -> dict[str, tuple[int, int, str]]:
    """The last table of the log written ``when``: syscall -> (calls, errors, errno detail)."""
    start = text.rindex(f"tracerd: syscount {when}:")
    rows: dict[str, tuple[int, int, str]] = {}
    for line in text[start:].splitlines()[3:]:
        if line.startswith("---"):
            break
        found = ROW.match(line)
        assert found, line
        rows[found[3]] = (int(found[1]), int(found[2] or 0), found[4].strip())
    return rows


def map_ids(pid: int) -> list[int]:
    """The ids of the BPF maps process ``pid`` holds (its fdinfo's ``map_id``)."""
    ids = []
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        with contextlib.suppress(OSError):
            ids += [int(line.split()[1]) for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines()
                    if line.startswith("map_id:")]  # fmt: skip
    return ids


def link_types(pid: int) -> list[str]:
    """The BPF links process ``pid`` holds (its fdinfo's ``link_type``)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        with contextlib.suppress(OSError):
            found += [line.split()[1] for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines()
                      if line.startswith("link_type:")]  # fmt: skip
    return found


def map_pids(bpftrace: int) -> set[int]:
    """The pids in @pids of this very bpftrace (found by its own fds, never by a machine-wide name)."""
    for map_id in map_ids(bpftrace):
        shown = json.loads(subprocess.run(["bpftool", "-j", "map", "show", "id", str(map_id)], check=True,
                                          capture_output=True, text=True, timeout=30).stdout)  # fmt: skip
        if shown["name"] == "AT_pids":
            dump = json.loads(subprocess.run(["bpftool", "-j", "map", "dump", "id", str(map_id)], check=True,
                                             capture_output=True, text=True, timeout=30).stdout)  # fmt: skip
            return {int.from_bytes(bytes(int(b, 16) for b in e["key"]), "little") for e in dump} - {0}
    raise AssertionError(f"no @pids map held by {bpftrace}")


def test_exact_counts_threads_child_table_show_and_exit_status(shared: Daemon, cbin: Any, spawn: Any) -> None:
    """Two rounds in 3 threads and a forked child: the final table says exactly 200000 getppid and
    10000 close, all EBADF; tables came every interval meanwhile; show lists the live top calls
    (exact after round 1); the session ends with the exit status; the process was never stopped."""
    target = start(shared, cbin, spawn)
    session = shared.session(target.pid)
    assert (session["state"], session["tracer"]) == ("attached", "syscount")
    if os.uname().machine == "x86_64":  # returning calls are counted by tracerd's own sys_exit program
        assert shared.status()["counters"]["syscount_rawcount"] == 1
        assert shared.proc is not None
        assert "raw_tracepoint" in link_types(shared.proc.pid)
    assert target.pid in map_pids(session["tracer_pid"])  # the hook returned: the pid is in the map
    one_round(target, 1)
    shown = shared.ctl("show", str(target.pid), check=True).stdout
    assert "top system calls since the attach (live):" in shown
    assert re.search(rf"^\s+{ROUND_GETPPID}\s+getppid$", shown, re.M), shown
    assert re.search(rf"^\s+{ROUND_CLOSE}\s+{ROUND_CLOSE} close\s+EBADF:{ROUND_CLOSE}$", shown, re.M), shown
    log = Path(session["log"])
    wait_until(lambda: "tracerd: syscount so far:" in log.read_text(), "a periodic table", 15)
    assert proc_state(target.pid) == "S"  # waiting for its byte: running, never stopped by a tracer
    one_round(target, 2)
    target.close_stdin()
    assert target.wait() == 3
    ended = shared.wait_session(target.pid, "exited")
    assert ended["exit_code"] == 3
    text = closed_log(log)
    rows = last_table(text)
    assert rows["getppid"] == (2 * ROUND_GETPPID, 0, "")
    assert rows["close"] == (2 * ROUND_CLOSE, 2 * ROUND_CLOSE, f"EBADF:{2 * ROUND_CLOSE}")
    assert text.rstrip().endswith(f"tracerd: smtpd[{target.pid}] exited with status 3")
    assert target.pid not in map_pids(session["tracer_pid"])


def test_a_changing_set_of_pids_each_counted_exactly(shared: Daemon, cbin: Any, spawn: Any) -> None:
    """Two processes at once: one detached between its rounds (its second round uncounted, its pid
    out of the map), the other counted exactly through both of its rounds."""
    first, second = start(shared, cbin, spawn), start(shared, cbin, spawn)
    bpftrace = shared.session(first.pid)["tracer_pid"]
    assert shared.session(second.pid)["tracer_pid"] == bpftrace  # one bpftrace serves both
    one_round(first, 1)
    one_round(second, 1)
    shared.ctl("detach", str(first.pid), check=True)
    detached = shared.wait_session(first.pid, "detached")
    assert first.pid not in map_pids(bpftrace)
    assert second.pid in map_pids(bpftrace)
    one_round(first, 2)
    one_round(second, 2)
    for target in (first, second):
        target.close_stdin()
        assert target.wait() == 3
    shared.wait_session(second.pid, "exited")
    assert last_table(closed_log(detached["log"]))["getppid"][0] == ROUND_GETPPID
    rows = last_table(closed_log(shared.session(second.pid)["log"]))
    assert rows["getppid"][0] == 2 * ROUND_GETPPID
    assert rows["close"][:2] == (2 * ROUND_CLOSE, 2 * ROUND_CLOSE)


def test_latency_adds_time_columns_and_histograms(daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """latency = true: strace -c's time columns, the histogram lines, and the counts still exact."""
    daemon = daemon_factory(CONFIG + "latency = true\n")
    target = start(daemon, cbin, spawn)
    one_round(target, 1)
    target.close_stdin()
    assert target.wait() == 3
    text = closed_log(daemon.wait_session(target.pid, "exited")["log"])
    table = text[text.rindex("tracerd: syscount at the end:"):].splitlines()
    assert table[1].split() == ["%", "time", "seconds", "usecs/call", "calls", "errors", "syscall", "errno"]
    timed = re.compile(r"^\s*([\d.]+)\s+([\d.]+)\s+(\d+)\s+(\d+)\s+(\d*)\s+(\w+)\s*(.*)$")
    rows = {found[6]: found for found in map(timed.match, table[3:]) if found}
    assert int(rows["getppid"][4]) == ROUND_GETPPID
    assert (int(rows["close"][4]), int(rows["close"][5]), rows["close"][7]) == (
        ROUND_CLOSE, ROUND_CLOSE, f"EBADF:{ROUND_CLOSE}")  # fmt: skip
    assert float(rows["getppid"][2]) > 0  # seconds spent in the calls
    histogram = next(line for line in table if line.startswith("  latency getppid: "))
    assert sum(int(part.rsplit(":", 1)[1]) for part in histogram.split(": ", 1)[1].split()) == ROUND_GETPPID


def test_metrics_count_per_service(daemon_factory: Any, cbin: Any, spawn: Any, tmp_path: Path) -> None:
    """The textfile exposition has tracerd_syscalls per program and system call name, exact while
    sessions end one by one (an ending session's read counts its own calls; the others' at the next
    read, neither lost nor counted twice)."""
    prom = tmp_path / "tracerd.prom"
    daemon = daemon_factory(CONFIG + f'[metrics]\ntextfile = "{prom}"\ntextfile_interval = 1\n')
    first, second = start(daemon, cbin, spawn), start(daemon, cbin, spawn)
    one_round(first, 1)
    one_round(second, 1)
    daemon.ctl("show", str(first.pid), check=True)  # a read now
    line = f'tracerd_syscalls_total{{program="smtpd",syscall="getppid"}} {float(2 * ROUND_GETPPID)}'
    wait_until(lambda: prom.exists() and line in prom.read_text(), "the getppid count in the textfile", 15)
    one_round(second, 2)
    first.close_stdin()
    assert first.wait() == 3
    daemon.wait_session(first.pid, "exited")
    second.close_stdin()
    assert second.wait() == 3
    daemon.wait_session(second.pid, "exited")
    line = f'tracerd_syscalls_total{{program="smtpd",syscall="getppid"}} {float(3 * ROUND_GETPPID)}'
    wait_until(lambda: line in prom.read_text(), "both sessions' getppid counts in the textfile", 15)


def test_kill9_of_bpftrace_restarts_it_and_keeps_the_counts(daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """A round, read (show); kill -9 of the bpftrace; a new one is started with the session put back
    (its later child followed too); the final table has both rounds exactly."""
    daemon = daemon_factory(CONFIG)
    target = start(daemon, cbin, spawn)
    one_round(target, 1)
    assert f"{ROUND_GETPPID}" in daemon.ctl("show", str(target.pid), check=True).stdout
    old = daemon.session(target.pid)["tracer_pid"]
    send_signal(old, signal.SIGKILL)
    wait_until(lambda: daemon.status()["counters"].get("syscount_restarts") == 1, "bpftrace restarted", 30)
    new = daemon.status()["counters"]
    assert new["syscount_sessions"] == 1
    live = [p for p in (int(x) for x in os.listdir("/proc") if x.isdigit()) if p != old and _is_bpftrace_of(p, daemon)]
    assert live
    assert target.pid in map_pids(live[0])
    one_round(target, 2)
    target.close_stdin()
    assert target.wait() == 3
    ended = daemon.wait_session(target.pid, "exited")
    text = closed_log(ended["log"])
    assert "syscount's bpftrace died and was restarted" in text
    rows = last_table(text)
    assert rows["getppid"][0] == 2 * ROUND_GETPPID
    assert rows["close"][:2] == (2 * ROUND_CLOSE, 2 * ROUND_CLOSE)


def test_bpftrace_counts_alone_when_the_raw_program_is_refused(daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """The kernel refusing tracerd's sys_exit program (a fail point here): a warning, bpftrace's own
    raw_syscalls probes count instead, and the counts are as exact."""
    daemon = daemon_factory(CONFIG, env={**os.environ, "TRACERD_FAILPOINTS": "rawcount-refused"})
    target = start(daemon, cbin, spawn)
    assert daemon.status()["counters"]["syscount_rawcount"] == 0
    assert daemon.proc is not None
    assert "raw_tracepoint" not in link_types(daemon.proc.pid)
    assert "syscount_rawcount_refused" in daemon.stderr()
    one_round(target, 1)
    target.close_stdin()
    assert target.wait() == 3
    rows = last_table(closed_log(daemon.wait_session(target.pid, "exited")["log"]))
    assert rows["getppid"] == (ROUND_GETPPID, 0, "")
    assert rows["close"] == (ROUND_CLOSE, ROUND_CLOSE, f"EBADF:{ROUND_CLOSE}")


def test_a_bpftrace_that_cannot_be_restarted_ends_its_sessions_failed(daemon_factory: Any, cbin: Any, spawn: Any,
                                                                      tmp_path: Path) -> None:  # fmt: skip
    """kill -9 of the bpftrace once bpftrace is gone from PATH: the restart is refused, the session ends
    failed saying why, and its process runs on (never stopped) to its own exit."""
    bare = tmp_path / "bin"
    bare.mkdir()
    for program in ("setpriv", "strace", "bpftrace"):
        found = shutil.which(program)
        if found:
            (bare / program).symlink_to(found)
    daemon = daemon_factory(CONFIG, env={**os.environ, "PATH": f"{bare}"})
    target = start(daemon, cbin, spawn)
    one_round(target, 1)
    (bare / "bpftrace").unlink()
    os.kill(daemon.session(target.pid)["tracer_pid"], signal.SIGKILL)
    ended = daemon.wait_session(target.pid, "failed", 30)
    assert "syscount's bpftrace died and could not be restarted: " in (ended.get("error") or ""), ended
    assert "bpftrace is not installed" in ended["error"]
    assert proc_state(target.pid) == "S"
    one_round(target, 2)  # it runs on, untraced
    target.close_stdin()
    assert target.wait() == 3


def _is_bpftrace_of(pid: int, daemon: Daemon) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
        cmd = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    assert daemon.proc is not None
    return cmd == "bpftrace" and int(stat[stat.rindex(b")") + 2 :].split()[1]) == daemon.proc.pid


def test_tracerd_restart_readopts_syscount_sessions(daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """kill -9 of tracerd: the next one re-adopts the syscount session (its log says so) and counts
    the rounds after it exactly."""
    daemon = daemon_factory(CONFIG)
    target = start(daemon, cbin, spawn)
    one_round(target, 1)
    sessions = daemon.state_dir / "sessions.json"
    wait_until(lambda: sessions.exists() and str(target.pid) in sessions.read_text(), "sessions.json", 15)
    assert daemon.proc is not None
    daemon.proc.kill()
    daemon.proc.wait()
    daemon.start()
    session = daemon.wait_session(target.pid, "attached", 60)
    assert (session["readopted"], session["tracer"]) == (True, "syscount")
    one_round(target, 2)
    target.close_stdin()
    assert target.wait() == 3
    text = closed_log(daemon.wait_session(target.pid, "exited")["log"])
    assert "re-attached after tracerd restart" in text
    assert last_table(text)["getppid"][0] == ROUND_GETPPID  # counted since the re-adoption


def test_sigterm_ends_every_session_with_its_table(daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """tracerd's SIGTERM: each of three sessions gets its last table, exact, then its closing line
    (their ends share one read); the processes run on."""
    daemon = daemon_factory(CONFIG)
    targets = [start(daemon, cbin, spawn) for _ in range(3)]
    for target in targets:
        one_round(target, 1)
    logs = [Path(daemon.session(target.pid)["log"]) for target in targets]
    assert daemon.stop() == 0
    for target, log in zip(targets, logs, strict=True):
        text = closed_log(log)
        assert last_table(text)["getppid"][0] == ROUND_GETPPID
        assert text.rstrip().endswith("detached (tracerd shutting down); it runs on untraced")
        assert proc_state(target.pid) == "S"
        target.close_stdin()
        assert target.wait() == 3


REFUSE = (
    "import sys; sys.path[:0] = [sys.argv[1]]; from tracerd.tracers.syscount import check; "
    "print(check.refusal(*sys.argv[2:]))"
)


def refusal(*prefix: str, env: dict[str, str] | None = None, btf: str | None = None) -> str:
    argv = [*prefix, sys.executable, "-c", REFUSE, str(Path(__file__).parent.parent), *([btf] if btf else [])]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=True)
    return done.stdout.strip()


def test_refusals_say_what_is_missing_and_the_fix(tmp_path: Path) -> None:
    """bpftrace missing, BTF missing, capabilities dropped, tracefs unmounted where tracerd
    cannot mount it: one line each with the fix; with CAP_SYS_ADMIN tracerd mounts tracefs."""
    bare = tmp_path / "bin"
    bare.mkdir()
    missing = "syscount tracer: bpftrace is not installed (apt install bpftrace)"
    assert refusal(env={"PATH": str(bare)}) == missing
    assert "the kernel has no BTF (/nonexistent is missing)" in refusal(btf="/nonexistent")
    setpriv = shutil.which("setpriv")
    unshare = shutil.which("unshare")
    if setpriv is None or unshare is None:
        pytest.skip("setpriv/unshare (util-linux) not installed")
    no_caps = [setpriv, "--bounding-set=-sys_admin,-bpf,-perfmon", "--inh-caps=-sys_admin,-bpf,-perfmon"]
    assert "tracerd lacks CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)" in refusal(*no_caps)
    # a mount namespace of its own, tracefs unmounted there (the host's stays as it is)
    unmounted = [unshare, "--mount", "--propagation", "private", "sh", "-c",
                 'umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; exec "$@"',
                 "sh"]  # fmt: skip
    no_admin = [setpriv, "--bounding-set=-sys_admin", "--inh-caps=-sys_admin"]
    line = refusal(*unmounted, *no_admin)
    assert line.startswith("syscount tracer: tracefs is not mounted and tracerd could not mount it"), line
    assert line.endswith(": mount -t tracefs nodev /sys/kernel/tracing"), line
    mounted = refusal(*unmounted).splitlines()  # root with CAP_SYS_ADMIN: tracerd mounts it itself
    assert "tracefs_mounted" in mounted[0]
    assert mounted[-1] == "None"


def test_hook_refused_in_one_line_without_bpftrace(daemon_factory: Any, cbin: Any, spawn: Any,
                                                   tmp_path: Path) -> None:  # fmt: skip
    """A daemon that finds no bpftrace refuses the hook with the line, and the process runs on."""
    bare = tmp_path / "bin"
    bare.mkdir()
    for program in ("setpriv", "strace"):
        found = shutil.which(program)
        if found:
            (bare / program).symlink_to(found)
    daemon = daemon_factory(CONFIG, env={**os.environ, "PATH": f"{bare}"})
    hook = daemon.hook_command(timeout=60) + " --tracer syscount"
    target: Target = spawn(cbin("syscount_target", "-pthread"), hook, "smtpd", "1", "1", "0", "0")
    assert target.readline() != "hook=0\n"
    target.close_stdin()
    assert target.wait() == 0
    assert target.proc.stderr is not None
    assert "bpftrace is not installed (apt install bpftrace)" in target.proc.stderr.read().decode()


@pytest.mark.slow
def test_the_bench_runs(tmp_path: Path) -> None:
    """bench/syscount.py (docs/syscount.md's command), small: exit 0, its table, its results saved."""
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, str(root / "bench" / "syscount.py"), "--runs", "1", "--iterations",
                             "20000", "--slow-iterations", "2000", "--attaches", "2"],
                            capture_output=True, text=True, timeout=600, check=False, cwd=root,
                            env={**os.environ, "TRACERD_BENCH_RESULTS": str(tmp_path)})  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"^syscount\s+[\d.]+\s+[\d.]+\s+\(goal <= 1.6\)$", result.stdout, re.M), result.stdout
    assert "attach through the hook: first" in result.stdout
    for row in ("untraced, syscount loaded", "floor: an empty program at sys_exit", "bpftrace one-liner, pid filter"):
        assert re.search(rf"^{row}\s+[\d.]+\s+[\d.]+$", result.stdout, re.M), result.stdout
    assert json.loads((tmp_path / "syscount.json").read_text())["ratios"]["syscount"] > 0


def test_a_bpftrace_that_cannot_start_refuses_the_hook_with_its_words(daemon_factory: Any, cbin: Any, spawn: Any,
                                                                      tmp_path: Path) -> None:  # fmt: skip
    """A bpftrace that exits at once (here a broken one first on PATH): the hook is refused with its
    last line, at once (not after the start timeout), and the process runs on."""
    broken = tmp_path / "bin"
    broken.mkdir()
    (broken / "bpftrace").write_text("#!/bin/sh\necho 'ERROR: this bpftrace is broken' >&2\nexit 1\n")
    (broken / "bpftrace").chmod(0o755)
    daemon = daemon_factory(CONFIG, env={**os.environ, "PATH": f"{broken}:{os.environ['PATH']}"})
    hook = daemon.hook_command(timeout=60) + " --tracer syscount"
    target: Target = spawn(cbin("syscount_target", "-pthread"), hook, "smtpd", "1", "1", "0", "0")
    assert target.readline(timeout=20) != "hook=0\n"  # well before bpftrace's 30 s start timeout
    target.close_stdin()
    assert target.wait() == 0
    assert target.proc.stderr is not None
    assert "bpftrace did not start: ERROR: this bpftrace is broken" in target.proc.stderr.read().decode()
