"""The strace/ltrace line parser and observer, on the tracers' real line shapes.

Every line below was printed by strace 6.1 or ltrace 0.7.3 on this machine
(``-f``, ``-t``, ``-tt``, ``-ttt``, ``-r``, ``-T``, ``-i``, ``-Y``, ``-X``,
``-k``); hypothesis then puts every mix of those prefixes before the endings
and checks that no syscall line's text passes for one.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracerd.crash.report import CrashReport
from tracerd.tracers.tracecrash import TAIL_LINES, TraceObserver
from tracerd.tracers.tracetext import EndLine, parse_end, parse_frame, parse_signal, siginfo, split_prefix

PID = 4242


@pytest.mark.parametrize(
    ("line", "dialect", "expected"),
    [
        ("+++ killed by SIGSEGV +++", "strace", EndLine(None, None, "SIGSEGV")),
        ("+++ exited with 3 +++", "strace", EndLine(None, 3, None)),
        ("04:42:07.706043 +++ killed by SIGSEGV +++", "strace", EndLine(None, None, "SIGSEGV")),
        ("04:42:08 +++ killed by SIGSEGV +++", "strace", EndLine(None, None, "SIGSEGV")),
        ("1795927328.524609 +++ exited with 0 +++", "strace", EndLine(None, 0, None)),
        ("1795927422.518504768 +++ killed by SIGSEGV +++", "strace", EndLine(None, None, "SIGSEGV")),
        ("     0.000174 +++ killed by SIGSEGV +++", "strace", EndLine(None, None, "SIGSEGV")),
        ("[????????????????] +++ killed by SIGSEGV +++", "strace", EndLine(None, None, "SIGSEGV")),
        ("04:42:10.159798 [????????????????] +++ exited with 7 +++", "strace", EndLine(None, 7, None)),
        ("04:43:41.187652 (+     0.000242) +++ killed by SIGSEGV +++", "strace", EndLine(None, None, "SIGSEGV")),
        ("[pid 16172] 04:42:15.656226 +++ killed by SIGSEGV +++", "strace", EndLine(16172, None, "SIGSEGV")),
        ("[pid  1234] +++ exited with 5 +++", "strace", EndLine(1234, 5, None)),
        ("[pid 19095<crash>] +++ killed by SIGSEGV +++", "strace", EndLine(19095, None, "SIGSEGV")),
        ("+++ killed by SIGSEGV (core dumped) +++", "strace", EndLine(None, None, "SIGSEGV", True)),
        ("+++ exited (status 3) +++", "ltrace", EndLine(None, 3, None)),
        ("[pid 17493] 04:42:51.605527 [0xffffffffffffffff] +++ killed by SIGSEGV +++", "ltrace",
         EndLine(17493, None, "SIGSEGV")),
        ("  0.000175 +++ killed by SIGABRT +++", "ltrace", EndLine(None, None, "SIGABRT")),
        ("[0xffffffffffffffff] +++ exited (status 7) +++", "ltrace", EndLine(None, 7, None)),
    ],
)  # fmt: skip
def test_endings_under_every_output_option(line: str, dialect: str, expected: EndLine) -> None:
    """The task's end is read whatever fields -f, -t/-tt/-ttt, -r, -i, -Y put before it."""
    assert parse_end(line, dialect) == expected


@pytest.mark.parametrize(
    ("line", "dialect"),
    [
        ('write(1, "+++ exited with 0 +++", 21)  = 21', "strace"),
        ('04:42:07.396811 write(2, "x\\n+++ killed by SIGSEGV +++", 27) = 27', "strace"),
        ("+++ exited with 3 +++", "ltrace"),  # strace's wording is not ltrace's
        ("+++ exited (status 3) +++", "strace"),
        ("[pid 12] <... read resumed>+++ killed by SIGSEGV +++", "strace"),
        ("+++ superseded by execve in pid 42 +++", "strace"),
        ("strace: Process 15457 attached", "strace"),
    ],
)
def test_lines_that_are_not_endings(line: str, dialect: str) -> None:
    """A string argument, the other tracer's wording or exec's line never end a session."""
    assert parse_end(line, dialect) is None


pid_field = st.integers(1, 4194304).map(lambda n: f"[pid {n:>5}]")
clock = st.tuples(st.integers(0, 23), st.integers(0, 59), st.integers(0, 59))
time_field = st.one_of(
    clock.map(lambda t: f"{t[0]:02d}:{t[1]:02d}:{t[2]:02d}"),
    st.tuples(clock, st.integers(0, 999999)).map(lambda t: f"{t[0][0]:02d}:{t[0][1]:02d}:{t[0][2]:02d}.{t[1]:06d}"),
    st.tuples(st.integers(0, 2**33), st.integers(0, 999999999)).map(lambda t: f"{t[0]}.{t[1]:06d}"),
    st.integers(0, 10**6).map(lambda n: f"{n / 1000:>13.6f}"),
)
relative = st.integers(0, 10**6).map(lambda n: f"(+ {n / 1000:>12.6f})")
ip_field = st.one_of(
    st.integers(0, 2**48).map(lambda n: f"[{n:016x}]"),
    st.integers(0, 2**64 - 1).map(lambda n: f"[{n:#x}]"),
    st.just("[????????????????]"),
)


@st.composite
def prefixes(draw: st.DrawFn) -> tuple[str, int | None]:
    pid = draw(st.none() | pid_field)
    parts = [pid] if pid else []
    if draw(st.booleans()):
        parts.append(draw(time_field))
        if draw(st.booleans()):
            parts.append(draw(relative))
    if draw(st.booleans()):
        parts.append(draw(ip_field))
    text = "".join(part + draw(st.sampled_from([" ", "  "])) for part in parts)
    return text, (int(pid[5:-1]) if pid else None)


@given(prefixes(), st.integers(0, 255) | st.sampled_from(["SIGSEGV", "SIGABRT", "SIGKILL", "SIGRTMIN"]))
def test_any_prefix_mix_before_an_ending(prefix: tuple[str, int | None], how: int | str) -> None:
    """Any mix of the option fields, in the tracers' order, before either tracer's ending."""
    text, pid = prefix
    code, sig = (how, None) if isinstance(how, int) else (None, how)
    strace = f"+++ exited with {how} +++" if code is not None else f"+++ killed by {how} +++"
    ltrace = f"+++ exited (status {how}) +++" if code is not None else f"+++ killed by {how} +++"
    assert parse_end(text + strace, "strace") == EndLine(pid, code, sig)
    assert parse_end(text + ltrace, "ltrace") == EndLine(pid, code, sig)


@given(prefixes(), st.text(min_size=0, max_size=60))
def test_no_syscall_line_passes_for_an_ending(prefix: tuple[str, int | None], argument: str) -> None:
    """Whatever a traced string holds, a syscall line (escaped as strace prints it) is no ending."""
    quoted = argument.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    for body in (f'write(1, "{quoted}", 3) = 3', f'write(1, "{quoted}"..., 300 <unfinished ...>'):
        assert parse_end(prefix[0] + body, "strace") is None
        assert parse_end(prefix[0] + body, "ltrace") is None
        assert parse_signal(prefix[0] + body) is None


def test_strace_signal_line_gives_siginfo() -> None:
    """si_code (number and name), si_addr as the fault address, -i's pc, the -f task."""
    line = parse_signal(
        "[pid 16172] 04:42:10.159449 [0000558a7b84e247] "
        "--- SIGSEGV {si_signo=SIGSEGV, si_code=SEGV_MAPERR, si_addr=NULL} ---"
    )
    assert line is not None
    assert line.pid == 16172
    info = siginfo(line)
    assert info["number"] == 11
    assert info["name"] == "SIGSEGV"
    assert info["si_code"] == 1
    assert info["si_code_name"] == "SEGV_MAPERR"
    assert info["fault_address"] == "0x0"
    assert info["instruction_pointer"] == "0x558a7b84e247"
    assert info["tracer_line"] == "--- SIGSEGV {si_signo=SIGSEGV, si_code=SEGV_MAPERR, si_addr=NULL} ---"


@pytest.mark.parametrize(
    ("text", "code", "name", "extra"),
    [
        ("--- SIGABRT {si_signo=SIGABRT, si_code=SI_TKILL, si_pid=16215, si_uid=0} ---", -6, "SI_TKILL",
         {"sender_pid": 16215, "sender_uid": 0, "fault_address": None, "user_sent": True, "self_sent": False}),
        ("--- SIGSEGV {si_signo=11, si_code=0x1, si_addr=NULL} ---", 1, "SEGV_MAPERR",
         {"fault_address": "0x0", "user_sent": False, "sender_pid": None}),
        ("--- SIGABRT {si_signo=6 /* SIGABRT */, si_code=0xfffffffa /* SI_TKILL */, si_pid=19493, si_uid=0} ---",
         -6, "SI_TKILL", {"sender_pid": 19493, "self_sent": True}),
        ("--- SIGSEGV {si_signo=SIGSEGV, si_code=SI_USER, si_pid=812, si_uid=0} ---", 0, "SI_USER",
         {"sender_pid": 812, "sender_uid": 0, "fault_address": None, "user_sent": True}),
        ("--- SIGBUS {si_signo=SIGBUS, si_code=BUS_ADRERR, si_addr=0x7F00AB} ---", 2, "BUS_ADRERR",
         {"fault_address": "0x7f00ab"}),
        ("--- SIGSYS {si_signo=SIGSYS, si_code=SYS_SECCOMP, si_call_addr=0x7f1, si_syscall=__NR_kill,"
         " si_arch=AUDIT_ARCH_X86_64} ---",
         1, "SYS_SECCOMP", {"syscall": "__NR_kill", "fault_address": None}),
        ("--- SIGRT_3 {si_signo=SIGRT_3, si_code=SI_QUEUE, si_pid=1, si_uid=0, si_value={int=1, ptr=0x1}} ---", -1,
         "SI_QUEUE", {"sender_pid": 1}),
        ("--- SIGSEGV {si_signo=SIGSEGV, si_code=123, si_addr=0x10} ---", 123, None, {"fault_address": None}),
        ("--- SIGSEGV {si_signo=SIGSEGV, si_code=SI_KERNEL, si_addr=NULL} ---", 0x80, "SI_KERNEL",
         {"fault_address": None, "user_sent": False, "sender_pid": None}),
    ],
)  # fmt: skip
def test_siginfo_of_every_style(text: str, code: int, name: str | None, extra: dict[str, object]) -> None:
    """Symbolic, raw (-X raw, negative codes as unsigned hex) and verbose (-X verbose) siginfo; a
    field only where the code's layout has it (no fault address for a kill, no sender for a fault)."""
    line = parse_signal(text)
    assert line is not None
    info = siginfo(line, own_pid=19493)
    assert info["si_code"] == code
    assert info["si_code_name"] == name
    for key, value in extra.items():
        assert info[key] == value


def test_ltrace_signal_line_has_no_siginfo() -> None:
    """ltrace's ``--- SIGSEGV (Segmentation fault) ---`` names the signal and nothing more."""
    line = parse_signal("[pid 16903] [0x562c0b75a247] --- SIGSEGV (Segmentation fault) ---")
    assert line is not None
    info = siginfo(line)
    assert (line.pid, info["name"], info["si_code"], info["fault_address"]) == (16903, "SIGSEGV", None, None)
    assert info["instruction_pointer"] == "0x562c0b75a247"


def test_stack_frames_of_strace_k() -> None:
    """strace -k's frames: object, function, offset, address; an unnamed one too."""
    frame = parse_frame(" > /tmp/strx/crash(crash_here+0xe) [0x1247]")
    assert frame is not None
    assert (frame.object, frame.function, frame.offset, frame.address) == ("/tmp/strx/crash", "crash_here", "0xe",
                                                                           "0x1247")  # fmt: skip
    frame = parse_frame(" > /usr/lib/x86_64-linux-gnu/libc.so.6() [0x2724a]")
    assert frame is not None
    assert (frame.function, frame.address) == (None, "0x2724a")
    assert parse_frame("read(0, ...) = 1") is None


def test_observer_ends_only_on_the_process_own_line() -> None:
    """Under -f a thread's or child's +++ line is noted, not the end; the process's own is."""
    observer = TraceObserver(PID, "strace")
    assert not observer.feed([f"[pid {PID + 1}] 04:00:00.000001 +++ exited with 5 +++"])
    assert observer.ending is None
    assert list(observer.others_ended) == [(PID + 1, "exited with 5")]
    assert observer.feed([f"[pid {PID}] 04:00:00.000002 +++ exited with 4 +++", "+++ exited with 9 +++"])
    assert observer.ending is not None
    assert (observer.ending.state, observer.ending.exit_code) == ("exited", 4)
    assert not observer.crashed()


def test_observer_report_of_a_thread_crash_under_f() -> None:
    """The crashing thread's signal line, the last 50 lines, no frames, and the notice saying so."""
    observer = TraceObserver(PID, "strace")
    observer.feed([f"[pid {PID}] 04:00:00.{n:06d} read(0, \"x\", 1) = 1" for n in range(70)])
    observer.feed([
        f"[pid {PID + 7}] 04:00:01.000001 --- SIGSEGV {{si_signo=SIGSEGV, si_code=SEGV_ACCERR, si_addr=0x1000}} ---",
        f"[pid {PID + 7}] 04:00:01.000002 +++ killed by SIGSEGV +++",
        "04:00:01.000003 +++ killed by SIGSEGV +++",
    ])  # fmt: skip
    assert observer.crashed()
    report = observer.report({"name": "x", "pid": PID}, "strace", "/log")
    assert isinstance(report, CrashReport)
    assert report.signal["si_code"] == 2
    assert report.signal["fault_address"] == "0x1000"
    assert report.signal["tid"] == PID + 7
    assert report.threads == []
    assert len(report.trace) == TAIL_LINES
    assert report.trace[-1] == "04:00:01.000003 +++ killed by SIGSEGV +++"
    assert report.notice is not None
    assert "strace gives no backtrace" in report.notice
    assert report.signature == report.signature  # stable, and computed without frames
    assert "notice: strace gives no backtrace" in report.readable()
    assert report.to_json()["trace"][-1].endswith("+++ killed by SIGSEGV +++")


def test_observer_without_the_delivery_line_says_so() -> None:
    """Killed by a signal strace never showed delivered (a thread without -f): no siginfo, said plainly."""
    observer = TraceObserver(PID, "strace")
    observer.feed(["+++ killed by SIGSEGV +++"])
    report = observer.report({"name": "x", "pid": PID}, "strace", None)
    assert report.signal["si_code"] is None
    assert report.signal["fault_address"] is None
    assert report.notice is not None
    assert "did not show the signal's delivery" in report.notice


def test_observer_takes_strace_k_frames() -> None:
    """With -k the frames printed after the signal line are the crashed thread's frames."""
    observer = TraceObserver(PID, "strace")
    observer.feed([
        "--- SIGSEGV {si_signo=SIGSEGV, si_code=SEGV_MAPERR, si_addr=NULL} ---",
        " > /tmp/crash(crash_here+0xe) [0x1247]",
        " > /tmp/crash(level_two+0x18) [0x1268]",
        " > /usr/lib/x86_64-linux-gnu/libc.so.6() [0x2724a]",
        "+++ killed by SIGSEGV +++",
    ])  # fmt: skip
    report = observer.report({"name": "x", "pid": PID}, "strace", None)
    assert [f.function for f in report.threads[0].frames] == ["crash_here", "level_two", None]
    assert report.top[:2] == ["crash_here", "level_two"]
    assert report.notice is not None
    assert "strace -k gave the frames" in report.notice


def test_split_prefix_keeps_the_body() -> None:
    """The prefix of the README's example rule (-f -tt) is removed, the body kept as printed."""
    assert split_prefix("[pid 7] 04:42:07.396811 read(0, \"x\", 1)         = 1") == (
        7, None, "read(0, \"x\", 1)         = 1",
    )  # fmt: skip


@given(st.text(max_size=300), st.sampled_from(["", "+++ ", "--- SIG", " > ", "[pid 1] ", "--- SIGSEGV {"]))
def test_any_text_parses_without_raising(text: str, lead: str) -> None:
    """Whatever a tracer (or a hostile target's escaped text) prints, the parser answers, never raises."""
    line = lead + text
    parse_end(line, "strace")
    parse_end(line, "ltrace")
    parse_frame(line)
    signal_line = parse_signal(line)
    if signal_line is not None:
        assert siginfo(signal_line, own_pid=1)["name"] == signal_line.name
    observer = TraceObserver(PID, "strace")
    observer.feed([line, "+++ killed by SIGSEGV +++"])
    assert observer.ending is not None
    if observer.crashed():  # the line itself may have been an ending
        report = observer.report({"name": "x", "pid": PID}, "strace", None)
        assert report.signal["name"] == observer.ending.signal
