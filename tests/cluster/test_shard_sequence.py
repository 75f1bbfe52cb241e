"""Sequenced invalidations per shard on a real 3-master Redis Cluster (sharded pub/sub).

Every write script runs on its key's master and numbers its message on that master's
shard channel ``{t}<channel>``: the sequence hash ``{t}<channel>:seq`` and the capped log
``{t}<channel>:log`` live in the tag's slot, on the same master.  A listener keeps one
sequence per shard channel; after missing messages (its listener stopped, or its
connection killed) it replays each shard's log on that shard's master and evicts only
what was written meanwhile, keeping the rest of its cache.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from fastsess import ClusteredRedisStore, Session
from fastsess._core.sequence import log_keys

from ..support import RedisServer
from .conftest import received, wait_received, wait_until
from .test_redis_cluster import Stores, bus_publishes, misrouted, owner, sessions_on_every_master, two_nodes


@pytest.fixture
def stores(cluster: list[RedisServer]) -> Iterator[Stores]:
    with two_nodes([cluster[i].port for i in (0, 1, 2)], "sq") as nodes:
        yield nodes


def master_of(raw: RedisCluster, key: str) -> redis.Redis:
    node = raw.get_node_from_key(key)
    return redis.Redis(host=node.host, port=int(node.port))


def shard_log(raw: RedisCluster, shard: str) -> tuple[int, list[tuple[int, str]]]:
    """(the shard's last sequence number, its log) as stored on the master serving it."""
    meta, log = log_keys(shard)
    client = master_of(raw, meta)
    try:
        seq = int(client.hget(meta, "s") or 0)
        entries = [(int(i.decode().partition("-")[0]), f[b"i"].decode()) for i, f in client.xrange(log)]
    finally:
        client.close()
    return seq, entries


def cached(store: ClusteredRedisStore, sid: str) -> bool:
    assert store._cache is not None
    return store._cache.get(sid) is not None


def warm(store: ClusteredRedisStore, sessions: list[Session]) -> None:
    for s in sessions:
        wait_until(lambda s=s: store.load(s.id) is not None and cached(store, s.id), 2, what="a copy on B")


def missing(store: ClusteredRedisStore, write: Any) -> None:
    """Stop ``store``'s listener, run ``write()``, start it again and wait until it resubscribed and synced."""
    coordinator = store.coordinator
    before = coordinator.stats.reconnects
    coordinator.stop()
    assert not coordinator.subscribed
    write()
    assert coordinator.start(timeout=5.0)
    wait_until(lambda: coordinator.stats.reconnects > before and coordinator.subscribed, 5, what="the listener to resubscribe")


def test_every_shard_numbers_and_logs_its_writes(stores: Stores) -> None:
    A, B, raw = stores
    shards = A.coordinator.shards
    assert shards is not None and A.coordinator.sequenced and B.coordinator.machine.sequenced
    assert B.coordinator.machine.shard_names == tuple(shards.channels)
    seen: list[dict[str, Any]] = []
    B.coordinator.on_message = seen.append
    sessions = sessions_on_every_master(A, raw, n=9)
    written: dict[str, list[str]] = {}  # shard channel -> the ids written there, in order
    for s in sessions:
        written.setdefault(A.coordinator.channel_for(A.prefix + s.id), []).append(s.id)  # the creation
    for s in sessions:
        before = received(B)
        s["i"] += 100
        assert A.save(s) is True
        written[A.coordinator.channel_for(A.prefix + s.id)].append(s.id)
        wait_received(B, before)
    assert len(written) == 3
    for shard, ids in written.items():
        seq, entries = shard_log(raw, shard)
        assert seq == len(ids) and [i for _, i in entries] == ids and [n for n, _ in entries] == list(range(1, seq + 1))
        # the sequence lives on the master serving the shard channel, which is the master of its keys
        assert owner(raw, log_keys(shard)[0]) == owner(raw, shard) == owner(raw, A.prefix + ids[0])
        wait_until(lambda shard=shard, ids=ids: B.coordinator.machine.sequence_of(shard).seq == len(ids), 2,
                   what="B to apply every numbered message of the shard")
        assert A.coordinator.machine.sequence_of(shard).seq == len(ids)  # A's own echoes advance it too
    numbered = [m for m in seen if m["t"] == "invalidated" and "c" not in m]
    assert len(numbered) == len(sessions) and all(isinstance(m["sq"], int) and m["ep"] for m in numbered)
    stats = B.coordinator.stats
    assert stats.gaps == 0 and stats.full_flushes == 0
    assert A.coordinator.stats.ignored_own >= 2 * len(sessions)


def test_a_missed_stretch_is_replayed_per_shard_keeping_the_rest(stores: Stores) -> None:
    A, B, raw = stores
    sessions = sessions_on_every_master(A, raw, n=15)
    warm(B, sessions)
    stats = B.coordinator.stats
    by_shard: dict[str, list[Session]] = {}
    for s in sessions:
        by_shard.setdefault(A.coordinator.channel_for(A.prefix + s.id), []).append(s)
    changed = [group[0] for group in by_shard.values()]  # one save on every shard
    gone = next(group[1] for group in by_shard.values() if len(group) > 2)
    touched = next(group[2] for group in by_shard.values() if len(group) > 2)

    def write() -> None:
        for s in changed:
            s["i"] = 1000
            assert A.save(s) is True
        assert A.delete(gone.id) is True
        assert A.touch(touched.id, 600) is True

    missing(B, write)
    after = B.coordinator.stats
    assert after.replays == stats.replays + 3 and after.replayed_ids == stats.replayed_ids + 5
    assert after.full_flushes == stats.full_flushes
    # The evicted ids that were cached are read again at once, on their shard's master:
    # cached with what Redis holds (the deleted one is gone).
    assert after.refilled == stats.refilled + 4 and not cached(B, gone.id)
    assert all(cached(B, s.id) for s in (*changed, touched))
    kept = [s for s in sessions if s not in (*changed, gone, touched)]
    assert kept and all(cached(B, s.id) for s in kept)  # the rest of the cache is kept
    hits = B.cache_stats().hits
    for s in changed:  # no stale read: the missed saves were evicted, and read again
        assert B.load(s.id)["i"] == 1000
    assert B.load(gone.id) is None
    for s in kept:
        assert B.load(s.id)["i"] == s["i"]
    assert B.cache_stats().hits == hits + len(changed) + len(kept)


def test_a_killed_connection_is_repaired_by_replay(stores: Stores) -> None:
    """CLIENT KILL of the listener's connection to one master, writes right after: the
    listener reconnects to every master and replays what it missed, without a flush."""
    A, B, raw = stores
    sessions = sessions_on_every_master(A, raw, n=12)
    warm(B, sessions)
    stats = B.coordinator.stats
    victim = B.coordinator._link.connections[0]
    host, port = victim._sock.getsockname()[:2]
    address = f"{host}:{port}"
    client = redis.Redis(host=victim.host, port=victim.port)
    try:
        assert client.client_kill_filter(_type=None, addr=address) == 1
    finally:
        client.close()
    for s in sessions[:6]:
        s["i"] = 500
        assert A.save(s) is True
    wait_until(lambda: B.coordinator.stats.reconnects > stats.reconnects and B.coordinator.subscribed, 5, what="B to resubscribe")
    for s in sessions[:6]:  # every write reached B, live or by the replay
        wait_until(lambda s=s: B.load(s.id)["i"] == 500, 2, what="the new value on B")
    after = B.coordinator.stats
    assert after.full_flushes == stats.full_flushes and after.gaps == stats.gaps
    assert all(cached(B, s.id) for s in sessions[6:])


def test_clear_and_delete_all_missed_are_replayed(stores: Stores) -> None:
    A, B, raw = stores
    sessions = []
    while len({owner(raw, A.prefix + s.id) for s in sessions}) < 3 or len(sessions) < 9:
        s = A.create({"i": len(sessions)})
        A.bind(s, "user-9")
        assert A.save(s) is True
        sessions.append(s)
    others = sessions_on_every_master(A, raw, n=6)
    warm(B, sessions + others)
    stats = B.coordinator.stats
    missing(B, lambda: A.delete_all("user-9"))
    after = B.coordinator.stats
    assert after.full_flushes == stats.full_flushes and after.replayed_ids == stats.replayed_ids + len(sessions)
    assert not any(cached(B, s.id) for s in sessions) and all(cached(B, s.id) for s in others)
    assert all(B.load(s.id) is None for s in sessions)

    missing(B, A.clear)  # logged on every shard: the replay flushes
    assert B.cache_stats().size == 0
    assert all(B.load(s.id) is None for s in others)


def test_a_stale_slot_map_publishes_unnumbered_on_the_plain_channel(cluster: list[RedisServer], stores: Stores) -> None:
    """A writer whose map names a channel the key's master does not serve: the script
    cannot number the message there, so it sends it whole, unnumbered, with PUBLISH on the
    plain channel (listeners apply it at once); the shards' sequences do not move."""
    A, B, raw = stores
    sessions = sessions_on_every_master(A, raw, n=9)
    warm(B, sessions)
    right = A.coordinator.shards
    assert right is not None
    wrong = misrouted(A.coordinator.channel, right)
    logs = {shard: shard_log(raw, shard) for shard in right.channels}
    seen: list[dict[str, Any]] = []
    B.coordinator.on_message = seen.append
    A.coordinator.shards = wrong
    try:
        before_bus = bus_publishes(cluster)
        for s in sessions:
            before = received(B)
            s["i"] += 1
            assert A.save(s) is True
            wait_received(B, before)
            assert B.load(s.id)["i"] == s["i"]
        assert bus_publishes(cluster) > before_bus  # classic PUBLISH
    finally:
        A.coordinator.shards = right
    assert {shard: shard_log(raw, shard) for shard in right.channels} == logs
    assert seen and all("sq" not in m and "ep" not in m for m in seen)
    assert B.coordinator.stats.full_flushes == 0 and B.coordinator.stats.gaps == 0
    own = A.coordinator.stats
    assert own.foreign_own_id == 0  # A recognised its unnumbered echoes as its own


# --- a subscriber outage, across OS processes ----------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_subscriber_outage_across_processes_is_repaired_by_replay(cluster: list[RedisServer], mode: str) -> None:
    """W and R run in processes of their own (``coherence_node``).  Every pub/sub connection
    on every master is killed (``CLIENT KILL TYPE pubsub``) and W saves six sessions at
    once, while R waits out its reconnection delay (at least 0.5 s): R replays each
    shard's log, evicts exactly those six (counted), keeps the rest of its cache (its
    loads of them are hits) and reads no stale value."""
    from .test_coherence import COMMITTED_AGO, CNode

    url = f"redis://127.0.0.1:{cluster[0].port}"
    channel, prefix = f"so:{uuid.uuid4().hex[:8]}", f"so{uuid.uuid4().hex[:6]}:"
    nodes: list[CNode] = []
    raw = RedisCluster(host="127.0.0.1", port=cluster[0].port)
    try:
        for name, backoff in (("W", (0.02, 0.2)), ("R", (1.0, 1.0))):
            node = CNode(name)
            nodes.append(node)
            assert node.call("init", url=url, node_id=f"{name}-{uuid.uuid4().hex[:6]}", channel=channel, prefix=prefix,
                             mode=mode, cluster=True, config={"reconnect_backoff": backoff}) is True
        W, R = nodes
        ids: list[str] = []
        while len(ids) < 12 or len({owner(raw, prefix + i) for i in ids}) < 3:
            ids.append(W.call("create", data={"v": 0})["id"])
        for sid in ids:
            R.call("load", sid=sid)
            assert R.call("load", sid=sid)["data"]["v"] == 0
        before = R.call("stats")
        changed, kept = ids[:6], ids[6:]
        for server in cluster:
            client = redis.Redis(host="127.0.0.1", port=server.port)
            try:
                client.client_kill_filter(_type="pubsub")
            finally:
                client.close()
        committed = time.monotonic()
        for sid in changed:
            assert W.call("update", sid=sid, key="v", value=1)["wrote"] is True
        committed = time.monotonic()
        assert R.call("stats")["coordinator"]["reconnects"] == before["coordinator"]["reconnects"], "R resubscribed too early"
        observed = [R.call("observe", sid=sid, key="v", seconds=0.05) for sid in changed]
        wait_until(lambda: R.call("stats")["coordinator"]["subscribed"] and
                   R.call("stats")["coordinator"]["reconnects"] > before["coordinator"]["reconnects"], 5,
                   what="R to resubscribe")
        after = R.call("stats")
        assert after["coordinator"]["replayed_ids"] - before["coordinator"]["replayed_ids"] == len(changed)
        assert after["coordinator"]["full_flushes"] == before["coordinator"]["full_flushes"]
        for sid in changed:
            assert R.call("load", sid=sid)["data"]["v"] == 1
        hits = R.call("stats")["cache"]["hits"]
        for sid in kept:
            assert R.call("load", sid=sid)["data"]["v"] == 0
        assert R.call("stats")["cache"]["hits"] == hits + len(kept)  # the rest of the cache was kept
        stale = [r for o in observed for r in o["reads"] if r[0] > committed + COMMITTED_AGO and r[1] != 1]
        assert stale == []
    finally:
        for node in nodes:
            node.close()
        raw.close()


# --- slots that move while a listener is away ------------------------------------------------


def test_slots_moved_and_back_while_away_flush_at_the_resubscription() -> None:
    """While B's listener is stopped, slots move to another master and back (``redis-cli
    --cluster reshard``).  A's listener sees the change and, while the changed map waits,
    A publishes unnumbered on the plain channel: in no log.  B comes back to the very map
    it left, but the cluster's configuration epoch went up: it flushes (no replay could
    tell what it missed), and reads A's save fresh."""
    import subprocess

    from fastsess.server import find_cli_binary

    from ..support import RedisClusterNodes

    with RedisClusterNodes(masters=3) as nodes:
        servers = nodes.servers
        with two_nodes([servers[0].port] * 3, "mb") as (A, B, raw):
            sessions = sessions_on_every_master(A, raw, n=6)
            warm(B, sessions)
            before_map = list(B.coordinator.shards.by_slot)
            flushes = B.coordinator.stats.full_flushes
            ids = {s.port: redis.Redis(port=s.port).execute_command("CLUSTER", "MYID").decode() for s in servers}
            cli, entry = find_cli_binary(), f"127.0.0.1:{servers[0].port}"

            def reshard(source: int, target: int) -> None:
                subprocess.run([cli, "--cluster", "reshard", entry, "--cluster-from", ids[servers[source].port],
                                "--cluster-to", ids[servers[target].port], "--cluster-slots", "5", "--cluster-yes"],
                               check=True, timeout=60, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

            B.coordinator.stop()
            reconnects = A.coordinator.stats.reconnects
            reshard(0, 1)
            wait_until(lambda: A.coordinator.stats.reconnects > reconnects and A.coordinator.shards is None, 5,
                       what="A to see the change (its new map waiting)")
            s = sessions[0]
            s["i"] = 777
            assert A.save(s) is True  # unnumbered, on the plain channel: B is not listening
            reshard(1, 0)
            wait_until(lambda: A.coordinator.stats.reconnects > reconnects + 1, 5, what="A to see the slots come back")
            assert B.coordinator.start(timeout=5.0)
            assert list(B.coordinator.shards.by_slot) == before_map  # the very map B left
            assert B.coordinator.stats.full_flushes == flushes + 1
            assert B.load(s.id)["i"] == 777


def test_a_failover_while_away_evicts_that_shard_only() -> None:
    """B's listener is stopped; a replica takes over its master's slots (``CLUSTER
    FAILOVER``) and A saves a session there.  B comes back to the same slot map: the
    replay of that shard finds another server (its ``master_replid``), so B evicts the
    sessions of that shard's slots, and only those; the other shards' replays find
    nothing missed, and their sessions stay cached.  No read is stale."""
    from ..support import RedisClusterNodes

    with RedisClusterNodes(masters=3, replicas=1) as nodes:
        servers = nodes.servers
        with two_nodes([servers[0].port] * 3, "fw") as (A, B, raw):
            prefix = A._keys.prefix
            sessions = sessions_on_every_master(A, raw, n=12)
            warm(B, sessions)
            shard = B.coordinator.channel_for(prefix + sessions[0].id)
            victim = [s for s in sessions if B.coordinator.channel_for(prefix + s.id) == shard]
            others = [s for s in sessions if s not in victim]
            master = raw.get_node_from_key(prefix + sessions[0].id)
            old = redis.Redis(host=master.host, port=int(master.port))
            replica_port = int(old.info("replication")["slave0"]["port"])
            replica = redis.Redis(host="127.0.0.1", port=replica_port)
            flushes, map_before = B.coordinator.stats.full_flushes, list(B.coordinator.shards.by_slot)
            B.coordinator.stop()
            reconnects = A.coordinator.stats.reconnects
            replica.execute_command("CLUSTER", "FAILOVER")
            wait_until(lambda: replica.info("replication")["role"] == "master" and old.info("replication")["role"] == "slave",
                       10, what="the replica to take over")
            wait_until(lambda: A.coordinator.stats.reconnects > reconnects and A.coordinator.subscribed, 10,
                       what="A to follow the new master")
            raw.nodes_manager.initialize()
            s = sessions[0]
            s["i"] = 4242
            assert A.save(s) is True  # numbered on the promoted master
            assert B.coordinator.start(timeout=5.0)
            assert list(B.coordinator.shards.by_slot) == map_before
            assert B.coordinator.stats.full_flushes == flushes + 1
            assert not any(cached(B, v.id) for v in victim)
            assert all(cached(B, o.id) for o in others)  # the other shards' sessions stay
            assert B.load(s.id)["i"] == 4242
            hits = B.cache_stats().hits
            for o in others:
                assert B.load(o.id)["i"] == o["i"]
            assert B.cache_stats().hits == hits + len(others)
            old.close()
            replica.close()


# --- one shard's history lost: only that shard's sessions go ---------------------------------


@pytest.fixture
def small_log(cluster: list[RedisServer]) -> Iterator[Stores]:
    """Like ``stores``, with a replay log of 5 entries per shard channel (``MAXLEN ~``
    trims whole stream nodes: about every 100 entries)."""
    with two_nodes([cluster[i].port for i in (0, 1, 2)], "tl", replay_log_size=5) as nodes:
        yield nodes


def by_shard(store: ClusteredRedisStore, sessions: list[Session]) -> dict[str, list[Session]]:
    out: dict[str, list[Session]] = {}
    for s in sessions:
        out.setdefault(store.coordinator.channel_for(store.prefix + s.id), []).append(s)
    assert len(out) == 3
    return out


def test_a_trimmed_shard_log_evicts_that_shards_sessions_only(small_log: Stores) -> None:
    """B misses 250 saves on one shard (its log, capped at 5, no longer reaches back) and
    one save on another: the first shard's sessions are evicted (a flush of its slots),
    the second's replay evicts just the saved id, the third shard's sessions stay cached;
    no read is stale."""
    A, B, raw = small_log
    sessions = sessions_on_every_master(A, raw, n=12)
    warm(B, sessions)
    groups = list(by_shard(A, sessions).values())
    trimmed, replayed, untouched = groups
    busy, once = trimmed[0], replayed[0]
    stats = B.coordinator.stats

    def write() -> None:
        for n in range(250):
            busy["i"] = n
            assert A.save(busy) is True
        once["i"] = -1
        assert A.save(once) is True

    missing(B, write)
    shard = A.coordinator.channel_for(A.prefix + busy.id)
    assert len(shard_log(raw, shard)[1]) < 250  # the log was trimmed
    after = B.coordinator.stats
    assert after.full_flushes == stats.full_flushes + 1
    assert not any(cached(B, s.id) for s in trimmed)  # that shard's slots: evicted
    assert all(cached(B, s.id) for s in untouched)  # the third shard: kept
    assert all(cached(B, s.id) for s in replayed[1:])  # the replayed shard: only the saved id went
    assert B.load(busy.id)["i"] == 249 and B.load(once.id)["i"] == -1
    hits = B.cache_stats().hits
    for s in untouched + replayed[1:]:
        assert B.load(s.id)["i"] == s["i"]
    assert B.cache_stats().hits == hits + len(untouched) + len(replayed) - 1


def test_flushdb_on_one_master_evicts_that_shards_sessions_at_its_next_message(stores: Stores) -> None:
    """FLUSHDB on one master under B's live connection: the next write there starts a new
    epoch; B evicts the sessions of that shard's slots (all gone from Redis) and keeps the
    others."""
    A, B, raw = stores
    sessions = sessions_on_every_master(A, raw, n=12)
    warm(B, sessions)
    groups = by_shard(A, sessions)
    shard, flushed = next(iter(groups.items()))
    kept = [s for s in sessions if s not in flushed]
    stats = B.coordinator.stats
    master_of(raw, A.prefix + flushed[0].id).flushdb()
    fresh = A.create({"i": "new"})
    while A.coordinator.channel_for(A.prefix + fresh.id) != shard:
        fresh = A.create({"i": "new"})
    before = B.coordinator.stats.created
    assert A.save(fresh) is True  # the first message of the new epoch on that shard
    wait_until(lambda: B.coordinator.stats.created > before, 5, what="B to hear the new epoch")
    assert B.coordinator.stats.full_flushes == stats.full_flushes + 1
    assert not any(cached(B, s.id) for s in flushed)
    assert all(B.load(s.id) is None for s in flushed)  # gone from Redis, and not served
    hits = B.cache_stats().hits
    for s in kept:
        assert B.load(s.id)["i"] == s["i"]
    assert B.cache_stats().hits == hits + len(kept)
    assert B.load(fresh.id)["i"] == "new"


def test_flushdb_on_one_master_while_away_evicts_that_shards_sessions_at_the_replay(stores: Stores) -> None:
    """B's listener is stopped while one master is flushed (and nothing written there
    since): its replay of that shard finds another epoch (none), and B evicts that shard's
    sessions only."""
    A, B, raw = stores
    sessions = sessions_on_every_master(A, raw, n=12)
    warm(B, sessions)
    groups = by_shard(A, sessions)
    flushed = next(iter(groups.values()))
    kept = [s for s in sessions if s not in flushed]
    stats = B.coordinator.stats
    missing(B, lambda: master_of(raw, A.prefix + flushed[0].id).flushdb())
    assert B.coordinator.stats.full_flushes == stats.full_flushes + 1
    assert not any(cached(B, s.id) for s in flushed)
    assert all(B.load(s.id) is None for s in flushed)
    hits = B.cache_stats().hits
    for s in kept:
        assert B.load(s.id)["i"] == s["i"]
    assert B.cache_stats().hits == hits + len(kept)
