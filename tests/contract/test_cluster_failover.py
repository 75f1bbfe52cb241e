"""Redis going away and coming back, for both flavours (each test has its own server).

While unsubscribed the cache is bypassed and reads fail closed with ``StoreUnavailable``
(unless ``stale_if_error``); a resubscribe after Redis restarted flushes the cache (a
new server: its invalidation log cannot tell what was missed); ``close()`` ends the
listener promptly even while it is reconnecting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from fastsess import Session
from fastsess.errors import StoreUnavailable

from ..support import RedisServer, kill
from .conftest import ClusteredBackend, listener_threads, received, wait_received, wait_until


def saved(store: Any, data: dict[str, Any]) -> Session:
    s = store.create(data)
    assert store.save(s) is True
    return s



def all_fail_closed(store: Any, s: Session) -> None:
    with pytest.raises(StoreUnavailable) as info:
        store.load(s.id)
    assert isinstance(info.value.cause, (redis.RedisError, OSError))
    s["during-outage"] = True
    version = s.version
    with pytest.raises(StoreUnavailable):
        store.save(s)
    assert s.version == version and s.modified  # rolled back: nothing was saved
    with pytest.raises(StoreUnavailable):
        store.save(store.create({"new": 1}))
    for op in (store.delete, store.exists, store.touch):
        with pytest.raises(StoreUnavailable):
            op(s.id)
    with pytest.raises(StoreUnavailable):
        store.count()


def test_kill_fails_closed_then_recovers_with_a_flushed_cache(clustered: ClusteredBackend, redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory()
    A, B = clustered.make(url=server.url, name="A"), clustered.make(url=server.url, name="B")
    s = saved(A, {"v": 1})
    assert B.load(s.id)["v"] == 1 and B.load(s.id)["v"] == 1  # cached on B
    assert B.cache_stats().size == 1

    kill(server)
    t0 = time.monotonic()
    wait_until(lambda: not B.coordinator.subscribed and not A.coordinator.subscribed, 5, what="the drop to be noticed")
    assert time.monotonic() - t0 < 3
    assert B.coordinator.stats.last_error
    for store in (B, A):
        all_fail_closed(store, s.copy())  # even the session B had cached
    assert B.cache_stats().size == 0  # flushed on drop (fail closed)

    server.start()  # same port, empty dataset
    for store in (A, B):
        wait_until(lambda: store.coordinator.subscribed, 5, what="resubscription")
        assert store.coordinator.stats.reconnects >= 1
    assert B.cache_stats().size == 0
    assert B.load(s.id) is None and A.load(s.id) is None  # the data died with the server: not served from a cache

    s2 = saved(A, {"v": "a"})
    assert B.load(s2.id)["v"] == "a" and B.load(s2.id)["v"] == "a"
    before = received(B)
    s2["v"] = "b"
    assert A.save(s2)
    wait_received(B, before)
    assert B.load(s2.id)["v"] == "b"
    assert A.delete(s2.id)
    wait_until(lambda: B.load(s2.id) is None, 5, what="the delete to reach B")


def test_stale_if_error_serves_the_cached_copy_while_redis_is_down(clustered: ClusteredBackend, redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory()
    A = clustered.make(url=server.url, name="A", cluster={"stale_if_error": True})
    B = clustered.make(url=server.url, name="B", cluster={"stale_if_error": True})
    s = saved(A, {"v": 1})
    assert B.load(s.id)["v"] == 1  # cached
    other = saved(A, {"v": "not cached on B"})
    kill(server)
    wait_until(lambda: not B.coordinator.subscribed, 5, what="the drop")
    got = B.load(s.id)
    assert got is not None and got["v"] == 1  # served stale, by explicit opt-in
    got["v"] = 2
    assert B.load(s.id)["v"] == 1  # still a private copy
    with pytest.raises(StoreUnavailable):
        B.load(other.id)  # nothing to fall back on
    with pytest.raises(StoreUnavailable):
        B.save(got)  # writes never pretend
    server.start()
    wait_until(lambda: B.coordinator.subscribed, 5, what="resubscription")
    assert B.cache_stats().size == 0  # flushed on resubscribe
    assert B.load(s.id) is None  # the restart lost the data: the stale copy is gone too


def test_close_while_reconnecting_is_prompt_and_leaves_no_listener(clustered: ClusteredBackend, redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory()
    before = {t.ident for t in listener_threads()}
    a = clustered.make(url=server.url, name="A")
    b = clustered.make(url=server.url, name="B")
    mine = [t for t in listener_threads() if t.ident not in before]
    assert len(mine) == 2
    a.close()
    kill(server)  # b's listener is now in its reconnect loop
    wait_until(lambda: not b.coordinator.subscribed, 5)
    t0 = time.monotonic()
    b.close()
    assert time.monotonic() - t0 < 2  # close is prompt even while reconnecting
    assert not any(t.is_alive() for t in mine)
    assert not [t for t in listener_threads() if t.ident not in before]
    assert not a.coordinator.running and not b.coordinator.running
