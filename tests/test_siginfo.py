"""Signals decoded, not guessed: si_code by name, the sender of a kill, the
fault address of a fault only, and a signature that does not blame the top
frame for a ``kill -SEGV``.

The decoder table is checked against the kernel's own header; the rest runs
real crashes of tests/c/crash.c under the gdb tracer, whose capture reads
gdb's ``$_siginfo``.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import have
from tracerd.crash import siginfo
from tracerd.crash.report import CrashReport, Frame, Thread
from tracerd.crash.signature import frames_signature

KERNEL_HEADER = Path("/usr/include/asm-generic/siginfo.h")
_DEFINE = re.compile(r"^#\s*define\s+(?:__)?((ILL|FPE|SEGV|BUS|TRAP|SYS|SI)_[A-Z_]+)\s+(-?(?:0x[0-9a-f]+|\d+))\s",
                     re.MULTILINE)  # fmt: skip
_LIMIT = re.compile(r"^#\s*define\s+NSIG(ILL|FPE|SEGV|BUS|TRAP|SYS)\s+(\d+)", re.MULTILINE)
PREFIX = {"ILL": signal.SIGILL, "FPE": signal.SIGFPE, "SEGV": signal.SIGSEGV, "BUS": signal.SIGBUS,
          "TRAP": signal.SIGTRAP, "SYS": signal.SIGSYS}  # fmt: skip


# -- the decoder, pure --------------------------------------------------------


@pytest.mark.skipif(not KERNEL_HEADER.exists(), reason="linux-libc-dev's asm-generic/siginfo.h is not installed")
def test_code_table_matches_the_kernel_header() -> None:
    """Every si_code the installed kernel header defines for the fatal signals, and
    every generic SI_ code, has that value and name in the table; the table
    covers each signal's codes up to the header's NSIGxxx."""
    text = KERNEL_HEADER.read_text()
    checked = 0
    for name, prefix, value in _DEFINE.findall(text):
        if name in ("SI_MAX_SIZE", "SEGV_PSTKOVF"):  # a size; ia64's twin of SEGV_PKUERR
            continue
        code = int(value, 0)
        if prefix == "SI":
            assert siginfo.GENERIC[code][0] == name
        else:
            assert siginfo.SPECIFIC[PREFIX[prefix]][code][0] == name
        checked += 1
    assert checked >= 55  # 58 in Linux 6.1's header
    for prefix, limit in _LIMIT.findall(text):
        codes = siginfo.SPECIFIC[PREFIX[prefix]]
        assert sorted(codes) == list(range(1, len(codes) + 1))
        assert len(codes) >= int(limit)


def test_which_fields_each_code_has() -> None:
    """A kill names its sender, a kernel fault its address, SI_KERNEL and SI_TIMER
    neither, seccomp its system call; SIGABRT has no fault address whatever the code."""
    sender = {"sender_pid", "sender_uid"}
    assert set(siginfo.fields_to_read(signal.SIGSEGV, siginfo.SI_USER)) == sender
    assert set(siginfo.fields_to_read(signal.SIGABRT, siginfo.SI_TKILL)) == sender
    assert set(siginfo.fields_to_read(signal.SIGSEGV, siginfo.SI_QUEUE)) == sender
    assert set(siginfo.fields_to_read(signal.SIGSEGV, 1)) == {"fault_address"}
    for signo in (signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGTRAP):
        assert set(siginfo.fields_to_read(signo, 2)) == {"fault_address"}
    assert siginfo.fields_to_read(signal.SIGSEGV, siginfo.SI_KERNEL) == {}
    assert siginfo.fields_to_read(signal.SIGSEGV, siginfo.SI_TIMER) == {}
    assert siginfo.fields_to_read(signal.SIGABRT, 1) == {}
    assert siginfo.fields_to_read(signal.SIGSEGV, 99) == {}  # past NSIGSEGV: no fault layout
    assert set(siginfo.fields_to_read(signal.SIGSYS, 1)) == {"syscall"}


def test_decode_names_the_code_and_keeps_fields_where_they_belong() -> None:
    """decode(): names and meanings; a user-sent signal never gets a fault
    address, a fault never a sender; self_sent tells raise() from kill."""
    fault = siginfo.decode(signal.SIGSEGV, 1, {"fault_address": 0, "sender_pid": 42}, own_pid=7)
    assert (fault["name"], fault["si_code_name"], fault["fault_address"]) == ("SIGSEGV", "SEGV_MAPERR", "0x0")
    assert (fault["user_sent"], fault["sender_pid"], fault["self_sent"]) == (False, None, None)
    kill = siginfo.decode(signal.SIGSEGV, 0, {"sender_pid": 42, "sender_uid": 0, "fault_address": 0x6A48}, own_pid=7)
    assert (kill["si_code_name"], kill["user_sent"], kill["sender_pid"], kill["sender_uid"]) == ("SI_USER", True, 42, 0)
    assert kill["fault_address"] is None
    assert kill["self_sent"] is False
    assert siginfo.sent_by_another(kill)
    aborted = siginfo.decode(signal.SIGABRT, siginfo.SI_TKILL, {"sender_pid": 7, "sender_uid": 0}, own_pid=7)
    assert (aborted["si_code_name"], aborted["self_sent"]) == ("SI_TKILL", True)
    assert not siginfo.sent_by_another(aborted)
    kernel = siginfo.decode(signal.SIGSEGV, siginfo.SI_KERNEL, {})
    assert (kernel["si_code_name"], kernel["user_sent"], kernel["fault_address"]) == ("SI_KERNEL", False, None)
    assert siginfo.decode(signal.SIGBUS, 2, {"fault_address": 0x7F00})["si_code_name"] == "BUS_ADRERR"
    assert siginfo.decode(signal.SIGFPE, 1, {})["si_code_meaning"] == "integer divide by zero"
    unknown = siginfo.decode(signal.SIGSEGV, None)
    assert (unknown["si_code"], unknown["user_sent"], unknown["fault_address"]) == (None, None, None)
    assert siginfo.decode(signal.SIGSEGV, 77)["si_code_name"] is None
    assert [siginfo.parse_int(t) for t in ("11", "-6", " 4294967295\n", "0x10", "", None)] == [
        11, -6, 4294967295, None, None, None]  # fmt: skip


FATAL = [signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT, signal.SIGSYS, signal.SIGTRAP]


@given(signo=st.sampled_from(FATAL), si_code=st.integers(-(2**31), 2**31 - 1),
       pid=st.integers(0, 2**22), address=st.integers(0, 2**64 - 1))  # fmt: skip
def test_a_signal_never_has_both_a_sender_and_a_fault_address(signo: int, si_code: int, pid: int,
                                                              address: int) -> None:  # fmt: skip
    """Whatever the code: user-sent exactly when si_code <= 0, a fault address only
    when not user-sent, and never both a sender and a fault address."""
    fields: dict[str, int | None] = {"sender_pid": pid, "sender_uid": 0, "fault_address": address, "syscall": 1}
    decoded = siginfo.decode(signo, si_code, fields, own_pid=1)
    assert decoded["user_sent"] is (si_code <= 0)
    assert decoded["sender_pid"] is None or decoded["fault_address"] is None
    if decoded["user_sent"]:
        assert decoded["fault_address"] is None
    if decoded["fault_address"] is not None:
        assert int(decoded["fault_address"], 16) == address
        assert decoded["si_code_name"] is not None


def test_signature_of_a_kill_is_program_and_signal_not_frames() -> None:
    """A SIGSEGV another process sent: the signature is the program's and the
    signal's, the same wherever the process was; a fault keeps its frames'."""

    def report(frames: list[str], sig: dict[str, Any], pid: int = 100) -> CrashReport:
        stack = [Frame(n, f, "x.c", 1, "/bin/x", hex(n)) for n, f in enumerate(frames)]
        return CrashReport({"name": "smtpd", "pid": pid}, sig, "t", [Thread(1, pid, None, True, stack)], {}, "", [],
                           None, "gdb")  # fmt: skip

    kill = siginfo.decode(signal.SIGSEGV, 0, {"sender_pid": 5, "sender_uid": 0}, own_pid=100)
    fault = siginfo.decode(signal.SIGSEGV, 1, {"fault_address": 0}, own_pid=100)
    one, other = report(["read", "main"], kill), report(["epoll_wait", "loop", "main"], kill, pid=101)
    assert one.signature == other.signature
    assert one.signature_basis.startswith("sender:")
    faulted = frames_signature(one.threads[0].frames, program="smtpd", signal_name="SIGSEGV")
    assert one.signature != report(["read", "main"], fault).signature == faulted
    assert report(["read", "main"], fault).signature_basis.startswith("frames:")
    assert "sent by pid 5 uid 0 (SI_USER, not a fault)" in one.summary("r")
    assert "sent by pid 5 uid 0" in one.readable()
    assert one.to_json()["signature_basis"].startswith("sender:")


# -- real crashes under the gdb tracer ----------------------------------------

needs_gdb = pytest.mark.skipif(not have("gdb"), reason="gdb not installed")


@pytest.fixture
def gdb_daemon(daemon_factory: Any) -> Any:
    return daemon_factory('[[rule]]\nprocess = "crash*"\ntracer = "gdb"\n')


def crash_of(daemon: Any, cbin: Any, spawn: Any, mode: str, kill: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Run tests/c/crash.c MODE traced; ``kill``: send that signal from this test while it waits."""
    target = spawn(cbin("crash", "-pthread"), daemon.hook_command(), "crashd", mode)
    assert target.readline() == "hook=0\n"
    target.release()
    if kill is not None:
        assert target.readline() == "waiting\n"
        os.kill(target.pid, kill)
    return target, _report(daemon, target)


def _report(daemon: Any, target: Any) -> dict[str, Any]:
    session = daemon.wait_session(target.pid, "crashed")
    result = daemon.ctl("--json", "crash", session["crash"])
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)["crash"]
    return report


@needs_gdb
def test_null_dereference_is_segv_maperr_at_zero_with_no_sender(gdb_daemon: Any, cbin: Any, spawn: Any) -> None:
    """A real NULL dereference: SEGV_MAPERR, fault address 0x0, not user-sent, no
    sender, and the signature is the frames'."""
    target, report = crash_of(gdb_daemon, cbin, spawn, "segv")
    assert target.wait() == -signal.SIGSEGV
    sig = report["signal"]
    assert (sig["number"], sig["name"], sig["si_code"], sig["si_code_name"]) == (11, "SIGSEGV", 1, "SEGV_MAPERR")
    assert sig["fault_address"] == "0x0"
    assert (sig["user_sent"], sig["sender_pid"], sig["sender_uid"]) == (False, None, None)
    assert report["signature_basis"].startswith("frames:")
    assert "capture_errors" not in report["process"]


@needs_gdb
def test_kill_segv_names_the_sender_and_no_fault_address(
    gdb_daemon: Any, cbin: Any, spawn: Any, syslog_receiver: Any
) -> None:
    """kill -SEGV from this test: SI_USER with this test's pid and uid, no fault
    address, a user-sent signature unlike a real fault's, said in syslog and log."""
    _, fault = crash_of(gdb_daemon, cbin, spawn, "segv")
    target, report = crash_of(gdb_daemon, cbin, spawn, "wait", kill=signal.SIGSEGV)
    assert target.wait() == -signal.SIGSEGV
    sig = report["signal"]
    assert (sig["si_code"], sig["si_code_name"], sig["user_sent"]) == (0, "SI_USER", True)
    assert (sig["sender_pid"], sig["sender_uid"], sig["self_sent"]) == (os.getpid(), os.getuid(), False)
    assert sig["fault_address"] is None
    assert report["signature_basis"].startswith("sender:")
    assert report["signature"] != fault["signature"]
    again, second = crash_of(gdb_daemon, cbin, spawn, "wait", kill=signal.SIGSEGV)
    assert again.wait() == -signal.SIGSEGV
    assert second["signature"] == report["signature"]  # same program, same signal: one entry
    syslog_receiver.wait_for(f"crashd[{target.pid}]: crashed: SIGSEGV sent by pid {os.getpid()} uid {os.getuid()}"
                             " (SI_USER, not a fault)")  # fmt: skip
    assert f"sent by pid {os.getpid()} uid {os.getuid()}: not a fault" in Path(report["log"]).read_text()


@needs_gdb
def test_abort_is_si_tkill_from_the_process_itself(gdb_daemon: Any, cbin: Any, spawn: Any) -> None:
    """abort(): SI_TKILL sent by the process's own pid, no fault address, and the
    signature stays the frames' (abort is the program's own doing)."""
    target, report = crash_of(gdb_daemon, cbin, spawn, "abort")
    assert target.wait() == -signal.SIGABRT
    sig = report["signal"]
    assert (sig["name"], sig["si_code"], sig["si_code_name"]) == ("SIGABRT", -6, "SI_TKILL")
    assert (sig["sender_pid"], sig["sender_uid"], sig["self_sent"]) == (target.pid, os.getuid(), True)
    assert sig["fault_address"] is None
    assert report["signature_basis"].startswith("frames:")


@needs_gdb
def test_fpe_and_bus_faults_carry_their_addresses(gdb_daemon: Any, cbin: Any, spawn: Any) -> None:
    """Division by zero: FPE_INTDIV at the faulting instruction; reading past an
    empty file's mapping: BUS_ADRERR at the mapped address the target printed."""
    target, report = crash_of(gdb_daemon, cbin, spawn, "fpe")
    assert target.wait() == -signal.SIGFPE
    sig = report["signal"]
    crashed = next(t for t in report["threads"] if t["crashed"])
    assert crashed["frames"][0]["function"] == "divide_here"
    assert (sig["name"], sig["si_code_name"], sig["user_sent"]) == ("SIGFPE", "FPE_INTDIV", False)
    assert int(sig["fault_address"], 16) == int(crashed["frames"][0]["address"], 16)

    target = spawn(cbin("crash", "-pthread"), gdb_daemon.hook_command(), "crashd", "bus")
    assert target.readline() == "hook=0\n"
    target.release()
    address = target.readline().strip().removeprefix("address=")
    assert target.wait() == -signal.SIGBUS
    sig = _report(gdb_daemon, target)["signal"]
    assert (sig["name"], sig["si_code_name"], sig["sender_pid"]) == ("SIGBUS", "BUS_ADRERR", None)
    assert sig["fault_address"] == address
