"""Redis going away and coming back (each test has its own server: ``redis_server_factory``).

Sync only; what both flavours share (kill and recover, stale_if_error, close while
reconnecting) is in ``tests/contract/test_cluster_failover.py``.

While unsubscribed the cache is bypassed and reads fail
closed with ``StoreUnavailable`` (unless ``stale_if_error``); a resubscribe after Redis
restarted flushes the cache (a new server: its log cannot tell what was missed); ``close()`` stops the listener thread.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from fastsess import Session
from fastsess.errors import StoreUnavailable

from ..support import RedisServer, kill, pause
from .conftest import Pair, StoreFactory, listener_threads, received, subscribed_pair, wait_received, wait_until


def saved(store: Any, data: dict[str, Any]) -> Session:
    s = store.create(data)
    assert store.save(s) is True
    return s


@pytest.fixture
def server(redis_server_factory: Any) -> RedisServer:
    return redis_server_factory()


@pytest.fixture
def nodes(make_store: StoreFactory, server: RedisServer) -> Pair:
    raw = redis.Redis.from_url(server.url)
    try:
        yield subscribed_pair(make_store, server.url, raw)
    finally:
        raw.close()


def test_frozen_redis_is_detected_by_ping(nodes: Pair, server: RedisServer) -> None:
    """No FIN, no data (SIGSTOP): the listener notices the silence by PING/PONG."""
    A, B, raw, _ = nodes
    s = saved(A, {"v": 1})
    assert B.load(s.id) is not None
    with pause(server):
        t0 = time.monotonic()
        # idle 0.5 s, then PING, then 0.5 s without PONG
        wait_until(lambda: not B.coordinator.subscribed, 5, what="the silent link to be declared dead")
        assert time.monotonic() - t0 < 3
        with pytest.raises(StoreUnavailable):
            B.load(s.id)  # cache bypassed: the GET times out (socket_timeout 1 s)
    wait_until(lambda: B.coordinator.subscribed, 8, what="resubscription after SIGCONT")
    assert B.coordinator.stats.reconnects >= 1
    assert B.load(s.id)["v"] == 1  # the data survived a freeze
    before = received(B)
    s["v"] = 2
    A.save(s)
    wait_received(B, before)
    assert B.load(s.id)["v"] == 2


def test_store_started_while_redis_is_down(make_store: StoreFactory, server: RedisServer) -> None:
    kill(server)
    t0 = time.monotonic()
    store = make_store(server.url)  # not an error: the listener keeps trying
    assert time.monotonic() - t0 < 3
    assert not store.coordinator.subscribed and store.coordinator.running
    s = store.create({"v": 1})
    with pytest.raises(StoreUnavailable):
        store.save(s)
    with pytest.raises(StoreUnavailable):
        store.load(s.id)
    server.start()
    wait_until(lambda: store.coordinator.subscribed, 5, what="the first subscription")
    assert store.save(s) is True
    assert store.load(s.id)["v"] == 1


def test_every_store_of_the_module_closed_leaves_no_thread(make_store: StoreFactory, redis_url: str) -> None:
    stores = [make_store(redis_url, name=f"n{i}") for i in range(5)]
    for store in stores:
        store.close()
    assert not [t for t in listener_threads() if any(t.name.endswith(s.config.node_id[:12]) for s in stores)]
