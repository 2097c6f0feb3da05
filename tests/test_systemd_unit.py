"""systemd/tracerd.service: systemd accepts it, and it keeps what tracing needs.

``systemd-analyze verify`` works offline (no systemd as PID 1 needed) but
insists that ExecStart names an existing executable, and the unit's
/usr/local/sbin/tracerd is where `make install` links it, not where this
checkout has it (tests/test_install.py verifies the installed unit as is).
So the test verifies a copy whose ExecStart names this venv's tracerd; every
other line is the shipped file's.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tracerd.client import SYSTEM_SOCKET

UNIT = Path(__file__).parent.parent / "systemd" / "tracerd.service"
SOCKET_UNIT = UNIT.with_name("tracerd.socket")
SHIPPED_EXEC_START = "ExecStart=/usr/local/sbin/tracerd"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)"
)


def settings(text: str) -> dict[str, list[str]]:
    """Section.Key -> values, in order (systemd keys may repeat)."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return found


def local_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit (or ``text``) as tmp_path/tracerd.service, ExecStart pointing at this venv."""
    text = UNIT.read_text() if text is None else text
    assert text.count(SHIPPED_EXEC_START + "\n") == 1
    installed = Path(sys.executable).parent / "tracerd"
    command = str(installed) if installed.exists() else f"{sys.executable} -m tracerd.daemon.main"
    copy = tmp_path / "tracerd.service"
    copy.write_text(text.replace(SHIPPED_EXEC_START + "\n", f"ExecStart={command}\n"))
    # Requires=tracerd.socket: verify looks for it beside the service
    (tmp_path / "tracerd.socket").write_text(SOCKET_UNIT.read_text())
    return copy


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def complaints(result: subprocess.CompletedProcess[str], unit: Path) -> list[str]:
    """Lines of verify's output about our unit (other units' noise on a host is not ours)."""
    return [line for line in (result.stdout + result.stderr).splitlines() if unit.name in line]


@needs_systemd_analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    """`systemd-analyze verify` exits 0 and says nothing about tracerd.service."""
    copy = local_copy(tmp_path)
    result = verify(copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert complaints(result, copy) == []


@needs_systemd_analyze
def test_verify_would_catch_a_misspelt_key(tmp_path: Path) -> None:
    """The check above has teeth: a misspelt key in the same unit is reported by name."""
    text = UNIT.read_text().replace("ProtectSystem=strict\n", "ProtectSytem=strict\n")
    copy = local_copy(tmp_path, text)
    result = verify(copy)
    assert any("ProtectSytem" in line for line in complaints(result, copy))


def test_unit_runs_tracerd_as_a_notify_service_with_ordered_shutdown() -> None:
    """Type=notify (READY=1 once the socket listens), SIGHUP reload, and SIGTERM to tracerd alone."""
    unit = settings(UNIT.read_text())
    assert unit["Service.Type"] == ["notify"]
    assert unit["Service.ExecStart"] == ["/usr/local/sbin/tracerd"]
    assert unit["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["Service.KillMode"] == ["mixed"]
    assert "Service.NotifyAccess" not in unit  # the default for notify: the main process only


def test_unit_directories_match_the_default_paths() -> None:
    """/run/tracerd (socket), /var/lib/tracerd and /var/log/tracerd, the latter two root-only."""
    unit = settings(UNIT.read_text())
    assert unit["Service.RuntimeDirectory"] == ["tracerd"]
    assert unit["Service.RuntimeDirectoryMode"] == ["0755"]
    assert unit["Service.StateDirectory"] == ["tracerd"]
    assert unit["Service.StateDirectoryMode"] == ["0750"]
    assert unit["Service.LogsDirectory"] == ["tracerd"]
    assert unit["Service.LogsDirectoryMode"] == ["0750"]


def test_unit_grants_exactly_the_capabilities_tracing_needs() -> None:
    """Bounding set: ptrace, /proc/PID/mem of other uids, signals to them, chown of the socket."""
    unit = settings(UNIT.read_text())
    (bounding,) = unit["Service.CapabilityBoundingSet"]
    assert set(bounding.split()) == {"CAP_SYS_PTRACE", "CAP_DAC_OVERRIDE", "CAP_KILL", "CAP_CHOWN"}
    assert "Service.AmbientCapabilities" not in unit  # root: ambient capabilities change nothing
    assert "Service.User" not in unit


@pytest.mark.parametrize(
    "setting",
    [
        "PrivatePIDs",  # Postfix's pids would not exist inside a PID namespace
        "PrivateUsers",  # CAP_SYS_PTRACE would stop at the user namespace
        "PrivateNetwork",  # remote syslog
        "MemoryDenyWriteExecute",  # gdb embeds Python and libffi; see the unit's comment
        "ProcSubset",  # /proc/stat gives the boot time that identifies a process
        "SecureBits",  # noroot would strip root's capabilities from strace and gdb
    ],
)
def test_unit_avoids_settings_that_break_tracing(setting: str) -> None:
    """Settings that would hide or shield Postfix's processes from tracerd are absent."""
    assert f"Service.{setting}" not in settings(UNIT.read_text())


def test_unit_does_not_hide_other_users_processes() -> None:
    """ProtectProc stays at its default: the postfix-owned daemons must be visible in /proc."""
    assert settings(UNIT.read_text()).get("Service.ProtectProc", ["default"]) == ["default"]


def test_unit_is_hardened() -> None:
    """The sandboxing that costs tracing nothing is on."""
    unit = settings(UNIT.read_text())
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "read-only",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "SystemCallArchitectures": "native",
        "SystemCallFilter": "@system-service @debug",
    }
    for key, value in expected.items():
        assert unit[f"Service.{key}"] == [value], key
    assert re.fullmatch(r"\d+s", unit["Service.TimeoutStopSec"][0])


@needs_systemd_analyze
def test_socket_unit_pair_verifies_and_listens_where_tracerd_binds(tmp_path: Path) -> None:
    """tracerd.socket and tracerd.service pass `systemd-analyze verify` together;
    the socket is tracerd's default socket, passed whole (Accept=no), root's
    only until tracerd applies socket_group; the service requires it and keeps
    /run/tracerd (the socket's directory) when it stops."""
    service = local_copy(tmp_path)
    socket_copy = tmp_path / "tracerd.socket"
    result = verify_all(socket_copy, service)
    assert result.returncode == 0, result.stdout + result.stderr
    assert complaints(result, socket_copy) == complaints(result, service) == []
    found = settings(SOCKET_UNIT.read_text())
    assert found["Socket.ListenStream"] == [SYSTEM_SOCKET]
    assert found["Socket.Accept"] == ["no"]
    assert found["Socket.SocketMode"] == ["0600"]
    unit = settings(UNIT.read_text())
    assert unit["Unit.Requires"] == unit["Unit.After"][-1:] == ["tracerd.socket"]
    assert unit["Service.RuntimeDirectoryPreserve"] == ["yes"]
    assert unit["Install.Also"] == ["tracerd.socket"]


def verify_all(*units: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", *map(str, units)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
