"""tracerctl triage: real Postfix logs (a private instance with configuration
errors, a crashed smtpd traced by a real tracerd), rotated and compressed
files, --since, grouping, ordering, the JSON shape and the exit codes."""

from __future__ import annotations

import bz2
import contextlib
import datetime as dt
import gzip
import json
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import have, script
from tests.support import send_signal, wait_until
from tracerd.ctl import main as ctl
from tracerd.ctl.maillog import MAX_LINE
from tracerd.ctl.triage import message_shape

DATA = Path(__file__).parent / "data"


def tracerctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run tracerctl in-process; returns exit code, stdout, stderr."""
    code = ctl.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def triage_json(capsys: pytest.CaptureFixture[str], socket_path: Path, *argv: str) -> dict[str, Any]:
    code, out, err = tracerctl(capsys, "--socket", str(socket_path), "--json", "triage", *argv)
    assert code == 0, err
    document: dict[str, Any] = json.loads(out)
    return document


def smtp_dialog(port: int, *commands: str) -> list[str]:
    """One SMTP session, a command at a time (no pipelining); the last reply line of each."""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn, conn.makefile("rb") as stream:

        def reply() -> str:
            while True:
                line = stream.readline().decode()
                if line[3:4] != "-":
                    return line

        replies.append(reply())
        for command in commands:
            conn.sendall(command.encode() + b"\r\n")
            replies.append(reply())
    return replies


def serving_smtpd(postfix: Any, conn: socket.socket, timeout: float = 10.0) -> int:
    """The pid of the smtpd that holds the other end of ``conn``."""
    port = conn.getsockname()[1]

    def serving() -> int | None:
        for proc in postfix.processes("smtpd"):
            with contextlib.suppress(psutil.Error):
                if any(c.raddr and c.raddr.port == port for c in proc.net_connections(kind="tcp")):
                    return int(proc.pid)
        return None

    return wait_until(serving, f"an smtpd serving 127.0.0.1:{port}", timeout)


def crash_an_smtpd(postfix: Any, daemon: Any) -> tuple[int, str]:
    """Connect, kill -SEGV the traced smtpd that answered (waiting for our
    command); returns its pid and the crash id its session names."""
    with socket.create_connection(("127.0.0.1", postfix.port), timeout=30) as conn:
        assert conn.recv(100).startswith(b"220")
        pid = serving_smtpd(postfix, conn)
        daemon.wait_session(pid, "attached")
        send_signal(pid, signal.SIGSEGV)
        postfix.wait_log(f"pid {pid} killed by signal 11")
    session = daemon.wait_session(pid, "crashed")
    assert session["crash"], f"no crash report for smtpd[{pid}]: {session}\n{daemon.stderr()[-3000:]}"
    return pid, str(session["crash"])


def start_traced_instance(postfix: Any, daemon_factory: Any) -> Any:
    """A tracerd watching smtpd, and a private Postfix whose smtpd runs with -D through the hook."""
    daemon = daemon_factory('[[rule]]\nprocess = "smtpd"\ntracer = "watch"\n')
    postfix.create(smtpd_flags=" -D", debugger_command=daemon.hook_command() + " $process_name $process_id")
    postfix.start()
    return daemon


def write_log(path: Path, lines: list[str], opener: Any = open) -> Path:
    with opener(path, "wt") as handle:
        handle.write("".join(line + "\n" for line in lines))
    return path


def syslog_stamp(when: dt.datetime) -> str:
    return when.astimezone().strftime("%b %e %H:%M:%S")


# -- real Postfix ------------------------------------------------------------------


def test_real_configuration_errors_earliest_first(postfix: Any, capsys: Any, tmp_path: Path) -> None:
    """A missing map (error, then warnings) and later a bad boolean (fatal, master's
    throttling): triage finds the instance's maillog_file through -c, lists the
    problem lines earliest first, starts with the map error, and explains each
    severity present as DEBUG_README does."""
    postfix.create()
    with open(postfix.config_dir / "main.cf", "a") as main_cf:
        main_cf.write(f"smtpd_client_restrictions = check_client_access hash:{postfix.root}/missing-map\n")
    postfix.start()
    replies = smtp_dialog(postfix.port, "EHLO client.example.com", "MAIL FROM:<a@example.com>",
                          "RCPT TO:<b@example.com>", "QUIT")  # fmt: skip
    assert replies[3].startswith("451")
    postfix.wait_log("lookup error for")
    postfix.stop()
    postfix.postconf("-e", "smtpd_helo_required = maybe")
    postfix.start()
    postfix.wait_log("bad boolean configuration: smtpd_helo_required = maybe")
    postfix.wait_log("bad command startup -- throttling")

    report = triage_json(capsys, tmp_path / "no.sock", "-c", str(postfix.config_dir))
    assert report["chosen_by"] == "postconf maillog_file"
    assert [f["path"] for f in report["files"]] == [str(postfix.maillog)]
    lines = report["lines"]
    assert lines[0]["severity"] == "error"
    assert "missing-map.db: No such file or directory" in lines[0]["text"]
    times = [dt.datetime.fromisoformat(line["time"]) for line in lines]
    assert times == sorted(times)
    severities = [line["severity"] for line in lines]
    assert severities.index("fatal") > severities.index("warning") > severities.index("error")
    fatal = next(line for line in lines if line["severity"] == "fatal")
    assert fatal["daemon"] == "postfix/smtpd"
    assert fatal["text"].endswith("fatal: bad boolean configuration: smtpd_helo_required = maybe")
    assert set(report["severities"]) == {"error", "warning", "fatal"}
    assert "more than 13" in report["severities"]["error"]["meaning"]
    assert "configuration file settings" in report["severities"]["fatal"]["meaning"]
    assert "non-fatal" in report["severities"]["warning"]["meaning"]
    shapes = {(g["daemon"], g["message"]) for g in report["groups"]}
    assert ("postfix/master", "process /usr/lib/postfix/sbin/smtpd pid N exit status N") in shapes
    assert ("postfix/master", "/usr/lib/postfix/sbin/smtpd: bad command startup -- throttling") in shapes

    code, text, _ = tracerctl(capsys, "--socket", str(tmp_path / "no.sock"), "triage", "-c", str(postfix.config_dir))
    assert code == 0
    first_group = next(line for line in text.splitlines() if line.startswith("#1 "))
    assert first_group.startswith("#1  error  postfix/smtpd  ")
    assert "Postfix cannot proceed until this is fixed" in text
    assert "terminates when more than 13 of these happen" in text


@pytest.mark.skipif(not have("gdb"), reason="the watch tracer takes its backtrace with gdb")
def test_crashed_smtpd_tied_to_its_crash_report(postfix: Any, daemon_factory: Any, capsys: Any) -> None:
    """master's "pid N killed by signal 11" is tied to tracerd's crash report for
    that pid: through the daemon while it runs, from index.json once it is gone."""
    daemon = start_traced_instance(postfix, daemon_factory)
    pid, crash_id = crash_an_smtpd(postfix, daemon)

    report = triage_json(capsys, daemon.socket, "-c", str(postfix.config_dir))
    assert report["crash_index"] == {"source": "daemon", "error": None}
    (killed,) = [line for line in report["lines"] if f"pid {pid} killed by signal 11" in line["text"]]
    assert killed["crash"]["id"] == crash_id
    assert killed["crash"]["pid"] == pid
    assert killed["crash"]["signal"] == "SIGSEGV"
    assert killed["crash"]["top"]
    group = report["groups"][killed["group"]]
    assert group["message"] == "process /usr/lib/postfix/sbin/smtpd pid N killed by signal N"
    assert [c["id"] for c in group["crashes"]] == [crash_id]

    code, text, _ = tracerctl(capsys, "--socket", str(daemon.socket), "triage", "-c", str(postfix.config_dir))
    assert code == 0
    assert f"-> crash {crash_id}: smtpd[{pid}] SIGSEGV in {' < '.join(killed['crash']['top'])}" in text
    assert f"(tracerctl crash {crash_id})" in text

    daemon.stop()
    offline = triage_json(capsys, daemon.socket, "-c", str(postfix.config_dir), "--state-dir", str(daemon.state_dir))
    assert offline["crash_index"]["source"] == "index"
    assert "tracerd is not running" in offline["crash_index"]["error"]
    (killed,) = [line for line in offline["lines"] if f"pid {pid} killed by signal 11" in line["text"]]
    assert killed["crash"]["id"] == crash_id


@pytest.mark.skipif(not have("gdb"), reason="the watch tracer takes its backtrace with gdb")
def test_a_repeat_crash_is_tied_to_its_signatures_report(postfix: Any, daemon_factory: Any, capsys: Any) -> None:
    """Two smtpds crashing the same way within the flood window: the first has a
    report of its own; the second, a repeat kept only as a count, is tied to
    the first's report and marked as a repeat."""
    daemon = start_traced_instance(postfix, daemon_factory)
    first, crash_id = crash_an_smtpd(postfix, daemon)
    second, _ = crash_an_smtpd(postfix, daemon)
    (entry,) = json.loads(daemon.ctl("--json", "crashes").stdout)["crashes"]
    assert (entry["id"], entry["count"]) == (crash_id, 2)
    assert [repeat["pid"] for repeat in entry["repeats"]] == [second]

    report = triage_json(capsys, daemon.socket, "-c", str(postfix.config_dir))
    ties = {line["crash"]["pid"]: line["crash"] for line in report["lines"] if line["crash"]}
    assert set(ties) == {first, second}
    assert (ties[first]["id"], ties[first]["repeat"]) == (crash_id, False)
    assert (ties[second]["id"], ties[second]["repeat"]) == (crash_id, True)
    (group,) = [g for g in report["groups"] if g["crashes"]]
    assert group["count"] == 2
    code, text, _ = tracerctl(capsys, "--socket", str(daemon.socket), "triage", "-c", str(postfix.config_dir))
    assert code == 0
    assert f"smtpd[{second}] SIGSEGV in" in text
    assert "(a repeat: same signature as this report, which is another pid's)" in text


def test_killed_without_report_says_why(capsys: Any, tmp_path: Path) -> None:
    """A crash signal with no report asks whether the service was traced; SIGTERM
    is not a crash; with no daemon and no index, the reason is given."""
    now = syslog_stamp(dt.datetime.now())
    log = write_log(tmp_path / "mail.log", [
        f"{now} mx postfix/master[10]: warning: process /usr/lib/postfix/sbin/smtpd pid 4567 killed by signal 11",
        f"{now} mx postfix/master[10]: warning: process /usr/lib/postfix/sbin/smtpd pid 4568 killed by signal 15",
    ])  # fmt: skip
    state = tmp_path / "state" / "crashes"
    state.mkdir(parents=True)
    (state / "index.json").write_text('{"format": 1, "crashes": []}')
    report = triage_json(capsys, tmp_path / "no.sock", "--state-dir", str(tmp_path / "state"), str(log))
    segv, term = report["lines"]
    assert segv["crash"] is None
    assert "no tracerd crash report for pid 4567" in segv["note"]
    assert term["note"] == "signal 15 is not a crash signal: no crash report is expected"
    nothing = triage_json(capsys, tmp_path / "no.sock", "--state-dir", str(tmp_path / "nowhere"), str(log))
    assert nothing["crash_index"]["source"] is None
    assert "no crash store in" in nothing["lines"][0]["note"]


# -- files ---------------------------------------------------------------------------


def test_rotated_and_compressed_files_read_oldest_first(capsys: Any, tmp_path: Path) -> None:
    """--rotated reads mail.log.3.bz2, mail.log.2.gz, mail.log.1 and mail.log in
    that order (compression known by magic bytes, not by name), and the
    lines come out earliest first whatever order the files were named in."""
    base = dt.datetime.now().astimezone() - dt.timedelta(hours=4)
    stamp = [syslog_stamp(base + dt.timedelta(hours=n)) for n in range(4)]
    write_log(tmp_path / "mail.log.3.bz2", [f"{stamp[0]} mx postfix/smtpd[1]: warning: oldest"], bz2.open)
    write_log(tmp_path / "mail.log.2.gz", [f"{stamp[1]} mx postfix/smtpd[2]: fatal: older"], gzip.open)
    write_log(tmp_path / "mail.log.1", [f"{stamp[2]} mx postfix/smtpd[3]: error: newer", f"{stamp[2]} mx x: fine"])
    current = write_log(tmp_path / "mail.log", [f"{stamp[3]} mx postfix/smtpd[4]: panic: newest"])
    write_log(tmp_path / "mail.log.other", [f"{stamp[3]} mx postfix/smtpd[4]: panic: not a rotation"])

    alone = triage_json(capsys, tmp_path / "no.sock", str(current))
    assert [line["severity"] for line in alone["lines"]] == ["panic"]

    rotated = triage_json(capsys, tmp_path / "no.sock", "--rotated", str(current))
    names = [Path(f["path"]).name for f in rotated["files"]]
    assert names == ["mail.log.3.bz2", "mail.log.2.gz", "mail.log.1", "mail.log"]
    assert [line["text"].rsplit(": ", 1)[1] for line in rotated["lines"]] == ["oldest", "older", "newer", "newest"]
    assert rotated["lines_read"] == 5

    reversed_order = triage_json(capsys, tmp_path / "no.sock", str(current), str(tmp_path / "mail.log.1"),
                                 str(tmp_path / "mail.log.2.gz"))  # fmt: skip
    assert [line["severity"] for line in reversed_order["lines"]] == ["fatal", "error", "panic"]


def test_since_relative_and_absolute(capsys: Any, tmp_path: Path) -> None:
    """--since 2h, 30m and an absolute local time keep only the lines from then on,
    in syslog and RFC 3339 formats alike; a rotated file last written before
    --since is skipped unread."""
    now = dt.datetime.now().astimezone()
    three_days_ago = now - dt.timedelta(days=3)
    old = write_log(tmp_path / "mail.log.1", [f"{syslog_stamp(three_days_ago)} mx postfix/qmgr[1]: warning: x"])
    os.utime(old, (three_days_ago.timestamp(), three_days_ago.timestamp()))
    log = write_log(tmp_path / "mail.log", [
        f"{syslog_stamp(now - dt.timedelta(hours=3))} mx postfix/smtpd[1]: warning: three hours ago",
        f"{(now - dt.timedelta(hours=1)).isoformat()} mx postfix/smtpd[2]: warning: an hour ago",
        f"{syslog_stamp(now - dt.timedelta(minutes=10))} mx postfix/smtpd[3]: warning: ten minutes ago",
    ])  # fmt: skip

    def kept(*since: str) -> list[str]:
        report = triage_json(capsys, tmp_path / "no.sock", "--rotated", *since, str(log))
        return [line["text"].rsplit(": ", 1)[1] for line in report["lines"]]

    assert kept() == ["x", "three hours ago", "an hour ago", "ten minutes ago"]
    assert kept("--since", "2h") == ["an hour ago", "ten minutes ago"]
    assert kept("--since", "30m") == ["ten minutes ago"]
    absolute = (now - dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M")
    assert kept("--since", absolute) == ["an hour ago", "ten minutes ago"]
    report = triage_json(capsys, tmp_path / "no.sock", "--rotated", "--since", "1d", str(log))
    assert report["files"][0]["skipped"] == "last written before --since"
    assert report["since"] is not None


def test_year_inferred_from_the_file_time(capsys: Any, tmp_path: Path) -> None:
    """Syslog has no year: a file last written on 2 January 2025 puts "Dec 31" in
    2024 and "Jan  1" in 2025."""
    log = write_log(tmp_path / "mail.log", [
        "Dec 31 23:59:58 mx postfix/smtpd[1]: warning: last year",
        "Jan  1 00:00:02 mx postfix/smtpd[2]: warning: this year",
    ])  # fmt: skip
    written = dt.datetime(2025, 1, 2, 12, 0).timestamp()
    os.utime(log, (written, written))
    report = triage_json(capsys, tmp_path / "no.sock", str(log))
    assert [line["time"][:19] for line in report["lines"]] == ["2024-12-31T23:59:58", "2025-01-01T00:00:02"]


def test_rfc3339_high_precision_lines(capsys: Any, tmp_path: Path) -> None:
    """rsyslog's RFC 3339 timestamps (nanoseconds, a zone offset) are parsed: the
    time, host, daemon and pid come out right."""
    log = write_log(tmp_path / "mail.log", [
        "2026-11-24T16:53:38.123456789+01:00 mx1 postfix/submission/smtpd[15970]: warning: TLS handshake failed",
    ])  # fmt: skip
    (line,) = triage_json(capsys, tmp_path / "no.sock", str(log))["lines"]
    assert dt.datetime.fromisoformat(line["time"]) == dt.datetime(2026, 11, 24, 15, 53, 38, 123456, dt.UTC)
    assert (line["daemon"], line["pid"]) == ("postfix/submission/smtpd", 15970)


def test_untrusted_lines_capped_and_cleaned(capsys: Any, tmp_path: Path) -> None:
    """A line longer than the cap is cut (the next line still read whole) and
    control characters such as a terminal escape never reach the output."""
    now = syslog_stamp(dt.datetime.now())
    log = write_log(tmp_path / "mail.log", [
        f"{now} mx postfix/smtpd[1]: warning: \x1b[2J\x1b[31mred " + "x" * (3 * MAX_LINE),
        f"{now} mx postfix/smtpd[2]: error: after the long line",
    ])  # fmt: skip
    code, out, _ = tracerctl(capsys, "--socket", str(tmp_path / "no.sock"), "triage", "--all", str(log))
    assert code == 0
    assert "\x1b" not in out
    assert "?[2J?[31mred" in out
    report = triage_json(capsys, tmp_path / "no.sock", str(log))
    long, after = report["lines"]
    assert len(long["text"].encode()) <= MAX_LINE
    assert after["text"].endswith("error: after the long line")


# -- grouping and output -------------------------------------------------------------


def test_lines_differing_in_queue_id_pid_and_numbers_fold_into_one_group(capsys: Any, tmp_path: Path) -> None:
    """Two lines that differ only in queue id, pid, numbers, host and IP are one
    group with count 2, first and last time; another daemon's same message is
    another group; groups come in order of first occurrence."""
    now = dt.datetime.now().astimezone()
    first, second, third = (syslog_stamp(now - dt.timedelta(minutes=m)) for m in (30, 20, 10))
    log = write_log(tmp_path / "mail.log", [
        f"{first} mx postfix/smtp[101]: warning: 4F3A2B1C9D: host mx1.example.com[192.0.2.1] said: 452 in 30 s",
        f"{second} mx postfix/lmtp[202]: warning: 4F3A2B1C9D: host mx1.example.com[192.0.2.1] said: 452 in 30 s",
        f"{third} mx postfix/smtp[303]: warning: 5B4C3D2E1F: host mx2.example.net[198.51.100.2] said: 452 in 45 s",
    ])  # fmt: skip
    report = triage_json(capsys, tmp_path / "no.sock", str(log))
    smtp, lmtp = report["groups"]
    assert (smtp["daemon"], smtp["count"], lmtp["daemon"], lmtp["count"]) == ("postfix/smtp", 2, "postfix/lmtp", 1)
    assert smtp["message"] == "QUEUEID: host HOST[IP] said: N in N s"
    assert smtp["first"] < lmtp["first"] < smtp["last"]
    assert [line["group"] for line in report["lines"]] == [0, 1, 0]


def test_message_shape_folds_long_queue_ids_addresses_and_hex() -> None:
    """Long queue ids, <addresses>, bare addresses, IPv6 and hex fold; paths and
    Postfix's own words stay."""
    assert message_shape("3yDgwh1W3cz2vW7: to=<a@example.com>, relay=none") == "QUEUEID: to=<*>, relay=none"
    assert message_shape("4Wd6Ym4Jw0z9tXn: to=<b@example.org>, relay=none") == "QUEUEID: to=<*>, relay=none"
    assert message_shape("sender x.y@example.com rejected at 0x7ffd1234") == "sender *@* rejected at 0xN"
    assert message_shape("connect to [2001:db8::25]:25: refused") == "connect to [IP]:N: refused"
    assert message_shape("open database /etc/postfix/map2.db: No such file") == (
        "open database /etc/postfix/map2.db: No such file"
    )


def test_json_shape(capsys: Any, tmp_path: Path) -> None:
    """--json is one document with files, severities (count, meaning), groups
    (message, count, first, last, example, crashes) and lines, the contract
    of README's "Triage and bug reports"."""
    log = write_log(tmp_path / "mail.log", [f"{syslog_stamp(dt.datetime.now())} mx postfix/smtpd[7]: panic: myfree"])
    report = triage_json(capsys, tmp_path / "no.sock", str(log))
    assert set(report) == {"files", "chosen_by", "since", "lines_read", "problem_lines", "severities", "groups",
                           "lines", "lines_omitted", "crash_index"}  # fmt: skip
    assert report["files"] == [{"path": str(log), "lines": 1, "problems": 1, "error": None, "skipped": None}]
    assert report["severities"]["panic"]["count"] == 1
    assert "only a programmer can fix" in report["severities"]["panic"]["meaning"]
    (group,) = report["groups"]
    assert set(group) == {"daemon", "severity", "message", "count", "first", "last", "example", "source", "crashes"}
    assert group["source"] == f"{log}:1"
    (line,) = report["lines"]
    assert set(line) == {"time", "file", "line", "daemon", "pid", "severity", "text", "group", "crash", "note"}
    assert (line["pid"], line["group"], report["lines_omitted"]) == (7, 0, 0)
    # --json after the command works as well as before it
    code, out, _ = tracerctl(capsys, "--socket", str(tmp_path / "no.sock"), "triage", str(log), "--json")
    assert code == 0
    assert json.loads(out)["problem_lines"] == 1


def test_exit_codes(capsys: Any, tmp_path: Path) -> None:
    """0: read (problems or not); 1: a log missing, not a regular file or damaged,
    what could be read still reported; 2: a --since that is not a time."""
    no_sock = str(tmp_path / "no.sock")
    clean = write_log(tmp_path / "clean.log", [f"{syslog_stamp(dt.datetime.now())} mx postfix/smtpd[1]: connect"])
    code, out, _ = tracerctl(capsys, "--socket", no_sock, "triage", str(clean))
    assert code == 0
    assert "no warning, error, fatal or panic lines" in out

    bad = write_log(tmp_path / "bad.log", [f"{syslog_stamp(dt.datetime.now())} mx postfix/smtpd[1]: fatal: x"])
    code, out, err = tracerctl(capsys, "--socket", no_sock, "triage", str(bad), str(tmp_path / "missing.log"))
    assert code == 1
    assert f"tracerctl: {tmp_path / 'missing.log'}: no such file" in err
    assert "fatal: x" in out

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code, _, err = tracerctl(capsys, "--socket", no_sock, "triage", str(fifo))
    assert (code, err.strip()) == (1, f"tracerctl: {fifo}: not a regular file")

    damaged = tmp_path / "damaged.gz"
    damaged.write_bytes(gzip.compress(b"Nov 24 10:00:00 mx postfix/smtpd[1]: fatal: x\n" * 1000)[:-200])
    code, _, err = tracerctl(capsys, "--socket", no_sock, "triage", str(damaged))
    assert code == 1
    assert "damaged after line" in err

    code, _, err = tracerctl(capsys, "--socket", no_sock, "triage", "--since", "yesterday-ish", str(clean))
    assert code == 2
    assert "not a time" in err

    # the installed console script, as an administrator runs it
    run = subprocess.run([*script("tracerctl"), "--socket", no_sock, "triage", str(bad), str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert run.returncode == 1
    assert "fatal: x" in run.stdout
    assert run.stderr.strip() == f"tracerctl: {tmp_path / 'nope'}: no such file"


def test_seeded_log_sample(capsys: Any, tmp_path: Path) -> None:
    """The sample log in tests/data: the SASL, DNS and delivery warnings, each
    a group of its own, the non-problem lines left out."""
    report = triage_json(capsys, tmp_path / "no.sock", str(DATA / "seeded-mail.log"))
    assert report["lines_read"] == 10
    assert report["problem_lines"] == 5
    messages = [g["message"] for g in report["groups"]]
    assert messages[0] == "hostname HOST does not resolve to address IP: Name or service not known"
    assert "unknown[IP]: SASL LOGIN authentication failed: authentication failure, sasl_username=*@*" in messages


def test_hex_codes_are_not_queue_ids(capsys: Any, tmp_path: Path) -> None:
    """OpenSSL's error code (0A000086) stays in the group's message, so two TLS
    problems with different codes are two groups; a classic queue id at the
    start of the message and in a queue file's path is still folded, and so are
    long queue ids; digits inside a word or a hex code are not numbers."""
    assert message_shape("TLS library problem: error:0A000086:SSL routines::certificate verify failed:"
                         "../ssl/statem/statem_clnt.c:1889:") == (
        "TLS library problem: error:0A000086:SSL routines::certificate verify failed:../ssl/statem/statem_clnt.c:N:"
    )  # fmt: skip
    assert message_shape("3F1A2B4C5D: to=<a@example.com>, delay=30") == "QUEUEID: to=<*>, delay=N"
    assert message_shape('saving corrupt file "deferred/4/4F3A2B1C9D" from queue') == (
        'saving corrupt file "deferred/QUEUEID" from queue'
    )
    assert message_shape("4Wd6Ym4Jw0z9tXn: lost connection after 30s") == "QUEUEID: lost connection after Ns"
    now = syslog_stamp(dt.datetime.now())
    tls = "warning: TLS library problem: error"
    log = write_log(tmp_path / "mail.log", [
        f"{now} mx postfix/smtp[1]: {tls}:0A000086:SSL routines::certificate verify failed",
        f"{now} mx postfix/smtp[2]: {tls}:0A000086:SSL routines::certificate verify failed",
        f"{now} mx postfix/smtp[3]: {tls}:0A00010B:SSL routines::wrong version number",
        f"{now} mx postfix/smtp[4]: warning: 3F1A2B4C5D: TLS is required, but was not offered by host mx.example.com",
        f"{now} mx postfix/smtp[5]: warning: 4B2C1D0E9F: TLS is required, but was not offered by host mx.example.org",
    ])  # fmt: skip
    report = triage_json(capsys, tmp_path / "no.sock", str(log))
    assert [(g["message"], g["count"]) for g in report["groups"]] == [
        ("TLS library problem: error:0A000086:SSL routines::certificate verify failed", 2),
        ("TLS library problem: error:0A00010B:SSL routines::wrong version number", 1),
        ("QUEUEID: TLS is required, but was not offered by host HOST", 2),
    ]
