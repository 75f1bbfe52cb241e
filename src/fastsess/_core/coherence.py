"""``CoherentCache``: a node's ``LocalCache`` of sessions, kept honest and bounded. No I/O.

**No stale re-fill.**  A node that misses its cache reads Redis and then fills the
cache.  If an invalidation for that id arrives between the read and the fill, the
value read may be older than the write that caused it.  So a fill carries the
(epoch, generation) it saw *before* the read, and is dropped if either moved: every
flush bumps the epoch, every invalidation the generation of the id's slot.
Generations live in a fixed array of slots indexed by the id's hash (a collision can
only drop a harmless fill, never keep a stale one): O(1) time and memory.  Fills and
invalidations take one small lock; cache hits take none.

**Writes with an unknown outcome.**  A write that timed out (or whose connection
dropped, or whose task was cancelled) may have landed, or may still land later.
``mark_uncertain`` evicts the id, and for ``UNCERTAIN_WINDOW`` seconds this node's own
echoed messages about it count as invalidations, exactly as another node's would.

**Bytes.**  Entries are charged their serialized size: the cache holds at most
``max_bytes`` of them and never one larger than ``max_item_bytes``.

**Absent ids.**  With ``absent_ttl`` > 0, an id Redis did not hold is remembered as
absent for that long (``fill_absent``), so loads of unknown ids (random cookies) need no
round trip.  Every invalidation of the id, every local write of it, every flush and
every creation of it anywhere (``created``: the first save publishes one) forget it.
A slot's generation counts invalidations in its high bits (``INVALIDATION``) and
creations in its low bits: a creation voids the absent fills in flight (they may have
read "no such key" just before it) but neither a copy cached nor a fill in flight (a
value read of a key that did not exist before the creation can only be that creation
or newer).

**Updates.**  ``replace`` installs a newer copy carried by another node's message in
place of the cached one: only if the cached copy's ``version`` is lower, else it evicts,
as a plain invalidation does.  Either way fills in flight are voided.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..cache import CacheStats, LocalCache
from ..config import DEFAULT_LOCAL_CACHE_MAX_BYTES, DEFAULT_LOCAL_CACHE_MAX_ITEM_BYTES
from .flights import Flights
from .messages import CLEARED

GENERATION_SLOTS = 4096  # power of two
_SLOT_MASK = GENERATION_SLOTS - 1
# A cached copy stops being served this long before its key expires in Redis: it covers
# the round trip or message delivery between the EXPIRE and our clock reading, and the
# cache's coarse clock (CLOCK_MONOTONIC_COARSE ticks every 1-4 ms).
EXPIRY_MARGIN = 0.05
# After a write with an unknown outcome, this node's own messages about that id count as
# invalidations for this long: longer than Linux gives a stuck TCP segment (tcp_retries2=15,
# about 924 s), so a delayed write cannot land unnoticed after the window.
UNCERTAIN_WINDOW = 1000.0
MAX_UNCERTAIN = 10_000  # ids watched one by one; beyond that every own message invalidates
MAX_WRITTEN = 10_000  # ids this node wrote, kept until the listener has heard past the write (see wrote)
# A generation's high part counts invalidations, its low part creations (see the module doc).
INVALIDATION = 1 << 32


class CoherentCache:
    """A ``LocalCache`` of sessions plus the bookkeeping that keeps it honest and bounded.

    Hot path: ``get`` (the bare cache lookup, no lock).  Miss path:
    ``token = fill_token(id)`` before reading Redis, ``fill(id, value, token, ttl, size)``
    after.  Local writes use ``put_if``; invalidations ``invalidate``/``flush``; a write
    whose outcome is unknown ``mark_uncertain``; this node's own echoed messages
    ``own_message``.

    Args:
        max_size: entries kept (CLOCK eviction beyond that).
        ttl: the longest time an entry is served (``local_cache_ttl``).
        max_bytes: the serialized bytes of all entries together; the oldest writes are
            dropped first to make room.
        max_item_bytes: an entry larger than this (serialized) is not cached at all.

    Byte accounting: each entry is charged the size of its serialized form (what Redis
    holds).  Entries the ``LocalCache`` drops by itself (eviction or expiry) stay charged until
    they reach the front of the write order, so the charge can only overestimate the real
    footprint: ``cached_bytes <= max_bytes`` bounds the serialized size of what is held.
    """

    __slots__ = (
        "_bytes", "_epoch", "_generations", "_lock", "_max_bytes", "_max_item_bytes", "_max_tracked",
        "_sizes", "_ttl", "_uncertain", "_uncertain_all", "_written", "_written_all", "absent", "cache", "flights", "get", "replaced", "warmed",
    )

    def __init__(
        self, max_size: int, ttl: float, max_bytes: int = DEFAULT_LOCAL_CACHE_MAX_BYTES,
        max_item_bytes: int = DEFAULT_LOCAL_CACHE_MAX_ITEM_BYTES, absent_ttl: float = 0.0, absent_max_size: int = 10_000,
    ) -> None:
        self.cache: LocalCache[str, Any] = LocalCache(max_size=max_size, ttl=ttl)
        # Ids Redis did not hold, remembered for absent_ttl seconds (None: not remembered).
        self.absent: LocalCache[str, bool] | None = LocalCache(max_size=absent_max_size, ttl=absent_ttl) if absent_ttl > 0 else None
        self.replaced = 0  # copies replaced by update messages (see replace)
        self.warmed = 0  # copies added from other nodes' messages (warm_peers: see replace, warm)
        # The store's reads in flight (single flight): here so that a forked child, which
        # gets a fresh cache, does not wait for a parent thread's read.
        self.flights = Flights()
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
        # Ids this node wrote -> monotonic time just after the write (see wrote): until the
        # listener has heard everything published before then, another node's message may
        # carry a value older than the write, and must not add the id (warm_peers).
        self._written: dict[str, float] = {}
        self._written_all: float | None = None  # the same for every id (a clear, or the map overflowed)

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
            if token[0] != self._epoch or token[1] >> 32 != self._generations[slot] >> 32 or ttl <= 0:
                return False
            return self._set(session_id, value, ttl, size)

    def _set(self, session_id: str, value: Any, ttl: float, size: int) -> bool:
        # Caller holds the lock.
        if self.absent is not None:
            self.absent.delete(session_id)
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

    def fill_absent(self, session_id: str, token: tuple[int, int]) -> bool:
        """Remember that Redis did not hold ``session_id`` (read after ``token`` was taken),
        unless an invalidation came in since. True if remembered."""
        absent = self.absent
        if absent is None:
            return False
        slot = hash(session_id) & _SLOT_MASK
        with self._lock:
            if token != (self._epoch, self._generations[slot]):  # nor invalidated, nor created since
                return False
            absent.set(session_id, True)
            return True

    def created(self, session_id: str) -> None:
        """Another node created ``session_id``: forget it as absent and void the absent fills
        in flight; a copy cached (read after the creation) stays."""
        slot = hash(session_id) & _SLOT_MASK
        with self._lock:
            self._generations[slot] += 1
            if self.absent is not None:
                self.absent.delete(session_id)

    def is_absent(self, session_id: str) -> bool:
        """True if ``session_id`` is remembered as absent from Redis (see ``fill_absent``)."""
        absent = self.absent
        return absent is not None and session_id in absent

    def replace(
        self, session_id: str, value: Any, ttl: float, size: int, add: bool = False, heard: float = -math.inf,
    ) -> bool:
        """Install ``value`` (a session carried by another node's update) in place of the
        cached copy if that copy's ``version`` is lower (with ``add``, also where nothing
        is cached: ``warm_peers``, unless this node wrote the id after ``heard``: see
        ``wrote``), else evict it; void fills in flight either way.  True if installed."""
        slot = hash(session_id) & _SLOT_MASK
        with self._lock:
            self._generations[slot] += INVALIDATION
            current = self.cache.pop(session_id, None)
            if (
                (add and self._may_add(session_id, heard) if current is None else current.version < value.version) and ttl > 0
                and size <= self._max_item_bytes and self._set(session_id, value, ttl, size)
            ):
                if current is None:
                    self.warmed += 1
                else:
                    self.replaced += 1
                return True
            self._drop(session_id)
            return False

    def warm(self, session_id: str, value: Any, ttl: float, size: int, heard: float = -math.inf) -> bool:
        """Add ``value`` (what another node's load read, ``warm_peers``) if nothing is
        cached for ``session_id``; a cached copy stays (it is as new: every write since it
        was cached would have evicted it).  Not added either if this node wrote the id
        after ``heard`` (see ``wrote``).  Voids fills in flight when it adds, and so
        does a write of this node in flight (``put_if``): either may be older than the
        value added.  True if added."""
        if ttl <= 0 or size > self._max_item_bytes:
            return False
        slot = hash(session_id) & _SLOT_MASK
        with self._lock:
            if session_id in self.cache or not self._may_add(session_id, heard):
                return False
            self._generations[slot] += INVALIDATION
            if self._set(session_id, value, ttl, size):
                self.warmed += 1
                return True
            return False

    def wrote(self, session_id: str | None = None, heard: float = -math.inf) -> None:
        """This node's write of ``session_id`` (None: of every id, a ``clear``) returned:
        call it before updating the cache for it.  Another node's message published before
        the write (a ``filled`` read, an update) may reach the listener after it, and this
        node's own echo, which follows it, changes nothing here: until the listener has
        heard past this moment (``heard`` of ``warm``/``replace``: a PONG to a PING sent
        later), such a message must not add the id.  ``heard``: where the listener stands
        now (the writes before it are forgotten when the map is full)."""
        now = time.monotonic()
        with self._lock:
            written = self._written
            if session_id is not None and session_id not in written and len(written) >= MAX_WRITTEN:
                for old in [i for i, at in written.items() if at < heard]:
                    del written[old]
            if session_id is None or (session_id not in written and len(written) >= MAX_WRITTEN):
                written.clear()
                self._written_all = now
            else:
                written[session_id] = now

    def _may_add(self, session_id: str, heard: float) -> bool:
        # Caller holds the lock.  False while a write of this node may be newer than what a
        # message heard now carries (see wrote), or has an unknown outcome (mark_uncertain);
        # forgets the writes heard past.
        every = self._written_all
        if every is not None and every >= heard:
            return False
        if self._uncertain or self._uncertain_all:
            # A write of unknown outcome (a failed logout, say): its copy was dropped so that
            # nothing, stale_if_error included, serves it; a peer's copy must not come back.
            now = time.monotonic()
            if now < self._uncertain_all or now < self._uncertain.get(session_id, 0.0):
                return False
        at = self._written.get(session_id)
        if at is None:
            return True
        if at >= heard:
            return False
        del self._written[session_id]
        return True

    def cached(self, session_id: str) -> bool:
        """True if a copy of ``session_id`` is cached (no hit or miss is counted)."""
        return session_id in self.cache

    def _drop(self, session_id: str) -> bool:
        # Caller holds the lock.
        if self.absent is not None:
            self.absent.delete(session_id)
        size = self._sizes.pop(session_id, None)
        if size is not None:
            self._bytes -= size
        return self.cache.delete(session_id)

    def put_if(self, session_id: str, value: Any, token: tuple[int, int], ttl: float, size: int = 0) -> bool:
        """Cache a value this node just wrote, unless an invalidation came in since ``token``
        (taken before the write: another node may have written a newer value meanwhile).

        Either way, fills of older data still in flight are voided.
        """
        slot = hash(session_id) & _SLOT_MASK
        with self._lock:
            generation = self._generations[slot]
            unchanged = token[0] == self._epoch and token[1] >> 32 == generation >> 32
            self._generations[slot] = generation + INVALIDATION
            if unchanged and ttl > 0 and self._set(session_id, value, ttl, size):
                return True
            self._drop(session_id)
            return False

    def invalidate(self, session_id: str) -> bool:
        """Evict ``session_id`` and void fills in flight for it; True if it was cached."""
        slot = hash(session_id) & _SLOT_MASK
        with self._lock:
            self._generations[slot] += INVALIDATION
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
            self._generations[slot] += INVALIDATION
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

    def watching(self) -> bool:
        """True while some id has a write of unknown outcome (``mark_uncertain``): then this
        node's own messages must go through ``own_message``."""
        return bool(self._uncertain or self._uncertain_all)

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
            if self.absent is not None:
                self.absent.clear()

    def evict_where(self, doomed: Callable[[str], bool]) -> int:
        """Evict every cached session, and forget every id remembered as absent, for which
        ``doomed(session_id)`` is true; void every fill in flight (one of those ids may be
        among them).  Returns how many cached sessions were evicted.  O(entries)."""
        with self._lock:
            self._epoch += 1
            evicted = 0
            for session_id in list(self.cache.keys()):
                if doomed(session_id) and self._drop(session_id):
                    evicted += 1
            absent = self.absent
            if absent is not None:
                for session_id in list(absent.keys()):
                    if doomed(session_id):
                        absent.delete(session_id)
            return evicted

    def after_fork(self) -> None:
        """In a child made by ``os.fork()``: a fresh lock (a parent thread may have held
        this one at the fork) and an empty cache."""
        self._lock = threading.Lock()
        self.flights = Flights()  # the parent's reads in flight never land here
        self.flush()

    def stats(self) -> CacheStats:
        """The cache's hit/miss/eviction/expiration counters."""
        return self.cache.stats

    def __len__(self) -> int:
        return len(self.cache)
