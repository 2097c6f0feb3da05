"""make uninstall's first step: no Postfix left pointing at the hook it removes, and what stays.

``uninstall.py --sbindir DIR --optdir DIR --config FILE [--postfix DIR]...``

1. Every Postfix instance whose ``debugger_command`` runs this install's
   pftrace-hook (``SBINDIR/pftrace-hook`` or ``OPTDIR/bin/pftrace-hook``) gets
   ``tracerctl postfix disable SERVICE -c DIR`` for each service its
   ``tracerd-postfix.json`` lists, with the installed tracerctl (removed next:
   afterwards nobody could).  Instances: the default one, postmulti's
   ``multi_instance_directories``, ``alternate_config_directories``, the
   ``-c DIR`` of every running master, and ``--postfix DIR``.  If one still
   names the hook afterwards (a ``-D`` added by hand, a failed disable), it
   refuses, says how to undo it, and exits 1: make stops before removing
   anything, so that mail never flows on silently untraced.
2. It lists tracerd's data, which uninstall leaves (logs, crash reports,
   cores holding the memory of crashed processes), with the command that
   removes it.

Security: run by root from the checkout with the system interpreter (-I),
standard library only.  It trusts postconf's answers, the installed
tracerctl and the installed config (root's); it runs argv lists, never a
shell, and only ``tracerctl postfix disable`` changes anything.

Diagnostics: ``make uninstall: REASON`` on stderr and exit 1 when it refuses;
what it did and what stays on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

STATE_NAME = "tracerd-postfix.json"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def postconf(*args: str) -> str | None:
    """postconf's answer, or None (no Postfix, or no such instance)."""
    if shutil.which("postconf", path=ENV["PATH"]) is None:
        return None
    result = subprocess.run(["postconf", *args], capture_output=True, text=True, env=ENV, timeout=60, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def running_masters() -> list[str]:
    """The ``-c DIR`` of every running Postfix master (one started as ``master -c DIR``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"master" and b"-c" in argv[:-1]:
            found.append(argv[argv.index(b"-c") + 1].decode(errors="replace"))
    return found


def instances(extra: list[str]) -> list[Path]:
    dirs = [postconf("-h", "config_directory") or "/etc/postfix"]
    for key in ("multi_instance_directories", "alternate_config_directories"):
        dirs += (postconf("-h", key) or "").replace(",", " ").split()
    seen: dict[str, Path] = {}
    for name in dirs + running_masters() + extra:
        path = Path(name)
        if path.is_absolute() and (path / "main.cf").is_file():
            seen.setdefault(os.path.realpath(path), path)
    return list(seen.values())


def hook_of(directory: Path) -> str | None:
    command = postconf("-c", str(directory), "-h", "debugger_command")
    words = shlex.split(command, posix=True) if command else []
    return words[0] if words else None


def enabled_services(directory: Path) -> list[str]:
    try:
        state = json.loads((directory / STATE_NAME).read_text())
        return sorted(state.get("services") or {})
    except (OSError, ValueError, AttributeError):
        return []


def disable_all(hooks: set[str], tracerctl: Path, extra: list[str]) -> list[str]:
    """Disables what points at ``hooks``; returns the refusals (empty: all done)."""
    refusals = []
    for directory in instances(extra):
        hook = hook_of(directory)
        if hook is None or (os.path.realpath(hook) not in hooks and hook not in hooks):
            continue
        for service in enabled_services(directory):
            argv = [str(tracerctl), "postfix", "disable", service, "-c", str(directory)]
            if not os.access(tracerctl, os.X_OK):
                break
            print(f"make uninstall: {directory}: {' '.join(argv)}", flush=True)
            result = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=300, check=False)
            for line in (result.stdout + result.stderr).splitlines():
                print(f"  {line}", flush=True)
        if hook_of(directory) in (hook, *hooks):
            refusals.append(
                f"{directory}/main.cf: debugger_command still runs {hook}, which uninstall removes"
                f" (-D services: {', '.join(enabled_services(directory)) or 'none recorded by tracerctl'});"
                f" undo it first: `tracerctl postfix disable SERVICE -c {directory}` for each -D service"
                f" (or remove -D from master.cf and `postconf -c {directory} -X debugger_command`),"
                f" `postfix -c {directory} reload`, then make uninstall again"
            )
    return refusals


def describe(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
    return len(files), sum(p.stat().st_size for p in files)


def data_paths(config: Path) -> tuple[Path, Path, Path]:
    """log_dir, state_dir and socket the installed config names (root's defaults otherwise)."""
    try:
        values = tomllib.loads(config.read_text())
    except (OSError, ValueError):
        values = {}
    return (Path(values.get("log_dir", "/var/log/tracerd")), Path(values.get("state_dir", "/var/lib/tracerd")),
            Path(values.get("socket", "/run/tracerd/tracerd.sock")))  # fmt: skip


def list_data(config: Path) -> None:
    log_dir, state_dir, socket = data_paths(config)
    crashes = state_dir / "crashes"
    reports = sorted(crashes.glob("*.json")) if crashes.is_dir() else []
    cores = sorted(crashes.glob("*.core*")) if crashes.is_dir() else []
    logs, log_bytes = describe(log_dir)
    state, state_bytes = describe(state_dir)
    print("make uninstall: leaves tracerd's data (not installed files):")
    print(f"  {log_dir}: per-process logs, {logs} files, {log_bytes} bytes (a syscall tracer's logs hold mail content)")
    print(f"  {crashes}: {len(reports)} crash reports, {len(cores)} cores (0600: the memory of crashed"
          " processes, mail and passwords included)")  # fmt: skip
    print(f"  {state_dir}: {state} files, {state_bytes} bytes in all")
    print(f"  remove them with: rm -rf {shlex.quote(str(log_dir))} {shlex.quote(str(state_dir))}")
    if socket.exists():
        print(f"make uninstall: warning: {socket} exists: tracerd still runs; stop it"
              " (systemctl disable --now tracerd, or kill its pid)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="uninstall.py")
    parser.add_argument("--sbindir", required=True)
    parser.add_argument("--optdir", required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--postfix", action="append", default=[], metavar="DIR")
    args = parser.parse_args(argv)
    link, target = f"{args.sbindir}/pftrace-hook", f"{args.optdir}/bin/pftrace-hook"
    hooks = {link, target, os.path.realpath(link), os.path.realpath(target)}
    refusals = disable_all(hooks, Path(args.optdir) / "bin" / "tracerctl", args.postfix)
    for refusal in refusals:
        print(f"make uninstall: {refusal}", file=sys.stderr)
    if refusals:
        print("make uninstall: nothing removed", file=sys.stderr)
        return 1
    list_data(args.config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
