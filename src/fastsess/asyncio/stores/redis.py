"""asyncio ``RedisStore`` on ``redis.asyncio``.

Same keys, envelope, round trips and errors as the sync store: both run the same
operations (``fastsess._core.ops``); this module is their asyncio driver.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry

from ..._core.keys import is_valid_session_id
from ..._core.ops import Flow
from ..._redis import (
    REDIS_ERRORS,
    SCAN_BATCH,
    RedisStoreBase,
    Run,
    breaker_failed,
    client_from_url,
    execute_async,
    map_redis_error,
    unlink_pipeline,
)
from ...session import Session
from .base import AsyncSessionStore


class RedisStore(RedisStoreBase, AsyncSessionStore):
    """Sessions in Redis, asyncio API.  Arguments as ``fastsess.RedisStore``, with
    ``redis.asyncio`` clients (``Redis``, ``RedisCluster`` or Sentinel's ``master_for``).
    ``pool_size``/``pool_timeout`` size the blocking pool of a client built from ``url``
    (tasks wait for a free connection, then ``PoolExhausted``).

    Raises:
        ConfigError: neither or both of client/url, or an invalid setting.
    """

    _cluster_type = RedisCluster
    _client_from_url = functools.partial(client_from_url, aredis, Retry)

    async def _run(self, flow: Flow) -> Any:
        """Drive one operation: await its commands, report replies and failures (a cancellation too:
        a write it interrupts has an unknown outcome)."""
        run, client, idle = Run(flow, self.breaker), self.client, self._idle
        while not run.done:
            try:
                reply = await execute_async(client, run.command, idle)
            except BaseException as exc:
                run.failed(exc)
            else:
                run.reply(reply)
        return run.value

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

    async def bind(self, session: Session, principal: str) -> None:
        """See ``fastsess.RedisStore.bind``."""
        await self._run(self._principals.bind(session, principal))

    async def sessions_of(self, principal: str) -> list[str]:
        """See ``fastsess.RedisStore.sessions_of``."""
        result: list[str] = await self._run(self._principals.sessions_of(principal))
        return result

    async def delete_all(self, principal: str, except_id: str | None = None) -> int:
        """See ``fastsess.RedisStore.delete_all``."""
        return int(await self._run(self._principals.delete_all(principal, except_id)))

    async def iter_ids(self) -> AsyncIterator[str]:
        """See ``fastsess.RedisStore.iter_ids`` (an async iterator)."""
        keys = self._keys
        self.breaker.check()
        if self._idle is not None:
            await self._idle.drain()  # SCAN takes pooled connections of its own
        try:
            async for key in self.client.scan_iter(match=keys.match, count=SCAN_BATCH):
                if (session_id := keys.id_of(key)) is not None:
                    yield session_id
        except REDIS_ERRORS as exc:
            breaker_failed(self.breaker, exc)
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
            breaker_failed(self.breaker, exc)
            raise map_redis_error("UNLINK", exc) from exc

    async def close(self) -> None:
        """Close the client and its pool if this store created them (from ``url``)."""
        if self._owns_client:
            if self._idle is not None:
                await self._idle.drain()
            await self.client.aclose()
            await self.client.connection_pool.disconnect()  # also where aclose() leaves the pool open
