"""Quoted strings of strace and ltrace lines, parsed by their grammar, for ``bugreport --anonymize``.

:func:`scrub_line` shows each C string literal after a call line's first
call (``NAME(`` or ``<... NAME resumed>``) as ``<N bytes>`` (``<N+ bytes>``
when ``-s`` cut it), N being the bytes it stands for; lines without a call
keep their strings.  ltrace leaves a ``"`` in a buffer unescaped, so a quote
closes a literal only where syntax follows it.  :data:`ESCAPE` is the escape
grammar alone, for :mod:`anonymize`.  Rules: docs/crashes.md, ``--anonymize``.

Security: the input is untrusted (a traced process chooses its strings); one
left-to-right pass per line, linear regular expressions, no decoding beyond
counting bytes.

Diagnostics: none; text that is not a trace line is returned unchanged.
"""

from __future__ import annotations

import re

# longest first: \\, \x41 and \012 are one escape each (strace pads octal to three digits before a digit)
ESCAPE = re.compile(r"""\\(?:x[0-9A-Fa-f]{2}|[0-7]{1,3}|[abtnvfre"'?\\])""")
_CALL = re.compile(r"(?<![\w$])(?:[A-Za-z_][\w@.]*(?:->[A-Za-z_][\w@.]*)?\(|<\.\.\. [A-Za-z_]\w* resumed>)")
_PLAIN = re.compile(r'[^"\\]+')
# what may follow a literal: an argument's end, or a comment or <unfinished ...> after a space
_FOLLOWER = re.compile(r"$|[,)\]}]| (?:<unfinished|/\*)")
# what strace and ltrace print between two literals: blanks only after a comma ("a", ["b", "c"])
_GAP = re.compile(r"(?:[^\s\"]|(?<=,) )*")


def string_at(line: str, start: int) -> tuple[int, int, bool]:
    """The literal opening at ``line[start]``: (end offset, bytes it stands for, cut); unclosed: line's end, cut."""
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
    """Whether a quote ending at ``end`` closes its literal: syntax follows, up to the next quote."""
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
