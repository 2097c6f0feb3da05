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
from tracerd.ctl import main as ctl
from tracerd.ctl import postfix

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
    """-D is inserted after the program and found only as an option of its own:
    never as an -o value, nor past the first word that is not an option."""
    command = "smtpd -o {smtpd_client_restrictions=permit_mynetworks, reject} -o syslog_name=x"
    assert postfix.command_words(command)[2] == "{smtpd_client_restrictions=permit_mynetworks, reject}"
    assert postfix.with_debug(command) == command.replace("smtpd ", "smtpd -D ", 1)
    assert postfix.without_debug(postfix.with_debug(command)) == command
    assert not postfix.has_debug("smtpd -o -D")  # an -o value, not the flag
    assert not postfix.has_debug("pipe flags=R argv=/usr/local/bin/filter -D ${recipient}")  # the filter's own -D
    assert postfix.has_debug("smtpd -v -D")
    assert postfix.has_debug("cleanup -vD")
    assert postfix.without_debug("cleanup -vD -o x=y") == "cleanup -v -o x=y"
    assert postfix.without_debug("smtpd -Dv") == "smtpd -v"
    assert postfix.without_debug("pipe -D flags=R argv=/bin/f -D") == "pipe flags=R argv=/bin/f -D"


# The argv of every daemon of Debian 12's stock master.cf (Postfix 3.7) as ps
# showed it on a private instance, and the same with -D in master.cf, a
# non-loopback listener (master adds "-o stress=") and options of one's own.
MASTER_CHILDREN = [
    (["smtpd", "-n", "127.0.0.1:45411", "-t", "inet", "-u", "-c"], "127.0.0.1:45411/inet", False),
    (["pickup", "-l", "-t", "unix", "-u", "-c"], "pickup/unix", False),
    (["cleanup", "-z", "-t", "unix", "-u", "-c"], "cleanup/unix", False),
    (["qmgr", "-l", "-t", "unix", "-u"], "qmgr/unix", False),
    (["tlsmgr", "-l", "-t", "unix", "-u", "-c"], "tlsmgr/unix", False),
    (["trivial-rewrite", "-n", "rewrite", "-t", "unix", "-u", "-c"], "rewrite/unix", False),
    (["bounce", "-z", "-t", "unix", "-u", "-c"], "bounce/unix", False),
    (["bounce", "-z", "-n", "defer", "-t", "unix", "-u", "-c"], "defer/unix", False),
    (["bounce", "-z", "-n", "trace", "-t", "unix", "-u", "-c"], "trace/unix", False),
    (["verify", "-l", "-t", "unix", "-u", "-c"], "verify/unix", False),
    (["flush", "-z", "-t", "unix", "-u", "-c"], "flush/unix", False),
    (["proxymap", "-t", "unix", "-u"], "proxymap/unix", False),
    (["proxymap", "-l", "-n", "proxywrite", "-t", "unix", "-u"], "proxywrite/unix", False),
    (["smtp", "-t", "unix", "-u", "-c"], "smtp/unix", False),
    (["smtp", "-n", "relay", "-t", "unix", "-u", "-c", "-o", "syslog_name=postfix/$service_name"], "relay/unix", False),
    (["showq", "-t", "unix", "-u", "-c"], "showq/unix", False),
    (["error", "-t", "unix", "-u", "-c"], "error/unix", False),
    (["error", "-n", "retry", "-t", "unix", "-u", "-c"], "retry/unix", False),
    (["discard", "-t", "unix", "-u", "-c"], "discard/unix", False),
    (["local", "-t", "unix"], "local/unix", False),
    (["virtual", "-t", "unix"], "virtual/unix", False),
    (["lmtp", "-t", "unix", "-u", "-c"], "lmtp/unix", False),
    (["anvil", "-l", "-t", "unix", "-u", "-c"], "anvil/unix", False),
    (["scache", "-l", "-t", "unix", "-u", "-c"], "scache/unix", False),
    (["postlogd", "-l", "-n", "postlog", "-t", "unix-dgram", "-u"], "postlog/unix-dgram", False),
    (["pipe", "-n", "maildrop", "-t", "unix", "flags=DRXhu", "user=vmail", "argv=/usr/bin/maildrop", "-d",
      "${recipient}"], "maildrop/unix", False),
    (["pipe", "-n", "uucp", "-t", "unix", "flags=Fqhu", "user=uucp", "argv=uux", "-r", "-n", "-z", "-a$sender", "-",
      "$nexthop!rmail", "($recipient)"], "uucp/unix", False),
    (["pipe", "-n", "ifmail", "-t", "unix", "flags=F", "user=ftn", "argv=/usr/lib/ifmail/ifmail", "-r", "$nexthop",
      "($recipient)"], "ifmail/unix", False),
    (["pipe", "-n", "bsmtp", "-t", "unix", "flags=Fq.", "user=bsmtp", "argv=/usr/lib/bsmtp/bsmtp", "-t$nexthop",
      "-f$sender", "$recipient"], "bsmtp/unix", False),
    (["pipe", "-n", "scalemail-backend", "-t", "unix", "flags=R", "user=scalemail",
      "argv=/usr/lib/scalemail/bin/scalemail-store", "${nexthop}", "${user}", "${extension}"],
     "scalemail-backend/unix", False),
    (["pipe", "-n", "mailman", "-t", "unix", "flags=FRX", "user=list",
      "argv=/usr/lib/mailman/bin/postfix-to-mailman.py", "${nexthop}", "${user}"], "mailman/unix", False),
    (["smtpd", "-n", "127.0.0.1:45412", "-t", "inet", "-u", "-c", "-o", "syslog_name=postfix/submission"],
     "127.0.0.1:45412/inet", False),
    (["postscreen", "-l", "-n", "localhost:45413", "-t", "inet", "-u"], "localhost:45413/inet", False),
    # with -D in master.cf
    (["pickup", "-l", "-t", "unix", "-u", "-D"], "pickup/unix", True),
    (["qmgr", "-l", "-t", "unix", "-u", "-D"], "qmgr/unix", True),
    (["cleanup", "-z", "-t", "unix", "-u", "-c", "-D"], "cleanup/unix", True),
    (["smtpd", "-n", "127.0.0.1:34303", "-t", "inet", "-u", "-D"], "127.0.0.1:34303/inet", True),
    (["smtpd", "-n", "192.0.2.2:34304", "-t", "inet", "-u", "-o", "stress=", "-D", "-o", "syslog_name=postfix/x"],
     "192.0.2.2:34304/inet", True),
    (["cleanup", "-z", "-t", "unix", "-u", "-vD", "-oheader_size_limit=4096", "-o", "header_size_limit = 2048"],
     "cleanup/unix", True),
    (["pipe", "-n", "filter", "-t", "unix", "flags=R", "user=nobody", "argv=/usr/local/bin/filter", "-D", "-n", "x"],
     "filter/unix", False),
    # what master.cf may say, as the daemon's getopt reads it: attached arguments, a path as the command
    (["smtpd", "-tinet", "-nsubmission", "-D"], "submission/inet", True),
    (["local/smtpd", "-t", "inet", "-u"], "smtpd/inet", False),
    (["smtpd", "-n", "a", "-n", "b", "-t", "inet"], "b/inet", False),
    (["smtpd", "-t", "inet", "--", "-D"], "smtpd/inet", False),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "key", "debug"), MASTER_CHILDREN, ids=[" ".join(c[0][:5]) for c in MASTER_CHILDREN])
def test_master_child_argv(argv: list[str], key: str, debug: bool) -> None:
    """A master child's service is -n NAME, else its program's name, and -t TYPE,
    wherever they stand among the options; -D counts only as an option."""
    child = postfix.master_child(argv)
    assert child is not None
    assert (child.key, child.debug) == (key, debug)


def test_master_child_of_a_zombie() -> None:
    """A zombie's argv is empty: no service."""
    assert postfix.master_child([]) is None


def test_pipe_argument_is_not_the_debug_flag(tracerctl: Tracerctl, instance: PostfixInstance) -> None:
    """A pipe service whose external command takes -D is not traced already:
    enable adds pipe's own -D, status lists it, disable removes only that one."""
    directory = str(instance.config_dir)
    entry = "filter/unix=filter unix - n n - - pipe flags=R user=nobody argv=/usr/local/bin/filter -D ${recipient}"
    instance.postconf("-M", entry)
    before = files(instance)
    code, out, err = tracerctl("postfix", "enable", "filter/unix", "-c", directory)
    assert code == 0, err
    assert "-F 'filter/unix/command=pipe -D flags=R user=nobody argv=/usr/local/bin/filter -D ${recipient}'" in out
    code, out, _ = tracerctl("--json", "postfix", "status", "-c", directory)
    assert [service["service"] for service in json.loads(out)["services"]] == ["filter/unix"]
    assert tracerctl("postfix", "disable", "filter/unix", "-c", directory)[0] == 0
    assert files(instance) == before


def test_clustered_debug_flag_counts(tracerctl: Tracerctl, instance: PostfixInstance) -> None:
    """-vD in master.cf is -D too: enable has nothing to do, status lists the
    service, disable takes the D out of the cluster and leaves -v."""
    directory = str(instance.config_dir)
    instance.postconf("-F", "cleanup/unix/command=cleanup -vD")
    code, out, _ = tracerctl("postfix", "enable", "cleanup", "-c", directory, "--dry-run")
    assert code == 0
    assert [line for line in out.splitlines() if " -F " in line] == []  # only debugger_command to set
    code, out, _ = tracerctl("--json", "postfix", "status", "-c", directory)
    assert [service["service"] for service in json.loads(out)["services"]] == ["cleanup/unix"]
    code, out, _ = tracerctl("postfix", "disable", "cleanup", "-c", directory)
    assert code == 0
    assert instance.postconf("-F", "cleanup/unix/command").strip() == "cleanup/unix/command = cleanup -v"


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
    assert (code, out) == (0, f"{smtpd(instance)}: nothing to do (enabled already)\n")
    assert err.startswith("tracerctl: warning: tracerd is not running")
    assert err.count("\n") == 1
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
    assert report["services"] == [{"service": smtpd(instance), "command": "smtpd -D", "debug": True,
                                   "master_cf": None, "processes": []}]  # fmt: skip
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


def test_status_of_one_service(tracerctl: Tracerctl, instance: PostfixInstance) -> None:
    """``postfix status SERVICE`` (README's table): that service alone, -D or not,
    with its master.cf entry; an unknown one is one line and exit 1."""
    directory = str(instance.config_dir)
    code, out, err = tracerctl("--json", "postfix", "status", "smtpd", "-c", directory)
    assert code == 3, err  # tracerd absent; the service is listed all the same
    report = json.loads(out)
    assert report["service"] == smtpd(instance)
    [service] = report["services"]
    assert service["service"] == smtpd(instance)
    assert service["debug"] is False
    assert service["master_cf"].startswith(f"{instance.listen}")
    assert service["master_cf"].endswith("smtpd")
    code, out, _ = tracerctl("postfix", "status", "smtpd", "-c", directory)
    assert code == 3
    assert f"{smtpd(instance)}: -D off" in out
    assert f"master.cf: {instance.listen}" in out
    assert tracerctl("postfix", "enable", "smtpd", "-c", directory)[0] == 0
    code, out, _ = tracerctl("--json", "postfix", "status", smtpd(instance), "-c", directory)
    [service] = json.loads(out)["services"]
    assert (service["debug"], service["command"]) == (True, "smtpd -D")
    assert service["master_cf"].endswith("smtpd -D")
    assert json.loads(out)["hook"] is True
    code, out, err = tracerctl("postfix", "status", "nosuchservice", "-c", directory)
    assert code == 1
    assert err.strip() == (f"tracerctl: postfix: no service or program nosuchservice in {directory}/master.cf"
                           " (see postconf -M)")  # fmt: skip


def test_enable_without_tracerd_warns(tracerctl: Tracerctl, instance: PostfixInstance, daemon_factory: Any) -> None:
    """enable while tracerd does not answer: enabled all the same, with a warning
    that every new process will log "not traced"; none while tracerd runs."""
    directory = str(instance.config_dir)
    code, _out, err = tracerctl("postfix", "enable", "smtpd", "-c", directory)
    assert code == 0
    assert "-D" in instance.postconf("-F", f"{smtpd(instance)}/command")
    assert "tracerctl: warning: tracerd is not running" in err
    assert 'every new smtpd process will log "not traced"' in err
    assert tracerctl("postfix", "disable", "smtpd", "-c", directory)[0] == 0
    daemon = daemon_factory()
    code = ctl.main(["--socket", str(daemon.socket), "postfix", "enable", "smtpd", "-c", directory])
    err = tracerctl.capsys.readouterr().err
    assert code == 0
    assert "not traced" not in err, err
