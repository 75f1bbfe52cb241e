"""Session stores against Redis, and what clustering buys: the ``fastsess bench`` store and cluster sections.

* ``test_stores``: ``run_store_benchmarks``: every store candidate (raw
  redis-py + msgpack as the floor, fastsess ``RedisStore``,
  ``ClusteredRedisStore`` cached / miss / save, ``MemoryStore``, the asyncio
  twins, Flask-Session, Django's cache backend over django-redis,
  starsessions) loads and saves the same ~300-byte session
  (``fastsess.benchmarks.stores.SAMPLE_SESSION``), in interleaved rounds;
  network operations are timed one by one (p50, p99), in-memory ones in
  batches of 1,000.  The module docstring of ``fastsess.benchmarks.stores``
  says exactly what each candidate's load and save are.
* ``test_invalidation_latency``: ``measure_invalidation_latency``: a second OS
  process runs a clustered store; this one saves and waits until the other has
  evicted its copy (p50 / p99 / max ms).
* ``test_read_load``: ``measure_read_load``: a Zipf workload (90% reads) over
  10,000 sessions served without a local cache, by one node and by two; the
  GETs that reach Redis are counted on the server (``INFO commandstats``).

Sizes are those of a full ``fastsess bench`` run (``report.FULL``).
"""

from __future__ import annotations

from typing import Any

from fastsess.benchmarks.cluster import measure_invalidation_latency, measure_read_load
from fastsess.benchmarks.report import FULL
from fastsess.benchmarks.stores import run_store_benchmarks

from .support import run_once


def test_stores(benchmark: Any, redis_url: str) -> None:
    result = run_once(benchmark, run_store_benchmarks, redis_url, ops=FULL["store_ops"], section="stores")
    assert all(row["p50_us"] > 0 for row in result["rows"])


def test_invalidation_latency(benchmark: Any, redis_url: str) -> None:
    result = run_once(benchmark, measure_invalidation_latency, redis_url, FULL["latency_samples"], section="invalidation")
    assert result["samples"] == FULL["latency_samples"] and result["p50_ms"] <= result["p99_ms"]


def test_read_load(benchmark: Any, redis_url: str, redis_is_private: bool) -> None:
    result = run_once(
        benchmark, measure_read_load, redis_url, FULL["sessions"], FULL["ops"], private_server=redis_is_private, section="read_load"
    )
    assert result["without_cache"]["redis_gets"] == FULL["ops"] or not redis_is_private
    for n in (1, 2):
        assert 0 < result[f"nodes_{n}"]["redis_gets"] < FULL["ops"]
