"""strace and ltrace sessions end as their process did, whatever the rule's output options.

Real strace 6 and ltrace on C targets (tests/c/crash.c, children.c) through a
real tracerd and the hook: the session ends ``crashed`` with the signal and
a crash report of what the tracer saw, or ``exited`` with the code, under
every output option family (and the README's example rule); under -f a
child's end is not the session's.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import have, proc_state
from tests.support import send_signal, wait_until

README_ARGS = ("-f", "-tt", "-s", "256")  # README's and contrib/tracerd.toml.example's rule
STRACE_SETS = [(), README_ARGS, ("-t",), ("-ttt",), ("-r",), ("-T",), ("-i",), ("-f", "-r", "-tt", "-i", "-T", "-Y")]
LTRACE_SETS = [(), ("-f", "-tt"), ("-t",), ("-ttt",), ("-r",), ("-T",), ("-i",), ("-f", "-r", "-i", "-T")]
OPTION_SETS = [("strace", args) for args in STRACE_SETS] + [("ltrace", args) for args in LTRACE_SETS]


def rule(tracer: str, args: tuple[str, ...], process: str = "tgt*") -> str:
    return f'[[rule]]\nprocess = "{process}"\ntracer = "{tracer}"\nargs = {json.dumps(list(args))}\n'


def need(tracer: str) -> None:
    if not have(tracer):
        pytest.skip(f"{tracer} not installed")


def crash_report(daemon: Any, crash_id: str) -> dict[str, Any]:
    result = daemon.ctl("--json", "crash", crash_id)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)["crash"]
    return report


@pytest.mark.parametrize(("tracer", "args"), OPTION_SETS, ids=[f"{t}:{' '.join(a) or 'plain'}" for t, a in OPTION_SETS])
def test_sessions_end_as_the_process_did_under_every_output_option(
    tracer: str, args: tuple[str, ...], daemon_factory: Any, cbin: Any, spawn: Any
) -> None:
    """A SIGSEGV ends the session crashed with SIGSEGV and a crash id; exit(3) ends it exited 3,
    whatever timestamp, pid, ip or duration fields the options put before the tracer's last line."""
    need(tracer)
    daemon = daemon_factory(rule(tracer, args))
    crasher = spawn(cbin("crash", "-pthread"), daemon.hook_command(), "tgtcrash", "segv")
    exiter = spawn(cbin("crash", "-pthread"), daemon.hook_command(), "tgtexit", "exit3")
    assert crasher.readline() == "hook=0\n"
    assert exiter.readline() == "hook=0\n"
    crasher.release()
    exiter.release()
    assert crasher.wait() == -signal.SIGSEGV
    assert exiter.wait() == 3
    crashed = daemon.wait_session(crasher.pid, "crashed")
    assert crashed["signal"] == "SIGSEGV"
    assert crashed["crash"], crashed
    exited = daemon.wait_session(exiter.pid, "exited")
    assert (exited["exit_code"], exited["signal"], exited["crash"]) == (3, None, None)
    report = crash_report(daemon, crashed["crash"])
    assert report["tracer"] == tracer
    assert report["process"]["pid"] == crasher.pid
    assert report["signal"]["name"] == "SIGSEGV"
    assert any("+++ killed by SIGSEGV +++" in line for line in report["trace"])
    if "-i" in args:  # the address the signal hit: the faulting instruction
        assert int(report["signal"]["instruction_pointer"], 16) > 0
        assert report["registers"] == {"pc": report["signal"]["instruction_pointer"]}
    if tracer == "strace":
        assert report["signal"]["si_code_name"] == "SEGV_MAPERR"
    log = Path(crashed["log"]).read_text()
    assert f"notice: {tracer} gives no backtrace" in log
    assert Path(exited["log"]).read_text().rstrip().endswith(f"tgtexit[{exiter.pid}] exited with status 3")


def test_strace_crash_entry_with_siginfo_trace_and_notice(daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """With the README's rule: tracerctl --json crashes lists the crash; its report carries strace's
    si_code and si_addr, the trace's last lines (bounded) and says plainly there is no backtrace."""
    need("strace")
    daemon = daemon_factory(rule("strace", README_ARGS))
    target = spawn(cbin("crash", "-pthread"), daemon.hook_command(), "tgtsmtpd", "segv")
    assert target.readline() == "hook=0\n"
    target.release()
    assert target.wait() == -signal.SIGSEGV
    session = daemon.wait_session(target.pid, "crashed")
    listed = json.loads(daemon.ctl("--json", "crashes", check=True).stdout)["crashes"]
    entry = next(e for e in listed if e["id"] == session["crash"])
    assert (entry["name"], entry["pid"], entry["signal"]) == ("tgtsmtpd", target.pid, "SIGSEGV")
    report = crash_report(daemon, session["crash"])
    sig = report["signal"]
    assert (sig["number"], sig["si_code"], sig["si_code_name"], sig["fault_address"]) == (11, 1, "SEGV_MAPERR", "0x0")
    assert sig["tid"] == target.pid
    assert sig["tracer_line"] == "--- SIGSEGV {si_signo=SIGSEGV, si_code=SEGV_MAPERR, si_addr=NULL} ---"
    assert report["process"]["exe"] == str(cbin("crash", "-pthread"))
    assert report["process"]["cmdline"][-1] == "segv"
    assert 0 < len(report["trace"]) <= 50
    assert report["trace"][-1].endswith("+++ killed by SIGSEGV +++")
    assert any("--- SIGSEGV {si_signo=SIGSEGV" in line for line in report["trace"])
    assert report["notice"].startswith("strace gives no backtrace")
    assert report["threads"] == []
    assert report["signature"] == entry["signature"]
    log = Path(session["log"]).read_text()
    assert log.rstrip().endswith(f"tracerd: tgtsmtpd[{target.pid}] crashed: killed by SIGSEGV")


def test_strace_abort_siginfo_names_the_sender(daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """abort(): SIGABRT with si_code SI_TKILL (-6), sent by the process itself."""
    need("strace")
    daemon = daemon_factory(rule("strace", ("-tt",)))
    target = spawn(cbin("crash", "-pthread"), daemon.hook_command(), "tgtabort", "abort")
    assert target.readline() == "hook=0\n"
    target.release()
    assert target.wait() == -signal.SIGABRT
    session = daemon.wait_session(target.pid, "crashed")
    sig = crash_report(daemon, session["crash"])["signal"]
    assert (sig["name"], sig["si_code"], sig["si_code_name"]) == ("SIGABRT", -6, "SI_TKILL")
    assert (sig["user_sent"], sig["sender_pid"], sig["self_sent"]) == (True, target.pid, True)


def test_strace_thread_crash_under_f_and_without(daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """A thread's SIGSEGV: with -f the report names the thread's tid and its siginfo; without -f
    strace never saw the delivery, and the report says so rather than guess."""
    need("strace")
    # two daemons, two crash stores: neither report can be taken for a repeat of the other
    daemon = daemon_factory(rule("strace", ("-f", "-tt")))
    other = daemon_factory(rule("strace", ("-tt",)))
    with_f = spawn(cbin("crash", "-pthread"), daemon.hook_command(), "tgtf", "thread")
    without = spawn(cbin("crash", "-pthread"), other.hook_command(), "tgtnof", "thread")
    for target in (with_f, without):
        assert target.readline() == "hook=0\n"
        target.release()
        assert target.wait() == -signal.SIGSEGV
    report = crash_report(daemon, daemon.wait_session(with_f.pid, "crashed")["crash"])
    assert report["signal"]["si_code_name"] == "SEGV_MAPERR"
    assert report["signal"]["tid"] != with_f.pid
    session = other.wait_session(without.pid, "crashed")
    assert session["signal"] == "SIGSEGV"
    report = crash_report(other, session["crash"])
    assert report["process"]["pid"] == without.pid
    assert report["signal"]["si_code"] is None
    assert "did not show the signal's delivery" in report["notice"]


def test_strace_k_gives_frames_and_a_signature_of_them(daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """With -k strace unwinds at the signal: the report's frames are the crash's, innermost first."""
    need("strace")
    daemon = daemon_factory(rule("strace", ("-k",)))
    target = spawn(cbin("crash", "-pthread"), daemon.hook_command(), "tgtk", "segv")
    assert target.readline() == "hook=0\n"
    target.release()
    assert target.wait() == -signal.SIGSEGV
    report = crash_report(daemon, daemon.wait_session(target.pid, "crashed")["crash"])
    names = [frame["function"] for frame in report["threads"][0]["frames"]]
    if not names:
        pytest.skip("this strace was built without -k stack traces")
    assert names[:4] == ["crash_here", "level_two", "level_one", "main"]
    assert report["top"] == ["crash_here", "level_two", "level_one"]
    assert report["notice"].startswith("strace -k gave the frames")


CHILD_CASES = [(t, a, m) for t, a in [("strace", README_ARGS), ("ltrace", ("-f", "-tt"))] for m in ("exit", "segv")]


@pytest.mark.parametrize("case", CHILD_CASES, ids=[f"{t}-{m}" for t, _, m in CHILD_CASES])
def test_a_child_ending_under_f_does_not_end_the_session(
    case: tuple[str, tuple[str, ...], str], daemon_factory: Any, cbin: Any, spawn: Any
) -> None:
    """Under -f a forked child's exit (or fatal SIGSEGV) is the child's: the session stays attached
    and ends exited 4 when the process itself exits 4, with no crash of its own."""
    tracer, args, mode = case
    need(tracer)
    daemon = daemon_factory(rule(tracer, args))
    target = spawn(cbin("children"), daemon.hook_command(), "tgtparent", mode)
    assert target.readline() == "hook=0\n"
    target.release()
    status = int(target.readline().removeprefix("child="))
    assert os.WIFEXITED(status) if mode == "exit" else os.WTERMSIG(status) == signal.SIGSEGV
    if mode == "exit":
        assert os.WEXITSTATUS(status) == 5
    log = Path(daemon.session(target.pid)["log"])
    ending = "+++ exited with 5 +++" if tracer == "strace" else "+++ exited (status 5) +++"
    ending = ending if mode == "exit" else "+++ killed by SIGSEGV +++"
    wait_until(lambda: ending in log.read_text(), f"{ending!r} in the log", 15)
    session = daemon.session(target.pid)
    assert session["state"] == "attached", session
    target.release()
    assert target.wait() == 4
    session = daemon.wait_session(target.pid, "exited")
    assert (session["exit_code"], session["signal"], session["crash"]) == (4, None, None)


def test_children_left_running_are_let_go_untraced(daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """The process exits while its child lives on under strace -f: the session ends exited 0 at
    once, strace is asked to detach (SIGTERM, not SIGKILL), and the child runs on untraced.
    (ltrace 0.7 cannot detach from a -f child: docs/design.md "Tracers".)"""
    need("strace")
    daemon = daemon_factory(rule("strace", README_ARGS))
    target = spawn(cbin("children"), daemon.hook_command(), "tgtorphan", "orphan")
    assert target.readline() == "hook=0\n"
    target.release()
    orphan = int(target.readline().removeprefix("child="))
    try:
        assert target.wait() == 0
        session = daemon.wait_session(target.pid, "exited")
        assert (session["exit_code"], session["crash"]) == (0, None)
        wait_until(lambda: _tracer_of(orphan) == 0, f"child {orphan} untraced", 15)
        assert proc_state(orphan) in ("S", "R")
        target.release()  # the orphan reads it and blocks in read() again, running free
        time.sleep(0.2)
        assert os.waitpid(orphan, os.WNOHANG) == (0, 0)
        assert proc_state(orphan) in ("S", "R")
    finally:
        with contextlib.suppress(ProcessLookupError):
            send_signal(orphan, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(orphan, 0)  # ours: the test process is a subreaper


def _tracer_of(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(text.split("TracerPid:")[1].split()[0])


@pytest.mark.parametrize("tracer", ["strace", "ltrace"])
def test_a_handled_sigsegv_is_no_crash(tracer: str, daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """A SIGSEGV the program's own handler takes (it then exits 7): the tracer shows its delivery,
    but the session ends exited 7 and no crash is recorded."""
    need(tracer)
    daemon = daemon_factory(rule(tracer, ("-f", "-tt")))
    target = spawn(cbin("crash", "-pthread"), daemon.hook_command(), "tgthandler", "handler")
    assert target.readline() == "hook=0\n"
    target.release()
    assert target.readline() == "handled\n"
    assert target.wait() == 7
    session = daemon.wait_session(target.pid, "exited")
    assert (session["exit_code"], session["signal"], session["crash"]) == (7, None, None)
    assert "--- SIGSEGV" in Path(session["log"]).read_text()
    assert json.loads(daemon.ctl("--json", "crashes", check=True).stdout)["crashes"] == []
