"""The local cache is bounded in bytes, not only in entries (``local_cache_max_bytes``),
and never holds a session larger than ``local_cache_max_item_bytes`` (serialized sizes)."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
import redis

from fastsess import ClusterConfig
from fastsess.asyncio import ClusteredRedisStore as AsyncClusteredRedisStore
from fastsess.cluster import CoherentCache
from fastsess.errors import ConfigError

from .conftest import FAST, StoreFactory

KIB = 1024
LIMITS = {"local_cache_max_bytes": 1000 * KIB, "local_cache_max_item_bytes": 200 * KIB}


def blob(kib: int) -> str:
    return os.urandom(kib * KIB // 2).hex()  # incompressible, kib KiB of text


def held_bytes(cache: CoherentCache, raw: redis.Redis, prefix: str) -> int:
    """The serialized size, as stored in Redis, of every session the cache really holds."""
    return sum(len(raw.get(prefix + sid) or b"") for sid in list(cache.cache))


def test_config_fields_defaults_validation_and_env() -> None:
    c = ClusterConfig()
    assert c.local_cache_max_bytes == 64 * 1024 * 1024 and c.local_cache_max_item_bytes == 256 * 1024
    for field in ("local_cache_max_bytes", "local_cache_max_item_bytes"):
        for bad in (0, -1, 1.5, True, "10"):
            with pytest.raises(ConfigError, match=field):
                ClusterConfig(**{field: bad})
    env = {"FASTSESS_LOCAL_CACHE_MAX_BYTES": "1_000_000", "FASTSESS_LOCAL_CACHE_MAX_ITEM_BYTES": "4096"}
    c = ClusterConfig.from_env(env)
    assert (c.local_cache_max_bytes, c.local_cache_max_item_bytes) == (1_000_000, 4096)
    with pytest.raises(ConfigError, match="FASTSESS_LOCAL_CACHE_MAX_BYTES"):
        ClusterConfig.from_env({"FASTSESS_LOCAL_CACHE_MAX_BYTES": "lots"})


def test_coherent_cache_accounting() -> None:
    cache = CoherentCache(100, 60.0, max_bytes=1000, max_item_bytes=300)
    for i in range(10):
        assert cache.fill(f"s{i}", i, cache.fill_token(f"s{i}"), 60.0, 200)
    assert cache.cached_bytes <= 1000 and len(cache) == 5  # the oldest writes made room
    assert [cache.get(f"s{i}") for i in range(10)] == [None] * 5 + [5, 6, 7, 8, 9]
    cache.put_if("s9", "nine", cache.fill_token("s9"), 60.0, 100)  # replaced: charged once, new size
    assert cache.cached_bytes == 900
    assert not cache.fill("big", "x", cache.fill_token("big"), 60.0, 301)  # larger than an item may be
    assert cache.get("big") is None and cache.cached_bytes == 900
    cache.put_if("s8", "huge", cache.fill_token("s8"), 60.0, 5000)  # a write too large to cache drops the old copy
    assert cache.get("s8") is None and cache.cached_bytes == 700
    cache.invalidate("s7")
    cache.mark_uncertain("s6")
    assert cache.cached_bytes == 300 and len(cache) == 2
    cache.flush()
    assert cache.cached_bytes == 0 and len(cache) == 0


def test_entries_dropped_by_the_lru_stay_charged_only_until_they_reach_the_front() -> None:
    cache = CoherentCache(4, 60.0, max_bytes=10_000, max_item_bytes=1000)
    for i in range(20):
        cache.fill(f"s{i}", i, cache.fill_token(f"s{i}"), 60.0, 100)
        assert len(cache) <= 4 and cache.cached_bytes <= 8 * 100  # at most 2 x max_size entries charged


def test_sync_store_holds_at_most_max_bytes(make_store: StoreFactory, redis_url: str, redis_client: redis.Redis) -> None:
    A = make_store(redis_url, name="A")
    B = make_store(redis_url, name="B", **LIMITS)
    for store in (A, B):
        assert store.coordinator is not None and store.coordinator.wait_subscribed(5)
    ids = []
    for _ in range(30):  # 30 x ~100 KiB: three times what B may hold
        s = A.create({"blob": blob(100)})
        assert A.save(s)
        ids.append(s.id)
    for sid in ids:
        loaded = B.load(sid)
        assert loaded is not None and len(loaded["blob"]) == 100 * KIB
    assert B._cache is not None
    assert 5 <= len(B._cache) <= 10
    assert held_bytes(B._cache, redis_client, make_store.prefix) <= B.cache_bytes() <= 1000 * KIB
    hits = B.cache_stats().hits
    assert B.load(ids[-1]) is not None and B.cache_stats().hits == hits + 1  # recent ones are served from the cache

    big = A.create({"blob": blob(300)})  # larger than local_cache_max_item_bytes
    assert A.save(big)
    misses = B.cache_stats().misses
    assert B.load(big.id) is not None and B.load(big.id) is not None
    assert B.cache_stats().misses == misses + 2  # never cached
    assert big.id not in B._cache.cache
    # Own writes obey the same bound.
    own = B.create({"blob": blob(300)})
    assert B.save(own) and own.id not in B._cache.cache
    own["blob"] = blob(300)
    assert B.save(own) and own.id not in B._cache.cache
    assert B.cache_bytes() <= 1000 * KIB


async def test_async_store_holds_at_most_max_bytes(redis_url: str, redis_client: redis.Redis, prefix: str) -> None:
    channel = f"bytes:{uuid.uuid4().hex[:8]}"

    def config(**extra: Any) -> ClusterConfig:
        return ClusterConfig(channel=channel, **FAST, **extra)

    A = AsyncClusteredRedisStore(url=redis_url, prefix=prefix, config=config())
    B = AsyncClusteredRedisStore(url=redis_url, prefix=prefix, config=config(**LIMITS))
    try:
        await A.start()
        await B.start()
        ids = []
        for _ in range(30):
            s = A.create({"blob": blob(100)})
            assert await A.save(s)
            ids.append(s.id)
        for sid in ids:
            assert (await B.load(sid)) is not None
        assert B._cache is not None
        assert 5 <= len(B._cache) <= 10
        assert held_bytes(B._cache, redis_client, prefix) <= B.cache_bytes() <= 1000 * KIB
        big = A.create({"blob": blob(300)})
        assert await A.save(big)
        misses = B.cache_stats().misses
        assert (await B.load(big.id)) is not None and (await B.load(big.id)) is not None
        assert B.cache_stats().misses == misses + 2
    finally:
        await A.close()
        await B.close()

