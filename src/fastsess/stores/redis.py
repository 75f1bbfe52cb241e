"""``RedisStore``: sessions in Redis (standalone, Sentinel-managed or Redis Cluster).

Each session is one string key ``<prefix><id>`` holding the serializer's
envelope, with the session's TTL as the key's expiry.  Every method is one
round trip except ``regenerate`` on Redis Cluster (see there) and the SCAN
walks of ``iter_ids``/``clear``.

The operations are written once in ``fastsess._core.ops`` (generators of
commands); this module is their sync driver.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from itertools import islice
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.retry import Retry

from .._core.keys import is_valid_session_id
from .._core.ops import Flow
from .._redis import (
    DEFAULT_POOL_SIZE,
    DEFAULT_POOL_TIMEOUT,
    DEFAULT_RETRIES,
    DEFAULT_SOCKET_TIMEOUT,
    REDIS_ERRORS,
    SCAN_BATCH,
    RedisStoreBase,
    Run,
    breaker_failed,
    client_from_url,
    execute,
    is_pool_exhausted,
    map_redis_error,
    unlink_pipeline,
)
from ..session import Session
from .base import SessionStore

__all__ = [
    "DEFAULT_POOL_SIZE", "DEFAULT_POOL_TIMEOUT", "DEFAULT_RETRIES", "DEFAULT_SOCKET_TIMEOUT", "REDIS_ERRORS",
    "RedisStore", "is_pool_exhausted", "map_redis_error",
]


class RedisStore(RedisStoreBase, SessionStore):
    """Sessions in Redis.

    Args:
        client: an existing ``redis.Redis`` (also Sentinel's ``master_for(...)``)
            or ``redis.cluster.RedisCluster``; not closed by ``close()``.
        url: a ``redis://`` / ``rediss://`` / ``unix://`` URL instead of a client;
            the store owns that client.
        prefix, ttl, refresh_fraction: see ``stores.base``.
        serializer: ``"msgpack"`` (default), ``"json"`` or a ``Serializer``.
        socket_timeout, retries: used only for the client built from ``url``.
        pool_size, pool_timeout: the client built from ``url`` uses a blocking pool
            of ``pool_size`` connections (default 100); an operation that finds them
            all busy waits up to ``pool_timeout`` seconds (default 10) for one, then
            raises ``PoolExhausted``.  Size it to the threads (or asyncio tasks) that
            use the store at once.  Up to half the pool is kept between loads and
            saves (``_redis.IdleConnections``), never while someone waits for one.
        clock: wall-clock seconds for ``refreshed_at`` and the refresh decision
            (default ``time.time``).
        encryption: an ``Encryption`` (``fastsess[crypto]``): every session is stored
            AES-256-GCM-encrypted, bound to its key; None (default): stored in clear.
        on_conflict: what ``save`` does with a top-level key that this request and
            another one both changed since this session was loaded: ``"merge"``
            (default: this save's value wins for that key, the other request's
            changes to other keys are kept), ``"raise"`` (``ConcurrentModification``,
            nothing written) or a callable ``f(key, base, mine, theirs)`` returning the
            value to store (``fastsess.MISSING`` deletes the key).
        breaker_threshold, breaker_cooldown: the circuit breaker (``store.breaker``):
            after ``breaker_threshold`` connection failures in a row (default 5; 0: off)
            every call raises ``CircuitOpen`` at once, without a Redis call, for
            ``breaker_cooldown`` seconds (default 1.0); then one call at a time probes.

    Raises:
        ConfigError: neither or both of client/url, or an invalid setting.
    """

    _cluster_type = RedisCluster
    _client_from_url = functools.partial(client_from_url, redis, Retry)

    def _run(self, flow: Flow) -> Any:
        """Drive one operation: send its commands, report replies and failures."""
        run, client, idle = Run(flow, self.breaker), self.client, self._idle
        while not run.done:
            try:
                reply = execute(client, run.command, idle)
            except BaseException as exc:
                run.failed(exc)
            else:
                run.reply(reply)
        return run.value

    def load(self, session_id: str) -> Session | None:
        """The stored session, or None (absent, expired, malformed id: no Redis call). One GET.

        Raises:
            SessionCorrupt: the key holds something that is not a fastsess session.
            StoreUnavailable: Redis failed or timed out.
        """
        result: Session | None = self._run(self._core.load(session_id)) if is_valid_session_id(session_id) else None
        return result

    def save(self, session: Session) -> bool:
        """Write ``session`` if modified or its TTL refresh is due; True if it wrote. One round trip.

        A new session is written with SET NX (a collision takes a fresh id).  A
        loaded one with a compare-and-set (one Lua script): written only if the key
        still exists, so a session deleted meanwhile is not resurrected (returns
        False), and still holds what this session was loaded from.  If another
        request wrote it since, the stored session comes back in the same reply,
        this request's changes (``session.changes``) are re-applied on it
        (``on_conflict`` decides keys both changed) and the write is tried again:
        one more round trip per conflict, at most ``MAX_CONFLICT_RETRIES`` (50).

        Raises:
            ConcurrentModification: ``on_conflict="raise"`` and a key changed on both
                sides, or a new write landed before each of the retries.
            StoreUnavailable: Redis failed; the session's state is unchanged.
            PoolExhausted: no pooled connection freed up in time (a StoreUnavailable).
            TypeError: the session holds a value that cannot be stored or read back.
            SessionTooLarge: the session is over the serializer's limits (nothing written).
            InvalidSessionId: ``session.id`` is not a fastsess id (nothing written).
        """
        return bool(self._run(self._core.save(session)))

    def delete(self, session_id: str) -> bool:
        """Remove the session; True if it existed. Malformed ids: False without a Redis call.

        Raises:
            StoreUnavailable: Redis failed.
        """
        return bool(self._run(self._core.delete(session_id)))

    def touch(self, session_id: str, ttl: int | None = None) -> bool:
        """Set the session's expiry to ``ttl`` seconds (default: the store's); True if it exists.
        One ``GETEX`` (clustered: one script that also publishes); a session bound to a
        principal also gets its index entry renewed (one more small script).

        Raises:
            ConfigError: ``ttl`` is not an int from 1 to ``MAX_TTL``.
            StoreUnavailable: Redis failed.
        """
        return bool(self._run(self._core.touch(session_id, ttl)))

    def exists(self, session_id: str) -> bool:
        """True if the session is stored. One EXISTS; malformed ids: False without a call.

        Raises:
            StoreUnavailable: Redis failed.
        """
        return bool(self._run(self._core.exists(session_id)))

    def regenerate(self, session: Session) -> Session:
        """Move ``session`` to a new id and delete the old key; returns ``session``.

        Atomic on a single Redis (one Lua script: SET NX new, then DEL old).  On
        Redis Cluster the keys sit in different slots: the new key is written
        first, then the old one compared and deleted (two round trips).  A session
        never saved just gets a new id.  As with ``save``: if another request saved
        the session since it was loaded, this request's changes are re-applied on
        that and the result moved; a session deleted meanwhile is not re-created
        (nothing written, ``session`` keeps its old id and state).

        A move whose outcome is unknown (a timeout: it may have run, or may still
        run) is run once more: the move is idempotent (same new id, same payload),
        so the second run either moves the session or finds it already moved, and
        ``session.id`` ends up naming the key that holds the data.

        Raises:
            StoreUnavailable: Redis failed twice; ``session`` keeps its old id and state.
            InvalidSessionId: a saved session whose ``id`` is not a fastsess id.
            TypeError, SessionTooLarge: as ``save`` (nothing written).
        """
        result: Session = self._run(self._core.regenerate(session))
        return result

    def bind(self, session: Session, principal: str) -> None:
        """Index ``session`` under ``principal`` (one small script on the index key) and record
        the principal in the session's data: save it next.  See ``SessionStore.bind``.

        Raises:
            TypeError, ValueError: an invalid principal.
            InvalidSessionId: ``session.id`` is not a fastsess id.
            StoreUnavailable: Redis failed.
        """
        self._run(self._principals.bind(session, principal))

    def sessions_of(self, principal: str) -> list[str]:
        """The ids of ``principal``'s live sessions (``ZSCAN`` of its index, then one pipeline
        of ``EXISTS`` per 1,000 ids).

        Raises:
            TypeError, ValueError: an invalid principal.
            StoreUnavailable: Redis failed.
        """
        result: list[str] = self._run(self._principals.sessions_of(principal))
        return result

    def delete_all(self, principal: str, except_id: str | None = None) -> int:
        """Delete ``principal``'s sessions but ``except_id``, 1,000 per batch (a pipeline of
        ``UNLINK`` and a script that drops them from the index and, clustered, publishes
        their invalidations).  Returns how many were deleted.

        Raises:
            TypeError, ValueError: an invalid principal.
            StoreUnavailable: Redis failed (the index still lists what was not done: call again).
        """
        return int(self._run(self._principals.delete_all(principal, except_id)))

    def iter_ids(self) -> Iterator[str]:
        """Every session id under this prefix, by SCAN (never KEYS); on a cluster, every node.

        Only keys that are the prefix followed by exactly one 43-character session
        id match (the prefix is glob-escaped): other keys under the prefix, or
        longer prefixes starting with it, are never returned (nor cleared, nor counted).

        Raises:
            StoreUnavailable: Redis failed mid-scan.
            CircuitOpen: the circuit breaker is not closed (a StoreUnavailable; no probe).
        """
        keys = self._keys
        self.breaker.check()
        if self._idle is not None:
            self._idle.drain()  # SCAN takes pooled connections of its own
        try:
            for key in self.client.scan_iter(match=keys.match, count=SCAN_BATCH):
                if (session_id := keys.id_of(key)) is not None:
                    yield session_id
        except REDIS_ERRORS as exc:
            breaker_failed(self.breaker, exc)
            raise map_redis_error("SCAN", exc) from exc

    def clear(self) -> int:
        """Delete every session under this prefix (SCAN + batched UNLINK); returns how many.

        Raises:
            StoreUnavailable: Redis failed (some sessions may already be gone).
        """
        ids, deleted = self.iter_ids(), 0
        try:
            while batch := list(islice(ids, SCAN_BATCH)):
                try:
                    deleted += sum(unlink_pipeline(self.client, self._keys, batch).execute())
                except REDIS_ERRORS as exc:
                    breaker_failed(self.breaker, exc)
                    raise map_redis_error("UNLINK", exc) from exc
        finally:
            self._run(self._core.cleared())  # clustered: flush every node's cache
        return deleted

    def close(self) -> None:
        """Close the client and its pool if this store created them (from ``url``)."""
        if self._owns_client:
            if self._idle is not None:
                self._idle.drain()
            self.client.close()
            self.client.connection_pool.disconnect()  # also where Redis.close() leaves the pool open (and leased ones)
