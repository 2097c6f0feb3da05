"""tracerctl postfix enable/disable/status against a real private Postfix
instance's postconf (created, not started): service names, dry runs,
refusals, idempotency and the byte-for-byte restore."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.postfix_instance import PostfixInstance
from tracerd import ctl, postfix

HOOK = str(Path(sys.executable).parent / "pftrace-hook")
SEED_RECIPE = "PATH=/bin:/usr/bin:/usr/local/bin; (strace -p $process_id 2>&1 | logger -p mail.info) & sleep 5"


class Tracerctl:
    """``tracerctl --socket S ...`` in-process; returns (exit code, stdout, stderr)."""

    def __init__(self, capsys: pytest.CaptureFixture[str], sock: Path) -> None:
        self.capsys, self.sock = capsys, sock

    def __call__(self, *args: str) -> tuple[int, str, str]:
        code = ctl.main(["--socket", str(self.sock), *args])
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def tracerctl(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Tracerctl:
    return Tracerctl(capsys, tmp_path / "tracerd.sock")


@pytest.fixture
def instance(postfix: PostfixInstance) -> PostfixInstance:
    postfix.create()
    return postfix


def files(pf: PostfixInstance) -> tuple[bytes, bytes]:
    return (pf.config_dir / "master.cf").read_bytes(), (pf.config_dir / "main.cf").read_bytes()


def smtpd(pf: PostfixInstance) -> str:
    return f"{pf.listen}/inet"


@pytest.mark.parametrize("name", ["smtp", "smtp/inet", "127.0.0.1:10025/inet", "[::1]:25/inet",
                                  "postlog/unix-dgram", "submission", "relay/unix"])  # fmt: skip
def test_service_names_accepted(name: str) -> None:
    """Names as postconf -M shows them, with or without their type."""
    assert postfix._service(name) == name


REFUSED = ["", "-D", "smtp inet", "smtp/tcp", "smtp/inet/command", "a=b", "x;id", "$(id)", "../etc", "smtp\n",
           "a" * 200]  # fmt: skip


def test_service_names_refused_before_postconf(tracerctl: Tracerctl, instance: PostfixInstance) -> None:
    """Anything else is a usage error (exit 2) and postconf never sees it."""
    before = files(instance)
    for name in REFUSED:
        with pytest.raises(Exception, match=r"not a master\.cf service name"):
            postfix._service(name)
        code, _, err = tracerctl("postfix", "enable", "-c", str(instance.config_dir), "--", name)
        assert code == 2, name
        assert "not a master.cf service name" in err
    assert files(instance) == before


def test_command_words_and_the_debug_flag() -> None:
    """-D is inserted after the program and found only as an option of its own."""
    command = "smtpd -o {smtpd_client_restrictions=permit_mynetworks, reject} -o syslog_name=x"
    assert postfix.command_words(command)[2] == "{smtpd_client_restrictions=permit_mynetworks, reject}"
    assert postfix.with_debug(command) == command.replace("smtpd ", "smtpd -D ", 1)
    assert postfix.without_debug(postfix.with_debug(command)) == command
    assert postfix.debug_flag(postfix.command_words("smtpd -o -D")) is None  # an -o value, not the flag
    assert postfix.debug_flag(postfix.command_words("smtpd -v -D")) == 2


def test_service_resolution(tracerctl: Tracerctl, instance: PostfixInstance) -> None:
    """A program one service runs (smtpd), a name with one type (smtp), a
    name/type; an ambiguous or unknown name fails naming the candidates."""
    inst = postfix.Instance(str(instance.config_dir))
    services = inst.services()
    assert inst.resolve("smtpd", services) == smtpd(instance)
    assert inst.resolve("smtp", services) == "smtp/unix"
    assert inst.resolve("postlog/unix-dgram", services) == "postlog/unix-dgram"
    instance.postconf("-M", "smtp/inet=smtp inet n - n - - smtpd")
    code, _, err = tracerctl("postfix", "enable", "smtp", "-c", str(instance.config_dir), "--dry-run")
    assert code == 1
    assert "smtp is ambiguous: smtp/inet, smtp/unix: name one" in err
    code, _, err = tracerctl("postfix", "enable", "nosuch", "-c", str(instance.config_dir))
    assert code == 1
    assert "no service or program nosuch" in err


def test_dry_run_prints_the_exact_commands_and_changes_nothing(tracerctl: Tracerctl, instance: PostfixInstance) -> None:
    """--dry-run prints the postconf argv that enable then runs, word for word,
    and leaves both files and the state file alone."""
    before = files(instance)
    enable = ("postfix", "enable", "smtpd", "-c", str(instance.config_dir), "--tracer", "gdb")
    code, dry, _ = tracerctl(*enable, "--dry-run")
    assert code == 0
    hook = f"{HOOK} --socket {tracerctl.sock} --tracer gdb $process_name $process_id"
    assert dry.splitlines() == [
        shlex.join(["/usr/sbin/postconf", "-c", str(instance.config_dir), "-e", f"debugger_command={hook}"]),
        shlex.join(["/usr/sbin/postconf", "-c", str(instance.config_dir), "-F", f"{smtpd(instance)}/command=smtpd -D"]),
    ]
    assert files(instance) == before
    assert not (instance.config_dir / "tracerd-postfix.json").exists()
    code, done, _ = tracerctl(*enable)
    assert (code, done) == (0, dry)
    assert instance.postconf("-h", "debugger_command").strip() == hook
    assert instance.postconf("-F", f"{smtpd(instance)}/command").strip().endswith("= smtpd -D")
    code, out, _ = tracerctl("postfix", "disable", "smtpd", "-c", str(instance.config_dir), "--dry-run")
    assert code == 0
    assert out.splitlines() == [
        f"restore {instance.config_dir}/master.cf as it was before enable: -1 +1 lines",
        f"restore {instance.config_dir}/main.cf as it was before enable: -1 +0 lines",
    ]


def test_refuses_someone_elses_debugger_command_without_force(tracerctl: Tracerctl, postfix: PostfixInstance) -> None:
    """The seed's recipe in main.cf: enable refuses (exit 1, files untouched);
    with --force it replaces it, and disable restores the recipe exactly."""
    postfix.create(debugger_command=SEED_RECIPE)
    before = files(postfix)
    code, _, err = tracerctl("postfix", "enable", "smtpd", "-c", str(postfix.config_dir))
    assert code == 1
    assert err == f"tracerctl: postfix: debugger_command already holds something else: {SEED_RECIPE!r};" \
                  " --force replaces it (and disable restores it)\n"  # fmt: skip
    assert files(postfix) == before
    assert tracerctl("postfix", "enable", "smtpd", "-c", str(postfix.config_dir), "--force")[0] == 0
    assert postfix.postconf("-h", "debugger_command").startswith(HOOK)
    # once ours, changing the tracer needs no --force
    assert tracerctl("postfix", "enable", "smtpd", "-c", str(postfix.config_dir), "--tracer", "strace")[0] == 0
    assert tracerctl("postfix", "disable", "smtpd", "-c", str(postfix.config_dir))[0] == 0
    assert files(postfix) == before
    assert postfix.postconf("-nh", "debugger_command") == SEED_RECIPE + "\n"


def test_enable_is_idempotent(tracerctl: Tracerctl, instance: PostfixInstance) -> None:
    """A second identical enable changes nothing and says so."""
    assert tracerctl("postfix", "enable", "smtpd", "-c", str(instance.config_dir))[0] == 0
    after = files(instance)
    state = (instance.config_dir / "tracerd-postfix.json").read_bytes()
    code, out, err = tracerctl("postfix", "enable", "smtpd", "-c", str(instance.config_dir))
    assert (code, out, err) == (0, f"{smtpd(instance)}: nothing to do (enabled already)\n", "")
    assert files(instance) == after
    assert (instance.config_dir / "tracerd-postfix.json").read_bytes() == state
    code, out, _ = tracerctl("--json", "postfix", "enable", "smtpd", "-c", str(instance.config_dir))
    assert json.loads(out)["actions"] == []


def test_two_services_round_trip_byte_for_byte(tracerctl: Tracerctl, instance: PostfixInstance) -> None:
    """Enable two services, disable them in the same order: debugger_command
    stays while one -D is left; at the end both files are byte for byte as
    before (an unset debugger_command is unset again) and no state is left."""
    before = files(instance)
    directory = str(instance.config_dir)
    for service in ("smtpd", "pickup"):
        assert tracerctl("postfix", "enable", service, "-c", directory)[0] == 0
    code, _, err = tracerctl("postfix", "disable", "smtpd", "-c", directory)
    assert code == 0
    assert err == "tracerctl: warning: debugger_command kept: still used by pickup/unix\n"
    assert instance.postconf("-h", "debugger_command").startswith(HOOK)
    assert tracerctl("postfix", "disable", "pickup", "-c", directory)[0] == 0
    assert files(instance) == before
    assert instance.postconf("-n", "debugger_command") == ""
    assert not (instance.config_dir / "tracerd-postfix.json").exists()
    code, out, _ = tracerctl("postfix", "disable", "pickup", "-c", directory)
    assert (code, out) == (0, "pickup/unix: nothing to do (disabled already)\n")


def test_entry_edited_since_enable_falls_back_to_postconf(tracerctl: Tracerctl, instance: PostfixInstance) -> None:
    """An admin edits the entry after enable: disable cannot put the old lines
    back, so postconf removes the -D, the admin's edit stays, and a warning
    says the layout was not restored."""
    directory = str(instance.config_dir)
    assert tracerctl("postfix", "enable", "smtpd", "-c", directory)[0] == 0
    instance.postconf("-F", f"{smtpd(instance)}/process_limit=7")
    code, out, err = tracerctl("postfix", "disable", "smtpd", "-c", directory)
    assert code == 0
    assert f"-F {smtpd(instance)}/command=smtpd\n" in out
    assert "its old layout not restored" in err
    fields = instance.postconf("-F", f"{smtpd(instance)}/command", f"{smtpd(instance)}/process_limit")
    assert sorted(fields.splitlines()) == [f"{smtpd(instance)}/command = smtpd", f"{smtpd(instance)}/process_limit = 7"]
    assert instance.postconf("-n", "debugger_command") == ""


def test_socket_and_tracer_words(tracerctl: Tracerctl, instance: PostfixInstance, capsys: Any) -> None:
    """The root default socket is left out of debugger_command; a socket path
    Postfix or sh would interpret ($, spaces) is refused."""
    directory = str(instance.config_dir)
    code = ctl.main(["--socket", "/run/tracerd/tracerd.sock", "postfix", "enable", "smtpd", "-c", directory])
    capsys.readouterr()
    assert code == 0
    assert instance.postconf("-h", "debugger_command").strip() == f"{HOOK} $process_name $process_id"
    code = ctl.main(["--socket", "/tmp/$HOME/x y.sock", "postfix", "enable", "smtpd", "-c", directory])
    assert code == 1
    assert "cannot go into debugger_command as is" in capsys.readouterr().err


def test_status_without_daemon_lists_services_and_exits_3(tracerctl: Tracerctl, instance: PostfixInstance) -> None:
    """status with tracerd absent: exit 3, says so, still lists the -D services."""
    assert tracerctl("postfix", "enable", "smtpd", "-c", str(instance.config_dir))[0] == 0
    code, out, _ = tracerctl("--json", "postfix", "status", "-c", str(instance.config_dir))
    assert code == 3
    report = json.loads(out)
    assert report["daemon"]["reachable"] is False
    assert "tracerd is not running" in report["daemon"]["error"]
    assert report["master_pid"] is None
    assert report["hook"] is True
    assert report["services"] == [{"service": smtpd(instance), "command": "smtpd -D", "processes": []}]
    code, out, _ = tracerctl("postfix", "status", "-c", str(instance.config_dir))
    assert code == 3
    assert "NOT reachable" in out
    assert f"{smtpd(instance)}  smtpd -D  -    no process now" in out


def test_state_file_must_be_ours_alone(tracerctl: Tracerctl, instance: PostfixInstance, tmp_path: Path) -> None:
    """A state file others may write, or a symlink, is refused: its lines
    would go into main.cf, where debugger_command runs as root."""
    directory = str(instance.config_dir)
    assert tracerctl("postfix", "enable", "smtpd", "-c", directory)[0] == 0
    state = instance.config_dir / "tracerd-postfix.json"
    assert state.stat().st_mode & 0o777 == 0o600
    state.chmod(0o666)
    code, _, err = tracerctl("postfix", "disable", "smtpd", "-c", directory)
    assert code == 1
    assert "writable by it alone" in err
    moved = tmp_path / "elsewhere.json"
    state.chmod(0o600)
    state.rename(moved)
    os.symlink(moved, state)
    code, _, err = tracerctl("postfix", "disable", "smtpd", "-c", directory)
    assert code == 1
    assert "tracerd-postfix.json" in err


def test_real_tracerctl_entry_point(instance: PostfixInstance, tmp_path: Path) -> None:
    """The installed tracerctl has the postfix command (LOCAL_COMMANDS)."""
    tracerctl = Path(sys.executable).parent / "tracerctl"
    argv = [str(tracerctl), "--socket", str(tmp_path / "s"), "postfix", "enable", "smtpd", "--dry-run"]
    result = subprocess.run([*argv, "-c", str(instance.config_dir)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "-D'" in result.stdout
