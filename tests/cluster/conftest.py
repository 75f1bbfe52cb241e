"""Fixtures for the clustering tests.

* ``make_store(url=..., client=..., **config_changes)``: a ``ClusteredRedisStore``
  with its own node id, a channel private to the test and short failure
  timeouts; closed after the test.
* ``pair``: two stores ``A`` and ``B`` on the shared private Redis, both subscribed.
* ``wait_until(predicate, timeout)``: poll with a deadline (no fixed sleeps).
* ``wait_received(store, before)``: until ``received(store) > before`` (creation messages not counted).
* ``cluster`` (module-scoped): a 3-master Redis Cluster; ``sentinel``: a Sentinel
  client for a Sentinel monitoring a private master named ``SENTINEL_MASTER``
  (launchers in ``tests/support``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import redis
from redis.sentinel import Sentinel

from fastsess import ClusterConfig, ClusteredRedisStore

from ..support import RedisClusterNodes, RedisServer, SentinelProcess
from ..support.waiting import wait_until

SENTINEL_MASTER = "fastsess-test"
FAST = {"subscribe_timeout": 0.5, "reconnect_backoff": (0.02, 0.2)}


def wait_received(store: ClusteredRedisStore, before: int, timeout: float = 5.0) -> int:
    """Wait until ``store``'s coordinator applied a message from another node after ``before``."""
    assert store.coordinator is not None
    wait_until(lambda: received(store) > before, timeout, what=f"an invalidation (received > {before})")
    return received(store)


def received(store: ClusteredRedisStore) -> int:
    """Messages from other nodes that ``store`` applied, not counting creation messages (a
    first save's, which may arrive after a later count was taken and look like the next one)."""
    assert store.coordinator is not None
    stats = store.coordinator.stats
    return stats.received - stats.created


class StoreFactory:
    def __init__(self, channel: str, prefix: str) -> None:
        self.channel = channel
        self.prefix = prefix
        self.stores: list[ClusteredRedisStore] = []

    def __call__(self, url: str | None = None, client: Any = None, *, name: str = "n", store_kwargs: dict[str, Any] | None = None, **config: Any) -> ClusteredRedisStore:
        settings: dict[str, Any] = {"node_id": f"{name}-{uuid.uuid4().hex[:8]}", "channel": self.channel, **FAST}
        settings.update(config)
        kwargs = {"prefix": self.prefix, **(store_kwargs or {})}
        store = ClusteredRedisStore(client=client, url=url, config=ClusterConfig(**settings), **kwargs)
        self.stores.append(store)
        return store

    def close(self) -> None:
        # close concurrently: each close waits for its listener's poll interval
        import threading

        threads = [threading.Thread(target=store.close) for store in self.stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)


@pytest.fixture
def channel() -> str:
    return f"test:{uuid.uuid4().hex[:10]}:invalidate"


@pytest.fixture
def make_store(channel: str, prefix: str) -> Iterator[StoreFactory]:
    factory = StoreFactory(channel, prefix)
    yield factory
    factory.close()


class Pair(NamedTuple):
    A: ClusteredRedisStore
    B: ClusteredRedisStore
    raw: redis.Redis
    channel: str


def subscribed_pair(make_store: StoreFactory, url: str, raw: redis.Redis, **config: Any) -> Pair:
    a = make_store(url, name="A", **config)
    b = make_store(url, name="B", **config)
    for store in (a, b):
        if store.coordinator is not None:
            assert store.coordinator.wait_subscribed(5.0), "listener did not subscribe"
    return Pair(a, b, raw, make_store.channel)


@pytest.fixture
def pair(make_store: StoreFactory, redis_url: str, redis_client: redis.Redis) -> Pair:
    return subscribed_pair(make_store, redis_url, redis_client)


def listener_threads() -> list[Any]:
    import threading

    return [t for t in threading.enumerate() if t.name.startswith("fastsess-listener") and t.is_alive()]


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[RedisServer]]:
    with RedisClusterNodes(masters=3) as nodes:
        yield nodes.servers


@pytest.fixture
def sentinel(redis_server_factory: Callable[..., RedisServer], tmp_path: Path) -> Iterator[Sentinel]:
    with SentinelProcess(redis_server_factory(), tmp_path, SENTINEL_MASTER) as process:
        client = Sentinel([process.address], socket_timeout=1.0)
        try:
            yield client
        finally:
            for conn in client.sentinels:
                conn.close()
