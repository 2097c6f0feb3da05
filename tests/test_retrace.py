"""Retrace and post-mortem (README "Cores and retrace"): a stripped target's
unnamed frames named again from split debug files (a local .build-id root,
a real debuginfod), bounded against a server that hangs or answers garbage;
build-ids of the mapped copies (a library replaced on disk after the start);
glibc's assertion message; gdb on the saved core in a pseudo-terminal."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import have
from tests.support import C_DIR, script, wait_until
from tracerd.crash import elfinfo

pytestmark = pytest.mark.skipif(not (have("gdb") and have("objcopy")), reason="gdb and binutils are needed")


class Built:
    """retrace_target stripped, its debug file split off, and libretracelib.so beside it."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "bin"
        self.dir.mkdir()
        self.lib = self.dir / "libretracelib.so"
        self.build_lib(self.lib, 1)
        self.exe = self.dir / "retrace_target"
        subprocess.run(["gcc", "-g", "-O0", "-Wall", "-o", str(self.exe), str(C_DIR / "retrace_target.c"),
                        f"-L{self.dir}", "-lretracelib", f"-Wl,-rpath,{self.dir}"], check=True)  # fmt: skip
        self.debug = root / "retrace_target.debug"
        subprocess.run(["objcopy", "--only-keep-debug", str(self.exe), str(self.debug)], check=True)
        subprocess.run(["strip", "--strip-all", str(self.exe)], check=True)
        build_id = elfinfo.build_id(self.exe)
        assert build_id and build_id == elfinfo.build_id(self.debug)
        self.build_id = build_id
        self.debug_root = root / "debug"  # stands for /usr/lib/debug
        placed = self.debug_root / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug"
        placed.parent.mkdir(parents=True)
        shutil.copy(self.debug, placed)

    def build_lib(self, path: Path, variant: int) -> None:
        subprocess.run(["gcc", "-g", "-shared", "-fPIC", f"-DVARIANT={variant}", "-o", str(path),
                        str(C_DIR / "retracelib.c")], check=True)  # fmt: skip


@pytest.fixture
def built(tmp_path: Path) -> Built:
    return Built(tmp_path)


@pytest.fixture
def retrace_daemon(daemon_factory: Any) -> Any:
    return daemon_factory('crash_flood_window = 0\ncore = "all"\n[[rule]]\nprocess = "*"\ntracer = "watch"\n')


def crash(daemon: Any, spawn: Any, exe: Path, mode: str, before_release: Any = None) -> dict[str, Any]:
    target = spawn(exe, daemon.hook_command(), "retraced", mode)
    assert target.readline() == "hook=0\n"
    if before_release is not None:
        before_release()
    target.release()
    assert target.wait() in (-signal.SIGSEGV, -signal.SIGABRT)
    session = daemon.wait_session(target.pid, "crashed")
    assert session["crash"], (session, daemon.stderr()[-3000:])
    report: dict[str, Any] = json.loads(daemon.ctl("--json", "crash", session["crash"]).stdout)["crash"]
    return report


def retrace(daemon: Any, crash_id: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*script("tracerctl"), "--socket", str(daemon.socket), "retrace", crash_id,
                           "--state-dir", str(daemon.state_dir), *args],
                          capture_output=True, text=True, timeout=120, env=env, check=False)  # fmt: skip


def crashed_frames(report: dict[str, Any]) -> list[dict[str, Any]]:
    return list(next(t for t in report["threads"] if t["crashed"])["frames"])


def test_retrace_names_stripped_frames_from_a_local_build_id_root(
    retrace_daemon: Any, spawn: Any, built: Built, tmp_path: Path
) -> None:
    """A stripped target's frames have no names but a pc, a module offset and
    the build-id; retrace with the split debug file under a .build-id root
    names them with file:line, says the source, and keeps the record beside the report."""
    report = crash(retrace_daemon, spawn, built.exe, "deep3")
    frames = crashed_frames(report)
    ours = [f for f in frames if f["build_id"] == built.build_id]
    assert len(ours) >= 5
    assert all(f["function"] is None and f["module_offset"] and f["pc"] for f in ours), ours
    exe = next(lib for lib in report["libraries"] if lib["build_id"] == built.build_id)
    assert exe["build_id_source"] == "map_files" and exe["bias"] and exe["deleted"] is False
    empty = tmp_path / "nothing"
    plain = retrace(retrace_daemon, report["id"], "--json", "--no-debuginfod", "--debug-dir", str(empty))
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["changed"] == []
    result = retrace(retrace_daemon, report["id"], "--json", "--no-debuginfod", "--debug-dir", str(built.debug_root))
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    named = {(c["level"], c["function"]) for c in record["changed"]}
    assert (0, "retrace_crash_here") in named
    assert {"descend", "main"} <= {function for _, function in named}
    top = next(c for c in record["changed"] if c["level"] == 0)
    assert top["file"].endswith("retrace_target.c") and top["line"] == 22
    assert top["source"] == "local"
    assert json.loads(Path(record["saved"]).read_text())["changed"] == record["changed"]
    text = retrace(retrace_daemon, report["id"], "--no-debuginfod", "--debug-dir", str(built.debug_root)).stdout
    assert "retrace_crash_here () at " in text
