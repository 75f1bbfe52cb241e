"""RedisStore failure modes: corrupt data, Redis down or hung, reconnection, client ownership.

Redis exceptions never escape bare: a dead Redis is ``StoreUnavailable`` (with the
redis exception as ``__cause__``), never "no session" (that would silently log
users out); foreign data under a session key is ``SessionCorrupt``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import redis

from fastsess import RedisStore, Session
from fastsess.errors import FastsessError, SessionCorrupt, StoreUnavailable
from fastsess.stores.base import new_session_id

from ..support import RedisServer, restart
from ..support.clients import open_connections

FAST = 3.0  # seconds: every failure must surface faster than this with socket_timeout=1.0


def saved(store: RedisStore, data: dict[str, Any] | None = None) -> Session:
    s = store.create(data or {"user": 1})
    assert store.save(s) is True
    return s


# --- corrupt data under a session key ------------------------------------------------------

CORRUPT: dict[str, Callable[[redis.Redis, str], Any]] = {
    "garbage-bytes": lambda c, k: c.set(k, os.urandom(64)),
    "empty-string": lambda c, k: c.set(k, b""),
    "json-text": lambda c, k: c.set(k, json.dumps({"user_id": 1, "_fresh": True})),
    "plain-msgpack": lambda c, k: c.set(k, msgpack.packb({"user_id": 1})),
    "integer-string": lambda c, k: c.set(k, 12345),
    "wrong-envelope-version": lambda c, k: c.set(k, b"FS\x07\x01\x00\x90"),
    "truncated-envelope": lambda c, k: c.set(k, b"FS\x01\x01\x00\x95\xcb"),
    "hash": lambda c, k: c.hset(k, mapping={"user_id": "1"}),
    "list": lambda c, k: c.rpush(k, b"a", b"b"),
    "set": lambda c, k: c.sadd(k, b"a"),
    "zset": lambda c, k: c.zadd(k, {b"a": 1.0}),
    "stream": lambda c, k: c.xadd(k, {b"f": b"v"}),
}


@pytest.mark.parametrize("serializer", ["msgpack", "json"])
@pytest.mark.parametrize("plant", list(CORRUPT.values()), ids=list(CORRUPT))
def test_corrupt_data_is_session_corrupt_on_load(
    redis_url: str, redis_client: redis.Redis, prefix: str, plant: Callable[[redis.Redis, str], Any], serializer: str
) -> None:
    sid = new_session_id()
    plant(redis_client, prefix + sid)
    with RedisStore(url=redis_url, prefix=prefix, serializer=serializer) as store:
        with pytest.raises(SessionCorrupt) as info:
            store.load(sid)
        assert sid not in str(info.value)  # the id is a secret: not in messages
        # the rest of the API still works on that key, so the application can recover
        assert store.exists(sid) is True
        assert store.touch(sid, 60) is True
        assert sid in set(store.iter_ids())
        assert store.delete(sid) is True
        assert store.load(sid) is None


def test_corrupt_session_does_not_affect_others(redis_url: str, redis_client: redis.Redis, prefix: str) -> None:
    with RedisStore(url=redis_url, prefix=prefix) as store:
        good = saved(store)
        bad = new_session_id()
        redis_client.hset(prefix + bad, "x", "1")
        with pytest.raises(SessionCorrupt):
            store.load(bad)
        assert store.load(good.id).data == {"user": 1}
        assert store.count() == 2
        assert store.clear() == 2  # clear removes whatever type sits under a session key


def test_wrongtype_maps_to_session_corrupt_not_store_unavailable(redis_url: str, redis_client: redis.Redis, prefix: str) -> None:
    sid = new_session_id()
    redis_client.lpush(prefix + sid, b"x")
    with RedisStore(url=redis_url, prefix=prefix) as store:
        with pytest.raises(FastsessError) as info:
            store.load(sid)
        assert type(info.value) is SessionCorrupt
        assert not isinstance(info.value, StoreUnavailable)


def test_envelope_with_zero_ttl_is_corrupt_not_store_unavailable(redis_url: str, redis_client: redis.Redis, prefix: str) -> None:
    """A forged/corrupt envelope whose TTL is 0: SessionCorrupt on load, never a fake "Redis down".

    BUG (serializers.py ``Serializer.decode`` accepts ttl <= 0): today the session loads, and
    the next save raises StoreUnavailable("invalid expire time") with Redis perfectly healthy.
    """
    sid = new_session_id()
    redis_client.set(prefix + sid, b"FS\x01\x01\x00" + msgpack.packb([1.0, 1.0, 0, 1, {"user": 1}]))
    with RedisStore(url=redis_url, prefix=prefix) as store:
        try:
            loaded = store.load(sid)
        except SessionCorrupt:
            return  # the fixed behaviour
        loaded["user"] = 2
        try:
            store.save(loaded)
        except StoreUnavailable as exc:
            pytest.fail(f"a healthy Redis was reported unavailable because of corrupt data: {exc}")
        pytest.fail("an envelope with ttl=0 was accepted as a session")


# --- Redis down (every method, restart, hang: tests/contract/test_redis_contract.py) ---------


def assert_unavailable(call: Callable[[], Any], secret: str | None = None) -> StoreUnavailable:
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        call()
    elapsed = time.monotonic() - t0
    assert elapsed < FAST, f"took {elapsed:.2f} s"
    err = info.value
    assert isinstance(err.__cause__, (redis.RedisError, OSError)), repr(err.__cause__)
    assert isinstance(err.__cause__, redis.RedisError), f"cause is not a redis exception: {err.__cause__!r}"
    assert err.cause is err.__cause__
    if secret:
        assert secret not in str(err)
    return err


def test_store_unavailable_when_server_never_existed(redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory()
    url = server.url
    server.stop()
    with RedisStore(url=url, socket_timeout=1.0) as store:
        assert_unavailable(lambda: store.load(new_session_id()))
        assert_unavailable(lambda: store.save(store.create({"a": 1})))


def test_regenerate_works_after_a_restart_flushed_the_script_cache(redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory()
    with RedisStore(url=server.url) as store:
        s = saved(store)
        store.regenerate(s)  # loads the Lua script
        restart(server)  # SCRIPT cache is gone with the process
        t = saved(store)
        old = t.id
        store.regenerate(t)
        assert t.id != old and store.load(t.id).data == {"user": 1} and not store.exists(old)


# --- clients --------------------------------------------------------------------------------


def connected(client: redis.Redis) -> bool:
    return any(open_connections(client))


def test_accepts_a_client_and_does_not_close_it(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        store = RedisStore(client=client, prefix=prefix)
        assert store.client is client
        s = saved(store)
        assert store.load(s.id).data == {"user": 1}
        store.close()
        assert connected(client), "close() closed a client the store did not create"
        with RedisStore(client=client, prefix=prefix) as other:
            assert other.load(s.id) is not None
        assert connected(client)
        assert client.ping() is True
        assert client.exists(prefix + s.id) == 1
    finally:
        client.close()


def test_accepts_a_plain_redis_constructor_client(redis_server: RedisServer, redis_url: str, prefix: str) -> None:
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, db=0)
    try:
        with RedisStore(client=client, prefix=prefix, ttl=50) as store:
            s = saved(store)
            assert store.load(s.id).data == {"user": 1}
            assert 48 <= client.ttl(prefix + s.id) <= 50
        assert client.ping() is True
    finally:
        client.close()


def test_accepts_a_url_and_owns_that_client(redis_url: str, redis_client: redis.Redis, prefix: str) -> None:
    store = RedisStore(url=redis_url, prefix=prefix)
    assert isinstance(store.client, redis.Redis)
    kwargs = store.client.get_connection_kwargs()
    assert kwargs["socket_timeout"] == 1.0  # the documented default
    s = saved(store)
    assert redis_client.exists(prefix + s.id) == 1
    assert store.load(s.id).data == {"user": 1}
    assert connected(store.client)
    store.close()
    assert not connected(store.client)


def test_url_with_db_number(redis_url: str, redis_server: RedisServer, prefix: str) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/3"
    other_db = redis.Redis.from_url(url)
    try:
        with RedisStore(url=url, prefix=prefix) as store:
            s = saved(store)
            assert other_db.exists(prefix + s.id) == 1
    finally:
        other_db.flushdb()
        other_db.close()


def test_socket_timeout_is_configurable(redis_url: str) -> None:
    with RedisStore(url=redis_url, socket_timeout=0.25) as store:
        kwargs = store.client.get_connection_kwargs()
        assert kwargs["socket_timeout"] == 0.25
        assert kwargs["socket_connect_timeout"] == 0.25


def test_uses_hiredis_when_installed(redis_url: str, prefix: str) -> None:
    import redis.utils

    assert redis.utils.HIREDIS_AVAILABLE, "hiredis is part of the test extra"
    with RedisStore(url=redis_url, prefix=prefix) as store:
        saved(store)
        conn = store.client.connection_pool.get_connection("GET")  # redis-py 5 requires a command name
        try:
            assert "hiredis" in type(conn._parser).__name__.lower()
        finally:
            store.client.connection_pool.release(conn)
