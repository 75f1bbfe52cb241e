"""What only the asyncio flavour has: coroutine methods, concurrency on one loop, the
listener's lazy start.  Written as native ``async def`` tests (pytest-asyncio), not
through the contract suite's sync facade, since the point here is how the stores
behave under ``await``.  (``async with`` is in the contract suite: the facade enters
an asyncio store with it.)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fastsess import ClusterConfig
from fastsess.asyncio import AsyncSessionStore, ClusteredRedisStore, MemoryStore, RedisStore

from .conftest import FAST, listener_threads


@pytest.fixture
async def made(redis_url: str, prefix: str) -> AsyncIterator[list[Any]]:
    stores: list[Any] = []
    yield stores
    await asyncio.gather(*(s.close() for s in stores))


def config(**changes: Any) -> ClusterConfig:
    settings: dict[str, Any] = {"node_id": f"a-{uuid.uuid4().hex[:8]}", "channel": f"aonly:{uuid.uuid4().hex[:10]}", **FAST}
    settings.update(changes)
    return ClusterConfig(**settings)


@pytest.mark.parametrize("kind", ["memory", "redis", "clustered"])
async def test_methods_are_coroutines(kind: str, redis_url: str, prefix: str, made: list[Any]) -> None:
    if kind == "memory":
        store: Any = MemoryStore()
    elif kind == "redis":
        store = RedisStore(url=redis_url, prefix=prefix)
    else:
        store = ClusteredRedisStore(url=redis_url, prefix=prefix, config=config())
    made.append(store)
    assert isinstance(store, AsyncSessionStore)
    for name in ("load", "save", "delete", "touch", "exists", "regenerate", "count", "clear", "close"):
        assert asyncio.iscoroutinefunction(getattr(store, name)), name
    assert not asyncio.iscoroutinefunction(store.create)  # no I/O: stays sync
    it = store.iter_ids()
    assert hasattr(it, "__aiter__") and hasattr(it, "__anext__")
    assert [i async for i in it] == []


@pytest.mark.parametrize("kind", ["redis", "clustered"])
async def test_concurrent_requests_on_one_loop(kind: str, redis_url: str, prefix: str, made: list[Any]) -> None:
    if kind == "redis":
        store: Any = RedisStore(url=redis_url, prefix=prefix)
    else:
        store = ClusteredRedisStore(url=redis_url, prefix=prefix, config=config())
    made.append(store)

    async def saved(i: int) -> Any:
        s = store.create({"i": i})
        assert await store.save(s) is True
        return s

    sessions = await asyncio.gather(*(saved(i) for i in range(50)))
    loaded = await asyncio.gather(*(store.load(s.id) for s in sessions))
    assert [x["i"] for x in loaded] == list(range(50))
    assert await store.count() == 50


async def test_listener_starts_lazily_and_close_ends_it(redis_url: str, prefix: str) -> None:
    before = len(listener_threads())
    # a long subscribe_timeout: the first operation's wait ends as soon as the listener subscribed
    store = ClusteredRedisStore(url=redis_url, prefix=prefix, config=config(subscribe_timeout=30.0))  # a constructor cannot await
    assert store.coordinator is not None and not store.coordinator.running
    s = store.create({"v": 1})
    assert await store.save(s)  # first use starts the listener and waits for its subscription
    assert store.coordinator.running and store.coordinator.subscribed
    assert await store.coordinator.wait_subscribed(5)
    assert len(listener_threads()) == before + 1
    assert (await store.load(s.id))["v"] == 1
    await store.close()
    assert not store.coordinator.running and not store.coordinator.subscribed
    assert len(listener_threads()) == before
    await store.close()  # twice is harmless
