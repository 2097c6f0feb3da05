"""What strace and ltrace say, whatever their output options: the line parser.

A line is a prefix of option fields (``[pid N]`` of -f/-Y; the time of
-t/-tt/-ttt/-r; -i's instruction pointer) and a body.  Bodies read: a task's
ending (``+++ exited with 3 +++``, ``+++ killed by SIGSEGV (core dumped) +++``),
a signal's delivery (``--- SIGSEGV {si_signo=...} ---``) and a frame of strace
-k's stack (`` > /usr/bin/x(func+0x1e) [0x1247]``).

Security: the target chooses text only inside quoted strings, which the
tracers escape; a body must match whole after a prefix of option fields only,
so a string argument never passes for an ending.  Nothing here acts.

Diagnostics: a line that is none of these gives None; nothing raises.
"""

from __future__ import annotations

import re
import signal as signalmod
from dataclasses import dataclass

_PID = r"\[pid\s+(?P<pid>\d{1,10})(?:<[^\n]{0,64}?>)?\]"
_FIELD = (
    r"(?:\[pid\s+\d{1,10}(?:<[^\n]{0,64}?>)?\]"  # -f (and -Y)
    r"|\d{1,2}:\d{2}:\d{2}(?:\.\d{1,9})?"  # -t, -tt
    r"|\d{1,20}(?:\.\d{1,9})?"  # -ttt, -r
    r"|\(\+\s*\d{1,20}(?:\.\d{1,9})?\)"  # -r with -t
    r"|\[(?:0x)?[0-9a-fA-F]{1,16}\]|\[\?{1,16}\])"  # -i
)
_PREFIX = re.compile(rf"\s*(?:{_FIELD}\s+){{0,6}}")
_PID_FIELD = re.compile(_PID)
_IP_FIELD = re.compile(r"\[(?P<ip>(?:0x)?[0-9a-fA-F]{1,16})\]\s")

_KILLED = r"killed by (?P<signal>SIG[A-Z0-9_+]{1,12})(?P<core> \(core dumped\))?"
_STRACE_END = re.compile(rf"\+\+\+ (?:exited with (?P<code>\d{{1,3}})|{_KILLED}) \+\+\+")
_LTRACE_END = re.compile(rf"\+\+\+ (?:exited \(status (?P<code>\d{{1,3}})\)|{_KILLED}) \+\+\+")
ENDINGS = {"strace": _STRACE_END, "ltrace": _LTRACE_END}
_SIGNAL = re.compile(r"--- (?P<name>SIG[A-Z0-9_+]{1,12})(?: \{(?P<info>[^\n]*)\}| \((?P<text>[^\n]*)\))? ---")
_FRAME = re.compile(
    r" > (?P<object>[^\n]*?)\((?:(?P<function>[^\n]+)\+(?P<offset>0x[0-9a-f]+))?\) \[(?P<address>0x[0-9a-f]+)\]"
)
_COMMENT = re.compile(r"\s*/\*.*?\*/")

# si_code names (Linux uapi asm-generic/siginfo.h): the generic ones, then per signal
SI_GENERIC = {
    "SI_USER": 0, "SI_KERNEL": 0x80, "SI_QUEUE": -1, "SI_TIMER": -2, "SI_MESGQ": -3,
    "SI_ASYNCIO": -4, "SI_SIGIO": -5, "SI_TKILL": -6, "SI_DETHREAD": -7, "SI_ASYNCNL": -60,
}  # fmt: skip
SI_BY_SIGNAL = {
    "SIGILL": ("ILL_ILLOPC", "ILL_ILLOPN", "ILL_ILLADR", "ILL_ILLTRP", "ILL_PRVOPC", "ILL_PRVREG",
               "ILL_COPROC", "ILL_BADSTK", "ILL_BADIADDR"),
    "SIGFPE": ("FPE_INTDIV", "FPE_INTOVF", "FPE_FLTDIV", "FPE_FLTOVF", "FPE_FLTUND", "FPE_FLTRES",
               "FPE_FLTINV", "FPE_FLTSUB", "", "", "", "", "", "FPE_FLTUNK", "FPE_CONDTRAP"),
    "SIGSEGV": ("SEGV_MAPERR", "SEGV_ACCERR", "SEGV_BNDERR", "SEGV_PKUERR", "SEGV_ACCADI",
                "SEGV_ADIDERR", "SEGV_ADIPERR", "SEGV_MTEAERR", "SEGV_MTESERR", "SEGV_CPERR"),
    "SIGBUS": ("BUS_ADRALN", "BUS_ADRERR", "BUS_OBJERR", "BUS_MCEERR_AR", "BUS_MCEERR_AO"),
    "SIGTRAP": ("TRAP_BRKPT", "TRAP_TRACE", "TRAP_BRANCH", "TRAP_HWBKPT", "TRAP_UNK", "TRAP_PERF"),
    "SIGSYS": ("SYS_SECCOMP", "SYS_USER_DISPATCH"),
}  # fmt: skip
FAULT_SIGNALS = frozenset({"SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGTRAP"})
SI_CODES = {**SI_GENERIC}
for _names in SI_BY_SIGNAL.values():
    SI_CODES.update({name: number for number, name in enumerate(_names, 1) if name})


@dataclass(frozen=True)
class EndLine:
    """A task's end: exit code, or the signal that killed it."""

    pid: int | None  # None: no [pid N] prefix
    code: int | None
    signal: str | None
    core_dumped: bool = False


@dataclass(frozen=True)
class SignalLine:
    """A signal's delivery to a task, with what the tracer printed of its siginfo."""

    pid: int | None
    name: str
    fields: dict[str, str]  # strace's siginfo fields, comments dropped; {} for ltrace
    ip: str | None  # -i's instruction pointer at the delivery
    text: str  # the body, as printed


@dataclass(frozen=True)
class StackFrame:
    """One frame of strace -k; address is an offset into object."""

    object: str | None
    function: str | None
    offset: str | None
    address: str


def split_prefix(line: str) -> tuple[int | None, str | None, str]:
    """``(pid, ip, body)``: the line without its output-option fields."""
    match = _PREFIX.match(line)
    prefix = match.group(0) if match else ""
    body = line[len(prefix) :]
    pid_match = _PID_FIELD.search(prefix)
    ip_match = _IP_FIELD.search(prefix)
    ip = ip_match.group("ip") if ip_match else None
    return (int(pid_match.group("pid")) if pid_match else None), _hex(ip), body


def parse_end(line: str, dialect: str) -> EndLine | None:
    """The task ending ``line`` reports (``dialect``: strace or ltrace)."""
    if "+++" not in line:
        return None
    pid, _ip, body = split_prefix(line)
    match = ENDINGS[dialect].fullmatch(body.rstrip())
    if match is None:
        return None
    code = match.group("code")
    return EndLine(pid, int(code) if code is not None else None, match.group("signal"), bool(match.group("core")))


def parse_signal(line: str) -> SignalLine | None:
    if "--- SIG" not in line:
        return None
    pid, ip, body = split_prefix(line)
    body = body.rstrip()
    match = _SIGNAL.fullmatch(body)
    if match is None:
        return None
    fields = _fields(match.group("info")) if match.group("info") is not None else {}
    return SignalLine(pid, match.group("name"), fields, ip, body)


def parse_frame(line: str) -> StackFrame | None:
    if not line.startswith(" > "):
        return None
    match = _FRAME.fullmatch(line.rstrip())
    if match is None:
        return None
    return StackFrame(
        match.group("object") or None, match.group("function"), match.group("offset"), match.group("address")
    )


def _fields(info: str) -> dict[str, str]:
    """``si_signo=SIGSEGV, si_code=0x1 /* SEGV_MAPERR */, ...`` as a dict; braces nest."""
    fields: dict[str, str] = {}
    depth, start = 0, 0
    parts = []
    for index, char in enumerate(info):
        if char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(info[start:index])
            start = index + 1
    parts.append(info[start:])
    for part in parts:
        key, sep, value = part.strip().partition("=")
        if sep and key.isidentifier():
            fields[key] = value.strip()
    return fields


def _hex(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return hex(int(text, 16))
    except ValueError:
        return None


def _number(text: str) -> int | None:
    """A C integer as strace prints it (``1``, ``0x1``, ``0xfffffffa`` = -6, ``-6``)."""
    try:
        value = int(text, 0)
    except ValueError:
        return None  # also "" (absent) and names (__NR_kill)
    if text.lower().startswith("0x") and 1 << 31 <= value < 1 << 32:
        value -= 1 << 32  # an int printed as unsigned hex (-X raw)
    return value


def siginfo(line: SignalLine, own_pid: int | None = None) -> dict[str, object]:
    """The report's ``signal`` dict (docs/design.md, "Files"), as far as the line holds it; a field
    absent or not of its si_code's layout is None; self_sent: the sender is ``own_pid``."""
    info: dict[str, object] = {
        "number": signal_number(line.name), "name": line.name, "si_code": None, "si_code_name": None,
        "si_code_meaning": None, "user_sent": None, "sender_pid": None, "sender_uid": None, "self_sent": None,
        "fault_address": None, "syscall": None,
    }  # fmt: skip
    raw = {key: _COMMENT.sub("", value).strip() for key, value in line.fields.items()}
    code_text = raw.get("si_code")
    if code_text is not None:
        code = _number(code_text)
        name = _comment(line.fields["si_code"]) or (code_text if code is None else None)
        if code is None and name is not None:
            code = SI_CODES.get(name)
        if name is None and code is not None:
            name = si_code_name(line.name, code)
        info["si_code"], info["si_code_name"] = code, name
        if code is not None:
            _by_code(info, line.name, code, raw, own_pid)
    if line.ip is not None:
        info["instruction_pointer"] = line.ip
    info["tracer_line"] = line.text
    return info


def _by_code(info: dict[str, object], signal_name: str, code: int, raw: dict[str, str], own_pid: int | None) -> None:
    """The fields of ``code``'s siginfo layout (the kernel's siginfo_layout())."""
    info["user_sent"] = code <= SI_GENERIC["SI_USER"]
    if code == SI_GENERIC["SI_USER"] or (code < 0 and code not in (SI_GENERIC["SI_TIMER"], SI_GENERIC["SI_SIGIO"])):
        pid, uid = _number(raw.get("si_pid", "")), _number(raw.get("si_uid", ""))
        info["sender_pid"], info["sender_uid"] = pid, uid
        if pid is not None and own_pid is not None:
            info["self_sent"] = pid == own_pid
    specific = SI_BY_SIGNAL.get(signal_name, ())
    if signal_name in FAULT_SIGNALS and 1 <= code <= len(specific) and "si_addr" in raw:
        address = raw["si_addr"]
        info["fault_address"] = "0x0" if address == "NULL" else _hex(address) or address
    if signal_name == "SIGSYS" and 1 <= code <= len(specific) and "si_syscall" in raw:
        number = _number(raw["si_syscall"])
        info["syscall"] = number if number is not None else raw["si_syscall"]


def _comment(value: str) -> str | None:
    match = re.search(r"/\*\s*([A-Z][A-Z0-9_]*)\s*\*/", value)
    return match.group(1) if match else None


def si_code_name(signal_name: str, code: int) -> str | None:
    for name, number in SI_GENERIC.items():
        if number == code:
            return name
    names = SI_BY_SIGNAL.get(signal_name, ())
    if 1 <= code <= len(names) and names[code - 1]:
        return names[code - 1]
    return None


def signal_number(name: str) -> int | None:
    try:
        return int(signalmod.Signals[name])
    except KeyError:
        return None
