"""Helpers shared by the benchmark modules: sizes, rounds, and how a result is recorded.

Every benchmark here calls a function of ``fastsess.benchmarks`` (the engine
behind ``fastsess bench``) once, under ``benchmark.pedantic(rounds=1)``, and
stores what that function returns in ``benchmark.extra_info``: the same
workloads, loops and statistics as ``fastsess bench``, by construction.
pytest-benchmark's own columns (min, median, ...) time that one engine call as
a whole; the figures to read are in ``extra_info`` (kept by
``--benchmark-json``), which ``bench/report.py`` turns into tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from fastsess.benchmarks.report import FULL, environment

SIZES: tuple[int, ...] = tuple(FULL["sizes"])  # 1,000 / 100,000 / 1,000,000 entries
ROUNDS: int = int(FULL["rounds"])  # rounds of 1,000 operations per cache measurement

T = TypeVar("T")


def sized(value: object, size: int, id: str) -> Any:
    """A ``pytest.param`` for ``value`` carrying the ``bench_size`` mark (see conftest)."""
    return pytest.param(value, id=id, marks=pytest.mark.bench_size(size))


def run_once(benchmark: Any, fn: Callable[..., T], *args: Any, section: str, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` once under pytest-benchmark; its result goes to ``extra_info[section]``.

    Under ``--benchmark-disable`` the function still runs once (a smoke run).
    """
    result: T = benchmark.pedantic(fn, args=args, kwargs=kwargs, rounds=1, iterations=1)
    benchmark.extra_info["section"] = section
    benchmark.extra_info["result"] = result
    benchmark.extra_info["environment"] = environment("bench/ (pytest-benchmark, full sizes)")
    return result
