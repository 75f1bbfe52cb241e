"""The miss path reads the value and its remaining TTL in one script call (a bare EVALSHA);
a server that lost its scripts (SCRIPT FLUSH, a restart) gets the script loaded again."""

from __future__ import annotations

import redis

from fastsess.asyncio import ClusteredRedisStore as AsyncClusteredRedisStore

from .conftest import Pair


def test_a_miss_after_script_flush_loads_the_script_again(pair: Pair) -> None:
    A, B, raw, _ = pair
    s = A.create({"v": 1})
    assert A.save(s)
    raw.script_flush()
    assert B.load(s.id)["v"] == 1  # NOSCRIPT, then loaded and run
    hits = B.cache_stats().hits
    assert B.load(s.id)["v"] == 1 and B.cache_stats().hits == hits + 1  # and cached
    assert 0 < raw.pttl(A.prefix + s.id)


async def test_async_miss_after_script_flush_loads_the_script_again(redis_url: str, redis_client: redis.Redis, prefix: str) -> None:
    store = AsyncClusteredRedisStore(url=redis_url, prefix=prefix)
    try:
        await store.start()
        s = store.create({"v": 1})
        assert await store.save(s)
        store.evict_from_cache(s.id)
        redis_client.script_flush()
        assert (await store.load(s.id))["v"] == 1
        hits = store.cache_stats().hits
        assert (await store.load(s.id))["v"] == 1 and store.cache_stats().hits == hits + 1
    finally:
        await store.close()
