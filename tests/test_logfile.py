"""Per-process log files: order, append-only, refusals, size cap, rotation, full disks.

Real files, a real writer thread, and for the full-disk case a real 64 KiB
tmpfs: nothing is mocked.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tracerd.errors import ConfigError
from tracerd.sinks.logfile import TRUNCATION_LINE, LogDir, UnsafeLogFile
from tracerd.sinks.logwriter import LogWriter


@pytest.fixture
def writer() -> Iterator[LogWriter]:
    writer = LogWriter()
    writer.start()
    yield writer
    writer.stop()


@pytest.fixture
def logdir(tmp_path: Path, writer: LogWriter) -> Iterator[LogDir]:
    logdir = LogDir(tmp_path / "log", max_log_bytes=1 << 20, writer=writer)
    yield logdir
    logdir.close()


def test_lines_reach_the_file_in_order(logdir: LogDir, writer: LogWriter) -> None:
    """Lines and blocks come out in the order they were queued, counted exactly."""
    log = logdir.open_log("smtpd.1234.log")
    expected = []
    for number in range(2000):
        log.write_line(f"line {number}")
        expected.append(f"line {number}\n")
    log.write_block("frame 1\nframe 2\n")
    expected += ["frame 1\n", "frame 2\n"]
    log.close()
    assert writer.flush()
    text = log.path.read_text()
    assert text == "".join(expected)
    assert log.lines == 2002
    assert log.bytes == len(text.encode())
    assert log.dropped == 0
    assert log.error is None


def test_new_log_directory_and_file_modes(tmp_path: Path, writer: LogWriter) -> None:
    """A missing log_dir is created (parents too) 0750; a new log is 0640."""
    logdir = LogDir(tmp_path / "a" / "b", max_log_bytes=4096, writer=writer)
    try:
        log = logdir.open_log("smtpd.1.log")
        log.close()
        assert writer.flush()
        assert (tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o750 & ~_umask()
        assert log.path.stat().st_mode & 0o777 == 0o640 & ~_umask()
    finally:
        logdir.close()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_existing_file_is_appended_never_truncated(logdir: LogDir, writer: LogWriter) -> None:
    """A log left by an earlier process with the same pid is appended to, not wiped."""
    old = logdir.path / "smtpd.77.log"
    old.write_text("earlier process\n")
    log = logdir.open_log("smtpd.77.log")
    log.write_line("this process")
    log.close()
    assert writer.flush()
    assert old.read_text() == "earlier process\nthis process\n"


@pytest.mark.parametrize("target_exists", [True, False])
def test_symlink_at_log_path_is_refused(
    logdir: LogDir, tmp_path: Path, target_exists: bool
) -> None:
    """A symlink planted at the log path: ELOOP, and its target is neither written nor created."""
    target = tmp_path / "shadow"
    if target_exists:
        target.write_text("root:secret\n")
    (logdir.path / "smtpd.5.log").symlink_to(target)
    with pytest.raises(UnsafeLogFile) as caught:
        logdir.open_log("smtpd.5.log")
    assert caught.value.errno == errno.ELOOP
    if target_exists:
        assert target.read_text() == "root:secret\n"
    else:
        assert not target.exists()


def test_fifo_at_log_path_is_refused(logdir: LogDir) -> None:
    """A FIFO planted at the log path is refused, with or without a reader, without hanging."""
    fifo = logdir.path / "smtpd.6.log"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeLogFile) as caught:
        logdir.open_log("smtpd.6.log")  # no reader: O_NONBLOCK makes open fail, not wait
    assert caught.value.errno == errno.ENXIO
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(UnsafeLogFile) as caught:
            logdir.open_log("smtpd.6.log")  # a reader: open works, fstat refuses
        assert caught.value.errno == errno.EINVAL
        assert os.read(reader, 100) == b""
    finally:
        os.close(reader)


def test_hard_link_at_log_path_is_refused(logdir: LogDir, tmp_path: Path) -> None:
    """A hard link to another file planted at the log path is refused, the file untouched."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.link(victim, logdir.path / "smtpd.8.log")
    with pytest.raises(UnsafeLogFile) as caught:
        logdir.open_log("smtpd.8.log")
    assert caught.value.errno == errno.EMLINK
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "a/b", "../x", "a\0b"])
def test_names_that_leave_the_directory_are_refused(logdir: LogDir, name: str) -> None:
    """A log name is one plain directory entry: anything else is a ValueError."""
    with pytest.raises(ValueError, match="unsafe log file name"):
        logdir.open_log(name)


def test_log_dir_that_is_a_symlink_is_refused(tmp_path: Path, writer: LogWriter) -> None:
    """log_dir itself being a symlink (even to a fine directory) is a ConfigError."""
    real = tmp_path / "real"
    real.mkdir(mode=0o750)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match="symlink"):
        LogDir(link, max_log_bytes=4096, writer=writer)


def test_log_dir_writable_by_others_is_refused(tmp_path: Path, writer: LogWriter) -> None:
    """A log_dir others can write to (and so plant files in) is a ConfigError naming the fix."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigError, match="chmod go-w"):
        LogDir(shared, max_log_bytes=4096, writer=writer)


def test_size_cap_writes_one_truncation_line_and_counts_drops(
    tmp_path: Path, writer: LogWriter
) -> None:
    """Past max_log_bytes: exactly one truncation line, then every line dropped and counted."""
    logdir = LogDir(tmp_path / "log", max_log_bytes=100, writer=writer)
    try:
        log = logdir.open_log("smtpd.9.log")
        for _ in range(25):
            log.write_line("123456789")  # 10 bytes with its newline: 10 fit exactly
        log.write_block("more\nand more\n")
        assert writer.flush()
        marker = TRUNCATION_LINE.format(limit=100)
        assert log.path.read_text() == "123456789\n" * 10 + marker + "\n"
        assert log.truncated
        assert log.dropped == 15 + 2
        assert log.lines == 11
        log.close()
    finally:
        logdir.close()


def test_close_writes_the_final_line_even_after_truncation(
    tmp_path: Path, writer: LogWriter
) -> None:
    """The closing line is written past the cap; close is idempotent; later lines are dropped."""
    logdir = LogDir(tmp_path / "log", max_log_bytes=50, writer=writer)
    try:
        log = logdir.open_log("smtpd.10.log")
        for _ in range(10):
            log.write_line("x" * 20)
        log.close(final_line="tracerd: smtpd[10] exited with status 0")
        log.close(final_line="never written")
        log.write_line("after close")
        assert writer.flush()
        lines = log.path.read_text().splitlines()
        assert lines[-1] == "tracerd: smtpd[10] exited with status 0"
        assert lines[-2] == TRUNCATION_LINE.format(limit=50)
        assert "never written" not in lines
        assert log.closed
        assert log.dropped == 8 + 1
    finally:
        logdir.close()


def test_reopen_after_rename_creates_a_new_file(logdir: LogDir, writer: LogWriter) -> None:
    """logrotate renames the log, SIGHUP reopens it: new lines go to a new file by that name."""
    log = logdir.open_log("smtpd.11.log")
    log.write_line("before rotation")
    assert writer.flush()
    rotated = logdir.path / "smtpd.11.log.1"
    os.rename(log.path, rotated)
    log.reopen()
    log.write_line("after rotation")
    log.close()
    assert writer.flush()
    assert rotated.read_text() == "before rotation\n"
    assert log.path.read_text() == "after rotation\n"


def test_reopen_dir_follows_a_recreated_directory(tmp_path: Path, writer: LogWriter) -> None:
    """After log_dir is moved away and recreated, reopen_dir makes new logs land in the new one."""
    path = tmp_path / "log"
    logdir = LogDir(path, max_log_bytes=4096, writer=writer)
    try:
        path.rename(tmp_path / "old")
        logdir.reopen_dir()
        log = logdir.open_log("smtpd.12.log")
        log.write_line("fresh")
        log.close()
        assert writer.flush()
        assert (path / "smtpd.12.log").read_text() == "fresh\n"
        assert not (tmp_path / "old" / "smtpd.12.log").exists()
    finally:
        logdir.close()


def test_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    """With the writer not draining, write_line returns at once; over budget lines are counted."""
    writer = LogWriter(max_queue_bytes=1000)  # not started: nothing drains the queue
    logdir = LogDir(tmp_path / "log", max_log_bytes=1 << 20, writer=writer)
    try:
        log = logdir.open_log("smtpd.13.log")
        for _ in range(500):
            log.write_line("x" * 9)  # 10 bytes each: 100 fit the budget
        assert log.lines == 100
        assert log.dropped == 400
        log.close(final_line="closed")  # forced past the budget
        writer.stop()
        assert log.path.read_text() == ("x" * 9 + "\n") * 100 + "closed\n"
    finally:
        writer.stop()
        logdir.close()


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs mounted for this test (root only), unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mnt)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    except FileNotFoundError:
        pytest.skip("no mount command: cannot make a small filesystem to fill")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root and mount rights): {done.stderr.strip()}")
    yield mnt
    if subprocess.run(["umount", str(mnt)], check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path: Path) -> None:
    with open(path, "wb", buffering=0) as filler, contextlib.suppress(OSError):
        while True:
            filler.write(b"\0" * 4096)


def test_write_errors_are_recorded_and_writing_resumes(tiny_tmpfs: Path) -> None:
    """A full disk: error set, lines dropped and counted, one report per failure; then recovery."""
    writer = LogWriter()
    writer.start()
    logdir = LogDir(tiny_tmpfs / "log", max_log_bytes=1 << 20, writer=writer)
    reports: list[str] = []
    try:
        log = logdir.open_log("smtpd.14.log")
        log.on_error = reports.append
        _fill(tiny_tmpfs / "filler")
        for number in range(5):
            log.write_line(f"lost {number} " + "y" * 100)
        assert writer.flush()
        assert log.error == os.strerror(errno.ENOSPC)
        assert log.dropped == 5
        assert reports == [os.strerror(errno.ENOSPC)]

        (tiny_tmpfs / "filler").unlink()
        log.write_line("back again")
        assert writer.flush()
        assert log.error is None
        assert log.path.read_text() == "back again\n"

        # a second failure is a second transition: reported again
        _fill(tiny_tmpfs / "filler")
        log.write_line("z" * 8192)
        assert writer.flush()
        assert log.error == os.strerror(errno.ENOSPC)
        assert len(reports) == 2

        # the long line was cut part-way: the next one still starts a line of its own
        (tiny_tmpfs / "filler").unlink()
        log.write_line("recovered")
        assert writer.flush()
        lines = log.path.read_text().splitlines()
        assert lines[0] == "back again"
        assert set(lines[1]) == {"z"}
        assert lines[2:] == ["recovered"]
        assert log.error is None
    finally:
        writer.stop()
        logdir.close()
