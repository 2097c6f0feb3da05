"""tracerd's reads and deletes of bpftrace's maps (tracers/syscount/bpfmap.py), against a real bpftrace.

A bpftrace of the test's own fills a map with known keys and values; the
batched read must equal the key-by-key read and the known contents, and a
batched delete must skip a key that is already gone.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.support import wait_until
from tracerd.tracers.syscount import bpfmap, check

pytestmark = pytest.mark.skipif(check.refusal() is not None, reason=str(check.refusal()))

KEYS = 2500  # more than one batch (bpfmap.BATCH)
SCRIPT = "BEGIN { $i = 0; while ($i < " + str(KEYS) + ') { @m[$i] = $i * 3 + 1; $i++; } printf("filled\\n"); }'


@pytest.fixture
def filled() -> Iterator[bpfmap.BpfMap]:
    proc = subprocess.Popen(["bpftrace", "-e", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        said = [proc.stdout.readline()]
        while said[-1] and "filled" not in said[-1]:  # warnings first (RLIMIT_MEMLOCK, on kernels that need none)
            said.append(proc.stdout.readline())
        assert "filled" in said[-1], said
        found: bpfmap.BpfMap = wait_until(lambda: bpfmap.open_maps(proc.pid).get("AT_m"), "bpftrace's @m", timeout=30)
        yield found
        found.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def expected() -> dict[int, int]:
    return {i: i * 3 + 1 for i in range(KEYS)}


def decoded(items: list[tuple[bytes, int]]) -> dict[int, int]:
    return {int.from_bytes(key, "little"): value for key, value in items}


def test_batched_read_equals_the_known_contents_and_the_key_by_key_read(filled: bpfmap.BpfMap) -> None:
    cpus = bpfmap.possible_cpus() if filled.kind in bpfmap.PERCPU_TYPES else 1
    batched = filled._items_batched(cpus, 1 << 20)
    assert len(batched) == KEYS  # no key read twice across batches
    assert decoded(batched) == expected()
    assert decoded(filled._items_one_by_one(cpus, 1 << 20)) == expected()
    assert decoded(filled.items()) == expected()


def test_batched_delete_skips_a_key_already_gone(filled: bpfmap.BpfMap) -> None:
    keys = [key for key, _ in filled.items()]
    by_number = {int.from_bytes(key, "little"): key for key in keys}
    assert filled.delete(by_number[7])
    filled.delete_many([by_number[n] for n in range(0, 2000)])  # 7 among them, already gone
    assert decoded(filled.items()) == {i: i * 3 + 1 for i in range(2000, KEYS)}
