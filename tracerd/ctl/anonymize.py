"""Finding email addresses, host names and IP addresses in text, and masking them.

DEBUG_README's masking: each letter of an address or host name becomes A,
each digit D, punctuation stays.  :class:`Anonymizer` masks a whole report
consistently: a name recognised in one place is masked wherever it occurs
as a word.  The rules, in order, and the gaps kept on purpose (a host in a
:data:`FILE_SUFFIXES` TLD): docs/crashes.md, ``--anonymize``.

Security: the input is untrusted (logs); every pattern is linear (no nested
quantifiers over the same characters); lines are handled one at a time.

Diagnostics: none; masking cannot fail.  What no rule recognises stays, so
a report is still to be read before it is sent.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from tracerd.ctl.tracestrings import ESCAPE, scrub_line

HOST_PARAMETERS = frozenset({
    "myhostname", "mydomain", "myorigin", "mydestination", "relayhost", "mynetworks",
    "default_transport", "relay_transport", "fallback_relay", "smtp_fallback_relay",
    "smtp_helo_name", "lmtp_helo_name", "masquerade_domains", "debug_peer_list",
    "smtp_bind_address", "smtp_bind_address6", "lmtp_bind_address", "lmtp_bind_address6",
    "proxy_interfaces", "luser_relay", "address_verify_relayhost", "smtpd_authorized_xclient_hosts",
    "smtpd_authorized_xforward_hosts", "smtpd_client_event_limit_exceptions", "postscreen_access_list",
    "header_checks_relayhost", "empty_address_recipient", "always_bcc", "sender_bcc_maps_relayhost",
})  # fmt: skip
HOST_SUFFIXES = ("_domains", "_networks", "_relayhost", "_helo_name", "_hostname", "_relay", "_hosts")
FILE_SUFFIXES = frozenset({
    "cf", "db", "lmdb", "cdb", "dbm", "pid", "json", "log", "txt", "gz", "bz2", "xz", "tgz", "tar",
    "conf", "cfg", "ini", "toml", "yaml", "yml", "pem", "crt", "csr", "key", "lock", "sock", "tmp",
    "bak", "dat", "orig", "old", "cidr", "pcre", "regexp", "proto", "out", "err", "so", "py", "html",
})  # fmt: skip
SEPARATOR = "\x01"  # stands for an escape's characters while rules look for names
KEYWORDS = frozenset({"unknown", "all", "none", "loopback-only", "subnet", "host", "class", "localhost"})
# Learned names that are everyday words too: masked only where a rule sees them (a host "mail").
RESERVED = frozenset({
    "postfix", "mail", "smtp", "smtpd", "lmtp", "local", "master", "localhost", "localdomain", "unknown",
    "relay", "virtual", "pipe", "error", "discard", "root", "postmaster", "nobody",
})  # fmt: skip

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTISH = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_KEYED = re.compile(r"\b(?:from|to|orig_to|helo|sasl_username|sasl_sender)=<(?P<in>[^<>\s]+)>")
_ANGLE_AT = re.compile(r"<(?P<in>[^<>\s]*@[^<>\s]*)>")
# no "=" in the local part: in a log, "sasl_username=dave@example.com" is key=address
_EMAIL = re.compile(r"(?<![\w.+%!-])(?:[\w.+%!-]{1,64})?@(?P<domain>" + _LABEL + r"(?:\.(?:" + _LABEL + r"))+)")
# root@localhost, tester@vm; not a symbol version (memcpy@GLIBC_2.2.5) nor memcpy@plt
_EMAIL_SHORT = re.compile(rf"(?<![\w.+%!-])[\w.+%!-]{{1,64}}@(?!(?:plt|got)\b){_LABEL}(?![\w.@-])")
_IP4 = r"(?:\d{1,3}\.){3}\d{1,3}(?:/\d{1,2})?"
_IP6 = (
    r"(?:ipv6:)?(?:[0-9A-Fa-f]{0,4}:){2,6}(?:\d{1,3}\.){3}\d{1,3}(?:/\d{1,3})?"  # ::ffff:192.0.2.1
    r"|(?:ipv6:)?[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:/\d{1,3})?"
)
_HOST_IP = re.compile(rf"(?<![\w.-])(?P<host>[\w.-]{{1,253}})\[(?P<ip>{_IP4}|{_IP6})\]")
_BRACKET = re.compile(rf"(?<![\w\]])\[(?P<in>{_IP4}|{_IP6}|{_LABEL}(?:\.{_LABEL})*)\](?P<len>/\d{{1,3}})?")
_SYSLOG_HOST = re.compile(
    r"(?:(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) {1,2}\d{1,2} \d\d:\d\d:\d\d(?:\.\d+)?"
    r"|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\S*) (?P<host>[A-Za-z0-9][\w.-]{0,252}) (?=[^\s\[\]:]+(?:\[\d+\])?: )"
)
_PARAM_LINE = re.compile(r"^\s*(?P<name>[a-z0-9_]{2,64})\s*=[ \t]*(?P<value>.*)$")
_PARAM_OPTION = re.compile(r"-o\s+(?P<name>[a-z0-9_]{2,64})=(?P<value>\S*)")
_VALUE_WORD = re.compile(r"[^\s,]+")
# IPv4 after a colon too (addr:192.0.2.1); IPv6 not inside a longer colon run
_IP_ANY = re.compile(rf"(?:(?<![\w.]){_IP4}|(?<![\w.:])(?:{_IP6}))(?![\w.]|:[0-9A-Fa-f]*:)")
_WORD = re.compile(r"[\w@+%!.-]+")
_DOTTED = re.compile(rf"(?<![\w.@-])(?P<name>{_LABEL}(?:\.{_LABEL})+)\.?(?![\w-])")


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str  # "address" (inside <>), "email", "host", "ip"


def mask(text: str, probed: str | None = None) -> str:
    """Every letter becomes A, every digit D; punctuation stays (and escapes: where ``probed`` has a separator)."""
    probed = text if probed is None else probed
    return "".join(
        c if p == SEPARATOR else "A" if c.isalpha() else "D" if c.isdigit() else c
        for c, p in zip(text, probed, strict=True)
    )


def is_ip(text: str) -> bool:
    """An IPv4 or IPv6 address or network (``ipv6:`` prefix allowed, as Postfix writes it)."""
    text = text.removeprefix("ipv6:").removeprefix("IPv6:")
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return ":" in text or text.count(".") == 3


def is_hostname(name: str) -> bool:
    """A dotted name with a TLD-like last label that is not a file suffix."""
    labels = name.rstrip(".").split(".")
    last = labels[-1]
    return len(labels) >= 2 and last.isalpha() and 2 <= len(last) <= 63 and last.lower() not in FILE_SUFFIXES


def probe(line: str) -> str:
    """``line``, each backslash escape made as many :data:`SEPARATOR` characters (offsets stay)."""
    return ESCAPE.sub(lambda escape: SEPARATOR * len(escape.group()), line) if "\\" in line else line


def find_spans(line: str) -> list[Span]:
    """Every address, host name and IP in one line, left to right; rules in order (docs/crashes.md)."""
    line = probe(line)
    spans: list[Span] = []

    def add(start: int, end: int, kind: str) -> None:
        if start < end and all(end <= s.start or start >= s.end for s in spans):
            spans.append(Span(start, end, kind))

    for found in _KEYED.finditer(line):
        add(found.start("in"), found.end("in"), "address")
    for found in _ANGLE_AT.finditer(line):
        add(found.start("in"), found.end("in"), "address")
    for found in _EMAIL.finditer(line):
        add(found.start(), found.end(), "email")
    for found in _EMAIL_SHORT.finditer(line):
        add(found.start(), found.end(), "email")
    for found in _HOST_IP.finditer(line):
        if found.group("host").lower() != "unknown":
            add(found.start("host"), found.end("host"), "host")
        if is_ip(found.group("ip")):
            add(found.start("ip") + _ipv6_prefix(found.group("ip")), found.end("ip"), "ip")
    for found in _BRACKET.finditer(line):
        if is_ip(found.group("in")):
            # [::1]/128: Postfix writes an IPv6 network's length after the bracket
            end = found.end("len") if found.group("len") else found.end("in")
            add(found.start("in") + _ipv6_prefix(found.group("in")), end, "ip")
        else:
            add(found.start("in"), found.end("in"), "host")
    for found in _SYSLOG_HOST.finditer(line):
        add(found.start("host"), found.end("host"), "ip" if is_ip(found.group("host")) else "host")
    for start, end, kind in _parameter_spans(line):
        add(start, end, kind)
    for found in _IP_ANY.finditer(line):
        text = found.group()
        if not is_ip(text):
            text = text.rstrip(":")  # "address 2001:db8::1: Name or service not known"
        if is_ip(text):
            add(found.start() + _ipv6_prefix(text), found.start() + len(text), "ip")
    for found in _DOTTED.finditer(line):
        before = line[found.start() - 1] if found.start() else ""
        after_path = before == "/" and line[max(0, found.start() - 2) : found.start()] != "//"
        if not after_path and before != "$" and is_hostname(found.group("name")):
            add(found.start("name"), found.end("name"), "host")
    return sorted(spans, key=lambda s: s.start)


def _ipv6_prefix(text: str) -> int:
    """Postfix's ``ipv6:`` is syntax, not address: it stays unmasked."""
    return 5 if text[:5].lower() == "ipv6:" else 0


def _is_host_parameter(name: str) -> bool:
    return name in HOST_PARAMETERS or name.endswith(HOST_SUFFIXES)


def _parameter_spans(line: str) -> list[tuple[int, int, str]]:
    found_spans: list[tuple[int, int, str]] = []
    values: list[tuple[int, str, bool]] = []
    whole = _PARAM_LINE.match(line)
    if whole and _is_host_parameter(whole.group("name")):
        values.append((whole.start("value"), whole.group("value"), whole.group("name").endswith("_transport")))
    for option in _PARAM_OPTION.finditer(line):
        if _is_host_parameter(option.group("name")):
            values.append((option.start("value"), option.group("value"), option.group("name").endswith("_transport")))
    for offset, value, nexthop_only in values:
        for word in _VALUE_WORD.finditer(value):
            span = _value_word_span(word.group(), nexthop_only=nexthop_only)
            if span is not None:
                start, end, kind = span
                found_spans.append((offset + word.start() + start, offset + word.start() + end, kind))
    return found_spans


def _value_word_span(word: str, *, nexthop_only: bool = False) -> tuple[int, int, str] | None:
    """The part of one parameter-value word that names a host, network or address.

    ``nexthop_only``: a ``*_transport`` value, where only what follows ``transport:`` is a host."""
    start = 0
    if word.startswith(("$", "{", "(")) or ":/" in word or word.lower() in KEYWORDS:
        return None
    if word.startswith("!"):
        start = 1
    transport = re.match(r"[a-z][a-z0-9-]*:(?!/)", word[start:])
    if transport and not is_ip(word[start:]):
        start += transport.end()  # smtp:[relay.example.com]: the transport is not a host
    elif nexthop_only:
        return None
    if word[start:].startswith("["):
        start += 1
    core = re.match(r"[^\]\s]*", word[start:])
    assert core is not None
    text = core.group()
    if text and not is_ip(text):
        text = text.split(":", 1)[0]  # host:port
    if not text or text.startswith("$"):
        return None
    if is_ip(text):
        # [::1]/128: Postfix writes an IPv6 network's length after the bracket
        length = re.match(r"\]/\d{1,3}", word[start + len(text) :])
        return start, start + len(text) + (length.end() if length else 0), "ip"
    if "@" in text:
        return start, start + len(text), "email"
    if _HOSTISH.fullmatch(text) and text.lower() not in KEYWORDS:
        return start, start + len(text), "host"
    return None


class Anonymizer:
    """Mask a report consistently: :meth:`learn` every part first, then :meth:`apply` each.

    Learned (only names the rules would miss elsewhere) are a set, looked up word by word."""

    def __init__(self) -> None:
        self._names: set[str] = set()

    def learn(self, text: str) -> None:
        """Remember every name recognised in ``text``, to mask it wherever else it appears."""
        for raw in text.splitlines():
            line = scrub_line(raw)
            for span in find_spans(line):
                if span.kind == "ip":
                    continue
                name = line[span.start : span.end].rstrip(".")
                if len(name) < 3 or name.lower() in RESERVED | KEYWORDS:
                    continue
                if is_hostname(name) or _EMAIL.fullmatch(name):
                    continue
                self._names.add(name.lower())

    def apply(self, text: str) -> str:
        """``text`` with every recognised or learned address, host name and IP masked."""
        return "\n".join(self._line(line) for line in text.split("\n"))

    def _line(self, line: str) -> str:
        line = scrub_line(line)
        probed = probe(line)
        spans = [(s.start, s.end) for s in find_spans(line)]
        if self._names:
            for word in _WORD.finditer(probed):
                token = word.group().rstrip(".")
                start, end = word.start(), word.start() + len(token)
                if token.lower() not in self._names or (start and line[start - 1] == "/"):
                    continue  # a path component is a file, whatever its name
                if all(end <= a or start >= b for a, b in spans):
                    spans.append((start, end))
        out, last = [], 0
        for start, end in sorted(spans):
            out += [line[last:start], mask(line[start:end], probed[start:end])]
            last = end
        out.append(line[last:])
        return "".join(out)
