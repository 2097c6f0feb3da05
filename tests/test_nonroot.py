"""tracerctl run by a user who is not root (README, "Non-root users"): a
``socket_group`` member finds the system socket without --socket; ``postfix
status`` tells a running master without ``postfix status`` (which, as
non-root, logs a fatal into the mail log); bugreport finds postconf in
/usr/sbin when it is not on PATH.

The user and group are created here with useradd/groupadd and removed after.
They run the system python (/usr/bin/python3) with this tree and the venv's
packages on PYTHONPATH: the venv's own interpreter may live under /root."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.postfix_instance import PostfixInstance
from tracerd.client import SYSTEM_SOCKET

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path(SYSTEM_PYTHON).exists() or shutil.which("setpriv") is None,
    reason="needs root, /usr/bin/python3 and setpriv",
)


@dataclass
class User:
    name: str
    group: str

    def tracerctl(self, *args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
        """tracerctl ARGS as this user (its groups from /etc/group), HOME and XDG unset."""
        env = {
            "PATH": path or "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "PYTHONPATH": f"{ROOT}:{sysconfig.get_paths()['purelib']}",
            "LANG": "C.UTF-8",
        }
        return subprocess.run(
            ["setpriv", f"--reuid={self.name}", f"--regid={self.group}", "--init-groups",
             SYSTEM_PYTHON, "-m", "tracerd.ctl.main", *args],
            capture_output=True, text=True, timeout=120, check=False, env=env, cwd="/",
        )  # fmt: skip


@pytest.fixture
def user() -> Iterator[User]:
    """A fresh user whose primary group is a fresh group; both removed after."""
    name = f"trtest{secrets.token_hex(3)}"
    subprocess.run(["groupadd", name], check=True, capture_output=True)
    try:
        subprocess.run(["useradd", "-M", "-N", "-g", name, "-d", "/nonexistent", "-s", "/usr/sbin/nologin", name],
                       check=True, capture_output=True)  # fmt: skip
        try:
            yield User(name, name)
        finally:
            subprocess.run(["userdel", name], check=True, capture_output=True)
    finally:
        # userdel may have taken the group with the user (USERGROUPS_ENAB): gone either way
        subprocess.run(["groupdel", name], check=False, capture_output=True)
        assert subprocess.run(["getent", "group", name], check=False, capture_output=True).returncode == 2


@pytest.fixture
def system_socket() -> Iterator[Path]:
    """The system socket path, free for this test (skipped when a tracerd of the
    machine holds it); /run/tracerd removed after when the test made it."""
    path = Path(SYSTEM_SOCKET)
    if path.exists():
        pytest.skip(f"{path} is in use on this machine")
    made = not path.parent.exists()
    yield path
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    if made:
        with contextlib.suppress(OSError):
            path.parent.rmdir()


def test_socket_group_member_finds_the_system_socket(
    user: User, system_socket: Path, daemon_factory: Any
) -> None:
    """A member of socket_group runs ``tracerctl status`` and ``crashes`` without
    --socket: tracerctl picks the system socket the user may connect to."""
    daemon = daemon_factory(f'socket_group = "{user.group}"', socket_path=system_socket)
    status = user.tracerctl("--json", "status")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["daemon"]["pid"] == daemon.proc.pid
    crashes = user.tracerctl("crashes")
    assert (crashes.returncode, crashes.stdout.strip()) == (0, "no crashes recorded"), crashes.stderr


def test_non_member_gets_its_own_socket(user: User, system_socket: Path, daemon_factory: Any) -> None:
    """Someone who may not connect to the system socket is sent to the per-user one
    (which does not exist here): exit 3, naming that socket, not a permission error."""
    daemon_factory(socket_path=system_socket)  # no socket_group: 0600 root
    result = user.tracerctl("status")
    assert result.returncode == 3
    assert f"/tmp/tracerd-{_uid(user.name)}/tracerd.sock" in result.stderr


def _uid(name: str) -> int:
    import pwd  # noqa: PLC0415

    return pwd.getpwnam(name).pw_uid


def _marked(postfix: PostfixInstance, marker: str) -> str:
    """The mail log once a line logged after everything before it is in: postlogd
    writes in the order it receives, so what came before the marker is there."""
    subprocess.run(["postlog", "-c", str(postfix.config_dir), "-t", "tracerd-test", marker],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    return postfix.wait_log(marker)


def test_postfix_status_as_non_root_leaves_the_mail_log_alone(user: User, postfix: PostfixInstance) -> None:
    """``tracerctl postfix status`` as non-root reports the running master by its
    pid (its pid file is root's alone) and runs no ``postfix status``: nothing
    but our own marker line is added to the mail log."""
    postfix.create()
    postfix.start()
    assert postfix.master is not None
    postfix.wait_log("disconnect from")  # start()'s probe connection, whose smtpd logs on its own time
    before = _marked(postfix, "before-tracerctl")
    result = user.tracerctl("--socket", "/nonexistent.sock", "postfix", "status", "-c", str(postfix.config_dir))
    assert result.returncode == 3, result.stderr  # tracerd is not running; Postfix is
    assert f"running (master pid {postfix.master.pid})" in result.stdout
    text = _marked(postfix, "after-tracerctl")
    added = text[len(before):].splitlines()
    assert len(added) == 1, added
    assert added[0].endswith("after-tracerctl")
    assert "reserved for the superuser" not in text


def test_bugreport_finds_postconf_in_sbin(postfix: PostfixInstance, public_dir: Path) -> None:
    """With PATH lacking /usr/sbin, bugreport still runs postconf (and qshape when installed)."""
    postfix.create()
    log = public_dir / "mail.log"
    log.write_text("")
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [SYSTEM_PYTHON, "-m", "tracerd.ctl.main", "--socket", "/nonexistent.sock", "bugreport",
         "-c", str(postfix.config_dir), "--log", str(log)],
        capture_output=True, text=True, timeout=300, check=False,
        env={**env, "PYTHONPATH": f"{ROOT}:{sysconfig.get_paths()['purelib']}"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "(postconf is not installed)" not in result.stdout
    assert f"queue_directory = {postfix.queue_dir}" in result.stdout
    if Path("/usr/sbin/qshape").exists():
        assert "qshape is not installed" not in result.stdout
