"""A crashed daemon's last words: its pid's last lines in the mail log.

The report keeps the crashed pid's last MAX_LINES lines, none older than
MAX_AGE, from the end of the mail log: ``mail_log``, else postconf's
``maillog_file``, else syslog (docs/crashes.md, "The daemon's last words").

Security: the log is untrusted text, parsed by the triage reader (control
characters replaced, lines capped); only the crashed pid's and program's lines
are kept.  At most TAIL_BYTES are read, never through a FIFO or device;
``MAIL_CONFIG`` is used only if root's alone; postconf runs from an argv with a
timeout.

Diagnostics: no log, an unreadable log, a postconf failure: an empty list and
the reason in ``errors`` (``capture_errors``); the capture goes on.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
import time
from pathlib import Path

from tracerd.ctl import maillog

MAX_LINES = 20
MAX_AGE = dt.timedelta(minutes=30)
TAIL_BYTES = 1 << 20
CACHE_SECONDS = 300.0
_found: dict[str | None, tuple[float, Path]] = {}


def mail_config_of(pid: int) -> str | None:
    """The process's MAIL_CONFIG, when it names a directory only root may write."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            variables = environ.read(1 << 20).split(b"\0")
    except OSError:
        return None
    for item in variables:
        if item.startswith(b"MAIL_CONFIG="):
            path = os.fsdecode(item[len(b"MAIL_CONFIG=") :])
            try:
                info = os.stat(path)
            except (OSError, ValueError):
                return None
            if os.path.isabs(path) and stat.S_ISDIR(info.st_mode) and info.st_uid == 0 and not info.st_mode & 0o022:
                return path
            return None
    return None


def find_log(configured: Path | None, pid: int) -> Path:
    """The mail log to read; raises maillog.LogError.  postconf's answer is cached (the process is held);
    without a main.cf postconf is not asked (it would fail after a 1 s sleep)."""
    if configured is not None:
        return configured
    config_dir = mail_config_of(pid)
    hit = _found.get(config_dir)
    if hit is not None and time.monotonic() - hit[0] < CACHE_SECONDS:
        return hit[1]
    if (Path(config_dir or "/etc/postfix") / "main.cf").is_file():
        path = maillog.default_logs(config_dir)[0][0]
    else:
        syslog = [p for p in maillog.SYSLOG_LOCATIONS if p.exists()]
        if not syslog:
            raise maillog.LogError("no mail log found: no main.cf and no syslog mail log")
        path = syslog[0]
    _found[config_dir] = (time.monotonic(), path)
    return path


def last_lines(path: Path, pid: int, name: str | None, now: dt.datetime | None = None) -> list[str]:
    """The last MAX_LINES lines of ``name[pid]`` in the last TAIL_BYTES of ``path``; raises maillog.LogError."""
    now = now or dt.datetime.now().astimezone()
    with maillog.open_log(path) as (stream, mtime):
        size = os.fstat(stream.fileno()).st_size
        if size > TAIL_BYTES:
            stream.seek(size - TAIL_BYTES)
            stream.readline()  # a partial line
        data = stream.read(TAIL_BYTES)
    reference = min(now, dt.datetime.fromtimestamp(mtime).astimezone())
    found: list[str] = []
    for number, raw in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
        line = maillog.parse_line(raw[: maillog.MAX_LINE], str(path), number, reference)
        if line.pid != pid or not line.program:
            continue
        if name and line.program.rsplit("/", 1)[-1] != name:
            continue
        if line.time is not None and line.time < now - MAX_AGE:
            continue
        found.append(line.text)
    return found[-MAX_LINES:]


def collect(configured: Path | None, pid: object, name: object, errors: list[str]) -> list[str]:
    """The report's ``mail_log``; a problem is one line in ``errors``."""
    if not isinstance(pid, int):
        return []
    try:
        path = find_log(configured, pid)
    except maillog.LogError as err:
        if configured is not None or "no mail log found" not in str(err):
            errors.append(f"mail log: {err}")
        return []
    try:
        return last_lines(path, pid, name if isinstance(name, str) else None)
    except maillog.LogError as err:
        errors.append(f"mail log: {err}")
    except OSError as err:
        errors.append(f"mail log: {err}")
    return []
