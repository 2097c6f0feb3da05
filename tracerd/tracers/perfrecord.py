"""perf's recording on disk, printed a file at a time (the perf tracer's buffered mode).

perf closes ``perf.data.<timestamp>`` every second and says ``[ perf record:
Dump ... ]``; :class:`Replayer` prints each with ``perf trace -i FILE [ARGS]``,
in order, counts its lost events and deletes it (docs/design.md, "Tracers").
Lost events come from PERF_RECORD_LOST records, raised to the kernel's
PERF_RECORD_LOST_SAMPLES totals at perf's end if those are higher.

Security: a 0700 directory of ours under state_dir (or the tmp dir), removed
at the end (a killed tracerd's, before the next session); names matched whole,
argv lists only.  The files hold addresses and numbers, bounded by --max-size.

Diagnostics: a file perf cannot print gives a log line with perf's last words;
a hung replay is killed after REPLAY_TIMEOUT; only the caller's own exceptions
escape :meth:`Replayer.drain`.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import re
import shutil
import signal
import stat
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

from tracerd.errors import TracerFailed
from tracerd.spawn import Child

SWITCH = "1s"  # how often perf closes a file: the lines' delay
MAX_SIZE = "64M"  # one file's bound (one second of events)
# 1 MiB per thread: no loss at a getppid() loop's rate (docs/performance.md, "Figures")
BUFFER = ("--per-thread", "-m", "256")
FILE_RE = re.compile(r"perf\.data\.\d{1,20}")
REPLAY_TIMEOUT = 60.0
CHECK_TIMEOUT = 10.0
OPTION_ERROR = 129  # perf's exit status for a bad option
# perf trace options that size the recording: given to perf record
RECORD_OPTIONS = ("-m", "--mmap-pages", "--max-size")
# perf trace -i does not apply these to recorded events: refused rather than ignored
UNSUPPORTED = ("-e", "--event", "--expr")
# where perf reads and writes: tracerd's to choose
OWN = ("-i", "--input", "-o", "--output", "-p", "--pid")
PERF_MAGIC = b"PERFILE2"
PERF_RECORD_LOST = 2
PERF_RECORD_SAMPLE = 9
PERF_RECORD_LOST_SAMPLES = 13
SIZE_LIMIT = "perf size limit reached"
_HEADER = struct.Struct("<IHH")
_U64 = struct.Struct("<Q")


def split_args(args: tuple[str, ...] | list[str]) -> tuple[list[str], list[str]]:
    """The rule's perf trace ARGS as (perf record's, perf trace -i's); TracerFailed for -e."""
    record: list[str] = []
    replay: list[str] = []
    items = list(args)
    while items:
        arg = items.pop(0)
        name = arg.split("=", 1)[0]
        if name in UNSUPPORTED or (arg.startswith("-e") and not arg.startswith("--")):
            raise TracerFailed(
                f"perf tracer: {name[:2] if not arg.startswith('--') else name} is not applied to recorded"
                " events by perf trace -i; trace every call, or use the strace tracer"
            )
        if name in OWN or (arg[:2] in ("-i", "-o", "-p") and not arg.startswith("--")):
            raise TracerFailed(f"perf tracer: {name[:2] if not arg.startswith('--') else name} is set by tracerd")
        if name in RECORD_OPTIONS or (arg.startswith("-m") and not arg.startswith("--")):
            record.append(arg)
            if arg in RECORD_OPTIONS:
                if not items:
                    raise TracerFailed(f"perf tracer: {arg} needs a value")
                record.append(items.pop(0))
            continue
        replay.append(arg)
    return record, replay


async def check_replay_args(args: list[str]) -> str | None:
    """perf's one-line rejection of the printing options, or None (options are parsed before the
    input is opened, so an impossible path shows a bad option at once)."""
    if not args:
        return None
    proc = await asyncio.create_subprocess_exec(
        "perf", "trace", "-i", "/dev/null/none", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), CHECK_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None  # inconclusive: the files will say
    if proc.returncode != OPTION_ERROR:
        return None
    lines = [line.strip() for line in output.decode("utf-8", "replace").splitlines() if line.strip()]
    return f"perf tracer: perf trace rejects the rule's args: {lines[0] if lines else 'usage error'}"


def scan(path: str) -> tuple[int, int, int]:
    """(samples, events lost per LOST records, events lost per LOST_SAMPLES) in one perf.data."""
    samples = lost = lost_samples = 0
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size < 56:
            return 0, 0, 0
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data[:8] != PERF_MAGIC:
                return 1, 0, 0  # not ours to read: let perf say
            offset, size = struct.unpack_from("<QQ", data, 40)
            end = min(offset + size, len(data))
            pos = offset
            header = _HEADER.unpack_from
            while pos + 8 <= end:
                kind, _misc, length = header(data, pos)
                if length < 8:
                    break
                if kind == PERF_RECORD_SAMPLE:
                    samples += 1
                elif kind == PERF_RECORD_LOST and pos + 24 <= end:
                    lost += _U64.unpack_from(data, pos + 16)[0]
                elif kind == PERF_RECORD_LOST_SAMPLES and pos + 16 <= end:
                    lost_samples += _U64.unpack_from(data, pos + 8)[0]
                pos += length
    return samples, lost, lost_samples


_swept: set[Path] = set()


def sweep(base: Path) -> None:
    """Remove the session directories a tracerd that died left in ``base``."""
    for entry in os.scandir(base):
        if entry.name.startswith("perf-") and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)


def private_dir(state_dir: Path | None, pid: int) -> Path:
    """A new 0700 directory for one session's files, under STATE_DIR/perf (or the tmp dir)."""
    base = Path(tempfile.gettempdir()) if state_dir is None else state_dir / "perf"
    try:
        base.mkdir(mode=0o700, exist_ok=True)
        info = base.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            raise TracerFailed(f"perf tracer: {base} is not a directory of tracerd's")
        if state_dir is not None and base not in _swept:
            _swept.add(base)
            sweep(base)
        return Path(tempfile.mkdtemp(prefix=f"perf-{pid}-", dir=base))
    except OSError as err:
        raise TracerFailed(f"perf tracer: cannot make a directory for perf's files in {base}: {err.strerror}") from err


class Replayer:
    """Prints each file perf closes in ``directory``, in order, then deletes it."""

    def __init__(
        self,
        directory: Path,
        replay_args: list[str],
        on_lines: Callable[[list[str]], None],
        on_lost: Callable[[int], None],
        on_unprinted: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.directory = directory
        self.replay_args = replay_args
        self.on_lines = on_lines
        self.on_lost = on_lost
        # the last file again, without the rule's args, for what they filtered (exit_group); not logged
        self.on_unprinted = on_unprinted
        self._kept: str | None = None  # the newest file printed, kept for that when args filter
        self.lost = 0
        self._kick = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def kick(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        self._kick.set()

    async def _run(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            await self._ready()

    async def drain(self) -> None:
        """perf has ended: print what it left, and stop."""
        await self._ready()
        task, self._task = self._task, None
        if task is not None:  # idle now: it waits for a kick, or for the lock we just let go
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        kept, self._kept = self._kept, None
        if kept is not None and self.on_unprinted is not None:
            try:
                await self._replay(kept, [], self.on_unprinted)
            finally:
                _forget(kept)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        shutil.rmtree(self.directory, ignore_errors=True)

    async def _ready(self) -> None:
        async with self._lock:
            try:
                kept = os.path.basename(self._kept) if self._kept else None
                names = sorted(name for name in os.listdir(self.directory) if FILE_RE.fullmatch(name) and name != kept)
            except OSError:
                return
            for name in names:
                path = str(self.directory / name)
                try:
                    await self._one(path)
                finally:
                    if self.replay_args and self.on_unprinted is not None:
                        _forget(self._kept)
                        self._kept = path
                    else:
                        _forget(path)

    async def _one(self, path: str) -> None:
        try:
            samples, lost, lost_samples = await asyncio.to_thread(scan, path)
        except (OSError, ValueError, struct.error):
            samples, lost, lost_samples = 1, 0, 0
        if samples:
            await self._replay(path, self.replay_args, self.on_lines)
        # LOST records as they came; the kernel's totals (at perf's end) where higher
        more = lost + max(0, lost_samples - (self.lost + lost))
        if more:
            self.lost += more
            self.on_lost(more)

    async def _replay(self, path: str, args: list[str], sink: Callable[[list[str]], None]) -> None:
        last = [""]

        def on_lines(lines: list[str]) -> None:
            last[0] = next((line.strip() for line in reversed(lines) if line.strip()), last[0])
            sink(lines)

        # -o: through stdio's buffer (stderr, the default, costs a write() per line)
        child = Child(["perf", "trace", "-i", path, "-o", "/dev/stdout", *args], on_lines)
        try:
            code = await asyncio.wait_for(asyncio.shield(child.wait()), REPLAY_TIMEOUT)
        except TimeoutError:
            code = await child.stop(signal.SIGKILL)
            sink([f"tracerd: perf trace -i took over {REPLAY_TIMEOUT:.0f} s; killed"])
        except asyncio.CancelledError:
            child.send_signal(signal.SIGKILL)  # given up on from above: reaped by its pidfd, not waited for
            raise
        finally:
            child.close()
        if code != 0:
            sink([f"tracerd: perf trace -i ended with status {code} {last[0]}".rstrip()])


def _forget(path: str | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            os.unlink(path)
