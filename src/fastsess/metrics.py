"""Expose cache and cluster counters to Prometheus (optional extra ``fastsess[metrics]``).

    from prometheus_client import start_http_server
    from fastsess.metrics import register_metrics

    register_metrics(store)          # a ClusteredRedisStore or RedisStore, or anything with cache_stats()
    start_http_server(9100)

Nothing is counted twice: the collector reads the store's own counters
(``store.cache_stats()``, ``store.coordinator.stats`` and ``store.breaker.stats``,
whichever the store has) at scrape time, so the hot path pays nothing for metrics.
Session ids and contents never appear in labels or values.

Logging goes through the standard ``logging`` module under the ``fastsess``
logger (``fastsess.cluster`` etc.): invalidations at DEBUG, reconnects at
WARNING; enable with ``logging.getLogger("fastsess").setLevel(logging.DEBUG)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import REGISTRY, Collector
except ImportError:  # pragma: no cover - exercised only without the extra
    Collector = object  # type: ignore[assignment,misc]
    REGISTRY = None  # type: ignore[assignment]
    CounterMetricFamily = GaugeMetricFamily = None  # type: ignore[assignment,misc]

# (metric suffix, stats attribute, help text)
_CACHE_COUNTERS = (
    ("cache_hits", "hits", "Local cache lookups answered from memory."),
    ("cache_misses", "misses", "Local cache lookups that went to Redis."),
    ("cache_evictions", "evictions", "Entries evicted from the local cache because it was full."),
    ("cache_expirations", "expirations", "Entries dropped from the local cache because their TTL passed."),
)
_CLUSTER_COUNTERS = (
    ("invalidations_published", "published", "Invalidation messages this node published."),
    ("invalidations_received", "received", "Invalidation messages from other nodes applied here."),
    ("invalidations_ignored_own", "ignored_own", "This node's own messages received back and ignored."),
    ("invalidations_malformed", "malformed", "Malformed messages on the invalidation channel, dropped."),
    ("pubsub_reconnects", "reconnects", "Times the invalidation listener re-subscribed."),
)

_TRACKING_COUNTERS = (  # with ClusterConfig(track_external_changes=True) only
    ("tracking_notifications", "notifications", "Tracking notifications (changed keys under the prefix) received."),
    ("tracking_evictions", "evicted", "Sessions evicted because a tracking notification named them."),
    ("tracking_own_writes", "own", "Tracking notifications of this node's own writes, which keep its copy."),
    ("tracking_flushes", "flushes", "Local cache flushes after a FLUSHDB/FLUSHALL notification."),
)

_BREAKER_COUNTERS = (
    ("breaker_opened", "opened", "Times the circuit breaker opened after repeated connection failures."),
    ("breaker_rejected", "rejected", "Calls failed fast by the open circuit breaker, without a Redis call."),
    ("breaker_probes", "probes", "Half-open probes the circuit breaker let through."),
)


class StoreCollector(Collector):
    """A Prometheus collector reading one store's counters at scrape time."""

    def __init__(self, store: Any, namespace: str = "fastsess", node_id: str | None = None) -> None:
        self._store = store
        self._namespace = namespace
        coordinator = getattr(store, "coordinator", None)
        config = getattr(coordinator, "config", None)
        self._node = node_id or getattr(config, "node_id", None) or "local"

    def collect(self) -> Iterator[Any]:
        """Yield the current counter and gauge values (called by the registry on scrape)."""
        ns, labels = self._namespace, [self._node]
        if hasattr(self._store, "cache_stats"):
            stats = self._store.cache_stats()
            for suffix, attr, text in _CACHE_COUNTERS:
                family = CounterMetricFamily(f"{ns}_{suffix}", text, labels=["node"])
                family.add_metric(labels, getattr(stats, attr))
                yield family
            for suffix, attr, text in (("cache_size", "size", "Entries in the local cache."),
                                       ("cache_max_size", "max_size", "Capacity of the local cache.")):
                gauge = GaugeMetricFamily(f"{ns}_{suffix}", text, labels=["node"])
                gauge.add_metric(labels, getattr(stats, attr))
                yield gauge
        breaker = getattr(self._store, "breaker", None)
        if breaker is not None:
            yield from self._breaker(breaker.stats)
        coordinator = getattr(self._store, "coordinator", None)
        if coordinator is None:
            return
        cstats = coordinator.stats
        for suffix, attr, text in _CLUSTER_COUNTERS:
            family = CounterMetricFamily(f"{ns}_{suffix}", text, labels=["node"])
            family.add_metric(labels, getattr(cstats, attr))
            yield family
        subscribed = GaugeMetricFamily(f"{ns}_subscribed", "1 while the invalidation listener is subscribed (cache served).", labels=["node"])
        subscribed.add_metric(labels, 1.0 if cstats.subscribed else 0.0)
        yield subscribed
        tracking = getattr(coordinator, "tracking", None)
        if tracking is not None:
            for suffix, attr, text in _TRACKING_COUNTERS:
                family = CounterMetricFamily(f"{ns}_{suffix}", text, labels=["node"])
                family.add_metric(labels, getattr(tracking, attr))
                yield family


    def _breaker(self, stats: Any) -> Iterator[Any]:
        ns, labels = self._namespace, [self._node]
        for suffix, attr, text in _BREAKER_COUNTERS:
            family = CounterMetricFamily(f"{ns}_{suffix}", text, labels=["node"])
            family.add_metric(labels, getattr(stats, attr))
            yield family
        is_open = GaugeMetricFamily(
            f"{ns}_breaker_open", "1 while the circuit breaker is open or half-open (calls fail fast), 0 when closed.",
            labels=["node"],
        )
        is_open.add_metric(labels, 0.0 if stats.state == "closed" else 1.0)
        yield is_open
        failures = GaugeMetricFamily(f"{ns}_breaker_failures", "Connection failures in a row, now.", labels=["node"])
        failures.add_metric(labels, stats.failures)
        yield failures


def register_metrics(store: Any, registry: Any = None, namespace: str = "fastsess") -> StoreCollector:
    """Register a ``StoreCollector`` for ``store`` with ``registry`` (default: the global one).

    Raises:
        ConfigError: ``prometheus_client`` is not installed.
    """
    if CounterMetricFamily is None:
        from .errors import ConfigError

        raise ConfigError("metrics need prometheus_client: pip install 'fastsess[metrics]'")
    collector = StoreCollector(store, namespace)
    (REGISTRY if registry is None else registry).register(collector)
    return collector
