"""Log out everywhere on a real 3-master Redis Cluster, sync and asyncio.

A principal's sessions live on every master; its index is one key (one slot), so every
script touches that slot only, and the sessions are checked and deleted with pipelines
of single-key commands that redis-py routes to each key's master.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from fastsess import ClusterConfig, Session, StoreUnavailable
from fastsess._core.principals import BATCH, COVER, INDEX_REMOVE, PRINCIPAL_KEY, index_key
from fastsess.stores.base import new_session_id

from ..support import RedisServer
from .conftest import FAST, wait_until
from .test_redis_cluster import owner, stores  # noqa: F401 - the fixture

Stores = tuple[Any, Any, RedisCluster]


def test_delete_all_across_every_master(stores: Stores) -> None:  # noqa: F811
    A, B, raw = stores
    sessions: list[Session] = []
    masters: set[str] = set()
    while len(sessions) < 12 or len(masters) < 3:
        assert len(sessions) < 200
        s = A.create({"i": len(sessions)})
        A.bind(s, "user-7")
        assert A.save(s)
        sessions.append(s)
        masters.add(owner(raw, A.prefix + s.id))
    assert sorted(B.sessions_of("user-7")) == sorted(s.id for s in sessions)
    for s in sessions:  # B caches every one
        assert B.load(s.id) is not None and B.load(s.id) is not None
    current = sessions[0]
    A.regenerate(current)  # the index follows the new id, on whichever master it lands
    assert B.load(current.id) is not None
    cache = B._cache
    assert A.delete_all("user-7", except_id=current.id) == len(sessions) - 1
    # one numbered message per shard, for the ids of that shard (messages from different
    # masters are not ordered, so no barrier: wait for the evictions themselves)
    wait_until(lambda: all(cache.get(s.id) is None for s in sessions[1:]), 5, what="B to drop its copies")
    assert all(B.load(s.id) is None for s in sessions[1:])
    assert B.sessions_of("user-7") == [current.id] and B.load(current.id) is not None


def test_many_sessions_on_a_cluster_in_batches(stores: Stores) -> None:  # noqa: F811
    A, _, raw = stores
    n = 2 * BATCH + 500
    key = index_key(A._keys, "busy")
    pipe = raw.pipeline(transaction=False)  # seeded as bind + save would write them
    for i in range(n):
        s = Session(new_session_id(), {"i": i, PRINCIPAL_KEY: ["busy", "", 0]}, ttl=A.ttl, new=False)
        pipe.set(A.prefix + s.id, A.serializer.encode(s), ex=A.ttl)
        pipe.zadd(key, {s.id: time.time() + COVER * A.ttl})
    pipe.execute()
    assert len(A.sessions_of("busy")) == n
    assert A.delete_all("busy") == n
    assert A.sessions_of("busy") == [] and A.count() == 0
    assert raw.exists(key) == 0  # the emptied index is gone with its last entry


async def test_async_delete_all_on_the_cluster(cluster: list[RedisServer]) -> None:
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

    from fastsess.asyncio import ClusteredRedisStore as AsyncStore

    channel, prefix = f"prc:{uuid.uuid4().hex[:8]}", f"prc{uuid.uuid4().hex[:6]}:"
    clients = [AsyncRedisCluster(host="127.0.0.1", port=cluster[i].port) for i in (1, 2)]
    made: list[Any] = []
    try:
        for name, client in zip("AB", clients):
            config = ClusterConfig(node_id=f"p{name}-{uuid.uuid4().hex[:6]}", channel=channel, **FAST)
            store = AsyncStore(client=client, config=config, prefix=prefix)
            made.append(store)
            await client.initialize()
            await store.start()
            assert await store.coordinator.wait_subscribed(5)
        A, B = made
        sessions = []
        for i in range(9):
            s = A.create({"i": i})
            await A.bind(s, "user-8")
            assert await A.save(s)
            sessions.append(s)
        assert sorted(await B.sessions_of("user-8")) == sorted(s.id for s in sessions)
        for s in sessions:
            assert await B.load(s.id) is not None and await B.load(s.id) is not None
        before = B.coordinator.stats.received
        assert await A.delete_all("user-8") == 9
        deadline = time.monotonic() + 5
        # one numbered message per shard holding some of the ids (not ordered across masters)
        while B.coordinator.stats.received <= before or any(B._cache.get(s.id) is not None for s in sessions):
            assert time.monotonic() < deadline, "B did not drop every copy"
            await asyncio.sleep(0.005)
        assert [await B.load(s.id) for s in sessions] == [None] * 9
        assert await B.sessions_of("user-8") == []
    finally:
        for store in made:
            await store.close()
        for client in clients:
            await client.aclose()


class FailingScript:
    """Stands in for a store's client: the first EVALSHA/EVAL of ``script`` raises a
    ConnectionError before reaching Redis; everything else goes through."""

    def __init__(self, client: Any, script: Any) -> None:
        self._client, self._names, self.failed = client, (script.sha, script.text), False

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed and args[0] in ("EVALSHA", "EVAL") and args[1] in self._names:
            self.failed = True
            raise redis.ConnectionError("dropped (test)")
        return self._client.execute_command(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_a_failed_batch_on_a_cluster_is_finished_by_a_second_call(stores: Stores) -> None:  # noqa: F811
    A, B, raw = stores
    sessions = []
    for i in range(6):
        s = A.create({"i": i})
        A.bind(s, "user-9")
        assert A.save(s)
        sessions.append(s)
        assert B.load(s.id) is not None and B.load(s.id) is not None  # B caches it
    key = index_key(A._keys, "user-9")
    A.client = FailingScript(A.client, INDEX_REMOVE)
    with pytest.raises(StoreUnavailable):
        A.delete_all("user-9")  # the sessions are deleted, the index script never ran
    assert A.client.failed and all(not raw.exists(A.prefix + s.id) for s in sessions)
    assert raw.zcard(key) == 6  # still listed
    assert A.delete_all("user-9") == 0  # nothing left to delete, but the batch is finished
    assert raw.exists(key) == 0
    wait_until(lambda: all(B._cache.get(s.id) is None for s in sessions), 5, what="B to drop its copies")


def test_touch_renews_index_entries_on_a_cluster(stores: Stores, cluster: list[RedisServer]) -> None:  # noqa: F811
    """``touch`` of bound sessions on every master, through a clustered store and a plain
    ``RedisStore``: each entry covers twice the new TTL and the index key (another slot)
    lives as long."""
    from fastsess import RedisStore

    A, _B, raw = stores
    plain = RedisStore(client=RedisCluster(host="127.0.0.1", port=cluster[1].port), prefix=A.prefix, ttl=60)
    try:
        sessions: list[Session] = []
        masters: set[str] = set()
        while len(sessions) < 6 or len(masters) < 3:
            assert len(sessions) < 200
            s = A.create({"i": len(sessions)}, ttl=60)
            A.bind(s, "user-touch")
            assert A.save(s)
            sessions.append(s)
            masters.add(owner(raw, A.prefix + s.id))
        key = index_key(A._keys, "user-touch")
        assert raw.pttl(key) <= COVER * 60 * 1000
        for i, s in enumerate(sessions):
            assert (A if i % 2 else plain).touch(s.id, 5000)
        now = time.time()
        for s in sessions:
            assert raw.zscore(key, s.id) >= now + COVER * 5000 - 5
            assert raw.pttl(A.prefix + s.id) > 4_990_000
        assert raw.pttl(key) > (COVER * 5000 - 5) * 1000
        assert sorted(A.sessions_of("user-touch")) == sorted(s.id for s in sessions)
        assert plain.delete_all("user-touch") == len(sessions)
    finally:
        plain.close()
