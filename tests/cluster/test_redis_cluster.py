"""A real local Redis Cluster: three masters, no replicas, on free ports.

On Redis >= 7 (``sharded_pubsub``, the default) a write script publishes with SPUBLISH on
the shard channel of its key's master, ``{t}<channel>``, and every listener subscribes
to each master's shard channel: invalidations do not cross the cluster bus.  With
``sharded_pubsub=False`` classic PUBLISH is cluster-wide, so an invalidation published
on the master owning the key reaches a subscriber connected to any master.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from fastsess import ClusterConfig, ClusteredRedisStore, Session
from fastsess._core.slots import ShardMap, key_slot
from fastsess.errors import ConfigError, StoreUnavailable

from ..support import RedisClusterNodes, RedisServer, kill
from .conftest import FAST, received, wait_received, wait_until

Stores = tuple[ClusteredRedisStore, ClusteredRedisStore, RedisCluster]


@contextlib.contextmanager
def two_nodes(ports: Sequence[int], label: str, **config: Any) -> Iterator[Stores]:
    """Nodes A and B (``ClusteredRedisStore``, each with its own ``RedisCluster`` client
    entering the cluster at ``ports[0]`` and ``ports[1]``) on a fresh channel and prefix
    named after ``label``, both subscribed, and a raw client entering at ``ports[2]``;
    ``config``: more ``ClusterConfig`` fields.  Everything is closed on exit."""
    channel, prefix = f"{label}:{uuid.uuid4().hex[:8]}", f"{label}{uuid.uuid4().hex[:6]}:"
    clients = [RedisCluster(host="127.0.0.1", port=port) for port in ports]
    made: list[ClusteredRedisStore] = []
    try:
        for name, client in zip("AB", clients):
            settings = ClusterConfig(node_id=f"{name}-{uuid.uuid4().hex[:6]}", channel=channel, **{**FAST, **config})
            made.append(ClusteredRedisStore(client=client, config=settings, prefix=prefix))
        for store in made:
            assert store.is_cluster
            assert store.coordinator.wait_subscribed(5), store.coordinator.stats.last_error
        yield made[0], made[1], clients[2]
    finally:
        for store in made:
            store.close()
        for client in clients:
            client.close()


@pytest.fixture
def stores(cluster: list[RedisServer]) -> Iterator[Stores]:
    with two_nodes([cluster[i].port for i in (0, 2, 1)], "rc") as nodes:
        yield nodes


def misrouted(channel: str, right: ShardMap) -> ShardMap:
    """A slot map of ``channel`` that sends every slot to the shard channel of another master
    than ``right`` does (a writer's out-of-date map)."""
    wrong = ShardMap(channel, [[(0, 16383)]])
    wrong.by_slot = [right.channels[(right.channels.index(c) + 1) % len(right.channels)] for c in right.by_slot]
    return wrong


def sees(store: ClusteredRedisStore, session_id: str, value: Any) -> None:
    """Wait (2 s at most, far below local_cache_ttl) until ``store`` reads ``value``: after a
    burst of writes the message that moved ``received`` may be another session's."""
    wait_until(lambda: store.load(session_id)["i"] == value, 2, what=f"{value!r} on the other node")


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


def test_regenerate_never_recreates_a_session_deleted_meanwhile(stores: Any) -> None:
    """On a cluster the new key is written before the old one is deleted (two slots): when
    the old key turns out to be gone already, the new one is deleted again (cas13)."""
    A, B, raw = stores
    s = A.create({"user": 1})
    assert A.save(s) is True
    late = B.load(s.id)
    assert A.delete(s.id) is True
    late["x"] = 1
    assert B.regenerate(late) is late
    assert late.id == s.id and B.save(late) is False
    assert A.count() == 0 and list(B.iter_ids()) == []


def test_regenerate_moves_a_concurrent_save_too(stores: Any) -> None:
    """The old key is compared before it is deleted (cas13): a save by another request since
    this one loaded the session is re-applied and moved, and the moved copy is what lands."""
    A, B, raw = stores
    s = A.create({"k": 0})
    assert A.save(s) is True
    mine, theirs = B.load(s.id), A.load(s.id)
    theirs["theirs"] = 1
    assert A.save(theirs) is True
    mine["mine"] = 1
    B.regenerate(mine)
    assert mine.id != s.id and not A.exists(s.id)
    assert dict(A.load(mine.id)) == {"k": 0, "theirs": 1, "mine": 1}
    assert A.count() == 1


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


# --- sharded pub/sub and tracking per master ------------------------------------------------


def bus_publishes(cluster: list[RedisServer]) -> int:
    """Classic PUBLISH messages the masters sent each other over the cluster bus so far."""
    total = 0
    for server in cluster:
        client = redis.Redis(host="127.0.0.1", port=server.port)
        try:
            total += int(client.cluster("info").get("cluster_stats_messages_publish_sent", 0))
        finally:
            client.close()
    return total


def node_store(cluster: list[RedisServer], like: ClusteredRedisStore, name: str, **config: Any) -> ClusteredRedisStore:
    settings: dict[str, Any] = {**FAST, **config}
    cfg = ClusterConfig(node_id=f"{name}-{uuid.uuid4().hex[:6]}", channel=like.coordinator.channel, **settings)
    store = ClusteredRedisStore(client=RedisCluster(host="127.0.0.1", port=cluster[0].port), config=cfg, prefix=like.prefix)
    assert store.coordinator.wait_subscribed(5), store.coordinator.stats.last_error
    return store


def test_one_shard_channel_per_master(cluster: list[RedisServer], stores: Any) -> None:
    A, B, raw = stores
    shards = A.coordinator.shards
    assert shards is not None and B.coordinator.shards is not None
    assert shards.channels == B.coordinator.shards.channels  # both nodes derive the same names
    assert len(shards.channels) == 3
    assert len(A.coordinator._link.socket_readers) == 3  # one plain socket per master, read by the listener itself
    channel = A.coordinator.channel
    for name in shards.channels:
        assert name.startswith("{") and name.endswith("}" + channel)
        tag = name[1:name.index("}")]
        master = raw.get_node_from_key(tag)
        client = redis.Redis(host="127.0.0.1", port=int(master.port))
        try:  # each master serves its own channel, and both nodes subscribe it there
            assert client.execute_command("PUBSUB", "SHARDNUMSUB", name) == [name.encode(), 2]
        finally:
            client.close()
    for s in sessions_on_every_master(A, raw, n=9):
        key = A.prefix + s.id
        assert A.coordinator.channel_for(key) == shards.by_slot[key_slot(key.encode())]
        assert raw.get_node_from_key(key).name == raw.get_node_from_key(A.coordinator.channel_for(key)).name


def test_sharded_invalidations_do_not_cross_the_cluster_bus(cluster: list[RedisServer], stores: Any) -> None:
    A, B, raw = stores
    sessions = sessions_on_every_master(A, raw)
    for s in sessions:
        assert B.load(s.id) is not None
    before_bus = bus_publishes(cluster)
    for s in sessions:
        before = received(B)
        s["i"] += 100
        assert A.save(s) is True
        wait_received(B, before)
        sees(B, s.id, s["i"])
    before = received(A)
    assert B.delete(sessions[0].id) is True
    wait_received(A, before)
    assert bus_publishes(cluster) == before_bus  # every message stayed on its shard
    # The same traffic with classic PUBLISH: each message is copied to the other masters.
    C = node_store(cluster, A, "C", sharded_pubsub=False)
    try:
        for s in sessions[1:6]:
            before = received(B)
            s["i"] += 100
            assert C.save(s) is True
            wait_received(B, before)  # a classic node still reaches the sharded ones
            sees(B, s.id, s["i"])
        assert bus_publishes(cluster) >= before_bus + 5 * 2
    finally:
        C.close()
        C.client.close()


def test_a_writer_with_an_out_of_date_slot_map_falls_back_to_publish(cluster: list[RedisServer], stores: Any) -> None:
    """If the master no longer serves the channel a writer picked, the script publishes
    on the plain channel instead: the write never lands without its invalidation."""
    A, B, raw = stores
    sessions = sessions_on_every_master(A, raw, n=9)
    for s in sessions:
        assert B.load(s.id) is not None
    right = A.coordinator.shards
    assert right is not None
    wrong = misrouted(A.coordinator.channel, right)
    assert all(w != r for w, r in zip(wrong.by_slot, right.by_slot))
    A.coordinator.shards = wrong
    try:
        before_bus = bus_publishes(cluster)
        for s in sessions:
            before = received(B)
            s["i"] += 1
            assert A.save(s) is True
            wait_received(B, before)
            sees(B, s.id, s["i"])
        assert bus_publishes(cluster) > before_bus  # the fallback was classic PUBLISH
    finally:
        A.coordinator.shards = right


def test_tracking_on_every_master(cluster: list[RedisServer], stores: Any) -> None:
    A, _, raw = stores
    B = node_store(cluster, A, "T", track_external_changes=True)
    try:
        masters = [n for n in raw.get_nodes() if n.server_type == "primary"]
        tracked = [c for m in masters for c in m.redis_connection.client_list() if c.get("redir") not in (None, "-1")]
        assert len(tracked) == 3 and all(c["redir"] == c["id"] for c in tracked)  # one per master
        sessions = sessions_on_every_master(A, raw)
        for s in sessions:  # a fill races the notification of A's save: load until cached
            wait_until(lambda s=s: B.load(s.id) is not None and B._cache.get(s.id) is not None, 2, what="a copy on B")
        for s in sessions:  # another tool deletes keys on every master
            raw.delete(A.prefix + s.id)
        deadline = time.monotonic() + 0.5
        while any(B._cache.get(s.id) is not None for s in sessions):
            assert time.monotonic() < deadline, "outside DELs not seen on every master"
            time.sleep(0.0002)
        assert all(B.load(s.id) is None for s in sessions)
        own = B.create({"mine": 1})  # own writes keep their copy on a cluster too
        assert B.save(own) is True
        own["mine"] = 2
        assert B.save(own) is True
        wait_until(lambda: B.coordinator.tracking.own >= 2, 2, what="B's own notifications")
        hits = B.cache_stats().hits
        assert B.load(own.id)["mine"] == 2 and B.cache_stats().hits == hits + 1
        more = sessions_on_every_master(A, raw, n=6)
        for s in more:
            wait_until(lambda s=s: B.load(s.id) is not None and B._cache.get(s.id) is not None, 2, what="a copy on B")
        master = raw.get_node_from_key(A.prefix + more[0].id)
        master.redis_connection.flushdb()  # FLUSHDB on one master flushes the whole cache
        wait_until(lambda: B.cache_stats().size == 0, 0.5, what="the flush")
    finally:
        B.close()
        B.client.close()


# --- a failover -------------------------------------------------------------------------------


@pytest.fixture
def replicated() -> Iterator[list[RedisServer]]:
    """Its own cluster (a master gets killed): three masters, one replica each."""
    with RedisClusterNodes(masters=3, replicas=1) as nodes:
        yield nodes.servers


def replica_of(master: RedisServer) -> tuple[int, int]:
    """(port, replication offset) of ``master``'s replica, and the master's own offset."""
    client = redis.Redis(host="127.0.0.1", port=master.port)
    try:
        info = client.info("replication")
    finally:
        client.close()
    return int(info["slave0"]["port"]), int(info["master_repl_offset"])


@pytest.mark.parametrize("tracking", [True, False], ids=["tracking", "sequenced"])
def test_a_failover_keeps_invalidations_flowing_without_stale_reads(replicated: list[RedisServer], tracking: bool) -> None:
    """A master is killed and its replica takes over while a node writes two sessions (one
    on that shard) and another node reads them in a loop: every read returns at least the
    version committed 100 ms before it began, the shard channel names stay the same, and
    afterwards invalidations (and tracking) reach every node from every master.  Without
    tracking, the replay of the promoted master's shard finds another server (its
    ``master_replid`` changed): a full flush, counted; the shard's numbering goes on there."""
    channel, prefix = f"fo:{uuid.uuid4().hex[:8]}", f"fo{uuid.uuid4().hex[:6]}:"
    raw = RedisCluster(host="127.0.0.1", port=replicated[0].port)
    made: list[ClusteredRedisStore] = []
    try:
        for name in "AB":
            config = ClusterConfig(node_id=f"{name}-{uuid.uuid4().hex[:6]}", channel=channel, track_external_changes=tracking, **FAST)
            client = RedisCluster(host="127.0.0.1", port=replicated[0].port)
            made.append(ClusteredRedisStore(client=client, config=config, prefix=prefix))
        A, B = made
        for store in made:
            assert store.coordinator.wait_subscribed(5), store.coordinator.stats.last_error
        sessions = sessions_on_every_master(A, raw)
        channels = list(B.coordinator.shards.channels)
        victim_node = raw.get_node_from_key(prefix + sessions[0].id)
        victim = next(s for s in replicated if s.port == int(victim_node.port))
        watched = [sessions[0], next(s for s in sessions if raw.get_node_from_key(prefix + s.id).name != victim_node.name)]
        for s in sessions:
            assert B.load(s.id) is not None
        flushes = B.coordinator.stats.full_flushes
        shard = B.coordinator.channel_for(prefix + sessions[0].id)

        committed: list[tuple[int, float]] = []  # (version, when its save returned)
        reads: list[tuple[float, int]] = []  # (when the read began, version read)
        stop, paused = threading.Event(), threading.Event()

        def write() -> None:
            k = 0
            while not stop.is_set():
                if paused.is_set():
                    time.sleep(0.002)
                    continue
                k += 1
                for s in watched:
                    s["i"] = k
                    while not stop.is_set():
                        try:
                            if A.save(s):
                                break
                        except StoreUnavailable:
                            time.sleep(0.01)
                committed.append((k, time.monotonic()))
                time.sleep(0.002)

        def read() -> None:
            while not stop.is_set():
                for s in watched:
                    started = time.monotonic()
                    try:
                        got = B.load(s.id)
                    except StoreUnavailable:
                        continue
                    if got is not None:
                        reads.append((started, got["i"]))

        threads = [threading.Thread(target=write), threading.Thread(target=read)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: len(committed) >= 5 and len(reads) >= 50, 10, what="writes and reads before the failover")
            paused.set()  # let the replica catch up: an unreplicated write would be lost by the kill
            time.sleep(0.05)
            replica_port, offset = replica_of(victim)
            replica = redis.Redis(host="127.0.0.1", port=replica_port)
            wait_until(lambda: int(replica.info("replication")["slave_repl_offset"]) >= offset, 5, what="the replica to catch up")
            kill(victim)
            replica.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
            wait_until(lambda: replica.info("replication")["role"] == "master", 10, what="the replica to take over")
            paused.clear()
            wait_until(lambda: all(s.coordinator.stats.reconnects >= 1 and s.coordinator.subscribed for s in made), 15,
                       what="both listeners back on the new master")
            after, read_after = len(committed), len(reads)
            # writes and reads on both masters again, the promoted one included (counted, not timed:
            # a loaded machine writes slowly)
            wait_until(lambda: len(committed) >= after + 6 and len(reads) >= read_after + 100, 15,
                       what="writes and reads after the failover")
        finally:
            stop.set()
            for t in threads:
                t.join(10)
            paused.clear()
        assert len(committed) > 10 and len(reads) > 100
        stale = [(t, v) for t, v in reads if v < max((k for k, c in committed if c <= t - 0.1), default=0)]
        assert stale == [], stale[:5]

        assert sorted(B.coordinator.shards.channels) == sorted(channels)  # the replica serves the same slots: same names
        for s in sessions:  # every master, the promoted one included, reaches B
            before = received(B)
            s["i"] = 1000
            assert A.save(s) is True
            wait_received(B, before)
            sees(B, s.id, 1000)
        s = sessions[0]
        if tracking:
            wait_until(lambda: B.load(s.id) is not None and B._cache.get(s.id) is not None, 2, what="a copy on B")
            raw.delete(prefix + s.id)  # tracking was registered again on the new master
            wait_until(lambda: B._cache.get(s.id) is None, 0.5, what="the outside DEL on the new master")
        else:
            assert B.coordinator.stats.full_flushes > flushes  # the promoted master is another server
            state = B.coordinator.machine.sequence_of(shard)
            assert state is not None and state.synced
            number = state.seq
            before = received(B)
            s["i"] = 2000
            assert A.save(s) is True
            wait_received(B, before)
            assert B.coordinator.machine.sequence_of(shard).seq == number + 1  # numbered on the new master
            sees(B, s.id, 2000)
        replica.close()
    finally:
        for store in made:
            store.close()
            store.client.close()
        raw.close()


def test_masters_older_than_redis_7_get_classic_publish(cluster: list[RedisServer], stores: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The version comes from INFO server of every master at each subscribe.  No Redis 6
    is installed here, so the listener is made to read an older version: it falls back
    to the plain channel (writers PUBLISH, their messages unnumbered: the script cuts the
    sequence's pairs off again), its listener numbers nothing and flushes at every
    resubscription, and tracking, which needs sharded pub/sub on a cluster, refuses to
    subscribe (the cache is bypassed, never incoherent)."""
    from fastsess.cluster import redis_adapter

    A, B, raw = stores
    real = redis_adapter._version
    monkeypatch.setattr(redis_adapter, "_version", lambda info: (6, 2, 14) if real(info) >= (7,) else real(info))
    C = node_store(cluster, A, "C")
    try:
        assert C.coordinator.shards is None and C.coordinator.channel_for(A.prefix + "x") == A.coordinator.channel
        sessions = sessions_on_every_master(A, raw, n=6)
        before_bus = bus_publishes(cluster)
        for s in sessions:
            assert B.load(s.id) is not None
            before = received(B)
            s["i"] += 1
            assert C.save(s) is True
            wait_received(B, before)
            sees(B, s.id, s["i"])
        assert bus_publishes(cluster) > before_bus
        assert not C.coordinator.machine.sequenced and B.coordinator.stats.gaps == 0
        seen: list[dict[str, Any]] = []
        B.coordinator.on_message = seen.append
        s = sessions[0]
        s["i"] += 1
        before = received(B)
        assert C.save(s) is True
        wait_received(B, before)
        assert seen and "sq" not in seen[-1] and "ep" not in seen[-1]
        assert C.load(s.id) is not None and C._cache.get(s.id) is not None
        flushes, reconnects = C.coordinator.stats.full_flushes, C.coordinator.stats.reconnects
        assert C.coordinator.drop_connection()
        wait_until(lambda: C.coordinator.stats.reconnects > reconnects and C.coordinator.subscribed, 5, what="C to resubscribe")
        assert C._cache.get(s.id) is None and C.coordinator.stats.full_flushes == flushes  # flushed, not replayed
        config = ClusterConfig(node_id=f"D-{uuid.uuid4().hex[:6]}", channel=A.coordinator.channel, track_external_changes=True, **FAST)
        D = ClusteredRedisStore(client=RedisCluster(host="127.0.0.1", port=cluster[0].port), config=config, prefix=A.prefix)
        try:
            wait_until(lambda: "needs sharded pub/sub" in (D.coordinator.stats.last_error or ""), 5, what="the refusal")
            assert not D.coordinator.subscribed
        finally:
            D.close()
            D.client.close()
    finally:
        C.close()
        C.client.close()


def test_a_node_with_sharding_off_misses_sharded_messages(cluster: list[RedisServer], stores: Any) -> None:
    """Why every node of a deployment needs the same ``sharded_pubsub``."""
    A, _, raw = stores
    C = node_store(cluster, A, "C", sharded_pubsub=False)
    try:
        s = sessions_on_every_master(A, raw, n=3)[0]
        assert C.load(s.id)["i"] == s["i"]
        s["i"] = 99
        assert A.save(s) is True  # SPUBLISH on the shard channel: C does not subscribe it
        before = received(C)
        A.coordinator.publish("deleted", A.create({}).id)  # a plain-channel message, after it
        wait_received(C, before)
        assert C.load(s.id)["i"] != 99  # C still serves its old copy
    finally:
        C.close()
        C.client.close()


# --- slots moving to a new master -------------------------------------------------------------


@pytest.fixture
def own_cluster() -> Iterator[RedisClusterNodes]:
    """Its own three masters (a fourth joins and takes slots)."""
    with RedisClusterNodes(masters=3) as nodes:
        yield nodes


def test_slots_moving_to_a_new_master_are_noticed_and_followed(own_cluster: RedisClusterNodes) -> None:
    """A new master joins and takes slots (``redis-cli --cluster add-node`` and
    ``reshard``).  Each listener checks the slot map every ``subscribe_timeout`` and
    resubscribes with the new one; writers publish on the plain channel for four times that
    (``test_tracking_core.py`` checks that wait on its own), then on the new master's
    shard channel, which every node now subscribes."""
    import subprocess

    from fastsess.server import find_cli_binary

    from ..support.servers import CLUSTER_ARGS, cluster_port

    servers = own_cluster.servers
    channel, prefix = f"rs:{uuid.uuid4().hex[:8]}", f"rs{uuid.uuid4().hex[:6]}:"
    raw = RedisCluster(host="127.0.0.1", port=servers[0].port)
    newcomer = RedisServer(port=cluster_port(), extra_args=CLUSTER_ARGS).start()
    made: list[ClusteredRedisStore] = []
    try:
        for name in "AB":
            config = ClusterConfig(node_id=f"{name}-{uuid.uuid4().hex[:6]}", channel=channel, **FAST)
            made.append(ClusteredRedisStore(client=RedisCluster(host="127.0.0.1", port=servers[0].port), config=config, prefix=prefix))
        A, B = made
        for store in made:
            assert store.coordinator.wait_subscribed(5)
        assert len(A.coordinator.shards.channels) == 3
        cli = find_cli_binary()
        entry = f"127.0.0.1:{servers[0].port}"
        subprocess.run([cli, "--cluster", "add-node", f"127.0.0.1:{newcomer.port}", entry],
                       check=True, timeout=30, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        new_client = redis.Redis(host="127.0.0.1", port=newcomer.port)
        new_id = new_client.execute_command("CLUSTER", "MYID").decode()
        def known_everywhere() -> bool:
            for server in servers:
                client = redis.Redis(host="127.0.0.1", port=server.port)
                try:
                    if b"127.0.0.1:%d" % newcomer.port not in client.execute_command("CLUSTER", "NODES"):
                        return False
                finally:
                    client.close()
            return True

        wait_until(known_everywhere, 10, what="every node to know the newcomer")
        wait_until(lambda: subprocess.run([cli, "--cluster", "check", entry], timeout=30, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL).returncode == 0, 10, interval=0.1,
                   what="the nodes to agree on the configuration (reshard checks it)")
        reconnects = [s.coordinator.stats.reconnects for s in made]
        flushes = B.coordinator.stats.full_flushes
        subprocess.run([cli, "--cluster", "reshard", entry, "--cluster-from", "all", "--cluster-to", new_id,
                        "--cluster-slots", "300", "--cluster-yes"],
                       check=True, timeout=60, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def new_map(store: ClusteredRedisStore) -> bool:
            shards = store.coordinator.shards or store.coordinator._pending_shards
            return store.coordinator.subscribed and shards is not None and len(shards.channels) == 4

        wait_until(lambda: all(s.coordinator.stats.reconnects > r and new_map(s) for s, r in zip(made, reconnects)),
                   5, what="both listeners to resubscribe with the new slot map")
        # Unnumbered messages on the plain channel (writers whose map waits, or is out of
        # date) may have been missed meanwhile: a resubscription with a changed map flushes.
        assert B.coordinator.stats.full_flushes > flushes
        raw.nodes_manager.initialize()
        moved = []
        while len(moved) < 3:  # sessions on the new master
            s = A.create({"i": 0})
            assert A.save(s) is True
            if int(raw.get_node_from_key(prefix + s.id).port) == newcomer.port:
                moved.append(s)
        for s in moved:  # plain PUBLISH while the new map waits (or a flush, if B resubscribes meanwhile)
            assert B.load(s.id) is not None
            s["i"] = 1
            assert A.save(s) is True
            sees(B, s.id, 1)
        wait_until(lambda: all(s.coordinator.shards is not None for s in made), 5, what="the new slot map in use")
        assert len(A.coordinator.shards.channels) == 4
        name = A.coordinator.channel_for(prefix + moved[0].id)
        assert new_client.execute_command("PUBSUB", "SHARDNUMSUB", name) == [name.encode(), 2]
        for s in moved:  # now SPUBLISH on the newcomer's channel
            before = received(B)
            s["i"] = 2
            assert A.save(s) is True
            wait_received(B, before)
            sees(B, s.id, 2)
        new_client.close()
    finally:
        for store in made:
            store.close()
            store.client.close()
        raw.close()
        newcomer.close()


async def test_async_store_tracks_on_every_master(cluster: list[RedisServer]) -> None:
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

    from fastsess.asyncio import ClusteredRedisStore as AsyncStore

    prefix = f"at{uuid.uuid4().hex[:6]}:"
    client = AsyncRedisCluster(host="127.0.0.1", port=cluster[1].port)
    raw = RedisCluster(host="127.0.0.1", port=cluster[0].port)
    config = ClusterConfig(node_id=f"aT-{uuid.uuid4().hex[:6]}", channel=f"at:{uuid.uuid4().hex[:8]}",
                           track_external_changes=True, **FAST)
    store = AsyncStore(client=client, config=config, prefix=prefix)
    try:
        await client.initialize()
        assert await store.start() or await store.coordinator.wait_subscribed(5), store.coordinator.stats.last_error
        assert len(store.coordinator.shards.channels) == 3
        sessions, nodes = [], set()
        while len(nodes) < 3:
            s = store.create({"i": len(sessions)})
            assert await store.save(s)
            sessions.append(s)
            nodes.add(raw.get_node_from_key(prefix + s.id).name)
        for s in sessions:  # own first saves: hits
            hits = store.cache_stats().hits
            assert (await store.load(s.id))["i"] == s["i"] and store.cache_stats().hits == hits + 1
        for s in sessions:
            raw.delete(prefix + s.id)
        deadline = time.monotonic() + 0.5
        while any(store._cache.get(s.id) is not None for s in sessions):
            assert time.monotonic() < deadline, "outside DELs not seen"
            time.sleep(0.0002)
    finally:
        await store.close()
        await client.aclose()
        raw.close()


def test_warm_peers_is_refused_on_redis_cluster(stores: Any) -> None:
    """A fill and a later write of one session could reach a node on two connections
    (a writer with an out-of-date slot map publishes on the plain channel): refused."""
    raw = stores[2]
    with pytest.raises(ConfigError, match="warm_peers"):
        ClusteredRedisStore(client=raw, config=ClusterConfig(update_max_bytes=4096, warm_peers=True))
