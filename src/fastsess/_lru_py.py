"""Pure-Python twin of the compiled cache core (``fastsess._lru``).

Same classes, same behaviour, same tests; used when the extension is missing or
``FASTSESS_NO_EXTENSIONS=1`` is set.  Recency order lives in an ``OrderedDict``
(its ``move_to_end`` is O(1)); expiry order in a second ``OrderedDict`` for
entries with the default TTL (write order is expiry order when every entry has
the same TTL) and a lazily-pruned heap for per-entry TTLs.

Thread safety comes from one ``RLock`` per cache.  That is acceptable here and
only here: the compiled core is the fast path and uses a per-object critical
section instead.  User code (``getsizeof``, ``__missing__``, the destructor of
an evicted value) never runs while the lock is held.
"""

from __future__ import annotations

import heapq
import threading
import time as _time
from collections import OrderedDict
from collections.abc import Callable, Hashable, ItemsView, Iterator, KeysView, MutableMapping, ValuesView
from types import GenericAlias
from typing import Any

from ._cache_common import CacheStats, check_capacity, check_item_size, check_ttl, make_stats

__all__ = ["CacheStats", "LRUCache", "LocalCache", "TTLCache"]

_MISSING: Any = object()
_INF = float("inf")


class _Entry:
    __slots__ = ("expires", "fifo", "key", "live", "size", "value")

    def __init__(self, key: Any, value: Any, size: int, expires: float, fifo: bool) -> None:
        self.key = key
        self.value = value
        self.size = size
        self.expires = expires
        self.fifo = fifo  # True: tracked by the write-order list, False: by the heap
        self.live = True


class _Core:
    """Hash map + recency order + expiry order shared by every cache class."""

    __slots__ = (
        "__weakref__",
        "_cap",
        "_currsize",
        "_data",
        "_evictions",
        "_expirations",
        "_fifo",
        "_heap",
        "_hits",
        "_lock",
        "_misses",
        "_seq",
        "_sizeof",
    )

    def _init_core(self, cap: int, sizeof: Callable[[Any], int] | None) -> None:
        self._cap = cap
        self._sizeof = sizeof
        self._data: OrderedDict[Hashable, _Entry] = OrderedDict()  # least recently used first
        self._fifo: OrderedDict[Hashable, _Entry] = OrderedDict()  # oldest write first
        self._heap: list[tuple[float, int, _Entry]] = []
        self._seq = 0
        self._currsize = 0
        self._lock = threading.RLock()
        self._hits = self._misses = self._evictions = self._expirations = 0

    # -- structure updates; callers hold the lock ---------------------------------

    def _unlink(self, entry: _Entry) -> None:
        del self._data[entry.key]
        if entry.fifo:
            del self._fifo[entry.key]
        entry.live = False
        self._currsize -= entry.size

    def _expired_head(self, now: float) -> _Entry | None:
        fifo = self._fifo
        if fifo:
            head = next(iter(fifo.values()))
            if not now < head.expires:
                return head
        heap = self._heap
        while heap:
            expires, _, entry = heap[0]
            if not entry.live or entry.expires != expires:
                heapq.heappop(heap)  # superseded: the entry was removed or rewritten
            elif not now < expires:
                return entry
            else:
                break
        return None

    def _purge(self, now: float, dropped: list[_Entry]) -> None:
        while (entry := self._expired_head(now)) is not None:
            self._unlink(entry)
            self._expirations += 1
            dropped.append(entry)

    def _insert(self, key: Any, value: Any, size: int, expires: float, fifo: bool, dropped: list[_Entry]) -> None:
        old = self._data.get(key)
        if old is not None:
            self._unlink(old)
            dropped.append(old)
        data = self._data
        while data and self._currsize + size > self._cap:
            victim = next(iter(data.values()))
            self._unlink(victim)
            self._evictions += 1
            dropped.append(victim)
        entry = _Entry(key, value, size, expires, fifo)
        data[key] = entry
        if fifo:
            self._fifo[key] = entry
        else:
            self._seq += 1
            heapq.heappush(self._heap, (expires, self._seq, entry))
            if len(self._heap) > 2 * len(data) + 64:
                self._heap = [item for item in self._heap if item[2].live and item[2].expires == item[0]]
                heapq.heapify(self._heap)
        self._currsize += size

    def _lookup(self, key: Any, now: float, dropped: list[_Entry]) -> _Entry | None:
        entry = self._data.get(key)
        if entry is None:
            self._misses += 1
            return None
        if not now < entry.expires:
            self._unlink(entry)
            self._expirations += 1
            self._misses += 1
            dropped.append(entry)
            return None
        self._data.move_to_end(key)
        self._hits += 1
        return entry

    def _live_keys(self, now: float) -> list[Any]:
        with self._lock:
            return [k for k, e in self._data.items() if now < e.expires]

    def _clear(self) -> list[_Entry]:
        with self._lock:
            dropped = list(self._data.values())
            for entry in dropped:
                entry.live = False
            self._data = OrderedDict()
            self._fifo = OrderedDict()
            self._heap = []
            self._currsize = 0
        return dropped

    def _entries_state(self) -> list[tuple[Any, Any, int, float, bool]]:
        with self._lock:
            return [(e.key, e.value, e.size, e.expires, e.fifo) for e in self._data.values()]

    def _restore(self, entries: list[tuple[Any, Any, int, float, bool]]) -> None:
        dropped: list[_Entry] = []
        with self._lock:
            for key, value, size, expires, fifo in entries:
                self._insert(key, value, size, expires, fifo, dropped)
            # write order must be expiry order for the default-TTL list
            self._fifo = OrderedDict(sorted(self._fifo.items(), key=lambda kv: kv[1].expires))


class _MappingCache(_Core, MutableMapping):
    """The cachetools-compatible ``MutableMapping`` surface of LRUCache and TTLCache."""

    __slots__ = ("_maxsize",)

    __class_getitem__ = classmethod(GenericAlias)

    def __init__(self, maxsize: float, getsizeof: Callable[[Any], int] | None = None) -> None:
        cap = check_capacity(maxsize)
        if getsizeof is None and type(self).getsizeof is not _MappingCache.getsizeof:
            getsizeof = self.getsizeof  # a subclass overriding getsizeof, as cachetools allows
        self._maxsize = maxsize
        self._init_core(cap, getsizeof)

    def _now(self) -> float:
        return 0.0

    def _size_of(self, value: Any) -> int:
        sizeof = self._sizeof
        if sizeof is None:
            if self._cap < 1:
                raise ValueError("value too large")
            return 1
        return check_item_size(sizeof(value), self._cap)

    def _expires_for(self, now: float) -> float:
        return _INF

    def __getitem__(self, key: Any) -> Any:
        dropped: list[_Entry] = []
        with self._lock:
            entry = self._lookup(key, self._now(), dropped)
            if entry is not None:
                return entry.value
        del dropped  # an expired value's destructor runs here, outside the lock
        return self.__missing__(key)

    def __missing__(self, key: Any) -> Any:
        """Called by ``cache[key]`` on a miss; the default raises ``KeyError``."""
        raise KeyError(key)

    def __setitem__(self, key: Any, value: Any) -> None:
        hash(key)  # TypeError for unhashable keys before anything else
        size = self._size_of(value)  # user code: outside the lock
        dropped: list[_Entry] = []
        with self._lock:
            now = self._now()
            self._purge(now, dropped)
            self._insert(key, value, size, self._expires_for(now), True, dropped)

    def __delitem__(self, key: Any) -> None:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                raise KeyError(key)
            self._unlink(entry)
            if not self._now() < entry.expires:
                raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        entry = self._data.get(key)
        return entry is not None and self._now() < entry.expires

    def __iter__(self) -> Iterator[Any]:
        return iter(self._live_keys(self._now()))

    def __len__(self) -> int:
        self._expire()
        return len(self._data)

    def __repr__(self) -> str:
        items = {k: self._data[k].value for k in self._live_keys(self._now()) if k in self._data}
        return f"{type(self).__name__}({items!r}, maxsize={self._maxsize!r}, currsize={self.currsize!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MutableMapping) and not hasattr(other, "items"):
            return NotImplemented
        return dict(self.items()) == dict(other.items())  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def _expire(self, time: float | None = None) -> list[tuple[Any, Any]]:
        dropped: list[_Entry] = []
        with self._lock:
            self._purge(self._now() if time is None else time, dropped)
        return [(e.key, e.value) for e in dropped]

    def get(self, key: Any, default: Any = None) -> Any:
        """Return the value for ``key`` (refreshing its recency) or ``default``. O(1)."""
        dropped: list[_Entry] = []
        with self._lock:
            entry = self._lookup(key, self._now(), dropped)
            return default if entry is None else entry.value

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value, or ``default``; ``KeyError`` without one. O(1)."""
        with self._lock:
            entry = self._data.get(key)
            if entry is not None:
                self._unlink(entry)
                if self._now() < entry.expires:
                    return entry.value
        if default is _MISSING:
            raise KeyError(key)
        return default

    def setdefault(self, key: Any, default: Any = None) -> Any:
        """Return ``self[key]`` if present, else store and return ``default``. O(1)."""
        value = self.get(key, _MISSING)
        if value is _MISSING:
            self[key] = value = default
        return value

    def popitem(self) -> tuple[Any, Any]:
        """Remove and return the least recently used live ``(key, value)`` pair. O(1).

        Raises:
            KeyError: the cache is empty.
        """
        dropped: list[_Entry] = []
        with self._lock:
            self._purge(self._now(), dropped)
            if not self._data:
                raise KeyError(f"{type(self).__name__} is empty")
            entry = next(iter(self._data.values()))
            self._unlink(entry)
            return entry.key, entry.value

    def clear(self) -> None:
        """Remove every item. O(n) for the release of the values only."""
        self._clear()

    def keys(self) -> KeysView[Any]:
        """A live view of the keys (least recently used first)."""
        return KeysView(self)

    def values(self) -> ValuesView[Any]:
        """A live view of the values, in key order."""
        return ValuesView(self)

    def items(self) -> ItemsView[Any, Any]:
        """A live view of the (key, value) pairs, in key order."""
        return ItemsView(self)

    @property
    def maxsize(self) -> float:
        """The maximum size of the cache, as given to the constructor."""
        return self._maxsize

    @property
    def currsize(self) -> int:
        """The sum of the sizes of the live items."""
        self._expire()
        return self._currsize

    def getsizeof(self, value: Any) -> int:
        """Return the size of ``value`` (1 unless a ``getsizeof`` callable was given)."""
        return 1 if self._sizeof is None else self._sizeof(value)

    def __copy__(self) -> _MappingCache:
        cls, args, state = self.__reduce__()
        new = cls(*args)
        new.__setstate__(state)
        return new

    def __setstate__(self, state: tuple[list[tuple[Any, Any, int, float, bool]], dict[str, Any] | None]) -> None:
        entries, attrs = state
        if attrs:
            self.__dict__.update(attrs)
        self._restore(entries)


class LRUCache(_MappingCache):
    """Least-recently-used cache; a drop-in replacement for ``cachetools.LRUCache``.

    Every operation is O(1).  ``getsizeof(value)`` gives each item's size
    (default 1); inserting evicts least recently used items until the new one
    fits.
    """

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._maxsize, self._sizeof), (self._entries_state(), getattr(self, "__dict__", None)))


class TTLCache(_MappingCache):
    """LRU cache whose items expire ``ttl`` seconds after they were written.

    A drop-in replacement for ``cachetools.TTLCache``.  Expiry follows write
    time, not access time; expired items are invisible to ``len``, ``in``,
    iteration and lookups and are purged on writes.  Every operation is O(1)
    (``expire`` is O(number expired)).
    """

    __slots__ = ("_timer", "_ttl")

    def __init__(
        self,
        maxsize: float,
        ttl: float,
        timer: Callable[[], float] = _time.monotonic,
        getsizeof: Callable[[Any], int] | None = None,
    ) -> None:
        self._ttl = check_ttl(ttl)
        if not callable(timer):
            raise ValueError(f"timer must be callable, not {timer!r}")
        self._timer = timer
        super().__init__(maxsize, getsizeof)

    def _now(self) -> float:
        return self._timer()

    def _expires_for(self, now: float) -> float:
        return now + self._ttl

    @property
    def ttl(self) -> float:
        """The time-to-live of the cache's items, in seconds."""
        return self._ttl

    def expire(self, time: float | None = None) -> list[tuple[Any, Any]]:
        """Remove expired items; return them as a list of ``(key, value)`` pairs. O(expired)."""
        return self._expire(time)

    @property
    def timer(self) -> Callable[[], float]:
        """The clock the cache reads (``time.monotonic`` by default)."""
        return self._timer

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (self._maxsize, self._ttl, self._timer, self._sizeof),
            (self._entries_state(), getattr(self, "__dict__", None)),
        )


class LocalCache(_Core):
    """The session-facing cache: LRU with a default TTL and per-entry TTLs.

    ``get``/``set``/``delete`` are O(1) for entries with the default TTL and
    O(log n) for entries given their own ``ttl``.  ``stats`` counts hits,
    misses, LRU evictions and expirations.

    Raises:
        ValueError: ``max_size`` < 1, or ``ttl`` not a non-negative number.
    """

    __slots__ = ("_max_size", "_timer", "_ttl")

    __class_getitem__ = classmethod(GenericAlias)

    def __init__(self, max_size: int = 10_000, ttl: float = 30.0, timer: Callable[[], float] | None = None) -> None:
        self._max_size = check_capacity(max_size, "max_size", minimum=1)
        self._ttl = check_ttl(ttl)
        if timer is not None and not callable(timer):
            raise ValueError(f"timer must be callable, not {timer!r}")
        self._timer = timer
        self._init_core(self._max_size, None)

    def _now(self) -> float:
        timer = self._timer
        return _time.monotonic() if timer is None else timer()

    @property
    def max_size(self) -> int:
        """The most entries the cache holds."""
        return self._max_size

    @property
    def ttl(self) -> float:
        """The default time-to-live, in seconds."""
        return self._ttl

    def get(self, key: Any, default: Any = None) -> Any:
        """Return the live value for ``key`` or ``default``; a hit refreshes recency. O(1).

        Raises:
            TypeError: ``key`` is unhashable.
        """
        dropped: list[_Entry] = []
        with self._lock:
            entry = self._lookup(key, self._now(), dropped)
            return default if entry is None else entry.value

    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (default: the cache's TTL).

        Evicts the least recently used entry when full.  O(1), or O(log n)
        with a per-entry ``ttl``.

        Raises:
            TypeError: ``key`` is unhashable.
            ValueError: ``ttl`` is negative or not a number.
        """
        hash(key)
        fifo = ttl is None
        seconds = self._ttl if fifo else check_ttl(ttl)
        dropped: list[_Entry] = []
        with self._lock:
            now = self._now()
            self._purge(now, dropped)
            self._insert(key, value, 1, now + seconds, fifo, dropped)

    def delete(self, key: Any) -> bool:
        """Remove ``key``; return whether a live entry was removed. O(1) (O(log n) heap upkeep is lazy)."""
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return False
            self._unlink(entry)
            return self._now() < entry.expires

    def pop(self, key: Any, default: Any = None) -> Any:
        """Remove ``key`` and return its live value, or ``default``. O(1)."""
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return default
            self._unlink(entry)
            return entry.value if self._now() < entry.expires else default

    def clear(self) -> None:
        """Remove every entry (statistics are kept; see ``reset_stats``)."""
        self._clear()

    def expire(self) -> int:
        """Remove the entries whose TTL has passed and return how many. O(expired)."""
        dropped: list[_Entry] = []
        with self._lock:
            self._purge(self._now(), dropped)
        return len(dropped)

    def keys(self) -> list[Any]:
        """The live keys, least recently used first. O(n)."""
        return self._live_keys(self._now())

    def __len__(self) -> int:
        self.expire()
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        entry = self._data.get(key)
        return entry is not None and self._now() < entry.expires

    def __iter__(self) -> Iterator[Any]:
        return iter(self.keys())

    def __repr__(self) -> str:
        return f"LocalCache(max_size={self._max_size}, ttl={self._ttl}, size={len(self)})"

    @property
    def stats(self) -> CacheStats:
        """A snapshot of hits, misses, evictions, expirations, size and hit rate."""
        size = len(self)  # purges first, so the expirations below include what it removed
        with self._lock:
            return make_stats(self._hits, self._misses, self._evictions, self._expirations, size, self._max_size)

    def reset_stats(self) -> None:
        """Zero the hit, miss, eviction and expiration counters."""
        with self._lock:
            self._hits = self._misses = self._evictions = self._expirations = 0

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._max_size, self._ttl, self._timer), (self._entries_state(), getattr(self, "__dict__", None)))

    def __setstate__(self, state: tuple[list[tuple[Any, Any, int, float, bool]], dict[str, Any] | None]) -> None:
        entries, attrs = state
        if attrs:
            self.__dict__.update(attrs)
        self._restore(entries)
