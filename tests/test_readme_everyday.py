"""README's "Everyday use": its commands, run in the order it gives them, against a real
tracerd with a live and a crashed process (the quick start's commands are
tests/test_quickstart.py's; `tracerctl gdb` needs a terminal: tests/test_interactive.py
drives it through one)."""

from __future__ import annotations

import shlex
import signal
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import have

README = Path(__file__).resolve().parent.parent / "README.md"
pytestmark = pytest.mark.skipif(not have("gdb"), reason="the watch tracer takes its backtrace with gdb")


def everyday_commands() -> list[str]:
    """The indented `tracerctl` lines of README's "## Everyday use", comments cut."""
    section = README.read_text().split("\n## Everyday use\n", 1)[1].split("\n## ", 1)[0]
    return [line.split("#", 1)[0].strip() for line in section.splitlines()
            if line.startswith("    tracerctl ")]  # fmt: skip


def test_everyday_use_as_written(daemon_factory: Any, cbin: Any, spawn: Any, tmp_path: Path) -> None:
    commands = everyday_commands()
    assert [c.split()[1] for c in commands] == ["status", "show", "crashes", "crash", "where", "gdb", "gdb",
                                                "triage", "bugreport"]  # fmt: skip
    daemon = daemon_factory('[[rule]]\nprocess = "smtpd"\ntracer = "watch"\n')
    exe = cbin("crash", "-pthread")
    live = spawn(exe, daemon.hook_command(), "smtpd", "wait")
    assert live.readline() == "hook=0\n"
    live.release()
    assert live.readline() == "waiting\n"
    dead = spawn(exe, daemon.hook_command(), "smtpd", "segv")
    assert dead.readline() == "hook=0\n"
    dead.release()
    assert dead.wait(timeout=60) == -signal.SIGSEGV
    crash_id = daemon.wait_session(dead.pid, "crashed")["crash"]
    mail_log = tmp_path / "mail.log"
    mail_log.write_text(f"Dec  5 10:00:00 mx postfix/master[1]: warning: process /usr/lib/postfix/sbin/smtpd"
                        f" pid {dead.pid} killed by signal 11\n")  # fmt: skip
    words = {"PID": str(live.pid), "ID": crash_id}
    expected = {"status": str(live.pid), "show": "smtpd", "crashes": "level_one", "crash": "SIGSEGV",
                "where": "main", "triage": str(dead.pid), "bugreport": "bug report written"}  # fmt: skip
    for command in commands:
        argv = [words.get(word, word) for word in shlex.split(command)][1:]
        if argv[0] == "gdb":
            continue
        if argv[0] == "triage":  # the mail log: a file of the test's, not the system's
            argv.append(str(mail_log))
        if argv[0] == "bugreport":
            argv += ["-o", str(tmp_path / "bug.tar.gz"), "--log", str(mail_log)]
        result = daemon.ctl(*argv)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        assert expected[argv[0]] in result.stdout, (command, result.stdout)
    with tarfile.open(tmp_path / "bug.tar.gz") as bundle:
        text = "".join(bundle.extractfile(m).read().decode(errors="replace")  # type: ignore[union-attr]
                       for m in bundle.getmembers() if m.isfile())  # fmt: skip
    assert "level_one" in text, "the bundle lacks the crash report"
