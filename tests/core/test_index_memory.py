"""LocalCache's hit index once its table reaches 2 MiB (from 131,072 slots of 24 bytes).

From that size on, the compiled core maps the table on its own on Linux,
2-MiB-aligned, advised to use transparent huge pages, and registers it with
tracemalloc; smaller tables (and every table elsewhere) come from the Python
allocator.  These tests grow a cache through several such tables and check the
answers against a dict, then check (Linux with transparent huge pages, compiled
core) that the table is one hinted mapping of the expected size that goes away
with the cache, and that tracemalloc counts it.  On the pure twin, which has no
index, the answers are the same and no such mapping or trace appears.
"""

from __future__ import annotations

import gc
import os
import random
import sys
import tracemalloc
from typing import Any

from .conftest import FakeClock

MIB = 1 << 20
TRACE_DOMAIN = 0x46535353  # the compiled core's tracemalloc domain for mapped tables
# the kernel can honour MADV_HUGEPAGE (the "hg" flag shows in smaps) where this exists
THP = os.path.isdir("/sys/kernel/mm/transparent_hugepage") and os.path.exists("/proc/self/smaps")


def hinted_mappings() -> dict[int, int]:
    """Start -> length of this process's mappings advised MADV_HUGEPAGE ({} without /proc)."""
    if not THP:
        return {}
    found: dict[int, int] = {}
    start = end = 0
    with open("/proc/self/smaps", encoding="ascii", errors="replace") as f:
        for line in f:
            head = line.split(" ", 1)[0]
            if "-" in head and not head.endswith(":"):
                lo, _, hi = head.partition("-")
                start, end = int(lo, 16), int(hi, 16)
            elif head == "VmFlags:" and " hg" in line:
                found[start] = end - start
    return found


def mapped_tables(impl: Any) -> bool:
    """Does this implementation map big tables with the huge-page hint here?"""
    return THP and impl.__name__ == "fastsess._lru"


def test_a_big_index_agrees_with_a_dict(impl: Any, clock: FakeClock) -> None:
    cache = impl.LocalCache(max_size=200_000, ttl=100, timer=clock)
    model: dict[str, int] = {}
    for i in range(120_000):  # the table grows to 2**16, 2**17 and 2**18 slots
        cache.set(f"key-{i}", i)
        model[f"key-{i}"] = i
    rng = random.Random(15)
    for i in rng.sample(range(120_000), 30_000):  # removals shift slots back
        assert cache.delete(f"key-{i}") is True
        del model[f"key-{i}"]
    for i in range(0, 120_000, 7):
        cache.set(f"key-{i}", -i, ttl=10)  # overwrites, some with their own TTL
        model[f"key-{i}"] = -i
    assert all(cache.get("".join(["key-", str(i)])) == model.get(f"key-{i}") for i in range(120_000))  # equal keys, other objects
    assert cache.stats.hits == len(model) and cache.stats.misses == 120_000 - len(model)
    clock.advance(50)  # the per-entry TTLs are over
    assert all(cache.get(f"key-{i}") is None for i in range(0, 120_000, 7))
    assert cache.get("key-1") == (None if "key-1" not in model else 1)
    cache.clear()
    assert cache.get("key-1") is None and len(cache) == 0
    cache.set("key-1", "again")
    assert cache.get("key-1") == "again"


def test_a_big_table_is_one_hinted_mapping_freed_with_the_cache(impl: Any) -> None:
    gc.collect()
    before = hinted_mappings()
    cache = impl.LocalCache(max_size=200_000, ttl=100)

    def added() -> dict[int, int]:
        return {start: length for start, length in hinted_mappings().items() if before.get(start) != length}

    for i in range(104_857):  # 2**17 slots (3 MiB), 80% full: the most before growing
        cache.set(f"key-{i}", i)
    if mapped_tables(impl):
        assert sum(added().values()) == 3 * MIB and all(start % (2 * MIB) == 0 for start in added())
    else:
        assert added() == {}
    cache.set("one-more", 0)  # 2**18 slots (6 MiB); the old table is unmapped
    if mapped_tables(impl):
        assert sum(added().values()) == 6 * MIB and all(start % (2 * MIB) == 0 for start in added())
    else:
        assert added() == {}
    assert cache.get("key-104856") == 104_856 and cache.get("one-more") == 0
    cache.clear()
    assert hinted_mappings() == before
    for i in range(60_000):  # 2**17 slots again
        cache.set(f"key-{i}", i)
    del cache
    gc.collect()
    assert hinted_mappings() == before


def test_tracemalloc_counts_a_mapped_table(impl: Any) -> None:
    tracemalloc.start()
    try:
        cache = impl.LocalCache(max_size=100_000, ttl=100)
        for i in range(60_000):
            cache.set(f"key-{i}", i)
        traced = tracemalloc.take_snapshot().filter_traces([tracemalloc.DomainFilter(True, TRACE_DOMAIN)])
        total = sum(stat.size for stat in traced.statistics("filename"))
        expected = 3 * MIB if impl.__name__ == "fastsess._lru" and sys.platform.startswith("linux") else 0
        assert total == expected
        assert cache.get("key-0") == 0
        del cache
        gc.collect()
        traced = tracemalloc.take_snapshot().filter_traces([tracemalloc.DomainFilter(True, TRACE_DOMAIN)])
        assert sum(stat.size for stat in traced.statistics("filename")) == 0
    finally:
        tracemalloc.stop()
