"""The session state machine, in process: a real backend of the tests' own.

:class:`ToyTracer` is a real :class:`~tracerd.tracers.base.Tracer`: its
"tracer" is a real child process (``sleep``), and it sees its target end
through a real pidfd.  It is registered in the tracer registry for the test
(one line, as README's development section says), and the daemon's own
request handler (:class:`~tracerd.daemon.service.TracerdService`) runs it.
Nothing is mocked; every process is reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import send_signal
from tracerd import procinfo, tracers
from tracerd.config import Config, SyslogConfig, parse, replace
from tracerd.daemon.auth import Peer
from tracerd.daemon.service import TracerdService
from tracerd.daemon.sessions import IllegalTransition, Session, State
from tracerd.errors import ConfigError, TracerFailed
from tracerd.protocol import Request
from tracerd.sinks.logfile import LogDir
from tracerd.sinks.logwriter import LogWriter
from tracerd.sinks.syslog import SyslogSink
from tracerd.tracers.base import Ending, Tracer

BOUND = 30.0  # every wait in these tests; none is a timing threshold


class ToyTracer(Tracer):
    """Attaches by starting a real ``sleep`` as its tracer; ends when the target,
    the tracer or a detach does."""

    name = "toy"
    fail_attach = False

    async def attach(self) -> None:
        if self.fail_attach:
            raise TracerFailed("toy refuses to attach")
        self.child = await asyncio.create_subprocess_exec("sleep", "1000")
        self.tracer_pid = self.child.pid
        self._pidfd = procinfo.open_pidfd(self.target.identity)
        self._gone = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().add_reader(self._pidfd, self._target_gone)
        self._detached = asyncio.Event()

    def _target_gone(self) -> None:
        if not self._gone.done():
            self._gone.set_result(None)

    async def wait(self) -> Ending:
        tracer = asyncio.ensure_future(self.child.wait())
        detached = asyncio.ensure_future(self._detached.wait())
        try:
            await asyncio.wait({tracer, detached, self._gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            for each in (tracer, detached):
                each.cancel()
        if self._gone.done():
            ending = Ending("exited", reason="target ended")
        elif detached.done():
            ending = Ending("detached")
        else:
            return Ending("failed", reason="toy tracer died", reattach=True)
        await self._stop_child()
        return ending

    async def detach(self) -> None:
        self._detached.set()

    async def _stop_child(self) -> None:
        if self.child.returncode is None:
            self.child.kill()
        await self.child.wait()


class FailingTracer(ToyTracer):
    fail_attach = True


class StubbornTracer(ToyTracer):
    """A tracer that never lets go: detach hangs, wait never ends."""

    async def detach(self) -> None:
        await asyncio.Event().wait()

    async def wait(self) -> Ending:
        try:
            await asyncio.Event().wait()
        finally:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            await self._stop_child()
        raise AssertionError("unreachable")


@pytest.fixture(autouse=True)
def toy_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding a tracer is one registry line: these are the tests' own."""
    for name, cls in (("toy", "ToyTracer"), ("failing", "FailingTracer"), ("stubborn", "StubbornTracer")):
        monkeypatch.setitem(tracers.BACKENDS, name, f"tests.test_runner:{cls}")


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "1000"])
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=BOUND)


def run(tmp_path: Path, body: Callable[[TracerdService], Awaitable[None]]) -> None:
    """Run ``body`` against a real request handler and runner on a fresh loop."""
    config = replace(Config(), log_dir=tmp_path / "log", state_dir=tmp_path / "state",
                     syslog=SyslogConfig(enabled=False))  # fmt: skip
    config.state_dir.mkdir()

    async def main() -> None:
        writer = LogWriter()
        writer.start()
        service = TracerdService(config, LogDir(config.log_dir, max_log_bytes=1 << 20, writer=writer),
                                 SyslogSink(config.syslog))  # fmt: skip
        try:
            await asyncio.wait_for(body(service), BOUND)
        finally:
            await asyncio.wait_for(service.shutdown(timeout=1.0), BOUND)
            writer.stop()
            service.close()

    asyncio.run(main())


def me() -> Peer:
    return Peer(os.getpid(), os.geteuid(), os.getegid())


async def attach(service: TracerdService, pid: int, tracer: str) -> dict[str, Any]:
    reply = await service.handle(Request("attach", pid=pid, name="toy", tracer=tracer), me())
    return dict(reply["session"])


async def until(check: Callable[[], bool]) -> None:
    """Poll a state that has no event of its own; bounded by run()'s BOUND."""
    while not check():  # noqa: ASYNC110
        await asyncio.sleep(0.01)


def text_of(path: str) -> str:
    """A log's text (small files in tmp_path: reading them does not stall the test's loop)."""
    return Path(path).read_text()


def test_transition_refuses_illegal_moves() -> None:
    """attaching -> attached -> detached is legal; skipping attached, leaving an
    ending, or an unknown state raise IllegalTransition; JSON keeps the plain value."""
    session = Session(procinfo.identify(os.getpid()), "me", "toy", log="/dev/null")
    with pytest.raises(IllegalTransition):
        session.transition(State.EXITED)  # attaching -> exited: never attached
    session.transition(State.ATTACHED)
    with pytest.raises(IllegalTransition):
        session.transition(State.ATTACHING)
    with pytest.raises(IllegalTransition):
        session.transition("asleep")
    session.transition(State.DETACHED)
    assert session.to_json()["state"] == "detached"
    assert session.ended is not None
    for state in State:
        with pytest.raises(IllegalTransition):
            session.transition(state)  # an ended session moves no more


def test_attach_then_the_process_exits(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """A real target attached by the toy backend: attached with its tracer pid,
    then exited when it dies; the log ends with its closing line."""

    async def body(service: TracerdService) -> None:
        session = await attach(service, sleeper.pid, "toy")
        assert session["state"] == "attached"
        assert session["tracer_pid"]
        sleeper.kill()
        sleeper.wait(timeout=BOUND)
        await until(lambda: service.registry.find(sleeper.pid).state == State.EXITED)
        assert service.counters["exited"] == 1
        assert len(service.registry) == 0
        log = text_of(session["log"])
        assert "attached with toy" in log
        assert log.rstrip().endswith("ended (target ended)")

    run(tmp_path, body)


def test_detach_leaves_the_process_running(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """detach ends the session ``detached`` (on request); the process runs on."""

    async def body(service: TracerdService) -> None:
        await attach(service, sleeper.pid, "toy")
        reply = await service.handle(Request("detach", pid=sleeper.pid), me())
        assert reply["session"]["state"] == "detached"
        assert sleeper.poll() is None
        assert service.counters["detached"] == 1

    run(tmp_path, body)


def test_failed_attach_is_a_failed_session(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """A backend whose attach raises: the request fails, the session is
    ``failed`` (attaching -> failed) with the reason, and it is counted."""

    async def body(service: TracerdService) -> None:
        with pytest.raises(TracerFailed, match="toy refuses to attach"):
            await attach(service, sleeper.pid, "failing")
        session = service.registry.find(sleeper.pid)
        assert session.state == State.FAILED
        assert session.error == "toy refuses to attach"
        assert service.counters["sessions_failed"] == 1

    run(tmp_path, body)


def test_tracer_death_reattaches(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """The tracer dies, the process does not: the session ends ``failed`` and a
    new one traces the same process again, with a new tracer."""

    async def body(service: TracerdService) -> None:
        first = await attach(service, sleeper.pid, "toy")
        send_signal(first["tracer_pid"], signal.SIGKILL)

        def reattached() -> bool:
            current = service.registry.active_by_pid(sleeper.pid)
            return current is not None and current.state == State.ATTACHED and current.tracer_pid != first["tracer_pid"]

        await until(reattached)
        states = [s.state for s in service.registry.all() if s.pid == sleeper.pid]
        assert states == [State.FAILED, State.ATTACHED]
        assert service.counters["sessions_started"] == 2

    run(tmp_path, body)


def test_shutdown_is_bounded_when_a_tracer_never_lets_go(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """A tracer whose detach hangs cannot hold shutdown past its bound: the
    session is closed ``failed`` with the reason, and a second, well-behaved
    session is still detached."""
    other = subprocess.Popen(["sleep", "1000"])
    try:

        async def body(service: TracerdService) -> None:
            stubborn = await attach(service, sleeper.pid, "stubborn")
            polite = await attach(service, other.pid, "toy")
            await service.shutdown(timeout=1.0)
            assert service.registry.find(sleeper.pid).state == State.FAILED
            assert service.registry.find(other.pid).state == State.DETACHED
            assert "did not let go within 1 s" in text_of(stubborn["log"])
            assert text_of(polite["log"]).rstrip().endswith("(tracerd shutting down); it runs on untraced")

        run(tmp_path, body)
    finally:
        with contextlib.suppress(ProcessLookupError):
            other.kill()
        other.wait(timeout=BOUND)


def test_config_accepts_exactly_the_registry_tracers() -> None:
    """The config checks tracer names against the one registry: a backend
    registered with one line is a valid default_tracer and rule tracer; a name
    not in it is refused."""
    config = parse('default_tracer = "toy"\n[[rule]]\nprocess = "smtpd"\ntracer = "stubborn"\n')
    assert config.default_tracer == "toy"
    assert config.rules[0].tracer == "stubborn"
    with pytest.raises(ConfigError, match="default_tracer"):
        parse('default_tracer = "nosuch"\n')


def test_events_carry_their_peer_and_session(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """structlog's context: a request's events name its peer (pid, uid) without each call
    passing it, and a session's events its pid, name and tracer (bound in the session's own
    task, so a request about another session does not carry them)."""
    import structlog  # noqa: PLC0415
    from structlog.testing import capture_logs  # noqa: PLC0415

    async def body(service: TracerdService) -> None:
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as events:
            await attach(service, sleeper.pid, "toy")
            with pytest.raises(Exception, match="init"):
                await service.handle(Request("attach", pid=1, name="toy", tracer="toy"), me())
        attached = next(e for e in events if e["event"] == "attached")
        assert (attached["pid"], attached["name"], attached["tracer"]) == (sleeper.pid, "toy", "toy")
        assert (attached["peer"], attached["peer_uid"]) == (os.getpid(), os.geteuid())  # the request that began it
        refused = next(e for e in events if e["event"] == "request_refused")
        assert (refused["peer"], refused["peer_uid"]) == (os.getpid(), os.geteuid())
        assert "tracer" not in refused

    run(tmp_path, body)
