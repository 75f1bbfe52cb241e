"""Cache core: fastsess against ``dict`` and the caches users would otherwise pick.

Each benchmark calls the function ``fastsess bench`` calls, with the same
inputs (``fastsess.benchmarks.cache``; its docstring says what each workload
does):

* ``test_candidate[<candidate>-<size>]``: ``measure_candidate`` on a fresh
  cache filled with ``size`` keys: hit through ``c[k]`` and through
  ``c.get(k)``, miss, the 90/10 mix (identical hits for every candidate), and
  set-with-eviction, each over ``ROUNDS`` rounds of 1,000 operations, reported
  as median / quartiles / min / max ns per operation, loop included.
* ``test_loop_overhead[<size>]``: the same hit loop with an empty body.
* ``test_threads[<candidate>]``: ``measure_threads``: the same hits by one
  thread and by two, alternating, ``thread_runs`` long runs; median ratio and
  its range.

A candidate is skipped only when its package is not installed.
"""

from __future__ import annotations

from typing import Any

import pytest

from fastsess.benchmarks.cache import cache_workload, find_candidates, measure_candidate, measure_threads, run_loop_overhead
from fastsess.benchmarks.report import FULL
from fastsess.benchmarks.timing import summarize

from .support import ROUNDS, SIZES, run_once, sized

CANDIDATES = {cand.name: cand for cand in find_candidates()[0]}
THREAD_CANDIDATES = ("dict", "fastsess LocalCache (c)")


@pytest.mark.parametrize("name", list(CANDIDATES))
@pytest.mark.parametrize("size", [sized(size, size, str(size)) for size in SIZES])
def test_candidate(benchmark: Any, size: int, name: str) -> None:
    row = run_once(benchmark, measure_candidate, CANDIDATES[name], cache_workload(size, ROUNDS), section="cache")
    assert row["len_after_mixed"] == size and 0.85 < row["mixed_read_hit_rate"] < 0.95


@pytest.mark.parametrize("size", [sized(size, size, str(size)) for size in SIZES])
def test_loop_overhead(benchmark: Any, size: int) -> None:
    """The hit loop with an empty body over the same keys: the part of every figure that is not the lookup."""
    workload = cache_workload(size, ROUNDS)
    run_once(benchmark, lambda: {"size": size, **summarize(run_loop_overhead(workload))}, section="loop_overhead")


@pytest.mark.parametrize("name", THREAD_CANDIDATES)
def test_threads(benchmark: Any, name: str) -> None:
    if name not in CANDIDATES:
        pytest.skip(f"{name} is not available here")
    result = run_once(benchmark, measure_threads, CANDIDATES[name], FULL["thread_hits"], FULL["thread_runs"], section="threads")
    assert result["runs"] == FULL["thread_runs"]
