"""One Postfix instance as postconf sees it, and byte-for-byte undo of its edits.

:class:`Instance` runs postconf and postfix for one config directory (argv
lists, bounded), reads master.cf's services and main.cf's parameters, and
keeps the record of what each edit replaced in
``$config_directory/tracerd-postfix.json`` so that it can be put back exactly:
postconf re-lays-out any entry it writes, so it cannot undo its own edit.

Security: trusted are postconf's output and the state file, which must be a
regular file (not a symlink) owned by us and writable by nobody else: its
lines go back into main.cf, where debugger_command runs as root.  Files are
replaced atomically (temp file, fsync, rename).

Diagnostics: :class:`PostfixError` with the reason for every failed step.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from tracerd import atomic
from tracerd.ctl.common import program_path

COMMAND_LINE = re.compile(r"(?P<key>[^\s=]+/(?:inet|unix|unix-dgram|fifo|pass))/command = (?P<command>.*)")
STATE_NAME = "tracerd-postfix.json"


class PostfixError(Exception):
    """This operation failed or was refused; the message says why."""


def _program(name: str) -> str:
    found = program_path(name)
    if found is None:
        raise PostfixError(f"{name} not found: is Postfix installed?")
    return found


# -- undoing postconf's edits byte for byte ---------------------------------


def hunk(before: bytes, after: bytes) -> dict[str, str]:
    """The lines an edit replaced and the lines it wrote (common ends trimmed)."""
    old = before.decode("utf-8", "surrogateescape").splitlines(keepends=True)
    new = after.decode("utf-8", "surrogateescape").splitlines(keepends=True)
    head = _common(old, new)
    tail = _common(old[head:][::-1], new[head:][::-1])
    return {"before": "".join(old[head : len(old) - tail]), "after": "".join(new[head : len(new) - tail])}


def _common(one: list[str], two: list[str]) -> int:
    return next((i for i, (x, y) in enumerate(zip(one, two, strict=False)) if x != y), min(len(one), len(two)))


def undo(text: bytes, patch: dict[str, str] | None) -> bytes | None:
    """``text`` with the patch's written lines put back, if they stand exactly once."""
    if not patch or not patch["after"]:
        return None
    lines = text.decode("utf-8", "surrogateescape").splitlines(keepends=True)
    wrote = patch["after"].splitlines(keepends=True)
    hits = [i for i in range(len(lines) - len(wrote) + 1) if lines[i : i + len(wrote)] == wrote]
    if len(hits) != 1:
        return None
    lines[hits[0] : hits[0] + len(wrote)] = patch["before"].splitlines(keepends=True)
    return "".join(lines).encode("utf-8", "surrogateescape")


def replace_file(path: Path, data: bytes, like: os.stat_result | None = None) -> None:
    """Atomic (temp file, fsync, rename), with the owner and mode of ``like`` (else ours, 0600)."""
    mode = stat.S_IMODE(like.st_mode) if like else 0o600
    owner = (like.st_uid, like.st_gid) if like is not None else None
    atomic.write_file(path, data, mode, owner=owner, prefix=f".{path.name}.tracerd-")


class Instance:
    """One Postfix instance, read and edited through postconf and postfix.

    Every change goes through edit, restore, save_state or reload: in a dry run they only record it."""

    def __init__(self, config_dir: str | None, dry_run: bool = False) -> None:
        if config_dir is None:
            config_dir = self._run([_program("postconf"), "-h", "config_directory"]).strip()
        self.config_dir = Path(config_dir).absolute()
        self.main_cf, self.master_cf = self.config_dir / "main.cf", self.config_dir / "master.cf"
        self.state_path = self.config_dir / STATE_NAME
        self.dry_run, self.actions, self.notes = dry_run, list[str](), list[str]()
        self.master_state = "not running"

    @staticmethod
    def _run(argv: list[str]) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            reason = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            raise PostfixError(f"{shlex.join(argv)}: {reason}")
        return proc.stdout

    def postconf_argv(self, *args: str) -> list[str]:
        return [_program("postconf"), "-c", str(self.config_dir), *args]

    def postconf(self, *args: str) -> str:
        return self._run(self.postconf_argv(*args))

    def services(self) -> dict[str, str]:
        """``name/type`` -> command (with its arguments) of every master.cf entry."""
        lines = (COMMAND_LINE.fullmatch(line) for line in self.postconf("-F", "*/*/command").splitlines())
        return {match["key"]: match["command"] for match in lines if match}

    def debugger_command(self) -> str | None:
        """main.cf's own value (None when main.cf does not set it)."""
        line = self.postconf("-n", "debugger_command").rstrip("\n")
        return line.partition(" =")[2][1:] if line else None

    def master(self) -> psutil.Process | None:
        """The running master: from its pid file, else (root's) the process list; never ``postfix status``
        (tracerctl(8)).  None: :attr:`master_state` says "not running" or "unknown"."""
        self.master_state = "not running"
        pid_file = Path(self.postconf("-h", "queue_directory").strip()) / "pid" / "master.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except PermissionError:
            return self._master_by_argv()
        except (OSError, ValueError):
            return None
        with contextlib.suppress(psutil.Error):
            master = psutil.Process(pid)
            if master.name() == "master":
                return master
        return None

    def _master_by_argv(self) -> psutil.Process | None:
        """The ``master`` process whose ``-c DIR`` (none: Postfix's default) is this config directory."""
        default = Path(self._run([_program("postconf"), "-d", "-h", "config_directory"]).strip())
        found: list[psutil.Process] = []
        for process in psutil.process_iter(["name"]):
            if process.info["name"] != "master":
                continue
            try:
                argv = process.cmdline()
            except psutil.Error:
                self.master_state = "unknown"
                continue
            given = [argv[i + 1] for i in range(1, len(argv) - 1) if argv[i] == "-c"]
            given += [word[2:] for word in argv[1:] if word.startswith("-c") and len(word) > 2]
            if Path(given[-1] if given else default).resolve() == self.config_dir.resolve():
                found.append(process)
        if len(found) == 1:
            return found[0]
        if found:
            self.master_state = "unknown"
        return None

    def resolve(self, service: str, services: dict[str, str]) -> str:
        if "/" in service:
            matches = [service] if service in services else []
        else:
            matches = [key for key in services if key.rpartition("/")[0] == service]
            matches = matches or [key for key, command in services.items() if command.split()[0] == service]
        if len(matches) > 1:
            raise PostfixError(f"{service} is ambiguous: {', '.join(sorted(matches))}: name one")
        if not matches:
            raise PostfixError(f"no service or program {service} in {self.master_cf} (see postconf -M)")
        return matches[0]

    def edit(self, path: Path, *args: str) -> dict[str, str]:
        """Run one postconf edit; returns the lines it replaced and the lines it wrote."""
        self.actions.append(shlex.join(self.postconf_argv(*args)))
        if self.dry_run:
            return {"before": "", "after": ""}
        before = path.read_bytes()
        self.postconf(*args)
        return hunk(before, path.read_bytes())

    def restore(self, path: Path, patch: dict[str, str] | None, check: Callable[[], bool]) -> bool:
        """Put a patch's old lines back; False (file left as it was) unless ``check()`` holds then."""
        current = path.read_bytes()
        restored = undo(current, patch)
        if restored is None:
            return False
        lines = [len(patch[side].splitlines()) if patch else 0 for side in ("after", "before")]
        self.actions.append(f"restore {path} as it was before enable: -{lines[0]} +{lines[1]} lines")
        if self.dry_run:
            return True
        replace_file(path, restored, like := path.stat())
        if check():
            return True
        self.actions[-1] += " (undone: postconf disagreed)"
        replace_file(path, current, like)
        return False

    def reload(self) -> None:
        status = subprocess.run([_program("postfix"), "-c", str(self.config_dir), "status"],
                                capture_output=True, timeout=60, check=False)  # fmt: skip
        if status.returncode == 0:  # running: make master read the new configuration
            argv = [_program("postfix"), "-c", str(self.config_dir), "reload"]
            self.actions.append(shlex.join(argv))
            if not self.dry_run:
                self._run(argv)

    def load_state(self) -> dict[str, Any] | None:
        try:
            fd = os.open(self.state_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise PostfixError(f"{self.state_path}: {err.strerror}") from None
        with os.fdopen(fd, encoding="utf-8") as file:
            info = os.fstat(file.fileno())
            # its lines go back into main.cf, whose debugger_command runs as root
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
                raise PostfixError(f"{self.state_path}: not a regular file of uid {os.geteuid()} writable by it alone")
            try:
                state = json.load(file)
            except ValueError:
                state = None
        if not isinstance(state, dict) or state.get("version") != 1:
            raise PostfixError(f"{self.state_path}: not a state file of this tracerctl")
        return state

    def save_state(self, state: dict[str, Any] | None) -> None:
        if self.dry_run:
            return
        if state is None:
            self.state_path.unlink(missing_ok=True)
        else:
            replace_file(self.state_path, (json.dumps(state, indent=2) + "\n").encode())


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """One tracerctl postfix at a time per instance (postconf locks each edit only); bounded: 60 s a step."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
