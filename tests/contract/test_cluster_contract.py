"""Cluster behaviours, once for both flavours: two ``ClusteredRedisStore`` nodes A and B.

``nodes`` gives two subscribed stores on one private channel, sync or asyncio (ids
``clustered-sync`` / ``clustered-asyncio``; both flavours share the listener thread).
"Nothing arrived" is asserted after a barrier message (``barrier``; a raw subscriber's
``until_barrier``), never after a sleep.
"""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any

import msgpack
import pytest
import redis
import redis.asyncio

from fastsess import ClusterConfig, Session
from fastsess.cluster import CLEARED, DELETED, INVALIDATED, TOUCHED, decode_message, encode_message
from fastsess.stores.base import is_valid_session_id, new_session_id

from ..support.pubsub import RawSubscriber
from .conftest import Blocking, ClusteredBackend, Nodes, barrier, listener_threads, received, sync_store, wait_received, wait_until


def unnumbered(msg: dict[str, Any] | None) -> dict[str, Any]:
    """A decoded message without its epoch and sequence number (``ep``, ``sq``)."""
    assert msg is not None
    return {k: v for k, v in msg.items() if k not in ("ep", "sq")}


def saved(store: Any, data: dict[str, Any] | None = None, **kw: Any) -> Session:
    s = store.create({"user": 1, "roles": ["a"]} if data is None else data, **kw)
    assert store.save(s) is True
    return s



@pytest.fixture
def subscriber(redis_url: str) -> Any:
    subs: list[RawSubscriber] = []

    def make(channel: str) -> RawSubscriber:
        sub = RawSubscriber(redis_url, channel)
        subs.append(sub)
        return sub

    yield make
    for sub in subs:
        sub.close()


# --- the RedisStore API on two nodes ------------------------------------------------------


def test_is_a_redis_store_with_the_same_api(nodes: Nodes) -> None:
    A, B, raw, _, backend = nodes
    base = backend.api.RedisStore
    assert isinstance(A.wrapped if isinstance(A, Blocking) else A, base)
    s = A.create({"user": 7})
    assert s.new and is_valid_session_id(s.id) and raw.dbsize() == 0  # create writes nothing (the listener neither)
    assert A.load(s.id) is None and not A.exists(s.id)
    assert A.save(s) is True and s.new is False and s.version == 1
    assert A.save(s) is False  # unmodified: nothing to write
    for store in (A, B):
        loaded = store.load(s.id)
        assert loaded is not None and dict(loaded) == {"user": 7} and loaded.version == 1 and not loaded.new
        assert store.exists(s.id)
    assert 1700 <= raw.ttl(A.prefix + s.id) <= 1800
    before = received(B)
    assert A.touch(s.id, ttl=500) is True and 490 <= raw.ttl(A.prefix + s.id) <= 500
    wait_received(B, before)
    assert B.touch(s.id) is True and 1790 <= raw.ttl(A.prefix + s.id) <= 1800
    old, before = s.id, received(B)
    assert A.regenerate(s) is s and s.id != old
    wait_received(B, before)
    assert not A.exists(old) and A.exists(s.id) and A.load(old) is None
    assert not B.exists(old) and B.load(old) is None
    assert dict(B.load(s.id)) == {"user": 7}
    before = received(B)
    assert A.delete(s.id) is True and A.delete(s.id) is False
    wait_received(B, before)  # B may serve its copy until the delete message arrives, not after
    assert B.load(s.id) is None and not B.exists(s.id)
    for bad in ("short", "x" * 43 + "!", "", None, 42):
        assert A.load(bad) is None
        assert A.exists(bad) is False and A.delete(bad) is False and A.touch(bad) is False


def test_iter_ids_count_clear_across_nodes_only_touch_this_prefix(nodes: Nodes) -> None:
    A, B, raw, _, _ = nodes
    ids = {saved(A, {"i": i}).id for i in range(25)}
    foreign = {"other:" + new_session_id(): b"x", A.prefix + "meta": b"y", new_session_id(): b"z"}
    for k, v in foreign.items():
        raw.set(k, v)
    assert set(B.iter_ids()) == ids
    assert A.count() == B.count() == 25
    assert B.clear() == 25
    assert A.count() == 0 and list(A.iter_ids()) == []
    assert all(raw.get(k) == v for k, v in foreign.items())


def test_context_manager_runs_and_ends_the_listener(clustered: ClusteredBackend) -> None:
    before = len(listener_threads())
    cfg = ClusterConfig(node_id="ctx-node", channel=clustered.channel, subscribe_timeout=0.5)
    store = clustered.wrap(clustered.store_class(url=clustered.url, config=cfg, prefix=clustered.prefix))
    with store as entered:
        assert entered is store
        assert store.coordinator is not None and store.coordinator.running
        assert store.coordinator.wait_subscribed(5)
        assert len(listener_threads()) == before + 1
        assert "fastsess-listener-ctx-node" in {t.name for t in listener_threads()}
        s = saved(store)
        assert store.load(s.id) == s
    wait_until(lambda: len(listener_threads()) == before, 5, what="listener thread to end")
    assert not store.coordinator.running and not store.coordinator.subscribed
    # the node id is free again once closed
    with clustered.wrap(clustered.store_class(url=clustered.url, config=cfg, prefix=clustered.prefix)) as again:
        assert again.load(s.id) == s
    store.close()  # closing twice is harmless


def test_same_node_id_is_a_label_not_the_identity(clustered: ClusteredBackend) -> None:
    """Two stores configured with the same node_id (one ClusterConfig shared, or the same
    FASTSESS_NODE_ID) still invalidate each other: messages carry a random instance id."""
    a = clustered.make(cluster={"node_id": "dup-node"})
    b = clustered.make(cluster={"node_id": "dup-node"})
    assert a.coordinator.node_id == b.coordinator.node_id == "dup-node"
    assert a.coordinator.instance_id != b.coordinator.instance_id and a.coordinator.instance_id.startswith("dup-node/")
    s = saved(a)
    assert b.load(s.id)["user"] == 1 and b.load(s.id)["user"] == 1  # cached on b
    before = received(b)
    s["user"] = 2
    assert a.save(s)
    wait_received(b, before)
    assert b.load(s.id)["user"] == 2
    assert a.coordinator.stats.foreign_own_id == b.coordinator.stats.foreign_own_id == 0


def test_sync_and_asyncio_nodes_interoperate(redis_url: str, prefix: str, loop_thread: Any) -> None:
    """A deployment may mix sync and asyncio workers on one channel."""
    sync = ClusteredBackend("sync", loop_thread, redis_url, redis.Redis.from_url(redis_url), prefix)
    aio = ClusteredBackend("asyncio", loop_thread, redis_url, sync.client, prefix)
    aio.channel = sync.channel
    try:
        A, B = sync.make(name="sync"), aio.make(name="aio")
        s = saved(A, {"v": 1})
        assert B.load(s.id)["v"] == 1
        before = received(B)
        s["v"] = 2
        A.save(s)
        wait_received(B, before)
        assert B.load(s.id)["v"] == 2
        on_b = B.load(s.id)
        assert A.load(s.id)["v"] == 2  # cached on A now
        got = received(A)
        on_b["v"] = 3
        B.save(on_b)
        wait_received(A, got)
        assert A.load(s.id)["v"] == 3
    finally:
        aio.close()
        sync.close()
        sync.client.close()


# --- the local cache ---------------------------------------------------------------------


def test_cached_load_returns_a_private_copy(nodes: Nodes) -> None:
    A, B, _, _, _ = nodes
    s = saved(A, {"user": 1, "name": "x"})
    first = B.load(s.id)  # miss: fills the cache
    first["name"] = "mutated"
    first["extra"] = True
    del first["user"]
    second = B.load(s.id)  # hit
    assert dict(second) == {"user": 1, "name": "x"}
    assert second is not first and not second.modified and not second.new
    second["name"] = "again"
    assert dict(B.load(s.id)) == {"user": 1, "name": "x"}
    # the writer's own cache is a snapshot too: mutating the saved object changes nothing
    s["name"] = "unsaved"
    assert A.load(s.id)["name"] == "x"


def test_load_shared_hands_out_the_cached_session_itself(nodes: Nodes) -> None:
    A, B, _, _, backend = nodes
    if backend.is_async:  # the sync store's only (the Django drop-in reads through it)
        assert not hasattr(sync_store(B), "load_shared")
        return
    s = saved(A, {"user": 1, "roles": ["a"]})
    missed = B.load_shared(s.id)  # a miss reads Redis: a session of its own, cached after
    hit = B.load_shared(s.id)
    assert missed is not None and hit is not None and hit is not missed
    assert dict(hit) == dict(missed) == {"user": 1, "roles": ["a"]}
    assert B.load_shared(s.id) is hit  # the cached object (no copy): never changed by its reader
    loaded = B.load(s.id)
    assert loaded is not hit and dict(loaded) == dict(hit)  # load still hands out copies
    assert B.load_shared(new_session_id()) is None and B.load_shared("not an id") is None


def test_cache_is_really_used_and_stats_count(nodes: Nodes) -> None:
    A, B, _, _, backend = nodes
    s = saved(A, {"v": 1})
    base = B.cache_stats()
    assert B.load(s.id)["v"] == 1
    after_miss = B.cache_stats()
    assert after_miss.misses == base.misses + 1 and after_miss.hits == base.hits and after_miss.size == base.size + 1
    backend.behind_the_back(B, s.id, {"v": "ghost"})  # no invalidation sent
    for _ in range(5):
        assert B.load(s.id)["v"] == 1  # served from the cache, not Redis
    stats = B.cache_stats()
    assert stats.hits == base.hits + 5 and stats.misses == base.misses + 1
    assert 0 < stats.hit_rate <= 1 and stats.max_size == 10_000
    assert B.load(new_session_id()) is None
    assert B.cache_stats().misses == base.misses + 2


def test_evict_from_cache_and_clear_local_cache_are_local(nodes: Nodes) -> None:
    A, B, raw, _, backend = nodes
    s1, s2 = saved(A, {"n": 1}), saved(A, {"n": 2})
    for s in (s1, s2):
        B.load(s.id)
    assert B.cache_stats().size == 2 and A.cache_stats().size == 2
    backend.behind_the_back(B, s1.id, {"n": "new1"})
    backend.behind_the_back(B, s2.id, {"n": "new2"})
    assert B.load(s1.id)["n"] == 1  # cached
    assert B.evict_from_cache(s1.id) is True and B.evict_from_cache(s1.id) is False
    assert B.evict_from_cache("not-an-id") is False
    assert B.load(s1.id)["n"] == "new1"  # re-read from Redis
    assert B.load(s2.id)["n"] == 2
    got_a = received(A)
    B.clear_local_cache()
    assert B.cache_stats().size == 0
    assert B.load(s2.id)["n"] == "new2"
    assert A.cache_stats().size == 2 and A.load(s2.id)["n"] == 2  # A untouched
    barrier(B, A)
    assert received(A) == got_a + 1  # the barrier only: clear_local_cache published nothing
    assert raw.exists(A.prefix + s1.id) == 1


def test_local_cache_is_capped(clustered: ClusteredBackend) -> None:
    A, B = clustered.make(name="A"), clustered.make(name="B", cluster={"local_cache_max_size": 5})
    ids = [saved(A, {"i": i}).id for i in range(12)]
    for sid in ids:
        B.load(sid)
    stats = B.cache_stats()
    assert stats.size == 5 and stats.max_size == 5 and stats.evictions >= 7


def test_corrupt_data_is_not_cached(nodes: Nodes) -> None:
    from fastsess.errors import SessionCorrupt

    A, B, raw, _, _ = nodes
    sid = new_session_id()
    raw.set(A.prefix + sid, msgpack.packb({"user": 1}))  # msgpack, but not a fastsess session
    for _ in range(2):
        with pytest.raises(SessionCorrupt):
            B.load(sid)
    assert B.cache_stats().size == 0


# --- propagation ------------------------------------------------------------------------------


def test_write_on_a_is_seen_on_b_once_the_invalidation_arrives(nodes: Nodes) -> None:
    A, B, _, _, _ = nodes
    s = saved(A, {"v": 1})
    assert B.load(s.id)["v"] == 1 and B.load(s.id)["v"] == 1  # cached on B
    hits = B.cache_stats().hits
    before, published = received(B), A.coordinator.stats.published
    s["v"] = 2
    assert A.save(s) is True
    assert A.coordinator.stats.published == published + 1
    wait_received(B, before)
    got = B.load(s.id)
    assert got["v"] == 2 and got.version == s.version
    assert B.cache_stats().hits == hits  # that was a miss: the old copy was evicted
    assert B.load(s.id)["v"] == 2 and B.cache_stats().hits == hits + 1  # and the new one is cached


def test_b_never_serves_its_old_copy_after_the_invalidation(nodes: Nodes) -> None:
    A, B, _, _, _ = nodes
    s = saved(A, {"v": 0})
    for version in range(1, 21):
        assert B.load(s.id)["v"] == version - 1  # caches the current value
        before = received(B)
        s["v"] = version
        A.save(s)
        deadline = time.monotonic() + 5
        while received(B) == before:  # until the message: old or new, never anything else
            assert B.load(s.id)["v"] in (version - 1, version)
            assert time.monotonic() < deadline, "no invalidation"
        assert B.load(s.id)["v"] == version


def test_delete_propagates(nodes: Nodes) -> None:
    A, B, _, _, _ = nodes
    s = saved(A)
    assert B.load(s.id) is not None and B.load(s.id) is not None
    before = received(B)
    assert A.delete(s.id) is True
    wait_received(B, before)
    assert B.load(s.id) is None and A.load(s.id) is None
    assert not B.exists(s.id)


def test_delete_of_an_expired_key_still_evicts_cached_copies(nodes: Nodes) -> None:
    A, B, raw, _, _ = nodes
    s = saved(A)
    assert B.load(s.id) is not None
    raw.delete(A.prefix + s.id)  # gone from Redis behind everyone's back (expiry, eviction)
    before = received(B)
    assert A.delete(s.id) is False
    wait_received(B, before)
    assert B.load(s.id) is None


def test_clear_propagates_and_flushes_every_cache(nodes: Nodes) -> None:
    A, B, _, _, _ = nodes
    sessions = [saved(A, {"i": i}) for i in range(10)]
    for s in sessions:
        assert B.load(s.id) is not None
    assert B.cache_stats().size == 10
    before = received(B)
    assert A.clear() == 10
    wait_received(B, before)
    assert B.cache_stats().size == 0 and A.cache_stats().size == 0
    assert all(B.load(s.id) is None for s in sessions)
    assert B.count() == 0


def test_touch_propagates_an_invalidation(nodes: Nodes) -> None:
    A, B, raw, _, _ = nodes
    s = saved(A)
    assert B.load(s.id) is not None
    size = B.cache_stats().size
    before = received(B)
    assert A.touch(s.id, ttl=900) is True
    wait_received(B, before)
    assert B.cache_stats().size == size - 1
    assert B.evict_from_cache(s.id) is False  # already gone
    assert 890 <= raw.ttl(A.prefix + s.id) <= 900
    assert A.touch(new_session_id()) is False  # unknown id: no message
    barrier(A, B)
    assert received(B) == before + 2  # the touch and the barrier, nothing for the unknown id


def test_session_shortened_by_touch_is_not_served_after_it_expired(nodes: Nodes) -> None:
    """touch(id, ttl=1) makes the key expire in 1 s; no node may serve it from cache after that."""
    A, B, raw, _, _ = nodes
    s = saved(A, {"user": 1})
    assert A.touch(s.id, ttl=1) is True
    assert B.load(s.id) is not None and A.load(s.id) is not None  # both fill their caches now
    wait_until(lambda: raw.exists(A.prefix + s.id) == 0, 5, what="the key to expire in Redis")
    assert A.load(s.id) is None, "A serves a session that expired in Redis from its cache"
    assert B.load(s.id) is None, "B serves a session that expired in Redis from its cache"


def test_regenerate_removes_the_old_id_everywhere(nodes: Nodes) -> None:
    A, B, raw, _, _ = nodes
    s = saved(A, {"user": 5})
    old = s.id
    assert B.load(old) is not None and A.load(old) is not None
    before = received(B)
    A.regenerate(s)
    assert s.id != old
    wait_received(B, before)
    assert B.load(old) is None and A.load(old) is None
    assert raw.exists(A.prefix + old) == 0
    assert dict(B.load(s.id)) == {"user": 5} and dict(A.load(s.id)) == {"user": 5}


def test_save_after_delete_elsewhere_does_not_resurrect(nodes: Nodes) -> None:
    A, B, raw, _, _ = nodes
    s = saved(A)
    on_b = B.load(s.id)
    before = received(B)
    A.delete(s.id)
    wait_received(B, before)
    on_b["x"] = 1
    assert B.save(on_b) is False
    assert raw.exists(A.prefix + s.id) == 0 and B.load(s.id) is None and A.load(s.id) is None


def test_a_ignores_its_own_messages(nodes: Nodes) -> None:
    A, B, _, _, _ = nodes
    own, got_a, got_b = A.coordinator.stats.ignored_own, received(A), received(B)
    s = saved(A)  # the creation publishes too (negative caches forget the id)
    wait_until(lambda: A.coordinator.stats.ignored_own >= own + 1, 5, what="the creation's echo")
    own += 1
    s["x"] = 1
    A.save(s)
    A.touch(s.id)
    A.delete(s.id)
    A.clear()
    wait_until(lambda: A.coordinator.stats.ignored_own >= own + 4, 5, what="own messages echoed back")
    wait_until(lambda: received(B) >= got_b + 4, 5, what="B to receive 4 messages")
    assert received(A) == got_a
    assert A.coordinator.stats.ignored_own == own + 4
    assert A.coordinator.stats.malformed == B.coordinator.stats.malformed == 0


def test_on_message_hook_and_thread_name(nodes: Nodes) -> None:
    A, B, _, _, _ = nodes
    seen: list[dict[str, Any]] = []
    B.coordinator.on_message = seen.append
    s = saved(A)
    A.delete(s.id)
    wait_until(lambda: len(seen) >= 2, 5)
    assert [(m["t"], m["id"]) for m in seen] == [(INVALIDATED, s.id), (DELETED, s.id)]  # created, deleted
    names = {t.name for t in threading.enumerate()}
    assert f"fastsess-listener-{B.config.node_id[:12]}" in names


# --- what goes on the wire -------------------------------------------------------------------


def test_first_save_publishes_the_new_id(nodes: Nodes, subscriber: Any) -> None:
    # marked as a creation: nodes remembering the id as absent (negative cache) forget it
    A, _, _, channel, _ = nodes
    sub = subscriber(channel)
    published = A.coordinator.stats.published
    s = saved(A)
    assert [unnumbered(decode_message(m)) for m in sub.until_barrier()] == [
        {"t": INVALIDATED, "id": s.id, "node": A.coordinator.instance_id, "v": s.version, "c": True},
    ]
    assert A.coordinator.stats.published == published + 1
    s["x"] = 1
    A.save(s)
    msg = decode_message(sub.next())
    assert unnumbered(msg) == {"t": INVALIDATED, "id": s.id, "node": A.coordinator.instance_id, "v": s.version}


def test_messages_on_the_wire(nodes: Nodes, subscriber: Any) -> None:
    A, _, _, channel, _ = nodes
    sub = subscriber(channel)
    s = saved(A)
    s["x"] = 1
    A.save(s)
    A.touch(s.id)
    old = s.id
    A.regenerate(s)
    A.delete(s.id)
    A.clear()
    msgs = [decode_message(m) for m in sub.until_barrier()]
    assert [(m["t"], m["id"]) for m in msgs] == [
        (INVALIDATED, old), (INVALIDATED, old), (TOUCHED, old), (DELETED, old), (DELETED, s.id), (CLEARED, None),
    ]
    assert all(m["node"] == A.coordinator.instance_id for m in msgs)
    # Standalone Redis: every write's script numbers its message, in the order they ran.
    first = msgs[0]["sq"]
    assert [m["sq"] for m in msgs] == list(range(first, first + len(msgs)))
    assert len({m["ep"] for m in msgs}) == 1


def test_default_channel(clustered: ClusteredBackend, subscriber: Any) -> None:
    sub = subscriber("fastsess:invalidate")
    store = clustered.make(cluster={"channel": "fastsess:invalidate"})
    s = saved(store)
    store.delete(s.id)
    node = store.coordinator.instance_id
    assert unnumbered(decode_message(sub.next())) == {"t": INVALIDATED, "id": s.id, "node": node, "v": 1, "c": True}
    assert unnumbered(decode_message(sub.next())) == {"t": DELETED, "id": s.id, "node": node, "v": 0}


# --- configurations ----------------------------------------------------------------------


def test_disabled_is_a_plain_redis_store(clustered: ClusteredBackend, subscriber: Any) -> None:
    sub = subscriber(clustered.channel)
    threads = len(listener_threads())
    store = clustered.make(cluster={"enabled": False})
    other = clustered.make(name="B")
    assert store.coordinator is None
    assert len(listener_threads()) == threads + 1  # only `other` listens
    assert not [t for t in listener_threads() if store.config.node_id[:12] in t.name]
    s = saved(store, {"v": 1})
    s["v"] = 2
    store.save(s)
    assert other.load(s.id)["v"] == 2
    store.touch(s.id)
    clustered.behind_the_back(store, s.id, {"v": "raw"})
    assert store.load(s.id)["v"] == "raw"  # never cached
    assert store.load(s.id)["v"] == "raw"
    stats = store.cache_stats()
    assert (stats.size, stats.hits, stats.misses) == (0, 0, 0)
    assert store.evict_from_cache(s.id) is False
    store.clear_local_cache()
    store.regenerate(s)
    store.delete(s.id)
    saved(store)
    store.clear()
    assert sub.until_barrier() == []  # nothing was ever published
    wait_until(lambda: other.coordinator.stats.malformed >= 1, what="the raw barrier marker to reach `other`")
    assert received(other) == 0


def test_local_cache_disabled_still_publishes_but_never_caches(clustered: ClusteredBackend, subscriber: Any) -> None:
    sub = subscriber(clustered.channel)
    A = clustered.make(name="A", cluster={"local_cache_enabled": False})
    B = clustered.make(name="B")
    s = saved(A, {"v": 1})
    assert B.load(s.id)["v"] == 1  # B caches
    before = received(B)
    s["v"] = 2
    A.save(s)
    msg = decode_message(sub.next())
    assert msg is not None and msg["t"] == INVALIDATED and msg["id"] == s.id and msg["node"] == A.coordinator.instance_id
    wait_received(B, before)
    assert B.load(s.id)["v"] == 2
    for _ in range(3):
        assert A.load(s.id)["v"] == 2
    clustered.behind_the_back(A, s.id, {"v": "raw"})
    assert A.load(s.id)["v"] == "raw"  # A never caches
    stats = A.cache_stats()
    assert (stats.size, stats.hits) == (0, 0)
    # A still receives and counts B's messages
    got = received(A)
    s2 = B.load(s.id)
    s2["v"] = 3
    B.save(s2)
    wait_received(A, got)


@pytest.mark.parametrize("protocol", [2, 3])
def test_invalidations_arrive_over_resp2_and_resp3_clients(clustered: ClusteredBackend, protocol: int) -> None:
    # RESP2 replies are read straight off the connection; RESP3 push frames go through
    # redis-py's get_message.  Both must deliver, ignore echoes and PONG.
    clients = [clustered.new_client(protocol=protocol) for _ in range(2)]
    try:
        A, B = (clustered.make(client=c, name=n, cluster={"subscribe_timeout": 0.3}) for c, n in zip(clients, "AB"))
        s = saved(A, {"n": 0})
        assert B.load(s.id)["n"] == 0
        for n in range(1, 4):
            before = received(B)
            s["n"] = n
            A.save(s)
            wait_received(B, before)
            assert B.load(s.id)["n"] == n
        # idle past subscribe_timeout: each listener sends its liveness PING (the last
        # command Redis saw on every subscribed connection) ...
        def pinged() -> bool:
            last = [c["cmd"] for c in clustered.client.client_list() if c.get("sub") != "0"]
            return len(last) >= 2 and set(last) == {"ping"}

        wait_until(pinged, 5, what="the liveness PINGs")
        barrier(A, B)  # ... and still applies messages after its PONG
        assert B.coordinator.stats.subscribed and B.coordinator.stats.reconnects == 0
        wait_until(lambda: A.coordinator.stats.ignored_own >= 5, what="A's echo of the barrier")
        assert A.coordinator.stats.ignored_own == 5  # the creation, 3 writes and the barrier
    finally:
        clustered.close()
        for c in clients:
            clustered.close_client(c)


# --- one round trip per write ------------------------------------------------------------


class CountingConnection(redis.Connection):
    """Records what a client sends: one ``send_packed_command`` is one round trip."""

    log: list[tuple[int, bytes]] = []
    pubsub_conns: set[int] = set()

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        record(self, command)
        super().send_packed_command(command, check_health)


def record(conn: Any, command: Any) -> None:
    data = command if isinstance(command, (bytes, bytearray)) else b"".join(bytes(c) for c in command)
    if b"SUBSCRIBE" in data.upper()[:40]:
        CountingConnection.pubsub_conns.add(id(conn))
    CountingConnection.log.append((id(conn), bytes(data)))


def sent_commands(since: int) -> list[bytes]:
    """Commands sent on non-pub/sub connections since log index ``since`` (their name)."""
    out = []
    for conn, data in CountingConnection.log[since:]:
        if conn in CountingConnection.pubsub_conns:
            continue
        out.append(data.split(b"\r\n")[2].upper())  # RESP array: *N\r\n$len\r\nNAME\r\n...
    return out


def test_each_write_is_one_round_trip_with_its_publish(
    clustered: ClusteredBackend, redis_server: Any, subscriber: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    if clustered.flavour == "sync":
        client: Any = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=CountingConnection, host="127.0.0.1", port=redis_server.port))
    else:
        # the listener copies the client's connection class onto a sync pool by name, so an
        # asyncio subclass cannot be used: record on redis.asyncio's connections instead
        real_send = redis.asyncio.connection.AbstractConnection.send_packed_command

        async def send_packed_command(self: Any, command: Any, check_health: bool = True) -> None:
            record(self, command)
            await real_send(self, command, check_health)

        monkeypatch.setattr(redis.asyncio.connection.AbstractConnection, "send_packed_command", send_packed_command)
        client = redis.asyncio.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        sub = subscriber(clustered.channel)
        store = clustered.make(client=client)
        warm = saved(store)
        warm["w"] = 1
        store.save(warm)  # first use of the script: EVALSHA may answer NOSCRIPT once
        store.touch(warm.id)
        store.delete(warm.id)
        sub.until_barrier()

        def stats() -> dict[str, int]:
            info = clustered.client.info("commandstats")
            return {c: info.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval", "publish", "set", "del", "expire")}

        s = store.create({"a": 1})
        for op in ("create", "save", "touch", "delete"):  # create: the first save, SET NX
            if op == "save":
                s["a"] += 1
            mark, before = len(CountingConnection.log), stats()
            getattr(store, "save" if op == "create" else op)(s if op in ("create", "save") else s.id)
            assert sent_commands(mark) == [b"EVALSHA"], op  # one round trip ...
            after = stats()
            assert after["evalsha"] == before["evalsha"] + 1, op
            assert after["publish"] == before["publish"] + 1, op  # ... that published inside the script
            assert after["eval"] == before["eval"]
            msg = decode_message(sub.next())
            assert msg is not None and msg["id"] == s.id, op
    finally:
        clustered.close()
        clustered.close_client(client)


# --- bad input on the channel -----------------------------------------------------------


def _decodes(payload: bytes) -> bool:
    try:
        return decode_message(payload) is not None
    except Exception:  # noqa: BLE001 - a crash is not a valid message either (tested in test_messages)
        return False


def malformed_payloads(n: int) -> list[bytes]:
    rng = random.Random(1234)
    shapes: list[Any] = [
        [1, 2, 3], [1], "invalidated", "x", 42, None, {}, {"t": "invalidated"}, {"t": "nope", "id": "x", "node": "n"},
        {"t": "evicted", "id": "x", "node": "n"}, {"t": "invalidated", "id": 5, "node": "n"},
        {"t": "invalidated", "id": "x", "node": None}, {"t": "deleted", "node": "n"},
        {"t": "invalidated", "id": "x", "node": "n", "v": "1"}, {"t": "cleared", "node": "n", "v": 1.5},
        {"t": "cleared", "node": "n", "v": "1"},
        {"t": "invalidated", "id": "x", "node": "n", "v": True}, {b"t": b"cleared", b"node": b"n"},
        {"t": ["invalidated"], "id": "x", "node": "n"}, {"t": {"cleared": 1}, "node": "n"},
    ]
    fixed = [b"\xc1garbage", b"\x00" * 5000, encode_message(CLEARED, None, "n") + b"!"]
    out: list[bytes] = list(fixed)
    for i in range(n - len(fixed)):
        kind = i % 4
        if kind == 0:
            out.append(os.urandom(rng.randrange(0, 200)))
        elif kind == 1:
            out.append(msgpack.packb(shapes[(i // 4) % len(shapes)]))
        elif kind == 2:
            out.append(encode_message(CLEARED, None, "x") + b"\x00" * rng.randrange(1, 30))  # trailing junk
        else:
            out.append(b"\xa0" + os.urandom(rng.randrange(1024, 200_000)))  # too big to be ours
    out = [p for p in out if not _decodes(p)]
    assert len(out) == n, "a random payload happened to be valid; change the seed"
    return out


def test_a_thousand_malformed_messages_leave_the_listener_working(nodes: Nodes) -> None:
    A, B, raw, channel, _ = nodes
    s = saved(A, {"v": 0})
    wait_until(lambda: A.coordinator.stats.ignored_own >= 1, what="the echo of the creation")
    own = A.coordinator.stats.ignored_own
    assert B.load(s.id)["v"] == 0
    pipe = raw.pipeline(transaction=False)
    for payload in malformed_payloads(1000):
        pipe.publish(channel, payload)
    pipe.execute()
    # a real invalidation after the garbage (repeated in case the garbage cost us messages)
    deadline = time.monotonic() + 12
    version = 0
    while True:
        before = received(B)
        version += 1
        s["v"] = version
        A.save(s)
        try:
            wait_received(B, before, timeout=5.0)  # ~25 MB of garbage to wade through first
            break
        except pytest.fail.Exception:
            assert time.monotonic() < deadline, "B never applied an invalidation after the garbage"
    assert B.load(s.id)["v"] == version
    stats = B.coordinator.stats
    assert stats.malformed == 1000, stats
    assert stats.reconnects == 0 and stats.subscribed and stats.last_error is None, stats
    assert version == 1, "the first real invalidation after the garbage was lost"
    # A hears the garbage too; its own echo (published after the garbage) marks the end of it
    wait_until(lambda: A.coordinator.stats.ignored_own >= own + 1, what="A's own echo")
    assert A.coordinator.stats.malformed == 1000
    assert B.coordinator.running

