"""Crash retention (docs/crashes.md "Crash retention"): ``tracerctl crash-delete ID``
and ``--older-than AGE`` on a real store of real crashes (tests/c/crash.c
under the watch tracer, cores kept): reports and cores go, ``crashes`` and
the index agree at once; bad ages and unknown ids are one line; a
``socket_group`` member may list crashes but not delete them."""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import have
from tests.support import wait_until
from tests.test_group_secrets import TRACERCTL, as_nobody
from tracerd.crash import retention

pytestmark = pytest.mark.skipif(not have("gdb"), reason="gdb not installed (the watch tracer's backtrace)")
RULES = 'crash_flood_window = 0\ncore = "all"\n[[rule]]\nprocess = "*"\ntracer = "watch"\n'


def crash(daemon: Any, spawn: Any, binary: Path, name: str = "crasher", mode: str = "segv") -> str:
    target = spawn(binary, daemon.hook_command(), name, mode)
    assert target.readline() == "hook=0\n"
    target.release()
    assert target.wait() == -(signal.SIGABRT if mode == "abort" else signal.SIGSEGV)
    crash_id = daemon.wait_session(target.pid, "crashed")["crash"]
    assert crash_id, daemon.stderr()[-3000:]
    return str(crash_id)


def inventory(daemon: Any) -> list[dict[str, Any]]:
    result = daemon.ctl("--json", "crashes")
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout)["crashes"])


def files(daemon: Any) -> set[str]:
    return {path.name for path in (daemon.state_dir / "crashes").iterdir()} - {"index.json"}


def index(daemon: Any) -> list[dict[str, Any]]:
    return list(json.loads((daemon.state_dir / "crashes" / "index.json").read_text())["crashes"])


def test_delete_by_id_and_signature(daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """Deleting a signature's newest report points its entry at the one left
    (count one less); deleting the last one takes the signature with it; a
    signature deletes all its reports; report and core go, index follows."""
    daemon = daemon_factory(RULES)
    binary = cbin("crash", "-pthread")
    first, second = crash(daemon, spawn, binary), crash(daemon, spawn, binary)
    other = crash(daemon, spawn, binary, "aborter", "abort")
    assert {f"{cid}{ext}" for cid in (first, second, other) for ext in (".json", ".core.zst")} == files(daemon)
    [entry] = [e for e in inventory(daemon) if e["id"] == second]
    assert (entry["count"], entry["reports"]) == (2, sorted([first, second]))

    result = daemon.ctl("crash-delete", second)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["deleted 1 crash report(s) and 1 core(s)", f"  {second}"]
    assert f"{second}.json" not in files(daemon)
    assert f"{second}.core.zst" not in files(daemon)
    [entry] = [e for e in inventory(daemon) if e["signature"] == entry["signature"]]
    assert (entry["id"], entry["count"], entry["reports"]) == (first, 1, [first])
    assert entry["core"] == f"{first}.core.zst"
    assert [e["reports"] for e in index(daemon) if e["signature"] == entry["signature"]] == [[first]]
    assert daemon.ctl("crash", second).returncode == 1

    gone = json.loads(daemon.ctl("--json", "crash-delete", first).stdout)
    assert gone["deleted"] == [first]
    assert gone["signatures"] == [entry["signature"]]
    assert [e["id"] for e in inventory(daemon)] == [other]
    assert [e["id"] for e in index(daemon)] == [other]

    signature = inventory(daemon)[0]["signature"]
    result = daemon.ctl("crash-delete", signature)
    assert result.returncode == 0, result.stderr
    assert inventory(daemon) == []
    assert index(daemon) == []
    assert files(daemon) == set()


@pytest.mark.slow  # 9 s of waiting by design: under xdist it starts first, beside the others' work
def test_delete_older_than(daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """--older-than: the crash stored before the cutoff goes (report, core,
    its signature); the later one stays.  The two are 8 s apart, so the
    cutoff falls between them whatever tracerctl's own latency (< 4 s)."""
    daemon = daemon_factory(RULES)
    old = crash(daemon, spawn, cbin("crash", "-pthread"), "oldone", "abort")
    old_at = retention.stored_at(old)
    assert old_at is not None
    wait_until(lambda: time.time() >= old_at + 9, "the first crash 9 s old", timeout=30)
    new = crash(daemon, spawn, cbin("crash", "-pthread"), "newone", "segv")
    assert daemon.ctl("crash-delete", "--older-than", "1d").stdout.startswith("nothing to delete stored before ")
    age = math.floor(time.time() - old_at) - 4  # older than this: the first one only
    result = daemon.ctl("--json", "crash-delete", "--older-than", f"{age}s")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["deleted"] == [old]
    assert reply["cores"] == [f"{old}.core.zst"]
    assert [e["id"] for e in inventory(daemon)] == [new]
    assert files(daemon) == {f"{new}.json", f"{new}.core.zst"}
    assert daemon.ctl("crash-delete", "--older-than", f"{age}m").returncode == 0  # minutes: nothing that old
    assert [e["id"] for e in inventory(daemon)] == [new]


@pytest.mark.parametrize("age", ["30", "30x", "-1d", "0s", "1.5d", "d", "30 d", "99999999999d"])
def test_bad_age_is_one_line(shared_daemon: Any, age: str) -> None:
    result = shared_daemon.ctl("crash-delete", f"--older-than={age}")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"tracerctl: tracerctl crash-delete: argument --older-than: bad age {age!r}: want a whole number above 0"
        " and a unit: s, m, h or d (30d), at most 100 years")  # fmt: skip


def test_unknown_id_and_usage(shared_daemon: Any) -> None:
    """Refusals: nothing is deleted, so the module's one tracerd serves them."""
    daemon = shared_daemon
    result = daemon.ctl("crash-delete", "20200101T000000Z-deadbeef-1")
    assert result.returncode == 1
    assert result.stderr == ("tracerctl: no crash 20200101T000000Z-deadbeef-1 (an id as `tracerctl crashes`"
                             " lists it, or a signature)\n")  # fmt: skip
    assert daemon.ctl("crash-delete").returncode == 2  # an id or --older-than
    assert daemon.ctl("crash-delete", "x", "--older-than", "1d").returncode == 2
    raw = daemon.request(b'{"op": "crash-delete"}\n')
    assert raw["error"] == "bad_request"


def test_without_tracerd(tmp_path: Path, daemon: Any) -> None:
    """tracerd down: exit 3, and why (it keeps the store's index)."""
    daemon.stop()
    result = daemon.ctl("crash-delete", "--older-than", "30d")
    assert result.returncode == 3
    assert result.stderr.endswith("; crash-delete goes through tracerd: start it\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to uid nobody")
def test_group_member_may_list_but_not_delete(daemon_factory: Any, cbin: Any, spawn: Any, public_dir: Path) -> None:
    daemon = daemon_factory(f'socket_group = "nogroup"\n{RULES}', socket_path=public_dir / "tracerd.sock",
                            data_dir=public_dir)  # fmt: skip
    crash_id = crash(daemon, spawn, cbin("crash", "-pthread"))
    sock = ["--socket", str(daemon.socket)]
    assert as_nobody(TRACERCTL, *sock, "crashes").returncode == 0
    for args in ([crash_id], ["--older-than", "1s"]):
        refused = as_nobody(TRACERCTL, *sock, "crash-delete", *args)
        assert refused.returncode == 1, refused
        assert refused.stderr == "tracerctl: crash-delete needs root (caller uid 65534)\n"
    assert [e["id"] for e in inventory(daemon)] == [crash_id]
    assert f"{crash_id}.core.zst" in files(daemon)
