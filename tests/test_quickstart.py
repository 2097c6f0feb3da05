"""README's "Quick start", run as written, in its order, from a fresh clone:
`make install`, `tracerd &` (no systemd runs here: the README's alternative
to `systemctl enable --now tracerd`), `tracerctl postfix enable smtpd` (with
`-c DIR`: the private Postfix instance stands in for /etc/postfix), a crash,
`tracerctl crashes` and `tracerctl crash ID`.

It installs into the real system paths, so it runs only as root, only when no
tracerd is installed or running here, and it reverses everything in a
finally: tracerd stopped, `make uninstall`, and tracerd's data directories
(/run/tracerd, /var/log/tracerd, /var/lib/tracerd) removed when it created them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import have, proc_state
from tests.postfix_instance import PostfixInstance
from tests.test_postfix_e2e import Client, smtpd_generation, wait_for, wait_idle

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
QUICK_START = [
    "make install",
    "systemctl enable --now tracerd",
    "tracerctl postfix enable smtpd",
    "tracerctl crashes",
    "tracerctl crash ID",
]
# what a root login shell finds; /usr/local/sbin first, as on Debian
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INSTALLED = [
    Path("/opt/tracerd"),
    Path("/usr/local/sbin/tracerd"),
    Path("/usr/local/bin/tracerctl"),
    Path("/etc/tracerd"),
]
DATA_DIRS = [Path("/run/tracerd"), Path("/var/log/tracerd"), Path("/var/lib/tracerd")]
CRASH_ID = re.compile(r"\b\d{8}T\d{6}Z-[0-9a-f]{8}-\d+\b")


def quick_start_commands() -> list[str]:
    """The commands of README's "## Quick start" section: its indented code lines, in order."""
    section = README.read_text().split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in section.splitlines() if line.startswith("    ") and line.strip()]


def test_readme_quick_start_is_first_and_in_order() -> None:
    """The quick start is README's first section and holds exactly the five commands, in order,
    with `tracerd &` named as the way without systemd."""
    text = README.read_text()
    assert re.findall(r"^## .*$", text, flags=re.MULTILINE)[0] == "## Quick start"
    assert quick_start_commands() == QUICK_START
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    assert "`tracerd &`" in section


def run(argv: list[str], cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=cwd,
        env={"PATH": PATH, "LANG": "C.UTF-8"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def shell(command: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """One README command as a root shell runs it (no shell syntax in them: argv split on blanks)."""
    return run(command.split(), cwd=cwd, timeout=timeout)


@pytest.mark.slow
@pytest.mark.skipif(not (have("strace") and have("git")), reason="strace and git are needed")
def test_quick_start_as_written(postfix: PostfixInstance) -> None:
    """Each quick-start command succeeds in order, run by name from PATH: the install puts the
    commands where the README says, the daemon starts with the installed config, `postfix enable`
    points debugger_command at /usr/local/sbin/pftrace-hook, a new smtpd is traced (the installed
    example config's smtpd rule: strace), its crash is listed by `tracerctl crashes` and shown by
    `tracerctl crash ID`; then everything is undone."""
    if os.geteuid() != 0:
        pytest.skip("the quick start is run as root")
    if any(path.exists() for path in INSTALLED) or Path("/run/tracerd/tracerd.sock").exists():
        pytest.skip("tracerd is installed or running on this machine already")
    assert quick_start_commands() == QUICK_START
    data_before = {path for path in DATA_DIRS if path.exists()}
    clone = Path(tempfile.mkdtemp(prefix="tracerd-quickstart-"))
    daemon: subprocess.Popen[bytes] | None = None
    daemon_log = clone / "tracerd.stderr"
    try:
        cloned = run(["git", "clone", "-q", str(ROOT), str(clone / "tracerd")], timeout=120)
        assert cloned.returncode == 0, cloned.stderr
        checkout = clone / "tracerd"

        # 1. make install
        result = shell(QUICK_START[0], cwd=checkout, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert shutil.which("tracerd", path=PATH) == "/usr/local/sbin/tracerd"
        assert shutil.which("tracerctl", path=PATH) == "/usr/local/bin/tracerctl"

        # 2. no systemd here: `tracerd &`
        with daemon_log.open("wb") as log:
            daemon = subprocess.Popen(["tracerd"], env={"PATH": PATH}, stdout=log, stderr=log, cwd="/")
        wait_for("tracerd to answer", lambda: run(["tracerctl", "status"]).returncode == 0)

        # 3. tracerctl postfix enable smtpd, on the private instance
        postfix.create()
        postfix.start()
        result = shell(f"{QUICK_START[2]} -c {postfix.config_dir}")
        assert result.returncode == 0, result.stdout + result.stderr
        debugger_command = postfix.postconf("-h", "debugger_command").strip()
        assert debugger_command == "/usr/local/sbin/pftrace-hook $process_name $process_id"
        smtpd_generation(postfix, debug=True)

        # a crash
        client = Client(postfix)
        session = wait_for("the smtpd traced", lambda: session_of(client.pid, "attached"))
        assert session["tracer"] == "strace"  # the installed tracerd.toml's rule
        client.quit()
        wait_idle(client.pid)
        os.kill(client.pid, signal.SIGSEGV)
        session = wait_for("the crash recorded", lambda: session_of(client.pid, "crashed"), timeout=60)
        postfix.wait_log(f"pid {client.pid} killed by signal 11")
        assert proc_state(client.pid) in ("", "Z")

        # 4. tracerctl crashes, then tracerctl crash ID with an ID it listed
        listed = shell(QUICK_START[3])
        assert listed.returncode == 0, listed.stderr
        ids = CRASH_ID.findall(listed.stdout)
        assert session["crash"] in ids, listed.stdout
        shown = shell(QUICK_START[4].replace("ID", session["crash"]))
        assert shown.returncode == 0, shown.stderr
        assert "smtpd" in shown.stdout
        assert "SIGSEGV" in shown.stdout
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        postfix.stop()
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            run(["make", "uninstall"], cwd=clone / "tracerd", timeout=300)
        for path in DATA_DIRS:
            if path not in data_before:
                shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(clone, ignore_errors=True)
    assert not any(path.exists() or path.is_symlink() for path in INSTALLED)


def session_of(pid: int, state: str) -> dict[str, Any] | None:
    """The session of pid from the installed tracerctl, once in that state."""
    result = run(["tracerctl", "--json", "status"])
    if result.returncode != 0:
        return None
    for session in json.loads(result.stdout)["sessions"]:
        if session["pid"] == pid and session["state"] == state:
            found: dict[str, Any] = session
            return found
    return None
