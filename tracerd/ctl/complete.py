"""tracerctl _complete: the words a shell completion script offers.

A hidden command: ``_complete commands``, ``services [-c DIR]`` (what
``postfix enable`` accepts, from ``postconf -M``), ``crashes [--state-dir
DIR]`` (from tracerd, else its store); see tracerctl(8).  One word a line,
sorted; exit 0 even with nothing to offer.  Bounded by ``--timeout``
(tracerd) and postconf's 60 s.

Security: words from postconf, tracerd or its store are offered only if
printable non-space characters (the script splits on whitespace).

Diagnostics: none by design: a completion never prints an error into the
user's command line.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from tracerd.client import Unreachable, call
from tracerd.ctl.common import EXIT_OK

WORD = re.compile(r"[!-~]{1,200}")  # printable ASCII, no space


def services(config_dir: str | None) -> list[str]:
    # imported here: only this completion needs postconf (and psutil)
    from tracerd.ctl.postconf import Instance, PostfixError  # noqa: PLC0415

    try:
        keys = list(Instance(config_dir).services())
    except (PostfixError, OSError):
        return []
    names = [key.rpartition("/")[0] for key in keys]
    return keys + [name for name in names if names.count(name) == 1]


def crash_ids(socket: str, timeout: float, state_dir: Path | None) -> list[str]:
    try:
        reply = call(socket, {"op": "crashes"}, timeout=timeout)
    except Unreachable:
        # imported here: the store is read only when tracerd is down
        from tracerd.crash.inventory import StoreUnreadable, default_state_dir, store_reply  # noqa: PLC0415

        try:
            reply = store_reply("crashes", None, state_dir or default_state_dir())
        except (StoreUnreadable, OSError):
            return []
    crashes = reply.get("crashes") if reply.get("ok") is True else None
    return [str(crash.get("id")) for crash in crashes if isinstance(crash, dict)] if isinstance(crashes, list) else []


def run(args: argparse.Namespace) -> int:
    if args.what == "commands":
        words = list(args.commands)
    elif args.what == "services":
        words = services(args.config_dir)
    else:
        words = crash_ids(args.socket, args.timeout, args.state_dir)
    for word in sorted(set(words)):
        if WORD.fullmatch(word):
            print(word)
    return EXIT_OK


def register(sub: argparse._SubParsersAction[Any]) -> None:
    # no help=: argparse then leaves it out of tracerctl --help
    parser = sub.add_parser("_complete", description="Words for shell completion, one a line (hidden).")
    parser.add_argument("what", choices=("commands", "services", "crashes"), help="what to list")
    parser.add_argument("-c", dest="config_dir", metavar="CONFIG_DIR", help="Postfix configuration directory")
    parser.add_argument("--state-dir", type=Path, metavar="DIR", help="tracerd's state_dir, read when it is down")
    parser.set_defaults(run=run, commands=sorted(name for name in sub.choices if not name.startswith("_")))
