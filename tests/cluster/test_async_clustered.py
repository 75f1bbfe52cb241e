"""The asyncio ``ClusteredRedisStore`` (``fastsess.asyncio``): the sync behaviours, awaited.

The listener is a task on the running loop, started on first use (or ``async with`` /
``await store.start()``) and stopped by ``await store.close()``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgpack
import pytest
import redis

from fastsess import ClusterConfig, Session
from fastsess import ClusteredRedisStore as SyncClusteredRedisStore
from fastsess.asyncio import ClusteredRedisStore, RedisStore
from fastsess.cluster import CLEARED, INVALIDATED, decode_message, encode_message
from fastsess.errors import SessionCorrupt, StoreUnavailable
from fastsess.stores.base import is_valid_session_id, new_session_id

from ..support import RedisServer, kill
from .conftest import FAST, RawSubscriber, listener_threads


async def until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        await asyncio.sleep(0.005)


def received(store: Any) -> int:
    return store.coordinator.stats.received


async def wait_received(store: Any, before: int, timeout: float = 5.0) -> None:
    await until(lambda: received(store) > before, timeout, what=f"an invalidation (received > {before})")


async def saved(store: Any, data: dict[str, Any] | None = None) -> Session:
    s = store.create({"v": 1} if data is None else data)
    assert await store.save(s) is True
    return s


def listener_tasks() -> list[Any]:
    """The live listener threads (the asyncio store listens in a thread, like the sync one)."""
    return listener_threads()


class AFactory:
    def __init__(self, channel: str, prefix: str) -> None:
        self.channel, self.prefix = channel, prefix
        self.stores: list[Any] = []

    def __call__(self, url: str | None = None, client: Any = None, *, name: str = "n", **config: Any) -> ClusteredRedisStore:
        settings: dict[str, Any] = {"node_id": f"{name}-{uuid.uuid4().hex[:8]}", "channel": self.channel, **FAST, **config}
        store = ClusteredRedisStore(client=client, url=url, config=ClusterConfig(**settings), prefix=self.prefix)
        self.stores.append(store)
        return store

    async def started(self, url: str, name: str = "n", **config: Any) -> ClusteredRedisStore:
        store = self(url, name=name, **config)
        await store.start()
        if store.coordinator is not None:
            assert await store.coordinator.wait_subscribed(5.0)
        return store


@pytest.fixture
async def amake(prefix: str) -> AsyncIterator[AFactory]:
    factory = AFactory(f"atest:{uuid.uuid4().hex[:10]}", prefix)
    yield factory
    await asyncio.gather(*(store.close() for store in factory.stores))


@pytest.fixture
async def apair(amake: AFactory, redis_url: str) -> tuple[ClusteredRedisStore, ClusteredRedisStore]:
    return await amake.started(redis_url, "A"), await amake.started(redis_url, "B")


async def behind_the_back(store: Any, raw: redis.Redis, sid: str, data: dict[str, Any]) -> None:
    ghost = Session(sid, data, ttl=store.ttl, new=False, version=99)
    raw.set(store.prefix + sid, store.serializer.encode(ghost), ex=store.ttl)


# --- API and lifecycle ---------------------------------------------------------------------


async def test_same_api_as_the_async_redis_store(apair: Any, redis_client: redis.Redis) -> None:
    A, B = apair
    assert isinstance(A, RedisStore)
    s = A.create({"user": 7})
    assert s.new and is_valid_session_id(s.id) and redis_client.dbsize() == 0
    assert await A.load(s.id) is None and not await A.exists(s.id)
    assert await A.save(s) is True and await A.save(s) is False
    for store in (A, B):
        got = await store.load(s.id)
        assert dict(got) == {"user": 7} and got.version == 1
    before = received(B)
    assert await A.touch(s.id, ttl=500) and 490 <= redis_client.ttl(A.prefix + s.id) <= 500
    await wait_received(B, before)  # the listener is a thread: wait for it, don't count on scheduling
    old, before = s.id, received(B)
    assert await A.regenerate(s) is s and s.id != old
    await wait_received(B, before)
    assert not await B.exists(old) and await B.load(old) is None and dict(await B.load(s.id)) == {"user": 7}
    ids = {s.id} | {(await saved(A, {"i": i})).id for i in range(5)}
    assert {i async for i in B.iter_ids()} == ids and await B.count() == 6
    assert await A.delete(s.id) is True and await A.delete(s.id) is False
    assert await B.clear() == 5 and await A.count() == 0
    for bad in ("short", "", None):
        assert await A.load(bad) is None and not await A.exists(bad) and not await A.delete(bad) and not await A.touch(bad)


async def test_listener_starts_lazily_and_close_ends_it(amake: AFactory, redis_url: str) -> None:
    before = len(listener_tasks())
    store = amake(redis_url)  # a constructor cannot await: nothing runs yet
    assert store.coordinator is not None and not store.coordinator.running
    s = await saved(store)  # first use starts the listener
    assert store.coordinator.running
    assert await store.coordinator.wait_subscribed(5)
    assert len(listener_tasks()) == before + 1
    assert (await store.load(s.id))["v"] == 1
    await store.close()
    assert not store.coordinator.running and not store.coordinator.subscribed
    assert len(listener_tasks()) == before
    await store.close()  # twice is harmless


async def test_async_with_starts_and_stops(amake: AFactory, redis_url: str) -> None:
    cfg = ClusterConfig(node_id="actx-" + uuid.uuid4().hex[:6], channel=amake.channel, **FAST)
    async with ClusteredRedisStore(url=redis_url, config=cfg, prefix=amake.prefix) as store:
        assert store.coordinator.running
        assert await store.coordinator.wait_subscribed(5)
        name = f"fastsess-listener-{cfg.node_id[:12]}"
        assert name in {t.name for t in listener_tasks()}
    assert not store.coordinator.running
    assert not [t for t in listener_tasks() if t.name == name]


async def test_same_node_id_is_a_label_not_the_identity(amake: AFactory, redis_url: str) -> None:
    """Two stores configured with the same node_id still invalidate each other: messages
    carry a random per-instance id."""
    a = await amake.started(redis_url, node_id="adup")
    b = await amake.started(redis_url, node_id="adup")
    assert a.coordinator.node_id == b.coordinator.node_id == "adup"
    assert a.coordinator.instance_id != b.coordinator.instance_id
    assert a.coordinator.instance_id.startswith("adup/")
    s = await saved(a)
    assert (await b.load(s.id))["v"] == 1 and (await b.load(s.id))["v"] == 1  # cached on b
    before = received(b)
    s["v"] = 2
    assert await a.save(s)
    await wait_received(b, before)
    assert (await b.load(s.id))["v"] == 2
    assert a.coordinator.stats.foreign_own_id == b.coordinator.stats.foreign_own_id == 0


async def test_corrupt_is_session_corrupt(apair: Any, redis_client: redis.Redis) -> None:
    A, B = apair
    sid = new_session_id()
    redis_client.set(B.prefix + sid, msgpack.packb({"user": 1}))
    with pytest.raises(SessionCorrupt):
        await B.load(sid)
    assert B.cache_stats().size == 0


# --- cache and propagation -----------------------------------------------------------------


async def test_cached_copy_and_stats(apair: Any, redis_client: redis.Redis) -> None:
    A, B = apair
    s = await saved(A, {"v": 1, "name": "x"})
    base = B.cache_stats()
    first = await B.load(s.id)
    first["name"] = "mutated"
    assert dict(await B.load(s.id)) == {"v": 1, "name": "x"}
    stats = B.cache_stats()
    assert stats.misses == base.misses + 1 and stats.hits == base.hits + 1 and stats.size == 1
    await behind_the_back(B, redis_client, s.id, {"v": "ghost"})
    assert (await B.load(s.id))["v"] == 1  # really from the cache
    assert B.evict_from_cache(s.id) is True and B.evict_from_cache(s.id) is False
    assert (await B.load(s.id))["v"] == "ghost"
    B.clear_local_cache()
    assert B.cache_stats().size == 0


async def test_write_delete_touch_clear_regenerate_propagate(apair: Any) -> None:
    A, B = apair
    s = await saved(A, {"v": 1})
    for version in range(2, 6):
        assert (await B.load(s.id))["v"] == version - 1
        before = received(B)
        s["v"] = version
        await A.save(s)
        while received(B) == before:  # until the message: old or new, never anything else
            assert (await B.load(s.id))["v"] in (version - 1, version)
            await asyncio.sleep(0)
        assert (await B.load(s.id))["v"] == version
    # touch
    before, size = received(B), B.cache_stats().size
    assert await A.touch(s.id)
    await wait_received(B, before)
    assert B.cache_stats().size == size - 1
    # regenerate
    assert await B.load(s.id) is not None
    old, before = s.id, received(B)
    await A.regenerate(s)
    await wait_received(B, before)
    assert await B.load(old) is None and (await B.load(s.id))["v"] == 5
    # delete
    before = received(B)
    await A.delete(s.id)
    await wait_received(B, before)
    assert await B.load(s.id) is None
    # clear
    ids = [(await saved(A, {"i": i})).id for i in range(4)]
    for sid in ids:
        await B.load(sid)
    assert B.cache_stats().size == 4
    before = received(B)
    assert await A.clear() == 4
    await wait_received(B, before)
    assert B.cache_stats().size == 0 and all([await B.load(sid) is None for sid in ids])


async def test_own_messages_are_ignored(apair: Any) -> None:
    A, B = apair
    s = await saved(A)
    own, got_a, got_b = A.coordinator.stats.ignored_own, received(A), received(B)
    s["x"] = 1
    await A.save(s)
    await A.delete(s.id)
    await until(lambda: A.coordinator.stats.ignored_own == own + 2 and received(B) == got_b + 2, 5)
    assert received(A) == got_a


async def test_disabled_and_cacheless(amake: AFactory, redis_url: str, redis_client: redis.Redis) -> None:
    sub = RawSubscriber(redis_url, amake.channel)
    try:
        off = amake(redis_url, enabled=False)
        assert off.coordinator is None
        s = await saved(off, {"v": 1})
        s["v"] = 2
        await off.save(s)
        await behind_the_back(off, redis_client, s.id, {"v": "raw"})
        assert (await off.load(s.id))["v"] == "raw" and off.cache_stats().size == 0
        await off.delete(s.id)
        await off.clear()
        assert sub.drain(0.2) == []  # nothing published
        assert not [t for t in listener_tasks() if off.config.node_id[:12] in t.name]

        nocache = await amake.started(redis_url, local_cache_enabled=False)
        s = await saved(nocache, {"v": 1})
        s["v"] = 2
        await nocache.save(s)
        msg = decode_message(sub.next())
        assert msg is not None and msg["t"] == INVALIDATED and msg["id"] == s.id
        await behind_the_back(nocache, redis_client, s.id, {"v": "raw"})
        assert (await nocache.load(s.id))["v"] == "raw"
        assert nocache.cache_stats().size == 0 and nocache.cache_stats().hits == 0
    finally:
        sub.close()


async def test_sync_and_async_nodes_interoperate(amake: AFactory, redis_url: str) -> None:
    """A deployment may mix sync and asyncio workers on one channel."""
    B = await amake.started(redis_url, "B")
    cfg = ClusterConfig(node_id="sync-" + uuid.uuid4().hex[:6], channel=amake.channel, **FAST)
    A = SyncClusteredRedisStore(url=redis_url, config=cfg, prefix=amake.prefix)
    try:
        assert await asyncio.to_thread(A.coordinator.wait_subscribed, 5)
        s = A.create({"v": 1})
        A.save(s)
        assert (await B.load(s.id))["v"] == 1
        before = received(B)
        s["v"] = 2
        A.save(s)
        await wait_received(B, before)
        assert (await B.load(s.id))["v"] == 2
        on_b = await B.load(s.id)
        assert A.load(s.id)["v"] == 2  # cached on A now
        got = received(A)
        on_b["v"] = 3
        await B.save(on_b)
        await until(lambda: received(A) > got, 5)
        assert A.load(s.id)["v"] == 3
    finally:
        await asyncio.to_thread(A.close)


# --- malformed input ---------------------------------------------------------------------


async def test_malformed_messages_leave_the_listener_working(apair: Any, redis_client: redis.Redis) -> None:
    A, B = apair
    s = await saved(A, {"v": 0})
    assert (await B.load(s.id))["v"] == 0
    shapes: list[Any] = [[1], "x", {}, {"t": "invalidated"}, {"t": "nope", "id": "x", "node": "n"},
                         {"t": "invalidated", "id": 1, "node": "n"}, {"t": "cleared", "node": "n", "v": "1"},
                         {"t": ["invalidated"], "id": "x", "node": "n"}]
    payloads = [b"\xc1garbage", b"\x00" * 5000, encode_message(CLEARED, None, "n") + b"!"] + [msgpack.packb(x) for x in shapes]
    pipe = redis_client.pipeline(transaction=False)
    for i in range(1000):
        pipe.publish(A.coordinator.channel, payloads[i % len(payloads)])
    pipe.execute()
    deadline = time.monotonic() + 8
    version = 0
    while True:
        before = received(B)
        version += 1
        s["v"] = version
        await A.save(s)
        try:
            await wait_received(B, before, timeout=0.5)
            break
        except pytest.fail.Exception:
            assert time.monotonic() < deadline, "B never applied an invalidation after the garbage"
    assert (await B.load(s.id))["v"] == version
    stats = B.coordinator.stats
    assert stats.malformed == 1000 and stats.reconnects == 0 and stats.subscribed, stats
    assert version == 1, "the first real invalidation after the garbage was lost"


# --- no stale re-fill ----------------------------------------------------------------------


def intercept_get(store: Any, during: Callable[[], Awaitable[None]]) -> None:
    """Make the next miss read of ``store`` (its GET + PTTL script) run ``during()`` before returning."""
    real_read = store._get_with_pttl
    done: list[bool] = []

    async def read(*args: Any, **kwargs: Any) -> Any:
        reply = await real_read(*args, **kwargs)
        if not done:
            done.append(True)
            await during()
        return reply

    store._get_with_pttl = read


@pytest.mark.parametrize("action", ["save", "delete", "clear"])
async def test_invalidation_during_the_read_voids_the_fill(apair: Any, action: str) -> None:
    A, B = apair
    s = await saved(A, {"v": "old"})

    async def during() -> None:
        before = received(B)
        if action == "save":
            s["v"] = "new"
            await A.save(s)
        elif action == "delete":
            await A.delete(s.id)
        else:
            await A.clear()
        await wait_received(B, before)

    intercept_get(B, during)
    assert (await B.load(s.id))["v"] == "old"
    assert B.cache_stats().size == 0, "the value read before the invalidation was cached"
    expected = "new" if action == "save" else None
    got = await B.load(s.id)
    assert (None if got is None else got["v"]) == expected


async def test_local_write_does_not_overwrite_a_newer_invalidation(apair: Any) -> None:
    A, B = apair
    s = await saved(A, {"v": 1})
    real = A._set_publish
    done: list[bool] = []

    async def set_publish(*args: Any, **kwargs: Any) -> Any:
        result = await real(*args, **kwargs)
        if not done:
            done.append(True)
            before = received(A)
            on_b = await B.load(s.id)
            on_b["v"] = 3
            assert await B.save(on_b)
            await wait_received(A, before)
        return result

    A._set_publish = set_publish
    s["v"] = 2
    assert await A.save(s)
    assert (await B.load(s.id))["v"] == 3
    assert (await A.load(s.id))["v"] == 3, "A serves its own older write after B's newer write was announced"


async def test_concurrent_loads_while_a_writes(apair: Any) -> None:
    A, B = apair
    s = await saved(A, {"v": 0})
    base = received(B)
    writes = 150
    stop = asyncio.Event()
    errors: list[str] = []

    async def reader() -> None:
        while not stop.is_set():
            heard = received(B) - base
            got = await B.load(s.id)
            if got is None or got["v"] < heard:
                errors.append(f"load after invalidation {heard} returned {got and got['v']}")
            await asyncio.sleep(0)

    readers = [asyncio.create_task(reader()) for _ in range(3)]
    try:
        for version in range(1, writes + 1):
            s["v"] = version
            await A.save(s)
        await until(lambda: received(B) - base >= writes, 10)
    finally:
        stop.set()
        await asyncio.gather(*readers)
    assert not errors, errors[:5]
    assert (await B.load(s.id))["v"] == writes


# --- failures --------------------------------------------------------------------------------


async def test_kill_fails_closed_and_recovers(amake: AFactory, redis_server_factory: Any) -> None:
    server: RedisServer = redis_server_factory()
    A, B = await amake.started(server.url, "A"), await amake.started(server.url, "B")
    s = await saved(A, {"v": 1})
    assert (await B.load(s.id))["v"] == 1 and (await B.load(s.id))["v"] == 1
    kill(server)
    await until(lambda: not B.coordinator.subscribed, 5, what="the drop")
    with pytest.raises(StoreUnavailable):
        await B.load(s.id)  # cached, but fail closed
    s["v"] = 2
    with pytest.raises(StoreUnavailable):
        await A.save(s)
    with pytest.raises(StoreUnavailable):
        await B.delete(s.id)
    server.start()
    for store in (A, B):
        await until(lambda: store.coordinator.subscribed, 5, what="resubscription")
        assert store.coordinator.stats.reconnects >= 1
    assert B.cache_stats().size == 0
    assert await B.load(s.id) is None
    s2 = await saved(A, {"v": "a"})
    assert (await B.load(s2.id))["v"] == "a"
    before = received(B)
    s2["v"] = "b"
    await A.save(s2)
    await wait_received(B, before)
    assert (await B.load(s2.id))["v"] == "b"
    await B.close()
    await A.close()
    assert not [t for t in listener_tasks() if t.name.endswith((A.config.node_id[:12], B.config.node_id[:12]))]


async def test_stale_if_error(amake: AFactory, redis_server_factory: Any) -> None:
    server: RedisServer = redis_server_factory()
    A = await amake.started(server.url, "A", stale_if_error=True)
    B = await amake.started(server.url, "B", stale_if_error=True)
    s = await saved(A, {"v": 1})
    other = await saved(A, {"v": 2})
    assert (await B.load(s.id))["v"] == 1
    kill(server)
    await until(lambda: not B.coordinator.subscribed, 5)
    assert (await B.load(s.id))["v"] == 1  # opted in: served stale
    with pytest.raises(StoreUnavailable):
        await B.load(other.id)
    server.start()
    await until(lambda: B.coordinator.subscribed, 5)
    assert await B.load(s.id) is None


async def test_close_while_redis_is_down_is_prompt(amake: AFactory, redis_server_factory: Any) -> None:
    server: RedisServer = redis_server_factory()
    store = await amake.started(server.url)
    kill(server)
    await until(lambda: not store.coordinator.subscribed, 5)
    t0 = time.monotonic()
    await store.close()
    assert time.monotonic() - t0 < 2
    assert not store.coordinator.running
