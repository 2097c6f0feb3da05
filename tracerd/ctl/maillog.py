"""Mail log reading: where the log is, its rotated siblings, and its lines.

:func:`default_logs` finds the log (``postconf -x -h maillog_file``, else
the syslog locations), :func:`with_rotated` adds its rotated files oldest
first, :func:`read_log` yields :class:`LogLine` from syslog or RFC 3339
lines, decompressing by magic bytes.  A syslog line gets the year that puts
it no later than a day after the file's mtime; times are timezone-aware.
Formats, rotation and years: docs/crashes.md, "Triage and bug reports".

Security: log contents are untrusted.  Lines are capped at :data:`MAX_LINE`
bytes (marked truncated), decoded with replacement, control characters made
``?``; nothing is evaluated or used as a path.  A log must be a regular
file, opened non-blocking (no FIFO or device hangs us).  postconf: argv
list, timeout.

Diagnostics: :class:`LogError` names the file and the reason; a damaged
compressed file yields its good lines first, then raises.
"""

from __future__ import annotations

import bz2
import contextlib
import datetime as dt
import gzip
import io
import lzma
import os
import re
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tracerd import textclean

MAX_LINE = 8192
POSTCONF_TIMEOUT = 15.0
SYSLOG_LOCATIONS = (Path("/var/log/mail.log"), Path("/var/log/maillog"), Path("/var/log/mail"))
MONTHS = {name: number for number, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1)}  # fmt: skip
FUTURE_SLACK = dt.timedelta(days=1)

_SYSLOG_STAMP = re.compile(
    r"(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) {1,2}(?P<day>\d{1,2})"
    r" (?P<hour>\d\d):(?P<minute>\d\d):(?P<second>\d\d)(?:\.(?P<frac>\d{1,9}))? "
)
_RFC3339_STAMP = re.compile(r"(?P<stamp>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:?\d\d)?) ")
_TAG = re.compile(r"(?P<host>\S+) (?P<program>[^\s\[\]:]{1,128})(?:\[(?P<pid>\d{1,10})\])?: ")
_ROTATED = r"(?:\.(?P<number>\d{1,4})|-(?P<date>\d{8}(?:\d{2})?))(?:\.(?:gz|bz2|xz))?"


class LogError(Exception):
    """A log file that cannot be read, with the reason."""


@dataclass(frozen=True)
class LogLine:
    """One line of a mail log, as far as it could be parsed."""

    source: str  # the file it came from
    number: int  # 1-based line number in that file
    time: dt.datetime | None  # timezone-aware; None when the line has no timestamp we know
    host: str | None
    program: str | None  # "postfix/smtpd", "postfix-in/submission/smtpd", "pftrace-hook"
    pid: int | None
    message: str  # after "program[pid]: "; the whole text when there is no tag
    text: str  # the whole line, control characters replaced, capped at MAX_LINE bytes
    truncated: bool

    @property
    def daemon(self) -> str:
        """The program tag, or ``?`` for a line that has none."""
        return self.program or "?"


def clean(text: str) -> str:
    """Untrusted text made safe to print: control characters (but tab) become ``?``."""
    return textclean.clean(text, textclean.TAB)


# -- where the log is ---------------------------------------------------------


def postconf_maillog_file(config_dir: str | None) -> str:
    """Postfix's ``maillog_file`` (expanded), ``""`` when unset; raises LogError when postconf fails."""
    argv = ["postconf", "-x", "-h"]
    if config_dir:
        argv += ["-c", config_dir]
    argv.append("maillog_file")
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=POSTCONF_TIMEOUT, check=False)
    except FileNotFoundError:
        raise LogError("postconf is not installed") from None
    except subprocess.TimeoutExpired:
        raise LogError(f"postconf did not answer within {POSTCONF_TIMEOUT:g} s") from None
    if result.returncode != 0:
        reason = clean(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}")
        raise LogError(f"{' '.join(argv)}: {reason}")
    return result.stdout.strip()


def default_logs(config_dir: str | None) -> tuple[list[Path], str]:
    """The mail log to read when none is named, and how it was chosen.

    A postconf failure raises LogError with ``-c`` only; without, the syslog locations are tried."""
    try:
        maillog_file = postconf_maillog_file(config_dir)
    except LogError:
        if config_dir:
            raise
        maillog_file = ""
    if maillog_file:
        return [Path(maillog_file)], "postconf maillog_file"
    for candidate in SYSLOG_LOCATIONS:
        if candidate.exists():
            return [candidate], "syslog location"
    places = ", ".join(str(p) for p in SYSLOG_LOCATIONS)
    raise LogError(f"no mail log found: maillog_file is not set and none of {places} exists; name the log file")


def with_rotated(path: Path) -> list[Path]:
    """``path`` and its rotated siblings, oldest first, ``path`` itself last."""
    pattern = re.compile(re.escape(path.name) + _ROTATED)
    dated: list[tuple[str, Path]] = []
    numbered: list[tuple[int, Path]] = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        names = []
    for name in names:
        found = pattern.fullmatch(name)
        if not found:
            continue
        if found.group("number") is not None:
            numbered.append((int(found.group("number")), path.parent / name))
        else:
            dated.append((found.group("date"), path.parent / name))
    ordered = [p for _, p in sorted(dated)] + [p for _, p in sorted(numbered, reverse=True)]
    return [*ordered, path]


# -- reading ------------------------------------------------------------------


@contextlib.contextmanager
def open_log(path: Path) -> Iterator[tuple[io.BufferedIOBase, float]]:
    """Open a log (decompressing by magic bytes): the stream and the file's mtime; closes both."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; refused below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LogError(f"{path}: no such file") from None
    except PermissionError:
        raise LogError(f"{path}: permission denied (mail logs are often readable by root or group adm only)") from None
    except OSError as err:
        raise LogError(f"{path}: {err.strerror}") from None
    with os.fdopen(fd, "rb") as raw:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise LogError(f"{path}: not a regular file")
        try:
            magic = raw.read(6)
            raw.seek(0)
        except OSError as err:
            raise LogError(f"{path}: {err.strerror}") from None
        # a decompressor does not close the file it was given: the outer ``with`` does
        with _decompressed(magic, raw) as stream:
            yield stream, info.st_mtime


def _decompressed(magic: bytes, raw: io.BufferedReader) -> io.BufferedIOBase:
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(raw, mode="rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw, mode="rb")
    return raw


def read_log(path: Path, now: dt.datetime | None = None) -> Iterator[LogLine]:
    """Every line of one log file, in file order; raises LogError (after the good lines) on damage."""
    now = now or dt.datetime.now().astimezone()
    number = 0
    with open_log(path) as (stream, mtime):
        reference = min(now, dt.datetime.fromtimestamp(mtime).astimezone())
        try:
            while True:
                chunk = stream.readline(MAX_LINE + 1)
                if not chunk:
                    return
                number += 1
                truncated = len(chunk) > MAX_LINE and not chunk.endswith(b"\n")
                if truncated:
                    chunk = chunk[:MAX_LINE]
                    _skip_rest_of_line(stream)
                yield parse_line(chunk.decode("utf-8", "replace").rstrip("\r\n"), str(path), number, reference,
                                 truncated=truncated)  # fmt: skip
        except (OSError, EOFError, lzma.LZMAError) as err:
            raise LogError(f"{path}: damaged after line {number}: {err}") from None


def _skip_rest_of_line(stream: io.BufferedIOBase) -> None:
    while True:
        rest = stream.readline(MAX_LINE)
        if not rest or rest.endswith(b"\n"):
            return


def parse_line(raw: str, source: str, number: int, reference: dt.datetime, *, truncated: bool = False) -> LogLine:
    """One line: syslog or RFC 3339 timestamp, host, ``program[pid]:``, message."""
    text = clean(raw)
    when: dt.datetime | None = None
    rest = text
    syslog = _SYSLOG_STAMP.match(text)
    if syslog:
        when = _syslog_time(syslog, reference)
        rest = text[syslog.end() :]
    else:
        rfc = _RFC3339_STAMP.match(text)
        if rfc:
            when = _rfc3339_time(rfc.group("stamp"))
            rest = text[rfc.end() :]
    if when is None:
        return LogLine(source, number, None, None, None, None, text, text, truncated)
    tag = _TAG.match(rest)
    if not tag:
        return LogLine(source, number, when, None, None, None, rest, text, truncated)
    pid = int(tag.group("pid")) if tag.group("pid") else None
    return LogLine(source, number, when, tag.group("host"), tag.group("program"), pid, rest[tag.end() :], text,
                   truncated)  # fmt: skip


def _syslog_time(found: re.Match[str], reference: dt.datetime) -> dt.datetime | None:
    month, day = MONTHS[found.group("mon")], int(found.group("day"))
    hour, minute, second = int(found.group("hour")), int(found.group("minute")), int(found.group("second"))
    micro = int((found.group("frac") or "0")[:6].ljust(6, "0"))
    # Feb 29 exists only in leap years: walk back until the date exists and is not in the future.
    for year in range(reference.year, reference.year - 8, -1):
        try:
            when = dt.datetime(year, month, day, hour, minute, second, micro).astimezone()
        except ValueError:
            continue
        if when <= reference + FUTURE_SLACK:
            return when
    return None


def _rfc3339_time(stamp: str) -> dt.datetime | None:
    # fromisoformat takes at most 6 fractional digits; rsyslog may write more.
    stamp = re.sub(r"(\.\d{6})\d+", r"\1", stamp)
    try:
        when = dt.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return when if when.tzinfo else when.astimezone()


# -- time arguments -------------------------------------------------------------

_RELATIVE = re.compile(r"(?P<amount>\d{1,6})\s*(?P<unit>s|m|h|d|w)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``2h``, ``30m``, ``7d``, ``2026-11-24``, ``2026-11-24T10:00`` (local unless a zone is given)."""
    now = now or dt.datetime.now().astimezone()
    relative = _RELATIVE.fullmatch(text.strip())
    if relative:
        return now - dt.timedelta(seconds=int(relative.group("amount")) * _UNITS[relative.group("unit")])
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use e.g. 2h, 30m, 7d, 2026-11-24 or 2026-11-24T10:00)") from None
    return when if when.tzinfo else when.astimezone()
