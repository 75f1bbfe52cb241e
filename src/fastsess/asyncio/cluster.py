"""asyncio ``ClusterCoordinator``: the twin of ``fastsess.cluster.ClusterCoordinator``.

The listener is the same background thread as the sync coordinator's, reading a
sync pub/sub connection made with the asyncio client's settings
(``fastsess.cluster.redis_adapter.listener_client``) and feeding the thread-safe local cache.
So invalidations apply even while the event loop is busy (a coroutine that only
serves cache hits never yields to it), and a dropped connection is always seen
(redis-py's asyncio ``PubSub`` reconnects silently inside ``get_message``).
Only ``start``/``wait_subscribed``/``stop``/``publish`` are coroutines here.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .._core.coherence import CoherentCache
from ..cluster.thread import ThreadedCoordinator
from ..config import ClusterConfig

_POLL = 0.002  # seconds between checks while awaiting the thread (never blocks the loop)


class ClusterCoordinator(ThreadedCoordinator):
    """Publishes (on the asyncio client) and listens (in a thread) for invalidations.

    Args:
        client: a ``redis.asyncio.Redis`` / ``RedisCluster`` / Sentinel-managed client.
        config: the cluster settings.
        cache: the cache to keep coherent (None: count and publish only).
        prefix: the store's key prefix (what ``track_external_changes`` tracks).
    """

    def __init__(self, client: Any, config: ClusterConfig, cache: CoherentCache | None = None, prefix: str | None = None) -> None:
        super().__init__(client, config, cache, prefix)

    async def start(self, timeout: float | None = None) -> bool:
        """Start the listener thread and wait up to ``timeout`` seconds (None:
        ``subscribe_timeout``; 0: not at all) for the subscription; True if subscribed."""
        if not self.running:
            self._launch()
        if self.subscribed:
            return True
        return await self.wait_subscribed(self.config.subscribe_timeout if timeout is None else timeout)

    async def wait_subscribed(self, timeout: float) -> bool:
        """Wait until subscribed (True) or ``timeout`` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        while not self.subscribed:
            if not self.running or time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_POLL)
        return True

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the listener thread and wait (without blocking the loop) until it ended.

        The thread is woken at once (its socket is shut down) rather than at its next
        poll, unless it is inside a connect attempt.
        """
        thread = self.request_stop()
        deadline = time.monotonic() + timeout
        while thread is not None and thread.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(_POLL)

    async def publish(self, kind: str, session_id: str | None = None, version: int = 0) -> None:
        """Publish one message on its own (the stores batch theirs with the write).

        Raises:
            redis.RedisError: the PUBLISH failed.
        """
        # execute_command: redis-py 5.0's asyncio RedisCluster has no publish() method
        await self.client.execute_command("PUBLISH", self.channel, self.message(kind, session_id, version, sequenced=False))
        self.note_published()
