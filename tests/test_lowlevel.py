"""The shared low-level helpers: one control-character cleaner for every view of hostile text."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support import send_signal
from tracerd import procinfo
from tracerd.crash.report import _clean as report_clean
from tracerd.ctl import crashview, maillog
from tracerd.errors import TracerFailed
from tracerd.sinks.syslog import clean as syslog_clean
from tracerd.spawn import Child
from tracerd.tracers.base import Target
from tracerd.tracers.gdb import GdbTracer

T = TypeVar("T")
HOSTILE = "a\x9b31mb\x1b[0m\tc\x85d\x7fe\nf"


def test_every_cleaner_replaces_c1_controls() -> None:
    """C1 controls (\\x9b is a one-byte CSI on some terminals, \\x85 a line break) become '?'
    in crash reports, crash views, mail log excerpts and syslog records alike."""
    assert crashview.clean(HOSTILE) == "a?31mb?[0m?c?d?e?f"
    assert crashview.clean_block(HOSTILE) == "a?31mb?[0m\tc?d?e\nf"
    assert report_clean(HOSTILE) == "a?31mb?[0m?c?d?e?f"
    assert report_clean(HOSTILE, lines=True) == "a?31mb?[0m\tc?d?e\nf"
    assert maillog.clean(HOSTILE) == "a?31mb?[0m\tc?d?e?f"
    assert syslog_clean(HOSTILE) == "a?31mb?[0m\tc?d?e?f"


def _run_guarded(scenario: Callable[[dict[str, int]], Coroutine[Any, Any, T]], pids: dict[str, int]) -> T:
    """Run ``scenario`` on a loop in a thread; if it hangs (the defect), kill the pids it
    registered so that the thread ends, and fail."""
    result: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(scenario(pids)))
        except BaseException as err:  # handed to the test thread
            errors.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    hung = thread.is_alive()
    if hung:
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                send_signal(pid, signal.SIGKILL)
        thread.join(30)
    assert not hung, "the event loop blocked"
    if errors:
        raise errors[0]
    return result[0]


def test_child_write_to_a_tracer_that_does_not_read_fails_clearly() -> None:
    """A tracer that never reads its stdin: write() never blocks the loop; once 1 MiB waits,
    it raises TracerFailed saying the tracer is not reading."""

    async def scenario(pids: dict[str, int]) -> str:
        child = Child(["sleep", "120"], lambda lines: None, stdin=True, pdeathsig=False)
        pids["sleep"] = child.pid
        try:
            for _ in range(64):  # 4 MiB: far beyond the pipe and the 1 MiB bound
                try:
                    child.write(b"x" * 65536)
                except TracerFailed as failed:
                    return str(failed)
            return "every write was taken"
        finally:
            await child.stop(signal.SIGKILL)
            child.close()

    message = _run_guarded(scenario, {})
    assert "is not reading its input" in message


def test_child_write_delivers_everything_in_order_to_a_slow_reader(tmp_path: Path) -> None:
    """What the pipe does not take at once is fed by the loop: all bytes arrive, in order."""
    out = tmp_path / "got"
    data = bytes(range(256)) * 2048  # 512 KiB: more than a pipe holds

    async def scenario(pids: dict[str, int]) -> int:
        child = Child(["sh", "-c", f"sleep 0.5; cat > {out}"], lambda lines: None, stdin=True,
                      pdeathsig=False)  # fmt: skip
        pids["sh"] = child.pid
        child.write(data)
        for _ in range(600):  # bounded: the loop feeds cat as it reads
            if not child._inbox:
                break
            await asyncio.sleep(0.1)
        assert child.proc.stdin is not None
        child.proc.stdin.close()
        code = await child.exit_or_kill(60)
        child.close()
        return code

    assert _run_guarded(scenario, {}) == 0
    assert out.read_bytes() == data


class _Output:
    """A real Output for a backend run in-process: keeps what it is told."""

    log_path = ""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def line(self, text: str) -> None:
        pass

    def lines(self, texts: list[str]) -> None:
        pass

    def block(self, text: str) -> None:
        pass

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def capturing(self, identity: Any, name: str, signal: str) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()

    async def crash(self, report: Any) -> str | None:
        return None


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb not installed")
def test_gdb_detach_is_bounded_when_no_session_loop_runs(spawn: Any) -> None:
    """GdbTracer.detach() with nobody serving its requests (no wait() loop): it gives up
    after detach_timeout, warns, ends gdb, and the process runs on untraced."""
    target = spawn("sleep", "120")
    output = _Output()

    async def scenario(pids: dict[str, int]) -> int:
        tracer = GdbTracer(Target(procinfo.identify(target.pid), "sleep"), output)
        tracer.detach_timeout = 2.0
        await tracer.attach()
        assert tracer.mi.pid is not None
        pids["gdb"] = tracer.mi.pid
        assert procinfo.tracer_pid(target.pid) == tracer.mi.pid
        await tracer.detach()
        tracer._release_pidfd()
        return procinfo.tracer_pid(target.pid)

    assert _run_guarded(scenario, {}) == 0
    assert target.proc.poll() is None  # still running
    assert any("did not detach" in warning for warning in output.warnings)
