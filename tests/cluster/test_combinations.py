"""Features that each lane tested alone, tested together (the ways production combines them).

* update mode x the pub/sub channel's trust (SECURITY.md): a forged update message makes
  no node serve data Redis does not hold, unless that node turned update mode on (and
  then encryption makes a forged value only an eviction);
* tracking x sequenced replay: changes made outside fastsess while a listener was away
  are not covered by the replay log, so a resubscription of a tracking listener flushes;
* tracking x update mode: the tracking notification of another node's update does not
  evict the copy that update just installed;
* the invalidation log and the principal index x garbage planted by a Redis writer:
  the listener neither wedges nor skips evictions, log out everywhere still works;
* stale_if_error x the lease: the window counts from the listener's last proof;
* fork() x tracking: a child's listener never waits on a lock a parent thread held.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from fastsess import ClusterConfig, ClusteredRedisStore, Session
from fastsess._core.breaker import CircuitBreaker
from fastsess._core.coherence import CoherentCache
from fastsess._core.listener import ListenerMachine, Ping
from fastsess._core.messages import complete_fill, fill_prefix
from fastsess._core.policy import CachePolicy
from fastsess._core.principals import index_key
from fastsess._core.sequence import log_keys
from fastsess.cluster import INVALIDATED, encode_message
from fastsess.crypto import Encryption
from fastsess.stores.base import new_session_id

from ..support import RedisServer
from ..support.waiting import barrier
from .conftest import StoreFactory, received, wait_received, wait_until


def saved(store: ClusteredRedisStore, data: dict[str, Any]) -> Session:
    s = store.create(data)
    assert store.save(s) is True
    return s


def cached(store: ClusteredRedisStore, session_id: str) -> bool:
    assert store._cache is not None
    return store._cache.cached(session_id)


def cache_on(store: ClusteredRedisStore, session_id: str) -> None:
    """Load until cached (a fill may be voided by the message of the session's own write)."""
    wait_until(lambda: store.load(session_id) is not None and cached(store, session_id), 2, what="a cached copy")


def subscribed(*stores: ClusteredRedisStore) -> None:
    for store in stores:
        assert store.coordinator is not None
        assert store.coordinator.wait_subscribed(5), store.coordinator.stats.last_error


@pytest.fixture
def server(redis_server_factory: Any) -> RedisServer:
    return redis_server_factory()


@pytest.fixture
def raw(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()


# --- update mode x the channel's trust --------------------------------------------------------


def forge_update(raw: redis.Redis, store: ClusteredRedisStore, s: Session, data: dict[str, Any]) -> None:
    """Publish what an attacker on the channel can: an update message for ``s`` carrying
    ``data`` under a higher version, encoded with the store's (unencrypted) serializer."""
    forged = Session(s.id, data, ttl=s.ttl, new=False, version=s.version + 1)
    before = received(store)
    raw.publish(store.config.channel, encode_message(
        INVALIDATED, s.id, "attacker/1", forged.version, s.ttl, payload=store.serializer.encode(forged),
    ))
    wait_received(store, before)


def test_a_forged_update_plants_nothing_on_a_node_without_update_mode(make_store: StoreFactory, server: RedisServer, raw: redis.Redis) -> None:
    """Default settings (update mode off): a message carrying a value only evicts, so a
    publisher on the channel cannot make the node serve data Redis does not hold."""
    B = make_store(server.url, name="B")
    subscribed(B)
    s = saved(B, {"user": "bob"})
    cache_on(B, s.id)
    forge_update(raw, B, s, {"user": "admin"})
    assert not cached(B, s.id)
    assert B.load(s.id)["user"] == "bob"
    assert B._cache is not None and B._cache.replaced == 0


def test_with_update_mode_and_encryption_a_forged_update_only_evicts(make_store: StoreFactory, server: RedisServer, raw: redis.Redis) -> None:
    """Update mode on: the value in a message is installed only if it opens under the
    store's keys for that very id (a forged, unencrypted value is SessionCorrupt)."""
    enc = Encryption([Encryption.generate_key()])
    B = make_store(server.url, name="B", update_max_bytes=4096, store_kwargs={"encryption": enc})
    subscribed(B)
    s = saved(B, {"user": "bob"})
    cache_on(B, s.id)
    forge_update(raw, B, s, {"user": "admin"})
    assert not cached(B, s.id)
    assert B.load(s.id)["user"] == "bob"


def test_update_mode_with_encryption_installs_copies_that_save_by_compare_and_set(make_store: StoreFactory, server: RedisServer) -> None:
    """A peer installs the ciphertext it got in a message (decrypted with its own key list,
    a rotation in progress: each node encrypts with another key, both read both) and its
    next save compares with exactly those bytes."""
    old, new = Encryption.generate_key(), Encryption.generate_key()
    A = make_store(server.url, name="A", update_max_bytes=4096, store_kwargs={"encryption": Encryption([old, new])})
    B = make_store(server.url, name="B", update_max_bytes=4096, store_kwargs={"encryption": Encryption([new, old])})
    subscribed(A, B)
    s = saved(A, {"a": 1})
    cache_on(B, s.id)
    before = received(B)
    mine = A.load(s.id)
    mine["x"] = 2
    assert A.save(mine)
    wait_received(B, before)
    assert B._cache is not None and B._cache.replaced == 1
    copy = B.load(s.id)
    assert copy.data == {"a": 1, "x": 2}
    copy["y"] = 3
    before = received(A)
    assert B.save(copy)  # no conflict: its base is the bytes A stored
    wait_received(A, before)
    assert A.load(s.id).data == {"a": 1, "x": 2, "y": 3}


# --- tracking x sequenced replay ---------------------------------------------------------------


def test_a_tracking_listener_that_was_away_does_not_serve_an_outside_delete(make_store: StoreFactory, server: RedisServer, raw: redis.Redis) -> None:
    """The replay log holds fastsess's own writes only: a DEL by another tool while the
    listener was away (its tracking notification lost with the connection) is not in it."""
    A = make_store(server.url, name="A", track_external_changes=True)
    B = make_store(server.url, name="B", track_external_changes=True)
    subscribed(A, B)
    s = saved(A, {"v": 1})
    cache_on(B, s.id)
    assert B.coordinator is not None
    B.coordinator.stop()  # as a dropped connection: nothing heard until it subscribes again
    raw.delete(B.prefix + s.id)  # logged out by an admin tool
    assert B.coordinator.start(5.0)
    assert B.load(s.id) is None


def test_a_tracking_listener_keeps_the_copy_an_update_installed(make_store: StoreFactory, server: RedisServer) -> None:
    """The tracking notification of another node's update comes right after its message on
    the same connection and names the same write: it must not evict the copy just installed."""
    A = make_store(server.url, name="A", track_external_changes=True, update_max_bytes=4096)
    B = make_store(server.url, name="B", track_external_changes=True, update_max_bytes=4096)
    subscribed(A, B)
    s = saved(A, {"n": 0})
    cache_on(B, s.id)
    for n in (1, 2, 3):
        mine = A.load(s.id)
        mine["n"] = n
        assert A.save(mine)
        barrier(A, B)  # the update, its notification and then the marker reached B
        assert cached(B, s.id)
        assert B.load(s.id)["n"] == n
    assert B._cache is not None and B._cache.replaced == 3


# --- garbage planted by a Redis writer ------------------------------------------------------


def test_a_garbage_entry_in_the_invalidation_log_does_not_wedge_the_listener(make_store: StoreFactory, server: RedisServer, raw: redis.Redis) -> None:
    """An entry without a session id in the replay range makes the log useless for that
    replay: the listener flushes and serves again, instead of failing every resubscription."""
    A, B = make_store(server.url, name="A"), make_store(server.url, name="B")
    subscribed(A, B)
    kept = saved(A, {"v": 0})
    cache_on(B, kept.id)
    assert B.coordinator is not None
    B.coordinator.stop()
    missed = saved(A, {"v": 1})  # B misses this one
    meta, log = log_keys(A.config.channel)
    seq = int(raw.hget(meta, "s"))
    raw.xadd(log, {"junk": "1"}, id=f"{seq}-5")  # after the last entry, in B's replay range
    assert B.coordinator.start(5.0), B.coordinator.stats.last_error
    assert not cached(B, kept.id)  # the log could not say what B missed: flushed
    cache_on(B, missed.id)
    reconnects = B.coordinator.stats.reconnects
    B.coordinator.drop_connection()  # the next replay starts after the junk
    wait_until(lambda: B.coordinator.stats.reconnects > reconnects and B.coordinator.subscribed, 5, what="resubscription")
    assert cached(B, missed.id)


def test_garbage_in_a_principal_index_does_not_stop_log_out_everywhere(make_store: StoreFactory, server: RedisServer, raw: redis.Redis) -> None:
    """Members that are not session ids (not UTF-8, another key's name, a huge string) are
    dropped from the index: the real sessions are listed, deleted and evicted on every
    node, and no other key is touched."""
    A, B = make_store(server.url, name="A"), make_store(server.url, name="B")
    subscribed(A, B)
    sessions = []
    for i in range(3):
        s = A.create({"i": i})
        A.bind(s, "alice")
        assert A.save(s)
        sessions.append(s)
    for s in sessions:
        cache_on(B, s.id)
    key = index_key(A._keys, "alice")
    bystander = index_key(A._keys, "bob")
    raw.set(bystander, b"not a session")
    garbage = [b"\xff\xfe", bystander[len(A.prefix):].encode(), b"x" * 70_000]
    raw.zadd(key, {member: 1e12 for member in garbage})
    assert sorted(A.sessions_of("alice")) == sorted(s.id for s in sessions)
    raw.zadd(key, {member: 1e12 for member in garbage})
    before = received(B)
    assert A.delete_all("alice") == 3
    wait_received(B, before)
    for s in sessions:
        assert not cached(B, s.id)
        assert B.load(s.id) is None
    assert raw.get(bystander) == b"not a session"
    assert raw.zcard(key) == 0
    raw.zadd(key, {member: 0 for member in garbage})  # past their cover: bind looks at them
    s = A.create({"i": 3})
    A.bind(s, "alice")
    assert A.save(s)
    assert raw.zrange(key, 0, -1) == [s.id.encode()]
    assert raw.get(bystander) == b"not a session"


# --- stale_if_error x the lease (no I/O) -------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _NoBackoff:
    def compute(self, failures: int) -> float:
        return 1.0


def test_stale_if_error_counts_from_the_last_proof_on_a_delayed_listener_link() -> None:
    """A listener link that delays everything by 1.5 s still delivers PONGs, so input keeps
    arriving; but a PONG proves only what was published before its PING was sent.  The
    stale window must count from that proof (``machine.proven``), not from the PONG's
    arrival, or a copy deleted meanwhile is served for the window plus the delay."""
    clock = _Clock()
    config = ClusterConfig(stale_if_error=1.0, lease=1.0, subscribe_timeout=5.0, local_cache_ttl=30.0)
    machine = ListenerMachine(config, _NoBackoff())
    cache = CoherentCache(100, 30.0)
    breaker = CircuitBreaker(3, 1.0, clock=clock)
    policy = CachePolicy(config, cache, clock, breaker=breaker, listener=machine)
    s = Session(new_session_id(), {"v": 1}, ttl=1800)
    cache.fill(s.id, s, cache.fill_token(s.id), 30.0, 10)
    machine.start(0.0)
    machine.subscribed(0.0)
    assert Ping(1) in machine.idle(0.25)
    machine.pong("1", 1.75)  # the PING sent at 0.25, answered 1.5 s late
    assert machine.last_heard == 1.75 and machine.proven == 0.25
    clock.now = 1.8
    breaker.failed(ConnectionError("timed out"))  # commands fail from here on
    outage = policy.outage_started()
    assert outage is not None and outage <= 0.25  # nothing published after 0.25 is known to have arrived
    clock.now = 1.9
    assert policy.stale(s.id) is None  # 1.65 s since the last proof: past the 1 s window


# --- fork() x tracking --------------------------------------------------------------------------


def _child_subscribes(store: ClusteredRedisStore, conn: Any) -> None:
    try:
        assert store.coordinator is not None
        conn.send(store.coordinator.wait_subscribed(5.0))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send(repr(exc))
    finally:
        os._exit(0)  # no cleanup: a listener thread stuck on an inherited lock must not hang the exit


def test_a_forked_child_of_a_tracking_store_subscribes_whatever_lock_the_parent_held(make_store: StoreFactory, server: RedisServer) -> None:
    """gunicorn --preload: the parent's threads keep running while it forks.  A thread
    inside the tracking bookkeeping's lock at that instant (a regenerate marking its new
    id) must not leave the child's listener waiting on a lock nobody will release."""
    store = make_store(server.url, name="parent", track_external_changes=True)
    subscribed(store)
    assert store.coordinator is not None and store.coordinator.tracking is not None
    ctx = multiprocessing.get_context("fork")
    ours, theirs = ctx.Pipe()
    lock = store.coordinator.tracking._lock
    with lock:  # held by this (parent) thread at the fork
        proc = ctx.Process(target=_child_subscribes, args=(store, theirs))
        proc.start()
    try:
        assert ours.poll(20), "the child did not report"
        assert ours.recv() is True
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


# --- warm_peers x encryption, tracking ----------------------------------------


def test_with_warm_peers_and_encryption_a_planted_fill_adds_nothing(make_store: StoreFactory, server: RedisServer, raw: redis.Redis) -> None:
    """warm_peers adds sessions a node never read: with encryption, only a value that opens
    under the store's keys for that very id is added (a planted plain value is not)."""
    enc = Encryption([Encryption.generate_key()])
    B = make_store(server.url, name="B", update_max_bytes=4096, warm_peers=True, store_kwargs={"encryption": enc})
    subscribed(B)
    sid = new_session_id()
    planted = Session(sid, {"user": "admin"}, ttl=600, new=False, version=1)
    before = B.coordinator.stats.fills  # type: ignore[union-attr]
    raw.publish(B.config.channel, complete_fill(fill_prefix(sid, "attacker/1"), 600, B.serializer.encode(planted)))
    wait_until(lambda: B.coordinator.stats.fills > before, 5, what="B applying the planted message")  # type: ignore[union-attr]
    assert not cached(B, sid) and B.load(sid) is None


def test_with_warm_peers_and_tracking_a_new_session_stays_cached_on_the_peer(make_store: StoreFactory, server: RedisServer) -> None:
    """The creation's tracking notification follows its message on the same connection:
    it must not evict the copy the message just added."""
    A = make_store(server.url, name="A", track_external_changes=True, update_max_bytes=4096, warm_peers=True)
    B = make_store(server.url, name="B", track_external_changes=True, update_max_bytes=4096, warm_peers=True)
    subscribed(A, B)
    for n in range(3):
        s = saved(A, {"n": n})
        barrier(A, B)  # the creation, its notification and then the marker reached B
        assert cached(B, s.id)
        assert B.load(s.id)["n"] == n
    assert B._cache is not None and B._cache.warmed == 3



def test_warm_peers_under_concurrent_reads_and_writes_serves_nothing_stale(make_store: StoreFactory, server: RedisServer) -> None:
    """Two warm nodes, a writer alternating between them and a reader thread on each, for
    1.5 s over 20 sessions (one-key reads and read-modify-writes: misses publish fills,
    saves publish updates, fills race writes).  No read returns a version older than one
    committed 100 ms before the read began."""
    import random
    import threading
    import time

    A = make_store(server.url, name="A", update_max_bytes=4096, warm_peers=True)
    B = make_store(server.url, name="B", update_max_bytes=4096, warm_peers=True)
    subscribed(A, B)
    ids = [saved(A, {"n": 0}).id for _ in range(20)]
    committed: dict[str, list[tuple[float, int]]] = {sid: [(0.0, 1)] for sid in ids}
    reads: list[tuple[str, float, int]] = []
    stop = time.monotonic() + 1.5
    errors: list[BaseException] = []

    def writer() -> None:
        rng = random.Random(1)
        try:
            while time.monotonic() < stop:
                node = rng.choice((A, B))
                sid = rng.choice(ids)
                s = node.load(sid)
                s["n"] += 1
                node.save(s)
                committed[sid].append((time.monotonic(), s.version))
                if rng.random() < 0.3:  # now and then a peer drops its copy: its next read misses and fills
                    rng.choice((A, B))._cache.invalidate(rng.choice(ids))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def reader(node: ClusteredRedisStore, seed: int) -> None:
        rng = random.Random(seed)
        try:
            while time.monotonic() < stop:
                sid = rng.choice(ids)
                began = time.monotonic()
                reads.append((sid, began, node.load(sid).version))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader, args=(A, 2)), threading.Thread(target=reader, args=(B, 3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors, errors
    stale = [
        (sid, began, version) for sid, began, version in reads
        if version < max(v for at, v in committed[sid] if at <= began - 0.1)
    ]
    assert len(reads) > 1000 and not stale, stale[:5]
    assert A._cache is not None and B._cache is not None and A._cache.warmed + B._cache.warmed > 0
