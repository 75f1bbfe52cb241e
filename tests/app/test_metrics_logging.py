"""Prometheus collector and the ``fastsess`` logger, against a real clustered store."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from fastsess import ClusterConfig, ClusteredRedisStore, MemoryStore
from fastsess.metrics import register_metrics

from ..support import RedisServer, restart


@pytest.fixture
def store(redis_url: str, prefix: str) -> Iterator[ClusteredRedisStore]:
    with ClusteredRedisStore(url=redis_url, prefix=prefix, config=ClusterConfig(channel=prefix + "ch")) as s:
        assert s.coordinator.wait_subscribed(10)  # an unsubscribed node bypasses its cache (no hits to count)
        yield s


def sample(registry: CollectorRegistry, name: str) -> float:
    value = registry.get_sample_value(name, {"node": registry_node[0]})
    assert value is not None, name
    return value


registry_node: list[str] = [""]


def test_collector_reports_live_counters(store: ClusteredRedisStore) -> None:
    registry = CollectorRegistry()
    register_metrics(store, registry)
    registry_node[0] = store.config.node_id
    assert store.coordinator is not None and store.coordinator.wait_subscribed(5.0)  # the cache is served from then on
    session = store.create({"a": 1})
    store.save(session)
    store.evict_from_cache(session.id)
    store.load(session.id)  # miss, fills
    store.load(session.id)  # hit
    assert sample(registry, "fastsess_cache_hits_total") == 1
    assert sample(registry, "fastsess_cache_misses_total") == 1
    assert sample(registry, "fastsess_cache_size") == 1
    assert sample(registry, "fastsess_subscribed") == 1
    session["a"] = 2
    store.save(session)
    assert sample(registry, "fastsess_invalidations_published_total") == 2  # the creation, the write
    text = generate_latest(registry).decode()
    assert session.id not in text  # never a session id in metrics


def test_collector_for_a_store_without_coordinator() -> None:
    registry = CollectorRegistry()

    class Plain:
        def cache_stats(self):  # noqa: ANN202 - minimal duck type
            return MemoryStore()._sessions.stats

    register_metrics(Plain(), registry)
    assert registry.get_sample_value("fastsess_cache_hits_total", {"node": "local"}) == 0
    assert registry.get_sample_value("fastsess_subscribed", {"node": "local"}) is None


def test_logs_warn_on_reconnect_and_never_leak_ids(
    redis_server_factory, caplog: pytest.LogCaptureFixture, prefix: str
) -> None:
    server: RedisServer = redis_server_factory()
    config = ClusterConfig(channel=prefix + "ch", subscribe_timeout=0.5, reconnect_backoff=(0.02, 0.1))
    other = ClusterConfig(channel=prefix + "ch")
    caplog.set_level(logging.DEBUG, logger="fastsess")
    with ClusteredRedisStore(url=server.url, prefix=prefix, config=config) as a, \
            ClusteredRedisStore(url=server.url, prefix=prefix, config=other) as b:
        # a store starts listening without waiting: a write before a's subscription would never
        # reach it (its first sync covers it), so wait; on a free-threaded build that happened
        assert a.coordinator.wait_subscribed(5)
        session = b.create({"secret": "hunter2"})
        b.save(session)
        session["secret"] = "hunter3"
        b.save(session)

        def logged_invalidation() -> bool:
            return any(r.levelno == logging.DEBUG and "invalidated" in r.getMessage() for r in caplog.records)

        # the record itself, not stats.received: the listener counts a message before it logs it
        deadline = time.monotonic() + 5
        while not logged_invalidation() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert logged_invalidation()
        restart(server)
        deadline = time.monotonic() + 10
        while a.coordinator.stats.reconnects < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert a.coordinator.stats.reconnects >= 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "fastsess.cluster"]
    assert any("lost the invalidation channel" in r.getMessage() for r in warnings)
    assert any("resubscribed" in r.getMessage() for r in warnings)
    for record in caplog.records:
        text = record.getMessage()
        assert session.id not in text and "hunter" not in text


def test_collector_reports_the_breaker(redis_server_factory, prefix: str) -> None:  # noqa: ANN001
    from fastsess import RedisStore
    from fastsess.errors import StoreUnavailable

    from ..support import kill

    server: RedisServer = redis_server_factory()
    registry = CollectorRegistry()
    with RedisStore(url=server.url, prefix=prefix, breaker_threshold=2, breaker_cooldown=60) as store:
        register_metrics(store, registry)  # a plain RedisStore: breaker metrics, no cache metrics
        registry_node[0] = "local"
        assert sample(registry, "fastsess_breaker_open") == 0
        kill(server)
        session = store.create({"a": 1})
        for _ in range(4):
            with pytest.raises(StoreUnavailable):
                store.save(session)
        assert sample(registry, "fastsess_breaker_open") == 1
        assert sample(registry, "fastsess_breaker_opened_total") == 1
        assert sample(registry, "fastsess_breaker_rejected_total") == 2
        assert sample(registry, "fastsess_breaker_failures") == 2
        assert registry.get_sample_value("fastsess_cache_hits_total", {"node": "local"}) is None
