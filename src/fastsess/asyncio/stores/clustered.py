"""asyncio ``ClusteredRedisStore``: the sync store's cache, scripts, messages and guarantees.

The listener is the same as the sync store's: a thread with its own pub/sub connection
(``fastsess.asyncio.cluster``), so invalidations never wait for the event loop.  It
starts on first use of the store (or on ``async with store``); ``await store.close()``
stops it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from redis.asyncio.cluster import RedisCluster

from ..._core.flights import RETRY
from ..._core.ops import Flow
from ..._redis import LAST_UNCHECKED_HIT, REDIS_ERRORS, ClusteredStoreBase
from ...session import Session
from ..cluster import ClusterCoordinator
from .redis import RedisStore

if TYPE_CHECKING:  # typing.Self needs Python 3.11; type checkers know typing_extensions
    from typing_extensions import Self


class ClusteredRedisStore(ClusteredStoreBase, RedisStore):
    """``fastsess.asyncio.RedisStore`` with a coherent per-node cache.

    Arguments as the sync ``fastsess.ClusteredRedisStore`` (with ``redis.asyncio``
    clients).  ``coordinator`` is None when ``config.enabled`` is False.

    Raises:
        ConfigError: invalid settings.
    """

    _coordinator_type = ClusterCoordinator
    _starts_in_constructor = False
    coordinator: ClusterCoordinator | None

    async def start(self) -> bool:
        """Start the listener now (otherwise the first operation does); True if subscribed."""
        self._start_pending = False
        if self.coordinator is None:
            return False
        if isinstance(self.client, RedisCluster):
            # A fresh asyncio RedisCluster has no slot map until its first command, and its
            # pubsub() needs one: load it now (errors surface as an unsubscribed start).
            try:
                await self.client.initialize()
            except REDIS_ERRORS as exc:
                self.coordinator.report_error(exc)
        return await self.coordinator.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def _run(self, flow: Flow) -> Any:
        """Start the listener on first use, then drive ``flow`` (see ``RedisStore._run``)."""
        if self._start_pending:
            await self.start()
        return await RedisStore._run(self, flow)

    async def load(self, session_id: str) -> Session | None:
        """See ``fastsess.ClusteredRedisStore.load``."""
        if self._start_pending:
            await self.start()
        cache = self._cache  # the hit inline, as in cached_load: a call costs a tenth of a hit
        if cache is not None and self.coordinator.subscribed and type(session_id) is str:  # type: ignore[union-attr]
            cached: Session | None = cache.get(session_id)
            if cached is not None and self._hits_unchecked < LAST_UNCHECKED_HIT:
                self._hits_unchecked += 1
                return cached.copy()
            found = self.after_lookup(session_id, cached)
        else:
            found = self.cached_load(session_id)
        return found if type(found) is Session or found is None else await found

    async def _shared_load(self, session_id: str, token: tuple[int, int]) -> Any:
        """One Redis read for the concurrent misses of ``session_id`` (tasks await a future)."""
        flights = self._cache.flights  # type: ignore[union-attr]
        while True:
            flight, leading = flights.take(session_id, token, asyncio.get_running_loop().create_future)
            if leading:
                break
            await asyncio.shield(flight.signal)  # a cancelled follower leaves the flight alone
            result = flight.outcome()
            if result is not RETRY:
                return result
            token = self._cache.fill_token(session_id)  # type: ignore[union-attr]
        try:
            result = await self._run(self._core.load(session_id, token))
        except BaseException as exc:
            _fire(flights.land(session_id, flight, error=exc))
            raise
        _fire(flights.land(session_id, flight, result))
        return result

    async def close(self) -> None:
        """Stop the listener, then close the client if this store created it."""
        coordinator = self._detach()
        if coordinator is not None:
            await coordinator.stop()
        await RedisStore.close(self)


def _fire(signal: asyncio.Future[Any] | None) -> None:
    """Wake the followers of a flight (their future may belong to another thread's loop)."""
    if signal is None:
        return
    loop = signal.get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is running:
        _resolve(signal)
    else:
        loop.call_soon_threadsafe(_resolve, signal)


def _resolve(signal: asyncio.Future[Any]) -> None:
    if not signal.done():
        signal.set_result(None)
