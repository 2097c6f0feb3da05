"""Locals and memory are root's (docs/design.md, "Security model"): a ``socket_group``
member gets a crash report without gdb's ``bt full`` text (arguments and
locals) nor a trace's last lines, through every read-only operation and every
file it may read; root gets all of it.

A real crash (tests/c/secret_crash.c: a password in a local array and in an
argument) under the watch and the gdb tracer of a real tracerd whose
socket_group is nogroup; tracerctl run by uid nobody, gid nogroup, with
tracerd's modules loaded before it drops root (the venv may live where nobody
cannot read)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import have
from tracerd.crash import redact
from tracerd.crash.report import CrashReport, Thread
from tracerd.ctl.crashview import render_crash

CANARY = "hunter2-canary-7f3a"  # tests/c/secret_crash.c's password
AS_NOBODY = "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
TRACERCTL = (
    "import locale, os, sys\n"
    "import tracerd.ctl.main, tracerd.ctl.crashview, tracerd.crash.inventory, tracerd.crash.redact\n"
    + AS_NOBODY
    + "sys.exit(tracerd.ctl.main.main(sys.argv[1:]))\n"
)
# every file under the directories given that nobody may open: its path, and SECRET if it holds the canary
READABLE = (
    "import os, sys\n"
    + AS_NOBODY
    + "needle = sys.argv[1].encode()\n"
    "for top in sys.argv[2:]:\n"
    "    for directory, _, names in os.walk(top):\n"
    "        for name in names:\n"
    "            path = os.path.join(directory, name)\n"
    "            try:\n"
    "                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)\n"
    "            except OSError:\n"
    "                continue\n"
    "            with os.fdopen(fd, 'rb') as handle:\n"
    "                try:\n"
    "                    data = handle.read()\n"
    "                except OSError:\n"
    "                    continue\n"
    "            print(('SECRET ' if needle in data else 'read ') + path)\n"
)


def as_nobody(code: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60,
                          check=False, cwd="/")  # fmt: skip


@pytest.mark.skipif(not have("gdb") or os.geteuid() != 0, reason="needs gdb, and root to switch to uid nobody")
@pytest.mark.parametrize("tracer", ["watch", "gdb"])
def test_group_member_gets_no_locals_root_gets_them(
    daemon_factory: Any, cbin: Any, spawn: Any, public_dir: Path, tracer: str
) -> None:
    """Root's `crash ID` has the password (bt full's locals and arguments); the
    group member's `crash ID` (--json and text, --full too), `crashes`, `show`
    and `status` answer, without it anywhere, and say what was withheld; no
    file the member may open holds it."""
    rules = f'socket_group = "nogroup"\n[[rule]]\nprocess = "secretd"\ntracer = "{tracer}"\n'
    daemon = daemon_factory(rules, socket_path=public_dir / "tracerd.sock", data_dir=public_dir)
    target = spawn(cbin("secret_crash"), daemon.hook_command(), "secretd")
    assert target.readline() == "hook=0\n"
    assert daemon.session(target.pid)["tracer"] == tracer
    target.release()
    assert target.wait() == -signal.SIGSEGV
    crash_id = daemon.wait_session(target.pid, "crashed")["crash"]
    assert crash_id, daemon.stderr()[-2000:]

    root_json = daemon.ctl("--json", "crash", crash_id, check=True).stdout
    report = json.loads(root_json)["crash"]
    assert "redacted" not in report
    crashed = next(thread for thread in report["threads"] if thread["crashed"])
    assert f'password = "{CANARY}"' in crashed["text"]  # main's local
    assert CANARY in daemon.ctl("crash", crash_id, check=True).stdout
    assert CANARY in Path(report["log"]).read_text()  # root's files have it: not readable by the group, below

    sock = ["--socket", str(daemon.socket)]
    member_json = as_nobody(TRACERCTL, *sock, "--json", "crash", crash_id)
    assert member_json.returncode == 0, member_json.stderr
    assert CANARY not in member_json.stdout
    shown = json.loads(member_json.stdout)["crash"]
    assert shown["redacted"] == {"reason": redact.REASON, "withheld": list(redact.WITHHELD.values())}
    assert [frame["function"] for frame in next(t for t in shown["threads"] if t["crashed"])["frames"]][:2] == [
        "check_password", "main"]  # fmt: skip
    assert shown["registers"] == report["registers"]
    for args in (["crash", crash_id], ["crash", crash_id, "--full"], ["--json", "crashes"],
                 ["--json", "show", str(target.pid)], ["--json", "status"]):  # fmt: skip
        result = as_nobody(TRACERCTL, *sock, *args)
        assert result.returncode == 0, (args, result.stderr)
        assert CANARY not in result.stdout + result.stderr, args
        assert "hunter2" not in result.stdout, args
    text = as_nobody(TRACERCTL, *sock, "crash", crash_id).stdout
    assert [line for line in text.splitlines() if line.startswith("redacted ")] == [
        "redacted bt full (arguments and locals); the trace's last lines (call arguments, buffers) withheld:"
        f" {redact.REASON}; root sees them"]  # fmt: skip
    assert "check_password" in text

    files = as_nobody(READABLE, CANARY, str(public_dir), str(daemon.root))
    assert files.returncode == 0, files.stderr
    assert "SECRET" not in files.stdout, files.stdout


def test_every_report_field_is_kept_or_withheld() -> None:
    """A field added to CrashReport is root's until redact lists it: the group's view
    keeps exactly KEPT, threads without their text, and withholds the rest."""
    fields = {field.name for field in dataclasses.fields(CrashReport)} - {"core_source"}
    fields |= {"signature", "signature_basis", "top", "stored"}  # to_json's and the store's own
    assert fields == redact.KEPT | {"trace"}
    assert {field.name for field in dataclasses.fields(Thread)} == redact.THREAD_KEPT | {"text"}


def test_group_view_of_a_strace_report_and_of_unknown_fields() -> None:
    """A strace report's trace lines are memory too (read buffers); a key redact does not
    know is left out; the text view says what was withheld and shows the frames instead."""
    report: dict[str, Any] = {
        "id": "x", "tracer": "strace", "trace": [f'read(3, "AUTH {CANARY}", 64) = 24'], "future_dump": CANARY,
        "threads": [{"id": 1, "tid": 5, "name": "smtpd", "crashed": True, "text": f"password = {CANARY}",
                     "locals": CANARY, "frames": [{"level": 0, "function": "f", "file": "f.c", "line": 3,
                                                   "object": None, "address": "0x1", "args": CANARY}]}],
    }  # fmt: skip
    shown = redact.for_group(report)
    assert CANARY not in json.dumps(shown)
    assert "trace" not in shown
    assert shown["threads"][0]["frames"] == [{"level": 0, "function": "f", "file": "f.c", "line": 3, "object": None,
                                              "address": "0x1"}]  # fmt: skip
    assert report["trace"]  # the caller's copy is untouched
    assert report["threads"][0]["text"]
    text = render_crash(shown)
    assert CANARY not in text
    assert "#0   0x1 in f at f.c:3" in text
    assert "redacted bt full (arguments and locals)" in text
    assert "redacted" not in render_crash(report)
