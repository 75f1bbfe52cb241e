"""``regenerate`` whose first attempt has an unknown outcome (issue: login logs the user out).

A TCP proxy (``tests/tcpproxy.py``) holds up either the move script itself (it times out
on the client and lands later) or its reply (the script ran; the client times out, or its
task is cancelled while waiting).  Whatever happened, ``session.id`` must afterwards name
the key that holds the session -- also once the held command has landed -- and the old
key must be gone.  Plain and clustered stores, sync and asyncio.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from fastsess import ClusterConfig, ClusteredRedisStore, RedisStore
from fastsess.asyncio import ClusteredRedisStore as AsyncClusteredRedisStore
from fastsess.asyncio import RedisStore as AsyncRedisStore

from ..tcpproxy import TcpProxy
from .conftest import FAST

KINDS = ["redis", "clustered"]


@pytest.fixture
def proxy(redis_server: Any) -> Iterator[TcpProxy]:
    p = TcpProxy(redis_server.port)
    yield p
    p.close()


def evalsha_calls(raw: redis.Redis) -> int:
    return int(raw.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def wait_for_evalsha(raw: redis.Redis, count: int) -> None:
    """Barrier: Redis has run ``count`` EVALSHA calls (the held one included)."""
    deadline = time.monotonic() + 10
    while evalsha_calls(raw) < count:
        assert time.monotonic() < deadline, "the held command never reached Redis"
        time.sleep(0.005)


def sync_store(kind: str, url: str, prefix: str, timeout: float) -> Any:
    if kind == "redis":
        return RedisStore(url=url, prefix=prefix, socket_timeout=timeout)
    config = ClusterConfig(channel=f"regen:{uuid.uuid4().hex[:8]}", **FAST)
    store = ClusteredRedisStore(url=url, prefix=prefix, socket_timeout=timeout, config=config)
    assert store.coordinator is not None and store.coordinator.wait_subscribed(5)
    return store


def async_store(kind: str, url: str, prefix: str, timeout: float) -> Any:
    if kind == "redis":
        return AsyncRedisStore(url=url, prefix=prefix, socket_timeout=timeout)
    config = ClusterConfig(channel=f"regen:{uuid.uuid4().hex[:8]}", **FAST)
    return AsyncClusteredRedisStore(url=url, prefix=prefix, socket_timeout=timeout, config=config)


def assert_moved(raw: redis.Redis, prefix: str, old_id: str, new_id: str) -> None:
    assert new_id != old_id, "the session went back to its old id"
    assert raw.exists(prefix + new_id) == 1, "the id the caller holds has no data"
    assert raw.exists(prefix + old_id) == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("held", ["request", "reply"])
def test_sync_regenerate_that_times_out_settles_on_the_new_id(
    proxy: TcpProxy, redis_client: redis.Redis, prefix: str, kind: str, held: str,
) -> None:
    store = sync_store(kind, proxy.url, prefix, timeout=0.5)
    try:
        s = store.create({"user": 42})
        assert store.save(s)
        store.regenerate(s)  # loads the move script into Redis
        old_id = s.id
        calls = evalsha_calls(redis_client)
        hold = proxy.hold_next(b"EVALSHA", seconds=1.5, reply=held == "reply")
        assert store.regenerate(s) is s  # the first attempt timed out; the settled outcome is a success
        assert hold.matched.is_set()
        assert_moved(redis_client, prefix, old_id, s.id)
        assert hold.released.wait(10)
        wait_for_evalsha(redis_client, calls + 2)  # the held attempt has run too (or was the one that ran)
        assert_moved(redis_client, prefix, old_id, s.id)
        loaded = store.load(s.id)
        assert loaded is not None and loaded["user"] == 42 and store.load(old_id) is None
    finally:
        store.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("held", ["request", "reply"])
async def test_async_regenerate_that_times_out_settles_on_the_new_id(
    proxy: TcpProxy, redis_client: redis.Redis, prefix: str, kind: str, held: str,
) -> None:
    store = async_store(kind, proxy.url, prefix, timeout=0.5)
    try:
        s = store.create({"user": 42})
        assert await store.save(s)
        await store.regenerate(s)
        old_id = s.id
        calls = evalsha_calls(redis_client)
        hold = proxy.hold_next(b"EVALSHA", seconds=1.5, reply=held == "reply")
        assert await store.regenerate(s) is s
        assert hold.matched.is_set()
        assert_moved(redis_client, prefix, old_id, s.id)
        await asyncio.to_thread(hold.released.wait, 10)
        await asyncio.to_thread(wait_for_evalsha, redis_client, calls + 2)
        assert_moved(redis_client, prefix, old_id, s.id)
        loaded = await store.load(s.id)
        assert loaded is not None and loaded["user"] == 42 and await store.load(old_id) is None
    finally:
        await store.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_async_regenerate_cancelled_after_the_script_ran_keeps_the_new_id(
    proxy: TcpProxy, redis_client: redis.Redis, prefix: str, kind: str,
) -> None:
    store = async_store(kind, proxy.url, prefix, timeout=5.0)
    try:
        s = store.create({"user": 42})
        assert await store.save(s)
        await store.regenerate(s)
        old_id = s.id
        hold = proxy.hold_next(b"EVALSHA", seconds=3.0, reply=True)
        task = asyncio.create_task(store.regenerate(s))
        deadline = time.monotonic() + 10
        while redis_client.exists(prefix + old_id):  # the script ran: the old key is gone
            assert time.monotonic() < deadline, "the move never ran"
            await asyncio.sleep(0.005)
        assert not task.done()  # still waiting for the held reply
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert hold.matched.is_set()
        assert_moved(redis_client, prefix, old_id, s.id)
        assert s.modified is False and s.new is False
        loaded = await store.load(s.id)
        assert loaded is not None and loaded["user"] == 42
    finally:
        await store.close()
