"""``ClusterConfig(track_external_changes=True)``: changes made outside fastsess evict.

The listener registers ``CLIENT TRACKING on REDIRECT <itself> BCAST PREFIX <prefix>``,
so a ``DEL`` from another tool, an ``EXPIRE``, an expiry, a maxmemory eviction or a
``FLUSHDB`` evicts cached copies within milliseconds, while this node's own writes keep
its fresh copy.  Evictions are polled every 0.2 ms and bounded loosely (``BOUND``); the
delays themselves are measured by ``bench/tracking.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from fastsess import ClusteredRedisStore, Session

from ..support import RedisServer
from ..support.waiting import barrier
from .conftest import StoreFactory, received, wait_received, wait_until

BOUND = 0.5  # seconds: far above the measured delays (bench/tracking.py measures them)


def saved(store: ClusteredRedisStore, data: dict[str, Any]) -> Session:
    s = store.create(data)
    assert store.save(s) is True
    return s


def cached(store: ClusteredRedisStore, session_id: str) -> bool:
    assert store._cache is not None
    return store._cache.get(session_id) is not None


def evicted_within(store: ClusteredRedisStore, session_id: str, started: float) -> float:
    """Seconds from ``started`` until ``session_id`` left ``store``'s cache (fails past ``BOUND``)."""
    while cached(store, session_id):
        assert time.monotonic() - started < BOUND, "not evicted in time"
        time.sleep(0.0002)
    return time.monotonic() - started


def cache_on(store: ClusteredRedisStore, session_id: str) -> None:
    """Load ``session_id`` on ``store`` until it is cached: a fill is voided if the
    notification of the session's last write reaches the listener during the read."""
    wait_until(lambda: store.load(session_id) is not None and cached(store, session_id), 2, what="a cached copy")


def hit(store: ClusteredRedisStore, session_id: str) -> bool:
    """True if loading ``session_id`` was answered by the cache."""
    hits = store.cache_stats().hits
    assert store.load(session_id) is not None
    return store.cache_stats().hits == hits + 1


@pytest.fixture
def server(redis_server_factory: Any) -> RedisServer:
    return redis_server_factory()


@pytest.fixture
def raw(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()


@pytest.fixture
def tracked(make_store: StoreFactory, server: RedisServer) -> tuple[ClusteredRedisStore, ClusteredRedisStore]:
    """Two tracking nodes on a private server (FLUSHDB and maxmemory stay private)."""
    a = make_store(server.url, name="A", track_external_changes=True)
    b = make_store(server.url, name="B", track_external_changes=True)
    for store in (a, b):
        assert store.coordinator.wait_subscribed(5), store.coordinator.stats.last_error
    return a, b


def test_the_listener_registers_broadcast_tracking_for_the_prefix(tracked: Any, raw: redis.Redis) -> None:
    A, _ = tracked
    mine = [c for c in raw.client_list() if c.get("redir") not in (None, "-1")]
    assert len(mine) == 2  # one tracking listener connection per node
    for c in mine:
        assert c["redir"] == c["id"]  # notifications go to the subscribed connection itself
        assert "t" in c["flags"] and "B" in c["flags"]  # tracking on, BCAST mode
        assert int(c["sub"]) == 2  # the invalidation channel and __redis__:invalidate
    link = A.coordinator._link
    assert link is not None and len(link.socket_readers) == 1  # its plain socket, read by the listener itself


def test_del_from_another_tool_evicts_within_milliseconds(tracked: Any, raw: redis.Redis) -> None:
    A, B = tracked
    s = saved(A, {"v": 1})
    cache_on(B, s.id)
    assert cached(A, s.id)
    started = time.monotonic()
    assert raw.delete(A.prefix + s.id) == 1
    evicted_within(B, s.id, started)
    evicted_within(A, s.id, started)  # the writer's own copy too: this DEL is not its write
    assert A.load(s.id) is None and B.load(s.id) is None


def test_expire_from_another_tool_and_the_expiry_itself_evict(tracked: Any, raw: redis.Redis) -> None:
    A, B = tracked
    s = saved(A, {"v": 1})
    cache_on(B, s.id)
    started = time.monotonic()
    assert raw.pexpire(A.prefix + s.id, 300_000)  # a new TTL: B's copy followed the old one
    evicted_within(B, s.id, started)
    # The expiry itself: a key given 150 ms by another tool, cached by B before it runs out.
    t = saved(A, {"v": 2})
    assert raw.pexpire(A.prefix + t.id, 150)
    wait_until(lambda: B.load(t.id) is None or cached(B, t.id), 2, what="B caching t")
    notifications = B.coordinator.tracking.notifications
    wait_until(lambda: not raw.exists(A.prefix + t.id), 5, what="the key to expire")
    wait_until(lambda: B.coordinator.tracking.notifications > notifications, 2, what="the expiry's notification")
    assert not cached(B, t.id) and B.load(t.id) is None


def test_maxmemory_eviction_evicts(make_store: StoreFactory, redis_server_factory: Any) -> None:
    server = redis_server_factory(extra_args=("--maxmemory-policy", "allkeys-random"))
    raw = redis.Redis.from_url(server.url)
    try:
        A = make_store(server.url, name="A", track_external_changes=True)
        assert A.coordinator.wait_subscribed(5)
        sessions = [saved(A, {"v": i}) for i in range(20)]
        assert all(A.load(s.id) is not None for s in sessions)
        raw.config_set("maxmemory", int(raw.info("memory")["used_memory"]) + 200_000)
        filler = b"x" * 10_000
        for i in range(500):  # other keys push sessions out
            raw.set(f"filler:{i}", filler)
            if sum(raw.exists(A.prefix + s.id) for s in sessions) < 10:
                break
        gone = [s for s in sessions if not raw.exists(A.prefix + s.id)]
        assert gone, "maxmemory evicted no session"
        assert raw.info("stats")["evicted_keys"] > 0
        wait_until(lambda: not any(cached(A, s.id) for s in gone), BOUND, what="evicted sessions to leave the cache")
        assert all(A.load(s.id) is None for s in gone)
    finally:
        raw.close()


def test_flushdb_flushes_every_cache(tracked: Any, raw: redis.Redis) -> None:
    A, B = tracked
    sessions = [saved(A, {"v": i}) for i in range(5)]
    for s in sessions:
        cache_on(B, s.id)
    assert B.cache_stats().size == 5 and A.cache_stats().size == 5
    started = time.monotonic()
    raw.flushdb()
    for store in (A, B):
        while store.cache_stats().size:
            assert time.monotonic() - started < BOUND
            time.sleep(0.0002)
    assert B.coordinator.tracking.flushes == 1
    assert all(B.load(s.id) is None for s in sessions)


def test_own_writes_keep_the_own_fresh_copy(tracked: Any, raw: redis.Redis) -> None:
    """Every own write is named by a tracking notification too; none evicts the writer's copy."""
    A, B = tracked
    own_before = A.coordinator.tracking.own
    s = saved(A, {"v": 1})  # a first save (SET NX, no message)
    barrier(B, A)  # A has handled everything up to now, the notification of its save included
    assert hit(A, s.id)
    s["v"] = 2
    assert A.save(s) is True  # an update: its own echo arrives just before its notification
    barrier(B, A)
    assert hit(A, s.id) and A.load(s.id)["v"] == 2
    old = s.id
    A.regenerate(s)  # the new id is a first save, the old one is deleted
    barrier(B, A)
    assert hit(A, s.id) and A.load(old) is None
    assert A.coordinator.tracking.own - own_before == 3
    # The marks were used up: the next outside change evicts again.
    started = time.monotonic()
    raw.delete(A.prefix + s.id)
    evicted_within(A, s.id, started)



def test_an_outside_change_in_the_same_server_iteration_as_an_own_write_is_not_seen(tracked: Any, raw: redis.Redis) -> None:
    """The blind spot: the server names a key once per event-loop iteration, so a DEL run
    right after this node's own write in the same iteration (here: both in one MULTI)
    looks like the own write alone, and the copy stays."""
    from fastsess._core.messages import INVALIDATED

    A, B = tracked
    s = saved(A, {"v": 1})
    barrier(B, A)
    assert hit(A, s.id)
    key = A.prefix + s.id
    # as A's next save would send (whole, unnumbered: this script does not number it)
    message = A.coordinator.message(INVALIDATED, s.id, s.version + 1, sequenced=False)
    pipe = raw.pipeline(transaction=True)
    pipe.eval("redis.call('SET', KEYS[1], ARGV[1]) redis.call('PUBLISH', ARGV[2], ARGV[3])", 1, key,
              A.serializer.encode(s), A.coordinator.channel_for(key), message)
    pipe.delete(key)
    pipe.execute()
    barrier(B, A)
    assert not raw.exists(key) and cached(A, s.id)  # gone from Redis, still in A's cache

def test_the_other_nodes_write_still_evicts(tracked: Any) -> None:
    A, B = tracked
    s = saved(A, {"v": 1})
    assert B.load(s.id)["v"] == 1
    before = received(B)
    s["v"] = 2
    assert A.save(s) is True
    wait_received(B, before)
    assert B.load(s.id)["v"] == 2


def test_without_tracking_an_outside_del_is_not_seen(make_store: StoreFactory, server: RedisServer, raw: redis.Redis) -> None:
    """The default: a copy outlives a DEL from another tool (until local_cache_ttl)."""
    A = make_store(server.url, name="A")
    B = make_store(server.url, name="B")
    for store in (A, B):
        assert store.coordinator.wait_subscribed(5)
    assert A.coordinator.tracking is None
    s = saved(A, {"v": 1})
    assert B.load(s.id) is not None
    raw.delete(A.prefix + s.id)
    barrier(A, B)
    assert B.load(s.id) is not None  # served from the cache: nothing told B


def test_a_reconnect_registers_tracking_again(tracked: Any, raw: redis.Redis) -> None:
    A, _ = tracked
    old = {c["id"] for c in raw.client_list() if c.get("redir") not in (None, "-1")}
    reconnects = A.coordinator.stats.reconnects
    for c in raw.client_list():
        if c["id"] in old:
            raw.client_kill_filter(_id=c["id"])
    wait_until(lambda: A.coordinator.stats.reconnects > reconnects and A.coordinator.subscribed, 5, what="resubscription")
    now = {c["id"]: c for c in raw.client_list() if c.get("redir") not in (None, "-1")}
    wait_until(lambda: len([c for c in raw.client_list() if c.get("redir") not in (None, "-1")]) == 2, 5)
    assert not set(now) & old
    s = saved(A, {"v": 1})
    assert A.load(s.id) is not None and cached(A, s.id)
    started = time.monotonic()
    raw.delete(A.prefix + s.id)
    evicted_within(A, s.id, started)


async def test_the_asyncio_store_tracks_too(server: RedisServer, raw: redis.Redis, prefix: str, channel: str) -> None:
    import uuid

    import redis.asyncio

    from fastsess import ClusterConfig
    from fastsess.asyncio import ClusteredRedisStore as AsyncStore

    from .conftest import FAST

    client = redis.asyncio.Redis.from_url(server.url)
    config = ClusterConfig(node_id=f"aA-{uuid.uuid4().hex[:6]}", channel=channel, track_external_changes=True, **FAST)
    store = AsyncStore(client=client, config=config, prefix=prefix)
    try:
        assert await store.start()
        s = store.create({"v": 1})
        assert await store.save(s)
        hits = store.cache_stats().hits
        assert await store.load(s.id) is not None and store.cache_stats().hits == hits + 1
        started = time.monotonic()
        raw.delete(prefix + s.id)
        evicted_within(store, s.id, started)  # type: ignore[arg-type]
        assert await store.load(s.id) is None
    finally:
        await store.close()
        await client.aclose()



def test_tracking_through_sentinel(sentinel: Any, prefix: str, channel: str) -> None:
    """A sync Sentinel-managed client: the listener makes a RESP2 twin of it for tracking."""
    from fastsess import ClusterConfig

    from .conftest import FAST
    from .conftest import SENTINEL_MASTER as MASTER

    client = sentinel.master_for(MASTER, socket_timeout=1.0)
    config = ClusterConfig(node_id="sentinel-tracked", channel=channel, track_external_changes=True, **FAST)
    store = ClusteredRedisStore(client=client, config=config, prefix=prefix)
    try:
        assert store.coordinator.wait_subscribed(5), store.coordinator.stats.last_error
        s = saved(store, {"v": 1})
        assert hit(store, s.id)
        started = time.monotonic()
        client.delete(prefix + s.id)
        evicted_within(store, s.id, started)
        assert store.load(s.id) is None
    finally:
        store.close()
        client.close()


def test_metrics_count_notifications_evictions_and_own_writes(tracked: Any, raw: redis.Redis) -> None:
    from prometheus_client import CollectorRegistry

    from fastsess.metrics import register_metrics

    A, B = tracked
    registry = CollectorRegistry()
    register_metrics(A, registry)
    node = {"node": A.config.node_id}
    s = saved(A, {"v": 1})
    wait_until(lambda: registry.get_sample_value("fastsess_tracking_own_writes_total", node) == 1, 2, what="the own write")
    raw.delete(A.prefix + s.id)
    wait_until(lambda: registry.get_sample_value("fastsess_tracking_evictions_total", node) == 1, 2, what="the eviction")
    assert registry.get_sample_value("fastsess_tracking_notifications_total", node) == 2
    assert registry.get_sample_value("fastsess_tracking_flushes_total", node) == 0
