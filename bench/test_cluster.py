"""What the clustered store buys: cached load vs miss vs raw redis-py, invalidation latency, Redis read load.

* ``cluster-load``: ``ClusteredRedisStore.load`` of a session
  - ``cached``: answered from this node's cache (DESIGN.md: under 1 us p50,
    over 80x faster than a loopback GET), 1,000 loads per round;
  - ``miss``: the entry is evicted first (``evict_from_cache``, inside the
    timed loop: ~0.4 us), so every load is GET + decode + cache fill;
  - ``raw``: ``redis.Redis.get`` + ``msgpack.unpackb`` of the same payload.
  Redis rows time ``REDIS_BATCH`` round trips per round.
* ``cluster-save``: ``save`` of a modified session (SET XX + PUBLISH in one
  Lua script; this node's listener receives its own echo and ignores it)
  against raw ``SET ... EX``.
* ``invalidation``: a second OS process runs a clustered store; this one
  saves and waits until the other has applied the invalidation.  One
  benchmark round = ``LATENCY_SAMPLES`` saves; p50/p99 in ms go to
  ``extra_info`` (``fastsess.benchmarks.cluster.measure_invalidation_latency``).
* ``read-load``: a Zipf-like workload (90% reads, 10% read-modify-writes)
  over 10,000 sessions served by 1 and by 2 nodes; ``extra_info`` holds the
  GETs that reached Redis per 1,000 reads (``measure_read_load``; without a
  local cache that is 1,000).

Like ``test_stores.py``, run it pinned to one CPU (``taskset -c 0``) for
stable round trips.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import redis

from fastsess import ClusterConfig, ClusteredRedisStore
from fastsess.benchmarks.cluster import measure_invalidation_latency, measure_read_load

from .support import BATCH, record_per_op
from .test_stores import REDIS_BATCH, SESSION_DATA, TTL

LATENCY_SAMPLES = 300


@pytest.fixture(scope="module")
def store(redis_url: str, redis_prefix: str) -> Iterator[ClusteredRedisStore]:
    config = ClusterConfig(channel=redis_prefix + "invalidate")
    with ClusteredRedisStore(url=redis_url, prefix=redis_prefix + "cl:", ttl=TTL, config=config) as s:
        assert s.coordinator is not None and s.coordinator.wait_subscribed(5)
        yield s


@pytest.fixture(scope="module")
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_cached_load(benchmark: Any, store: ClusteredRedisStore) -> None:
    session = store.create(SESSION_DATA)
    store.save(session)
    sid = session.id
    assert store.load(sid) == SESSION_DATA
    load = store.load

    def run() -> None:
        for _ in range(BATCH):
            load(sid)

    benchmark.group = "cluster-load"
    hits = store.cache_stats().hits
    benchmark(run)
    assert store.cache_stats().hits > hits  # really answered from the cache
    record_per_op(benchmark, BATCH, candidate="cached", workload="cluster-load")


def test_miss_load(benchmark: Any, store: ClusteredRedisStore) -> None:
    session = store.create(SESSION_DATA)
    store.save(session)
    sid = session.id
    load, evict = store.load, store.evict_from_cache

    def run() -> None:
        for _ in range(REDIS_BATCH):
            evict(sid)
            load(sid)

    benchmark.group = "cluster-load"
    misses = store.cache_stats().misses
    benchmark(run)
    assert store.cache_stats().misses > misses
    record_per_op(benchmark, REDIS_BATCH, candidate="miss", workload="cluster-load")


def test_raw_load(benchmark: Any, raw: redis.Redis, redis_prefix: str) -> None:
    key = redis_prefix + "cl-raw"
    raw.set(key, msgpack.packb(SESSION_DATA), ex=TTL)
    get, unpackb = raw.get, msgpack.unpackb

    def run() -> None:
        for _ in range(REDIS_BATCH):
            unpackb(get(key))

    benchmark.group = "cluster-load"
    benchmark(run)
    record_per_op(benchmark, REDIS_BATCH, candidate="raw", workload="cluster-load")


def test_clustered_save(benchmark: Any, store: ClusteredRedisStore) -> None:
    session = store.create(SESSION_DATA)
    store.save(session)
    counter = iter(range(10**9))
    published = store.coordinator.stats.published  # type: ignore[union-attr]

    def run() -> None:
        for _ in range(REDIS_BATCH):
            session["n"] = next(counter)
            store.save(session)

    benchmark.group = "cluster-save"
    benchmark(run)
    assert store.coordinator.stats.published > published  # type: ignore[union-attr]
    record_per_op(benchmark, REDIS_BATCH, candidate="fastsess (SET+PUBLISH)", workload="cluster-save")


def test_raw_save(benchmark: Any, raw: redis.Redis, redis_prefix: str) -> None:
    key = redis_prefix + "cl-raw-save"
    counter = iter(range(10**9))

    def run() -> None:
        for _ in range(REDIS_BATCH):
            raw.set(key, msgpack.packb({**SESSION_DATA, "n": next(counter)}), ex=TTL)

    benchmark.group = "cluster-save"
    benchmark(run)
    record_per_op(benchmark, REDIS_BATCH, candidate="raw SET EX", workload="cluster-save")


def test_invalidation_latency(benchmark: Any, redis_url: str) -> None:
    result: dict[str, Any] = {}

    def run() -> None:
        result.update(measure_invalidation_latency(redis_url, LATENCY_SAMPLES))

    benchmark.group = "invalidation"
    benchmark.pedantic(run, rounds=1, iterations=1)
    assert result["samples"] == LATENCY_SAMPLES and result["p50_ms"] <= result["p99_ms"]
    benchmark.extra_info.update({f"invalidation_{k}": round(v, 4) for k, v in result.items()})


def test_read_load(benchmark: Any, redis_url: str) -> None:
    result: dict[str, Any] = {}

    def run() -> None:
        result.update(measure_read_load(redis_url, sessions=10_000, ops=100_000))

    benchmark.group = "read-load"
    benchmark.pedantic(run, rounds=1, iterations=1)
    for n in (1, 2):
        row = result[f"nodes_{n}"]
        assert 0 < row["redis_gets_per_1000"] < 1000
        benchmark.extra_info[f"gets_per_1000_reads_{n}_nodes"] = round(row["redis_gets_per_1000"], 1)
        benchmark.extra_info[f"served_locally_{n}_nodes"] = round(row["served_locally"], 4)
