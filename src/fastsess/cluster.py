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

import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import msgpack
import redis

from .cache import CacheStats, LocalCache
from .config import DEFAULT_LOCAL_CACHE_MAX_BYTES, DEFAULT_LOCAL_CACHE_MAX_ITEM_BYTES, ClusterConfig
from .errors import ConfigError

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
    return msgpack.packb(msg)


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
        self.cache = LocalCache(max_size=max_size, ttl=ttl)
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


# (channel, node_id) of every running coordinator in this process: two stores with the
# same node id would ignore each other's messages, so that is refused.
_running: weakref.WeakValueDictionary[tuple[str, str], CoordinatorBase] = weakref.WeakValueDictionary()
_running_lock = threading.Lock()


class CoordinatorBase:
    """State, counters and message handling shared by the sync and asyncio coordinators."""

    def __init__(self, config: ClusterConfig, cache: CoherentCache | None) -> None:
        self.config = config
        self.node_id = config.node_id
        self.channel = config.channel
        self.cache = cache
        self._published = 0
        self._received = 0
        self._ignored_own = 0
        self._malformed = 0
        self._reconnects = 0
        self._last_error: str | None = None
        self._subscribed = False
        self._ever_subscribed = False
        self._count_lock = threading.Lock()
        self.on_message: Callable[[dict[str, Any]], None] | None = None  # for tests and the demo

    @property
    def subscribed(self) -> bool:
        """True while listening: only then may the local cache be served."""
        return self._subscribed

    @property
    def stats(self) -> CoordinatorStats:
        """A snapshot of the counters (see ``CoordinatorStats``)."""
        return CoordinatorStats(
            self._published, self._received, self._ignored_own, self._malformed,
            self._reconnects, self._subscribed, self._last_error,
        )

    def message(self, kind: str, session_id: str | None, version: int = 0, expires_in: int | None = None) -> bytes:
        """This node's wire message of type ``kind`` (for the store's write scripts)."""
        return encode_message(kind, session_id, self.node_id, version, expires_in)

    def note_published(self, count: int = 1) -> None:
        """Count messages the store published on this coordinator's behalf."""
        with self._count_lock:
            self._published += count

    def handle_message(self, data: Any) -> None:
        """Apply one raw pub/sub payload: evict, flush, or count it as own/malformed. Never raises."""
        msg = decode_message(data)
        if msg is None:
            self._malformed += 1
            log.debug("dropped a malformed message (%d so far)", self._malformed)
            return
        if msg["node"] == self.node_id:
            self._ignored_own += 1
            if self.cache is not None:
                self.cache.own_message(msg["t"], msg["id"])  # an invalidation after an unknown write outcome
            return
        if self.cache is not None:
            if msg["t"] == CLEARED:
                self.cache.flush()
            else:
                self.cache.invalidate(msg["id"])
        self._received += 1  # after applying it: a reader that sees the count sees the eviction
        log.debug("applied %s from node %s", msg["t"], msg["node"])
        if self.on_message is not None:
            self.on_message(msg)

    def _register(self) -> None:
        key = (self.channel, self.node_id)
        with _running_lock:
            other = _running.get(key)
            if other is not None and other is not self:
                raise ConfigError(
                    f"another running store in this process already uses node_id {self.node_id!r} "
                    f"on channel {self.channel!r}; give each store its own ClusterConfig(node_id=...)"
                )
            _running[key] = self

    def _unregister(self) -> None:
        with _running_lock:
            if _running.get((self.channel, self.node_id)) is self:
                del _running[(self.channel, self.node_id)]

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


class ClusterCoordinator(CoordinatorBase):
    """Publishes and listens for invalidations in one background thread.

    Args:
        client: a ``redis.Redis`` / ``RedisCluster`` / Sentinel-managed client;
            the listener takes its own connection from it (``client.pubsub()``).
        config: the cluster settings.
        cache: the cache to keep coherent (None: count and publish only).

    ``start()`` launches the daemon thread ``fastsess-listener-<node>`` and waits up
    to ``subscribe_timeout`` for the first subscription; ``stop()`` ends it.
    """

    def __init__(self, client: Any, config: ClusterConfig, cache: CoherentCache | None = None) -> None:
        super().__init__(config, cache)
        self.client = client
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Start listening; True if subscribed within ``subscribe_timeout``.

        Not subscribing in time is not an error: the store bypasses the cache
        until the listener gets through.

        Raises:
            ConfigError: another running coordinator in this process has the same node id.
        """
        if self._thread is not None and self._thread.is_alive():
            return self._subscribed
        self._register()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"fastsess-listener-{self.node_id[:12]}", daemon=True)
        self._thread.start()
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
        """Stop the listener and wait for its thread (at most ``timeout`` seconds)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._subscribed = False
        self._unregister()

    @property
    def running(self) -> bool:
        """True while the listener thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def publish(self, kind: str, session_id: str | None = None, version: int = 0) -> None:
        """Publish one message on its own (the stores batch theirs with the write).

        Raises:
            redis.RedisError: the PUBLISH failed (the stores map it to ``StoreUnavailable``).
        """
        self.client.publish(self.channel, self.message(kind, session_id, version))
        self.note_published()

    # -- listener thread -------------------------------------------------------------

    def _run(self) -> None:
        delay = self.config.reconnect_backoff[0]
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self.client.pubsub()
                self._subscribe(pubsub)
                delay = self.config.reconnect_backoff[0]
                self._listen(pubsub)
            except Exception as exc:  # noqa: BLE001 - the listener must survive anything
                self._ready.clear()
                self._on_dropped(exc)
                self._stop.wait(delay)
                delay = self._backoff(delay)
            finally:
                if pubsub is not None:
                    _close_quietly(pubsub)
        self._subscribed = False
        self._ready.clear()

    def _subscribe(self, pubsub: Any) -> None:
        pubsub.subscribe(self.channel)
        deadline = time.monotonic() + self.config.subscribe_timeout
        while True:
            event = pubsub.get_message(timeout=self._until(deadline))
            if event is not None and self._dispatch(event["type"], event["data"], subscribing=True):
                break
        self._on_subscribed()
        self._ready.set()

    def _listen(self, pubsub: Any) -> None:
        liveness = Liveness(self.config.subscribe_timeout)
        poll = min(POLL_INTERVAL, self.config.subscribe_timeout)
        read = _raw_reader(pubsub)
        while not self._stop.is_set():
            if read is not None:
                try:
                    reply = read(timeout=poll, disconnect_on_error=False)
                except redis.TimeoutError:
                    reply = None
                event = None if reply is None else (reply[0].decode("ascii", "replace"), reply[-1])
            else:
                message = pubsub.get_message(timeout=poll)
                event = None if message is None else (message["type"], message["data"])
            if event is None:
                if liveness.due():
                    pubsub.ping()
                continue
            liveness.seen()
            self._dispatch(*event, subscribing=False)


def _raw_reader(pubsub: Any) -> Callable[..., Any] | None:
    """The subscribed connection's ``read_response``, when replies are plain RESP2 lists.

    Reading replies straight off the connection skips ``PubSub.get_message``'s
    per-message select, timeout juggling and dict building.  That matters more than
    it looks: this node's own invalidations echo back to this thread during every
    save, and get_message's extra GIL round trips made a save about 40 us slower
    here; ``read_response`` costs nothing measurable.  RESP3 clients deliver
    messages as push frames, so they keep ``get_message``.
    """
    connection = getattr(pubsub, "connection", None)
    if connection is None or str(getattr(connection, "protocol", 2)) not in ("2", "None"):
        return None
    return connection.read_response


def _close_quietly(pubsub: Any) -> None:
    try:
        pubsub.close()
    except Exception:  # noqa: BLE001 - closing a dead connection may fail; nothing to do
        log.debug("closing the pub/sub connection failed", exc_info=True)
