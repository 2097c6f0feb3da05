"""tracerctl bugreport: every section from a real Postfix instance and a real
tracerd with a crashed smtpd; text and tar.gz output; --anonymize on a seeded
configuration and log; and the anonymizer's rules one by one."""

from __future__ import annotations

import json
import shutil
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import have
from tests.test_triage import DATA, crash_an_smtpd, smtp_dialog, start_traced_instance, tracerctl
from tracerd.ctl.anonymize import Anonymizer, find_spans, mask
from tracerd.ctl.bugreport import is_tarball

SECTIONS = ["summary", "environment", "postconf-n", "postconf-Mf", "triage", "crashes", "qshape", "tracerd-status"]


def bugreport(capsys: Any, socket_path: Path, *argv: str) -> tuple[int, str, str]:
    return tracerctl(capsys, "--socket", str(socket_path), "bugreport", *argv)


@pytest.mark.skipif(not have("gdb"), reason="the watch tracer takes its backtrace with gdb")
def test_every_section_from_a_real_instance_with_a_crash(
    postfix: Any, daemon_factory: Any, capsys: Any, tmp_path: Path
) -> None:
    """The text report holds the summary to fill in, postconf -n and -Mf of the
    instance, triage's lines with the killed smtpd tied to its crash, the crash
    report's backtrace, qshape, and tracerd's status; the file is 0600."""
    daemon = start_traced_instance(postfix, daemon_factory)
    pid, crash_id = crash_an_smtpd(postfix, daemon)
    out_file = tmp_path / "report.txt"
    code, out, err = bugreport(capsys, daemon.socket, "-c", str(postfix.config_dir), "-o", str(out_file))
    assert code == 0, err
    assert out.strip() == f"bug report written to {out_file}"
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    text = out_file.read_text()
    titles = [line for line in text.splitlines() if line.startswith("===== ")]
    assert titles == [
        "===== Summary (fill in) =====", "===== Environment =====", "===== postconf -n =====",
        "===== postconf -Mf =====", "===== Mail log triage (tracerctl triage) =====",
        "===== tracerd crash reports =====", "===== qshape =====", "===== tracerd status =====",
    ]  # fmt: skip
    assert "What did you expect to happen?" in text
    assert "myhostname = pftest.localdomain" in text
    assert "smtpd -D" in text  # postconf -Mf: the traced service
    assert f"pid {pid} killed by signal 11" in text
    assert f"-> crash {crash_id}: smtpd[{pid}] SIGSEGV" in text
    assert f"crash {crash_id}  signature" in text  # the full report, readable
    assert "Thread 1 (LWP" in text
    assert "[crashed]" in text
    if shutil.which("qshape"):
        assert "TOTAL" in text
    status = text.split("===== tracerd status =====")[1]
    assert f"pid {daemon.proc.pid}" in status
    row = next(line for line in status.splitlines() if line.startswith(f"{pid} "))
    assert row.split()[1:4] == ["smtpd", "watch", "crashed"]


def test_tarball_has_one_file_per_section(postfix: Any, capsys: Any, tmp_path: Path) -> None:
    """-o FILE.tar.gz (and .tgz) writes an archive of NN-SECTION.txt files, 0600,
    holding the same sections as the text report."""
    postfix.create()
    postfix.start()
    for name in ("report.tar.gz", "report.tgz"):
        target = tmp_path / name
        code, _, err = bugreport(capsys, tmp_path / "no.sock", "-c", str(postfix.config_dir), "-o", str(target))
        assert code == 0, err
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        with tarfile.open(target, "r:gz") as tar:
            members = tar.getmembers()
            names = [Path(m.name).name for m in members]
            assert names == [f"{n:02d}-{section}.txt" for n, section in enumerate(SECTIONS, start=1)]
            assert len({Path(m.name).parent for m in members}) == 1
            assert all(m.isfile() and m.mode == 0o600 and m.uname == "" for m in members)
            postconf = tar.extractfile(members[2])
            assert postconf is not None
            assert "myhostname = pftest.localdomain" in postconf.read().decode()
    assert is_tarball("x.tgz")
    assert is_tarball("x.tar.gz")
    assert not is_tarball("x.txt")


def test_anonymized_report_of_a_seeded_configuration_and_log(postfix: Any, capsys: Any, tmp_path: Path) -> None:
    """--anonymize: no address, host name or network of the seeded main.cf, the
    instance's real log or the sample log survives anywhere in the report; their
    A/D forms are there; parameter names, daemon names and paths stay."""
    postfix.create()
    postfix.postconf(
        "-e",
        "myhostname = mx1.customer-site.example",
        "mydomain = customer-site.example",
        "relayhost = [smtp.relay-provider.net]:587",
        "mynetworks = 127.0.0.0/8 192.168.1.0/24 10.20.0.0/16",
        f"smtpd_sender_restrictions = check_sender_access hash:{postfix.root}/missing-senders",
    )
    postfix.start()
    smtp_dialog(
        postfix.port,
        "EHLO workstation7.customer-site.example",
        "MAIL FROM:<alice.smith@customer-site.example>",
        "RCPT TO:<bob99@partner-corp.net>",
        "QUIT",
    )
    postfix.wait_log('lookup error for "alice.smith@customer-site.example"')
    code, out, err = bugreport(capsys, tmp_path / "no.sock", "-c", str(postfix.config_dir), "--anonymize",
                               "--log", str(postfix.maillog), "--log", str(DATA / "seeded-mail.log"))  # fmt: skip
    assert code == 0, err
    for original in (
        "customer-site", "relay-provider", "partner-corp", "alice.smith", "carol.jones", "dave@", "workstation7",
        "192.168.1.0", "10.20.0.0", "127.0.0.1", "127.0.0.0", "203.0.113", "198.51.100", "2001:db8",
        " mx1 ", "mx1.", "intranet",
    ):  # fmt: skip
        assert original not in out, original
    for masked in (
        "myhostname = AAD.AAAAAAAA-AAAA.AAAAAAA",
        "mydomain = AAAAAAAA-AAAA.AAAAAAA",
        "relayhost = [AAAA.AAAAA-AAAAAAAA.AAA]:587",
        "mynetworks = DDD.D.D.D/D DDD.DDD.D.D/DD DD.DD.D.D/DD",
        'lookup error for "AAAAA.AAAAA@AAAAAAAA-AAAA.AAAAAAA"',
        "AAD postfix/smtpd[4101]: warning: hostname AAAA-AAD-ADD.AAAAAAA-AAAA.AAA does not resolve"
        " to address DDD.D.DDD.DD",
        "via AAAA.AAAAA-AAAAAAAA.AAA[DDDD:AAD:D:D::DD]:587",
        "unknown[DDD.DD.DDD.D]: SASL LOGIN authentication failed",
        "sasl_username=AAAA@AAAAAAAA-AAAA.AAAAAAA",
    ):  # fmt: skip
        assert masked in out, masked
    # what is not an address stays readable
    for kept in ("smtpd_sender_restrictions = check_sender_access hash:", str(postfix.root), "postfix/smtpd[",
                 "inet_interfaces", "default_transport = discard", "What did you do?", "postfix-users"):  # fmt: skip
        assert kept in out, kept


def test_report_without_a_daemon_says_why_and_json(capsys: Any, tmp_path: Path) -> None:
    """No tracerd, no crash index, no log: the report is still made, each gap
    saying why; --json gives every section by name."""
    code, out, err = tracerctl(capsys, "--socket", str(tmp_path / "no.sock"), "--json", "bugreport",
                               "--state-dir", str(tmp_path / "state"), "--log", str(tmp_path / "no.log"))  # fmt: skip
    assert code == 0, err
    document = json.loads(out)
    assert (document["output"], document["anonymized"]) == (None, False)
    sections = {s["name"]: s["text"] for s in document["sections"]}
    assert list(sections) == SECTIONS
    assert sections["tracerd-status"].startswith("(tracerd is not running (no socket")
    assert sections["crashes"].startswith("(crash reports unavailable: tracerd is not running")
    assert "no crash store in" in sections["crashes"]
    assert "no such file" in sections["triage"]


def test_an_unconfigured_postfix_is_said_without_running_postconf(capsys: Any, tmp_path: Path) -> None:
    """-c a directory with no main.cf: the postconf and qshape sections say so in one line each
    (postconf is not run: it fails there only after a 1 s sleep)."""
    empty = tmp_path / "postfix"
    empty.mkdir()
    code, out, err = bugreport(capsys, tmp_path / "no.sock", "--json", "-c", str(empty), "--log", str(tmp_path / "l"))
    assert code == 0, err
    sections = {s["name"]: s["text"] for s in json.loads(out)["sections"]}
    assert sections["postconf-n"] == f"(postconf -c {empty} -n: not run: no main.cf in {empty})\n"
    assert sections["postconf-Mf"] == f"(postconf -c {empty} -Mf: not run: no main.cf in {empty})\n"
    assert f"postfix          (postconf -c {empty} -h mail_version: not run: no main.cf in {empty})" in (
        sections["environment"]
    )
    if shutil.which("qshape"):
        assert f"(qshape -c {empty}: not run: no main.cf in {empty})" in sections["qshape"]


def test_unwritable_output_fails_with_exit_1(capsys: Any, tmp_path: Path) -> None:
    """-o into a directory that does not exist: exit 1, one line saying so, nothing left behind."""
    target = tmp_path / "missing" / "report.txt"
    code, _, err = bugreport(capsys, tmp_path / "no.sock", "--log", str(tmp_path / "no.log"), "-o", str(target))
    assert code == 1
    assert err.startswith(f"tracerctl: cannot write {target}: ")
    assert list(tmp_path.iterdir()) == []


def test_output_replaces_a_symlink_rather_than_following_it(capsys: Any, tmp_path: Path) -> None:
    """A symlink planted at the output name is replaced; its target is untouched."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "report.txt").symlink_to(victim)
    code, _, _ = bugreport(capsys, tmp_path / "no.sock", "--log", str(tmp_path / "no.log"), "-o",
                           str(tmp_path / "report.txt"))  # fmt: skip
    assert code == 0
    assert victim.read_text() == "precious"
    assert not (tmp_path / "report.txt").is_symlink()
    assert "===== Summary (fill in) =====" in (tmp_path / "report.txt").read_text()


# -- the anonymizer's rules ------------------------------------------------------------


def anonymize(*texts: str) -> list[str]:
    anonymizer = Anonymizer()
    for text in texts:
        anonymizer.learn(text)
    return [anonymizer.apply(text) for text in texts]


def test_mask_letters_digits_punctuation() -> None:
    """Letters become A, digits D, punctuation stays: syntax errors stay visible."""
    assert mask("John.Doe+x@Example-1.com") == "AAAA.AAA+A@AAAAAAA-D.AAA"
    assert mask("user@@example..com") == "AAAA@@AAAAAAA..AAA"


def test_same_input_same_output_across_sections() -> None:
    """A name learned in one section (myhostname = pftest, single label) is masked
    the same way in another where no rule would see it; repeated runs agree."""
    config = "myhostname = pftest\nmydomain = corp.example"
    log = "warning: pftest refused to talk to Corp.Example about pftest2"
    first = anonymize(config, log)
    assert first == anonymize(config, log)
    assert first[0] == "myhostname = AAAAAA\nmydomain = AAAA.AAAAAAA"
    assert first[1] == "warning: AAAAAA refused to talk to AAAA.AAAAAAA about pftest2"


def test_what_is_recognised_and_what_is_kept() -> None:
    """Email, <addresses>, host[ip] (but unknown), [host]:port, IPv4/IPv6 networks,
    dotted host names; not paths, file names, parameter names or transports."""
    cases = {
        "from=<root> to=<x@y.example>": "from=<AAAA> to=<A@A.AAAAAAA>",
        "connect from unknown[10.0.0.1]": "connect from unknown[DD.D.D.D]",
        "relay=mx.example.net[ipv6:2001:db8::1]:25": "relay=AA.AAAAAAA.AAA[ipv6:DDDD:AAD::D]:25",
        "relay_transport = smtp:[relay.example.com]:25": "relay_transport = smtp:[AAAAA.AAAAAAA.AAA]:25",
        "default_transport = discard": "default_transport = discard",
        "mynetworks = [::1]/128 192.168.1.0/24": "mynetworks = [::D]/DDD DDD.DDD.D.D/DD",
        "open database /etc/postfix/virtual.db: No such file": "open database /etc/postfix/virtual.db: No such file",
        "see main.cf and master.cf, version 3.7.11": "see main.cf and master.cf, version 3.7.11",
        "alias_maps = hash:/etc/aliases": "alias_maps = hash:/etc/aliases",
        "smtpd -o myhostname=mx2.example.com -o smtpd_tls_security_level=may":
            "smtpd -o myhostname=AAD.AAAAAAA.AAA -o smtpd_tls_security_level=may",
        "Nov 24 16:56:44 gw7 postfix/smtpd[1]: connect": "Nov 24 16:56:44 AAD postfix/smtpd[1]: connect",
    }  # fmt: skip
    for original, expected in cases.items():
        assert anonymize(original) == [expected], original
    kinds = [span.kind for span in find_spans("a@b.example <c@d> mx.example.org[192.0.2.1] 10.0.0.0/8")]
    assert kinds == ["email", "address", "host", "ip", "ip"]


def test_addresses_and_ips_next_to_escapes_and_in_key_value() -> None:
    """An address or IP right after an escape (strace's \\0, \\t, \\r\\n, \\\\, \\", \\x41,
    \\012) or after =, <, : is masked from its first own character; the escape stays."""
    cases = {
        r"key\0root@localhost": r"key\0AAAA@AAAAAAAAA",
        r"S\ttester@vm": r"S\tAAAAAA@AA",
        r"R\r\nbob@mail.example.org\r\n": r"R\r\nAAA@AAAA.AAAAAAA.AAA\r\n",
        r"x\\carol@example.net": r"x\\AAAAA@AAAAAAA.AAA",
        r"\"dave@example.com\"": r"\"AAAA@AAAAAAA.AAA\"",
        r"\x41erin@example.com": r"\x41AAAA@AAAAAAA.AAA",
        r"\012frank@pftest": r"\012AAAAA@AAAAAA",
        r"log_client_address=127.0.0.1": "log_client_address=DDD.D.D.D",
        r"addr:192.0.2.7:25": "addr:DDD.D.D.D:25",
        r"\t10.1.2.3\n": r"\tDD.D.D.D\n",
        r"\n2001:db8::5\r": r"\nDDDD:AAD::D\r",
        r"peer=[::ffff:198.51.100.7]": "peer=[::AAAA:DDD.DD.DDD.D]",
        "client=<grace@pftest>": "client=<AAAAA@AAAAAA>",
        "sasl_username=henry@corp": "sasl_username=AAAAA@AAAA",
        "in memcpy@GLIBC_2.2.5 and printf@plt": "in memcpy@GLIBC_2.2.5 and printf@plt",
    }
    for original, expected in cases.items():
        assert anonymize(original) == [expected], original


def test_trace_strings_become_their_length() -> None:
    """Every quoted string of a strace or ltrace call line is <N bytes> (N: the bytes it
    stands for, + when -s cut it), whatever precedes the call; other quotes stay."""
    cases = {
        r'17:07:30.468 read(15, "Subject: crash-test SEGV\r\n\r\npartial body", 4096) = 40':
            "17:07:30.468 read(15, <40 bytes>, 4096) = 40",
        r'[pid 12] write(3, "key\0root@localhost"..., 64) = 64': "[pid 12] write(3, <18+ bytes>, 64) = 64",
        r'<... read resumed>"\x41\\\"", 3) = 3': "<... read resumed><3 bytes>, 3) = 3",
        r'Nov 24 16:53:38 mx tracerd[1]: smtpd[7]: sendto(6, "a", 1, {sin_addr=inet_addr("192.0.2.1")}, 16) = 1':
            "Nov 24 16:53:38 AA tracerd[1]: smtpd[7]: sendto(6, <1 bytes>, 1, {sin_addr=inet_addr(<9 bytes>)}, 16) = 1",
        r'execve("/usr/lib/postfix/smtpd", ["smtpd", "-n"], 0x7ffd /* 9 vars */) = 0':
            "execve(<22 bytes>, [<5 bytes>, <2 bytes>], 0x7ffd /* 9 vars */) = 0",
        'write(3, "said "hi", she said "no"\\n", 25) = 25': "write(3, <25 bytes>, 25) = 25",  # ltrace: unescaped
        r'read(4, "cut short at the line\'s end': "read(4, <27+ bytes>",
        r'read(4, "partial" <unfinished ...>': "read(4, <7 bytes> <unfinished ...>",
        'warning: lookup error for "x@pftest"': 'warning: lookup error for "A@AAAAAA"',
    }  # fmt: skip
    for original, expected in cases.items():
        assert anonymize(original) == [expected], original
