"""Issue 23 item 5: defects found by reading the code, each with a test that
failed before its fix: a tracer leaked when its pidfd cannot be opened, the
socket_group check read /proc of a peer that may be gone, the gdb hand-off
polled /proc every 2 ms for as long as a human held the process, and late
console output of a timed-out MI command was handed to the next command."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, cast

import pytest

from tests.support import assert_running, tracer_pid
from tracerd import procinfo
from tracerd.daemon.gdbhandoff import HandOffs
from tracerd.errors import TracerFailed
from tracerd.gdb.mi import GdbMI

ROOT = Path(__file__).resolve().parent.parent

# A seccomp filter that makes pidfd_open(2) fail with EMFILE, as it does for
# real once the process is out of fds; Popen itself (fork, pipes, exec) is
# untouched.  Then Child() must fail and leave no child process behind.
EMFILE_PIDFD = textwrap.dedent("""
    import asyncio, ctypes, json, os, signal, struct, sys
    AUDIT_ARCH = int(sys.argv[1], 16)
    NR_PIDFD_OPEN, EMFILE = 434, 24
    def stmt(code, k, jt=0, jf=0):
        return struct.pack("HBBI", code, jt, jf, k)
    prog = b"".join([
        stmt(0x20, 4), stmt(0x15, AUDIT_ARCH, 0, 3),  # arch (else allow)
        stmt(0x20, 0), stmt(0x15, NR_PIDFD_OPEN, 0, 1),  # syscall number
        stmt(0x06, 0x00050000 | EMFILE), stmt(0x06, 0x7FFF0000),
    ])
    buf = ctypes.create_string_buffer(prog)
    fprog = struct.pack("HxxxxxxP", len(prog) // 8, ctypes.addressof(buf))
    fbuf = ctypes.create_string_buffer(fprog)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.addressof(fbuf), 0, 0) == 0, ctypes.get_errno()  # SECCOMP_MODE_FILTER
    from tracerd.spawn import Child

    def children():
        found = []
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                found += [int(pid) for pid in f.read().split()]
        return found

    async def main():
        try:
            Child(["sleep", "60"], lambda lines: None)
            error = None
        except Exception as err:
            error = f"{type(err).__name__}: {err}"
        return error

    error = asyncio.run(main())
    left = children()
    for pid in left:  # the test's process must not inherit them
        send_signal(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    print(json.dumps({"error": error, "left": left}))
""")


def test_tracer_is_killed_when_its_pidfd_cannot_be_opened() -> None:
    """pidfd_open failing with EMFILE after Popen: Child raises TracerFailed and
    the started program is killed and reaped, not left running unowned."""
    arch = {"x86_64": "c000003e", "aarch64": "c00000b7"}.get(platform.machine())
    if arch is None:
        pytest.skip("seccomp audit arch of this machine not known here")
    run = subprocess.run([sys.executable, "-c", EMFILE_PIDFD, arch], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    outcome = json.loads(run.stdout)
    assert outcome["left"] == []
    assert outcome["error"] is not None
    assert outcome["error"].startswith("TracerFailed: cannot watch sleep:")
    assert "Too many open files" in outcome["error"]


# Connects as uid/gid nobody with socket_group only as a supplementary group,
# hands the connected socket to the test (SCM_RIGHTS) and exits: by the time
# tracerd checks the request, /proc/PID of the peer is gone (or another's).
CONNECT_AND_EXIT = textwrap.dedent("""
    import os, socket, sys
    path, group, chan = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    os.setgroups([group]); os.setgid(65534); os.setuid(65534)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    socket.send_fds(socket.socket(fileno=chan), [b"x"], [s.fileno()])
""")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to uid nobody")
def test_socket_group_through_a_supplementary_group_of_a_peer_that_exited(
    daemon_factory: Any, public_dir: Path
) -> None:
    """socket_group membership is judged by the groups the kernel recorded at
    connect() (SO_PEERGROUPS), not by /proc/PID/status of a peer that may have
    exited (and its pid been reused) before its request is read."""
    group = grp.getgrnam("adm")
    daemon = daemon_factory(f'socket_group = "{group.gr_name}"', socket_path=public_dir / "tracerd.sock")
    ours, theirs = socket.socketpair()
    with ours, theirs:
        peer = subprocess.Popen([sys.executable, "-c", CONNECT_AND_EXIT, str(daemon.socket), str(group.gr_gid),
                                 str(theirs.fileno())], pass_fds=[theirs.fileno()])  # fmt: skip
        assert peer.wait(timeout=60) == 0
        _, fds, _, _ = socket.recv_fds(ours, 16, 1)
    assert not Path(f"/proc/{peer.pid}").exists()
    with socket.socket(fileno=fds[0]) as conn:
        conn.settimeout(30)
        conn.sendall(b'{"op": "status"}\n')
        reply = json.loads(conn.makefile().readline())
    assert reply["ok"] is True, reply
    assert reply["daemon"]["pid"] == daemon.proc.pid


class _NoTracers:
    """The SessionRunner's face HandOffs sees for a process tracerd does not trace."""

    class registry:  # the attribute HandOffs reads
        @staticmethod
        def current(identity: Any) -> None:
            return None

    @staticmethod
    def tracer_pids() -> set[int]:
        return set()


HELD_SECONDS = 3.0


@pytest.mark.skipif(not shutil.which("strace"), reason="needs strace as the human's tracer")
def test_a_long_hold_is_not_polled_every_2_ms(cbin: Any, spawn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a human's tracer (strace here) holds a handed-off process, tracerd's
    looks at its TracerPid back off: over 3 s held, far fewer than the 1500 a
    2 ms poll makes; and the hand-back is still seen when the tracer lets go."""
    looks = [0]
    real = procinfo.tracer_pid

    def counted(pid: int) -> int:
        looks[0] += 1
        return real(pid)

    monkeypatch.setattr(procinfo, "tracer_pid", counted)
    target = spawn(cbin("sleeper"))
    assert target.readline() == "ready\n"

    def no_warning() -> Any:
        raise AssertionError("the hand-off went back without a human")

    async def scenario() -> int:
        handoffs = HandOffs(cast(Any, _NoTracers()), no_warning)
        handoff = await handoffs.give(procinfo.identify(target.pid), "sleeper", os.getpid())
        human = await asyncio.create_subprocess_exec("strace", "-qq", "-e", "trace=none", "-p", str(target.pid),
                                                     stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            for _ in range(1000):
                if handoff.state == "held":
                    break
                await asyncio.sleep(0.01)
            assert handoff.human == human.pid
            before = looks[0]
            await asyncio.sleep(HELD_SECONDS)
            held_looks = looks[0] - before
        finally:
            human.terminate()
            await asyncio.wait_for(human.wait(), timeout=30)
        assert await asyncio.wait_for(handoff.returned, timeout=10) is None
        await handoffs.shutdown()
        return held_looks

    held_looks = asyncio.run(scenario())
    assert held_looks < 500, f"{held_looks} looks at TracerPid in {HELD_SECONDS} s held"
    assert tracer_pid(target.pid) == 0
    assert_running(target.pid)


@pytest.mark.skipif(not shutil.which("gdb"), reason="needs gdb")
def test_late_output_of_a_timed_out_gdb_command_is_not_the_next_ones() -> None:
    """An MI command that times out but prints later: its console text and its
    result are not handed to the next command, which gets its own output only."""

    async def scenario() -> tuple[str, str]:
        gdb = GdbMI()
        await gdb.start()
        try:
            with pytest.raises(TracerFailed, match="did not answer"):
                await gdb.console("python import time; time.sleep(2); print('late')", timeout=0.5)
            second = await gdb.console("echo next\\n", timeout=30)
            third = await gdb.console("echo third\\n", timeout=30)
        finally:
            await gdb.close()
        return second, third

    assert asyncio.run(scenario()) == ("next\n", "third\n")
