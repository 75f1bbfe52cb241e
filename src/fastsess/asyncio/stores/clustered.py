"""asyncio ``ClusteredRedisStore``: the twin of ``fastsess.stores.clustered``.

Same cache, scripts, messages and guarantees, and the same listener: a thread
with its own pub/sub connection (``fastsess.asyncio.cluster``), so invalidations
never wait for the event loop.  It starts on first use of the store (or on
``async with store``); ``await store.close()`` stops it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from ...cluster import CLEARED, DELETED, HITS_PER_CHECK, INVALIDATED, TOUCHED
from ...config import ClusterConfig
from ...serializers import Serializer
from ...session import Session
from ...stores.base import DEFAULT_PREFIX, DEFAULT_REFRESH_FRACTION, DEFAULT_TTL, check_ttl, is_valid_session_id
from ...stores.clustered import (
    LocalCacheControl,
)
from ...stores.redis import DEFAULT_POOL_SIZE, DEFAULT_POOL_TIMEOUT, DEFAULT_RETRIES, DEFAULT_SOCKET_TIMEOUT, REDIS_ERRORS, map_redis_error
from ..cluster import ClusterCoordinator
from .redis import RedisStore

if TYPE_CHECKING:  # typing.Self needs Python 3.11; type checkers know typing_extensions
    from typing_extensions import Self


class ClusteredRedisStore(LocalCacheControl, RedisStore):
    """``fastsess.asyncio.RedisStore`` with a coherent per-node cache.

    Arguments as the sync ``fastsess.ClusteredRedisStore`` (with ``redis.asyncio``
    clients).  ``coordinator`` is None when ``config.enabled`` is False.

    Raises:
        ConfigError: invalid settings.
    """

    def __init__(
        self,
        client: aredis.Redis | RedisCluster | None = None,
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
        self._start_pending = self.coordinator is not None

    async def start(self) -> bool:
        """Start the listener now (otherwise the first operation does); True if subscribed."""
        self._start_pending = False
        if self.coordinator is None:
            return False
        if self.is_cluster:
            # A fresh asyncio RedisCluster has no slot map until its first command, and
            # its pubsub() needs one: load it now (errors surface as an unsubscribed start).
            try:
                await self.client.initialize()
            except REDIS_ERRORS as exc:
                self.coordinator.report_error(exc)
        return await self.coordinator.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    # -- reads ------------------------------------------------------------------------

    async def load(self, session_id: str) -> Session | None:
        """The session from the local cache (a shallow copy), else from Redis (one GET).

        Raises:
            SessionCorrupt: the key holds something that is not a fastsess session.
            StoreUnavailable: Redis failed (also while the cache is bypassed,
                unless ``stale_if_error``).
        """
        if self._start_pending:
            await self.start()
        cache = self._cache
        token = None
        if cache is not None and self.coordinator.subscribed and type(session_id) is str:  # type: ignore[union-attr]
            cached: Session | None = cache.get(session_id)  # only valid ids are cached: no id check on a hit
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
                raw = await self.client.get(self.prefix + session_id)
            else:
                started = time.monotonic()
                raw, pttl = await self._get_with_pttl(self.prefix + session_id)
        except REDIS_ERRORS as exc:
            return self._read_failed(session_id, exc)
        return self._read_done(session_id, raw, token, pttl, started)

    async def _get_with_pttl(self, key: str) -> tuple[bytes | None, int]:
        """The key's value and remaining TTL in ms, in one round trip (see the sync store).

        Raises:
            redis.RedisError: the call failed.
        """
        try:
            reply = await self.client.execute_command("EVALSHA", self._get_pttl.sha, 1, key)
        except NoScriptError:
            reply = await self._get_pttl(keys=[key])
        return reply[0], reply[1]

    # -- write hooks -----------------------------------------------------------------------

    async def _write(self, session: Session, payload: bytes, nx: bool) -> bool:
        if self._start_pending:
            await self.start()
        coordinator = self.coordinator
        if coordinator is None:
            return await super()._write(session, payload, nx)
        token = self._write_token(session.id)
        started = time.monotonic()
        try:
            if nx:
                written = await super()._write(session, payload, nx)
            else:
                message = coordinator.message(INVALIDATED, session.id, session.version)
                written = bool(await self._set_publish(keys=[self.prefix + session.id], args=[payload, session.ttl, coordinator.channel, message]))
                if written:
                    coordinator.note_published()
        except BaseException:  # incl. cancellation after the script was sent
            self._write_failed(session.id)
            raise
        self._cache_written(session, written, token, started, len(payload))
        return written

    async def _move(self, old_id: str, session: Session, payload: bytes) -> bool:
        coordinator = self.coordinator
        if coordinator is None:
            return await super()._move(old_id, session, payload)
        message = coordinator.message(DELETED, old_id)
        token = self._write_token(session.id)
        started = time.monotonic()
        try:
            if self._move_publish is not None:
                keys = [self.prefix + old_id, self.prefix + session.id]
                moved = bool(await self._move_publish(keys=keys, args=[payload, session.ttl, coordinator.channel, message]))
            else:  # Redis Cluster: different slots, see the sync store
                new_key = self.prefix + session.id
                moved = bool(await self.client.set(new_key, payload, ex=session.ttl, nx=True)) or await self.client.get(new_key) == payload
                if moved:
                    await self._delete_publish(keys=[self.prefix + old_id], args=[coordinator.channel, message])
        except BaseException:
            self._write_failed(old_id, session.id)
            raise
        if self._cache is not None:
            self._cache.invalidate(old_id)
        if moved:
            coordinator.note_published()
            self._cache_written(session, True, token, started, len(payload))
        return moved

    async def _delete_key(self, session_id: str) -> bool:
        coordinator = self.coordinator
        if coordinator is None:
            return await super()._delete_key(session_id)
        try:
            message = coordinator.message(DELETED, session_id)
            existed: bool = await self._delete_publish(keys=[self.prefix + session_id], args=[coordinator.channel, message]) == 1
        except BaseException:
            self._write_failed(session_id)
            raise
        coordinator.note_published()
        if self._cache is not None:
            self._cache.invalidate(session_id)
        return existed

    async def touch(self, session_id: str, ttl: int | None = None) -> bool:
        """Set the session's expiry and drop cached copies everywhere. One round trip.

        Raises:
            ConfigError: ``ttl`` is not a positive int.
            StoreUnavailable: Redis failed.
        """
        coordinator = self.coordinator
        if coordinator is None or not is_valid_session_id(session_id):
            return await super().touch(session_id, ttl)
        seconds = self.ttl if ttl is None else check_ttl(ttl)
        try:
            message = coordinator.message(TOUCHED, session_id, expires_in=seconds)
            touched: bool = await self._touch_publish(keys=[self.prefix + session_id], args=[seconds, coordinator.channel, message]) == 1
        except BaseException as exc:
            self._write_failed(session_id)
            if isinstance(exc, REDIS_ERRORS):
                raise map_redis_error("EXPIRE", exc) from exc
            raise
        if self._cache is not None:
            self._cache.invalidate(session_id)
        if touched:
            coordinator.note_published()
        return touched

    async def clear(self) -> int:
        """Delete every session under this prefix, flush every node's cache; returns how many.

        Raises:
            StoreUnavailable: Redis failed (some sessions may already be gone).
        """
        try:
            return await super().clear()
        finally:
            if self._cache is not None:
                self._cache.flush()
            if self.coordinator is not None:
                try:
                    await self.coordinator.publish(CLEARED)
                except REDIS_ERRORS as exc:
                    raise map_redis_error("PUBLISH", exc) from exc

    async def close(self) -> None:
        """Stop the listener task, then close the client if this store created it."""
        self._start_pending = False
        self._finalizer.detach()
        if self.coordinator is not None:
            await self.coordinator.stop()
        await super().close()
