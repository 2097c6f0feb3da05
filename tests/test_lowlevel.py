"""The shared low-level helpers: one control-character cleaner for every view of hostile text."""

from __future__ import annotations

from tracerd.crash.report import _clean as report_clean
from tracerd.ctl import crashview, maillog
from tracerd.sinks.syslog import clean as syslog_clean

HOSTILE = "a\x9b31mb\x1b[0m\tc\x85d\x7fe\nf"


def test_every_cleaner_replaces_c1_controls() -> None:
    """C1 controls (\\x9b is a one-byte CSI on some terminals, \\x85 a line break) become '?'
    in crash reports, crash views, mail log excerpts and syslog records alike."""
    assert crashview.clean(HOSTILE) == "a?31mb?[0m?c?d?e?f"
    assert crashview.clean_block(HOSTILE) == "a?31mb?[0m\tc?d?e\nf"
    assert report_clean(HOSTILE) == "a?31mb?[0m?c?d?e?f"
    assert report_clean(HOSTILE, lines=True) == "a?31mb?[0m\tc?d?e\nf"
    assert maillog.clean(HOSTILE) == "a?31mb?[0m\tc?d?e?f"
    assert syslog_clean(HOSTILE) == "a?31mb?[0m\tc?d?e?f"
