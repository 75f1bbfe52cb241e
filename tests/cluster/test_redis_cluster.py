"""A real local Redis Cluster: three masters, no replicas, on free ports.

Classic PUBLISH is cluster-wide, so an invalidation published by a script on the
master owning the session's key reaches a subscriber connected to any master.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from redis.cluster import RedisCluster

from fastsess import ClusterConfig, ClusteredRedisStore, Session

from ..support import RedisServer
from .conftest import FAST, received, wait_received


@pytest.fixture
def stores(cluster: list[RedisServer]) -> Iterator[tuple[ClusteredRedisStore, ClusteredRedisStore, RedisCluster]]:
    channel, prefix = f"rc:{uuid.uuid4().hex[:8]}", f"rc{uuid.uuid4().hex[:6]}:"
    clients = [RedisCluster(host="127.0.0.1", port=cluster[i].port) for i in (0, 2, 1)]
    made: list[ClusteredRedisStore] = []
    try:
        for name, client in zip("AB", clients):
            config = ClusterConfig(node_id=f"{name}-{uuid.uuid4().hex[:6]}", channel=channel, **FAST)
            made.append(ClusteredRedisStore(client=client, config=config, prefix=prefix))
        for store in made:
            assert store.is_cluster
            assert store.coordinator.wait_subscribed(5), "listener did not subscribe on the cluster"
        yield made[0], made[1], clients[2]
    finally:
        for store in made:
            store.close()
        for client in clients:
            client.close()


def owner(raw: RedisCluster, key: str) -> str:
    return raw.get_node_from_key(key).name


def sessions_on_every_master(store: ClusteredRedisStore, raw: RedisCluster, n: int = 20) -> list[Session]:
    """At least ``n`` saved sessions, at least three per master."""
    out: list[Session] = []
    per: dict[str, int] = {}
    while len(out) < n or len(per) < 3 or min(per.values()) < 3:
        assert len(out) < 200
        s = store.create({"i": len(out)})
        assert store.save(s) is True
        out.append(s)
        node = owner(raw, store.prefix + s.id)
        per[node] = per.get(node, 0) + 1
    assert len(per) == 3
    return out


def test_the_cluster_has_three_masters(cluster: list[RedisServer], stores: Any) -> None:
    A, B, raw = stores
    masters = [n for n in raw.get_nodes() if n.server_type == "primary"]
    assert len(masters) == 3
    assert {int(n.port) for n in masters} == {s.port for s in cluster}


def test_store_api_across_slots(stores: Any) -> None:
    A, B, raw = stores
    sessions = sessions_on_every_master(A, raw)
    ids = {s.id for s in sessions}
    assert set(B.iter_ids()) == ids and B.count() == len(ids)
    for s in sessions[:6]:
        got = B.load(s.id)
        assert got is not None and dict(got) == dict(s)
        assert B.exists(s.id) and B.touch(s.id, ttl=600)
        assert 590 <= raw.ttl(A.prefix + s.id) <= 600
    victim = sessions[0]
    assert A.delete(victim.id) is True and not B.exists(victim.id)
    moved = sessions[1]
    old = moved.id
    A.regenerate(moved)  # the two keys are in different slots: two steps on a cluster
    assert moved.id != old and not A.exists(old) and B.load(old) is None
    assert dict(B.load(moved.id)) == dict(moved)
    assert A.count() == len(ids) - 1
    assert B.clear() == len(ids) - 1
    assert A.count() == 0 and list(A.iter_ids()) == []


def test_invalidations_cross_every_master(stores: Any) -> None:
    A, B, raw = stores
    sessions = sessions_on_every_master(A, raw)
    owners = set()
    for s in sessions:
        assert B.load(s.id)["i"] == s["i"]  # cached on B
    assert B.cache_stats().size == len(sessions)
    for s in sessions:
        before = received(B)
        s["i"] = -s["i"] - 1
        assert A.save(s) is True
        wait_received(B, before)
        assert B.load(s.id)["i"] == s["i"]
        owners.add(owner(raw, A.prefix + s.id))
    assert len(owners) == 3
    # deletes and touches from B reach A, whichever master owns the key
    for s in sessions[:9]:
        assert A.load(s.id) is not None
    for i, s in enumerate(sessions[:9]):
        before = received(A)
        if i % 2:
            B.delete(s.id)
        else:
            B.touch(s.id)
        wait_received(A, before)
    assert all(A.load(s.id) is None for s in sessions[1:9:2])
    assert A.coordinator.stats.malformed == 0 and B.coordinator.stats.reconnects == 0


def test_clear_on_a_cluster_flushes_the_other_node(stores: Any) -> None:
    A, B, raw = stores
    sessions = sessions_on_every_master(A, raw, n=9)
    for s in sessions:
        B.load(s.id)
    assert B.cache_stats().size == len(sessions)
    before = received(B)
    assert A.clear() == len(sessions)
    wait_received(B, before)
    assert B.cache_stats().size == 0
    assert all(B.load(s.id) is None for s in sessions)


def test_fills_take_the_expiry_from_the_owning_master(cluster: list[RedisServer], stores: Any) -> None:
    """A store started after a ``touch`` shortened the sessions (it never heard of it) reads
    each key's PTTL with its GET, in one script on the key's master, and stops serving
    the cached copy by the key's real expiry."""
    A, B, raw = stores
    sessions = sessions_on_every_master(A, raw, n=9)
    for s in sessions:
        assert A.touch(s.id, ttl=2)
    config = ClusterConfig(node_id=f"C-{uuid.uuid4().hex[:6]}", channel=B.coordinator.channel, **FAST)
    client = RedisCluster(host="127.0.0.1", port=cluster[1].port)
    C = ClusteredRedisStore(client=client, config=config, prefix=A.prefix)
    try:
        assert C.coordinator is not None and C.coordinator.wait_subscribed(5)
        for s in sessions:
            assert C.load(s.id) is not None
        hits = C.cache_stats().hits
        assert all(C.load(s.id) is not None for s in sessions) and C.cache_stats().hits == hits + len(sessions)
        deadline = time.monotonic() + 10
        while any(raw.exists(A.prefix + s.id) for s in sessions):  # every key expired on its master
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert [C.load(s.id) for s in sessions] == [None] * len(sessions)
    finally:
        C.close()
        client.close()


# --- the asyncio store on the same cluster -------------------------------------------------


async def test_async_store_subscribes_with_a_fresh_cluster_client(cluster: list[RedisServer]) -> None:
    """``redis.asyncio.cluster.RedisCluster`` learns the slot map on its first command;
    its ``pubsub()`` does not trigger that, so the listener must not depend on it."""
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

    from fastsess.asyncio import ClusteredRedisStore as AsyncStore

    client = AsyncRedisCluster(host="127.0.0.1", port=cluster[0].port)
    config = ClusterConfig(node_id=f"fresh-{uuid.uuid4().hex[:6]}", channel=f"arc:{uuid.uuid4().hex[:8]}", **FAST)
    store = AsyncStore(client=client, config=config, prefix="fresh:")
    try:
        subscribed = await store.start()
        assert subscribed or await store.coordinator.wait_subscribed(2), store.coordinator.stats.last_error
    finally:
        await store.close()
        await client.aclose()


async def test_async_stores_on_the_cluster(cluster: list[RedisServer]) -> None:
    import asyncio

    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

    from fastsess.asyncio import ClusteredRedisStore as AsyncStore

    channel, prefix = f"arc:{uuid.uuid4().hex[:8]}", f"arc{uuid.uuid4().hex[:6]}:"
    clients = [AsyncRedisCluster(host="127.0.0.1", port=cluster[i].port) for i in (1, 2)]
    raw = RedisCluster(host="127.0.0.1", port=cluster[0].port)
    stores: list[Any] = []
    try:
        for name, client in zip("AB", clients):
            config = ClusterConfig(node_id=f"a{name}-{uuid.uuid4().hex[:6]}", channel=channel, **FAST)
            store = AsyncStore(client=client, config=config, prefix=prefix)
            stores.append(store)
            await client.initialize()  # works around the bug above, so the rest is tested
            await store.start()
            assert store.is_cluster and await store.coordinator.wait_subscribed(5)
        A, B = stores

        async def until_received(store: Any, before: int) -> None:
            deadline = time.monotonic() + 5
            while store.coordinator.stats.received <= before:
                assert time.monotonic() < deadline, "no invalidation"
                await asyncio.sleep(0.005)

        sessions = []
        per: dict[str, int] = {}
        while len(sessions) < 20 or len(per) < 3:
            assert len(sessions) < 200
            s = A.create({"i": len(sessions)})
            assert await A.save(s)
            sessions.append(s)
            node = owner(raw, prefix + s.id)
            per[node] = per.get(node, 0) + 1
        assert {i async for i in B.iter_ids()} == {s.id for s in sessions}
        for s in sessions:
            assert (await B.load(s.id))["i"] == s["i"]
        for s in sessions:
            before = B.coordinator.stats.received
            s["i"] += 100
            assert await A.save(s)
            await until_received(B, before)
            assert (await B.load(s.id))["i"] == s["i"]
        old = sessions[0].id
        before = B.coordinator.stats.received
        await A.regenerate(sessions[0])
        await until_received(B, before)
        assert await B.load(old) is None and (await B.load(sessions[0].id))["i"] == 100
        assert await B.touch(sessions[1].id, ttl=300)
        before = B.coordinator.stats.received
        assert await A.delete(sessions[2].id)
        await until_received(B, before)
        assert await B.load(sessions[2].id) is None
        before = B.coordinator.stats.received
        cleared = await A.clear()
        await until_received(B, before)
        assert B.cache_stats().size == 0
        assert B.coordinator.stats.malformed == 0 and B.coordinator.stats.reconnects == 0
        remaining = await B.count()
        assert (cleared, remaining) == (len(sessions) - 1, 0), "asyncio clear() on Redis Cluster deleted nothing"
    finally:
        for store in stores:
            await store.close()
        for client in clients:
            await client.aclose()
        raw.close()
