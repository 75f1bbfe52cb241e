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

import copy as _copy
import copyreg
import heapq
import threading
import time as _time
from collections import OrderedDict
from collections.abc import (
    Callable,
    Hashable,
    ItemsView,
    Iterator,
    KeysView,
    Mapping,
    MutableMapping,
    ValuesView,
)
from datetime import timedelta
from types import GenericAlias
from typing import Any, ClassVar

from ._cache_common import (
    HOOK_CONTAINS,
    HOOK_DELITEM,
    HOOK_EXPIRE,
    HOOK_GETITEM,
    HOOK_POPITEM,
    CacheStats,
    check_capacity,
    check_item_size,
    check_ttl,
    make_stats,
    mapping_repr,
    overridden_hooks,
    timer_seconds,
)

__all__ = ["CacheStats", "LRUCache", "LocalCache", "TTLCache"]

_MISSING: Any = object()
_INF = float("inf")


class _Entry:
    __slots__ = ("expires", "fifo", "key", "live", "size", "value")

    def __init__(self, key: Any, value: Any, size: float, expires: float, fifo: bool) -> None:
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
        "_index",
        "_lock",
        "_misses",
        "_seq",
        "_sizeof",
    )

    def _init_core(self, cap: float, sizeof: Callable[[Any], float] | None) -> None:
        self._cap = cap  # with getsizeof: maxsize as given (Python numbers never overflow)
        self._sizeof = sizeof
        self._data: OrderedDict[Hashable, _Entry] = OrderedDict()  # least recently used first
        self._index: dict[Hashable, _Entry] = {}  # insertion order: what iteration follows
        self._fifo: OrderedDict[Hashable, _Entry] = OrderedDict()  # oldest write first
        self._heap: list[tuple[float, int, _Entry]] = []
        self._seq = 0
        self._currsize: float = 0  # an exact int unless getsizeof returns floats
        self._lock = threading.RLock()
        self._hits = self._misses = self._evictions = self._expirations = 0

    # -- structure updates; callers hold the lock ---------------------------------

    def _unlink(self, entry: _Entry, keep_index: bool = False) -> None:
        del self._data[entry.key]
        if not keep_index:
            del self._index[entry.key]
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

    def _insert(self, key: Any, value: Any, size: float, expires: float, fifo: bool, dropped: list[_Entry]) -> None:
        entry = _Entry(key, value, size, expires, fifo)
        old = self._data.get(key)
        if old is not None:
            self._unlink(old, keep_index=True)
            self._index[key] = entry  # an overwrite keeps its place in iteration order, as in a dict
            dropped.append(old)
        data = self._data
        while data and self._currsize + size > self._cap:
            victim = next(iter(data.values()))
            self._unlink(victim)
            self._evictions += 1
            dropped.append(victim)
        data[key] = entry
        if old is None:
            self._index[key] = entry
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
            old_index = self._index
            self._data = OrderedDict()
            self._index = {}
            self._fifo = OrderedDict()
            self._heap = []
            self._currsize = 0
        old_index.clear()  # a loop over it (LRUCache iteration) raises RuntimeError, as with dict.clear()
        return dropped

    def _dump(self, now: float) -> tuple[list[tuple[Any, Any, float, float, bool]], list[int]]:
        """Live entries in insertion order, and their recency order as indexes into them."""
        with self._lock:
            entries = [e for e in self._index.values() if now < e.expires]
            position = {id(e): i for i, e in enumerate(entries)}
            lru = [position[id(e)] for e in self._data.values() if id(e) in position]
        return [(e.key, e.value, e.size, e.expires, e.fifo) for e in entries], lru

    def _load(self, entries: list[tuple[Any, Any, float, float, bool]], lru: list[int] | None = None) -> None:
        """Insert ``_dump()``'s entries, keeping both orders (``lru=None``: entries are in recency order)."""
        dropped: list[_Entry] = []
        with self._lock:
            for key, value, size, expires, fifo in entries:
                self._insert(key, value, size, expires, fifo, dropped)
            for i in range(len(entries)) if lru is None else lru:
                if entries[i][0] in self._data:
                    self._data.move_to_end(entries[i][0])
            # write order must be expiry order for the default-TTL list
            self._fifo = OrderedDict(sorted(self._fifo.items(), key=lambda kv: kv[1].expires))


class _Timer:
    """A ``TTLCache``'s clock, like cachetools' timer wrapper.

    Call it for the current time; ``with cache.timer as now:`` freezes the
    cache's time at ``now`` for the block (nested blocks see the same time).
    Other attributes are those of the wrapped timer.
    """

    __slots__ = ("_frozen", "_nesting", "_raw", "wrapped")

    def __init__(self, timer: Callable[[], Any] = _time.monotonic) -> None:
        if not callable(timer):
            raise ValueError(f"timer must be callable, not {timer!r}")  # noqa: TRY004 (cachetools-style ValueError, tested)
        self.wrapped = timer
        self._nesting = 0
        self._raw: Any = None
        self._frozen = 0.0

    def _seconds(self) -> float:
        if self._nesting:
            return self._frozen
        t = self.wrapped()
        return t if type(t) is float else timer_seconds(t)

    def __call__(self) -> Any:
        if self._nesting:
            return self._raw
        return self.wrapped()

    def __enter__(self) -> Any:
        if self._nesting == 0:
            raw = self.wrapped()
            self._frozen = timer_seconds(raw)
            self._raw = raw
        self._nesting += 1
        return self._raw

    def __exit__(self, *exc_info: object) -> None:
        if self._nesting > 0:
            self._nesting -= 1
            if self._nesting == 0:
                self._raw = None

    def __getattr__(self, name: str) -> Any:
        if name == "wrapped":  # not set yet (during unpickling)
            raise AttributeError(name)
        return getattr(self.wrapped, name)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Timer, (self.wrapped,))

    def __copy__(self) -> _Timer:
        return _Timer(self.wrapped)

    def __deepcopy__(self, memo: dict[int, Any]) -> _Timer:
        return _Timer(_copy.deepcopy(self.wrapped, memo))


class _CacheValuesView(ValuesView):  # type: ignore[type-arg]
    """``cache.values()``: skips an entry that expires or goes away during the loop."""

    __slots__ = ()

    def __iter__(self) -> Iterator[Any]:
        return self._mapping._iter_entries(False)  # type: ignore[attr-defined,no-any-return]

    def __contains__(self, value: object) -> bool:
        return any(v is value or v == value for v in self)


class _CacheItemsView(ItemsView):  # type: ignore[type-arg]
    """``cache.items()``: skips an entry that expires or goes away during the loop."""

    __slots__ = ()

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return self._mapping._iter_entries(True)  # type: ignore[attr-defined,no-any-return]


class _MappingCache(_Core, MutableMapping):  # type: ignore[type-arg]
    """The cachetools-compatible ``MutableMapping`` surface of LRUCache and TTLCache."""

    __slots__ = ("_maxsize", "_sizeof_arg")

    __class_getitem__: ClassVar[Any] = classmethod(GenericAlias)

    # HOOK_* bits of the cachetools hooks a subclass overrides (decided at class creation):
    # the exact classes and subclasses overriding none of them keep the fast paths.
    _fastsess_hooks = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._fastsess_hooks = 0 if cls.__module__ == __name__ else overridden_hooks(cls, (TTLCache, LRUCache))

    def __init__(self, maxsize: float, getsizeof: Callable[[Any], float] | None = None) -> None:
        cap: float = check_capacity(maxsize)
        self._maxsize = maxsize
        self._sizeof_arg = getsizeof
        if getsizeof is None and type(self).getsizeof is not _MappingCache.getsizeof:
            getsizeof = self.getsizeof  # a subclass overriding getsizeof, as cachetools allows
        self._init_core(cap if getsizeof is None else maxsize, getsizeof)

    def _now(self) -> float:
        return 0.0

    def _size_of(self, value: Any) -> float:
        sizeof = self._sizeof
        if sizeof is None:
            if self._cap < 1:
                raise ValueError("value too large")
            return 1
        return check_item_size(sizeof(value), self._maxsize)

    def _expires_for(self, now: float) -> float:
        return _INF

    # -- cachetools hooks: used only when a subclass overrides one of them -------------

    def _frozen(self) -> Any:
        """A context that freezes a TTLCache's time (like ``with self.timer:``)."""
        return _NO_FREEZE

    def _over(self, key: Any, size: float) -> bool:
        """Does storing ``size`` under ``key`` need an eviction first?"""
        dropped: list[_Entry] = []
        with self._lock:
            self._purge(self._now(), dropped)
            entry = self._data.get(key)
            others = len(self._data) - (entry is not None)
            if others <= 0:
                return False  # nothing else to evict; size <= maxsize was checked
            return self._currsize - (0 if entry is None else entry.size) + size > self._cap

    def _setitem_hooked(self, key: Any, value: Any) -> None:
        # cachetools' order: expire(), then popitem() until the item fits, then store.
        size = self._size_of(value)
        with self._frozen() as time:
            if self._fastsess_hooks & HOOK_EXPIRE:
                self.expire(time)  # type: ignore[attr-defined]
            if self._fastsess_hooks & (HOOK_POPITEM | HOOK_DELITEM):
                while self._over(key, size):
                    self.popitem()
            self._store_now(key, value, size)

    def _popitem_hooked(self) -> tuple[Any, Any]:
        with self._frozen() as time:
            if self._fastsess_hooks & HOOK_EXPIRE:
                self.expire(time)  # type: ignore[attr-defined]
            dropped: list[_Entry] = []
            with self._lock:
                self._purge(self._now(), dropped)
                entry = next(iter(self._data.values()), None)
            if entry is None:
                raise KeyError(f"{type(self).__name__} is empty") from None
            del self[entry.key]  # an overridden __delitem__ sees the eviction, as in cachetools
            return entry.key, entry.value

    def _expire_hook(self) -> None:
        # cachetools calls expire() from len(), currsize and repr(); so do we when it is overridden
        with self._frozen() as time:
            self.expire(time)  # type: ignore[attr-defined]

    # -- the mapping --------------------------------------------------------------------

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

    def _store_now(self, key: Any, value: Any, size: float) -> None:
        dropped: list[_Entry] = []
        with self._lock:
            now = self._now()
            self._purge(now, dropped)
            self._insert(key, value, size, self._expires_for(now), True, dropped)

    def __setitem__(self, key: Any, value: Any) -> None:
        hash(key)  # TypeError for unhashable keys before anything else
        if self._fastsess_hooks & (HOOK_POPITEM | HOOK_DELITEM | HOOK_EXPIRE):
            self._setitem_hooked(key, value)
            return
        self._store_now(key, value, self._size_of(value))  # getsizeof (user code) runs outside the lock

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
        # Insertion order, like cachetools (overwriting keeps a key's place).  LRUCache
        # iterates the index itself, so adding or removing a key during the loop raises
        # RuntimeError like a dict; TTLCache iterates a snapshot of the keys and skips
        # those expired or removed since, as cachetools does.
        if isinstance(self, TTLCache):
            with self._lock:
                keys = list(self._index)
            return self._iter_live(keys)
        return iter(self._index)

    def _iter_live(self, keys: list[Any]) -> Iterator[Any]:
        for key in keys:
            entry = self._index.get(key)
            if entry is not None and entry.live and self._now() < entry.expires:
                yield key

    def _iter_entries(self, pairs: bool) -> Iterator[Any]:
        """Values or items in iteration order; each read refreshes recency, like ``cache[key]``."""
        if self._fastsess_hooks & (HOOK_GETITEM | HOOK_CONTAINS):
            # cachetools reads through the subclass's __getitem__, with time frozen
            for key in self:
                with self._frozen():
                    if key not in self:
                        continue
                    value = self[key]
                yield (key, value) if pairs else value
            return
        for key in self:
            dropped: list[_Entry] = []
            with self._lock:
                entry = self._lookup(key, self._now(), dropped)
            if entry is not None:
                yield (key, entry.value) if pairs else entry.value

    def __len__(self) -> int:
        if self._fastsess_hooks & HOOK_EXPIRE:
            self._expire_hook()
        self._expire()
        return len(self._data)

    def _items_in_order(self) -> dict[Any, Any]:
        now = self._now()
        with self._lock:
            pairs = [(e.key, e.value) for e in self._index.values() if now < e.expires]
        return dict(pairs)

    def __repr__(self) -> str:
        if self._fastsess_hooks & HOOK_EXPIRE:
            self._expire_hook()
        return mapping_repr(self, self._items_in_order)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return self._items_in_order() == dict(other.items())

    __hash__ = None  # type: ignore[assignment]

    def _expire(self, time: Any = None) -> list[tuple[Any, Any]]:
        dropped: list[_Entry] = []
        with self._lock:
            self._purge(self._now() if time is None else timer_seconds(time), dropped)
        return [(e.key, e.value) for e in dropped]

    def get(self, key: Any, default: Any = None) -> Any:
        """Return the value for ``key`` (refreshing its recency) or ``default``. O(1).

        A subclass that overrides ``__getitem__`` or ``__contains__`` gets
        cachetools' ``get`` (``self[key] if key in self else default``).
        """
        if self._fastsess_hooks & (HOOK_GETITEM | HOOK_CONTAINS):
            with self._frozen():
                return self[key] if key in self else default  # noqa: SIM401 (cachetools' get, through the overrides)
        dropped: list[_Entry] = []
        with self._lock:
            entry = self._lookup(key, self._now(), dropped)
            return default if entry is None else entry.value

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value, or ``default``; ``KeyError`` without one. O(1).

        A subclass overriding ``__getitem__``, ``__contains__`` or ``__delitem__``
        gets cachetools' ``pop`` (through those methods).
        """
        if self._fastsess_hooks & (HOOK_GETITEM | HOOK_CONTAINS | HOOK_DELITEM):
            with self._frozen():
                if key in self:
                    value = self[key]
                    del self[key]
                    return value
        else:
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
        if self._fastsess_hooks & (HOOK_GETITEM | HOOK_CONTAINS):
            with self._frozen():
                if key in self:
                    return self[key]
                self[key] = default
                return default
        value = self.get(key, _MISSING)
        if value is _MISSING:
            self[key] = value = default
        return value

    def popitem(self) -> tuple[Any, Any]:
        """Remove and return the least recently used live ``(key, value)`` pair. O(1).

        Raises:
            KeyError: the cache is empty (raised ``from None``, like cachetools).
        """
        if self._fastsess_hooks & (HOOK_DELITEM | HOOK_EXPIRE):
            return self._popitem_hooked()
        dropped: list[_Entry] = []
        with self._lock:
            self._purge(self._now(), dropped)
            entry = next(iter(self._data.values()), None)
            if entry is not None:
                self._unlink(entry)
        if entry is None:
            raise KeyError(f"{type(self).__name__} is empty") from None
        return entry.key, entry.value

    def clear(self) -> None:
        """Remove every item. O(n) for the release of the values only."""
        self._clear()

    def keys(self) -> KeysView[Any]:
        """A live view of the keys, in insertion order."""
        return KeysView(self)

    def values(self) -> ValuesView[Any]:
        """A live view of the values, in key order; an entry that expires mid-loop is skipped."""
        return _CacheValuesView(self)

    def items(self) -> ItemsView[Any, Any]:
        """A live view of the (key, value) pairs, in key order; expired entries are skipped."""
        return _CacheItemsView(self)

    @property
    def maxsize(self) -> float:
        """The maximum size of the cache, as given to the constructor."""
        return self._maxsize

    @property
    def currsize(self) -> float:
        """The sum of the sizes of the live items (an exact int, or a float if ``getsizeof`` gave floats)."""
        if self._fastsess_hooks & HOOK_EXPIRE:
            self._expire_hook()
        self._expire()
        return self._currsize

    def getsizeof(self, value: Any) -> float:
        """Return the size of ``value`` (1 unless a ``getsizeof`` callable was given)."""
        return 1 if self._sizeof is None else self._sizeof(value)

    # -- copy and pickle: no __init__ call, so subclasses with their own __init__ work ----

    def _config(self) -> tuple[Any, ...]:
        return (self._maxsize, self._sizeof_arg)

    def _configure(self, maxsize: float, getsizeof: Callable[[Any], float] | None) -> None:
        _MappingCache.__init__(self, maxsize, getsizeof)

    def __reduce__(self) -> tuple[Any, ...]:
        entries, lru = self._dump(self._now())
        state = (self._config(), entries, lru, getattr(self, "__dict__", None))
        return (copyreg.__newobj__, (type(self),), state)  # type: ignore[attr-defined]

    def __copy__(self) -> _MappingCache:
        cls = type(self)
        new = cls.__new__(cls)
        new.__setstate__(self.__reduce__()[2])
        return new

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        if len(state) == 2:  # fastsess 0.1 pickles: built by __init__, entries in recency order
            entries, attrs = state
            lru = None
        else:
            config, entries, lru, attrs = state
            self._configure(*config)
        if attrs:
            self.__dict__.update(attrs)
        self._load(entries, lru)


class _NoFreeze:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


_NO_FREEZE = _NoFreeze()


class LRUCache(_MappingCache):
    """Least-recently-used cache; a drop-in replacement for ``cachetools.LRUCache``.

    Every operation is O(1).  ``getsizeof(value)`` gives each item's size
    (default 1; ints or floats); inserting evicts least recently used items
    until the new one fits.
    """

    __slots__ = ()


class TTLCache(_MappingCache):
    """LRU cache whose items expire ``ttl`` seconds after they were written.

    A drop-in replacement for ``cachetools.TTLCache``.  ``ttl`` may be a number
    of seconds or a ``timedelta``, and ``timer`` may return seconds or a
    ``datetime`` (e.g. ``timer=datetime.now``).  Expiry follows write time, not
    access time; expired items are invisible to ``len``, ``in``, iteration and
    lookups and are purged on writes.  Every operation is O(1) (``expire`` is
    O(number expired)).
    """

    __slots__ = ("_clock", "_ttl", "_ttl_arg")

    def __init__(
        self,
        maxsize: float,
        ttl: float | timedelta,
        timer: Callable[[], Any] = _time.monotonic,
        getsizeof: Callable[[Any], float] | None = None,
    ) -> None:
        self._ttl = check_ttl(ttl)
        self._ttl_arg = ttl
        self._clock = _Timer(timer)
        super().__init__(maxsize, getsizeof)

    def _now(self) -> float:
        return self._clock._seconds()

    def _expires_for(self, now: float) -> float:
        return now + self._ttl

    def _frozen(self) -> Any:
        return self._clock

    @property
    def ttl(self) -> float | timedelta:
        """The time-to-live of the cache's items, as given (seconds or a ``timedelta``)."""
        return self._ttl_arg

    def expire(self, time: Any = None) -> list[tuple[Any, Any]]:
        """Remove items expired at ``time`` (default: now); return them as ``(key, value)`` pairs. O(expired).

        Raises:
            TypeError: ``time`` is neither a number nor a ``datetime``.
        """
        return self._expire(time)

    @property
    def timer(self) -> _Timer:
        """The cache's clock: call it for the time; ``with cache.timer as now:`` freezes it."""
        return self._clock

    def _config(self) -> tuple[Any, ...]:
        return (self._maxsize, self._sizeof_arg, self._ttl_arg, self._clock.wrapped)

    def _configure(  # type: ignore[override]
        self, maxsize: float, getsizeof: Callable[[Any], float] | None, ttl: float | timedelta, timer: Callable[[], Any]
    ) -> None:
        TTLCache.__init__(self, maxsize, ttl, timer, getsizeof)


class LocalCache(_Core):
    """The session-facing cache: LRU with a default TTL and per-entry TTLs.

    ``get``/``set``/``delete`` are O(1) for entries with the default TTL and
    O(log n) for entries given their own ``ttl``.  ``stats`` counts hits,
    misses, LRU evictions and expirations.

    Raises:
        ValueError: ``max_size`` < 1, or ``ttl`` not a non-negative number.
    """

    __slots__ = ("_max_size", "_timer", "_ttl")

    __class_getitem__: ClassVar[Any] = classmethod(GenericAlias)

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
        entries, lru = self._dump(self._now())
        return (type(self), (self._max_size, self._ttl, self._timer), (entries, lru, getattr(self, "__dict__", None)))

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        if len(state) == 2:  # fastsess 0.1 pickles: entries in recency order
            entries, attrs = state
            lru = None
        else:
            entries, lru, attrs = state
        if attrs:
            self.__dict__.update(attrs)
        self._load(entries, lru)
