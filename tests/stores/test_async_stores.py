"""The asyncio stores (``fastsess.asyncio``): the same contract as the sync ones, awaited.

Every test taking ``abackend`` runs against ``fastsess.asyncio.MemoryStore`` and
``fastsess.asyncio.RedisStore``; the Redis-only tests (failures, reconnection,
client ownership) use private servers from ``redis_server_factory``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from fastsess import Session
from fastsess.asyncio import AsyncSessionStore, MemoryStore, RedisStore
from fastsess.cache import LocalCache
from fastsess.errors import ConfigError, SessionCorrupt, StoreUnavailable
from fastsess.server import RedisServer
from fastsess.stores.base import DEFAULT_PREFIX, DEFAULT_TTL, is_valid_session_id, new_session_id

from .conftest import FakeClock, RedisInspection, pool_connections

DATA: dict[str, Any] = {
    "user_id": 42,
    "name": "Zoë",
    "roles": ["admin"],
    "prefs": {"theme": "dark"},
    "token": b"\x00\xffsecret",
    "login_at": dt.datetime(2024, 5, 1, 8, 30, tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30))),
    "naive": dt.datetime(2024, 5, 1, 8, 30),
    "day": dt.date(2024, 5, 1),
    "none": None,
}


async def saved(store: AsyncSessionStore, data: dict[str, Any] | None = None, **kw: Any) -> Session:
    s = store.create(dict(DATA if data is None else data), **kw)
    assert await store.save(s) is True
    return s


async def ids_of(store: AsyncSessionStore) -> list[str]:
    return [i async for i in store.iter_ids()]


def is_connected(client: aredis.Redis) -> bool:
    pool = client.connection_pool
    return any(c.is_connected for c in pool_connections(pool))


# --- backends ---------------------------------------------------------------------------------


class ABackend:
    kind: str

    def __init__(self) -> None:
        self.stores: list[AsyncSessionStore] = []

    async def aclose(self) -> None:
        for store in self.stores:
            await store.close()


class AMemory(ABackend):
    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()

    def make(self, **kwargs: Any) -> MemoryStore:
        store = MemoryStore(**kwargs)
        inner = store._store._sessions
        store._store._sessions = LocalCache(max_size=inner.max_size, ttl=inner.ttl, timer=self.clock)
        self.stores.append(store)
        return store

    def raw_count(self, store: MemoryStore) -> int:
        return len(store._store._sessions)

    def write_marker(self, store: MemoryStore, sid: str) -> Any:
        return store._store._sessions.get(sid)

    def wrote_since(self, store: MemoryStore, sid: str, marker: Any) -> bool:
        return store._store._sessions.get(sid) is not marker

    async def assert_ttl(self, store: MemoryStore, sid: str, seconds: int) -> None:
        assert await store.exists(sid)
        self.clock.advance(seconds - 1.0)
        assert await store.exists(sid)
        self.clock.advance(1.5)
        assert not await store.exists(sid)

    async def plant_foreign(self) -> Callable[[], Any]:
        other = MemoryStore()
        s = other.create({"foreign": True})
        await other.save(s)

        async def alive() -> bool:
            return await other.exists(s.id) and await other.count() == 1

        return alive


class ARedis(RedisInspection, ABackend):
    kind = "redis"

    def __init__(self, url: str, client: redis.Redis, prefix: str) -> None:
        super().__init__()
        self.url, self.client, self.prefix = url, client, prefix

    def make(self, **kwargs: Any) -> RedisStore:
        kwargs.setdefault("prefix", self.prefix)
        store = RedisStore(url=self.url, **kwargs)
        self.stores.append(store)
        return store

    async def assert_ttl(self, store: RedisStore, sid: str, seconds: int) -> None:
        ttl = self.client.ttl(store.prefix + sid)
        assert seconds - 2 <= ttl <= seconds, f"TTL in Redis is {ttl}, expected ~{seconds}"

    async def plant_foreign(self) -> Callable[[], Any]:
        foreign = {
            "other:" + new_session_id(): b"x",
            self.prefix + "sub:" + new_session_id(): b"y",
            self.prefix + "meta": b"z",
            new_session_id(): b"v",
        }
        for k, v in foreign.items():
            self.client.set(k, v)

        async def alive() -> bool:
            return all(self.client.get(k) == v for k, v in foreign.items())

        return alive


@pytest.fixture(params=["memory", "redis"])
async def abackend(request: pytest.FixtureRequest) -> AsyncIterator[ABackend]:
    if request.param == "memory":
        b: ABackend = AMemory()
    else:
        b = ARedis(
            request.getfixturevalue("redis_url"),
            request.getfixturevalue("redis_client"),
            request.getfixturevalue("prefix"),
        )
    yield b
    await b.aclose()


# --- the contract ---------------------------------------------------------------------------


async def test_methods_are_coroutines(abackend: ABackend) -> None:
    store = abackend.make()
    assert isinstance(store, AsyncSessionStore)
    for name in ("load", "save", "delete", "touch", "exists", "regenerate", "count", "clear", "close"):
        assert asyncio.iscoroutinefunction(getattr(store, name)), name
    assert not asyncio.iscoroutinefunction(store.create)  # no I/O: stays sync
    it = store.iter_ids()
    assert hasattr(it, "__aiter__") and hasattr(it, "__anext__")
    assert [i async for i in it] == []


async def test_defaults(abackend: ABackend) -> None:
    store = abackend.make() if abackend.kind == "memory" else abackend.make(prefix=DEFAULT_PREFIX)
    assert store.ttl == DEFAULT_TTL and store.prefix == DEFAULT_PREFIX and store.refresh_fraction == 0.5


async def test_create_writes_nothing(abackend: ABackend) -> None:
    store = abackend.make()
    empty, full = store.create(), store.create({"a": 1})
    assert abackend.raw_count(store) == 0
    assert empty.new and not empty.modified and full.modified
    assert is_valid_session_id(empty.id) and empty.id != full.id
    assert await store.load(full.id) is None
    assert await store.exists(full.id) is False
    assert await store.count() == 0
    assert await store.save(empty) is False  # anonymous: never written
    assert abackend.raw_count(store) == 0


async def test_first_save_load_round_trip(abackend: ABackend) -> None:
    store = abackend.make(ttl=300)
    s = await saved(store)
    assert s.new is False and s.modified is False and s.version == 1
    assert abackend.raw_count(store) == 1
    loaded = await store.load(s.id)
    assert loaded.new is False and loaded.modified is False and loaded.accessed is False
    assert loaded is not s and loaded == s
    assert loaded.data == DATA
    assert loaded["login_at"].utcoffset() == dt.timedelta(hours=-3, minutes=-30)
    assert loaded["naive"].tzinfo is None
    assert (loaded.version, loaded.created_at, loaded.refreshed_at, loaded.ttl) == (1, s.created_at, s.refreshed_at, 300)
    await abackend.assert_ttl(store, s.id, 300)


async def test_session_ttl_is_used(abackend: ABackend) -> None:
    store = abackend.make(ttl=300)
    s = await saved(store, ttl=40)
    assert (await store.load(s.id)).ttl == 40
    await abackend.assert_ttl(store, s.id, 40)


async def test_loads_are_independent(abackend: ABackend) -> None:
    store = abackend.make()
    s = await saved(store, {"a": 1})
    a, b = await store.load(s.id), await store.load(s.id)
    a["a"] = 2
    assert b["a"] == 1 and (await store.load(s.id))["a"] == 1


async def test_unmodified_save_does_not_write(abackend: ABackend) -> None:
    store = abackend.make()
    s = await saved(store)
    loaded = await store.load(s.id)
    _ = loaded["user_id"], list(loaded)
    marker = abackend.write_marker(store, s.id)
    assert await store.save(loaded) is False
    assert await store.save(s) is False
    assert not abackend.wrote_since(store, s.id, marker)
    loaded["user_id"] = 1
    assert await store.save(loaded) is True
    assert abackend.wrote_since(store, s.id, marker)
    assert loaded.version == 2 and (await store.load(s.id)).version == 2


async def test_refresh_due_writes(abackend: ABackend) -> None:
    store = abackend.make(ttl=100, refresh_fraction=0.5)
    s = await saved(store)
    if isinstance(abackend, ARedis):
        abackend.client.expire(store.prefix + s.id, 10)
    loaded = await store.load(s.id)
    loaded.refreshed_at -= 45
    assert await store.save(loaded) is False
    loaded.refreshed_at -= 6
    assert await store.save(loaded) is True
    assert loaded.version == 2
    assert (await store.load(s.id)).data == DATA
    await abackend.assert_ttl(store, s.id, 100)


async def test_refresh_in_real_time(abackend: ABackend) -> None:
    store = abackend.make(ttl=2, refresh_fraction=0.25)
    s = await saved(store, {"a": 1})
    assert await store.save(s) is False
    await asyncio.sleep(0.55)
    assert await store.save(s) is True


async def test_no_resurrection(abackend: ABackend) -> None:
    store = abackend.make()
    s = await saved(store)
    loaded = await store.load(s.id)
    assert await store.delete(s.id) is True
    loaded["x"] = 1
    assert await store.save(loaded) is False
    assert loaded.version == 1
    assert await store.exists(s.id) is False
    assert abackend.raw_count(store) == 0


async def test_new_session_never_overwrites(abackend: ABackend) -> None:
    store = abackend.make()
    first = await saved(store, {"owner": "first"})
    intruder = store.create({"owner": "second"})
    intruder.id = first.id
    assert await store.save(intruder) is True
    assert intruder.id != first.id
    assert (await store.load(first.id))["owner"] == "first"


async def test_delete_exists_touch(abackend: ABackend) -> None:
    store = abackend.make(ttl=100)
    s = await saved(store, ttl=1000)
    assert await store.exists(s.id) is True
    assert await store.touch(new_session_id()) is False
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError):
            await store.touch(s.id, bad)
    assert await store.touch(s.id) is True  # the store's default, not the session's
    await abackend.assert_ttl(store, s.id, 100)
    t = await saved(store)
    assert await store.touch(t.id, 33) is True
    assert (await store.load(t.id)).version == 1
    await abackend.assert_ttl(store, t.id, 33)
    u = await saved(store)
    assert await store.delete(u.id) is True
    assert await store.delete(u.id) is False
    assert await store.exists(u.id) is False and await store.load(u.id) is None


async def test_regenerate(abackend: ABackend) -> None:
    store = abackend.make()
    s = await saved(store)
    s["user_id"] = 7  # pending change travels along
    old = s.id
    assert await store.regenerate(s) is s
    assert s.id != old and is_valid_session_id(s.id)
    assert await store.exists(old) is False
    loaded = await store.load(s.id)
    assert loaded.data == {**DATA, "user_id": 7} and loaded.version == s.version
    assert s.modified is False and s.new is False
    assert abackend.raw_count(store) == 1
    # an unsaved session just gets a new id
    u = store.create({"a": 1})
    old = u.id
    marker = abackend.write_marker(store, old)
    await store.regenerate(u)
    assert u.id != old and u.new is True
    assert not abackend.wrote_since(store, old, marker)
    assert abackend.raw_count(store) == 1


async def test_iter_ids_count_clear_scoped(abackend: ABackend) -> None:
    store = abackend.make()
    alive = await abackend.plant_foreign()
    assert await store.clear() == 0
    ids = {(await saved(store, {"i": i})).id for i in range(4)}
    assert set(await ids_of(store)) == ids
    assert await store.count() == 4
    assert await store.clear() == 4
    assert await store.count() == 0 and await ids_of(store) == []
    assert await alive()


async def test_non_ascii_prefix(abackend: ABackend) -> None:
    """BUG (asyncio/stores/redis.py ``iter_ids``: ``start = len(self.prefix)`` counts characters,
    keys are UTF-8 bytes): with a non-ASCII prefix iter_ids/count see nothing, clear deletes nothing."""
    store = abackend.make(prefix="sessão:")
    ids = {(await saved(store, {"i": i})).id for i in range(3)}
    assert set(await ids_of(store)) == ids
    assert await store.count() == 3
    assert await store.clear() == 3
    assert not [i for i in ids if await store.exists(i)]


async def test_clear_many(abackend: ABackend) -> None:
    store = abackend.make()
    n = 2100
    if isinstance(abackend, ARedis):
        payload = store.serializer.encode(store.create({"x": 1}))
        pipe = abackend.client.pipeline(transaction=False)
        ids = [new_session_id() for _ in range(n)]
        for sid in ids:
            pipe.set(store.prefix + sid, payload, ex=600)
        pipe.execute()
    else:
        ids = [(await saved(store, {"x": 1})).id for _ in range(n)]
    seen = await ids_of(store)
    assert len(seen) == n and set(seen) == set(ids)
    assert await store.clear() == n
    assert await store.count() == 0


async def test_async_with(abackend: ABackend) -> None:
    store = abackend.make()
    async with store as entered:
        assert entered is store
        await saved(store)
    if isinstance(store, RedisStore):
        assert not is_connected(store.client), "the owned client was not closed"


MALFORMED = ["", "short", "a" * 42, "a" * 44, "a" * 21 + "/" + "b" * 21, "a" * 42 + "=", "é" * 43, None, 123, b"a" * 43, 1.5]


@pytest.mark.parametrize("bad", MALFORMED, ids=repr)
async def test_malformed_ids(abackend: ABackend, bad: Any) -> None:
    store = abackend.make()
    s = await saved(store)
    marker = abackend.write_marker(store, s.id)
    assert await store.load(bad) is None
    assert await store.exists(bad) is False
    assert await store.delete(bad) is False
    assert await store.touch(bad) is False
    assert not abackend.wrote_since(store, s.id, marker)


@pytest.mark.parametrize(
    "kwargs",
    [{"ttl": 0}, {"ttl": -1}, {"ttl": 1.5}, {"ttl": True}, {"refresh_fraction": 0}, {"refresh_fraction": 2}, {"prefix": None}],
    ids=repr,
)
async def test_bad_config(abackend: ABackend, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        abackend.make(**kwargs)


async def test_create_bad_ttl(abackend: ABackend) -> None:
    store = abackend.make()
    with pytest.raises(ConfigError):
        store.create(ttl=0)


async def test_unserializable_value(abackend: ABackend) -> None:
    """BUG (asyncio MemoryStore, via stores/memory.py ``MemoryStore.save``): unstorable values are accepted."""
    for value in ({1, 2}, object(), [{3}]):
        await check_unstorable(abackend, value)


async def check_unstorable(abackend: ABackend, value: Any) -> None:
    store = abackend.make()
    s = store.create()
    s["bad"] = value
    with pytest.raises(TypeError):
        await store.save(s)
    assert s.version == 0 and s.new is True
    assert abackend.raw_count(store) == 0
    good = await saved(store, {"ok": 1})
    good["bad"] = value
    with pytest.raises(TypeError):
        await store.save(good)
    assert good.version == 1
    assert (await store.load(good.id)).data == {"ok": 1}
    old_id = good.id
    with pytest.raises(TypeError):
        await store.regenerate(good)
    assert good.id == old_id and good.version == 1
    assert await store.clear() == 1


# --- Redis-only ---------------------------------------------------------------------------------


async def test_redis_needs_exactly_one_of_client_and_url(redis_url: str) -> None:
    with pytest.raises(ConfigError):
        RedisStore()
    client = aredis.Redis.from_url(redis_url)
    try:
        with pytest.raises(ConfigError):
            RedisStore(client=client, url=redis_url)
    finally:
        await client.aclose()


async def test_redis_rejects_decode_responses(redis_url: str) -> None:
    client = aredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(ConfigError):
            RedisStore(client=client)
    finally:
        await client.aclose()


async def test_redis_rejects_malformed_url() -> None:
    with pytest.raises(ConfigError):
        RedisStore(url="not a url")


async def test_redis_async_and_sync_share_the_format(redis_url: str, prefix: str) -> None:
    from fastsess import RedisStore as SyncRedisStore

    with SyncRedisStore(url=redis_url, prefix=prefix) as sync_store:
        async with RedisStore(url=redis_url, prefix=prefix, serializer="json") as async_store:
            s = await saved(async_store)
            assert sync_store.load(s.id).data == DATA
            t = sync_store.create({"from": "sync"})
            sync_store.save(t)
            assert (await async_store.load(t.id)).data == {"from": "sync"}


@pytest.mark.parametrize(
    "plant",
    [
        lambda c, k: c.set(k, os.urandom(40)),
        lambda c, k: c.set(k, json.dumps({"user": 1})),
        lambda c, k: c.hset(k, "user", "1"),
        lambda c, k: c.rpush(k, "x"),
    ],
    ids=["garbage", "json", "hash", "list"],
)
async def test_redis_corrupt_data(redis_url: str, redis_client: redis.Redis, prefix: str, plant: Callable[..., Any]) -> None:
    sid = new_session_id()
    plant(redis_client, prefix + sid)
    async with RedisStore(url=redis_url, prefix=prefix) as store:
        with pytest.raises(SessionCorrupt):
            await store.load(sid)
        assert await store.exists(sid) is True
        assert await store.delete(sid) is True


async def assert_unavailable(coro_fn: Callable[[], Any]) -> None:
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        await coro_fn()
    assert time.monotonic() - t0 < 3.0
    assert isinstance(info.value.__cause__, redis.RedisError), repr(info.value.__cause__)
    assert info.value.cause is info.value.__cause__


async def test_redis_down_every_method_raises_store_unavailable(redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory()
    async with RedisStore(url=server.url, socket_timeout=1.0) as store:
        existing = await saved(store)
        loaded = await store.load(existing.id)
        loaded["x"] = 1
        fresh = store.create({"b": 1})
        server.stop()
        await assert_unavailable(lambda: store.load(existing.id))
        await assert_unavailable(lambda: store.exists(existing.id))
        await assert_unavailable(lambda: store.delete(existing.id))
        await assert_unavailable(lambda: store.touch(existing.id))
        await assert_unavailable(lambda: ids_of(store))
        await assert_unavailable(store.count)
        await assert_unavailable(store.clear)
        state = (fresh.id, fresh.version, fresh.new, fresh.modified)
        await assert_unavailable(lambda: store.save(fresh))
        assert (fresh.id, fresh.version, fresh.new, fresh.modified) == state
        state = (loaded.id, loaded.version, loaded.modified, loaded.refreshed_at)
        await assert_unavailable(lambda: store.save(loaded))
        assert (loaded.id, loaded.version, loaded.modified, loaded.refreshed_at) == state
        await assert_unavailable(lambda: store.regenerate(loaded))
        assert (loaded.id, loaded.version, loaded.modified, loaded.refreshed_at) == state
        # no I/O needed: still fine
        assert await store.load("nope") is None
        assert await store.save(store.create()) is False


async def test_redis_malformed_ids_make_no_call(redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory()
    async with RedisStore(url=server.url, socket_timeout=0.5) as store:
        assert await store.exists(new_session_id()) is False
        server.stop()
        with pytest.raises(StoreUnavailable):
            await store.exists(new_session_id())
        for bad in MALFORMED:
            assert await store.load(bad) is None
            assert await store.exists(bad) is False
            assert await store.delete(bad) is False
            assert await store.touch(bad) is False


async def test_redis_reconnects_after_restart(redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory()
    async with RedisStore(url=server.url, socket_timeout=1.0) as store:
        s = await saved(store)
        server.stop()
        await assert_unavailable(lambda: store.load(s.id))
        server.start()
        assert await store.load(s.id) is None
        t = await saved(store, {"back": True})
        assert (await store.load(t.id)).data == {"back": True}
        old = t.id
        await store.regenerate(t)  # the Lua script is reloaded on the new server
        assert await store.exists(old) is False and await store.exists(t.id) is True


async def test_redis_pooled_connection_survives_restart(redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory()
    async with RedisStore(url=server.url, socket_timeout=1.0) as store:
        s = await saved(store)
        server.restart()
        assert await store.exists(s.id) is False  # reconnected transparently, no error


async def test_redis_hung_server_times_out(redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory()
    async with RedisStore(url=server.url, socket_timeout=0.5) as store:
        s = await saved(store)
        pid = server._proc.pid  # type: ignore[union-attr]
        os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable) as info:
                await store.load(s.id)
            assert time.monotonic() - t0 < 1.4
            assert isinstance(info.value.__cause__, (redis.TimeoutError, asyncio.TimeoutError))
        finally:
            os.kill(pid, signal.SIGCONT)
        assert (await store.load(s.id)).data == DATA


async def test_redis_accepts_client_and_does_not_close_it(redis_url: str, prefix: str) -> None:
    client = aredis.Redis.from_url(redis_url)
    try:
        store = RedisStore(client=client, prefix=prefix)
        assert store.client is client
        s = await saved(store)
        await store.close()
        assert is_connected(client), "close() closed a client the store did not create"
        async with RedisStore(client=client, prefix=prefix) as other:
            assert (await other.load(s.id)).data == DATA
        assert is_connected(client)
        assert await client.ping() is True
    finally:
        await client.aclose()


async def test_redis_accepts_url_and_owns_the_client(redis_url: str, redis_client: redis.Redis, prefix: str) -> None:
    store = RedisStore(url=redis_url, prefix=prefix)
    assert isinstance(store.client, aredis.Redis)
    assert store.client.get_connection_kwargs()["socket_timeout"] == 1.0
    s = await saved(store)
    assert redis_client.exists(prefix + s.id) == 1
    assert 1795 <= redis_client.ttl(prefix + s.id) <= 1800
    assert is_connected(store.client)
    await store.close()
    assert not is_connected(store.client)


async def test_redis_concurrent_requests(redis_url: str, prefix: str) -> None:
    async with RedisStore(url=redis_url, prefix=prefix) as store:
        sessions = await asyncio.gather(*(saved(store, {"i": i}) for i in range(50)))
        loaded = await asyncio.gather(*(store.load(s.id) for s in sessions))
        assert [x["i"] for x in loaded] == list(range(50))
        assert await store.count() == 50
