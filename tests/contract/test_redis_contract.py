"""The Redis-backed stores' contract: RedisStore and ClusteredRedisStore, sync and asyncio.

Client ownership, configuration, the data format in Redis, corrupt data, and what a
store does when its Redis is down, restarted or hung (on private servers from
``redis_server_factory``, so the shared one is never disturbed).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

import fastsess
import fastsess.asyncio
from fastsess.errors import ConfigError, SessionCorrupt, StoreUnavailable
from fastsess.serializers import JSONSerializer
from fastsess.stores.base import new_session_id

from ..support import RedisServer, kill, pause, restart
from .conftest import LoopThread, RedisBackend, redis_command_calls
from .test_store_contract import DATA, MALFORMED, saved

# --- writes and the format in Redis ---------------------------------------------------------


def test_first_save_uses_set_nx(redis_backend: RedisBackend) -> None:
    store = redis_backend.make()
    before = redis_command_calls(redis_backend.client, "set")
    s = saved(store)
    assert redis_command_calls(redis_backend.client, "set") == before + 1
    raw = redis_backend.client.get(store.prefix + s.id)
    assert raw[:2] == b"FS"  # fastsess's envelope


def test_tuples_come_back_as_lists(redis_backend: RedisBackend) -> None:
    store = redis_backend.make()
    s = saved(store, {"t": (1, 2)})
    store_b = redis_backend.make()  # another store: not a cached copy
    assert store_b.load(s.id)["t"] == [1, 2]


def test_two_stores_on_one_prefix_share_sessions(plain_redis: RedisBackend) -> None:
    a, b = plain_redis.make(), plain_redis.make()
    s = saved(a)
    loaded = b.load(s.id)
    loaded["x"] = 1
    assert b.save(loaded) is True
    assert a.load(s.id)["x"] == 1
    assert a.load(s.id).version == 2


def test_two_stores_with_different_prefixes_do_not_see_each_other(redis_backend: RedisBackend) -> None:
    a = redis_backend.make()
    b = redis_backend.make(prefix=redis_backend.prefix + "b:")
    a_ids = {saved(a).id for _ in range(3)}
    b_ids = {saved(b).id for _ in range(2)}
    assert set(a.iter_ids()) == a_ids and a.count() == 3
    assert set(b.iter_ids()) == b_ids and b.count() == 2
    assert all(a.load(i) is None for i in b_ids)
    assert a.clear() == 3
    assert set(b.iter_ids()) == b_ids
    assert redis_backend.raw_count(a) == 2


def test_prefix_with_glob_metacharacters_is_matched_literally(redis_backend: RedisBackend) -> None:
    raw = redis_backend.client
    sid = new_session_id()
    raw.set("t1x:" + sid, b"foreign")  # would match the unescaped glob "t[1]*?:*" ... not literally
    raw.set("t1ab:" + sid, b"foreign")
    store = redis_backend.make(prefix="t[1]*?:")
    own = saved(store)
    assert raw.exists("t[1]*?:" + own.id)
    assert list(store.iter_ids()) == [own.id]
    assert store.clear() == 1
    assert raw.get("t1x:" + sid) == b"foreign"
    assert raw.get("t1ab:" + sid) == b"foreign"


def test_json_serializer(redis_backend: RedisBackend) -> None:
    store = redis_backend.make(serializer="json")
    s = saved(store)
    raw = redis_backend.client.get(store.prefix + s.id)
    assert raw[:2] == b"FS" and raw[3] == JSONSerializer.codec_id
    assert redis_backend.make().load(s.id).data == DATA  # a msgpack store reads JSON sessions too


def test_sync_and_asyncio_stores_share_the_format(redis_url: str, prefix: str, loop_thread: LoopThread) -> None:
    async def check() -> None:
        with fastsess.RedisStore(url=redis_url, prefix=prefix) as sync_store:
            async with fastsess.asyncio.RedisStore(url=redis_url, prefix=prefix, serializer="json") as async_store:
                s = async_store.create(dict(DATA))
                assert await async_store.save(s) is True
                assert sync_store.load(s.id).data == DATA
                t = sync_store.create({"from": "sync"})
                sync_store.save(t)
                assert (await async_store.load(t.id)).data == {"from": "sync"}

    loop_thread.run(check())


CORRUPT: dict[str, Callable[[redis.Redis, str], Any]] = {
    "garbage": lambda c, k: c.set(k, os.urandom(40)),
    "json": lambda c, k: c.set(k, json.dumps({"user": 1})),
    "hash": lambda c, k: c.hset(k, "user", "1"),
    "list": lambda c, k: c.rpush(k, "x"),
}


def test_corrupt_data_is_session_corrupt(redis_backend: RedisBackend) -> None:
    store = redis_backend.make()
    for name, plant in CORRUPT.items():
        sid = new_session_id()
        plant(redis_backend.client, store.prefix + sid)
        for _ in range(2):  # and not cached
            with pytest.raises(SessionCorrupt):
                store.load(sid)
                pytest.fail(name)
        assert store.exists(sid) is True, name
        assert store.delete(sid) is True, name
    if redis_backend.kind == "clustered":
        assert store.cache_stats().size == 0


# --- configuration ----------------------------------------------------------------------------


def test_needs_exactly_one_of_client_and_url(redis_backend: RedisBackend) -> None:
    with pytest.raises(ConfigError):
        redis_backend.store_class()
    client = redis_backend.new_client()
    try:
        with pytest.raises(ConfigError):
            redis_backend.store_class(client=client, url=redis_backend.url)
    finally:
        redis_backend.close_client(client)


def test_rejects_a_decode_responses_client(redis_backend: RedisBackend) -> None:
    client = redis_backend.new_client(decode_responses=True)
    try:
        with pytest.raises(ConfigError, match="decode_responses"):
            redis_backend.store_class(client=client)
    finally:
        redis_backend.close_client(client)


def test_rejects_a_malformed_url(redis_backend: RedisBackend) -> None:
    for url in ("not a url", "http://127.0.0.1:1/0", "redis://127.0.0.1:notaport/0"):
        with pytest.raises(ConfigError):
            redis_backend.store_class(url=url)
            pytest.fail(url)


def test_rejects_an_unknown_serializer(redis_backend: RedisBackend) -> None:
    with pytest.raises(ConfigError):
        redis_backend.make(serializer="pickle")


# --- client ownership ------------------------------------------------------------------------


def test_accepts_a_client_and_does_not_close_it(redis_backend: RedisBackend) -> None:
    client = redis_backend.new_client()
    try:
        store = redis_backend.make(client=client)
        assert store.client is client
        s = saved(store)
        store.close()
        assert any(redis_backend.connections(client)), "close() closed a client the store did not create"
        with redis_backend.make(client=client) as other:
            assert other.load(s.id).data == DATA
        assert any(redis_backend.connections(client))
        assert redis_backend.ping(client) is True
        assert redis_backend.client.exists(store.prefix + s.id) == 1  # still usable
    finally:
        redis_backend.close_client(client)


def test_accepts_a_url_and_owns_the_client(redis_backend: RedisBackend) -> None:
    store = redis_backend.make()
    expected = redis.Redis if redis_backend.flavour == "sync" else redis.asyncio.Redis
    assert isinstance(store.client, expected)
    assert store.client.get_connection_kwargs()["socket_timeout"] == 1.0
    s = saved(store)
    raw = redis_backend.client
    assert raw.exists(store.prefix + s.id) == 1
    assert 1795 <= raw.ttl(store.prefix + s.id) <= 1800
    assert any(redis_backend.connections(store.client))
    store.close()
    assert not any(redis_backend.connections(store.client))


# --- a Redis that is down, restarted or hung ---------------------------------------------------


def assert_unavailable(call: Callable[[], Any], secret: str | None = None) -> StoreUnavailable:
    """``call()`` raises StoreUnavailable within 3 s (socket_timeout 1 s), caused by a
    redis-py error, and its message does not carry ``secret`` (a session id)."""
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        call()
    elapsed = time.monotonic() - t0
    assert elapsed < 3.0, f"took {elapsed:.2f} s"
    err = info.value
    assert isinstance(err.__cause__, redis.RedisError), f"cause is not a redis exception: {err.__cause__!r}"
    assert err.cause is err.__cause__
    if secret:
        assert secret not in str(err)
    return err


def test_redis_down_every_method_raises_store_unavailable(redis_backend: RedisBackend, redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory()
    store = redis_backend.make(url=server.url, socket_timeout=1.0)
    existing = saved(store, {"a": 1})
    loaded = store.load(existing.id)
    loaded["a"] = 2
    fresh = store.create({"b": 1})
    server.stop()
    redis_backend.wait_down(store)

    assert_unavailable(lambda: store.load(existing.id), existing.id)
    assert_unavailable(lambda: store.exists(existing.id), existing.id)
    assert_unavailable(lambda: store.delete(existing.id), existing.id)
    assert_unavailable(lambda: store.touch(existing.id), existing.id)
    assert_unavailable(lambda: store.touch(existing.id, 30), existing.id)
    assert_unavailable(lambda: list(store.iter_ids()))
    assert_unavailable(store.count)
    assert_unavailable(store.clear)

    # a failed save leaves the session exactly as it was
    state = (fresh.id, fresh.version, fresh.new, fresh.modified, fresh.refreshed_at)
    assert_unavailable(lambda: store.save(fresh), fresh.id)
    assert (fresh.id, fresh.version, fresh.new, fresh.modified, fresh.refreshed_at) == state
    state = (loaded.id, loaded.version, loaded.new, loaded.modified, loaded.refreshed_at)
    assert_unavailable(lambda: store.save(loaded), loaded.id)
    assert (loaded.id, loaded.version, loaded.new, loaded.modified, loaded.refreshed_at) == state
    # refresh-due path too
    redis_backend.age(existing, 10_000)
    state = (existing.id, existing.version, existing.refreshed_at)
    assert_unavailable(lambda: store.save(existing))
    assert (existing.id, existing.version, existing.refreshed_at) == state
    # a failed regenerate keeps the old id
    state = (loaded.id, loaded.version, loaded.new, loaded.modified)
    assert_unavailable(lambda: store.regenerate(loaded), loaded.id)
    assert (loaded.id, loaded.version, loaded.new, loaded.modified) == state

    # what needs no I/O still works
    assert store.create().new is True
    unsaved = store.create()
    old = unsaved.id
    assert store.regenerate(unsaved).id != old
    assert store.save(store.create()) is False  # anonymous: nothing to write, so no error
    assert store.load("bad id") is None


def test_malformed_ids_make_no_redis_call(redis_backend: RedisBackend, redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory()
    store = redis_backend.make(url=server.url, socket_timeout=0.5)
    assert store.exists(new_session_id()) is False  # the server is really there
    server.stop()
    redis_backend.wait_down(store)
    with pytest.raises(StoreUnavailable):  # and really gone now
        store.exists(new_session_id())
    # the server is gone, so any command would raise StoreUnavailable: plain answers prove none was sent
    for name, bad in MALFORMED.items():
        assert store.load(bad) is None, name
        assert store.exists(bad) is False, name
        assert store.delete(bad) is False, name
        assert store.touch(bad) is False, name
        assert store.touch(bad, 0) is False, name  # the id is rejected before anything else


def test_reconnects_after_a_restart_on_the_same_port(redis_backend: RedisBackend, redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory()
    store = redis_backend.make(url=server.url, socket_timeout=1.0)
    s = saved(store)
    server.stop()
    redis_backend.wait_down(store)
    assert_unavailable(lambda: store.load(s.id))
    assert_unavailable(lambda: store.save(store.create({"x": 1})))
    server.start()  # same port, empty dataset (no persistence)
    assert store.load(s.id) is None
    again = saved(store, {"back": True})
    assert store.load(again.id).data == {"back": True}
    assert store.exists(again.id)
    old = again.id
    store.regenerate(again)  # the Lua script is reloaded on the new server
    assert store.exists(old) is False and store.exists(again.id) is True
    assert store.count() == 1


def test_pooled_connection_survives_a_restart(redis_backend: RedisBackend, redis_server_factory: Callable[..., RedisServer]) -> None:
    """A restart between two requests: the pooled connection is dead, the retry reconnects."""
    server = redis_server_factory()
    store = redis_backend.make(url=server.url, socket_timeout=1.0)
    s = saved(store)
    restart(server)
    assert store.exists(s.id) is False  # no StoreUnavailable: reconnected transparently
    s2 = saved(store)
    kill(server)
    server.start()
    assert store.exists(s2.id) is False
    assert saved(store, {"after": "kill"}).version == 1


def test_hung_server_times_out(redis_backend: RedisBackend, redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory()
    store = redis_backend.make(url=server.url, socket_timeout=0.5)
    s = saved(store)
    with pause(server):
        t0 = time.monotonic()
        if redis_backend.kind == "clustered":
            store.evict_from_cache(s.id)  # so the load goes to Redis
        with pytest.raises(StoreUnavailable) as info:
            store.load(s.id)
        elapsed = time.monotonic() - t0
        assert isinstance(info.value.__cause__, (redis.TimeoutError, asyncio.TimeoutError))
        assert elapsed < 1.4, f"a timeout was waited more than once: {elapsed:.2f} s"
    assert store.load(s.id).data == DATA  # healthy again, same store
