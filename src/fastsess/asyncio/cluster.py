"""asyncio ``ClusterCoordinator``: the twin of ``fastsess.cluster.ClusterCoordinator``.

The listener is one task on the running event loop instead of a thread; the
message format, counters, cache flushing and liveness check are shared with
the sync coordinator (``fastsess.cluster.CoordinatorBase``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from ..cluster import POLL_INTERVAL, CoherentCache, CoordinatorBase, Liveness
from ..config import ClusterConfig

log = logging.getLogger("fastsess.cluster")


class ClusterCoordinator(CoordinatorBase):
    """Publishes and listens for invalidations in one asyncio task.

    Args:
        client: a ``redis.asyncio.Redis`` / ``RedisCluster`` / Sentinel-managed client.
        config: the cluster settings.
        cache: the cache to keep coherent (None: count and publish only).
    """

    def __init__(self, client: Any, config: ClusterConfig, cache: CoherentCache | None = None) -> None:
        super().__init__(config, cache)
        self.client = client
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None

    async def start(self) -> bool:
        """Start the listener task; True if subscribed within ``subscribe_timeout``.

        Raises:
            ConfigError: another running coordinator in this process has the same node id.
        """
        if self._task is not None and not self._task.done():
            return self._subscribed
        self._register()
        self._ready = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"fastsess-listener-{self.node_id[:12]}")
        return await self.wait_subscribed(self.config.subscribe_timeout)

    async def wait_subscribed(self, timeout: float) -> bool:
        """Wait until subscribed (True) or ``timeout`` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        while not self._subscribed:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._task is None or self._task.done():
                return False
            assert self._ready is not None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ready.wait(), min(remaining, 0.05))
        return True

    async def stop(self) -> None:
        """Cancel the listener task and wait for it to finish."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._subscribed = False
        self._unregister()

    @property
    def running(self) -> bool:
        """True while the listener task is alive."""
        return self._task is not None and not self._task.done()

    async def publish(self, kind: str, session_id: str | None = None, version: int = 0) -> None:
        """Publish one message on its own (the stores batch theirs with the write).

        Raises:
            redis.RedisError: the PUBLISH failed.
        """
        await self.client.publish(self.channel, self.message(kind, session_id, version))
        self.note_published()

    # -- listener task -------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self.config.reconnect_backoff[0]
        try:
            while True:
                pubsub = self.client.pubsub()
                try:
                    await self._subscribe(pubsub)
                    delay = self.config.reconnect_backoff[0]
                    await self._listen(pubsub)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the listener must survive anything
                    assert self._ready is not None
                    self._ready.clear()
                    self._on_dropped(exc)
                    await asyncio.sleep(delay)
                    delay = self._backoff(delay)
                finally:
                    await _close_quietly(pubsub)
        finally:
            self._subscribed = False

    async def _subscribe(self, pubsub: Any) -> None:
        await pubsub.subscribe(self.channel)
        deadline = time.monotonic() + self.config.subscribe_timeout
        while True:
            event = await pubsub.get_message(timeout=self._until(deadline))
            if event is not None and self._dispatch(event["type"], event["data"], subscribing=True):
                break
        self._on_subscribed()
        assert self._ready is not None
        self._ready.set()

    async def _listen(self, pubsub: Any) -> None:
        liveness = Liveness(self.config.subscribe_timeout)
        poll = min(POLL_INTERVAL, self.config.subscribe_timeout)
        while True:
            event = await pubsub.get_message(timeout=poll)
            if event is None:
                if liveness.due():
                    await pubsub.ping()
                continue
            liveness.seen()
            self._dispatch(event["type"], event["data"], subscribing=False)


async def _close_quietly(pubsub: Any) -> None:
    try:
        await pubsub.aclose()
    except Exception:  # noqa: BLE001 - closing a dead connection may fail; nothing to do
        log.debug("closing the pub/sub connection failed", exc_info=True)
