"""The listener, without I/O: a state machine for its connection, and message handling.

``ListenerMachine`` decides what the listener does.  A driver (today the listener
thread in ``fastsess.cluster.thread``, for the sync and the asyncio stores alike) does
the I/O, reports what happened as events and carries out the actions it gets back, in
order::

    events in                               actions out
    start(now)                              Connect
    subscribed(now)    (confirmation)       Flush, Serve        (resubscribed: Flush)
    message(data, now)                      Dispatch(data)
    tracked(keys, now) (tracking notice)    Tracked(keys)
    reply(now)         (PONG, anything)     -
    idle(now)          (nothing to read)    Ping | error: Bypass, Flush, Reconnect(delay)
    error(exc, now)    (or unsubscribed)    Bypass, Flush, Reconnect(delay)
    retry(now)         (the delay passed)   Connect
    forked()                                Bypass, Flush
    stop()                                  Bypass, Close

``Flush`` is left out of an error's actions with ``stale_if_error`` (the copies stay as
a fallback; they are flushed on resubscribe anyway).  A silent connection is caught by
``idle``: after ``subscribe_timeout`` seconds without input it asks for a PING, and
without an answer within as long again it fails the connection.  ``timeout(now)``
says how long the driver may wait for input before calling ``idle``.  Reconnection
delays come from a backoff object with redis-py's ``compute(failures)`` interface.

Identity: ``node_id`` is the configured label (``ClusterConfig.node_id``, for logs and
metrics).  Messages carry ``instance_id``, random per store instance and renewed in a
forked child, so two processes (or two stores) with the same label still receive each
other's invalidations.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from ..config import ClusterConfig
from .coherence import CoherentCache
from .messages import CLEARED, DELETED, DELETED_MANY, INVALIDATED, decode_message, encode_message, new_instance_id
from .slots import ShardMap, key_slot
from .tracking import TrackedChanges

log = logging.getLogger("fastsess.cluster")

MAX_BACKOFF_EXPONENT = 32  # failures beyond this give the same (capped) delay; 2**n stays a float


class Backoff(Protocol):
    """redis-py's backoff interface (``redis.backoff``): the delay after ``failures`` failures."""

    def compute(self, failures: int) -> float: ...  # noqa: D102


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a connection and subscribe; then report ``subscribed``, ``error`` or ``idle``."""


@dataclass(frozen=True, slots=True)
class Serve:
    """The subscription is confirmed: the local cache may be served."""


@dataclass(frozen=True, slots=True)
class Bypass:
    """Stop serving the local cache (reads go to Redis)."""


@dataclass(frozen=True, slots=True)
class Flush:
    """Empty the local cache and void every fill in flight."""


@dataclass(frozen=True, slots=True)
class Ping:
    """Send a PING on the subscribed connection."""


@dataclass(slots=True)  # not frozen: one is made per message, and a frozen __init__ costs more
class Dispatch:
    """Apply this message payload (``CoordinatorBase.handle_message``)."""

    data: Any


@dataclass(slots=True)
class Tracked:
    """Apply this tracking notification (``CoordinatorBase.apply_tracked``): the changed
    keys, or None after a flush of the database."""

    data: Any


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Close the connection, wait ``delay`` seconds (unless stopped), then report ``retry``."""

    delay: float


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection and end: the listener is stopped."""


Action = Connect | Serve | Bypass | Flush | Ping | Dispatch | Tracked | Reconnect | Close

CONNECT, SERVE, BYPASS, FLUSH, PING, CLOSE = Connect(), Serve(), Bypass(), Flush(), Ping(), Close()
NOTHING: tuple[Action, ...] = ()

IDLE = "idle"  # not started
SUBSCRIBING = "subscribing"  # connecting, or waiting for the subscription's confirmation
LISTENING = "listening"  # subscribed: the cache may be served
WAITING = "waiting"  # after a failure, until the reconnection delay has passed
STOPPED = "stopped"


class ListenerMachine:
    """The listener's connection lifecycle as a state machine (see the module doc). No I/O.

    Args:
        config: ``subscribe_timeout`` (the subscription deadline, and the silence that
            triggers a PING), ``stale_if_error`` (keep the cache on errors) and
            ``channel`` (for messages).
        backoff: the reconnection delays: ``backoff.compute(n)`` after the (n+1)-th
            failure in a row (``n`` capped at ``MAX_BACKOFF_EXPONENT``).

    Not thread-safe: one driver feeds it, from one thread at a time.
    """

    def __init__(self, config: ClusterConfig, backoff: Backoff) -> None:
        self.idle_timeout = config.subscribe_timeout
        self.keep_stale = config.stale_if_error
        self.channel = config.channel
        self.backoff = backoff
        self.reset()

    def reset(self) -> None:
        """Back to a machine that never ran: not started, counters zeroed."""
        self.state = IDLE
        self.failures = 0  # failed connections (or drops) since the last confirmed subscription
        self.reconnects = 0  # confirmed subscriptions after the first
        self.last_error: str | None = None  # "Type: message" of the last failure
        self.last_delay = 0.0  # the last reconnection delay handed out
        self._ever_subscribed = False
        self.subscribed_at = -math.inf  # when the subscription was last confirmed (the breaker's early probe)
        self._heard_at_loss = 0.0  # last_heard while not listening: input last seen before the loss
        self._deadline = 0.0  # SUBSCRIBING: when an unconfirmed subscription fails
        self._last_seen = 0.0  # LISTENING: when input last arrived
        self._ping_sent: float | None = None  # LISTENING: when an unanswered PING went out

    @property
    def last_heard(self) -> float:
        """When input last arrived on the subscribed connection (its confirmation, a message,
        a PONG), or, while not subscribed, the last time it did before the loss (0.0: never).
        Every message Redis published before it sent that input was received: the start
        of an outage for ``stale_if_error`` is never later than this."""
        return self._last_seen if self.state == LISTENING else self._heard_at_loss

    @property
    def serving(self) -> bool:
        """True in the state where the local cache may be served (subscribed)."""
        return self.state == LISTENING

    # -- events -----------------------------------------------------------------------

    def start(self, now: float) -> tuple[Action, ...]:
        """The driver starts listening (from any state)."""
        return self._connect(now)

    def subscribed(self, now: float) -> tuple[Action, ...]:
        """The server confirmed the subscription.  Messages published while we were not
        subscribed are lost, so nothing cached may survive: flush, then serve."""
        if self.state == STOPPED:
            return NOTHING
        self._last_seen, self._ping_sent = now, None
        self.subscribed_at = now
        if self._ever_subscribed:
            self.reconnects += 1
            log.warning("resubscribed to %s; local cache flushed", self.channel)
        self._ever_subscribed = True
        self.failures = 0
        if self.state == LISTENING:  # redis-py reconnected and resubscribed under us
            return (FLUSH,)
        self.state = LISTENING
        return (FLUSH, SERVE)

    def message(self, data: Any, now: float) -> tuple[Action, ...]:
        """A message arrived on the channel."""
        self._last_seen, self._ping_sent = now, None
        return (Dispatch(data),)

    def tracked(self, data: Any, now: float) -> tuple[Action, ...]:
        """A tracking notification arrived (``track_external_changes``)."""
        self._last_seen, self._ping_sent = now, None
        return (Tracked(data),)

    def reply(self, now: float) -> tuple[Action, ...]:
        """Anything else arrived (a PONG): the connection is alive."""
        self._last_seen, self._ping_sent = now, None
        return NOTHING

    def unsubscribed(self, now: float) -> tuple[Action, ...]:
        """The server ended our subscription: a failure."""
        return self.error(ConnectionError("unsubscribed from the invalidation channel"), now)

    def idle(self, now: float) -> tuple[Action, ...]:
        """Nothing arrived for ``timeout(now)`` seconds."""
        state = self.state
        if state == SUBSCRIBING:
            if now >= self._deadline:
                return self.error(TimeoutError(f"subscription to {self.channel!r} not confirmed within {self.idle_timeout:g} s"), now)
        elif state == LISTENING:
            if self._ping_sent is not None:
                if now - self._ping_sent >= self.idle_timeout:
                    return self.error(ConnectionError(f"no PONG within {self.idle_timeout:g} s on the invalidation channel"), now)
            elif now - self._last_seen >= self.idle_timeout:
                self._ping_sent = now
                return (PING,)
        return NOTHING

    def error(self, exc: BaseException, now: float) -> tuple[Action, ...]:
        """The connection failed (or could not be made): bypass the cache, flush it
        (unless ``stale_if_error``), reconnect after the next backoff delay."""
        if self.state == STOPPED:
            return NOTHING
        was_serving = self.state == LISTENING
        self.state = WAITING
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.failures += 1
        self.last_delay = delay = self.backoff.compute(min(self.failures - 1, MAX_BACKOFF_EXPONENT))
        if was_serving:
            self._heard_at_loss = self._last_seen
            log.warning("lost the invalidation channel (%s); bypassing the local cache until resubscribed", self.last_error)
        else:
            log.debug("connecting the listener failed: %s; next attempt in %.3f s", self.last_error, delay)
        if self.keep_stale:
            return (BYPASS, Reconnect(delay))
        return (BYPASS, FLUSH, Reconnect(delay))

    def outside_error(self, exc: BaseException) -> tuple[Action, ...]:
        """A connection error the store saw on its own (e.g. loading a cluster's slot
        map): recorded and treated like a drop, without touching the listener's connection."""
        self.last_error = f"{type(exc).__name__}: {exc}"
        log.debug("connection error outside the listener: %s", self.last_error)
        return (BYPASS,) if self.keep_stale else (BYPASS, FLUSH)

    def retry(self, now: float) -> tuple[Action, ...]:
        """The reconnection delay has passed."""
        if self.state != WAITING:
            return NOTHING
        return self._connect(now)

    def forked(self) -> tuple[Action, ...]:
        """In a child made by ``os.fork()``: the parent's connection is not ours; start over."""
        self.reset()
        return (BYPASS, FLUSH)

    def stop(self) -> tuple[Action, ...]:
        """The driver stops listening."""
        self.state = STOPPED
        return (BYPASS, CLOSE)

    # -- for the driver ---------------------------------------------------------------

    def timeout(self, now: float) -> float:
        """Seconds the driver may wait for input before it must call ``idle`` (>= 0)."""
        state = self.state
        if state == SUBSCRIBING:
            left = self._deadline - now
        elif state == LISTENING:
            since = self._ping_sent if self._ping_sent is not None else self._last_seen
            left = since + self.idle_timeout - now
        else:
            left = self.idle_timeout
        return left if left > 0.0 else 0.0

    def _connect(self, now: float) -> tuple[Action, ...]:
        self.state = SUBSCRIBING
        self._deadline = now + self.idle_timeout
        self._ping_sent = None
        return (CONNECT,)


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
    """A coordinator's identity, counters and message handling, and its ``ListenerMachine``.

    Identity: ``node_id`` is the configured label (``ClusterConfig.node_id``, for logs
    and metrics).  Messages carry ``instance_id``, random per store instance and renewed
    in a forked child, so two processes (or two stores) with the same label still
    receive each other's invalidations.

    ``subscribed`` is a plain attribute (the stores read it on every cache hit): True
    while the local cache may be served.  A driver sets it when it carries out the
    machine's ``Serve``/``Bypass`` actions.
    """

    def __init__(
        self, config: ClusterConfig, cache: CoherentCache | None, backoff: Backoff | None = None, prefix: str | None = None,
    ) -> None:
        self.config = config
        # track_external_changes: what tracking notifications mean for the cache (None: off).
        self.tracking = TrackedChanges(prefix) if config.track_external_changes and prefix else None
        # Sharded pub/sub: the shard channel of every slot, from the listener's last slot map
        # (None: publish on the plain channel); a changed map waits in _pending_shards.
        self.shards: ShardMap | None = None
        self._pending_shards: ShardMap | None = None
        self._shards_at = 0.0
        self.source = 0  # the listener connection the message being applied came from
        self.node_id = config.node_id
        self.channel = config.channel
        self.update_max_bytes = config.update_max_bytes
        self.cache = cache
        # Applies an update-mode message (id, value, expiry seconds): set by the store.
        self.on_update: Callable[[str, bytes, int], Any] | None = None
        self.machine = ListenerMachine(config, backoff if backoff is not None else _Doubling(*config.reconnect_backoff))
        self._count_lock = threading.Lock()
        self.subscribed = False
        self._reset_counters()
        self.on_message: Callable[[dict[str, Any]], None] | None = None  # for tests and the demo

    def _reset_counters(self) -> None:
        """A new identity and zeroed counters (construction, and a forked child)."""
        self.instance_id = new_instance_id(self.node_id)
        self._published = 0
        self._issued = 0  # messages built by message(): an upper bound on our own echoes
        self._received = 0
        self._ignored_own = 0
        self._foreign_own_id = 0
        self._malformed = 0

    @property
    def stats(self) -> CoordinatorStats:
        """A snapshot of the counters (see ``CoordinatorStats``)."""
        machine = self.machine
        return CoordinatorStats(
            self._published, self._received, self._ignored_own, self._malformed,
            machine.reconnects, self.subscribed, machine.last_error, self._foreign_own_id,
        )

    def message(
        self, kind: str, session_id: str | None, version: int = 0, expires_in: int | None = None, ids: list[str] | None = None,
        payload: bytes | None = None, created: bool = False,
    ) -> bytes:
        """This node's wire message of type ``kind`` (for the store's write scripts)."""
        with self._count_lock:
            self._issued += 1
        return encode_message(kind, session_id, self.instance_id, version, expires_in, ids, payload, created)

    def channel_for(self, key: str) -> str:
        """The channel a write script publishes the invalidation of ``key`` on: the shard
        channel of its master (sharded pub/sub on Redis Cluster), else ``channel``."""
        shards = self.shards
        return self.channel if shards is None else shards.by_slot[key_slot(key.encode())]

    def adopt_shards(self, shards: ShardMap | None, now: float) -> None:
        """The listener subscribed with slot map ``shards`` (None: no sharded pub/sub).

        The first map, or the same one again, is used at once.  A changed one (slots
        moved between masters) only after ``2 * subscribe_timeout`` seconds, during which
        writers publish on the plain channel: another node's listener may still hold the
        old map (each notices a change within ``subscribe_timeout``) and would not hear
        a shard channel it does not know.
        """
        if shards is None:
            self.shards = self._pending_shards = None
            return
        old = self.shards if self.shards is not None else self._pending_shards
        if old is None and not self._shards_at or old is not None and old.by_slot == shards.by_slot:
            self.shards, self._pending_shards = shards, None
            self._shards_at = self._shards_at or now
            return
        self.shards, self._pending_shards = None, shards
        self._shards_at = now + 2 * self.config.subscribe_timeout
        log.info("the cluster's slot map changed: plain PUBLISH for %.1f s", 2 * self.config.subscribe_timeout)

    def shards_due(self, now: float) -> None:
        """Use a changed slot map once its wait is over (see ``adopt_shards``)."""
        pending = self._pending_shards
        if pending is not None and now >= self._shards_at:
            self.shards, self._pending_shards = pending, None

    def expect_write(self, session_id: str) -> None:
        """About to create ``session_id`` (the new id of a regenerate, which publishes
        nothing of its own): with tracking, its notification is this node's own write."""
        if self.tracking is not None:
            self.tracking.expect(session_id)

    def apply_tracked(self, data: Any) -> None:
        """Apply one tracking notification from listener connection ``source``: evict the
        sessions changed by anyone but this node, or flush (``data`` None). Never raises."""
        tracking = self.tracking
        if tracking is None:
            return
        try:
            evict = tracking.notified(self.source, data)
        except Exception:  # noqa: BLE001 - a malformed notification must not kill the listener
            log.debug("dropped a malformed tracking notification", exc_info=True)
            return
        cache = self.cache
        if cache is None:
            return
        if evict is None:
            cache.flush()
            return
        for session_id in evict:
            cache.invalidate(session_id)

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
                if self.tracking is not None and msg["t"] == INVALIDATED:
                    self.tracking.echoed(self.source, msg["id"])
                if self.cache is not None:  # an invalidation after an unknown write outcome
                    if msg["t"] == DELETED_MANY:
                        for session_id in msg["ids"]:
                            self.cache.own_message(DELETED, session_id)
                    else:
                        self.cache.own_message(msg["t"], msg["id"])
                return
            self._foreign_own_id += 1
            log.warning("a message on %s carries this store's instance id %s but was not sent by it (%d so far)",
                        self.channel, self.instance_id, self._foreign_own_id)
        if self.cache is not None:
            if msg["t"] == CLEARED:
                self.cache.flush()
            elif msg["t"] == DELETED_MANY:
                for session_id in msg["ids"]:
                    self.cache.invalidate(session_id)
            elif "c" in msg:
                self.cache.created(msg["id"])  # forget it as absent; a copy read since stays
            elif "p" in msg and self.on_update is not None:
                self.on_update(msg["id"], msg["p"], msg["e"])  # update mode: replace a cached copy
            else:
                self.cache.invalidate(msg["id"])
        self._received += 1  # after applying it: a reader that sees the count sees the eviction
        log.debug("applied %s from node %s", msg["t"], msg["node"])
        if self.on_message is not None:
            self.on_message(msg)

    def report_error(self, exc: BaseException) -> None:
        """Record a connection error seen outside the listener (e.g. the store could not
        load a cluster's slot map): like a dropped subscription, the cache is bypassed
        (and flushed unless ``stale_if_error``) and ``stats.last_error`` says why."""
        self.apply(self.machine.outside_error(exc))

    def apply(self, actions: Sequence[Action]) -> None:
        """Carry out the actions that need no connection: ``Serve``, ``Bypass``, ``Flush``
        and ``Dispatch`` (the others are the driver's)."""
        for action in actions:
            kind = type(action)
            if kind is Dispatch:
                self.handle_message(action.data)  # type: ignore[union-attr]
            elif kind is Tracked:
                self.apply_tracked(action.data)  # type: ignore[union-attr]
            elif kind is Flush:
                if self.cache is not None:
                    self.cache.flush()
            elif kind is Serve:
                self.subscribed = True
            elif kind is Bypass:
                self.subscribed = False


class _Doubling:
    """The delay doubles from ``first`` up to ``cap``, without jitter: the backoff of a
    coordinator built without one (the listener thread gives its own, with jitter)."""

    def __init__(self, first: float, cap: float) -> None:
        self.first, self.cap = first, cap

    def compute(self, failures: int) -> float:
        return float(min(self.cap, self.first * 2**failures))
