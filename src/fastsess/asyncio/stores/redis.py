"""asyncio ``RedisStore`` on ``redis.asyncio``.

Same keys, envelope, round trips and errors as the sync store: both run the same
operations (``fastsess._core.ops``); this module is their asyncio driver.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry

from ..._core.keys import is_valid_session_id
from ..._core.ops import Flow
from ..._redis import (
    DEFAULT_POOL_SIZE,
    DEFAULT_POOL_TIMEOUT,
    DEFAULT_RETRIES,
    DEFAULT_SOCKET_TIMEOUT,
    REDIS_ERRORS,
    SCAN_BATCH,
    RedisStoreBase,
    execute_async,
    map_redis_error,
    pool_settings,
    unlink_pipeline,
)
from ...errors import ConfigError
from ...session import Session
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
    settings = pool_settings(url, socket_timeout, retries, pool_size, pool_timeout, Retry)
    try:
        pool = aredis.BlockingConnectionPool.from_url(**settings)
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL: {exc}") from exc
    client = aredis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # aclose() of the client also closes the pool it owns
    return client


class RedisStore(RedisStoreBase, AsyncSessionStore):
    """Sessions in Redis, asyncio API.  Arguments as ``fastsess.RedisStore``, with
    ``redis.asyncio`` clients (``Redis``, ``RedisCluster`` or Sentinel's ``master_for``).
    ``pool_size``/``pool_timeout`` size the blocking pool of a client built from ``url``
    (tasks wait for a free connection, then ``PoolExhausted``).

    Raises:
        ConfigError: neither or both of client/url, or an invalid setting.
    """

    _cluster_type = RedisCluster
    _client_from_url = staticmethod(client_from_url)

    async def _run(self, flow: Flow) -> Any:
        """Drive one operation: await its commands, hand back replies or mapped errors
        (a cancellation is thrown into the operation too: a write it interrupts has an
        unknown outcome)."""
        client = self.client
        try:
            command = next(flow)
            while True:
                try:
                    reply = await execute_async(client, command)
                except REDIS_ERRORS as exc:
                    command = flow.throw(map_redis_error(command.label, exc))
                except BaseException as exc:
                    command = flow.throw(exc)
                else:
                    command = flow.send(reply)
        except StopIteration as done:
            return done.value

    async def load(self, session_id: str) -> Session | None:
        """See ``fastsess.RedisStore.load``."""
        result: Session | None = await self._run(self._core.load(session_id)) if is_valid_session_id(session_id) else None
        return result

    async def save(self, session: Session) -> bool:
        """See ``fastsess.RedisStore.save``."""
        return bool(await self._run(self._core.save(session)))

    async def delete(self, session_id: str) -> bool:
        """See ``fastsess.RedisStore.delete``."""
        return bool(await self._run(self._core.delete(session_id)))

    async def touch(self, session_id: str, ttl: int | None = None) -> bool:
        """See ``fastsess.RedisStore.touch``."""
        return bool(await self._run(self._core.touch(session_id, ttl)))

    async def exists(self, session_id: str) -> bool:
        """See ``fastsess.RedisStore.exists``."""
        return bool(await self._run(self._core.exists(session_id)))

    async def regenerate(self, session: Session) -> Session:
        """See ``fastsess.RedisStore.regenerate``.  A cancellation after the move was sent
        settles it first (the move runs once more), then is re-raised, with ``session.id``
        the new id if the move happened, else the old one.

        Raises:
            asyncio.CancelledError: the task was cancelled.
        """
        result: Session = await self._run(self._core.regenerate(session))
        return result

    async def iter_ids(self) -> AsyncIterator[str]:
        """See ``fastsess.RedisStore.iter_ids`` (an async iterator)."""
        keys = self._keys
        try:
            async for key in self.client.scan_iter(match=keys.match, count=SCAN_BATCH):
                if (session_id := keys.id_of(key)) is not None:
                    yield session_id
        except REDIS_ERRORS as exc:
            raise map_redis_error("SCAN", exc) from exc

    async def clear(self) -> int:
        """See ``fastsess.RedisStore.clear``."""
        batch: list[str] = []
        deleted = 0
        try:
            async for session_id in self.iter_ids():
                batch.append(session_id)
                if len(batch) >= SCAN_BATCH:
                    deleted, batch = deleted + await self._unlink(batch), []
            return deleted + (await self._unlink(batch) if batch else 0)
        finally:
            await self._run(self._core.cleared())  # clustered: flush every node's cache

    async def _unlink(self, batch: list[str]) -> int:
        try:
            return sum(await unlink_pipeline(self.client, self._keys, batch).execute())
        except REDIS_ERRORS as exc:
            raise map_redis_error("UNLINK", exc) from exc

    async def close(self) -> None:
        """Close the client and its pool if this store created them (from ``url``)."""
        if self._owns_client:
            await self.client.aclose()
            await self.client.connection_pool.disconnect()  # also where aclose() leaves the pool open
