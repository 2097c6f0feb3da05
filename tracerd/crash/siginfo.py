"""Fatal signals decoded from their siginfo, never guessed.

GENERIC and SPECIFIC name every Linux ``si_code`` of the fatal signals and the
generic ones (include/uapi/asm-generic/siginfo.h).  Which ``_sifields`` member
holds data follows the kernel's ``siginfo_layout()``: the sender for SI_USER and
the negative codes, the fault address for a kernel-raised SEGV/BUS/ILL/FPE/TRAP,
neither for SI_KERNEL, the system call for SIGSYS.  fields_to_read() says what
to ask gdb; decode() makes the report's ``signal`` (docs/design.md, "Files").

Security: pure functions over integers.  The sender's pid and uid are the
kernel's for SI_USER and SI_TKILL, but what the sender claimed for SI_QUEUE and
the other sigqueue codes: reported, never trusted for access.

Diagnostics: none raise; an unknown code gets a None name, an unreadable field
a None value.
"""

from __future__ import annotations

import re
import signal as signalmod
from typing import Any

# the signals whose default action dumps core: what a crash report is for, tracerd-wide
FATAL_SIGNALS = frozenset({"SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT", "SIGSYS", "SIGTRAP"})
SI_USER = 0
SI_KERNEL = 0x80
SI_QUEUE = -1
SI_TIMER = -2
SI_MESGQ = -3
SI_ASYNCIO = -4
SI_SIGIO = -5
SI_TKILL = -6
SI_DETHREAD = -7
SI_ASYNCNL = -60

GENERIC: dict[int, tuple[str, str]] = {
    SI_USER: ("SI_USER", "sent by kill()"),
    SI_KERNEL: ("SI_KERNEL", "sent by the kernel"),
    SI_QUEUE: ("SI_QUEUE", "sent by sigqueue()"),
    SI_TIMER: ("SI_TIMER", "a POSIX timer expired"),
    SI_MESGQ: ("SI_MESGQ", "a POSIX message queue changed state"),
    SI_ASYNCIO: ("SI_ASYNCIO", "asynchronous I/O completed"),
    SI_SIGIO: ("SI_SIGIO", "queued SIGIO"),
    SI_TKILL: ("SI_TKILL", "sent by tkill() or tgkill() (raise(), abort(), pthread_kill())"),
    SI_DETHREAD: ("SI_DETHREAD", "sent by execve() killing the other threads"),
    SI_ASYNCNL: ("SI_ASYNCNL", "asynchronous name lookup completed"),
}

# per signal: code -> (name, meaning), 1..N without gaps; past the kernel's NSIGxxx, no fault layout
SPECIFIC: dict[int, dict[int, tuple[str, str]]] = {
    signalmod.SIGILL: {
        1: ("ILL_ILLOPC", "illegal opcode"),
        2: ("ILL_ILLOPN", "illegal operand"),
        3: ("ILL_ILLADR", "illegal addressing mode"),
        4: ("ILL_ILLTRP", "illegal trap"),
        5: ("ILL_PRVOPC", "privileged opcode"),
        6: ("ILL_PRVREG", "privileged register"),
        7: ("ILL_COPROC", "coprocessor error"),
        8: ("ILL_BADSTK", "internal stack error"),
        9: ("ILL_BADIADDR", "unimplemented instruction address"),
        10: ("ILL_BREAK", "illegal break (ia64)"),
        11: ("ILL_BNDMOD", "bundle-update (modification) in progress (ia64)"),
    },
    signalmod.SIGFPE: {
        1: ("FPE_INTDIV", "integer divide by zero"),
        2: ("FPE_INTOVF", "integer overflow"),
        3: ("FPE_FLTDIV", "floating-point divide by zero"),
        4: ("FPE_FLTOVF", "floating-point overflow"),
        5: ("FPE_FLTUND", "floating-point underflow"),
        6: ("FPE_FLTRES", "floating-point inexact result"),
        7: ("FPE_FLTINV", "floating-point invalid operation"),
        8: ("FPE_FLTSUB", "subscript out of range"),
        9: ("FPE_DECOVF", "decimal overflow"),
        10: ("FPE_DECDIV", "decimal division by zero"),
        11: ("FPE_DECERR", "packed decimal error"),
        12: ("FPE_INVASC", "invalid ASCII digit"),
        13: ("FPE_INVDEC", "invalid decimal digit"),
        14: ("FPE_FLTUNK", "undiagnosed floating-point exception"),
        15: ("FPE_CONDTRAP", "trap on condition"),
    },
    signalmod.SIGSEGV: {
        1: ("SEGV_MAPERR", "address not mapped to object"),
        2: ("SEGV_ACCERR", "invalid permissions for mapped object"),
        3: ("SEGV_BNDERR", "failed address bound checks"),
        4: ("SEGV_PKUERR", "access denied by memory protection keys"),
        5: ("SEGV_ACCADI", "ADI not enabled for mapped object"),
        6: ("SEGV_ADIDERR", "disrupting MCD error"),
        7: ("SEGV_ADIPERR", "precise MCD exception"),
        8: ("SEGV_MTEAERR", "asynchronous ARM MTE error"),
        9: ("SEGV_MTESERR", "synchronous ARM MTE exception"),
        10: ("SEGV_CPERR", "control protection fault (shadow stack)"),
    },
    signalmod.SIGBUS: {
        1: ("BUS_ADRALN", "invalid address alignment"),
        2: ("BUS_ADRERR", "nonexistent physical address (e.g. past the end of a mapped file)"),
        3: ("BUS_OBJERR", "object-specific hardware error"),
        4: ("BUS_MCEERR_AR", "hardware memory error consumed on a machine check: action required"),
        5: ("BUS_MCEERR_AO", "hardware memory error detected in process but not consumed: action optional"),
    },
    signalmod.SIGTRAP: {
        1: ("TRAP_BRKPT", "process breakpoint"),
        2: ("TRAP_TRACE", "process trace trap"),
        3: ("TRAP_BRANCH", "process taken branch trap"),
        4: ("TRAP_HWBKPT", "hardware breakpoint or watchpoint"),
        5: ("TRAP_UNK", "undiagnosed trap"),
        6: ("TRAP_PERF", "perf event with sigtrap=1"),
    },
    signalmod.SIGSYS: {
        1: ("SYS_SECCOMP", "system call refused by a seccomp filter"),
        2: ("SYS_USER_DISPATCH", "system call intercepted by syscall user dispatch"),
    },
}

FAULT_SIGNALS = frozenset({signalmod.SIGSEGV, signalmod.SIGBUS, signalmod.SIGILL, signalmod.SIGFPE, signalmod.SIGTRAP})
NO_SENDER = frozenset({SI_TIMER, SI_SIGIO})  # negative codes whose layout is not _kill/_rt

# $_siginfo fields gdb evaluates, as integers whatever the pointer size.
SIGNO = "$_siginfo.si_signo"
CODE = "$_siginfo.si_code"
FIELDS = {
    "sender_pid": "$_siginfo._sifields._kill.si_pid",
    "sender_uid": "$_siginfo._sifields._kill.si_uid",
    "fault_address": "(unsigned long) $_siginfo._sifields._sigfault.si_addr",
    "syscall": "$_siginfo._sifields._sigsys._syscall",
}

_INT = re.compile(r"-?\d+")


def code_info(signo: int, si_code: int) -> tuple[str, str] | None:
    """(name, meaning) of ``si_code`` for signal ``signo``, or None if Linux defines none."""
    if 0 < si_code < SI_KERNEL:
        return SPECIFIC.get(signo, {}).get(si_code)
    return GENERIC.get(si_code)


def user_sent(si_code: int) -> bool:
    """Sent by a process (kill, tgkill, sigqueue...), not raised by the kernel: si_code <= 0."""
    return si_code <= SI_USER


def has_sender(si_code: int) -> bool:
    """Does the siginfo name a sending pid and uid (the _kill/_rt layout)?"""
    return si_code == SI_USER or (si_code < 0 and si_code not in NO_SENDER)


def has_fault_address(signo: int, si_code: int) -> bool:
    """Does the siginfo carry a fault address (a kernel-raised SEGV/BUS/ILL/FPE/TRAP)?"""
    return signo in FAULT_SIGNALS and si_code in SPECIFIC[signo]


def has_syscall(signo: int, si_code: int) -> bool:
    return signo == signalmod.SIGSYS and si_code in SPECIFIC[signalmod.SIGSYS]


def fields_to_read(signo: int, si_code: int) -> dict[str, str]:
    """The decoded key -> the ``$_siginfo`` expression gdb must evaluate for it."""
    keys: list[str] = []
    if has_sender(si_code):
        keys += ["sender_pid", "sender_uid"]
    if has_fault_address(signo, si_code):
        keys.append("fault_address")
    if has_syscall(signo, si_code):
        keys.append("syscall")
    return {key: FIELDS[key] for key in keys}


def parse_int(text: str | None) -> int | None:
    """gdb's printed integer (``11``, ``-6``, ``4294967295``) as an int; None for anything else."""
    if text is None:
        return None
    match = _INT.fullmatch(text.strip())
    return int(match.group()) if match else None


def signal_name(signo: int) -> str:
    try:
        return signalmod.Signals(signo).name
    except ValueError:
        return f"SIG{signo}"


def decode(
    signo: int,
    si_code: int | None,
    fields: dict[str, int | None] | None = None,
    *,
    own_pid: int | None = None,
) -> dict[str, Any]:
    """The report's ``signal``; ``fields`` as fields_to_read() asked (missing or None: unreadable).
    ``own_pid``, the pid as the process knows itself, tells raise()/abort() (``self_sent``) from a kill."""
    fields = fields or {}
    out: dict[str, Any] = {
        "number": signo,
        "name": signal_name(signo),
        "si_code": si_code,
        "si_code_name": None,
        "si_code_meaning": None,
        "user_sent": None,
        "sender_pid": None,
        "sender_uid": None,
        "self_sent": None,
        "fault_address": None,
        "syscall": None,
    }
    if si_code is None:
        return out
    info = code_info(signo, si_code)
    if info:
        out["si_code_name"], out["si_code_meaning"] = info
    out["user_sent"] = user_sent(si_code)
    if has_sender(si_code):
        out["sender_pid"] = fields.get("sender_pid")
        out["sender_uid"] = fields.get("sender_uid")
        if out["sender_pid"] is not None and own_pid is not None:
            out["self_sent"] = out["sender_pid"] == own_pid
    address = fields.get("fault_address")
    if has_fault_address(signo, si_code) and address is not None:
        out["fault_address"] = hex(address & 0xFFFF_FFFF_FFFF_FFFF)
    if has_syscall(signo, si_code):
        out["syscall"] = fields.get("syscall")
    return out


def sent_by_another(signal: dict[str, Any]) -> bool:
    """Was the signal sent by another process (a ``kill -SEGV``), so its frames are no bug?"""
    return bool(signal.get("user_sent")) and signal.get("sender_pid") is not None and signal.get("self_sent") is False


def describe(signal: dict[str, Any]) -> str:
    """One line for humans: ``SEGV_MAPERR (address not mapped to object) at 0x0``."""
    code = signal.get("si_code")
    if code is None:
        return "si_code unknown"
    text = f"si_code {code}"
    if signal.get("si_code_name"):
        text += f" {signal['si_code_name']} ({signal.get('si_code_meaning')})"
    if signal.get("fault_address"):
        text += f", fault address {signal['fault_address']}"
    if signal.get("user_sent"):
        pid, uid = signal.get("sender_pid"), signal.get("sender_uid")
        if signal.get("self_sent"):
            text += f", sent by the process itself (pid {pid})"
        elif pid is not None:
            text += f", sent by pid {pid} uid {uid}"
    if signal.get("syscall") is not None:
        text += f", system call {signal['syscall']}"
    return text
