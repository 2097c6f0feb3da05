"""journald output: crash and session entries through the native protocol, to a real journald.

The real systemd-journald runs on a journal namespace of its own (see
tests/fleet_helpers.py); entries are read back with ``journalctl
--namespace=NS MESSAGE_ID=... -o json``.  Failure modes (journald absent,
journald not reading) give one warning and tracing goes on.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fleet_helpers import (
    CRASH_MESSAGE_ID,
    ENDED_MESSAGE_ID,
    STARTED_MESSAGE_ID,
    WATCH_RULE,
    Journald,
    crash_under_tracerd,
    journald_missing,
    tracerd_events,
)
from tests.support import wait_until
from tracerd.sinks.journal import JournalSink, encode

pytestmark = pytest.mark.skipif(journald_missing() is not None, reason=str(journald_missing()))


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[Journald]:
    server = Journald(tmp_path)
    yield server
    server.close()


def journal_config(socket_path: Path | str, enabled: str = '"auto"') -> str:
    return f'{WATCH_RULE}[journal]\nenabled = {enabled}\nsocket = "{socket_path}"\n'


def test_crash_entry_carries_the_crash_fields(
    journald: Journald, daemon_factory: Any, cbin: Any, spawn: Any
) -> None:
    """A crash under tracerd ("auto": the namespace's socket exists) gives one entry with the
    crash MESSAGE_ID, PRIORITY=2 and TRACERD_* fields equal to the stored report's; journalctl
    finds it by MESSAGE_ID and by TRACERD_SIGNATURE; session start and end have entries too."""
    daemon = daemon_factory(journal_config(journald.socket))
    report, target = crash_under_tracerd(daemon, cbin, spawn)
    [entry] = journald.wait(f"MESSAGE_ID={CRASH_MESSAGE_ID}")
    assert entry["PRIORITY"] == "2"
    assert entry["SYSLOG_IDENTIFIER"] == "tracerd"
    assert entry["TRACERD_SIGNATURE"] == report["signature"]
    assert entry["TRACERD_PROGRAM"] == "smtpd"
    assert entry["TRACERD_PID"] == str(target.pid)
    assert entry["TRACERD_SIGNAL"] == "SIGSEGV"
    assert entry["TRACERD_TOP"].split("\n") == report["top"]
    assert report["top"][:3] == ["crash_here", "level_two", "level_one"]
    assert entry["TRACERD_REPORT"].endswith(f"/{report['id']}.json")
    assert entry["TRACERD_CRASH_ID"] == report["id"]
    assert entry["TRACERD_COUNT"] == "1"
    assert entry["TRACERD_FULL_REPORT"] == "1"
    build_ids = {lib["build_id"] for lib in report["libraries"] if lib["build_id"]}
    assert build_ids
    assert all(build_id in entry["TRACERD_BUILD_IDS"] for build_id in build_ids)
    assert f"smtpd[{target.pid}]: crashed: SIGSEGV in crash_here" in entry["MESSAGE"]
    assert journald.query(f"TRACERD_SIGNATURE={report['signature']}") == [entry]
    started = journald.wait(f"MESSAGE_ID={STARTED_MESSAGE_ID}", f"TRACERD_PID={target.pid}")
    ended = journald.wait(f"MESSAGE_ID={ENDED_MESSAGE_ID}", f"TRACERD_PID={target.pid}")
    assert started[0]["TRACERD_TRACER"] == "watch"
    assert ended[0]["TRACERD_STATE"] == "crashed"
    assert daemon.status()["counters"]["journal_dropped"] == 0


def test_large_entry_goes_as_a_sealed_memfd(journald: Journald) -> None:
    """An entry too large for one datagram reaches journald whole through a memfd; a multi-line
    value keeps its newlines (binary-safe encoding) and forges no field."""
    sink = JournalSink(str(journald.socket))
    big = "\n".join(f"line {i} " + "x" * 90 for i in range(4000))  # ~400 KB
    assert sink.send({"MESSAGE": "big entry", "MESSAGE_ID": "5d1a8e5f6a3a4c4c9f0a7f3e2b1c0d9e",
                      "TRACERD_BIG": big, "TRACERD_FORGE": "a\nPRIORITY=0"})  # fmt: skip
    assert sink.large == 1, "the entry did not need a memfd: make it larger"
    [entry] = journald.wait("MESSAGE_ID=5d1a8e5f6a3a4c4c9f0a7f3e2b1c0d9e")
    assert entry["TRACERD_BIG"] == big
    assert entry["TRACERD_FORGE"] == "a\nPRIORITY=0"
    assert "PRIORITY" not in entry  # the newline inside a value started no field of its own
    sink.close()


def test_encoding_refuses_bad_field_names() -> None:
    """Field names are journald's: upper case, digits, underscore, not leading '_' or a digit."""
    assert encode({"A_B1": "x"}) == b"A_B1=x\n"
    assert encode({"M": "a\nb"}) == b"M\n" + (3).to_bytes(8, "little") + b"a\nb\n"
    for bad in ("_PID", "lower", "1X", "A=B", "A" * 65):
        with pytest.raises(ValueError, match="not a journal field name"):
            encode({bad: "x"})


def test_journald_absent_warns_once_and_tracing_goes_on(
    daemon_factory: Any, cbin: Any, spawn: Any, syslog_receiver: Any, tmp_path: Path
) -> None:
    """[journal] enabled = true with no journald: the crash is still stored and syslogged, the
    drops are counted, and tracerd's log has exactly one journal_unavailable warning."""
    daemon = daemon_factory(journal_config(tmp_path / "no-journald.socket", "true"))
    _report, target = crash_under_tracerd(daemon, cbin, spawn)
    syslog_receiver.wait_for(f"smtpd[{target.pid}]: crashed: SIGSEGV")
    crash_under_tracerd(daemon, cbin, spawn, name="qmgr")
    counters = daemon.status()["counters"]
    assert counters["journal_sent"] == 0
    assert counters["journal_dropped"] >= 6  # two sessions: start, crash, end each
    warnings = tracerd_events(daemon, "journal_unavailable")
    assert len(warnings) == 1, warnings
    assert "No such file or directory" in warnings[0]["error"]


def test_journal_auto_without_a_socket_is_off_and_silent(daemon_factory: Any, cbin: Any, spawn: Any,
                                                        tmp_path: Path) -> None:  # fmt: skip
    """"auto" with no socket at the path: no entries attempted, no warning, no journal counters."""
    daemon = daemon_factory(journal_config(tmp_path / "absent.socket"))
    crash_under_tracerd(daemon, cbin, spawn)
    assert "journal_dropped" not in daemon.status()["counters"]
    assert tracerd_events(daemon, "journal_unavailable") == []


def fill(sock: socket.socket, path: str) -> int:
    """Send until the receiver's queue is full (max_dgram_qlen datagrams): how many went."""
    for sent in range(100_000):
        try:
            sock.sendto(b"MESSAGE=filler\n", path)
        except BlockingIOError:
            return sent
    raise AssertionError("the socket never filled up")


def test_journald_full_warns_once_and_recovers(
    journald: Journald, daemon_factory: Any, cbin: Any, spawn: Any, syslog_receiver: Any
) -> None:
    """journald stopped and its socket's queue full: tracerd's entries are dropped (one warning),
    the crash is still stored and syslogged; once journald reads again, entries flow and
    tracerd logs journal_recovered."""
    daemon = daemon_factory(journal_config(journald.socket))
    journald.stop_reading()
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    filler.setblocking(False)
    sent = fill(filler, str(journald.socket))
    filler.close()
    report, target = crash_under_tracerd(daemon, cbin, spawn)
    syslog_receiver.wait_for(f"smtpd[{target.pid}]: crashed: SIGSEGV")
    assert daemon.status()["counters"]["journal_dropped"] >= 3
    assert len(tracerd_events(daemon, "journal_unavailable")) == 1
    assert "Resource temporarily unavailable" in tracerd_events(daemon, "journal_unavailable")[0]["error"]
    journald.resume()
    journald.wait("MESSAGE=filler", count=sent)
    _, second = crash_under_tracerd(daemon, cbin, spawn, name="cleanup")
    journald.wait(f"MESSAGE_ID={CRASH_MESSAGE_ID}", f"TRACERD_PID={second.pid}")
    wait_until(lambda: tracerd_events(daemon, "journal_recovered"), "journal_recovered in tracerd's log")
    assert (daemon.state_dir / "crashes" / f"{report['id']}.json").exists()
