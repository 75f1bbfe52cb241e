"""The ``clock=`` seam: refresh decisions and timestamps (and MemoryStore expiry) follow it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

import fastsess.asyncio
from fastsess import ClusterConfig, ClusteredRedisStore, MemoryStore, RedisStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "redis", "clustered"])
def store(request: pytest.FixtureRequest, clock: FakeClock, redis_url: str, prefix: str) -> Iterator[object]:
    if request.param == "memory":
        made: object = MemoryStore(ttl=100, clock=clock)
    elif request.param == "redis":
        made = RedisStore(url=redis_url, prefix=prefix, ttl=100, clock=clock)
    else:
        made = ClusteredRedisStore(url=redis_url, prefix=prefix, ttl=100, clock=clock, config=ClusterConfig(subscribe_timeout=5.0))
    yield made
    made.close()  # type: ignore[attr-defined]


def test_refresh_is_due_when_the_clock_says_so(store: RedisStore, clock: FakeClock) -> None:
    s = store.create({"a": 1})
    assert s.created_at == s.refreshed_at == clock.now
    assert store.save(s) is True
    loaded = store.load(s.id)
    assert loaded is not None and loaded.refreshed_at == clock.now
    clock.now += 49  # 49 s of 100: refresh not due (refresh_fraction 0.5)
    assert store.save(loaded) is False
    clock.now += 1  # 50 s: due
    assert store.save(loaded) is True
    assert loaded.refreshed_at == clock.now and loaded.version == 2


def test_memory_store_expires_on_its_clock(clock: FakeClock) -> None:
    store = MemoryStore(ttl=100, clock=clock)
    s = store.create({"a": 1})
    store.save(s)
    clock.now += 99
    assert store.exists(s.id)
    clock.now += 1.5
    assert not store.exists(s.id) and store.load(s.id) is None


def test_asyncio_stores_take_the_clock(clock: FakeClock, redis_url: str, prefix: str) -> None:
    async def run() -> None:
        for store in (fastsess.asyncio.MemoryStore(ttl=100, clock=clock), fastsess.asyncio.RedisStore(url=redis_url, prefix=prefix, ttl=100, clock=clock)):
            s = store.create({"a": 1})
            assert s.created_at == clock.now and await store.save(s)
            clock.now += 50
            loaded = await store.load(s.id)
            assert loaded is not None and await store.save(loaded) is True and loaded.refreshed_at == clock.now
            await store.close()

    asyncio.run(run())
