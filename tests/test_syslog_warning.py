"""Saying when syslog lines cannot go out (issue 24): a tracerd whose
``[syslog] address`` has no receiver warns once at start and in every
``status`` (JSON ``daemon.syslog_warning``, a ``warning:`` line in the table);
one with a receiver says nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support import wait_until


def test_no_syslog_receiver_warns_at_start_and_in_status(daemon_factory: Any, cbin: Any, spawn: Any,
                                                         tmp_path: Path) -> None:  # fmt: skip
    missing = tmp_path / "no-such-dev-log"
    daemon = daemon_factory(syslog_path=missing)
    warnings = [json.loads(line) for line in daemon.stderr().splitlines() if "syslog_unreachable" in line]
    assert len(warnings) == 1, daemon.stderr()
    assert f"syslog address {missing}: No such file or directory" in warnings[0]["warning"]
    status = json.loads(daemon.ctl("--json", "status").stdout)
    assert f"syslog address {missing}" in status["daemon"]["syslog_warning"]
    # a session's lines are dropped, and still said
    sleeper = spawn(cbin("sleeper"))
    assert sleeper.readline() == "ready\n"
    assert daemon.ctl("attach", str(sleeper.pid)).returncode == 0
    assert daemon.ctl("detach", str(sleeper.pid)).returncode == 0
    wait_until(lambda: json.loads(daemon.ctl("--json", "status").stdout)["counters"]["syslog_dropped"] > 0,
               "syslog lines dropped")  # fmt: skip
    result = daemon.ctl("status")
    assert result.returncode == 0
    line = next(line for line in result.stdout.splitlines() if line.startswith("warning: "))
    assert f"syslog address {missing}" in line
    assert "is dropped" in line


def test_a_syslog_receiver_gives_no_warning(daemon: Any) -> None:
    assert "syslog_unreachable" not in daemon.stderr()
    status = json.loads(daemon.ctl("--json", "status").stdout)
    assert status["daemon"]["syslog_warning"] is None
    assert "warning:" not in daemon.ctl("status").stdout
