"""pftrace-hook's Python form starts as little as Python can (docs/performance.md, "Hook latency"):
the hook make writes where there is no C compiler runs ``python -IS`` and loads nothing but the standard library's
built-in parts and tracerd/hook.py itself, which an environment such as
PYTHONPATH or PYTHONHOME cannot change; what the hook writes again of
tracerd's (version, socket rule, the lines it reads) agrees with the package;
and tracerd's own ancestry, kept between hook requests, is read again once
one of its ancestors exits."""

from __future__ import annotations

import json
import os
import resource
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tracerd
from tests.conftest import module_daemon
from tests.support import BIN, SYSTEM_PYTHON, Daemon, installed_python_hook, wait_until
from tracerd import client, hook, procinfo
from tracerd.protocol import ACK, encode, error_reply

ROOT = Path(__file__).resolve().parent.parent
# what a successful run may load on top of a bare `python -IS -c pass`


def venv_form(tmp_path: Path) -> Path:
    """The hook `make venv` writes where there is no C compiler: the Makefile's own rule, run for a
    venv in tmp_path whose python is this one, with CC naming no compiler."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin/python").symlink_to(BIN / "python")
    result = subprocess.run(["make", "-s", "-C", str(ROOT), f"VENV={venv}", "-o", f"{venv}/.installed",
                             "CC=/nonexistent/cc", f"{venv}/bin/pftrace-hook"],
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "no C compiler (/nonexistent/cc)" in result.stdout, result.stdout
    return venv / "bin/pftrace-hook"


@pytest.fixture(params=["installed", "venv"])
def hook_script(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Both Python hooks make writes when there is no C compiler: make install's (the system
    python) and make venv's (the venv's python), each running the checkout's tracerd/hook.py."""
    if request.param == "installed":
        if not os.access(SYSTEM_PYTHON, os.X_OK):
            pytest.skip(f"no {SYSTEM_PYTHON}")
        return installed_python_hook(tmp_path / "pftrace-hook")
    return venv_form(tmp_path)


@pytest.fixture(scope="module")
def hooked_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One tracerd for the module's hooks: each test reads only its own target's session, which
    ends with the target."""
    with module_daemon(tmp_path_factory) as daemon:
        yield daemon


def interpreter(script: Path) -> list[str]:
    """The #! line's words: the interpreter and its flags."""
    first = script.read_text().splitlines()[0]
    assert first.startswith("#!")
    return first[2:].split()


def test_make_writes_the_hook_isolated_without_site(hook_script: Path) -> None:
    """Both Python hooks make writes run their interpreter with -IS, and load the checkout's hook."""
    words = interpreter(hook_script)
    assert words[1:] == ["-IS"], words
    assert f'sys.path.insert(0, "{ROOT / "tracerd"}")' in hook_script.read_text()


def test_a_real_attach_imports_nothing_but_the_standard_library_and_the_hook(
    hook_script: Path, hooked_daemon: Daemon, cbin: Any, spawn: Any
) -> None:
    """A hook run through system() that gets its process traced loads only the hook and the
    standard library beyond a bare interpreter: no tracerd package, no site, nothing of
    site-packages (the hook's own interpreter with -X importtime, which lists every import)."""
    daemon = hooked_daemon
    bare = subprocess.run([*interpreter(hook_script), "-X", "importtime", "-c", "pass"],
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    command = shlex.join([*interpreter(hook_script), "-X", "importtime", str(hook_script)])
    target = spawn(cbin("hooked"), f"{command} --socket {daemon.socket} --timeout 60", "smtpd", "0")
    assert target.readline() == "hook=0\n"
    assert daemon.session(target.pid)["state"] == "attached"
    target.release()
    assert target.wait() == 0
    stderr = target.proc.stderr.read().decode()
    loaded = imported(stderr) - imported(bare.stderr)
    assert "hook" in loaded, stderr
    assert not {name for name in loaded if name.split(".")[0] in ("tracerd", "site")}, sorted(loaded)
    top = {name.split(".")[0] for name in loaded}
    assert all(name in sys.builtin_module_names or name in sys.stdlib_module_names or name == "hook"
               for name in top), sorted(top)  # fmt: skip


def imported(importtime: str) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in importtime.splitlines() if line.count("|") == 2}


def test_a_hostile_environment_changes_nothing(
    hook_script: Path, hooked_daemon: Daemon, cbin: Any, spawn: Any, tmp_path: Path
) -> None:
    """PYTHONPATH, PYTHONHOME, PYTHONSTARTUP, PYTHONINSPECT and a working directory full of
    modules named like the hook's (hook, _socket, _json, time, sitecustomize, ...) are all
    ignored: the process is traced and none of the planted modules ran."""
    daemon = hooked_daemon
    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "ran"
    for name in ("hook", "_socket", "_json", "json", "time", "posix", "sitecustomize", "usercustomize", "startup"):
        (evil / f"{name}.py").write_text(f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\n")
    env = {
        "PYTHONPATH": str(evil), "PYTHONHOME": "/nonexistent", "PYTHONSTARTUP": str(evil / "startup.py"),
        "PYTHONINSPECT": "1", "PYTHONUSERBASE": str(evil), "PYTHONSAFEPATH": "",
    }  # fmt: skip
    assignments = " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())
    command = f"cd {shlex.quote(str(evil))} && env {assignments} {hook_script} --socket {daemon.socket} --timeout 60"
    target = spawn(cbin("hooked"), command, "smtpd", "0")
    assert target.readline() == "hook=0\n"
    assert daemon.session(target.pid)["state"] == "attached"
    target.release()
    assert target.wait() == 0
    assert not marker.exists(), marker.read_text()


def test_what_the_hook_writes_again_agrees_with_the_package() -> None:
    """The hook's version and socket rule are the package's and tracerd.client's."""
    assert tracerd.__version__ == hook.VERSION
    assert hook.SYSTEM_SOCKET == client.SYSTEM_SOCKET
    assert hook.ROOT_HINT == client.ROOT_HINT
    code = "from tracerd import client, hook; print(hook.user_socket() == client.user_socket())"
    for xdg in ("/run/user/1234", "relative/dir", ""):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                                check=True, env={**os.environ, "XDG_RUNTIME_DIR": xdg})  # fmt: skip
        assert result.stdout == "True\n", (xdg, result.stderr)


def test_the_hook_reads_tracerds_lines_as_json_does() -> None:
    """Every line tracerd answers a hook with (tracerd.protocol.encode) means to the hook what
    json.loads makes of it; anything but one JSON object is None."""
    replies: list[dict[str, Any]] = [
        ACK,
        {"ok": True},
        {"ok": True, "session": {"pid": 12, "name": "smtpd", "state": "attached", "note": 'a "quoted" \\ \u00e9'}},
        error_reply("denied", "pid 5 is not an ancestor of the calling process"),
        error_reply("bad_request", 'hook: unknown field "ack"'),
        {"ok": False, "error": "internal", "message": "caf\u00e9 \u2603 \n tab\t"},
    ]
    for reply in replies:
        line = encode(reply).rstrip(b"\n")
        read = hook.decode_object(line)
        assert read is not None, line
        for key in ("ok", "ack", "error", "message"):
            assert read.get(key) == reply.get(key), (key, line)
    for bad in (b"", b"[1, 2]", b'"ok"', b'{"ok": true', b'{"ok": true} x', b"\xff\xfe", b"[" * 100_000):
        assert hook.decode_object(bad) is None, bad


def test_the_hook_writes_requests_json_reads() -> None:
    """Names with quotes, backslashes, control and non-ASCII characters reach tracerd as given."""
    for name in ("smtpd", 'a"b', "back\\slash", "tab\tnew\nline", "caf\u00e9", "\x7f", ""):
        request = {"op": "hook", "name": name, "pid": 42, "ack": True, "tracer": "watch"}
        line = hook.encode_request(request)
        assert line.endswith(b"\n")
        assert line.count(b"\n") == 1
        assert json.loads(line) == request


def test_own_ancestry_is_kept_and_read_again_after_an_ancestor_exits() -> None:
    """OwnAncestry answers from what it kept while its ancestors live, and once its parent exits
    (the process is reparented) it no longer names the dead parent and names the new one."""
    program = (
        "import json, os, sys\n"
        "from tracerd import procinfo\n"
        "own = procinfo.OwnAncestry()\n"
        "first = own.pids()\n"
        "print(json.dumps([os.getpid(), sorted(first), own.pids() is first]), flush=True)\n"
        "sys.stdin.readline()\n"  # the parent is killed meanwhile
        "print(json.dumps([sorted(own.pids()), os.getppid()]), flush=True)\n"
    )
    # a parent that starts the program and waits; the test (a subreaper) inherits the program
    with subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen(sys.argv[1:]); time.sleep(600)",
         sys.executable, "-c", program],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) as parent:  # fmt: skip
        assert parent.stdout is not None
        assert parent.stdin is not None
        try:
            pid, first, kept = json.loads(parent.stdout.readline())
            parent.kill()
            parent.wait(timeout=30)
            parent.stdin.write("go\n")
            parent.stdin.flush()
            second, new_parent = json.loads(parent.stdout.readline())
        finally:
            parent.kill()
            parent.wait(timeout=30)
    wait_until(lambda: os.waitpid(pid, os.WNOHANG)[0] == pid, f"program {pid} reaped", 30)
    assert kept is True
    assert parent.pid in first
    assert parent.pid not in second
    assert new_parent != parent.pid
    assert new_parent in second
    assert pid in second


def test_is_ancestor_stops_at_the_target_and_checks_its_start() -> None:
    """is_ancestor: the parent and grandparent are ancestors, a sibling is not, and a parent's
    pid with another start time (a reused pid) is not."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        me = procinfo.identify(os.getpid())
        parent = procinfo.identify(os.getppid())
        assert procinfo.is_ancestor(me, child.pid, 3)
        assert procinfo.is_ancestor(parent, child.pid, 3)
        assert not procinfo.is_ancestor(parent, child.pid, 1)
        assert not procinfo.is_ancestor(procinfo.ProcessIdentity(me.pid, me.start + 1), child.pid, 3)
        assert not procinfo.is_ancestor(procinfo.identify(child.pid), os.getpid(), 3)
    finally:
        child.kill()
        child.wait()


def test_the_bench_command_runs() -> None:
    """README's `.venv/bin/python bench/hook_latency.py` runs (two rounds here, nothing saved) and
    every hook in it succeeded: the failed column is all zeros."""
    result = subprocess.run([sys.executable, str(ROOT / "bench/hook_latency.py"), "--runs", "2", "--no-save"],
                            capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith(("true", "hook", "/"))]
    assert len(rows) >= 8, result.stdout
    assert all(row[-1] == "0" for row in rows if row[-1].isdigit()), result.stdout
    assert "x the floor" in result.stdout


def test_free_fds_counts_the_open_descriptors() -> None:
    """free_fds (checked on every hook) counts this process's open descriptors as listing
    /proc/self/fd does, with 200 more open than usual: room for exactly what is left."""
    extra = [os.open("/dev/null", os.O_RDONLY) for _ in range(200)]
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        used = len(os.listdir("/proc/self/fd")) - 1  # less listdir's own descriptor
        assert procinfo.free_fds(soft - used - 1)  # one of slack: a listing's own descriptor
        assert not procinfo.free_fds(soft - used + 2)
    finally:
        for fd in extra:
            os.close(fd)
