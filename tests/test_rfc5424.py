"""RFC 5424 structured data on the crash line, read back by a real rsyslogd.

A real rsyslogd runs contrib/rsyslog-central.conf (paths and port moved
under the test's directory): imtcp on a loopback port, mmpstrucdata, one
file per signature.  A crash under tracerd arrives over ``tcp://`` and its
SD parameters, parsed by rsyslog, are the crash's values.

Program names cannot carry ``]`` or ``"`` (the protocol's NAME_RE is
``[A-Za-z0-9._-]``), nor can C function names; the report path can, so the
escaping is proven through a state_dir named with ``"``, ``]`` and ``\\``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fleet_helpers import Rsyslog, crash_under_tracerd, rsyslog_missing
from tests.support import wait_until
from tracerd.config import SyslogConfig
from tracerd.sinks import sdata
from tracerd.sinks.syslog import LOG_CRIT, SyslogSink
from tracerd.textclean import clean

GDB_RULE = '[[rule]]\nprocess = "*"\ntracer = "gdb"\n'


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    reason = rsyslog_missing()
    if reason:
        pytest.skip(reason)
    server = Rsyslog(tmp_path / "rsyslog")
    yield server
    server.close()


def test_crash_sd_parses_back_in_a_real_rsyslog(
    rsyslog: Rsyslog, daemon_factory: Any, cbin: Any, spawn: Any, tmp_path: Path
) -> None:
    """The crash line sent over tcp:// carries [tracerd@32473 ...]; rsyslog's mmpstrucdata parses
    it back to the crash's signature, program, pid, signal, top frames and report path (a path
    with '"', ']' and '\\\\' in it), and contrib/rsyslog-central.conf files it under the signature
    and under the host."""
    weird = tmp_path / 'data "q" ]b\\s'
    weird.mkdir()
    # the gdb tracer: the watch tracer's capture refuses a core path gdb cannot be given
    daemon = daemon_factory(GDB_RULE, start=False, data_dir=weird)
    text = []
    for line in daemon.config.read_text().splitlines():
        key = line.split(" = ", 1)[0]
        if key in ("log_dir", "state_dir"):  # a JSON string is a TOML basic string
            text.append(f"{key} = {json.dumps(str(getattr(daemon, key)))}")
        elif key == "address":
            text.append(f'address = "tcp://127.0.0.1:{rsyslog.port}"')
        else:
            text.append(line)
    daemon.config.write_text("\n".join(text) + "\n")
    daemon.start()
    report, target = crash_under_tracerd(daemon, cbin, spawn)
    path = str(daemon.state_dir / "crashes" / f"{report['id']}.json")
    assert '"' in path
    assert "]" in path
    assert "\\" in path
    [line] = wait_until(lambda: rsyslog.lines(f"signature/{report['signature']}.log"),
                        "the crash in the signature's file on the central rsyslog", timeout=30)  # fmt: skip
    _, host, parsed = line.split(" ", 2)
    assert host == socket.gethostname()
    assert json.loads(parsed) == {
        "signature": report["signature"], "program": "smtpd", "pid": str(target.pid), "signal": "SIGSEGV",
        "top": " < ".join(report["top"]), "report": path, "count": "1", "full": "1",
    }  # fmt: skip
    assert report["top"][0] == "crash_here"
    host_lines = wait_until(lambda: [x for x in rsyslog.lines(f"host/{host}.log") if f"[{target.pid}]" in x],
                            "tracerd's lines in the host's file", timeout=30)  # fmt: skip
    assert any("crashed: SIGSEGV in crash_here" in x for x in host_lines)


def test_udp_crash_line_is_rfc5424_with_msgid_and_sd(tmp_path: Path) -> None:
    """Over udp:// a record sent with structured data is ``<PRI>1 TS HOST APP PID crash [SD] MSG``;
    the element's values read back exactly."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(10)
    sink = SyslogSink(SyslogConfig(address=f"udp://127.0.0.1:{receiver.getsockname()[1]}"), hostname="mx1")
    element = sdata.element(sdata.SD_ID, [("report", 'a"b]c\\d'), ("program", "smtpd")])
    try:
        assert sink.send(LOG_CRIT, "smtpd[1]: crashed", sd=("crash", element))
        record = receiver.recv(65536).decode()
    finally:
        sink.close()
        receiver.close()
    head = record.split(" ", 6)
    assert head[0] == "<18>1"
    assert head[2:6] == ["mx1", "tracerd", head[4], "crash"]
    assert head[6] == element + " smtpd[1]: crashed"
    assert sdata.parse(head[6]) == {"tracerd@32473": {"report": 'a"b]c\\d', "program": "smtpd"}}


@given(st.text(max_size=300))
def test_any_value_round_trips(value: str) -> None:
    """Whatever a value holds, the element stays one element and parses back to the value
    (control characters become '?', as in every syslog field)."""
    element = sdata.element(sdata.SD_ID, [("v", value), ("w", "x")])
    assert element.startswith("[tracerd@32473 v=\"")
    assert element.endswith(' w="x"]')
    parsed = sdata.parse(element + " message")
    assert parsed == {"tracerd@32473": {"v": clean(value, ""), "w": "x"}}


def test_escaping_and_names() -> None:
    """'"', '\\\\' and ']' are escaped with a backslash; SD-NAMEs refuse '=', space, ']', '"', non-ASCII
    and more than 32 characters."""
    assert sdata.escape('a"b\\c]d') == 'a\\"b\\\\c\\]d'
    assert sdata.element("x@1", [("k", "v"), ("none", None)]) == '[x@1 k="v"]'
    for bad in ("a=b", "a b", "a]", 'a"', "é", "x" * 33, ""):
        assert not sdata.name_ok(bad)
        with pytest.raises(ValueError, match="not a PARAM-NAME"):
            sdata.element("x@1", [(bad, "v")])
    assert sdata.name_ok("tracerd@32473")
