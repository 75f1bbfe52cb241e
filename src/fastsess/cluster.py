"""Keeping every node's local cache honest: ``ClusterCoordinator`` and ``CoherentCache``.

Each node caches decoded sessions in a ``LocalCache``.  A write, delete, touch or
clear on one node publishes a small msgpack map ``{t, id, node, v}`` on the
cluster channel (in the same round trip as the write: see
``stores.clustered``); every other node's coordinator evicts that id.

Pub/sub is at-most-once: a message published while a node is disconnected is
lost for that node.  So the coordinator

* flushes the whole local cache on every (re)subscribe, and
* reports ``subscribed=False`` from the moment it sees the connection drop
  until it has resubscribed and flushed; the store bypasses the cache
  meanwhile (reads go to Redis and fail closed when Redis is down).

A silent connection (no FIN, e.g. a partition) is detected by a PING after
``subscribe_timeout`` seconds of silence: no PONG within the same time and the
listener reconnects.

**No stale re-fill.**  A node that misses its cache reads Redis and then fills
the cache.  If an invalidation for that id arrives between the read and the
fill, the value read may be older than the write that caused it, and caching
it would serve stale data until the next invalidation or the local TTL.
``CoherentCache`` prevents this with generation counters: a fill carries the
(epoch, generation) it saw *before* the read, and is dropped if either moved.
Generations live in a fixed array of slots indexed by the id's hash (a
collision can only drop a harmless fill, never keep a stale one), so the
bookkeeping is O(1) time and O(1) memory.  Fills and invalidations take one
small lock; cache hits take none.

**Expiry from Redis, not from clocks.**  A fill caches a session until the key's
remaining TTL as Redis reports it (``PTTL``, read with the ``GET`` in one round trip),
measured on this process's monotonic clock from before the request, minus
``EXPIRY_MARGIN``; a local write caches it for the TTL it just set.  No wall clock is
involved, so neither clock skew between nodes nor a ``touch`` this node never heard
of can keep a copy alive past the key's real expiry.

**Writes with an unknown outcome.**  A write that times out (or whose connection
drops, or whose task is cancelled) may have landed, or may still land later.  The
store then calls ``mark_uncertain``: the id is evicted, and for ``UNCERTAIN_WINDOW``
seconds this node's own echoed messages about it count as invalidations, exactly as
another node's would.

**Bytes.**  Entries are charged their serialized size: the cache holds at most
``max_bytes`` of them and never one larger than ``max_item_bytes``.
"""

from __future__ import annotations

import inspect
import logging
import os
import secrets
import select
import socket
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import msgpack
import redis

from .cache import CacheStats, LocalCache
from .config import DEFAULT_LOCAL_CACHE_MAX_BYTES, DEFAULT_LOCAL_CACHE_MAX_ITEM_BYTES, ClusterConfig

log = logging.getLogger("fastsess.cluster")

INVALIDATED = "invalidated"
DELETED = "deleted"
CLEARED = "cleared"
TOUCHED = "touched"  # carries "x": the new expiry in seconds
MESSAGE_TYPES = frozenset({INVALIDATED, DELETED, CLEARED, TOUCHED})
MAX_MESSAGE_BYTES = 1024  # a real message is < 120 bytes; anything bigger is not ours

GENERATION_SLOTS = 4096  # power of two
_SLOT_MASK = GENERATION_SLOTS - 1
POLL_INTERVAL = 0.25  # longest blocking wait of the listener, so stop() is prompt
# A cache hit checks every HITS_PER_CHECK hits whether the listener thread needs the GIL
# (see ThreadedCoordinator.yield_to_listener) and, if so, sleeps LISTENER_YIELD seconds.
HITS_PER_CHECK = 256
LISTENER_YIELD = 0.0002
# A cached copy stops being served this long before its key expires in Redis: it covers
# the round trip or message delivery between the EXPIRE and our clock reading, and the
# cache's coarse clock (CLOCK_MONOTONIC_COARSE ticks every 1-4 ms).
EXPIRY_MARGIN = 0.05
# After a write with an unknown outcome, this node's own messages about that id count as
# invalidations for this long: longer than Linux gives a stuck TCP segment (tcp_retries2=15,
# about 924 s), so a delayed write cannot land unnoticed after the window.
UNCERTAIN_WINDOW = 1000.0
MAX_UNCERTAIN = 10_000  # ids watched one by one; beyond that every own message invalidates


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


def encode_message(kind: str, session_id: str | None, node_id: str, version: int = 0, expires_in: int | None = None) -> bytes:
    """The wire form of one invalidation: msgpack ``{t, id, node, v}`` (plus ``x`` for ``touched``).

    Raises:
        ValueError: unknown ``kind``, or ``touched`` without ``expires_in``.
    """
    if kind not in MESSAGE_TYPES:
        raise ValueError(f"unknown message type {kind!r}")
    msg: dict[str, Any] = {"t": kind, "id": session_id, "node": node_id, "v": version}
    if kind == TOUCHED:
        if expires_in is None:
            raise ValueError("a touched message needs expires_in")
        msg["x"] = expires_in
    packed: bytes = msgpack.packb(msg)
    return packed


def decode_message(data: Any) -> dict[str, Any] | None:
    """The message map, or None if ``data`` is not a well-formed fastsess message. Never raises."""
    if not isinstance(data, bytes) or len(data) > MAX_MESSAGE_BYTES:
        return None
    try:
        msg = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception:  # any decoding failure is just "malformed"
        return None
    if not isinstance(msg, dict):
        return None
    kind = msg.get("t")
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:  # an unhashable t must not raise
        return None
    if kind == TOUCHED:
        expires_in = msg.get("x")
        if type(expires_in) is not int or expires_in < 0:
            return None
    node, session_id, version = msg.get("node"), msg.get("id"), msg.get("v", 0)
    if not isinstance(node, str) or not isinstance(version, int) or isinstance(version, bool):
        return None
    if msg["t"] != CLEARED and not isinstance(session_id, str):
        return None
    return msg


class CoherentCache:
    """A ``LocalCache`` of sessions plus the bookkeeping that keeps it honest and bounded.

    Hot path: ``get`` (the bare cache lookup, no lock).  Miss path:
    ``token = fill_token(id)`` before reading Redis, ``fill(id, value, token, ttl, size)``
    after.  Local writes use ``put_if``; invalidations ``invalidate``/``flush``; a write
    whose outcome is unknown ``mark_uncertain``; this node's own echoed messages
    ``own_message``.

    Args:
        max_size: entries kept (LRU beyond that).
        ttl: the longest time an entry is served (``local_cache_ttl``).
        max_bytes: the serialized bytes of all entries together; the oldest writes are
            dropped first to make room.
        max_item_bytes: an entry larger than this (serialized) is not cached at all.

    Byte accounting: each entry is charged the size of its serialized form (what Redis
    holds).  Entries the ``LocalCache`` drops by itself (LRU or expiry) stay charged until
    they reach the front of the write order, so the charge can only overestimate the real
    footprint: ``cached_bytes <= max_bytes`` bounds the serialized size of what is held.
    """

    __slots__ = (
        "_bytes", "_epoch", "_generations", "_lock", "_max_bytes", "_max_item_bytes", "_max_tracked",
        "_sizes", "_ttl", "_uncertain", "_uncertain_all", "cache", "get",
    )

    def __init__(
        self, max_size: int, ttl: float, max_bytes: int = DEFAULT_LOCAL_CACHE_MAX_BYTES,
        max_item_bytes: int = DEFAULT_LOCAL_CACHE_MAX_ITEM_BYTES,
    ) -> None:
        self.cache: LocalCache[str, Any] = LocalCache(max_size=max_size, ttl=ttl)
        self._ttl = ttl
        self.get = self.cache.get  # bound once: the cached-load path is a single C call
        self._lock = threading.Lock()
        self._generations = [0] * GENERATION_SLOTS
        self._epoch = 0
        self._max_bytes = max_bytes
        self._max_item_bytes = min(max_item_bytes, max_bytes)
        # Serialized size of every entry set through this object, oldest write first.
        # Twice max_size: room for entries the LocalCache already dropped by itself.
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._max_tracked = 2 * max_size
        self._bytes = 0
        # Ids with a write of unknown outcome -> monotonic time until which this node's
        # own messages about them count as invalidations (see mark_uncertain).
        self._uncertain: dict[str, float] = {}
        self._uncertain_all = 0.0  # the same for every id, after the map overflowed

    @property
    def cached_bytes(self) -> int:
        """The serialized bytes charged to the entries held (an upper bound, see the class doc)."""
        return self._bytes

    @property
    def max_bytes(self) -> int:
        """The byte bound of the whole cache."""
        return self._max_bytes

    @property
    def max_item_bytes(self) -> int:
        """Entries larger than this (serialized) are never cached."""
        return self._max_item_bytes

    def fill_token(self, session_id: str) -> tuple[int, int]:
        """The state to hand back to ``fill``; take it *before* reading Redis."""
        return (self._epoch, self._generations[hash(session_id) & _SLOT_MASK])

    def fill(self, session_id: str, value: Any, token: tuple[int, int], ttl: float, size: int = 0) -> bool:
        """Cache ``value`` read from Redis for ``ttl`` seconds, unless an invalidation came
        in since ``token``; ``size`` is its serialized size. True if cached."""
        slot = hash(session_id) & _SLOT_MASK
        with self._lock:
            if token != (self._epoch, self._generations[slot]) or ttl <= 0:
                return False
            return self._set(session_id, value, ttl, size)

    def _set(self, session_id: str, value: Any, ttl: float, size: int) -> bool:
        # Caller holds the lock.
        sizes = self._sizes
        old = sizes.pop(session_id, None)
        if old is not None:
            self._bytes -= old
        if size > self._max_item_bytes:
            self.cache.delete(session_id)
            return False
        while sizes and (self._bytes + size > self._max_bytes or len(sizes) >= self._max_tracked):
            victim, victim_size = sizes.popitem(last=False)
            self._bytes -= victim_size
            self.cache.delete(victim)
        sizes[session_id] = size
        self._bytes += size
        # The cache's own TTL keeps the entry in its O(1) write-order list; only a shorter
        # one (a session about to expire) needs the per-entry heap.
        if ttl >= self._ttl:
            self.cache.set(session_id, value)
        else:
            self.cache.set(session_id, value, ttl)
        return True

    def _drop(self, session_id: str) -> bool:
        # Caller holds the lock.
        size = self._sizes.pop(session_id, None)
        if size is not None:
            self._bytes -= size
        return self.cache.delete(session_id)

    def put(self, session_id: str, value: Any, ttl: float, size: int = 0) -> None:
        """Cache ``value`` unconditionally, voiding fills of older data still in flight."""
        slot = hash(session_id) & _SLOT_MASK
        with self._lock:
            self._generations[slot] += 1
            if ttl > 0:
                self._set(session_id, value, ttl, size)
            else:
                self._drop(session_id)

    def put_if(self, session_id: str, value: Any, token: tuple[int, int], ttl: float, size: int = 0) -> bool:
        """Cache a value this node just wrote, unless an invalidation came in since ``token``
        (taken before the write: another node may have written a newer value meanwhile).

        Either way, fills of older data still in flight are voided.
        """
        slot = hash(session_id) & _SLOT_MASK
        with self._lock:
            unchanged = token == (self._epoch, self._generations[slot])
            self._generations[slot] += 1
            if unchanged and ttl > 0 and self._set(session_id, value, ttl, size):
                return True
            self._drop(session_id)
            return False

    def invalidate(self, session_id: str) -> bool:
        """Evict ``session_id`` and void fills in flight for it; True if it was cached."""
        slot = hash(session_id) & _SLOT_MASK
        with self._lock:
            self._generations[slot] += 1
            return self._drop(session_id)

    def mark_uncertain(self, session_id: str, window: float = UNCERTAIN_WINDOW) -> None:
        """A write of ``session_id`` failed with an unknown outcome (a timeout, a dropped
        connection, a cancellation): it may have landed already, or may still land.

        Evicts the id and voids fills in flight (covers a write that already landed), and
        for ``window`` seconds makes this node's own echoed messages about the id count
        as invalidations (covers a write that lands later: its PUBLISH echoes back).
        """
        slot = hash(session_id) & _SLOT_MASK
        until = time.monotonic() + window
        with self._lock:
            self._generations[slot] += 1
            self._drop(session_id)
            uncertain = self._uncertain
            if session_id not in uncertain and len(uncertain) >= MAX_UNCERTAIN:
                t = time.monotonic()
                for key in [k for k, v in uncertain.items() if v <= t]:
                    del uncertain[key]
                if len(uncertain) >= MAX_UNCERTAIN:
                    # Too many to track one by one: treat every own message as an invalidation.
                    self._uncertain_all = max(self._uncertain_all, until, *uncertain.values())
                    uncertain.clear()
                    return
            uncertain[session_id] = max(until, uncertain.get(session_id, 0.0))

    def own_message(self, kind: str, session_id: str | None) -> bool:
        """Apply one of this node's own messages, echoed back by Redis: normally nothing
        (the write already updated this cache), an invalidation if a write of that id had
        an unknown outcome recently (``mark_uncertain``).  True if it invalidated."""
        if not self._uncertain and not self._uncertain_all:
            return False
        t = time.monotonic()
        if kind == CLEARED or session_id is None:
            return False
        if self._uncertain_all:
            if t < self._uncertain_all:
                self.invalidate(session_id)
                return True
            with self._lock:  # a mark_uncertain may have extended it meanwhile
                if t >= self._uncertain_all:
                    self._uncertain_all = 0.0
        until = self._uncertain.get(session_id)
        if until is None:
            return False
        if t >= until:
            with self._lock:
                if self._uncertain.get(session_id) == until:
                    del self._uncertain[session_id]
            return False
        self.invalidate(session_id)
        return True

    def uncertain_ids(self) -> int:
        """How many ids have a write of unknown outcome being watched (for stats and tests)."""
        return len(self._uncertain)

    def flush(self) -> None:
        """Evict everything and void every fill in flight."""
        with self._lock:
            self._epoch += 1
            self._sizes.clear()
            self._bytes = 0
            self.cache.clear()

    def stats(self) -> CacheStats:
        """The cache's hit/miss/eviction/expiration counters."""
        return self.cache.stats

    def __len__(self) -> int:
        return len(self.cache)


# Every live coordinator of this process, for the fork hook below.
_live: weakref.WeakSet[ThreadedCoordinator] = weakref.WeakSet()


def new_instance_id(label: str) -> str:
    """A fresh identity for one coordinator: ``<label>/<64 random bits>``.

    ``label`` (``ClusterConfig.node_id``) is only there for logs; the random part makes
    the id unique per store instance and per process, whatever the configuration says.
    """
    return f"{label}/{secrets.token_hex(8)}"


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


class ThreadedCoordinator(CoordinatorBase):
    """The listener thread of both coordinators (sync and asyncio): everything but the
    public start/stop/publish, which differ only in being coroutines or not.

    The thread reads a pub/sub connection of its own, made by ``listener_client`` from
    the store's client settings (RESP2, no redis-py retries: every drop reaches us, so
    every reconnect flushes the cache and is counted).  It feeds the thread-safe
    ``CoherentCache``, so invalidations apply even while an event loop is busy.
    """

    def __init__(self, client: Any, config: ClusterConfig, cache: CoherentCache | None = None) -> None:
        super().__init__(config, cache)
        self.client = client
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._pubsub: Any = None  # the listener's current PubSub, for stop() to wake it
        # The listener's socket while it waits for input (-1: none), and whether it is
        # waiting there (False from the moment it has input until it waits again).
        self._fd = -1
        self._waiting = True
        _live.add(self)

    @property
    def running(self) -> bool:
        """True while the listener thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _launch(self) -> None:
        """Start the listener thread (no wait); nothing if it already runs."""
        if self.running:
            return
        self._stop = threading.Event()
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, args=(self._stop,), name=f"fastsess-listener-{self.node_id[:12]}", daemon=True)
        self._thread.start()

    def _signal_stop(self) -> threading.Thread | None:
        """Tell the listener to end and wake it from its blocking read; returns its thread."""
        self._stop.set()
        thread, self._thread = self._thread, None
        self._subscribed = False
        self._wake()
        return thread

    def _wake(self) -> None:
        # Shut the listener's socket down (not close: the fd stays valid for the thread
        # still reading it): its blocking read returns at once instead of after its poll.
        # Only in the process that opened it: a forked child must not touch the parent's.
        pubsub = self._pubsub
        connection = getattr(pubsub, "connection", None)
        sock = getattr(connection, "_sock", None)
        if sock is None or os.getpid() != self._pid:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already closed
            pass

    def _after_fork_in_child(self) -> None:
        """In a forked child: forget the parent's thread, connection, cache and identity;
        start a listener of our own if the parent had one running."""
        was_running = self._thread is not None and not self._stop.is_set()
        self._thread = None
        self._pubsub = None  # the parent's socket: never read, shut or closed here
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._count_lock = threading.Lock()
        self._reset_state()
        cache = self.cache
        if cache is not None:
            cache._lock = threading.Lock()  # a parent thread may have held it at fork()
            cache.flush()
        reset_pool = getattr(getattr(self.client, "connection_pool", None), "reset", None)
        if _is_asyncio_client(self.client) and callable(reset_pool):
            reset_pool()  # the parent's asyncio connections belong to the parent's event loop
        if was_running:
            self._launch()

    # -- listener thread -------------------------------------------------------------

    def _run(self, stop: threading.Event) -> None:
        delay = self.config.reconnect_backoff[0]
        while not stop.is_set():
            pubsub = made = None
            try:
                listener, made = listener_client(self.client)
                pubsub = self._pubsub = listener.pubsub()
                if stop.is_set():
                    break
                self._subscribe(pubsub, stop)
                delay = self.config.reconnect_backoff[0]
                self._listen(pubsub, stop)
            except Exception as exc:  # noqa: BLE001 - the listener must survive anything
                if stop.is_set():
                    break  # woken by stop(): not a connection problem
                self._ready.clear()
                self._on_dropped(exc)
                stop.wait(delay)
                delay = self._backoff(delay)
            finally:
                if self._pubsub is pubsub:
                    self._pubsub = None
                if pubsub is not None:
                    _close_quietly(pubsub)
                if made is not None:
                    _close_quietly(made)
        if self._thread is None or self._thread is threading.current_thread():
            self._subscribed = False
            self._ready.clear()

    def _subscribe(self, pubsub: Any, stop: threading.Event) -> None:
        pubsub.subscribe(self.channel)
        deadline = time.monotonic() + self.config.subscribe_timeout
        while True:
            event = pubsub.get_message(timeout=self._until(deadline))
            if event is not None and self._dispatch(event["type"], event["data"], subscribing=True):
                break
        if stop.is_set():
            return
        self._on_subscribed()
        self._ready.set()

    def _listen(self, pubsub: Any, stop: threading.Event) -> None:
        liveness = Liveness(self.config.subscribe_timeout)
        poll = min(POLL_INTERVAL, self.config.subscribe_timeout)
        read = _raw_reader(pubsub)
        sock = getattr(getattr(pubsub, "connection", None), "_sock", None)
        fd = sock.fileno() if sock is not None else -1
        def next_event(timeout: float) -> tuple[str, Any] | None:
            if read is not None:
                reply = read(timeout)
                return None if reply is None else (reply[0].decode("ascii", "replace"), reply[-1])
            message = pubsub.get_message(timeout=timeout)
            return None if message is None else (message["type"], message["data"])

        try:
            while not stop.is_set():
                if fd >= 0:
                    # Take what is already there without blocking; wait for more with select,
                    # which leaves it unread in the socket: yield_to_listener sees it there.
                    event = next_event(0)
                    if event is None:
                        self._fd, self._waiting = fd, True
                        ready = select.select([fd], [], [], poll)[0]
                        self._waiting = False
                        if ready:
                            continue
                else:
                    event = next_event(poll)
                if event is None:
                    if liveness.due():
                        pubsub.ping()
                    continue
                liveness.seen()
                self._dispatch(*event, subscribing=False)
        finally:
            self._fd, self._waiting = -1, True

    def yield_to_listener(self) -> None:
        """Let the listener thread run if it has input to apply; cache hits call this
        every ``HITS_PER_CHECK`` hits.

        A thread that does nothing but cache hits and short system calls (an event loop
        polling with a zero timeout, a request loop checking a pipe) can keep the GIL
        from the listener for as long as it runs: CPython forces a hand-over after the
        switch interval only if the holder did not release the GIL meanwhile, and every
        short system call counts as a release.  Invalidations would then wait for
        the busy thread.  So: if the listener has left its wait (it has input and needs
        the GIL) or input is waiting on its socket, sleep ``LISTENER_YIELD`` seconds.
        """
        if self._waiting:
            fd = self._fd
            if fd < 0:
                return
            try:
                if not select.select([fd], [], [], 0)[0]:
                    return
            except (OSError, ValueError):  # closed under us: the listener reconnects
                return
        elif self._thread is None:
            return
        time.sleep(LISTENER_YIELD)


class ClusterCoordinator(ThreadedCoordinator):
    """Publishes and listens for invalidations in one background thread.

    Args:
        client: a ``redis.Redis`` / ``RedisCluster`` / Sentinel-managed client;
            the listener takes its own connection with the same settings
            (see ``listener_client``).
        config: the cluster settings.
        cache: the cache to keep coherent (None: count and publish only).

    ``start()`` launches the daemon thread ``fastsess-listener-<node>`` and waits up
    to ``subscribe_timeout`` for the first subscription; ``stop()`` ends it.
    """

    def start(self) -> bool:
        """Start listening; True if subscribed within ``subscribe_timeout``.

        Not subscribing in time is not an error: the store bypasses the cache
        until the listener gets through.
        """
        if self.running:
            return self._subscribed
        self._launch()
        return self._ready.wait(self.config.subscribe_timeout)

    def wait_subscribed(self, timeout: float) -> bool:
        """Block until subscribed (True) or ``timeout`` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        while not self._subscribed:
            if self._stop.is_set() or time.monotonic() >= deadline:
                return False
            self._ready.wait(min(0.01, max(0.0, deadline - time.monotonic())))
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the listener and wait for its thread (at most ``timeout`` seconds).

        The listener is woken at once (its socket is shut down), so this returns in
        about a millisecond unless the thread is inside a connect attempt.
        """
        thread = self._signal_stop()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def publish(self, kind: str, session_id: str | None = None, version: int = 0) -> None:
        """Publish one message on its own (the stores batch theirs with the write).

        Raises:
            redis.RedisError: the PUBLISH failed (the stores map it to ``StoreUnavailable``).
        """
        self.client.publish(self.channel, self.message(kind, session_id, version))
        self.note_published()


def _after_fork_in_child() -> None:
    for coordinator in list(_live):
        try:
            coordinator._after_fork_in_child()
        except Exception:  # noqa: BLE001 - a failed reset must not break the child
            log.exception("resetting a coordinator after fork() failed")


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


_closing: set[Any] = set()  # aclose() tasks of unclosed asyncio stores' clients, until done


def release_unclosed(kind: str, coordinator: ThreadedCoordinator | None, client: Any) -> None:
    """The finalizer of a clustered store that was never closed: warn like an unclosed
    file (``ResourceWarning``), stop its listener and close the client it owns (an
    asyncio client: by a task on the event loop running here, if any; else its
    connections close when it is collected).  Never raises."""
    warnings.warn(f"unclosed {kind}: call close() (or use it as a context manager)", ResourceWarning, stacklevel=2)
    try:
        if coordinator is not None:
            thread = coordinator._signal_stop()
            if thread is not None and thread is not threading.current_thread():
                thread.join(1.0)
        if client is None:
            return
        if not _is_asyncio_client(client):
            client.close()
            return
        import asyncio

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(_aclose_quietly(client))
        _closing.add(task)
        task.add_done_callback(_closing.discard)
    except Exception:  # noqa: BLE001 - a finalizer must not raise
        log.debug("releasing an unclosed store failed", exc_info=True)


async def _aclose_quietly(client: Any) -> None:
    try:
        await client.aclose()
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            await pool.disconnect()  # redis-py 5.0's aclose() leaves the pool connected
    except Exception:  # noqa: BLE001 - best effort, from a finalizer
        log.debug("closing an unclosed store's client failed", exc_info=True)


# -- the listener's own connection ----------------------------------------------------------

# Settings that are redis-py objects of the sync *or* asyncio flavour, or that the
# listener sets itself: not copied from the store's client.
_NOT_COPIED = frozenset({
    "retry", "retry_on_error", "retry_on_timeout", "parser_class", "redis_connect_func", "event_dispatcher",
    "encoder_class", "health_check_interval", "protocol", "decode_responses", "connection_pool",
    "single_connection_client", "maint_notifications_config", "maint_notifications_pool_handler",
    "oss_cluster_maint_notifications_handler", "cache", "cache_config",
})
_CONNECTION_CLASSES = ("Connection", "SSLConnection", "UnixDomainSocketConnection")


def _is_asyncio_client(client: Any) -> bool:
    return type(client).__module__.startswith("redis.asyncio")


def _accepted(cls: type) -> set[str]:
    """Keyword arguments ``cls`` (a redis-py connection or client class) takes, along its MRO."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            names.update(p.name for p in inspect.signature(init).parameters.values() if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD)
        except (TypeError, ValueError):
            continue
    names.discard("self")
    return names


def _listener_kwargs(kwargs: dict[str, Any], cls: type) -> dict[str, Any]:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    accepted = _accepted(cls)
    out = {k: v for k, v in kwargs.items() if k in accepted and k not in _NOT_COPIED}
    out.update(protocol=2, retry=Retry(NoBackoff(), 0))
    return out


def listener_client(client: Any) -> tuple[Any, Any]:
    """A sync client whose ``pubsub()`` the listener reads, and the client to close
    after (None when it is ``client`` itself).

    A standalone ``redis.Redis`` (sync or asyncio) gets a private one-connection
    client with the same address, credentials and TLS settings, speaking RESP2 (its
    pub/sub replies are plain lists: ``_raw_reader``) and without redis-py retries
    (a drop must reach the listener, never be hidden by a silent reconnect).
    An asyncio ``RedisCluster`` or Sentinel-managed client gets a sync twin of it;
    a sync ``RedisCluster`` or Sentinel-managed client is used as it is.

    Raises:
        redis.RedisError: the twin could not be built (e.g. the cluster is down):
            the listener retries with backoff.
    """
    is_async = _is_asyncio_client(client)
    if is_async and hasattr(client, "nodes_manager"):  # redis.asyncio.cluster.RedisCluster
        from redis.cluster import ClusterNode, RedisCluster

        manager = client.nodes_manager
        nodes = {**getattr(manager, "startup_nodes", {}), **getattr(manager, "nodes_cache", {})}
        startup = [ClusterNode(node.host, node.port) for node in nodes.values()]  # type: ignore[no-untyped-call]
        kwargs = _listener_kwargs(dict(client.connection_kwargs), redis.connection.Connection)
        for key in ("host", "port"):
            kwargs.pop(key, None)
        if getattr(client.connection_kwargs.get("connection_class"), "__name__", "") == "SSLConnection":
            kwargs["ssl"] = True
        twin = RedisCluster(startup_nodes=startup, **kwargs)
        return twin, twin
    pool = getattr(client, "connection_pool", None)
    if pool is None:  # a sync RedisCluster: its ClusterPubSub picks a node
        return client, None
    manager = getattr(pool, "sentinel_manager", None)
    if manager is not None:
        if not is_async:
            return client, None
        from redis.sentinel import Sentinel

        addresses = [s.connection_pool.connection_kwargs for s in manager.sentinels]
        sentinels = [(a["host"], a["port"]) for a in addresses]
        sentinel_kwargs = _listener_kwargs(dict(addresses[0]), redis.Redis) if addresses else {}
        for key in ("host", "port"):
            sentinel_kwargs.pop(key, None)
        kwargs = _listener_kwargs(dict(pool.connection_kwargs), redis.connection.Connection)
        sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, **kwargs)  # type: ignore[no-untyped-call]
        twin = sentinel.master_for(pool.service_name, redis_class=redis.Redis)  # type: ignore[no-untyped-call]
        return twin, twin
    name = pool.connection_class.__name__
    if name not in _CONNECTION_CLASSES:
        if is_async:
            raise redis.RedisError(f"cannot listen through a {pool.connection_class.__qualname__} connection")
        return client, None  # a custom sync connection class: use the client's own pool
    sync_class = pool.connection_class if not is_async else getattr(redis.connection, name)
    kwargs = _listener_kwargs(dict(pool.connection_kwargs), sync_class)
    own = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=sync_class, **kwargs))
    return own, own


def _raw_reader(pubsub: Any) -> Callable[[float], Any] | None:
    """A function reading one reply off the subscribed connection (None: no reply within
    the timeout), when replies are plain RESP2 lists; else None (use ``get_message``).

    Reading replies straight off the connection skips ``PubSub.get_message``'s
    per-message select, timeout juggling and dict building.  That matters more than
    it looks: this node's own invalidations echo back to this thread during every
    save, and get_message's extra GIL round trips made a save about 40 us slower
    here; ``read_response`` costs nothing measurable.  RESP3 connections deliver
    messages as push frames, so they keep ``get_message``.

    redis-py 8 reads with a timeout in one call (``read_response(timeout=...)``);
    5.x-7.x wait with ``can_read(timeout)`` first (what their ``get_message`` does).
    """
    connection = getattr(pubsub, "connection", None)
    if connection is None or str(getattr(connection, "protocol", 2)) not in ("2", "None"):
        return None
    read_response = connection.read_response
    try:
        params = inspect.signature(read_response).parameters
    except (TypeError, ValueError):
        return None
    if "disconnect_on_error" not in params:
        return None
    if "timeout" in params:
        def read(timeout: float) -> Any:
            try:
                return read_response(timeout=timeout, disconnect_on_error=False)
            except redis.TimeoutError:
                return None
    else:
        can_read = connection.can_read

        def read(timeout: float) -> Any:
            if not can_read(timeout=timeout):
                return None
            return read_response(disconnect_on_error=False)
    return read


def _close_quietly(thing: Any) -> None:
    try:
        thing.close()
    except Exception:  # noqa: BLE001 - closing a dead connection may fail; nothing to do
        log.debug("closing the pub/sub connection failed", exc_info=True)
