"""README's "Quick start", run as written, in its order, from a fresh clone:
`make install`, `tracerd &` (no systemd runs here: the README's alternative
to `systemctl enable --now tracerd`), `tracerctl postfix enable smtpd` (with
`-c DIR`: the private Postfix instance stands in for /etc/postfix), a crash,
`tracerctl crashes` and `tracerctl crash ID`.

Hermetic: it never touches the system's tracerd, installed or not, nor its
paths.  `make install` gets a private PREFIX, SYSCONFDIR and OPTDIR in a
directory of its own, the commands are found by name on a PATH that starts
there, and tracerd runs with the config install put there, with only the
system paths it names (socket, log_dir, state_dir, the syslog and journal
sockets) moved under that directory (``TRACERD_CONFIG``; tracerctl by
``TRACERD_SOCKET``).  The syslog socket there is a receiver of the test's:
the mail log, which must hold no system call lines.  The crash report must
have frames (README: the installed config traces with the watcher).
Everything is removed in a finally.
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

from tests.conftest import SYSTEM_SOCKET, SyslogReceiver, have, proc_state, system_changes
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
CRASH_ID = re.compile(r"\b\d{8}T\d{6}Z-[0-9a-f]{8}-\d+\b")
# a system path as the value of a key, on a line of its own (not a comment): moved under the test's root
SYSTEM_VALUE = re.compile(r'^(\s*[A-Za-z_]+\s*=\s*")(/(?:run|var|dev|etc)/[^"]*)(")', re.MULTILINE)
# what strace/ltrace print for a system call, a signal or an exit: none of it belongs in the mail log
SYSCALL_LINE = re.compile(r"\b[a-z_][a-z0-9_]*\(.*\)\s+= (?:-?\d+|0x[0-9a-f]+|\?)|^--- SIG|\+\+\+ (?:killed|exited)",
                          re.MULTILINE)  # fmt: skip


def private_config(installed: str, sysroot: Path) -> str:
    """The installed config with each system path it names moved under sysroot, nothing else changed."""
    return SYSTEM_VALUE.sub(lambda m: f"{m[1]}{sysroot}{m[2]}{m[3]}", installed)


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
    # how to try it without tripping Postfix's throttle (README and man tracerctl)
    words = " ".join(section.split())
    assert "`kill -SEGV PID`" in words
    assert "crash an smtpd that has finished a session" in words
    assert "`warning: /usr/lib/postfix/sbin/smtpd: bad command startup -- throttling`" in words
    page = " ".join((ROOT / "man/tracerctl.8").read_text().split())
    assert "Without systemd, start the daemon with \\fBtracerd &\\fR" in page
    assert "\\fBkill -SEGV\\fR" in page
    assert "\\fBbad command startup -- throttling\\fR" in page


def run(argv: list[str], env: dict[str, str], cwd: Path | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(argv, cwd=cwd, env={"LANG": "C.UTF-8", **env}, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(not (have("gdb") and have("git")), reason="gdb and git are needed")
def test_quick_start_as_written(postfix: PostfixInstance) -> None:
    """Each quick-start command succeeds in order, run by name from PATH, whatever tracerd this
    machine has: the install puts the commands where the README says (under a private prefix), the
    daemon starts with the installed config, `postfix enable` points debugger_command at the
    installed pftrace-hook, a new smtpd is traced; crashed after serving a session, its crash is
    listed by `tracerctl crashes` and shown with frames by `tracerctl crash ID`; the mail log holds
    no system call lines; then everything is undone."""
    if os.geteuid() != 0:
        pytest.skip("the quick start is run as root")
    assert quick_start_commands() == QUICK_START
    root = Path(tempfile.mkdtemp(prefix="tracerd-quickstart-"))
    root.chmod(0o755)
    prefix, sysroot = root / "usr/local", root / "sys"
    where = [f"PREFIX={prefix}", f"SYSCONFDIR={root}/etc", f"OPTDIR={root}/opt/tracerd"]
    path = f"{prefix}/sbin:{prefix}/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    daemon: subprocess.Popen[bytes] | None = None
    receiver: SyslogReceiver | None = None
    checkout = root / "tracerd"
    try:
        cloned = run(["git", "clone", "-q", str(ROOT), str(checkout)], {"PATH": path})
        assert cloned.returncode == 0, cloned.stderr

        # 1. make install
        result = run([*QUICK_START[0].split(), *where], {"PATH": path}, cwd=checkout, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert shutil.which("tracerd", path=path) == f"{prefix}/sbin/tracerd"
        assert shutil.which("tracerctl", path=path) == f"{prefix}/bin/tracerctl"
        installed = (root / "etc/tracerd/tracerd.toml").read_text()
        assert installed == (checkout / "contrib/tracerd.toml.example").read_text()
        config = root / "tracerd.toml"
        config.write_text(private_config(installed, sysroot))
        socket_path = Path(private_config('socket = "/run/tracerd/tracerd.sock"', sysroot).split('"')[1])
        assert str(socket_path).startswith(str(sysroot))
        (sysroot / "dev").mkdir(parents=True)
        receiver = SyslogReceiver(sysroot / "dev/log")  # the config's /dev/log: the mail log
        env = {"PATH": path, "TRACERD_CONFIG": str(config), "TRACERD_SOCKET": str(socket_path)}

        # 2. no systemd here: `tracerd &`
        with (root / "tracerd.stderr").open("wb") as log:
            daemon = subprocess.Popen(["tracerd"], env=env, stdout=log, stderr=log, cwd="/")
        wait_for("tracerd to answer", lambda: run(["tracerctl", "status"], env).returncode == 0)

        # 3. tracerctl postfix enable smtpd, on the private instance
        postfix.create()
        postfix.start()
        result = run([*QUICK_START[2].split(), "-c", str(postfix.config_dir)], env)
        assert result.returncode == 0, result.stdout + result.stderr
        debugger_command = postfix.postconf("-h", "debugger_command").strip()
        assert debugger_command == f"{prefix}/sbin/pftrace-hook --socket {socket_path} $process_name $process_id"
        smtpd_generation(postfix, debug=True)

        # a crash, of an smtpd that has served a session (README: a crash at a service's first
        # session makes Postfix throttle it)
        client = Client(postfix)
        session = wait_for("the smtpd traced", lambda: session_of(client.pid, "attached", env))
        client.quit()
        wait_idle(client.pid)
        os.kill(client.pid, signal.SIGSEGV)
        session = wait_for("the crash recorded", lambda: session_of(client.pid, "crashed", env), timeout=60)
        postfix.wait_log(f"pid {client.pid} killed by signal 11")
        assert proc_state(client.pid) in ("", "Z")

        # 4. tracerctl crashes, then tracerctl crash ID with an ID it listed
        listed = run(QUICK_START[3].split(), env)
        assert listed.returncode == 0, listed.stderr
        ids = CRASH_ID.findall(listed.stdout)
        assert session["crash"] in ids, listed.stdout
        shown = run(QUICK_START[4].replace("ID", session["crash"]).split(), env)
        assert shown.returncode == 0, shown.stderr
        assert "smtpd" in shown.stdout
        assert "SIGSEGV" in shown.stdout
        # the "done when": a report with frames, a mail log without system calls
        assert re.search(r"(?m)^\s*#0 ", shown.stdout), f"no frames in the crash report:\n{shown.stdout[-3000:]}"
        mail_log = "\n".join(receiver.collect())
        assert "crashed" in mail_log, mail_log[-2000:]
        assert SYSCALL_LINE.findall(mail_log) == [], mail_log[-3000:]
        assert SYSCALL_LINE.findall(postfix.log_text()) == []
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        postfix.stop()
        if receiver is not None:
            receiver.close()
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            run(["make", "uninstall", *where], {"PATH": path}, cwd=checkout, timeout=300)
        shutil.rmtree(root, ignore_errors=True)


def session_of(pid: int, state: str, env: dict[str, str]) -> dict[str, Any] | None:
    """The session of pid from the installed tracerctl, once in that state."""
    result = run(["tracerctl", "--json", "status"], env)
    if result.returncode != 0:
        return None
    for session in json.loads(result.stdout)["sessions"]:
        if session["pid"] == pid and session["state"] == state:
            found: dict[str, Any] = session
            return found
    return None


def test_the_guard_sees_a_write_to_the_system_paths() -> None:
    """conftest's session guard: a new crash report or log, a changed directory mtime, a changed
    /etc/tracerd each fail the run; an unchanged listing passes."""
    if SYSTEM_SOCKET.exists():
        pytest.skip("a tracerd runs here: the guard counts only the tests' own files then")
    before = {"/var/lib/tracerd": (1, 4096), "/etc/tracerd/tracerd.toml": (1, 100)}
    assert system_changes(before, dict(before)) == []
    after = {"/var/lib/tracerd": (2, 4096), "/var/lib/tracerd/crashes/x.json": (2, 10),
             "/etc/tracerd/tracerd.toml": (3, 100), "/var/log/tracerd/smtpd.1.log": (2, 1)}  # fmt: skip
    assert system_changes(before, after) == sorted(after)
