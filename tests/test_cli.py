"""The command-line conventions of the three commands (tracerctl(8), "Commands"):
--help and --version on stdout with exit 0, help text for every option,
--json after the command, errors as JSON under --json, and the hidden
``tracerctl _complete`` that shell completion calls."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import script
from tests.postfix_instance import PostfixInstance
from tests.test_crash import make_report
from tracerd import __version__
from tracerd.crash.store import CrashStore
from tracerd.ctl import main as ctl
from tracerd.hook import HELP, OPTIONS

COMMANDS = ("pftrace-hook", "tracerd", "tracerctl")


def run(*argv: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(word) for word in argv], capture_output=True, text=True, timeout=60, check=False,
                          env=env)  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_help_is_on_stdout_and_exits_0(command: str) -> None:
    """--help prints the usage on stdout, nothing on stderr, and exits 0."""
    result = run(*script(command), "--help")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("usage: ")


@pytest.mark.parametrize("command", COMMANDS)
def test_version_is_on_stdout_and_exits_0(command: str) -> None:
    """--version prints ``COMMAND VERSION`` on stdout and exits 0."""
    result = run(*script(command), "--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{command} {__version__}\n", "")


def parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += parsers(child)
    return found


def test_every_tracerctl_option_has_help_text() -> None:
    """Every option and argument of tracerctl and of each of its commands has a help text."""
    missing = [
        f"{each.prog}: {action.dest}"
        for each in parsers(ctl.build_parser())
        for action in each._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert missing == []


def test_every_hook_option_has_help_text() -> None:
    """pftrace-hook --help describes each of its options."""
    for option in (*OPTIONS, "help", "version"):
        assert f" --{option}" in HELP, option


def test_json_after_the_command(shared_daemon: Any) -> None:
    """``tracerctl status --json`` is the same JSON document as ``tracerctl --json status``."""
    daemon = shared_daemon  # it only reads: the module's one tracerd
    after = daemon.ctl("status", "--json")
    before = daemon.ctl("--json", "status")
    assert (after.returncode, before.returncode) == (0, 0)
    assert json.loads(after.stdout).keys() == json.loads(before.stdout).keys() >= {"daemon", "sessions"}
    # and a command that has options of its own
    assert json.loads(daemon.ctl("crashes", "--json").stdout)["crashes"] == []


def test_errors_are_json_under_json(shared_daemon: Any, tmp_path: Path) -> None:
    """Under --json every failure is a JSON document on stdout with the exit code:
    unreachable (3), usage (2, even a usage error argparse finds), refused (1)."""
    daemon = shared_daemon  # usage errors and refusals: the module's one tracerd
    gone = run(*script("tracerctl"), "--socket", tmp_path / "none.sock", "status", "--json")
    assert gone.returncode == 3
    document = json.loads(gone.stdout)
    assert document["exit"] == 3
    assert document["error"].startswith("tracerd is not running")
    for argv in (("--json", "bogus"), ("show", "0", "--json"), ("--json", "status", "--no-such-option")):
        usage = daemon.ctl(*argv)
        assert usage.returncode == 2, argv
        assert json.loads(usage.stdout)["exit"] == 2
    refused = daemon.ctl("--json", "show", "999999")
    assert refused.returncode == 1
    assert json.loads(refused.stdout) | {"exit": 1} == json.loads(refused.stdout)
    assert json.loads(refused.stdout)["error"] == "not_found"
    # without --json, usage errors stay argparse's lines on stderr
    plain = daemon.ctl("bogus")
    assert (plain.returncode, plain.stdout) == (2, "")
    assert "usage: tracerctl" in plain.stderr


def test_complete_commands_hides_itself() -> None:
    """``_complete commands`` lists tracerctl's commands, not the hidden one; --help does not name it."""
    result = run(*script("tracerctl"), "_complete", "commands")
    assert result.returncode == 0
    words = result.stdout.split()
    assert {"status", "crashes", "crash", "postfix", "triage", "bugreport"} <= set(words)
    assert "_complete" not in words
    assert "_complete" not in run(*script("tracerctl"), "--help").stdout


def test_complete_services_from_postconf(postfix: PostfixInstance) -> None:
    """``_complete services -c DIR``: each master.cf service as name/type and, where only
    one type has the name, the bare name, as ``postfix enable`` accepts them."""
    postfix.create()
    result = run(*script("tracerctl"), "_complete", "services", "-c", postfix.config_dir)
    assert result.returncode == 0, result.stderr
    words = result.stdout.splitlines()
    assert {f"{postfix.listen}/inet", "pickup/unix", "pickup", "postlog/unix-dgram", "smtp/unix"} <= set(words)
    assert words == sorted(words)
    # no Postfix there: nothing offered, no error printed, exit 0
    empty = run(*script("tracerctl"), "_complete", "services", "-c", "/nonexistent")
    assert (empty.returncode, empty.stdout, empty.stderr) == (0, "", "")


def test_complete_crashes_from_daemon_and_store(daemon_factory: Any, tmp_path: Path) -> None:
    """``_complete crashes`` lists crash ids from tracerd, and from its store when it is down."""
    daemon = daemon_factory(start=False)
    store = CrashStore(daemon.state_dir / "crashes")
    entry = store.record(make_report("crash_here", "main"))
    store.close()
    down = run(*script("tracerctl"), "--socket", tmp_path / "none.sock", "_complete", "crashes",
               "--state-dir", daemon.state_dir)  # fmt: skip
    assert (down.returncode, down.stdout, down.stderr) == (0, f"{entry['id']}\n", "")
    daemon.start()
    up = daemon.ctl("_complete", "crashes", "--state-dir", str(tmp_path / "no-store"))
    assert (up.returncode, up.stdout) == (0, f"{entry['id']}\n")


def test_bash_completion_offers_every_command() -> None:
    """contrib/tracerctl.bash-completion's own list of commands is tracerctl's (crash-delete,
    retrace and gdb were missing from it)."""
    import re  # noqa: PLC0415

    text = (Path(__file__).parent.parent / "contrib" / "tracerctl.bash-completion").read_text()
    listed = re.search(r'local commands="([^"]*)"', text)
    assert listed is not None
    result = run(*script("tracerctl"), "_complete", "commands")
    assert result.returncode == 0
    assert sorted(listed.group(1).split()) == sorted(result.stdout.split())
