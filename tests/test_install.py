"""`make install` and `make uninstall` (README "Install"): a DESTDIR lays out
exactly the documented files, the staged venv works once moved to its final
place, and a real install on this machine works and goes away without a trace.

The real install writes to /opt/tracerd, /usr/local, /etc: it runs only as
root, only when no tracerd is installed here already, and its fixture
uninstalls (and removes whatever is left) in a finally.  `make uninstall`
with a Postfix instance enabled runs on an install under a private PREFIX,
SYSCONFDIR and OPTDIR (no DESTDIR: a live one), and `make run` writes only
the checkout's .run (removed after, if the test created it).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postfix_instance import PostfixInstance
from tests.support import reap_zombies, wait_until

ROOT = Path(__file__).parent.parent
OPT = "opt/tracerd"

# what `make install` puts outside the venv, relative to DESTDIR (PREFIX=/usr/local, SYSCONFDIR=/etc)
DOCUMENTED = {
    "usr/local/sbin/pftrace-hook": "/opt/tracerd/bin/pftrace-hook",
    "usr/local/sbin/tracerd": "/opt/tracerd/bin/tracerd",
    "usr/local/bin/tracerctl": "/opt/tracerd/bin/tracerctl",
    "etc/systemd/system/tracerd.service": None,
    "etc/systemd/system/tracerd.socket": None,
    "etc/tracerd/tracerd.toml": None,
    "etc/logrotate.d/tracerd": None,
    "usr/local/share/man/man8/pftrace-hook.8": None,
    "usr/local/share/man/man8/tracerd.8": None,
    "usr/local/share/man/man8/tracerctl.8": None,
    "usr/local/share/man/man5/tracerd.toml.5": None,
    "usr/local/share/bash-completion/completions/tracerctl": None,
}


def make(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["make", "--no-print-directory", *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def files(root: Path) -> set[str]:
    """Every file and link under root, relative, leaving out the venv's insides."""
    found = set()
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if (path.is_file() or path.is_symlink()) and not rel.startswith(OPT + "/"):
            found.add(rel)
    return found


def hook_runs(hook: Path) -> bool:
    """The hook runs to its end: with no daemon it fails open, exit 1 and its one warning line."""
    result = subprocess.run(
        [hook, "--socket", "/nonexistent/tracerd.sock", "--syslog", "/nonexistent/log", "smtpd", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    return result.stderr.startswith("pftrace-hook: warning: smtpd[1]: not traced: ")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout's files (not its venv, .git or build products) for the DESTDIR tests:
    make install builds in its checkout (build/, *.egg-info), so that these run beside the tests of
    the real install, which use the checkout itself (tests/conftest.py XDIST_GROUPS)."""
    copy = tmp_path_factory.mktemp("checkout") / "tracerd"
    ignore = shutil.ignore_patterns(".git", ".venv", ".run", "build", "*.egg-info", "*_cache", "__pycache__",
                                    ".hypothesis")  # fmt: skip
    shutil.copytree(ROOT, copy, ignore=ignore, symlinks=True)
    return copy


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory, source: Path) -> Path:
    """One `make install DESTDIR=...` for the module's layout tests."""
    destdir = tmp_path_factory.mktemp("stage")
    make("install", f"DESTDIR={destdir}", cwd=source)
    return destdir


@pytest.mark.slow
def test_destdir_lays_out_exactly_the_documented_files(staged: Path) -> None:
    """Outside /opt/tracerd: exactly the README's files, the three commands as links into the venv."""
    assert files(staged) == set(DOCUMENTED)
    assert (staged / OPT / "share/tracerd.toml.installed").read_bytes() == (
        staged / "etc/tracerd/tracerd.toml"
    ).read_bytes()
    for rel, target in DOCUMENTED.items():
        path = staged / rel
        if target is not None:
            assert os.readlink(path) == target, rel
            assert (staged / target.lstrip("/")).is_file()
        else:
            assert path.is_file(), rel
            assert not path.is_symlink(), rel
            assert path.stat().st_mode & 0o777 == 0o644, rel
    assert (staged / "etc/tracerd/tracerd.toml").read_bytes() == (ROOT / "contrib/tracerd.toml.example").read_bytes()
    unit = (staged / "etc/systemd/system/tracerd.service").read_text()
    assert "\nExecStart=/usr/local/sbin/tracerd\n" in unit


@pytest.mark.slow
def test_staged_venv_names_its_final_place_only(staged: Path) -> None:
    """The venv uses the system interpreter, its scripts start with #!/opt/tracerd/bin/python, and no
    text file in it names the staging directory."""
    venv = staged / OPT
    assert (venv / "bin/python").resolve() == Path("/usr/bin/python3").resolve()
    assert os.readlink(venv / "bin/python3") == "/usr/bin/python3"
    assert "home = /usr/bin\n" in (venv / "pyvenv.cfg").read_text()
    for script in ("tracerd", "tracerctl"):
        assert (venv / "bin" / script).read_text().splitlines()[0] == "#!/opt/tracerd/bin/python"
    # the hook: compiled, position-independent, its relocations read-only (docs/performance.md "Hook latency")
    hook = venv / "bin/pftrace-hook"
    assert hook.read_bytes()[:4] == b"\x7fELF"
    elf = subprocess.run(["readelf", "-h", "-d", str(hook)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"Type:\s+DYN", elf), elf
    assert re.search(r"\(FLAGS\) +BIND_NOW|\(FLAGS_1\) +Flags: NOW", elf), elf
    assert hook_runs(hook)
    leaks = subprocess.run(["grep", "-rlF", str(staged), str(staged)], capture_output=True, text=True, check=False)
    assert leaks.stdout == ""


@pytest.mark.slow
def seed_venv(destdir: Path, staged: Path) -> None:
    """The staged install's venv copied into ``destdir``: make install then reuses it (its venv exists,
    its dependencies are there) and builds no second one; what it installs over it is its own."""
    shutil.copytree(staged / OPT, destdir / OPT, symlinks=True)


def test_without_a_c_compiler_install_writes_the_python_hook(tmp_path: Path, source: Path, staged: Path) -> None:
    """Where make finds no C compiler, make install says so and writes the Python form: the system
    interpreter, isolated and without site, and the installed hook.py alone; it runs."""
    seed_venv(tmp_path, staged)
    (tmp_path / OPT / "bin/pftrace-hook").unlink()  # the compiled one of the staged install
    result = make("install", f"DESTDIR={tmp_path}", "CC=/nonexistent/cc", cwd=source)
    assert "no C compiler (/nonexistent/cc)" in result.stdout, result.stdout
    venv = tmp_path / OPT
    hook = (venv / "bin/pftrace-hook").read_text()
    assert hook.splitlines()[0] == "#!/usr/bin/python3 -IS"
    hookdir = re.search(r'sys\.path\.insert\(0, "(.*)"\)', hook)
    assert hookdir is not None, hook
    assert hookdir[1].startswith("/opt/tracerd/lib/python3"), hookdir[1]
    assert (tmp_path / hookdir[1].lstrip("/") / "hook.py").is_file()
    leaks = subprocess.run(["grep", "-rlF", str(tmp_path), str(tmp_path)], capture_output=True, text=True, check=False)
    assert leaks.stdout == ""


@pytest.mark.slow
def test_a_staged_venv_runs_once_moved(tmp_path: Path, source: Path) -> None:
    """DESTDIR + OPTDIR staged, then moved to OPTDIR: its commands run there (#! and bytecode
    point at the final place), and the package is a real install, not a link to the checkout."""
    final = tmp_path / "final"
    stage = tmp_path / "stage"
    make("install", f"DESTDIR={stage}", f"OPTDIR={final}", f"PREFIX={tmp_path}/prefix", f"SYSCONFDIR={tmp_path}/etc",
         cwd=source)
    shutil.move(str(stage / str(final).lstrip("/")), final)
    shutil.rmtree(stage)
    for script in ("tracerctl", "tracerd"):
        result = subprocess.run(
            [final / "bin" / script, "--help"], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stderr
        assert "usage:" in result.stdout
    assert hook_runs(final / "bin/pftrace-hook")
    where = subprocess.run(
        [final / "bin/python", "-c", "import tracerd; print(tracerd.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=tmp_path,
    ).stdout.strip()
    assert where.startswith(f"{final}/lib/python3"), where


@pytest.mark.slow
def test_prefix_usr_moves_links_and_the_paths_the_files_name(tmp_path: Path, source: Path, staged: Path) -> None:
    """PREFIX=/usr: links in /usr/sbin and /usr/bin, and the unit, logrotate file and man pages name them."""
    seed_venv(tmp_path, staged)
    make("install", f"DESTDIR={tmp_path}", "PREFIX=/usr", cwd=source)
    assert os.readlink(tmp_path / "usr/sbin/tracerd") == "/opt/tracerd/bin/tracerd"
    assert os.readlink(tmp_path / "usr/bin/tracerctl") == "/opt/tracerd/bin/tracerctl"
    assert "\nExecStart=/usr/sbin/tracerd\n" in (tmp_path / "etc/systemd/system/tracerd.service").read_text()
    assert "/usr/bin/tracerctl --json status" in (tmp_path / "etc/logrotate.d/tracerd").read_text()
    assert ".B /usr/sbin/pftrace-hook\n" in (tmp_path / "usr/share/man/man8/pftrace-hook.8").read_text()
    assert (tmp_path / "usr/share/bash-completion/completions/tracerctl").is_file()
    assert not (tmp_path / "usr/local").exists()


def test_destdir_uninstall_removes_what_install_added(tmp_path: Path, source: Path) -> None:
    """install then uninstall under a DESTDIR leaves nothing but empty directories; both repeat cleanly."""
    make("install", f"DESTDIR={tmp_path}", cwd=source)
    make("install", f"DESTDIR={tmp_path}", cwd=source)
    make("uninstall", f"DESTDIR={tmp_path}", cwd=source)
    make("uninstall", f"DESTDIR={tmp_path}", cwd=source)
    assert [p for p in tmp_path.rglob("*") if not p.is_dir()] == []
    assert not (tmp_path / OPT).exists()
    assert not (tmp_path / "etc/tracerd").exists()


# -- the real thing, on this machine -------------------------------------------------------------

SYSTEM_PATHS = [
    Path("/opt/tracerd"),
    Path("/usr/local/sbin/pftrace-hook"),
    Path("/usr/local/sbin/tracerd"),
    Path("/usr/local/bin/tracerctl"),
    Path("/etc/systemd/system/tracerd.service"),
    Path("/etc/systemd/system/tracerd.socket"),
    Path("/etc/tracerd"),
    Path("/etc/logrotate.d/tracerd"),
    Path("/usr/local/share/man/man8/pftrace-hook.8"),
    Path("/usr/local/share/man/man8/tracerd.8"),
    Path("/usr/local/share/man/man8/tracerctl.8"),
    Path("/usr/local/share/man/man5/tracerd.toml.5"),
    Path("/usr/local/share/bash-completion/completions/tracerctl"),
]


# directories install creates when missing, and uninstall removes once empty
SYSTEM_DIRS = [
    Path("/usr/local/share/man/man8"),
    Path("/usr/local/share/man/man5"),
    Path("/usr/local/share/bash-completion/completions"),
    Path("/usr/local/share/bash-completion"),
]
DIRS_BEFORE = {path for path in SYSTEM_DIRS if path.exists()}


def left_behind() -> list[Path]:
    leftovers = [path for path in SYSTEM_PATHS if path.exists() or path.is_symlink()]
    return leftovers + [path for path in SYSTEM_DIRS if path.exists() and path not in DIRS_BEFORE]


def remove_all() -> None:
    for path in left_behind():
        if path in SYSTEM_DIRS:
            with contextlib.suppress(OSError):
                path.rmdir()  # only if empty: never someone else's files
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


@pytest.fixture(scope="module")
def system_install() -> Iterator[subprocess.CompletedProcess[str]]:
    """`make install` on this machine, undone at the end whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("make install needs root")
    if left_behind():
        pytest.skip(f"tracerd is installed on this machine already: {left_behind()}")
    try:
        yield make("install")
    finally:
        subprocess.run(["make", "uninstall"], cwd=ROOT, capture_output=True, timeout=300, check=False)
        remove_all()


@pytest.mark.slow
def test_system_install_runs_with_the_system_interpreter(system_install: subprocess.CompletedProcess[str]) -> None:
    """The installed commands run through the links, from a venv of /usr/bin/python3, and the installed
    pages render with man (found by name, as a user would)."""
    assert Path("/opt/tracerd/bin/python").resolve() == Path("/usr/bin/python3").resolve()
    for command in ("/usr/local/sbin/tracerd", "/usr/local/bin/tracerctl"):
        result = subprocess.run([command, "--help"], capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
    assert hook_runs(Path("/usr/local/sbin/pftrace-hook"))
    check = subprocess.run(
        ["/usr/local/sbin/tracerd", "--check"], capture_output=True, text=True, timeout=60, check=False
    )
    assert check.returncode == 0, check.stderr  # the installed /etc/tracerd/tracerd.toml is valid
    page = subprocess.run(
        ["man", "-w", "tracerd.toml"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
    )
    assert Path(page.stdout.strip()).resolve() == Path("/usr/local/share/man/man5/tracerd.toml.5")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_installed_unit_verifies_as_is(system_install: subprocess.CompletedProcess[str]) -> None:
    """`systemd-analyze verify` accepts the installed unit unchanged: its ExecStart exists now."""
    unit = "/etc/systemd/system/tracerd.service"
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", unit], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line for line in (result.stdout + result.stderr).splitlines() if "tracerd.service" in line] == []


@pytest.mark.slow
def test_completion_offers_subcommands_and_survives_a_missing_helper(
    system_install: subprocess.CompletedProcess[str],
) -> None:
    """The installed completion completes subcommands and postfix actions itself; asking for crash ids
    or services from a tracerctl that cannot answer (no daemon, or no `_complete`) offers nothing
    and prints nothing."""
    script = "/usr/local/share/bash-completion/completions/tracerctl"

    def complete(*words: str) -> tuple[list[str], str]:
        line = " ".join(f"'{w}'" for w in words)
        result = subprocess.run(
            [
                "bash",
                "-c",
                f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _tracerctl; "
                'printf "%s\\n" "${COMPREPLY[@]}"',
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "TRACERD_SOCKET": "/nonexistent/tracerd.sock"},
        )
        assert result.returncode == 0, result.stderr
        return [w for w in result.stdout.splitlines() if w], result.stderr

    assert complete("tracerctl", "cr") == (["crashes", "crash", "crash-delete"], "")
    assert complete("tracerctl", "postfix", "") == (["enable", "disable", "status"], "")
    assert complete("tracerctl", "--json", "postfix", "enable", "--tr")[0] == ["--tracer"]
    assert complete("tracerctl", "crash", "2026") == ([], "")


@pytest.mark.slow
def test_reinstall_keeps_a_changed_config_and_uninstall_leaves_nothing_else(
    system_install: subprocess.CompletedProcess[str],
) -> None:
    """A second `make install` succeeds and keeps the admin's tracerd.toml; `make uninstall` (twice)
    removes every installed file but keeps that changed config; unchanged, it goes too."""
    config = Path("/etc/tracerd/tracerd.toml")
    assert "installed /etc/tracerd/tracerd.toml" in system_install.stdout
    changed = config.read_text() + "\n# changed by the admin\n"
    config.write_text(changed)
    again = make("install")
    assert "kept /etc/tracerd/tracerd.toml" in again.stdout
    assert config.read_text() == changed
    make("uninstall")
    make("uninstall")
    assert left_behind() == [Path("/etc/tracerd")]
    assert config.read_text() == changed
    config.unlink()
    Path("/etc/tracerd").rmdir()
    # unchanged: uninstall removes it and its directory
    make("install")
    make("uninstall")
    assert left_behind() == []


# -- make run (README "The two commands") --------------------------------------------------------

SYSTEM_DATA = [Path("/var/lib/tracerd"), Path("/var/log/tracerd"), Path("/run/tracerd")]


def listing(paths: list[Path]) -> dict[str, tuple[int, int]]:
    """Every entry under paths with its mtime and size: what a run wrote there."""
    found: dict[str, tuple[int, int]] = {}
    for top in paths:
        for path in [top, *top.rglob("*")] if top.exists() else []:
            with contextlib.suppress(OSError):
                info = path.lstat()
                found[str(path)] = (info.st_mtime_ns, info.st_size)
    return found


@pytest.mark.slow
def test_make_run_uses_the_checkouts_development_config(tmp_path: Path) -> None:
    """`make run`, as the README gives it, says which config it runs with and runs with it: the
    checkout's .run/tracerd.toml, socket and data under .run; never $TRACERD_CONFIG (nor, the same
    way, an installed /etc/tracerd/tracerd.toml) and nothing in the system's data directories."""
    command = next(line.split("#")[0].split() for line in (ROOT / "README.md").read_text().splitlines()
                   if line.strip().startswith("make run "))  # fmt: skip
    assert command == ["make", "run"]
    rundir = ROOT / ".run"
    existed = rundir.exists()
    planted = tmp_path / "planted.toml"  # what an installed config would name
    planted.write_text(f'socket = "{tmp_path}/planted.sock"\nlog_dir = "{tmp_path}/log"\nstate_dir = "{tmp_path}/st"\n')
    before = listing(SYSTEM_DATA)
    out = tmp_path / "make-run.out"
    env = {**os.environ, "TRACERD_CONFIG": str(planted)}
    env.pop("TRACERD_SOCKET", None)
    with out.open("wb") as sink:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        socket_path = rundir / "tracerd.sock"
        wait_until(lambda: '"event": "ready"' in out.read_text(errors="replace") or proc.poll() is not None,
                   "make run's tracerd ready", timeout=300)  # fmt: skip
        text = out.read_text(errors="replace")
        assert proc.poll() is None, text
        assert f"make run: tracerd --config {rundir}/tracerd.toml: socket {socket_path}" in text, text
        assert f'"socket": "{socket_path}"' in text, text
        assert f'"log_dir": "{rundir}/log"' in text, text
        status = subprocess.run(
            [ROOT / ".venv/bin/tracerctl", "--socket", str(socket_path), "status"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert not (tmp_path / "planted.sock").exists()
        assert not (tmp_path / "st").exists()
    finally:
        # Ctrl-C, as in the terminal: make passes it on and waits for tracerd
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reap_zombies({"tracerd", "gdb"})
        if not existed:
            shutil.rmtree(rundir, ignore_errors=True)
    assert listing(SYSTEM_DATA) == before


# -- make uninstall with Postfix enabled (a private prefix: nothing of the system's is touched) ------


@pytest.mark.slow
def test_uninstall_disables_postfix_first_and_lists_the_data_it_leaves(
    tmp_path: Path, postfix: PostfixInstance, source: Path
) -> None:
    """A real install under a private PREFIX/SYSCONFDIR/OPTDIR, a running Postfix instance pointed at
    its hook: a debugger_command set by hand makes uninstall refuse (saying how, removing nothing);
    one `tracerctl postfix enable` set is disabled first (main.cf and master.cf byte for byte as
    before, the state file gone), and uninstall lists the logs, reports and cores it leaves."""
    if os.geteuid() != 0:
        pytest.skip("a real install (no DESTDIR) needs root")
    where = [f"PREFIX={tmp_path}/usr/local", f"SYSCONFDIR={tmp_path}/etc", f"OPTDIR={tmp_path}/opt/tracerd"]
    hook = f"{tmp_path}/usr/local/sbin/pftrace-hook"
    config = tmp_path / "etc/tracerd/tracerd.toml"  # the admin's own: install keeps it
    config.parent.mkdir(parents=True)
    data = tmp_path / "data"
    config.write_text(f'socket = "{data}/run/tracerd.sock"\nlog_dir = "{data}/log"\nstate_dir = "{data}/lib"\n')
    (data / "lib/crashes").mkdir(parents=True)
    (data / "log").mkdir()
    (data / "lib/crashes/20261205T000000Z-0123abcd-42.json").write_text("{}\n")
    (data / "lib/crashes/20261205T000000Z-0123abcd-42.core.zst").write_bytes(b"core")
    (data / "log/smtpd.42.log").write_text("a line\n")
    make("install", *where, cwd=source)
    postfix.create()
    postfix.start()
    main_cf, master_cf = postfix.config_dir / "main.cf", postfix.config_dir / "master.cf"
    before = main_cf.read_bytes(), master_cf.read_bytes()

    # by hand, not through tracerctl: uninstall refuses and removes nothing
    postfix.postconf("-e", f"debugger_command={hook} $process_name $process_id")
    refused = subprocess.run(["make", "--no-print-directory", "uninstall", *where], cwd=source, capture_output=True,
                             text=True, timeout=600, check=False)  # fmt: skip
    assert refused.returncode != 0, refused.stdout + refused.stderr
    assert f"{postfix.config_dir}/main.cf: debugger_command still runs {hook}" in refused.stderr, refused.stderr
    assert "undo it first" in refused.stderr
    assert "nothing removed" in refused.stderr
    assert (tmp_path / "opt/tracerd/bin/tracerctl").is_file()
    main_cf.write_bytes(before[0])

    # through tracerctl: uninstall disables it, then removes the install
    enabled = subprocess.run(
        [tmp_path / "usr/local/bin/tracerctl", "postfix", "enable", "smtpd", "-c", str(postfix.config_dir)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    assert postfix.postconf("-h", "debugger_command").split()[0] == hook
    assert (postfix.config_dir / "tracerd-postfix.json").exists()
    result = make("uninstall", *where, cwd=source)
    out = result.stdout
    assert (main_cf.read_bytes(), master_cf.read_bytes()) == before
    assert not (postfix.config_dir / "tracerd-postfix.json").exists()
    assert f"tracerctl postfix disable {postfix.listen}/inet -c {postfix.config_dir}" in out, out
    assert f"{data}/log: per-process logs, 1 files" in out, out
    assert f"{data}/lib/crashes: 1 crash reports, 1 cores" in out, out
    assert f"remove them with: rm -rf {data}/log {data}/lib" in out, out
    assert not (tmp_path / "opt/tracerd").exists()
    assert not (tmp_path / "usr/local/bin/tracerctl").is_symlink()
    assert config.exists()  # the admin's: kept
