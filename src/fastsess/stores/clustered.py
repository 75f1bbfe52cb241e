"""``ClusteredRedisStore``: Redis plus a per-node local cache kept coherent by pub/sub.

Reads answer from the local cache when they can (a lookup and a shallow copy),
else from Redis, then fill the cache unless an invalidation for that id arrived
meanwhile (``CoherentCache``).  The operations are ``fastsess._core.ops`` (with a
``CachePolicy``), run by ``RedisStore``'s driver; only the cache hit is answered
here, outside any generator.

Every write carries its invalidation in the same round trip: small Lua
scripts run ``SET``/``DEL``/``EXPIRE`` and ``PUBLISH`` together on the key's
node.  A script (rather than a MULTI pipeline) also works on Redis Cluster,
where redis-py's cluster pipeline refuses PUBLISH, and classic PUBLISH reaches
every node of a cluster.  A first save (SET NX of a new id) publishes the id
marked as a creation: nodes that remember it as absent (``negative_cache_ttl``)
forget it; copies are kept (none can be older than the creation).

Misses: concurrent misses of one id share one read (``_core.flights``); an id
Redis did not hold is remembered as absent for ``negative_cache_ttl`` seconds.
In update mode (``update_max_bytes``) a save's message carries the value, and
nodes caching an older version of that session replace their copy.

Cached sessions are handed out as shallow copies (``Session.copy()``): the
top-level mapping is private to the caller, nested lists and dicts are shared
with the cache.  Mutating a nested value in place and then *not* saving would
change this node's cached copy only, so: after an in-place nested mutation,
set ``session.modified = True`` and save (as Django and Flask require anyway),
or replace the nested value instead of mutating it.
``load_shared`` skips even that copy on a hit (the cached session itself), for
callers that only read it: the framework drop-ins, which copy its data out.

A miss reads the value and its remaining TTL in one round trip (``GET`` + ``PTTL``
in a small Lua script: atomic, and one slot on Redis Cluster) and caches the
session until just before the key expires, timed on this process's monotonic
clock: wall clocks (and their skew between nodes) play no part.  A write of
unknown outcome (timeout, dropped connection, cancellation) marks its id
uncertain (``CachePolicy.uncertain``): evicted now, and this node's own
echo of that write, should it land later, invalidates it like another node's.

While the coordinator is not subscribed (start-up, Redis down, reconnecting,
replaying what it missed, or its lease ran out: ``ClusterConfig.lease``)
the cache is bypassed: reads go to Redis, and fail with ``StoreUnavailable``
when it is down, unless ``ClusterConfig(stale_if_error=N)`` allows a cached
copy to be served instead, for at most N seconds into the outage (never a session
deleted before it; ``CachePolicy.stale``).
"""

from __future__ import annotations

import threading
from typing import Any

import redis
from redis.cluster import RedisCluster

from .._core.flights import RETRY
from .._redis import LAST_UNCHECKED_HIT, ClusteredStoreBase
from ..cluster import ClusterCoordinator
from ..session import Session
from .redis import RedisStore


class ClusteredRedisStore(ClusteredStoreBase, RedisStore):
    """``RedisStore`` with a coherent per-node cache (see the module doc).

    Args:
        client, url, prefix, ttl, serializer, refresh_fraction, socket_timeout,
            retries, pool_size, pool_timeout, clock, encryption, breaker_threshold,
            breaker_cooldown: as ``RedisStore``.
        config: the cluster settings (default ``ClusterConfig()``: clustering on,
            a fresh node id).  ``enabled=False`` gives a plain ``RedisStore``
            (no cache, no messages, ``coordinator`` is None).

    The listener thread starts here, and the constructor returns without waiting
    for its subscription (the cache is bypassed until then;
    ``coordinator.wait_subscribed(timeout)`` waits for it); ``close()`` stops it.

    A store that is garbage-collected without ``close()`` stops its listener and
    closes the client it owns, with a ``ResourceWarning``.  In a child made by
    ``os.fork()`` the store starts clean: empty cache, new instance id, its own
    listener and connections.

    Raises:
        ConfigError: invalid settings.
    """

    _coordinator_type = ClusterCoordinator
    coordinator: ClusterCoordinator | None
    client: redis.Redis | RedisCluster

    _starts_in_constructor = True

    # A cache hit is answered here without a generator; a miss runs ``ops.load``.
    load = ClusteredStoreBase.cached_load

    def load_shared(self, session_id: str) -> Session | None:
        """``load``, but a cache hit hands out the cached ``Session`` itself, not a copy: for
        a caller that copies the data out anyway and never changes that session (the
        framework drop-ins), one copy fewer per read.  Misses and errors as ``load``.

        Raises:
            SessionCorrupt, StoreUnavailable: as ``load``.
        """
        cache = self._cache
        if cache is not None and self.coordinator.subscribed and type(session_id) is str:  # type: ignore[union-attr]
            cached: Session | None = cache.get(session_id)
            if cached is not None:
                if self._hits_unchecked < LAST_UNCHECKED_HIT:
                    self._hits_unchecked += 1
                else:  # a hit that first lets a listener with input apply it (as ``after_lookup``)
                    self._hits_unchecked = 0
                    if not self._hit_is_current():  # the listener is behind: read Redis
                        return self.after_lookup(session_id, None)  # type: ignore[no-any-return]
                return cached
            return self.after_lookup(session_id, None)  # type: ignore[no-any-return]
        return self.cached_load(session_id)  # type: ignore[no-any-return]  # the cache is bypassed

    def _shared_load(self, session_id: str, token: tuple[int, int]) -> Any:
        """One Redis read for the concurrent misses of ``session_id`` (threads wait on an Event)."""
        flights = self._cache.flights  # type: ignore[union-attr]
        while True:
            flight, leading = flights.take(session_id, token, threading.Event)
            if leading:
                break
            flight.signal.wait()
            result = flight.outcome()
            if result is not RETRY:
                return result
            token = self._cache.fill_token(session_id)  # type: ignore[union-attr]
        try:
            result = self._run(self._core.load(session_id, token))
        except BaseException as exc:
            signal = flights.land(session_id, flight, error=exc)
            if signal is not None:
                signal.set()
            raise
        signal = flights.land(session_id, flight, result)
        if signal is not None:
            signal.set()
        return result

    def close(self) -> None:
        """Stop the listener thread, then close the client if this store created it."""
        coordinator = self._detach()
        if coordinator is not None:
            coordinator.stop()
        RedisStore.close(self)
