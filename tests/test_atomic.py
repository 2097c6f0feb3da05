"""The one atomic writer: whole files, the mode asked for, nothing left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tracerd import atomic


def test_write_file_replaces_whole_with_the_mode_whatever_the_umask(tmp_path: Path) -> None:
    """An existing file is replaced by the new bytes, 0600 even under umask 0, no temp file left."""
    target = tmp_path / "report.json"
    target.write_text("old")
    old_umask = os.umask(0)
    try:
        atomic.write_file(target, b"new" * 1000, 0o600)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new" * 1000
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_a_path_is_not_a_file_name(tmp_path: Path) -> None:
    """write_at takes a name inside the held directory, never a path that leaves it."""
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(ValueError, match="not a file name"):
            atomic.write_at(fd, "../escape", b"x")
    finally:
        os.close(fd)
    assert not (tmp_path.parent / "escape").exists()


def test_failed_write_leaves_the_target_and_no_temp(tmp_path: Path) -> None:
    """A write that fails (the target name is a directory) leaves the old state and no temp file."""
    (tmp_path / "taken").mkdir()
    with pytest.raises(OSError):
        atomic.write_file(tmp_path / "taken", b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
