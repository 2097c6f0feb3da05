"""Does the hook that Postfix's debugger_command names exist, and can root run it?

For ``tracerctl postfix enable``/``status`` and tracerd's start and ``--check``:
a missing pftrace-hook makes every ``-D`` process start untraced, and sh's
"not found" goes to a stderr Postfix throws away.  Standard library only.

Security: reads only stat(2), the ``#!`` line and, for make's stub, the
directory it loads hook.py from; executes nothing but postconf (argv, timeout).

Diagnostics: :func:`hook_problem` returns a one-line reason, or None.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess

HOOK_NAME = "pftrace-hook"
POSTCONF_TIMEOUT = 10.0
# the stub make writes loads DIR/hook.py: sys.path.insert(0, "DIR") then import hook
STUB_DIR_RE = re.compile(rb'\nsys\.path\.insert\(0, "([^"\n]+)"\)\nimport hook\n')


def hook_path(debugger_command: str | None) -> str | None:
    """The program a debugger_command runs, when it is pftrace-hook (by name)."""
    words = (debugger_command or "").split()
    return words[0] if words and os.path.basename(words[0]) == HOOK_NAME else None


def _runnable(path: str) -> str | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as err:
        return err.strerror or str(err)
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if not info.st_mode & 0o111:  # root may run a file with any x bit set
        return "is not executable"
    return None


def hook_problem(path: str) -> str | None:
    """Why root could not run ``path`` (itself, its #! interpreter, or its stub's hook.py); None if it can."""
    if not os.path.isabs(path):
        return "is not an absolute path"
    problem = _runnable(path)
    if problem is not None:
        return problem
    try:
        with open(path, "rb") as file:
            first = file.readline(512)
            rest = file.read(4096) if first.startswith(b"#!") else b""
    except OSError as err:
        return f"cannot be read: {err.strerror}"
    if first.startswith(b"#!"):
        words = first[2:].decode("utf-8", "replace").split()
        interpreter = words[0] if words else ""
        if not interpreter or _runnable(interpreter) is not None:
            return f"names an interpreter that root cannot run: #!{interpreter}"
    stub = STUB_DIR_RE.search(rest)
    if stub is not None:
        module = os.path.join(os.fsdecode(stub.group(1)), "hook.py")
        if not os.path.isfile(module):
            return f"loads {module}, which does not exist"
    return None


def postfix_debugger_command(timeout: float = POSTCONF_TIMEOUT) -> str | None:
    """Postfix's debugger_command (honours $MAIL_CONFIG); None without postconf or main.cf
    (postconf without main.cf fails only after a 1 s sleep, on every tracerd start)."""
    postconf = shutil.which("postconf") or shutil.which("postconf", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if postconf is None or not os.path.isfile(os.path.join(os.environ.get("MAIL_CONFIG") or "/etc/postfix", "main.cf")):
        return None
    try:
        result = subprocess.run([postconf, "-h", "debugger_command"], capture_output=True, text=True,
                                timeout=timeout, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def postfix_hook_warning() -> str | None:
    path = hook_path(postfix_debugger_command())
    problem = hook_problem(path) if path else None
    if path is None or problem is None:
        return None
    return (f"Postfix's debugger_command names {path}, which {problem}:"
            " every process of a -D service starts untraced")  # fmt: skip
