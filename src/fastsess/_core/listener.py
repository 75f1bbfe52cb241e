"""The listener's state and message handling, shared by every driver. No I/O.

Identity: ``node_id`` is the configured label (``ClusterConfig.node_id``, for logs and
metrics).  Messages carry ``instance_id``, random per store instance and renewed in a
forked child, so two processes (or two stores) with the same label still receive each
other's invalidations.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from ..config import ClusterConfig
from .coherence import CoherentCache
from .messages import CLEARED, decode_message, encode_message, new_instance_id

log = logging.getLogger("fastsess.cluster")


class CoordinatorStats(NamedTuple):
    """A snapshot of a coordinator's counters."""

    published: int  # messages this node published
    received: int  # valid messages from other nodes, applied
    ignored_own: int  # this node's own messages, echoed back and ignored
    malformed: int  # messages that did not decode, counted and dropped
    reconnects: int  # successful resubscriptions after a drop
    subscribed: bool  # listening right now (the local cache is served only then)
    last_error: str | None  # the last connection error, "Type: message"
    foreign_own_id: int = 0  # messages with our instance id that we did not send (applied)


class CoordinatorBase:
    """State, counters and message handling shared by the sync and asyncio coordinators.

    Identity: ``node_id`` is the configured label (``ClusterConfig.node_id``, for logs
    and metrics).  Messages carry ``instance_id``, random per store instance and renewed
    in a forked child, so two processes (or two stores) with the same label still
    receive each other's invalidations.
    """

    def __init__(self, config: ClusterConfig, cache: CoherentCache | None) -> None:
        self.config = config
        self.node_id = config.node_id
        self.channel = config.channel
        self.cache = cache
        self._count_lock = threading.Lock()
        self._reset_state()
        self.on_message: Callable[[dict[str, Any]], None] | None = None  # for tests and the demo

    def _reset_state(self) -> None:
        """A new identity and zeroed counters (construction, and a forked child)."""
        self.instance_id = new_instance_id(self.node_id)
        self._pid = os.getpid()
        self._published = 0
        self._issued = 0  # messages built by message(): an upper bound on our own echoes
        self._received = 0
        self._ignored_own = 0
        self._foreign_own_id = 0
        self._malformed = 0
        self._reconnects = 0
        self._last_error: str | None = None
        self._subscribed = False
        self._ever_subscribed = False

    @property
    def subscribed(self) -> bool:
        """True while listening: only then may the local cache be served."""
        return self._subscribed

    @property
    def stats(self) -> CoordinatorStats:
        """A snapshot of the counters (see ``CoordinatorStats``)."""
        return CoordinatorStats(
            self._published, self._received, self._ignored_own, self._malformed,
            self._reconnects, self._subscribed, self._last_error, self._foreign_own_id,
        )

    def message(self, kind: str, session_id: str | None, version: int = 0, expires_in: int | None = None) -> bytes:
        """This node's wire message of type ``kind`` (for the store's write scripts)."""
        with self._count_lock:
            self._issued += 1
        return encode_message(kind, session_id, self.instance_id, version, expires_in)

    def note_published(self, count: int = 1) -> None:
        """Count messages the store published on this coordinator's behalf."""
        with self._count_lock:
            self._published += count

    def handle_message(self, data: Any) -> None:
        """Apply one raw pub/sub payload: evict, flush, or count it as own/malformed. Never raises.

        A message carrying our ``instance_id`` is our own echo, unless we already saw
        as many echoes as we built messages: then another process uses our id (a
        forged or replayed message, or a copy of this process); it is counted in
        ``foreign_own_id`` and applied like any other node's message.
        """
        msg = decode_message(data)
        if msg is None:
            self._malformed += 1
            log.debug("dropped a malformed message (%d so far)", self._malformed)
            return
        if msg["node"] == self.instance_id:
            if self._ignored_own < self._issued:
                self._ignored_own += 1
                if self.cache is not None:
                    self.cache.own_message(msg["t"], msg["id"])  # an invalidation after an unknown write outcome
                return
            self._foreign_own_id += 1
            log.warning("a message on %s carries this store's instance id %s but was not sent by it (%d so far)",
                        self.channel, self.instance_id, self._foreign_own_id)
        if self.cache is not None:
            if msg["t"] == CLEARED:
                self.cache.flush()
            else:
                self.cache.invalidate(msg["id"])
        self._received += 1  # after applying it: a reader that sees the count sees the eviction
        log.debug("applied %s from node %s", msg["t"], msg["node"])
        if self.on_message is not None:
            self.on_message(msg)

    def _on_subscribed(self) -> None:
        # Messages published while we were away are lost: nothing cached may survive.
        if self.cache is not None:
            self.cache.flush()
        if self._ever_subscribed:
            self._reconnects += 1
            log.warning("resubscribed to %s; local cache flushed", self.channel)
        self._ever_subscribed = True
        self._subscribed = True

    def report_error(self, exc: BaseException) -> None:
        """Record a connection error seen outside the listener (e.g. the store could not
        load a cluster's slot map): like a dropped subscription, the cache is bypassed
        (and flushed unless ``stale_if_error``) and ``stats.last_error`` says why."""
        self._on_dropped(exc)

    def _on_dropped(self, exc: BaseException) -> None:
        was_subscribed, self._subscribed = self._subscribed, False
        # With stale_if_error the cached copies are kept as a fallback; they are
        # not served while unsubscribed unless Redis fails, and flushed on resubscribe.
        if self.cache is not None and not self.config.stale_if_error:
            self.cache.flush()
        self._last_error = f"{type(exc).__name__}: {exc}"
        if was_subscribed:
            log.warning("lost the invalidation channel (%s); bypassing the local cache until resubscribed", self._last_error)
        else:
            log.debug("reconnection failed: %s", self._last_error)

    def _backoff(self, delay: float) -> float:
        return min(delay * 2, self.config.reconnect_backoff[1])

    def _until(self, deadline: float) -> float:
        """Seconds left to wait for the subscription confirmation.

        Raises:
            TimeoutError: none left.
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"subscription to {self.channel!r} not confirmed within {self.config.subscribe_timeout:g} s")
        return remaining

    def _dispatch(self, kind: str, data: Any, subscribing: bool) -> bool:
        """Handle one pub/sub event; True if it confirms the subscription being waited for.

        Raises:
            ConnectionError: the server unsubscribed us.
        """
        if kind == "message":
            self.handle_message(data)
        elif kind == "subscribe":
            if subscribing:
                return True
            self._on_subscribed()  # redis-py reconnected and resubscribed under us: flush
        elif kind == "unsubscribe":
            raise ConnectionError("unsubscribed from the invalidation channel")
        return False  # "pong": only liveness.seen() cares


class Liveness:
    """Detects a silent pub/sub connection: PING after ``idle`` seconds, fail without PONG."""

    __slots__ = ("_idle", "_last_seen", "_ping_sent")

    def __init__(self, idle: float) -> None:
        self._idle = idle
        self._last_seen = time.monotonic()
        self._ping_sent: float | None = None

    def seen(self) -> None:
        """Something arrived: the connection is alive."""
        self._last_seen = time.monotonic()
        self._ping_sent = None

    def due(self) -> bool:
        """True if a PING should be sent now.

        Raises:
            ConnectionError: a PING went unanswered for ``idle`` seconds.
        """
        t = time.monotonic()
        if self._ping_sent is not None:
            if t - self._ping_sent > self._idle:
                raise ConnectionError(f"no PONG within {self._idle:g} s on the invalidation channel")
            return False
        if t - self._last_seen >= self._idle:
            self._ping_sent = t
            return True
        return False


