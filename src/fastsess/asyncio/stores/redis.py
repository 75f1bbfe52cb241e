"""asyncio ``RedisStore`` on ``redis.asyncio``: the twin of ``fastsess.stores.redis``.

Same keys, envelope, round trips and errors as the sync store; every I/O
method is a coroutine.  The protected hooks (``_write``, ``_move``,
``_delete_key``, ``_decode``) are the extension points of the asyncio
``ClusteredRedisStore``, as in the sync tree.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry

from ...errors import ConfigError, StoreUnavailable
from ...serializers import Serializer
from ...session import Session
from ...stores.base import (
    DEFAULT_PREFIX,
    DEFAULT_REFRESH_FRACTION,
    DEFAULT_TTL,
    check_session_id,
    check_ttl,
    is_valid_session_id,
    new_session_id,
    now,
)
from ...stores.redis import (
    DEFAULT_POOL_SIZE,
    DEFAULT_POOL_TIMEOUT,
    DEFAULT_RETRIES,
    DEFAULT_SOCKET_TIMEOUT,
    MAX_ID_ATTEMPTS,
    REDIS_ERRORS,
    SCAN_BATCH,
    attach_client,
    check_pool,
    default_retry,
    is_pool_exhausted,
    map_redis_error,
)
from .base import AsyncSessionStore


def client_from_url(
    url: str,
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    pool_size: int = DEFAULT_POOL_SIZE,
    pool_timeout: float = DEFAULT_POOL_TIMEOUT,
) -> aredis.Redis:
    """A ``redis.asyncio.Redis`` for ``url`` with fastsess's timeout and retry defaults,
    on a blocking pool of ``pool_size`` connections (waits ``pool_timeout`` s for one).

    Raises:
        ConfigError: the URL or a pool setting is malformed.
    """
    pool_size, pool_timeout = check_pool(pool_size, pool_timeout)
    try:
        pool = aredis.BlockingConnectionPool.from_url(
            url,
            max_connections=pool_size,
            timeout=pool_timeout,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=default_retry(retries, Retry),
            health_check_interval=30,
            retry_on_error=[aredis.ConnectionError],  # redis-py < 6 retries only the errors listed here
        )
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL: {exc}") from exc
    client = aredis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # aclose() of the client also closes the pool it owns
    return client


class RedisStore(AsyncSessionStore):
    """Sessions in Redis, asyncio API.  Arguments as ``fastsess.stores.redis.RedisStore``,
    with ``redis.asyncio`` clients (``Redis``, ``RedisCluster`` or Sentinel's ``master_for``).
    ``pool_size``/``pool_timeout`` size the blocking pool of a client built from ``url``
    (tasks wait for a free connection, then ``PoolExhausted``).

    Raises:
        ConfigError: neither or both of client/url, or an invalid setting.
    """

    def __init__(
        self,
        client: aredis.Redis | RedisCluster | None = None,
        url: str | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        ttl: int = DEFAULT_TTL,
        serializer: Serializer | str | None = None,
        refresh_fraction: float = DEFAULT_REFRESH_FRACTION,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        pool_size: int = DEFAULT_POOL_SIZE,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
    ) -> None:
        super().__init__(prefix=prefix, ttl=ttl, refresh_fraction=refresh_fraction)
        self.client: Any
        self.serializer: Serializer
        self.is_cluster: bool
        self._owns_client: bool
        self._move_script: Any  # a registered Lua script; None on Redis Cluster
        self._match: str
        check_pool(pool_size, pool_timeout)
        attach_client(
            self, client, url, serializer,
            lambda u: client_from_url(u, socket_timeout, retries, pool_size, pool_timeout), RedisCluster,
        )

    # -- hooks ----------------------------------------------------------------------

    def _decode(self, session_id: str, raw: bytes) -> Session:
        return self.serializer.decode(session_id, raw)

    async def _write(self, session: Session, payload: bytes, nx: bool) -> bool:
        return bool(await self.client.set(self.prefix + session.id, payload, ex=session.ttl, nx=nx, xx=not nx))

    async def _move(self, old_id: str, session: Session, payload: bytes) -> bool:
        if self._move_script is not None:
            keys = [self.prefix + old_id, self.prefix + session.id]
            return bool(await self._move_script(keys=keys, args=[payload, session.ttl]))
        # Redis Cluster: see the sync store (new key first, then the old one; idempotent).
        new_key = self.prefix + session.id
        if not await self.client.set(new_key, payload, ex=session.ttl, nx=True) and await self.client.get(new_key) != payload:
            return False
        await self.client.delete(self.prefix + old_id)
        return True

    async def _delete_key(self, session_id: str) -> bool:
        return bool(await self.client.delete(self.prefix + session_id) == 1)

    # -- API --------------------------------------------------------------------------

    async def load(self, session_id: str) -> Session | None:
        """The stored session, or None (absent, expired, malformed id: no Redis call). One GET.

        Raises:
            SessionCorrupt: the key holds something that is not a fastsess session.
            StoreUnavailable: Redis failed or timed out.
        """
        if not is_valid_session_id(session_id):
            return None
        try:
            raw = await self.client.get(self.prefix + session_id)
        except REDIS_ERRORS as exc:
            raise map_redis_error("GET", exc) from exc
        if raw is None:
            return None
        return self._decode(session_id, raw)

    async def save(self, session: Session) -> bool:
        """Write ``session`` if modified or its TTL refresh is due; True if it wrote. One SET.

        NX for a new session, XX for an existing one (no resurrection: False).

        Raises:
            StoreUnavailable: Redis failed; the session's state is unchanged.
            PoolExhausted: no pooled connection freed up in time (a StoreUnavailable).
            TypeError: the session holds a value that cannot be stored or read back.
            SessionTooLarge: the session is over the serializer's limits (nothing written).
            InvalidSessionId: ``session.id`` is not a fastsess id (nothing written).
        """
        check_session_id(session)
        t = now()
        if not self.needs_write(session, t):
            return False
        for _ in range(MAX_ID_ATTEMPTS):
            old = self.prepare_write(session, t)
            try:
                written = await self._write(session, self.serializer.encode(session), session.new)
            except REDIS_ERRORS as exc:
                self.roll_back(session, old)
                raise map_redis_error("SET", exc) from exc
            except BaseException:
                self.roll_back(session, old)
                raise
            if written:
                self.mark_saved(session, t)
                return True
            self.roll_back(session, old)
            if not session.new:
                return False
            session.id = new_session_id()
        raise StoreUnavailable("could not allocate an unused session id")

    async def delete(self, session_id: str) -> bool:
        """Remove the session; True if it existed. Malformed ids: False without a Redis call.

        Raises:
            StoreUnavailable: Redis failed.
        """
        if not is_valid_session_id(session_id):
            return False
        try:
            return await self._delete_key(session_id)
        except REDIS_ERRORS as exc:
            raise map_redis_error("DEL", exc) from exc

    async def touch(self, session_id: str, ttl: int | None = None) -> bool:
        """Set the session's expiry to ``ttl`` seconds (default: the store's). One EXPIRE.

        Raises:
            ConfigError: ``ttl`` is not an int from 1 to ``MAX_TTL``.
            StoreUnavailable: Redis failed.
        """
        if not is_valid_session_id(session_id):
            return False  # a malformed id is answered before anything else, bad ttl included
        seconds = self.ttl if ttl is None else check_ttl(ttl)
        try:
            return bool(await self.client.expire(self.prefix + session_id, seconds))
        except REDIS_ERRORS as exc:
            raise map_redis_error("EXPIRE", exc) from exc

    async def exists(self, session_id: str) -> bool:
        """True if the session is stored. One EXISTS; malformed ids: False without a call.

        Raises:
            StoreUnavailable: Redis failed.
        """
        if not is_valid_session_id(session_id):
            return False
        try:
            return bool(await self.client.exists(self.prefix + session_id) == 1)
        except REDIS_ERRORS as exc:
            raise map_redis_error("EXISTS", exc) from exc

    async def regenerate(self, session: Session) -> Session:
        """Move ``session`` to a new id and delete the old key (atomic on a single Redis).

        A move whose outcome is unknown (a timeout, or a cancellation after the script
        was sent) is run once more, as in the sync store: it is idempotent, so
        ``session.id`` ends up naming the key that holds the data.  A cancellation is
        re-raised after that, with ``session`` already updated if the move happened.

        Raises:
            StoreUnavailable: Redis failed twice; ``session`` keeps its old id and state.
            asyncio.CancelledError: the task was cancelled (``session.id`` is the new
                id if the move happened, else the old one).
            InvalidSessionId: a saved session whose ``id`` is not a fastsess id.
            TypeError, SessionTooLarge: as ``save`` (nothing written).
        """
        old_id, was_saved = session.id, not session.new
        if was_saved:
            check_session_id(session)
        t = now()
        for _ in range(MAX_ID_ATTEMPTS):
            session.id = new_session_id()
            if not was_saved:
                return session
            old = self.prepare_write(session, t)
            cancelled: asyncio.CancelledError | None = None
            try:
                payload = self.serializer.encode(session)
                try:
                    moved = await self._move(old_id, session, payload)
                except REDIS_ERRORS + (asyncio.CancelledError,) as exc:
                    if isinstance(exc, asyncio.CancelledError):
                        cancelled = exc
                    elif is_pool_exhausted(exc):
                        raise  # never sent: the outcome is known, and a second wait would double it
                    moved = await self._move(old_id, session, payload)  # settle the unknown outcome
            except BaseException as exc:
                self.roll_back(session, old)
                session.id = old_id
                if cancelled is not None:
                    raise cancelled from None
                if isinstance(exc, REDIS_ERRORS):
                    raise map_redis_error("regenerate", exc) from exc
                raise
            if cancelled is not None:
                if moved:
                    self.mark_saved(session, t)
                else:
                    self.roll_back(session, old)
                    session.id = old_id
                raise cancelled
            if moved:
                self.mark_saved(session, t)
                return session
            self.roll_back(session, old)
        session.id = old_id
        raise StoreUnavailable("could not allocate an unused session id")

    async def iter_ids(self) -> AsyncIterator[str]:
        """Every session id under this prefix, by SCAN (never KEYS); only keys that are
        the prefix followed by exactly one session id (see the sync store).

        Raises:
            StoreUnavailable: Redis failed mid-scan.
        """
        start = len(self.prefix.encode())  # keys come back as UTF-8 bytes
        try:
            async for key in self.client.scan_iter(match=self._match, count=SCAN_BATCH):
                session_id = key[start:].decode("ascii", "replace")
                if is_valid_session_id(session_id):
                    yield session_id
        except REDIS_ERRORS as exc:
            raise map_redis_error("SCAN", exc) from exc

    async def clear(self) -> int:
        """Delete every session under this prefix (SCAN + batched UNLINK); returns how many.

        Raises:
            StoreUnavailable: Redis failed (some sessions may already be gone).
        """
        deleted = 0
        batch: list[str] = []
        async for session_id in self.iter_ids():
            batch.append(self.prefix + session_id)
            if len(batch) >= SCAN_BATCH:
                deleted += await self._unlink(batch)
                batch = []
        if batch:
            deleted += await self._unlink(batch)
        return deleted

    async def _unlink(self, keys: list[str]) -> int:
        try:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                # execute_command, not pipe.unlink(): on redis-py's asyncio ClusterPipeline
                # the command methods return un-awaited coroutines and queue nothing.
                pipe.execute_command("UNLINK", key)
            return sum(await pipe.execute())
        except REDIS_ERRORS as exc:
            raise map_redis_error("UNLINK", exc) from exc

    async def close(self) -> None:
        """Close the client and its pool if this store created them (from ``url``)."""
        if self._owns_client:
            await self.client.aclose()
            await self.client.connection_pool.disconnect()  # also where aclose() leaves the pool open
