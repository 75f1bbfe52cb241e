"""``CoherentCache`` after a write of unknown outcome: the id is evicted, and this node's
own echoed messages about it count as invalidations for a bounded window (the write may
still land).  Other ids, and own messages outside the window, are not affected."""

from __future__ import annotations

import time

from fastsess import cluster
from fastsess.cluster import CLEARED, DELETED, INVALIDATED, CoherentCache, CoordinatorBase
from fastsess.config import ClusterConfig


def cached(cache: CoherentCache, sid: str, value: object = "v") -> None:
    assert cache.fill(sid, value, cache.fill_token(sid), 60.0, 10)


def test_an_uncertain_id_is_evicted_and_its_own_echo_invalidates() -> None:
    cache = CoherentCache(100, 60.0)
    cached(cache, "a")
    cached(cache, "b")
    token = cache.fill_token("a")
    cache.mark_uncertain("a")
    assert cache.get("a") is None and cache.uncertain_ids() == 1
    assert not cache.fill("a", "old", token, 60.0, 10)  # a read from before the mark is not cached
    cached(cache, "a", "reloaded")  # a read after the mark may be: Redis held that then
    assert cache.own_message(INVALIDATED, "a") is True  # ... until the write lands and echoes back
    assert cache.get("a") is None
    cached(cache, "a", "new")
    assert cache.own_message(DELETED, "a") is True  # still watched: a second late write is caught too
    assert cache.own_message(INVALIDATED, "b") is False and cache.get("b") == "v"
    assert cache.own_message(CLEARED, None) is False


def test_the_watch_ends_after_its_window() -> None:
    cache = CoherentCache(100, 60.0)
    cache.mark_uncertain("a", window=0.01)
    time.sleep(0.02)
    cached(cache, "a")
    assert cache.own_message(INVALIDATED, "a") is False and cache.get("a") == "v"
    assert cache.uncertain_ids() == 0


def test_too_many_uncertain_ids_make_every_own_message_an_invalidation() -> None:
    cache = CoherentCache(100, 60.0)
    for i in range(cluster.MAX_UNCERTAIN + 1):
        cache.mark_uncertain(f"id{i}")
    assert cache.uncertain_ids() <= cluster.MAX_UNCERTAIN
    cached(cache, "unrelated")
    assert cache.own_message(INVALIDATED, "unrelated") is True and cache.get("unrelated") is None


def test_the_coordinator_hands_its_own_echo_to_the_cache() -> None:
    cache = CoherentCache(100, 60.0)
    coordinator = CoordinatorBase(ClusterConfig(node_id="me"), cache)
    cached(cache, "a")
    coordinator.handle_message(coordinator.message(INVALIDATED, "a"))  # messages carry the instance id
    assert cache.get("a") == "v"  # an own echo after a successful write changes nothing
    cache.mark_uncertain("a")
    cached(cache, "a")
    coordinator.handle_message(coordinator.message(INVALIDATED, "a"))
    assert cache.get("a") is None
    assert coordinator.stats.ignored_own == 2 and coordinator.stats.received == 0
