"""Fixtures: C targets built with gcc, a real tracerd, a syslog receiver.

The classes and helpers behind them live in :mod:`tests.support` (bench/ uses
them too); the names tests import from here are re-exported.

Nothing here mocks ptrace, sockets or /proc: every test runs real processes
and reaps every one it starts (PID 1 here does not reap orphans).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from tests.postfix_instance import PostfixInstance
from tests.postfix_instance import available as postfix_available
from tests.support import Daemon, Target, compile_c, have, proc_state, reap_zombies, script, wait_until

# what test modules import from here
__all__ = ["Daemon", "Target", "have", "proc_state", "reap_zombies", "script"]

PR_SET_CHILD_SUBREAPER = 36

# hypothesis: "ci" (the default, make test) tries fewer examples where a test names no count of its
# own; HYPOTHESIS_PROFILE=full tries the full count (test_fuzz's 1500 requests), as before.
settings.register_profile("ci", max_examples=200)
settings.register_profile("full", max_examples=1500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    """Become a child subreaper: daemons' orphans (Postfix's processes, a
    killed tracerd's tracers) come back to us to be reaped, not to PID 1,
    which here reaps nothing."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


# -- pytest-xdist (make test runs -n 4 --dist loadgroup) ------------------------------------------
# Test files that share one of the machine's resources, by group: one worker runs a group's tests one
# after another, while the other workers run everything else a test at a time.  "system": the install
# tests (/opt/tracerd, /usr/local, /etc, the checkout's build/), the quick start (the system socket,
# the guarded paths) and the non-root tests (/run/tracerd/tracerd.sock, useradd); "slow" tests start
# first.  A table here, not xdist_group marks: with pytest 9.2 xdist's loadgroup drops the marks
# (pytest-xdist issue #1386).  A key is a file or a test of it (FILE::NAME); the longest that matches
# wins; None: no group.
XDIST_GROUPS: dict[str, str | None] = {
    "tests/test_install.py": "system",
    "tests/test_quickstart.py": "system",
    "tests/test_nonroot.py": "system",
    # "destdir": these install under a DESTDIR from a copy of the checkout, beside the "system" group;
    # on one worker, which makes their staged install (and the copy) once
    "tests/test_install.py::test_destdir_lays_out_exactly_the_documented_files": "destdir",
    "tests/test_install.py::test_staged_venv_names_its_final_place_only": "destdir",
    "tests/test_install.py::test_without_a_c_compiler_install_writes_the_python_hook": "destdir",
    "tests/test_install.py::test_a_staged_venv_runs_once_moved": "destdir",
    "tests/test_install.py::test_prefix_usr_moves_links_and_the_paths_the_files_name": "destdir",
    "tests/test_install.py::test_destdir_uninstall_removes_what_install_added": "destdir",
    # a private PREFIX, SYSCONFDIR and OPTDIR, from a copy of the checkout (the quick start: a clone)
    "tests/test_install.py::test_uninstall_disables_postfix_first_and_lists_the_data_it_leaves": None,
    "tests/test_quickstart.py::test_quick_start_as_written": None,
}
# The tests on a module-scoped tracerd (shared_daemon, or a module's own): a module's run on one worker,
# one after another, so that the module starts its tracerd once, not once on each worker.
MODULE_DAEMON_TESTS: dict[str, tuple[str, ...]] = {
    "tests/test_cli.py": ("test_json_after_the_command", "test_errors_are_json_under_json"),
    "tests/test_crash_contract.py": ("test_own_sigsegv_handler_runs_as_untraced",
                                     "test_harmless_signals_are_delivered_as_untraced", "test_normal_exit_with_code_3"),
    "tests/test_ctl.py": ("test_exit_codes", "test_attach_with_unavailable_tracer_fails_cleanly"),
    "tests/test_daemon.py": ("test_second_daemon_on_same_socket_refuses", "test_own_log_is_json_lines"),
    "tests/test_fuzz.py": ("test_hypothesis_requests_always_get_a_well_formed_reply",
                           "test_oversize_frames_close_the_connection",
                           "test_a_byte_a_second_client_does_not_block_others"),
    "tests/test_hook.py": ("test_refusal_is_reported_with_the_daemons_reason", "test_daemon_refuses_to_trace_itself"),
    "tests/test_hook_startup.py": ("test_a_real_attach_imports_nothing_but_the_standard_library_and_the_hook",
                                   "test_a_hostile_environment_changes_nothing"),
    "tests/test_requests.py": ("test_bad_requests_get_a_clear_error",
                               "test_oversize_request_is_refused_and_connection_closed", "test_nonexistent_pid",
                               "test_pid_that_is_not_an_ancestor_is_refused",
                               "test_one_bad_client_does_not_harm_another", "test_ack_is_a_hook_only_boolean",
                               "test_refused_hook_gets_no_acknowledgement"),
    "tests/test_retention.py": ("test_bad_age_is_one_line", "test_unknown_id_and_usage"),
    "tests/test_signatures.py": ("test_two_asserts_in_two_functions_are_two_entries_shown_by_their_functions",
                                 "test_one_assert_in_two_programs_is_two_entries",
                                 "test_sigfpe_and_sigill_in_one_stripped_binary_are_two_entries",
                                 "test_the_stripped_and_the_unstripped_binary_of_one_bug_are_two_entries",
                                 "test_twenty_runs_of_one_bug_are_one_entry_of_count_twenty",
                                 "test_the_watchers_report_replaces_stracess_as_the_one_shown"),
}  # fmt: skip
XDIST_GROUPS.update({f"{file}::{name}": f"module daemon {file}" for file, names in MODULE_DAEMON_TESTS.items()
                     for name in names})  # fmt: skip


def xdist_group(nodeid: str) -> str | None:
    """The XDIST_GROUPS group of a test id (None: none)."""
    keys = [key for key in XDIST_GROUPS if nodeid == key or nodeid.startswith((f"{key}::", f"{key}["))]
    return XDIST_GROUPS[max(keys, key=len)] if keys else None


@pytest.hookimpl(tryfirst=True)  # before -k and -m deselect: the check below sees every test
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, the tests marked slow start first (each worker sorts the same collection the
    same way), so that no long test is left to run alone at the end.  Nothing is deselected: make
    test runs every test."""
    if is_xdist_worker(config):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    files = {item.nodeid.split("::", 1)[0] for item in items}
    for key in XDIST_GROUPS:  # a test renamed since: its entry would silently stop applying
        named = (key, f"{key}::", f"{key}[")
        if key.split("::", 1)[0] in files and not any(item.nodeid.startswith(named) for item in items):
            raise pytest.UsageError(f"tests/conftest.py XDIST_GROUPS names {key}, which is not collected")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """--dist loadgroup with the groups of XDIST_GROUPS (the largest group is sent first)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling  # noqa: PLC0415 (only under xdist)

    class FileGroups(LoadGroupScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            group = xdist_group(nodeid)
            return f"group:{group}" if group else nodeid

    return FileGroups(config, log)


@pytest.fixture(scope="session")
def cbin(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Compile tests/c/NAME.c with -g on first use; returns a builder."""
    out = tmp_path_factory.mktemp("cbin")
    built: dict[str, Path] = {}

    def build(name: str, *flags: str) -> Path:
        if name not in built:
            built[name] = compile_c(name, out, *flags)
        return built[name]

    return build


class SyslogReceiver:
    """A unix datagram socket of the test's own standing in for /dev/log.

    A thread reads it all the time, as a real syslog daemon would: a unix
    datagram queue holds only max_dgram_qlen (10) messages.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode("utf-8", "replace"))

    def collect(self) -> list[str]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, text: str, timeout: float = 10.0) -> str:
        def found() -> str | None:
            return next((message for message in self.collect() if text in message), None)

        try:
            return wait_until(found, f"a syslog message with {text!r}", timeout, interval=0.02)
        except AssertionError:
            raise AssertionError(f"no syslog message with {text!r}; got {self.collect()[-5:]!r}") from None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def syslog_receiver(tmp_path: Path) -> Iterator[SyslogReceiver]:
    receiver = SyslogReceiver(tmp_path / "syslog.sock")
    yield receiver
    receiver.close()


@pytest.fixture
def daemon_factory(tmp_path: Path, syslog_receiver: SyslogReceiver) -> Iterator[Any]:
    daemons: list[Daemon] = []

    def make(
        extra_config: str = "",
        start: bool = True,
        socket_path: Path | None = None,
        syslog_path: Path | None = None,
        data_dir: Path | None = None,
        *,
        env: dict[str, str] | None = None,
        attach_timeout: float = 10.0,
    ) -> Daemon:
        root = tmp_path / f"d{len(daemons)}"
        root.mkdir()
        syslog = syslog_path or syslog_receiver.path
        daemon = Daemon(root, syslog, extra_config, socket_path, data_dir, env=env, attach_timeout=attach_timeout)
        daemons.append(daemon)
        if start:
            daemon.start()
        return daemon

    yield make
    for daemon in daemons:
        if daemon.proc is not None and daemon.proc.poll() is None:
            os.kill(daemon.proc.pid, signal.SIGCONT)  # a test may have stopped it
        daemon.stop()


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory everyone may traverse (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="tracerd-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(daemon_factory: Any) -> Daemon:
    d: Daemon = daemon_factory()
    return d


@contextlib.contextmanager
def module_daemon(tmp_path_factory: pytest.TempPathFactory, extra_config: str = "") -> Iterator[Daemon]:
    """A started tracerd with a syslog receiver of its own, for a module-scoped fixture."""
    root = tmp_path_factory.mktemp("shared")
    receiver = SyslogReceiver(root / "syslog.sock")
    (root / "d").mkdir()
    daemon = Daemon(root / "d", receiver.path, extra_config)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        receiver.close()


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One tracerd (default config) for the tests of a module that only send it requests and read the
    replies: never for a test that counts from zero, traces, reloads, stops or kills it (`daemon`)."""
    with module_daemon(tmp_path_factory) as daemon:
        yield daemon


@pytest.fixture
def spawn() -> Iterator[Any]:
    targets: list[Target] = []

    def start(*argv: str | Path) -> Target:
        target = Target([str(a) for a in argv])
        targets.append(target)
        return target

    yield start
    for target in targets:
        target.reap()


@pytest.fixture
def postfix() -> Iterator[PostfixInstance]:
    """A private Postfix instance (not yet created: the test chooses flags).

    In a directory of its own under /tmp that user postfix may traverse
    (pytest's tmp_path is root-only)."""
    if not postfix_available():
        pytest.skip("postfix is not installed")
    root = Path(tempfile.mkdtemp(prefix="tracerd-postfix-"))
    instance = PostfixInstance(root)
    yield instance
    instance.stop()
    shutil.rmtree(root, ignore_errors=True)


# The system's tracerd paths: no test may write them (README "Tests"; issue 24 item 10).
SYSTEM_PATHS = (Path("/etc/tracerd"), Path("/var/lib/tracerd"), Path("/var/log/tracerd"))
SYSTEM_SOCKET = Path("/run/tracerd/tracerd.sock")


def system_listing() -> dict[str, tuple[int, int]]:
    """Every entry under SYSTEM_PATHS (the directories too) with its mtime and size."""
    found: dict[str, tuple[int, int]] = {}
    for top in SYSTEM_PATHS:
        for path in [top, *top.rglob("*")] if top.exists() else []:
            try:
                info = path.lstat()
            except OSError:  # gone meanwhile
                continue
            found[str(path)] = (info.st_mtime_ns, info.st_size)
    return found


def system_changes(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    """What changed under SYSTEM_PATHS.  Where a real tracerd runs here, its own writes to its log
    and state directories are its business: there only /etc/tracerd, and new files that name the
    tests' temporary directory (a test's target, crash or Postfix), count."""
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    if not SYSTEM_SOCKET.exists():
        return changed
    tmp = tempfile.gettempdir().encode()
    ours = [name for name in changed if name.startswith("/etc/tracerd")]
    for name in changed:
        if name in before or name.startswith("/etc/tracerd"):
            continue
        try:
            data = Path(name).read_bytes()[: 1 << 20]
        except OSError:  # a directory, or gone meanwhile
            continue
        if tmp in data:
            ours.append(name)
    return ours


def is_xdist_worker(config: pytest.Config) -> bool:
    """A pytest-xdist worker (its controller runs the session-wide checks)."""
    return hasattr(config, "workerinput")


_SYSTEM_BEFORE = pytest.StashKey[dict[str, tuple[int, int]]]()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """The guard's first look at the system's tracerd paths, once per run: in the single process, or
    in xdist's controller before any worker starts (a worker's own look could catch the install
    tests of another worker half-way, and see changes they put back)."""
    if not is_xdist_worker(session.config):
        session.config.stash[_SYSTEM_BEFORE] = system_listing()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fails the run if the tests wrote /etc/tracerd, /var/lib/tracerd or /var/log/tracerd (tests use
    private roots, configs and sockets; the install tests put back what they change).  Looked at after
    every test and every worker has ended."""
    before = session.config.stash.get(_SYSTEM_BEFORE, None)
    if before is None:
        return
    changes = system_changes(before, system_listing())
    if changes:
        message = f"the tests changed the system's tracerd paths: {changes[:20]}"
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"FAILED {message}", red=True, bold=True)
        else:
            print(message, file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
