"""Quoted strings of strace and ltrace lines, parsed by their grammar: for
``bugreport --anonymize``, which shows each as its length only.

strace and ltrace print a buffer or path argument as a C string literal: ``"``,
then printable characters and escapes (``\\"``, ``\\\\``, ``\\t``, ``\\n``,
``\\r``, ``\\v``, ``\\f``, octal ``\\0`` to ``\\377``, hex ``\\xNN``), then ``"``,
then ``...`` when ``-s`` cut it.  ltrace leaves a ``"`` inside a buffer
unescaped, so a quote closes a literal only where syntax follows it (``,``
``)`` ``]`` ``}``, the line's end, `` <unfinished``) and the text up to the next
literal has blanks only after commas; any other quote is content.  :func:`scrub_line` replaces every such string
of a *call line* by ``<N bytes>`` (``<N+ bytes>`` when cut: N is what was
shown), N being the bytes the literal stands for, so ``read(15, "Subject:
x\\r\\n", 4096) = 11`` becomes ``read(15, <11 bytes>, 4096) = 11``.  A call line
is any line holding ``NAME(`` (a system call, ``SYS_read(``, ltrace's
``lib->func(``) or ``<... NAME resumed>``; the strings after the first one are
replaced, whatever precedes it (a syslog header, ``[pid N]``, a timestamp, a
crash report's indentation).  A string that never closes (a line cut short)
runs to the end of the line.  Lines without a call (Postfix's ``lookup error
for "x"``, gdb's ``given=0x7ffe "x"``) keep their strings.

:data:`ESCAPE` is the escape grammar alone, for :mod:`tracerd.ctl.anonymize`:
an address right after ``\\t`` or ``\\0`` starts after the escape, not on its
last letter or digit.

Security: the input is untrusted (a traced process chooses its strings); one
left-to-right pass per line, linear regular expressions, no decoding beyond
counting bytes.

Diagnostics: none; text that is not a trace line is returned unchanged.
"""

from __future__ import annotations

import re

# longest first: \\ is one escape, \x41 one escape, \012 one escape (strace pads
# an octal escape to three digits when a digit follows it)
ESCAPE = re.compile(r"""\\(?:x[0-9A-Fa-f]{2}|[0-7]{1,3}|[abtnvfre"'?\\])""")
_CALL = re.compile(r"(?<![\w$])(?:[A-Za-z_][\w@.]*(?:->[A-Za-z_][\w@.]*)?\(|<\.\.\. [A-Za-z_]\w* resumed>)")
_PLAIN = re.compile(r'[^"\\]+')
# what may follow a literal: an argument's end, or a comment or <unfinished ...> after a space
_FOLLOWER = re.compile(r"$|[,)\]}]| (?:<unfinished|/\*)")
# what strace and ltrace print between two literals: blanks only after a comma ("a", ["b", "c"])
_GAP = re.compile(r"(?:[^\s\"]|(?<=,) )*")


def string_at(line: str, start: int) -> tuple[int, int, bool]:
    """The literal opening at ``line[start] == '"'``: (end offset, bytes it stands for, cut by ``-s``).

    Unclosed: the end of the line, and cut.
    """
    position, size = start + 1, 0
    while position < len(line):
        char = line[position]
        if char == '"':
            end = position + 1
            cut = line.startswith("...", end)
            end += 3 if cut else 0
            if _closes(line, end):
                return end, size, cut
            position, size = position + 1, size + 1  # ltrace's unescaped quote: content
            continue
        if char == "\\":
            escape = ESCAPE.match(line, position)
            if escape is None:  # a lone backslash: itself
                position, size = position + 1, size + 1
            else:
                position, size = escape.end(), size + 1
            continue
        plain = _PLAIN.match(line, position)
        assert plain is not None
        size += len(plain.group().encode("utf-8", "replace"))
        position = plain.end()
    return len(line), size, True


def _closes(line: str, end: int) -> bool:
    """Whether a quote ending at ``end`` closes its literal: what follows is syntax,
    up to the next quote (ltrace prints a quote in a buffer unescaped)."""
    if not _FOLLOWER.match(line, end):
        return False
    following = line.find('"', end)
    return following < 0 or _GAP.fullmatch(line, end, following) is not None


def strings(line: str) -> list[tuple[int, int, int, bool]]:
    """Every string literal after a call line's first call: (start, end, bytes, cut); none elsewhere."""
    call = _CALL.search(line)
    if call is None:
        return []
    found: list[tuple[int, int, int, bool]] = []
    position = call.end()
    while True:
        start = line.find('"', position)
        if start < 0:
            return found
        end, size, cut = string_at(line, start)
        found.append((start, end, size, cut))
        position = end


def scrub_line(line: str) -> str:
    """``line`` with each string literal of a trace call shown as ``<N bytes>`` (``<N+ bytes>`` when cut)."""
    found = strings(line)
    if not found:
        return line
    out, last = [], 0
    for start, end, size, cut in found:
        out += [line[last:start], f"<{size}{'+' if cut else ''} bytes>"]
        last = end
    out.append(line[last:])
    return "".join(out)


def scrub(text: str) -> str:
    """:func:`scrub_line` on every line of ``text``."""
    return "\n".join(scrub_line(line) for line in text.split("\n"))
