"""tracerctl bugreport --anonymize on real strace and ltrace output.

A target (tests/c/mailtrace.c) pushes planted canaries through system
calls (a message body, addresses after ``\\0``, ``\\t``, ``\\n`` and ``\\"``,
IPv4 and IPv6 addresses, ``key=value``, datagrams to documentation addresses)
and crashes under a real tracerd with the README's strace rule (and ltrace).
The crash report's trace tail holds them; the same trace lines are also given
as a mail log would hold them.  The plain bundle has every canary (the test
plants what it looks for); no member of the anonymized bundle has any canary
nor any part of one, while the syscall names, the lengths and the crash stay.
"""

from __future__ import annotations

import json
import re
import signal
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import have

ARGS = ["-f", "-tt", "-s", "256"]  # the README's strace rule
# what each tracer shows of them (ltrace stops a string at its \0 and shows no sockaddr)
PLANTED = ("canary-SUBJ-7f3a", "canary body 9c1e", "canary2@vmcanary", "canary3@hostcanary.example.net",
           "198.51.100.77", "2001:db8:cafe::17", "203.0.113.45", "canary6")  # fmt: skip
STRACE_ONLY = ("canary1@example.org", 'inet_addr("198.51.100.77")')
# every planted string, and the parts of each that would still give it away
PARTS = (
    "canary", "SUBJ", "7f3a", "9c1e", "Subject", "body", "example.org", "vmcanary", "hostcanary", "quoted.example",
    "angle.example", "203.0.113", "198.51.100", "2001:db8", "cafe::17", "db8:cafe", "log_client_address",
)  # fmt: skip


def members(path: Path) -> dict[str, str]:
    """Every member of a bundle, unpacked, by name."""
    with tarfile.open(path, "r:gz") as tar:
        found = {}
        for member in tar.getmembers():
            handle = tar.extractfile(member)
            assert handle is not None
            found[member.name] = handle.read().decode("utf-8", "replace")
        return found


def as_mail_log(trace_log: str, pid: int) -> str:
    """The session's trace lines as a syslog forwarding of them would put them in the mail log."""
    lines = [line for line in trace_log.splitlines() if "(" in line]
    return "".join(f"Nov 24 16:53:38 mx tracerd[1]: warning: mailtraced[{pid}]: {line}\n" for line in lines)


@pytest.mark.parametrize("tracer", ["strace", "ltrace"])
def test_anonymized_bundle_has_no_planted_string(
    daemon_factory: Any, cbin: Any, spawn: Any, tmp_path: Path, tracer: str
) -> None:
    """Every member of the --anonymize tar.gz, unpacked: no canary nor part of one;
    syscall names with <N bytes> in place of their strings, and the crash, are there."""
    if not have(tracer):
        pytest.skip(f"{tracer} is not installed")
    rule = f'[[rule]]\nprocess = "mailtraced"\ntracer = "{tracer}"\nargs = {json.dumps(ARGS)}\n'
    daemon = daemon_factory(rule)
    target = spawn(cbin("mailtrace"), daemon.hook_command(), "mailtraced")
    assert target.readline() == "hook=0\n"
    target.release()
    assert target.wait() == -signal.SIGSEGV
    session = daemon.wait_session(target.pid, "crashed")
    assert session["crash"]
    mail_log = tmp_path / "mail.log"
    mail_log.write_text(as_mail_log(Path(session["log"]).read_text(errors="replace"), target.pid))
    bundles = {"plain": tmp_path / "plain.tar.gz", "anonymized": tmp_path / "anonymized.tar.gz"}
    for how, output in bundles.items():
        flags = ["--anonymize"] if how == "anonymized" else []
        result = daemon.ctl("bugreport", "--state-dir", str(daemon.state_dir), "--log", str(mail_log),
                            "-o", str(output), *flags)  # fmt: skip
        assert result.returncode == 0, result.stderr
    plain = members(bundles["plain"])
    anonymized = members(bundles["anonymized"])
    assert len(anonymized) == len(plain) == 8
    everything = "\n".join(plain.values())
    for canary in PLANTED + (STRACE_ONLY if tracer == "strace" else ()):  # the report and the log really hold them
        assert everything.count(canary) >= 2, canary
    for name, text in anonymized.items():
        for part in PARTS:
            assert part not in text, (name, part, [line for line in text.splitlines() if part in line][:3])
    crashes = next(text for name, text in anonymized.items() if name.endswith("-crashes.txt"))
    triaged = next(text for name, text in anonymized.items() if name.endswith("-triage.txt"))
    assert "+++ killed by SIGSEGV +++" in crashes
    if tracer == "strace":
        for text in (crashes, triaged):
            assert "write(3, <47 bytes>, 47) = 47" in text
            assert "read(4, <23 bytes>, 256) = 23" in text  # key\0canary1@example.org
            assert "write(5, <18 bytes>, 18) = 18" in text  # S\tcanary2@vmcanary
            assert re.search(r"sendto\(6, <47 bytes>, 47, MSG_DONTWAIT, \{sa_family=AF_INET, .*"
                             r"sin_addr=inet_addr\(<13 bytes>\)\}, 16\) = 47", text)  # fmt: skip
            assert "inet_pton(AF_INET6, <17 bytes>, &sin6_addr)" in text
    else:
        assert re.search(r"write\(3, <47 bytes>, 47\)\s+= 47", crashes), crashes
