"""No stale re-fill, for both flavours: a value read from Redis before an invalidation
arrived must never land in the cache.  The interleavings are forced, not hoped for:
``hold_after`` runs the other node's write in the middle of a store's own call."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from fastsess import Session
from fastsess._core.ops import GET_PTTL, SAVE

from .conftest import ClusteredBackend, Nodes, barrier, hold_after, received, wait_received, wait_until


def saved(store: Any, data: dict[str, Any]) -> Session:
    s = store.create(data)
    assert store.save(s) is True
    return s


def intercept_get(store: Any, during: Callable[[], None]) -> list[Any]:
    """Make the next miss read of ``store`` (its GET + PTTL script) read Redis, run
    ``during()``, then return what it read."""
    return hold_after(store, GET_PTTL, during)


def a_writes_and_b_hears(pair: Nodes, action: Callable[[], Any]) -> Callable[[], None]:
    def during() -> None:
        before = received(pair.B)
        action()
        wait_received(pair.B, before)

    return during


def test_invalidation_during_the_read_voids_the_fill(nodes: Nodes) -> None:
    A, B, raw, _, _ = nodes
    s = saved(A, {"v": "old"})

    def write_new() -> None:
        fresh = A.load(s.id)
        fresh["v"] = "new"
        assert A.save(fresh) is True

    seen = intercept_get(B, a_writes_and_b_hears(nodes, write_new))
    first = B.load(s.id)  # missed the cache, read "old", and meanwhile A wrote "new"
    assert seen and first is not None and first["v"] == "old"  # the read itself is allowed to be old
    assert B.cache_stats().size == 0, "the old value was put in the cache after the invalidation"
    misses = B.cache_stats().misses
    second = B.load(s.id)
    assert second["v"] == "new"
    assert B.cache_stats().misses == misses + 1  # from Redis, not from the cache
    assert B.load(s.id)["v"] == "new"  # and now cached correctly
    assert B.cache_stats().size == 1


def test_delete_during_the_read_voids_the_fill(nodes: Nodes) -> None:
    A, B, raw, _, _ = nodes
    s = saved(A, {"v": "old"})
    intercept_get(B, a_writes_and_b_hears(nodes, lambda: A.delete(s.id)))
    assert B.load(s.id)["v"] == "old"
    assert B.cache_stats().size == 0
    assert B.load(s.id) is None
    assert B.load(s.id) is None


def test_clear_during_the_read_voids_the_fill(nodes: Nodes) -> None:
    A, B, raw, _, _ = nodes
    s = saved(A, {"v": "old"})
    intercept_get(B, a_writes_and_b_hears(nodes, A.clear))
    assert B.load(s.id)["v"] == "old"
    assert B.cache_stats().size == 0
    assert B.load(s.id) is None


def test_touch_during_the_read_voids_the_fill(nodes: Nodes) -> None:
    A, B, raw, _, _ = nodes
    s = saved(A, {"v": "old"})
    intercept_get(B, a_writes_and_b_hears(nodes, lambda: A.touch(s.id, ttl=60)))
    B.load(s.id)
    assert B.cache_stats().size == 0  # its local expiry would follow the old TTL


def test_unrelated_invalidation_does_not_stop_the_fill(nodes: Nodes) -> None:
    A, B, raw, _, _ = nodes
    s = saved(A, {"v": 1})
    other = saved(A, {"v": "other"})
    other["v"] = "other2"
    intercept_get(B, a_writes_and_b_hears(nodes, lambda: A.save(other)))
    assert B.load(s.id)["v"] == 1
    # (a slot collision could void it: 1 in 4096; the ids are random, so allow exactly that)
    from fastsess.cluster import GENERATION_SLOTS

    if hash(s.id) % GENERATION_SLOTS != hash(other.id) % GENERATION_SLOTS:
        assert B.cache_stats().size == 1


def test_local_write_does_not_overwrite_a_newer_invalidation(nodes: Nodes) -> None:
    """A's save runs its script (Redis: v2); before A caches its v2, B writes v3 and A
    hears B's invalidation.  A must not then cache v2 over it: Redis holds v3."""
    A, B, raw, _, _ = nodes
    s = saved(A, {"v": 1})
    assert A.load(s.id)["v"] == 1
    done: list[bool] = []

    def b_writes_v3_and_a_hears() -> None:
        done.append(True)
        before = received(A)
        on_b = B.load(s.id)
        assert on_b["v"] == 2
        on_b["v"] = 3
        assert B.save(on_b) is True
        wait_received(A, before)

    hold_after(A, SAVE, b_writes_v3_and_a_hears)
    s["v"] = 2
    assert A.save(s) is True
    assert done
    assert raw.get(A.prefix + s.id) is not None and B.load(s.id)["v"] == 3
    assert A.load(s.id)["v"] == 3, "A serves its own older write from cache after B's newer write was announced"


def test_flush_on_resubscribe_voids_fills_in_flight(clustered: ClusteredBackend, redis_server_factory: Any) -> None:
    """The pub/sub link drops while B is reading: messages may be lost meanwhile, so the fill
    of what B read must be dropped too (the flush on resubscribe moves the epoch)."""
    server = redis_server_factory()
    raw = redis.Redis.from_url(server.url)
    try:
        A, B = clustered.make(url=server.url, name="A"), clustered.make(url=server.url, name="B")
        s = saved(A, {"v": "old"})

        def drop_link_and_write() -> None:
            reconnects = B.coordinator.stats.reconnects
            raw.client_kill_filter(_type="pubsub")  # every subscriber's link dies
            fresh = A.load(s.id)
            fresh["v"] = "new"
            A.save(fresh)  # published while B is possibly not listening: may be lost for B
            wait_until(lambda: B.coordinator.stats.reconnects > reconnects and B.coordinator.subscribed, 5, what="B to resubscribe")

        intercept_get(B, drop_link_and_write)
        assert B.load(s.id)["v"] == "old"
        # The fill of "old" is refused (a flush, or the replay's eviction, voided its token)
        # or, if B resubscribed and replayed before A's write, evicted by A's message, which
        # may still be on its way when the load returns: a read meanwhile sees "old" only
        # as during any invalidation in flight.  Either way it does not stay.
        wait_until(lambda: B.cache_stats().size == 0, 2, what="the fill of the old value to be dropped")
        assert B.load(s.id)["v"] == "new"
        assert B.coordinator.stats.reconnects >= 1
    finally:
        raw.close()


def test_concurrent_loads_while_a_writes(nodes: Nodes) -> None:
    """Three threads load on B while A writes versions 1..N.  A load that starts after B
    received the invalidation of version k returns k or newer; at the end, the final one."""
    A, B, raw, _, _ = nodes
    s = saved(A, {"v": 0})
    base = received(B)  # (the creation's message is not counted: it evicts nothing)
    writes = 200
    stop = threading.Event()
    errors: list[str] = []
    loads = [0]

    def reader() -> None:
        while not stop.is_set():
            heard = received(B) - base  # messages 1..k invalidated versions 1..k
            got = B.load(s.id)
            loads[0] += 1
            time.sleep(0)  # yield the GIL: cache hits never release it, and A must get to write
            if got is None or got["v"] < heard:
                errors.append(f"load started after invalidation {heard} returned {None if got is None else got['v']}")
                return

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for version in range(1, writes + 1):
            s["v"] = version
            assert A.save(s) is True
            if version % 50 == 0:
                time.sleep(0.01)  # let the readers fill the cache now and then
        wait_until(lambda: received(B) - base >= writes, 10, what="every invalidation")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, errors[:5]
    assert loads[0] > writes  # the readers really ran concurrently
    barrier(A, B)
    assert received(B) - base == writes + 1  # and the barrier: no message was counted twice
    for _ in range(3):
        assert B.load(s.id)["v"] == writes
    assert B.cache_stats().hits > 0
