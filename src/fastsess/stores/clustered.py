"""``ClusteredRedisStore``: Redis plus a per-node local cache kept coherent by pub/sub.

Reads answer from the local cache when they can (a dict-like lookup and a
shallow copy: well under a microsecond), else from Redis, then fill the cache
unless an invalidation for that id arrived meanwhile (``cluster.CoherentCache``).

Every write carries its invalidation in the same round trip: small Lua
scripts run ``SET``/``DEL``/``EXPIRE`` and ``PUBLISH`` together on the key's
node.  A script (rather than a MULTI pipeline) also works on Redis Cluster,
where redis-py's cluster pipeline refuses PUBLISH, and classic PUBLISH reaches
every node of a cluster.  A first save (SET NX of a brand-new id) publishes
nothing: no node can hold a copy of an id nobody has written.

Cached sessions are handed out as shallow copies (``Session.copy()``): the
top-level mapping is private to the caller, nested lists and dicts are shared
with the cache.  Mutating a nested value in place and then *not* saving would
change this node's cached copy only, so: after an in-place nested mutation,
set ``session.modified = True`` and save (as Django and Flask require anyway),
or replace the nested value instead of mutating it.

A miss reads the value and its remaining TTL in one round trip (``GET`` + ``PTTL``
in a small Lua script: atomic, and one slot on Redis Cluster) and caches the
session until just before the key expires, timed on this process's monotonic
clock: wall clocks (and their skew between nodes) play no part.  A write of
unknown outcome (timeout, dropped connection, cancellation) marks its id
uncertain (``CoherentCache.mark_uncertain``): evicted now, and this node's own
echo of that write, should it land later, invalidates it like another node's.

While the coordinator is not subscribed (start-up, Redis down, reconnecting)
the cache is bypassed: reads go to Redis, and fail with ``StoreUnavailable``
when it is down, unless ``ClusterConfig(stale_if_error=True)`` allows a cached
copy to be served instead.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError

from .._cache_common import make_stats
from ..cache import CacheStats
from ..cluster import CLEARED, DELETED, EXPIRY_MARGIN, HITS_PER_CHECK, INVALIDATED, TOUCHED, ClusterCoordinator, CoherentCache, release_unclosed
from ..config import ClusterConfig
from ..serializers import Serializer
from ..session import Session
from .base import DEFAULT_PREFIX, DEFAULT_REFRESH_FRACTION, DEFAULT_TTL, check_ttl, is_valid_session_id
from .redis import (
    DEFAULT_POOL_SIZE,
    DEFAULT_POOL_TIMEOUT,
    DEFAULT_RETRIES,
    DEFAULT_SOCKET_TIMEOUT,
    REDIS_ERRORS,
    RedisStore,
    map_redis_error,
)

# KEYS[1]=key  ARGV: payload, ttl, channel, message.  SET XX: never resurrects a deleted session.
SET_PUBLISH_SCRIPT = """
if redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2], 'XX') then
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  return 1
end
return 0
"""

# KEYS[1]=key  ARGV: channel, message.  Published even if the key was gone: a node may
# still cache a copy of a session that expired in Redis.
DELETE_PUBLISH_SCRIPT = """
local n = redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return n
"""

# KEYS[1]=key  ARGV: ttl, channel, message.  Other nodes drop their copy, whose local
# expiry was computed from the old TTL.
TOUCH_PUBLISH_SCRIPT = """
local n = redis.call('EXPIRE', KEYS[1], ARGV[1])
if n == 1 then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return n
"""

# KEYS[1]=old key, KEYS[2]=new key  ARGV: payload, ttl, channel, message (deleted old id).
# Idempotent, like stores.redis.MOVE_SCRIPT: 2 if this very move already happened.
MOVE_PUBLISH_SCRIPT = """
if redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2], 'NX') then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  return 1
end
if redis.pcall('GET', KEYS[2]) == ARGV[1] then
  return 2
end
return 0
"""

# KEYS[1]=key.  The value and its remaining TTL in ms (-2: no key, -1: no expiry), read
# atomically in one round trip: a miss caches the session until the key's real expiry.
GET_PTTL_SCRIPT = """
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
"""


def local_ttl(config: ClusterConfig, started: float, key_ttl: float) -> float:
    """Seconds this node may cache what a request sent at ``started`` (``time.monotonic()``)
    learned about a key that then had ``key_ttl`` seconds to live: the local TTL, capped
    by the key's expiry.  The key expires no earlier than ``started + key_ttl``, since the
    server ran the command after it was sent; ``EXPIRY_MARGIN`` covers the coarse cache clock."""
    return min(config.local_cache_ttl, started + key_ttl - EXPIRY_MARGIN - time.monotonic())


def fill_ttl(config: ClusterConfig, started: float, pttl: int) -> float:
    """``local_ttl`` for a ``PTTL`` reply (milliseconds; -1: no expiry, -2: no key)."""
    if pttl == -1:
        return config.local_cache_ttl
    return local_ttl(config, started, pttl / 1000.0) if pttl >= 0 else 0.0


def cache_snapshot(session: Session) -> Session:
    """The copy the cache keeps of a session just written (saved, unmodified)."""
    snapshot = session.copy()
    snapshot.new = snapshot.modified = False
    return snapshot


class LocalCacheControl:
    """The local-cache half of a clustered store, shared by the sync and asyncio twins."""

    _cache: CoherentCache | None
    _hits_unchecked: int  # cache hits since the last yield_to_listener check
    config: ClusterConfig
    client: Any
    is_cluster: bool

    def _attach_cluster(self, config: ClusterConfig | None, coordinator_type: type) -> None:
        """Build the cache, the coordinator (not started) and the write scripts."""
        self.config = cfg = ClusterConfig() if config is None else config
        self._cache = (
            CoherentCache(cfg.local_cache_max_size, cfg.local_cache_ttl, cfg.local_cache_max_bytes, cfg.local_cache_max_item_bytes)
            if cfg.enabled and cfg.local_cache_enabled
            else None
        )
        self.coordinator = coordinator_type(self.client, cfg, self._cache) if cfg.enabled else None
        self._hits_unchecked = 0
        # A store dropped without close() still releases its listener and connections
        # (with a ResourceWarning, like an unclosed file); close() detaches this.
        self._finalizer = weakref.finalize(
            self, release_unclosed, type(self).__name__, self.coordinator, self.client if self._owns_client else None,  # type: ignore[attr-defined]
        )
        self._finalizer.atexit = False
        register = self.client.register_script
        self._set_publish = register(SET_PUBLISH_SCRIPT)
        self._delete_publish = register(DELETE_PUBLISH_SCRIPT)
        self._touch_publish = register(TOUCH_PUBLISH_SCRIPT)
        self._move_publish = None if self.is_cluster else register(MOVE_PUBLISH_SCRIPT)
        self._get_pttl = register(GET_PTTL_SCRIPT)

    def cache_stats(self) -> CacheStats:
        """This node's cache counters (hits, misses, evictions, expirations, size, hit_rate)."""
        if self._cache is None:
            return make_stats(0, 0, 0, 0, 0, self.config.local_cache_max_size)
        return self._cache.stats()

    def reset_cache_stats(self) -> None:
        """Zero this node's cache counters."""
        if self._cache is not None:
            self._cache.cache.reset_stats()

    def evict_from_cache(self, session_id: str) -> bool:
        """Drop ``session_id`` from this node's cache only; True if it was cached."""
        return self._cache is not None and self._cache.invalidate(session_id)

    def clear_local_cache(self) -> None:
        """Empty this node's cache (other nodes and Redis are untouched)."""
        if self._cache is not None:
            self._cache.flush()

    def cache_bytes(self) -> int:
        """Serialized bytes of the sessions this node caches (an upper bound; 0 without a cache)."""
        return 0 if self._cache is None else self._cache.cached_bytes

    def _write_failed(self, *session_ids: str) -> None:
        """After a write with an unknown outcome: evict these ids now, and let this node's own
        echo of them count as an invalidation should the write land later (``mark_uncertain``)."""
        if self._cache is not None:
            for session_id in session_ids:
                self._cache.mark_uncertain(session_id)

    def _read_failed(self, session_id: str, exc: BaseException) -> Session:
        """After a failed GET: the cached copy ``stale_if_error`` allows, else the mapped error.

        Raises:
            StoreUnavailable / SessionCorrupt: no stale copy may answer.
        """
        cache = self._cache
        stale: Session | None = cache.get(session_id) if cache is not None and self.config.stale_if_error else None
        if stale is None:
            raise map_redis_error("GET", exc) from exc
        return stale.copy()

    def _read_done(
        self, session_id: str, raw: bytes | None, token: tuple[int, int] | None, pttl: int = -2, started: float = 0.0,
    ) -> Session | None:
        """Decode what the GET returned and fill the cache until the key's expiry (``pttl``
        ms from ``started``), unless an invalidation since ``token`` forbids it.

        Raises:
            SessionCorrupt: ``raw`` is not a fastsess session.
        """
        if raw is None:
            return None
        session: Session = self._decode(session_id, raw)  # type: ignore[attr-defined]
        if token is not None:
            ttl = fill_ttl(self.config, started, pttl)
            if ttl > 0 and len(raw) <= self._cache.max_item_bytes:  # type: ignore[union-attr]
                self._cache.fill(session_id, session.copy(), token, ttl, len(raw))  # type: ignore[union-attr]
        return session

    def _write_token(self, session_id: str) -> tuple[int, int] | None:
        """Take before a write: ``_cache_written`` caches the result only if nothing came in since."""
        return None if self._cache is None else self._cache.fill_token(session_id)

    def _cache_written(self, session: Session, written: bool, token: tuple[int, int] | None, started: float, size: int) -> None:
        """After a write of ``session`` (``size`` bytes, sent at ``started``, monotonic): cache
        what was written, unless another node's invalidation arrived meanwhile (its write may
        be newer); else drop what may be stale."""
        cache = self._cache
        if cache is None:
            return
        if written and token is not None and size <= cache.max_item_bytes:
            cache.put_if(session.id, cache_snapshot(session), token, local_ttl(self.config, started, session.ttl), size)
        else:
            cache.invalidate(session.id)


class ClusteredRedisStore(LocalCacheControl, RedisStore):
    """``RedisStore`` with a coherent per-node cache (see the module doc).

    Args:
        client, url, prefix, ttl, serializer, refresh_fraction, socket_timeout,
            retries, pool_size, pool_timeout: as ``RedisStore``.
        config: the cluster settings (default ``ClusterConfig()``: clustering on,
            a fresh node id).  ``enabled=False`` gives a plain ``RedisStore``
            (no cache, no messages, ``coordinator`` is None).

    The listener thread starts here and waits up to ``config.subscribe_timeout``
    for its subscription; ``close()`` stops it.

    A store that is garbage-collected without ``close()`` stops its listener and
    closes the client it owns, with a ``ResourceWarning``.  In a child made by
    ``os.fork()`` the store starts clean: empty cache, new instance id, its own
    listener and connections.

    Raises:
        ConfigError: invalid settings.
    """

    def __init__(
        self,
        client: redis.Redis | RedisCluster | None = None,
        url: str | None = None,
        *,
        config: ClusterConfig | None = None,
        prefix: str = DEFAULT_PREFIX,
        ttl: int = DEFAULT_TTL,
        serializer: Serializer | str | None = None,
        refresh_fraction: float = DEFAULT_REFRESH_FRACTION,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        pool_size: int = DEFAULT_POOL_SIZE,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
    ) -> None:
        super().__init__(
            client, url, prefix=prefix, ttl=ttl, serializer=serializer, refresh_fraction=refresh_fraction,
            socket_timeout=socket_timeout, retries=retries, pool_size=pool_size, pool_timeout=pool_timeout,
        )
        self.coordinator: ClusterCoordinator | None
        self._attach_cluster(config, ClusterCoordinator)
        if self.coordinator is not None:
            try:
                self.coordinator.start()
            except BaseException:
                super().close()
                raise

    # -- reads ------------------------------------------------------------------------

    def load(self, session_id: str) -> Session | None:
        """The session from the local cache (a shallow copy), else from Redis (one GET).

        Cost: a cache hit is a hash lookup plus a shallow copy (well under 1 us);
        a miss is one round trip (GET + PTTL in a script) + decode, then a cache fill.

        Raises:
            SessionCorrupt: the key holds something that is not a fastsess session.
            StoreUnavailable: Redis failed (also while the cache is bypassed,
                unless ``stale_if_error``).
        """
        cache = self._cache
        token = None
        if cache is not None and self.coordinator.subscribed and type(session_id) is str:  # type: ignore[union-attr]
            # Only valid ids are ever cached, so a hit needs no id check (saves ~250 ns).
            cached: Session | None = cache.get(session_id)
            if cached is not None:
                checked = self._hits_unchecked + 1
                if checked >= HITS_PER_CHECK:  # let a GIL-starved listener apply what it has
                    checked = 0
                    self.coordinator.yield_to_listener()  # type: ignore[union-attr]
                self._hits_unchecked = checked
                return cached.copy()
            if not is_valid_session_id(session_id):
                return None
            token = cache.fill_token(session_id)
        elif not is_valid_session_id(session_id):
            return None
        started, pttl = 0.0, -2
        try:
            if token is None:  # the cache is bypassed: a plain GET
                raw = self.client.get(self.prefix + session_id)
            else:
                started = time.monotonic()
                raw, pttl = self._get_with_pttl(self.prefix + session_id)
        except REDIS_ERRORS as exc:
            return self._read_failed(session_id, exc)
        return self._read_done(session_id, raw, token, pttl, started)

    def _get_with_pttl(self, key: str) -> tuple[bytes | None, int]:
        """The key's value and remaining TTL in ms, in one round trip (``GET_PTTL_SCRIPT``).

        A bare EVALSHA: ``Script.__call__`` costs ~12 us more per call here; the script
        object loads the script when the server does not know it (first use, restart).

        Raises:
            redis.RedisError: the call failed.
        """
        try:
            reply = self.client.execute_command("EVALSHA", self._get_pttl.sha, 1, key)
        except NoScriptError:
            reply = self._get_pttl(keys=[key])
        return reply[0], reply[1]

    # -- write hooks (RedisStore calls them; errors are mapped there) --------------------

    def _write(self, session: Session, payload: bytes, nx: bool) -> bool:
        coordinator = self.coordinator
        if coordinator is None:
            return super()._write(session, payload, nx)
        token = self._write_token(session.id)
        started = time.monotonic()
        try:
            if nx:
                written = super()._write(session, payload, nx)
            else:
                message = coordinator.message(INVALIDATED, session.id, session.version)
                written = bool(self._set_publish(keys=[self.prefix + session.id], args=[payload, session.ttl, coordinator.channel, message]))
                if written:
                    coordinator.note_published()
        except BaseException:
            self._write_failed(session.id)  # the write may have landed, or may land later
            raise
        self._cache_written(session, written, token, started, len(payload))
        return written

    def _move(self, old_id: str, session: Session, payload: bytes) -> bool:
        coordinator = self.coordinator
        if coordinator is None:
            return super()._move(old_id, session, payload)
        message = coordinator.message(DELETED, old_id)
        token = self._write_token(session.id)
        started = time.monotonic()
        try:
            if self._move_publish is not None:
                keys = [self.prefix + old_id, self.prefix + session.id]
                moved = bool(self._move_publish(keys=keys, args=[payload, session.ttl, coordinator.channel, message]))
            else:  # Redis Cluster: the two keys are in different slots (see RedisStore._move)
                new_key = self.prefix + session.id
                moved = bool(self.client.set(new_key, payload, ex=session.ttl, nx=True)) or self.client.get(new_key) == payload
                if moved:
                    self._delete_publish(keys=[self.prefix + old_id], args=[coordinator.channel, message])
        except BaseException:
            self._write_failed(old_id, session.id)
            raise
        if self._cache is not None:
            self._cache.invalidate(old_id)
        if moved:
            coordinator.note_published()
            self._cache_written(session, True, token, started, len(payload))
        return moved

    def _delete_key(self, session_id: str) -> bool:
        coordinator = self.coordinator
        if coordinator is None:
            return super()._delete_key(session_id)
        try:
            message = coordinator.message(DELETED, session_id)
            existed: bool = self._delete_publish(keys=[self.prefix + session_id], args=[coordinator.channel, message]) == 1
        except BaseException:
            self._write_failed(session_id)  # the DEL may have landed, or may land later
            raise
        coordinator.note_published()
        if self._cache is not None:
            self._cache.invalidate(session_id)
        return existed

    def touch(self, session_id: str, ttl: int | None = None) -> bool:
        """Set the session's expiry to ``ttl`` seconds (default: the store's) and drop
        cached copies everywhere (their local expiry followed the old TTL; the next fill
        reads the new one). One round trip.

        Raises:
            ConfigError: ``ttl`` is not a positive int.
            StoreUnavailable: Redis failed.
        """
        coordinator = self.coordinator
        if coordinator is None or not is_valid_session_id(session_id):
            return super().touch(session_id, ttl)
        seconds = self.ttl if ttl is None else check_ttl(ttl)
        try:
            message = coordinator.message(TOUCHED, session_id, expires_in=seconds)
            touched: bool = self._touch_publish(keys=[self.prefix + session_id], args=[seconds, coordinator.channel, message]) == 1
        except BaseException as exc:
            self._write_failed(session_id)  # the EXPIRE may have landed, or may land later
            if isinstance(exc, REDIS_ERRORS):
                raise map_redis_error("EXPIRE", exc) from exc
            raise
        if self._cache is not None:
            self._cache.invalidate(session_id)  # the next fill reads the new expiry (PTTL)
        if touched:
            coordinator.note_published()
        return touched

    def clear(self) -> int:
        """Delete every session under this prefix, flush every node's cache; returns how many.

        Raises:
            StoreUnavailable: Redis failed (some sessions may already be gone).
        """
        try:
            return super().clear()
        finally:
            if self._cache is not None:
                self._cache.flush()
            if self.coordinator is not None:
                try:
                    self.coordinator.publish(CLEARED)
                except REDIS_ERRORS as exc:
                    raise map_redis_error("PUBLISH", exc) from exc

    def close(self) -> None:
        """Stop the listener thread, then close the client if this store created it."""
        self._finalizer.detach()
        if self.coordinator is not None:
            self.coordinator.stop()
        super().close()

