"""SIGHUP applies what can change live, status shows what is in force, and a
watcher that keeps dying is restarted after a growing delay.

A real tracerd, real strace and the real watcher trace real C targets.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import SyslogReceiver, script
from tests.support import send_signal, wait_until
from tracerd.sinks.logfile import TRUNCATION_LINE


def sighup(daemon: Any, text: str) -> None:
    """Write the config and SIGHUP; return once tracerd logged the reload."""
    before = daemon.stderr().count('"event": "reloaded"')
    daemon.config.write_text(text)
    os.kill(daemon.proc.pid, signal.SIGHUP)
    wait_until(lambda: daemon.stderr().count('"event": "reloaded"') > before, "the reload", timeout=15)


def test_sighup_max_log_bytes_applies_to_a_live_session(daemon: Any, cbin: Any, spawn: Any) -> None:
    """A lower max_log_bytes after SIGHUP caps the log of a session already
    running: its log is truncated at the new cap, with the truncation line."""
    sleeper = spawn(cbin("sleeper"))
    assert sleeper.readline() == "ready\n"
    assert daemon.ctl("attach", str(sleeper.pid), "--tracer", "strace").returncode == 0
    log = Path(daemon.session(sleeper.pid)["log"])
    wait_until(lambda: "tick" in log.read_text(), "no strace output")
    sighup(
        daemon,
        daemon.config.read_text().replace("attach_timeout = 10.0", "attach_timeout = 10.0\nmax_log_bytes = 4096"),
    )
    marker = TRUNCATION_LINE.format(limit=4096)
    wait_until(lambda: marker in log.read_text(), f"log not capped at 4096 bytes: {log.stat().st_size} bytes")
    assert daemon.status()["daemon"]["max_log_bytes"] == 4096


def test_status_shows_the_values_in_force_after_sighup(daemon: Any, cbin: Any, spawn: Any, tmp_path: Path) -> None:
    """SIGHUP with a new socket, state_dir and log_dir: socket and state_dir
    need a restart (status keeps the ones in force, lists them in
    restart_needed, the log says restart_needed); log_dir applies to new
    sessions at once."""
    old = daemon.status()["daemon"]
    new_log_dir = tmp_path / "newlog"
    text = daemon.config.read_text()
    text = text.replace(f'state_dir = "{daemon.state_dir}"', f'state_dir = "{tmp_path / "newstate"}"')
    text = text.replace(f'socket = "{daemon.socket}"', f'socket = "{tmp_path / "new.sock"}"')
    text = text.replace(f'log_dir = "{daemon.log_dir}"', f'log_dir = "{new_log_dir}"')
    sighup(daemon, text)
    status = daemon.status()["daemon"]
    assert status["state_dir"] == old["state_dir"]
    assert status["socket"] == old["socket"]
    assert status["log_dir"] == str(new_log_dir)
    assert sorted(status["restart_needed"]) == ["socket", "state_dir"]
    assert '"event": "restart_needed"' in daemon.stderr()
    sleeper = spawn(cbin("sleeper"))
    assert sleeper.readline() == "ready\n"
    assert daemon.ctl("attach", str(sleeper.pid)).returncode == 0
    assert Path(daemon.session(sleeper.pid)["log"]).parent == new_log_dir


def test_sighup_syslog_address_applies_to_live_sessions(daemon: Any, cbin: Any, spawn: Any, tmp_path: Path) -> None:
    """A new [syslog] address after SIGHUP: a session started before it sends
    its closing line to the new receiver."""
    sleeper = spawn(cbin("sleeper"))
    assert sleeper.readline() == "ready\n"
    assert daemon.ctl("attach", str(sleeper.pid), "--tracer", "strace").returncode == 0
    receiver = SyslogReceiver(tmp_path / "new-syslog.sock")
    try:
        text = daemon.config.read_text()
        old_address = text.split("[syslog]\naddress = ")[1].splitlines()[0]
        sighup(daemon, text.replace(f"address = {old_address}", f'address = "{receiver.path}"'))
        assert daemon.status()["daemon"]["syslog"]["address"] == str(receiver.path)
        assert daemon.ctl("detach", str(sleeper.pid)).returncode == 0
        message = receiver.wait_for(f"[{sleeper.pid}]: detached")
        assert "on request" in message
    finally:
        receiver.close()


def test_watcher_restarts_back_off(daemon: Any, cbin: Any, spawn: Any) -> None:
    """Each time the watcher is killed in a row, the next one starts after a
    longer delay: status counts the deaths and shows the delay (250 ms, then
    500 ms), the log says watcher_restart_delayed, and the process is traced again."""
    sleeper = spawn(cbin("sleeper"))
    assert sleeper.readline() == "ready\n"
    assert daemon.ctl("attach", str(sleeper.pid), "--tracer", "watch").returncode == 0
    for deaths, delay in ((1, 250), (2, 500)):
        watcher = daemon.session(sleeper.pid)["tracer_pid"]
        assert watcher
        send_signal(watcher, signal.SIGKILL)

        def traced_again(old: int = watcher) -> bool:
            session = daemon.session(sleeper.pid)
            return session["state"] == "attached" and session["tracer_pid"] not in (None, old)

        wait_until(traced_again, "not traced again after the watcher died")
        counters = daemon.status()["counters"]
        assert counters["watcher_deaths"] == deaths
        assert counters["watcher_restart_delay_ms"] == delay
        assert counters["watcher_restarts"] == deaths
    delays = [json.loads(line)["delay"] for line in daemon.stderr().splitlines()
              if '"watcher_restart_delayed"' in line]  # fmt: skip
    assert delays == [0.25, 0.5]


def test_status_does_not_import_local_commands(daemon: Any) -> None:
    """``tracerctl status`` imports neither triage, bugreport nor postfix."""
    code = (
        "import sys\n"
        "from tracerd.ctl.main import main\n"
        f"code = main(['--socket', {str(daemon.socket)!r}, 'status'])\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[-1] in ('triage', 'bugreport', 'postfix'))\n"
        "print('LOADED', loaded, code, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert "LOADED [] 0" in result.stderr, result.stderr
    assert script("tracerctl")  # the console script is the same main
