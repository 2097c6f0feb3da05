"""``tracerctl retrace ID``: name a crash's frames again from the debug symbols available now.

Reads the report from the crash store (``--state-dir``, else the answering
tracerd's, else the configured one) and runs :func:`tracerd.crash.retrace.retrace`
(``--debug-dir``, then debuginfod unless ``--no-debuginfod``).  Where the
store is writable the record is kept as ``ID.retrace`` and in the report:
by tracerd when it serves the store, else here.  Prints the changed frames,
then the report.  See docs/crashes.md, "Cores and retrace".

Security: as :mod:`tracerd.crash.retrace`; the crash id must match the
store's pattern; writes are atomic; only root (or tracerd's uid) may have
tracerd keep a retrace.

Diagnostics: one line ``tracerctl: ...`` (no store, no crash, no retrace
fields), exit 1.  Modules without symbols are listed, not failures; a
retrace that could not be kept says why on stderr, exit 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from tracerd import atomic
from tracerd.client import Unreachable, call
from tracerd.config import Config
from tracerd.config import load as load_config
from tracerd.crash import debuginfod, retrace
from tracerd.crash.inventory import StoreUnreadable, default_state_dir, open_store
from tracerd.crash.report import CRASH_ID_RE
from tracerd.crash.store import CrashStore
from tracerd.ctl.common import EXIT_FAILED, EXIT_OK, fail, print_json
from tracerd.ctl.crashview import render_crash
from tracerd.errors import ConfigError, NotFound


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "retrace", help="name a crash's frames again from the debug symbols available now",
        description="Re-symbolize a crash report: installed -dbgsym files under DEBUG_DIR/.build-id, then"
        " debuginfod ($DEBUGINFOD_URLS, [debuginfod] urls). Prints the frames that changed and their source.",
        epilog="Exit status: 0 retraced (some frames may have stayed unnamed); 1 failed; 2 usage.",
    )  # fmt: skip
    parser.add_argument("id", help="the crash id (or a prefix of it, or a signature)")
    parser.add_argument("--debug-dir", type=Path, action="append", metavar="DIR",
                        help="a debug root holding .build-id/ (default /usr/lib/debug; repeatable)")  # fmt: skip
    parser.add_argument("--no-debuginfod", action="store_true", help="local debug files only")
    parser.add_argument("--state-dir", type=Path, metavar="DIR",
                        help="tracerd's state_dir (default: that of the tracerd on --socket, else the"
                        " configured one)")  # fmt: skip
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    as_json = bool(getattr(args, "json", False))
    if not CRASH_ID_RE.fullmatch(args.id):
        return fail(f"not a crash id: {args.id!r}", 2, as_json=as_json)
    try:
        config = load_config()
    except ConfigError:
        config = Config()
    daemon_dir = _daemon_state_dir(args)
    state_dir = args.state_dir or daemon_dir or config.state_dir or default_state_dir()
    served = daemon_dir is not None and _same(daemon_dir, state_dir)
    try:
        store = open_store(state_dir)
    except StoreUnreadable as err:
        return fail(str(err), EXIT_FAILED, as_json=as_json)
    with store:
        try:
            report = store.get(args.id)
        except NotFound as err:
            return fail(str(err), EXIT_FAILED, as_json=as_json)
        client = None
        if not args.no_debuginfod:
            client = debuginfod.Client(debuginfod.servers(os.environ, config.debuginfod.urls), os.environ)
        try:
            record = retrace.retrace(report, args.debug_dir or retrace.DEFAULT_ROOTS, client)
        except retrace.RetraceError as err:
            return fail(f"crash {report.get('id')}: {err}", EXIT_FAILED, as_json=as_json)
        record["id"] = report.get("id")
        record["saved"] = _save(store.directory, str(report.get("id")), record)
        record["kept"], why = _keep(args, store.directory, str(record["id"]), served) if record["saved"] else (
            None, f"not kept in the report: {store.directory} is not writable (root's)")  # fmt: skip
        if record["kept"] is not None:
            with contextlib.suppress(NotFound):
                report = store.get(str(record["id"]))
    if why and record["changed"]:
        print(f"tracerctl: {why}", file=sys.stderr)
    if as_json:
        print_json(record)
        return EXIT_OK
    print(f"crash {record['id']}: {len(record['changed'])} of {record['frames']} frames named anew"
          f" in {record['seconds']:.3f} s")  # fmt: skip
    for change in record["changed"]:
        print(f"  thread {change['thread']} #{change['level']}: {change['before']} -> {change['after']}"
              f"  [{change['source']}]")  # fmt: skip
    for error in record["errors"]:
        print(f"  not named: {error}")
    if record["kept"] is None:
        retrace.apply(report, record)
    print()
    print(render_crash(report))
    return EXIT_OK


def _daemon_state_dir(args: argparse.Namespace) -> Path | None:
    """The state_dir of the tracerd answering on ``--socket``, or None (none answers)."""
    try:
        reply = call(args.socket, {"op": "status"}, timeout=min(float(args.timeout), 10.0))
    except Unreachable:
        return None
    state_dir = (reply.get("daemon") or {}).get("state_dir") if reply.get("ok") else None
    return Path(state_dir) if isinstance(state_dir, str) and state_dir else None


def _same(one: Path, other: Path) -> bool:
    try:
        return os.path.samefile(one, other)
    except OSError:
        return one == other


def _keep(args: argparse.Namespace, directory: Path, crash_id: str, served: bool) -> tuple[str | None, str]:
    """The record into the stored report, by tracerd when it serves the store, else here: how, or (None, why)."""
    if served:
        try:
            reply = call(args.socket, {"op": "crash-retrace", "id": crash_id}, timeout=float(args.timeout))
        except Unreachable as err:
            return None, f"not kept in the report: {err}"
        if reply.get("ok") is not True:
            return None, f"not kept in the report: {reply.get('message') or reply.get('error')}"
        return "tracerd", ""
    try:
        with CrashStore(directory) as store:
            retrace.keep(store, crash_id)
    except (OSError, ValueError, NotFound, ConfigError) as err:
        return None, f"not kept in the report: {err}"
    return "store", ""


def _save(directory: Path, crash_id: str, record: dict[str, object]) -> str | None:
    """Keep the record beside the report when we may write there (tracerd's own uid)."""
    if not CRASH_ID_RE.fullmatch(crash_id) or not os.access(directory, os.W_OK):
        return None
    path = directory / f"{crash_id}.retrace"
    with contextlib.suppress(OSError):
        atomic.write_file(path, json.dumps(record, indent=2).encode(), 0o640, prefix=".tmp-")
        return str(path)
    print(f"tracerctl: could not keep the retrace in {path}", file=sys.stderr)
    return None
