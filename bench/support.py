"""Helpers shared by the benchmark modules: sizes, reproducible keys, per-operation figures.

Every benchmark times a *batch* of operations per round (``BATCH`` = 1,000 for
the in-process ones; the Redis ones use 100 round trips), so one timer read
covers many operations and the cost of one operation is the round time
divided by the batch.  With ``--benchmark-time-unit=us`` the table's numbers
for a 1,000-operation batch read directly as nanoseconds per operation.  ``record_per_op`` also stores
that figure in ``benchmark.extra_info`` (kept by ``--benchmark-json``), with
the candidate, workload and size that ``bench/report.py`` turns into tables.
"""

from __future__ import annotations

import functools
import random
from typing import Any

import pytest

from fastsess.benchmarks.cache import random_keys

SEED = 20_240_601  # every key list and access order derives from this
SIZES: tuple[int, ...] = (1_000, 100_000, 1_000_000)
BATCH = 1_000  # operations timed per round


def sized(value: object, size: int, id: str) -> Any:
    """A ``pytest.param`` for ``value`` carrying the ``bench_size`` mark (see conftest)."""
    return pytest.param(value, id=id, marks=pytest.mark.bench_size(size))


@functools.cache
def random_str_keys(n: int, length: int = 16, seed: int = SEED) -> list[str]:
    """``n`` distinct random keys of ``length`` ASCII letters/digits, in a seeded random order.

    Keys of different lengths never collide, so a length names a key family:
    16 for stored keys, longer ones for keys known to be absent.  The list is
    the same in every process and built once per run: treat it as read-only.
    """
    rng = random.Random(f"{seed}:{n}:{length}")
    # random_keys dedupes through a set, whose order follows the per-process
    # string hash (PYTHONHASHSEED); sorting, then shuffling, makes it reproducible.
    keys = sorted(random_keys(n, rng, length))
    rng.shuffle(keys)
    return keys


def batches(items: list[Any], size: int = BATCH) -> list[list[Any]]:
    """``items`` cut into consecutive lists of ``size`` (the last one may be shorter)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def record_per_op(benchmark: Any, ops: int, *, candidate: str, workload: str, size: int | None = None) -> None:
    """Store the per-operation cost (ns, from the median and the min round) in ``extra_info``.

    Call after the benchmark ran; under ``--benchmark-disable`` there are no
    timings and only the labels are stored.
    """
    info = benchmark.extra_info
    info.update(candidate=candidate, workload=workload, ops_per_round=ops)
    if size is not None:
        info["size"] = size
    if benchmark.stats:
        stats = benchmark.stats.stats
        info["per_op_ns"] = round(stats.median / ops * 1e9, 2)
        info["per_op_ns_min"] = round(stats.min / ops * 1e9, 2)
