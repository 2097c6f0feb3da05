"""The hook checks itself (tracerctl(8), "Commands"): ``tracerctl postfix status`` says
``hook missing: PATH`` and exits 1, ``enable`` refuses a hook root cannot run
unless --force, and tracerd (at start and --check) warns when Postfix's
debugger_command names a pftrace-hook that does not exist."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import script
from tests.postfix_instance import PostfixInstance
from tests.test_cli import run
from tracerd import hookcheck
from tracerd.ctl import main as ctl

MISSING = "/nonexistent/sbin/pftrace-hook"


def tracerctl(capsys: pytest.CaptureFixture[str], tmp_path: Path, *args: str) -> tuple[int, str, str]:
    code = ctl.main(["--socket", str(tmp_path / "none.sock"), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_status_says_hook_missing_and_exits_1(
    postfix: PostfixInstance, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """debugger_command names a pftrace-hook that does not exist: status labels it
    ``hook missing: PATH`` (not "tracerd's hook") and exits 1, in JSON too."""
    postfix.create(debugger_command=f"{MISSING} $process_name $process_id")
    code, out, err = tracerctl(capsys, tmp_path, "postfix", "status", "-c", str(postfix.config_dir))
    assert code == 1
    assert f"(hook missing: {MISSING} does not exist)" in out
    assert "tracerd's hook" not in out
    assert err.startswith(f"tracerctl: hook missing: {MISSING}")
    code, out, _ = tracerctl(capsys, tmp_path, "postfix", "status", "--json", "-c", str(postfix.config_dir))
    assert code == 1
    assert json.loads(out) | {"hook_path": MISSING, "hook_problem": "does not exist"} == json.loads(out)


def test_status_names_a_hook_whose_interpreter_is_gone(
    postfix: PostfixInstance, capsys: pytest.CaptureFixture[str], tmp_path: Path, public_dir: Path
) -> None:
    """A hook script whose #! interpreter does not exist (a venv built from a
    python that went away) is a missing hook too; an intact one is not."""
    hook = public_dir / "pftrace-hook"
    hook.write_text("#!/nonexistent/python3\n")
    hook.chmod(0o755)
    postfix.create(debugger_command=f"{hook} $process_name $process_id")
    code, out, _ = tracerctl(capsys, tmp_path, "postfix", "status", "-c", str(postfix.config_dir))
    assert code == 1
    assert f"hook missing: {hook} names an interpreter that root cannot run: #!/nonexistent/python3" in out
    hook.write_text("#!/bin/sh\nexit 0\n")
    code, out, _ = tracerctl(capsys, tmp_path, "postfix", "status", "-c", str(postfix.config_dir))
    assert code == 3  # the hook is fine; tracerd is not running
    assert "(tracerd's hook)" in out


def test_enable_refuses_a_missing_hook_unless_forced(
    postfix: PostfixInstance, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """enable --hook PATH with no such file: one clear line, exit 1, main.cf and
    master.cf untouched; with --force it is written, with a warning."""
    postfix.create()
    before = [(postfix.config_dir / name).read_bytes() for name in ("main.cf", "master.cf")]
    code, out, err = tracerctl(capsys, tmp_path, "postfix", "enable", "pickup", "--hook", MISSING,
                               "-c", str(postfix.config_dir))  # fmt: skip
    assert code == 1
    assert err == (f"tracerctl: postfix: hook missing: {MISSING} does not exist: debugger_command would run"
                   " nothing (--hook PATH names the installed one; --force writes it anyway)\n")  # fmt: skip
    assert [(postfix.config_dir / name).read_bytes() for name in ("main.cf", "master.cf")] == before
    code, out, err = tracerctl(capsys, tmp_path, "postfix", "enable", "pickup", "--hook", MISSING, "--force",
                               "-c", str(postfix.config_dir))  # fmt: skip
    assert code == 0, err
    assert f"warning: hook missing: {MISSING} does not exist" in err
    assert postfix.postconf("-h", "debugger_command").startswith(MISSING)
    code, out, _ = tracerctl(capsys, tmp_path, "postfix", "status", "-c", str(postfix.config_dir))
    assert code == 1
    assert f"hook missing: {MISSING}" in out


def test_tracerd_warns_at_check_and_start(
    postfix: PostfixInstance, daemon_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tracerd --check and tracerd at start warn that Postfix's debugger_command
    (postconf, here the private instance through $MAIL_CONFIG) names a missing hook."""
    postfix.create(debugger_command=f"{MISSING} $process_name $process_id")
    daemon = daemon_factory(start=False)
    env = {**os.environ, "MAIL_CONFIG": str(postfix.config_dir)}
    checked = run(*script("tracerd"), "--check", "--config", daemon.config, env=env)
    assert checked.returncode == 0, checked.stderr
    assert f"tracerd: warning: Postfix's debugger_command names {MISSING}, which does not exist" in checked.stderr
    monkeypatch.setenv("MAIL_CONFIG", str(postfix.config_dir))
    daemon.start()
    assert f"Postfix's debugger_command names {MISSING}" in daemon.stderr()
    # a hook that exists: no warning
    postfix.create(debugger_command=f"{script('pftrace-hook')[0]} $process_name $process_id")
    quiet = run(*script("tracerd"), "--check", "--config", daemon.config, env=env)
    assert "debugger_command" not in quiet.stderr


def test_no_main_cf_no_postconf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where $MAIL_CONFIG (or /etc/postfix) holds no main.cf, tracerd's start does not run postconf
    (it would fail after a 1 s sleep); with one, it does."""
    bin_dir, config_dir = tmp_path / "bin", tmp_path / "postfix"
    bin_dir.mkdir()
    config_dir.mkdir()
    ran = tmp_path / "postconf-ran"
    postconf = bin_dir / "postconf"
    postconf.write_text(f"#!/bin/sh\necho \"$@\" >> {ran}\necho /usr/bin/ddd\n")
    postconf.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("MAIL_CONFIG", str(config_dir))
    assert hookcheck.postfix_debugger_command() is None
    assert not ran.exists()
    (config_dir / "main.cf").write_text("")
    assert hookcheck.postfix_debugger_command() == "/usr/bin/ddd"
    assert ran.read_text() == "-h debugger_command\n"


def test_status_names_a_stub_whose_hook_module_is_gone(
    postfix: PostfixInstance, capsys: pytest.CaptureFixture[str], tmp_path: Path, public_dir: Path
) -> None:
    """The stub make writes (contrib/pftrace-hook.in) whose hook.py is gone (a half-removed
    install) is a missing hook; with hook.py in place it is tracerd's hook."""
    hookdir = public_dir / "lib"
    stub = (Path(__file__).parent.parent / "contrib/pftrace-hook.in").read_text()
    hook = public_dir / "pftrace-hook"
    hook.write_text(stub.replace("@PYTHON@", "/bin/sh").replace("@HOOKDIR@", str(hookdir)))
    hook.chmod(0o755)
    postfix.create(debugger_command=f"{hook} $process_name $process_id")
    code, out, _ = tracerctl(capsys, tmp_path, "postfix", "status", "-c", str(postfix.config_dir))
    assert code == 1
    assert f"hook missing: {hook} loads {hookdir}/hook.py, which does not exist" in out
    hookdir.mkdir()
    (hookdir / "hook.py").write_text("")
    code, out, _ = tracerctl(capsys, tmp_path, "postfix", "status", "-c", str(postfix.config_dir))
    assert code == 3  # the hook is fine; tracerd is not running
    assert "(tracerd's hook)" in out
