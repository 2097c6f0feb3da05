"""RFC 5424 structured data: the crash line's ``[tracerd@32473 ...]`` element.

:func:`element` builds one SD-ELEMENT (RFC 5424 6.3.3); :func:`crash_element`
is the one sent with a crash summary on the ``udp://``/``tcp://`` path
(docs/fleet.md); :func:`parse` reads elements back.

Security: values are the target's and the config's: ``"``, ``\\`` and ``]``
are escaped, control characters become ``?``, each is capped at
:data:`MAX_VALUE` bytes.

Diagnostics: :func:`element` raises ValueError for an invalid SD-NAME (a bug,
never input); nothing else raises.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from tracerd import textclean

# NAME@PEN: 32473 is RFC 5612's documentation PEN; a site with its own may change it here
SD_ID = "tracerd@32473"
MAX_VALUE = 1024
_SD_NAME = re.compile(r"[!#-\\^-~]{1,32}")  # printable US-ASCII but '=', ' ', ']', '"'
_ESCAPE = re.compile(r'(["\\\]])')


def name_ok(name: str) -> bool:
    """Is ``name`` a valid SD-NAME (SD-ID or PARAM-NAME)?"""
    return _SD_NAME.fullmatch(name) is not None and "=" not in name


def escape(value: object) -> str:
    """A PARAM-VALUE: control characters as ``?``, ``"`` ``\\`` ``]`` escaped, capped."""
    text = textclean.clean(str(value), "")
    data = text.encode("utf-8", "replace")
    if len(data) > MAX_VALUE:
        text = data[:MAX_VALUE].decode("utf-8", "ignore")
    return _ESCAPE.sub(r"\\\1", text)


def element(sd_id: str, params: Iterable[tuple[str, object]]) -> str:
    """``[SD-ID NAME="VALUE" ...]``; a None value leaves its parameter out."""
    if not name_ok(sd_id):
        raise ValueError(f"not an SD-ID: {sd_id!r}")
    parts = [sd_id]
    for name, value in params:
        if not name_ok(name):
            raise ValueError(f"not a PARAM-NAME: {name!r}")
        if value is not None:
            parts.append(f'{name}="{escape(value)}"')
    return "[" + " ".join(parts) + "]"


def crash_element(report: Any, entry: Mapping[str, Any] | None) -> str:
    """The crash's element: signature, program, pid, signal, top, report, count."""
    entry = entry or {}
    return element(SD_ID, [
        ("signature", report.signature),
        ("program", report.process.get("name")),
        ("pid", report.process.get("pid")),
        ("signal", report.signal.get("name")),
        ("top", " < ".join(report.top)),
        ("report", entry.get("report") or ""),
        ("count", entry.get("count") or 1),
        ("full", "1" if entry.get("full") else "0"),
    ])  # fmt: skip


_ELEMENT = re.compile(r'\[([^ \]"=]+)((?: [^ \]"=]+="(?:[^"\\\]]|\\.)*")*)\]')
_PARAM = re.compile(r' ([^ \]"=]+)="((?:[^"\\\]]|\\.)*)"')


def parse(text: str) -> dict[str, dict[str, str]]:
    """The SD-ELEMENTs at the start of ``text`` as {SD-ID: {PARAM-NAME: value}}."""
    found: dict[str, dict[str, str]] = {}
    position = 0
    while True:
        match = _ELEMENT.match(text, position)
        if match is None:
            return found
        params = {name: re.sub(r"\\(.)", r"\1", value) for name, value in _PARAM.findall(match.group(2))}
        found[match.group(1)] = params
        position = match.end()
