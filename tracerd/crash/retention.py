"""Crash retention: delete one crash, or every crash older than an age.

delete() serves ``tracerctl crash-delete ID | --older-than AGE`` through the
daemon's ``crash-delete`` operation (tracerd is its store's one writer, its index
in memory): reports (``ID.json``) and cores of an id, of a signature, or stored
before the cutoff.  Under the store's lock the index is written first, then the
files go.  Rules: docs/crashes.md, "Crash retention".

Security: root (and tracerd's own uid) only, never ``socket_group``
(tracerd.daemon.auth).  Names come from the directory listing and the index; a
client's id is only compared with them, never joined into a path.

Diagnostics: an unknown id raises NotFound (``no crash ID``); an index that
cannot be written raises OSError and deletes nothing.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import os
import re
from typing import Any

from tracerd.crash import corefile
from tracerd.crash.report import _epoch
from tracerd.crash.store import CrashStore
from tracerd.errors import NotFound

_STAMP = re.compile(r"(\d{8}T\d{6}Z)-")


def stored_at(crash_id: str) -> float | None:
    """When a report was stored, from its id (``20261124T161814Z-...``); None for a foreign name."""
    found = _STAMP.match(crash_id)
    if found is None:
        return None
    try:
        return dt.datetime.strptime(found.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


def delete(store: CrashStore, crash_id: str | None = None, older_than: float | None = None) -> dict[str, Any]:
    """Delete ``crash_id`` (id or signature) or all older than ``older_than`` s; the ``--json`` record."""
    if store.read_only:
        raise PermissionError(f"crash store {store.directory} is open read-only")
    with store._lock:
        on_disk = set(store._report_ids())
        cores = {cid for _, cid, _ in corefile.cores_on_disk(store._fd)}
        saved = copy.deepcopy(store._entries)
        cutoff = None
        if crash_id is not None:
            doomed, signatures = _by_id(store, crash_id, on_disk)
        else:
            assert older_than is not None
            cutoff = store._clock() - older_than
            doomed, signatures = _by_age(store, cutoff, on_disk | cores)
        doomed_cores = doomed & cores
        try:
            _forget(store, doomed, signatures, cutoff)
            store._save_index()
        except BaseException:
            store._entries = saved  # nothing deleted
            raise
        for rid in sorted(doomed & on_disk):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{rid}.json", dir_fd=store._fd)
        for rid in sorted(doomed_cores):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(corefile.core_name(rid), dir_fd=store._fd)
        for entry in store._entries.values():  # a core of the signature's that went with its report
            if entry.get("core") and corefile.crash_id_of(str(entry["core"])) in doomed_cores:
                entry["core"] = None
        store._publish()
        with contextlib.suppress(OSError):
            store._save_index()
    return {"deleted": sorted(doomed & on_disk), "cores": sorted(corefile.core_name(c) for c in doomed_cores),
            "signatures": sorted(signatures),
            "cutoff": None if cutoff is None else dt.datetime.fromtimestamp(cutoff, dt.UTC).isoformat()}  # fmt: skip


def _by_id(store: CrashStore, crash_id: str, on_disk: set[str]) -> tuple[set[str], set[str]]:
    """The reports to delete for an id or a signature, and the signatures that go whole."""
    entry = store._entries.get(crash_id)
    if entry is not None:
        return {*entry["reports"], entry["id"]}, {crash_id}
    for sig, entry in store._entries.items():
        if crash_id in entry["reports"] or crash_id == entry["id"]:
            left = [rid for rid in entry["reports"] if rid != crash_id and rid in on_disk]
            return {crash_id}, set() if left else {sig}
    if crash_id in on_disk:  # a report the index does not know (damaged, foreign)
        return {crash_id}, set()
    raise NotFound(f"no crash {crash_id} (an id as `tracerctl crashes` lists it, or a signature)")


def _by_age(store: CrashStore, cutoff: float, names: set[str]) -> tuple[set[str], set[str]]:
    doomed = {name for name in names if (when := stored_at(name)) is not None and when < cutoff}
    signatures = set()
    for sig, entry in store._entries.items():
        left = [rid for rid in entry["reports"] if rid not in doomed]
        if (entry["reports"] and not left) or _epoch(entry["last_seen"]) < cutoff:
            signatures.add(sig)
            doomed |= {rid for rid in entry["reports"] if rid in names}
    return doomed, signatures


def _forget(store: CrashStore, doomed: set[str], signatures: set[str], cutoff: float | None) -> None:
    """The index without the doomed reports: signatures gone, the others rebuilt from their reports left."""
    for sig in signatures:
        store._entries.pop(sig, None)
    for sig, entry in list(store._entries.items()):
        gone = [rid for rid in entry["reports"] if rid in doomed]
        repeats = [r for r in entry["repeats"] if cutoff is None or _epoch(str(r.get("time"))) >= cutoff]
        if not gone and len(repeats) == len(entry["repeats"]):
            continue
        left = [rid for rid in entry["reports"] if rid not in doomed]
        del store._entries[sig]
        rebuilt: dict[str, Any] | None = None
        for rid in left:
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                rebuilt = store._merge(store._read_json(f"{rid}.json"), rebuilt)
        if rebuilt is None:
            continue  # no readable report left: the signature goes
        dropped = len(gone) + len(entry["repeats"]) - len(repeats)
        rebuilt["count"] = max(len(rebuilt["reports"]) + len(repeats), entry["count"] - dropped)
        rebuilt["repeats"] = repeats
        times = [rebuilt["last_seen"], *(str(r.get("time")) for r in repeats)]
        rebuilt["last_seen"] = max(times, key=_epoch)
