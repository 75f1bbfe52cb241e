"""Fixtures for the clustering tests.

* ``make_store(url=..., client=..., **config_changes)``: a ``ClusteredRedisStore``
  with its own node id, a channel private to the test and short failure
  timeouts; closed after the test.
* ``pair``: two stores ``A`` and ``B`` on the shared private Redis, both subscribed.
* ``wait_until(predicate, timeout)``: poll with a deadline (no fixed sleeps).
* ``wait_received(store, before)``: until ``store.coordinator.stats.received > before``.
* ``cluster`` (module-scoped): a 3-master Redis Cluster; ``sentinel``: a Sentinel
  client for a Sentinel monitoring a private master named ``SENTINEL_MASTER``
  (launchers in ``tests/support``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import redis
from redis.sentinel import Sentinel

from fastsess import ClusterConfig, ClusteredRedisStore

from ..support import RedisClusterNodes, RedisServer, SentinelProcess

SENTINEL_MASTER = "fastsess-test"
FAST = {"subscribe_timeout": 0.5, "reconnect_backoff": (0.02, 0.2)}


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.005, what: str = "") -> Any:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def wait_received(store: ClusteredRedisStore, before: int, timeout: float = 5.0) -> int:
    """Wait until ``store``'s coordinator applied a message from another node after ``before``."""
    assert store.coordinator is not None
    wait_until(lambda: store.coordinator.stats.received > before, timeout, what=f"an invalidation (received > {before})")
    return store.coordinator.stats.received


def received(store: ClusteredRedisStore) -> int:
    assert store.coordinator is not None
    return store.coordinator.stats.received


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


class RawSubscriber:
    """A plain redis-py subscriber on a channel, to see exactly what a store publishes."""

    def __init__(self, url: str, channel: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.pubsub = self.client.pubsub()
        self.pubsub.subscribe(channel)
        wait_until(lambda: (m := self.pubsub.get_message(timeout=0.1)) is not None and m["type"] == "subscribe", 5.0, what="raw subscription")

    def drain(self, quiet: float = 0.2) -> list[bytes]:
        """Every message until the channel was quiet for ``quiet`` seconds."""
        out = []
        while True:
            msg = self.pubsub.get_message(timeout=quiet)
            if msg is None:
                return out
            if msg["type"] == "message":
                out.append(msg["data"])

    def next(self, timeout: float = 2.0) -> bytes | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if msg is not None and msg["type"] == "message":
                return msg["data"]
        return None

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


@pytest.fixture
def raw_subscriber(redis_url: str) -> Iterator[Callable[[str], RawSubscriber]]:
    subs: list[RawSubscriber] = []

    def make(channel: str) -> RawSubscriber:
        sub = RawSubscriber(redis_url, channel)
        subs.append(sub)
        return sub

    yield make
    for sub in subs:
        sub.close()


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
