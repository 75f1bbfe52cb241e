"""Sentinel-managed clients: a real master plus a real Sentinel process, both private.

The Sentinel is ``redis-server <conf> --sentinel`` (the same binary; Debian's
``redis-sentinel`` is only a link to it) on a free port, monitoring a master
started by ``redis_server_factory`` (the launchers are in ``tests/support``).  Stores get their clients from
``redis.sentinel.Sentinel(...).master_for(...)``, as a deployment behind
Sentinel would.
"""

from __future__ import annotations

from redis.sentinel import Sentinel

from fastsess import ClusterConfig, ClusteredRedisStore, RedisStore

from .conftest import SENTINEL_MASTER as MASTER
from .conftest import received, wait_received


def test_redis_store_through_sentinel(sentinel: Sentinel, prefix: str) -> None:
    client = sentinel.master_for(MASTER, socket_timeout=1.0)
    with RedisStore(client=client, prefix=prefix) as store:
        session = store.create({"user": 1})
        assert store.save(session)
        assert dict(store.load(session.id)) == {"user": 1}
        assert store.count() == 1
        assert store.delete(session.id) and store.load(session.id) is None
    client.ping()  # a client the store did not create is left open
    client.close()


def test_clustered_stores_through_sentinel_invalidate_each_other(sentinel: Sentinel, prefix: str) -> None:
    clients = [sentinel.master_for(MASTER, socket_timeout=1.0) for _ in range(2)]
    stores = [
        ClusteredRedisStore(client=c, prefix=prefix, config=ClusterConfig(channel=prefix + "ch", node_id=f"{prefix}{i}"))
        for i, c in enumerate(clients)
    ]
    try:
        A, B = stores
        assert A.coordinator.wait_subscribed(5) and B.coordinator.wait_subscribed(5)
        session = A.create({"n": 0})
        A.save(session)
        assert B.load(session.id)["n"] == 0
        assert B.load(session.id)["n"] == 0 and B.cache_stats().hits == 1  # cached on B
        before = received(B)
        session["n"] = 1
        A.save(session)
        wait_received(B, before)
        assert B.load(session.id)["n"] == 1  # not B's old copy
        before = received(B)
        A.delete(session.id)
        wait_received(B, before)
        assert B.load(session.id) is None
    finally:
        for store in stores:
            store.close()
        for c in clients:
            c.close()


async def test_async_clustered_stores_through_sentinel_invalidate_each_other(sentinel: Sentinel, prefix: str) -> None:
    """The asyncio listener is a thread on a sync twin of the asyncio Sentinel client."""
    from redis.asyncio.sentinel import Sentinel as AsyncSentinel

    from fastsess.asyncio import ClusteredRedisStore as AsyncClusteredRedisStore

    address = sentinel.sentinels[0].connection_pool.connection_kwargs
    asentinel = AsyncSentinel([(address["host"], address["port"])], socket_timeout=1.0)
    stores = [
        AsyncClusteredRedisStore(client=asentinel.master_for(MASTER, socket_timeout=1.0), prefix=prefix,
                                 config=ClusterConfig(channel=prefix + "ach", node_id=f"{prefix}a{i}"))
        for i in range(2)
    ]
    try:
        A, B = stores
        assert await A.start() and await B.start()
        session = A.create({"n": 0})
        assert await A.save(session)
        assert (await B.load(session.id))["n"] == 0
        assert (await B.load(session.id))["n"] == 0 and B.cache_stats().hits == 1  # cached on B
        before = received(B)
        session["n"] = 1
        assert await A.save(session)
        wait_received(B, before)
        assert (await B.load(session.id))["n"] == 1
    finally:
        for store in stores:
            await store.close()
            await store.client.aclose()
        for s in asentinel.sentinels:
            await s.aclose()
