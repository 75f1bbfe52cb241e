"""Sequenced invalidations against a real Redis: what a listener that missed messages does.

B misses messages by stopping its listener while A writes (the listener's state, the
last sequence number applied, survives a stop).  Then B starts it again, resubscribes
and replays the log: it evicts exactly the ids written meanwhile, or flushes when the
log cannot tell (trimmed, or the data set flushed).
"""

from __future__ import annotations

from typing import Any

import redis

from fastsess import ClusteredRedisStore, Session
from fastsess._core.messages import INVALIDATED, append_sequence
from fastsess._core.sequence import log_keys

from ..support.waiting import wait_until
from .conftest import StoreFactory, received, wait_received


def saved(store: ClusteredRedisStore, data: dict[str, Any]) -> Session:
    s = store.create(data)
    assert store.save(s) is True
    return s


def cached(store: ClusteredRedisStore, sid: str) -> bool:
    assert store._cache is not None
    return store._cache.get(sid) is not None


def nodes(make_store: StoreFactory, url: str, **config: Any) -> tuple[ClusteredRedisStore, ClusteredRedisStore]:
    a = make_store(url, name="A")
    b = make_store(url, name="B", **config)
    for store in (a, b):
        assert store.coordinator is not None and store.coordinator.wait_subscribed(5.0)
    return a, b


def warm(b: ClusteredRedisStore, sessions: list[Session]) -> None:
    for s in sessions:
        b.load(s.id)
    assert all(cached(b, s.id) for s in sessions)


def missing(b: ClusteredRedisStore, write: Any) -> None:
    """Stop B's listener, run ``write()``, start it again and wait until B resubscribed and synced."""
    coordinator = b.coordinator
    assert coordinator is not None
    before = coordinator.stats.reconnects
    coordinator.stop()
    assert not coordinator.subscribed
    write()
    assert coordinator.start(timeout=5.0)
    wait_until(lambda: coordinator.stats.reconnects > before and coordinator.subscribed, 5, what="B to resubscribe")


def test_a_resubscription_evicts_exactly_what_was_written_meanwhile(make_store: StoreFactory, redis_url: str) -> None:
    A, B = nodes(make_store, redis_url)
    sessions = [saved(A, {"n": i}) for i in range(20)]
    warm(B, sessions)
    stats = B.coordinator.stats  # type: ignore[union-attr]

    def write() -> None:
        for s in sessions[:3]:
            s["n"] = 100
            assert A.save(s) is True
        assert A.delete(sessions[3].id) is True
        assert A.touch(sessions[4].id, 600) is True

    missing(B, write)
    after = B.coordinator.stats  # type: ignore[union-attr]
    assert after.replays == stats.replays + 1 and after.replayed_ids == stats.replayed_ids + 5
    assert after.full_flushes == stats.full_flushes
    assert all(cached(B, s.id) for s in sessions[5:])  # the rest of the cache is kept
    # The evicted ids that were cached are read again at once: cached with what Redis holds
    # (the deleted one is gone), so the first reads after the resubscription are hits.
    assert after.refilled == stats.refilled + 4 and not cached(B, sessions[3].id)
    hits = B.cache_stats().hits
    assert [B.load(s.id)["n"] for s in sessions[:3]] == [100] * 3 and B.load(sessions[4].id)["n"] == 4
    assert B.cache_stats().hits == hits + 4 and B.load(sessions[3].id) is None
    assert after.sequence == A.coordinator.stats.sequence  # type: ignore[union-attr]


def test_a_regenerate_a_logout_everywhere_and_a_clear_are_replayed_too(make_store: StoreFactory, redis_url: str) -> None:
    A, B = nodes(make_store, redis_url)
    sessions = [saved(A, {"n": i}) for i in range(6)]
    for s in sessions[:2]:
        A.bind(s, "user-1")
    warm(B, sessions)
    old_id = sessions[2].id

    def write() -> None:
        assert A.delete_all("user-1") == 2  # one log entry for the batch
        A.regenerate(sessions[2])

    missing(B, write)
    assert not any(cached(B, sid) for sid in (sessions[0].id, sessions[1].id, old_id))  # gone from Redis: not re-read
    assert all(cached(B, s.id) for s in sessions[3:])
    assert B.load(sessions[0].id) is None and B.load(old_id) is None
    flushes = B.coordinator.stats.full_flushes  # type: ignore[union-attr]
    missing(B, A.clear)  # a clear in the log flushes everything
    assert len(B._cache) == 0  # type: ignore[arg-type]
    assert B.coordinator.stats.full_flushes == flushes  # type: ignore[union-attr]  # (a logged clear, not a lost log)


def test_a_log_that_no_longer_reaches_back_flushes(make_store: StoreFactory, redis_url: str) -> None:
    A = make_store(redis_url, name="A", replay_log_size=5)
    B = make_store(redis_url, name="B", replay_log_size=5)
    for store in (A, B):
        assert store.coordinator is not None and store.coordinator.wait_subscribed(5.0)
    sessions = [saved(A, {"n": i}) for i in range(300)]
    warm(B, sessions[:10])

    def write() -> None:
        for s in sessions[10:]:  # 290 writes: XADD MAXLEN ~ 5 trims whole nodes of ~100 entries
            s["n"] = -1
            assert A.save(s) is True

    missing(B, write)
    assert B.coordinator.stats.full_flushes == 1 and len(B._cache) == 0  # type: ignore[union-attr,arg-type]


def test_flushdb_under_a_live_connection_flushes_at_the_next_message(make_store: StoreFactory, redis_url: str, redis_client: redis.Redis) -> None:
    A, B = nodes(make_store, redis_url)
    s = saved(A, {"n": 1})
    warm(B, [s])
    epoch = redis_client.hget(log_keys(make_store.channel)[0], "e")
    redis_client.flushdb()
    before = B.coordinator.stats.received  # type: ignore[union-attr]
    t = saved(A, {"n": 2})  # a new data set: a new epoch, numbering from 1
    # its creation message is the next one (wait_received leaves creation messages out)
    wait_until(lambda: B.coordinator.stats.received > before, 5, what="the creation message")  # type: ignore[union-attr]
    assert redis_client.hget(log_keys(make_store.channel)[0], "e") != epoch
    assert B.coordinator.stats.full_flushes == 1 and not cached(B, s.id)  # type: ignore[union-attr]
    assert B.load(s.id) is None and B.load(t.id)["n"] == 2


def test_a_gap_on_a_live_connection_is_repaired_at_once(make_store: StoreFactory, redis_url: str, redis_client: redis.Redis) -> None:
    """A message numbered past the next one (as if one had been lost): B bypasses its cache,
    replays from the first missing number and evicts what the log holds, keeping the rest."""
    A, B = nodes(make_store, redis_url)
    sessions = [saved(A, {"n": i}) for i in range(5)]
    warm(B, sessions)
    meta, log = log_keys(make_store.channel)
    stats = B.coordinator.stats  # type: ignore[union-attr]
    epoch = redis_client.hget(meta, "e").decode()
    # Number two writes in the log without publishing them (what B would miss), then
    # publish a third: B sees the gap.
    last = int(redis_client.hget(meta, "s"))
    for k, s in enumerate(sessions[:2], start=1):
        redis_client.xadd(log, {"i": s.id}, id=f"{last + k}-0")
    redis_client.hset(meta, "s", last + 3)
    redis_client.xadd(log, {"i": sessions[2].id}, id=f"{last + 3}-0")
    node = A.coordinator  # type: ignore[union-attr]
    message = append_sequence(node.message(INVALIDATED, sessions[2].id, 9, sequenced=True), epoch, last + 3)  # type: ignore[union-attr]
    redis_client.publish(make_store.channel, message)
    wait_until(lambda: B.coordinator.stats.replays > stats.replays, 5, what="B to replay")  # type: ignore[union-attr]
    wait_until(lambda: B.coordinator.subscribed, 5, what="B to serve again (after the evictions and re-reads)")  # type: ignore[union-attr]
    after = B.coordinator.stats  # type: ignore[union-attr]
    assert after.gaps == stats.gaps + 1 and after.full_flushes == stats.full_flushes and after.sequence == last + 3
    # Evicted; the two only the log named were cached, so they are read again at once (the
    # third was evicted by its own message first, like any invalidation: read on demand).
    assert after.replayed_ids == stats.replayed_ids + 3 and after.refilled == stats.refilled + 2
    assert not cached(B, sessions[2].id) and all(cached(B, s.id) for s in sessions[:2] + sessions[3:])
    sessions[4]["n"] = 40
    before = received(B)  # creation messages left out, as wait_received counts
    assert A.save(sessions[4]) is True
    wait_received(B, before)
    assert B.coordinator.stats.gaps == after.gaps and B.load(sessions[4].id)["n"] == 40  # type: ignore[union-attr]


def test_a_server_whose_replication_history_changed_is_not_trusted(make_store: StoreFactory, redis_server_factory: Any) -> None:
    """A failover seen from a listener that reconnects: its server took another history
    (here it resyncs from another master, then is promoted again: a new ``master_replid``,
    as on a promoted replica).  Numbers it remembers may name other writes now: B flushes.
    (Under a connection that stays up, the change shows at the next message, whose epoch
    differs: the resync replaced the data set.)"""
    first, other = redis_server_factory(), redis_server_factory()
    A, B = nodes(make_store, first.url)
    sessions = [saved(A, {"n": i}) for i in range(3)]
    warm(B, sessions)
    raw = redis.Redis.from_url(first.url)
    try:
        flushes = B.coordinator.stats.full_flushes  # type: ignore[union-attr]

        raw.replicaof("127.0.0.1", other.port)
        wait_until(lambda: raw.info("replication").get("master_link_status") == "up", 10, what="the resync")
        raw.replicaof("NO", "ONE")
        missing(B, lambda: None)
        assert B.coordinator.stats.full_flushes == flushes + 1 and len(B._cache) == 0  # type: ignore[union-attr,arg-type]
    finally:
        raw.close()
