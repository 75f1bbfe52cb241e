"""Pure-Python twin of the compiled cache core (``fastsess._lru``).

Same classes, same behaviour, same tests; used when the extension is missing or
``FASTSESS_NO_EXTENSIONS=1`` is set.  A plain ``dict`` maps keys to entries;
the eviction queue is a linked list through the entries (recency order for
``LRUCache``/``TTLCache``; CLOCK's queue with a visited bit per entry for
``LocalCache``), expiry order a second one for entries with the default TTL
(write order is expiry order when every entry has the same TTL) and a
lazily-pruned heap for per-entry TTLs.  (Not an
``OrderedDict``: re-entering one from a key's ``__hash__``/``__eq__`` can crash
CPython, and an ``__eq__`` raising halfway through its update leaves it torn.)

Thread safety comes from one ``threading.Lock`` per cache, held for the O(1)
update only: the timer and ``getsizeof`` run before it, ``__missing__`` and the
release of evicted values after.  A key's ``__hash__``/``__eq__`` (or a
finalizer) that calls the same cache while it is held raises ``RuntimeError``.
"""

from __future__ import annotations

import copy as _copy
import copyreg
import heapq
import threading
import time as _time
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
    __slots__ = ("expires", "fifo", "key", "live", "newer", "older", "size", "value", "visited", "xnewer", "xolder")

    def __init__(self, key: Any, value: Any, size: float, expires: float, fifo: bool) -> None:
        self.key = key
        self.value = value
        self.size = size
        self.expires = expires
        self.fifo = fifo  # True: in the write-order list, False: in the heap
        self.live = True
        self.visited = False  # CLOCK (LocalCache): read since inserted or last given its second chance
        # recency list (older: towards the least recently used) and write-order list
        self.older: _Entry = self
        self.newer: _Entry = self
        self.xolder: _Entry = self
        self.xnewer: _Entry = self


def _root() -> _Entry:
    root = _Entry(None, None, 0, _INF, True)
    root.live = False
    return root


class _Core:
    """Hash map + eviction queue + expiry order + guard shared by every cache class.

    The eviction queue is exact LRU (a hit moves the entry to the newest end) unless
    the class sets ``_second_chance``: then it is CLOCK (second chance, as FIFO with
    reinsertion) -- a new entry goes in unvisited at the newest end, a hit only sets
    the entry's ``visited`` flag, and eviction looks at the oldest entry: visited, it
    moves to the newest end with its flag cleared; unvisited, it is evicted.

    The map is a plain ``dict`` (key -> entry); both orders are linked lists through
    the entries, which never call user code.  A dict call either happens or raises,
    so an entry is removed from the dict first and unlinked only after that worked:
    whatever a key's ``__hash__``/``__eq__`` raise, the structure stays whole.
    """

    __slots__ = (
        "__weakref__",
        "_cap",
        "_currsize",
        "_data",
        "_evictions",
        "_expirations",
        "_heap",
        "_hits",
        "_lock",
        "_misses",
        "_owner",
        "_root",
        "_seq",
        "_sizeof",
        "_xroot",
    )

    _second_chance: ClassVar[bool] = False  # LocalCache: CLOCK eviction instead of exact LRU

    def _init_core(self, cap: float, sizeof: Callable[[Any], float] | None) -> None:
        self._cap = cap  # with getsizeof: maxsize as given (Python numbers never overflow)
        self._sizeof = sizeof
        self._data: dict[Hashable, _Entry] = {}  # insertion order: what iteration follows
        self._root = _root()  # root.newer: least recently used (CLOCK: the next to examine)
        self._xroot = _root()  # xroot.xnewer: oldest write among default-TTL entries
        self._heap: list[tuple[float, int, _Entry]] = []
        self._seq = 0
        self._currsize: float = 0  # an exact int unless getsizeof returns floats
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._hits = self._misses = self._evictions = self._expirations = 0

    # -- guard: one lock; re-entering from the same thread is an error ----------------

    def _acquire(self) -> None:
        me = threading.get_ident()
        if self._owner == me:
            raise RuntimeError(
                f"{type(self).__name__} re-entered while it was being updated (from a key's "
                "__hash__/__eq__ or a finalizer running in the middle of one of its operations)"
            )
        self._lock.acquire()
        self._owner = me

    def _release(self) -> None:
        self._owner = None
        self._lock.release()

    # -- structure updates; callers hold the lock ---------------------------------

    def _link(self, entry: _Entry) -> None:
        root = self._root
        entry.older = root.older
        entry.newer = root
        root.older.newer = entry
        root.older = entry
        if entry.fifo:
            xroot = self._xroot
            if xroot.xolder is not xroot and xroot.xolder.expires > entry.expires:
                entry.expires = xroot.xolder.expires  # keep the list in expiry order (see _lru.pyx)
            entry.xolder = xroot.xolder
            entry.xnewer = xroot
            xroot.xolder.xnewer = entry
            xroot.xolder = entry
        else:
            self._seq += 1
            heapq.heappush(self._heap, (entry.expires, self._seq, entry))
            if len(self._heap) > 2 * len(self._data) + 64:
                self._heap = [item for item in self._heap if item[2].live and item[2].expires == item[0]]
                heapq.heapify(self._heap)
        self._currsize += entry.size

    def _touch(self, entry: _Entry) -> None:
        root = self._root
        if root.older is entry:
            return
        entry.older.newer = entry.newer
        entry.newer.older = entry.older
        entry.older = root.older
        entry.newer = root
        root.older.newer = entry
        root.older = entry

    def _unlink(self, entry: _Entry) -> None:
        """Remove ``entry``: from the dict first (that may raise), then from the lists."""
        del self._data[entry.key]
        entry.older.newer = entry.newer
        entry.newer.older = entry.older
        if entry.fifo:
            entry.xolder.xnewer = entry.xnewer
            entry.xnewer.xolder = entry.xolder
        entry.live = False
        self._currsize -= entry.size

    def _expired_head(self, now: float) -> _Entry | None:
        head = self._xroot.xnewer
        if head is not self._xroot and not now < head.expires:
            return head
        heap = self._heap
        while heap:
            expires, _, entry = heap[0]
            if not entry.live or entry.expires != expires or entry.fifo:
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

    def _evict_for(self, incoming: float, keep: _Entry | None, dropped: list[_Entry]) -> None:
        if self._second_chance:
            self._evict_clock(incoming, keep, dropped)
            return
        root = self._root
        while incoming > self._cap - self._currsize and root.newer is not root and root.newer is not keep:
            victim = root.newer
            self._unlink(victim)
            self._evictions += 1
            dropped.append(victim)

    def _evict_clock(self, incoming: float, keep: _Entry | None, dropped: list[_Entry]) -> None:
        """CLOCK: the oldest entry, if visited (or ``keep``), moves to the newest end unvisited; else it is evicted."""
        root = self._root
        while incoming > self._cap - self._currsize:
            victim = root.newer
            if victim is root:
                return  # nothing to evict
            if victim is keep or victim.visited:
                if victim is keep and victim.newer is root:
                    return  # nothing else to evict
                victim.visited = False  # its second chance
                self._touch(victim)
                continue
            self._unlink(victim)
            self._evictions += 1
            dropped.append(victim)

    def _hit(self, entry: _Entry) -> None:
        """A read or overwrite of ``entry``: LRU moves it to the newest end, CLOCK marks it visited."""
        if self._second_chance:
            entry.visited = True
        else:
            self._touch(entry)

    def _insert(self, key: Any, value: Any, size: float, expires: float, fifo: bool, dropped: list[_Entry]) -> None:
        old = self._data.get(key)
        if old is None:
            self._evict_for(size, None, dropped)
            entry = _Entry(key, value, size, expires, fifo)
            old = self._data.setdefault(key, entry)  # never replaces a linked entry
            if old is entry:
                self._link(entry)
                return
        # an update: make room first, so a failure leaves the old value (and currsize <= maxsize)
        self._hit(old)
        self._evict_for(size - old.size, old, dropped)
        dropped.append(_Entry(None, old.value, 0, 0.0, True))  # the old value, released after the lock
        old.value = value
        self._currsize += size - old.size
        old.size = size
        if old.fifo:
            old.xolder.xnewer = old.xnewer
            old.xnewer.xolder = old.xolder
        old.expires = expires
        old.fifo = fifo
        if fifo:
            xroot = self._xroot
            if xroot.xolder is not xroot and xroot.xolder.expires > expires:
                old.expires = xroot.xolder.expires
            old.xolder = xroot.xolder
            old.xnewer = xroot
            xroot.xolder.xnewer = old
            xroot.xolder = old
        else:
            self._seq += 1
            heapq.heappush(self._heap, (expires, self._seq, old))

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
        self._hit(entry)
        self._hits += 1
        return entry

    def _live_entries(self, now: float) -> list[_Entry]:
        self._acquire()
        try:
            out = []
            root = self._root
            entry = root.newer
            while entry is not root:
                if now < entry.expires:
                    out.append(entry)
                entry = entry.newer
            return out
        finally:
            self._release()

    def _live_keys(self, now: float) -> list[Any]:
        return [e.key for e in self._live_entries(now)]

    def _clear(self) -> list[_Entry]:
        self._acquire()
        try:
            old = self._data
            self._data = {}
            self._root = _root()
            self._xroot = _root()
            self._heap = []
            self._currsize = 0
            dropped = list(old.values())
            for entry in dropped:
                entry.live = False
        finally:
            self._release()
        old.clear()  # a loop over it (LRUCache iteration) raises RuntimeError, as with dict.clear()
        return dropped

    def _count(self, now: float) -> int:
        dropped: list[_Entry] = []
        self._acquire()
        try:
            self._purge(now, dropped)
            return len(self._data)
        finally:
            self._release()

    def _pop_key(self, key: Any) -> _Entry | None:
        hash(key)
        self._acquire()
        try:
            entry = self._data.get(key)
            if entry is not None:
                self._unlink(entry)
            return entry
        finally:
            self._release()

    def _has(self, key: Any, now: float) -> bool:
        hash(key)
        self._acquire()
        try:
            entry = self._data.get(key)
            return entry is not None and now < entry.expires
        finally:
            self._release()

    def _get(self, key: Any, default: Any, now: float) -> Any:
        hash(key)
        dropped: list[_Entry] = []
        self._acquire()
        try:
            entry = self._lookup(key, now, dropped)
            return default if entry is None else entry.value
        finally:
            self._release()

    def _put(self, key: Any, value: Any, size: float, expires: float, fifo: bool, now: float) -> None:
        hash(key)  # TypeError for unhashable keys before anything else
        dropped: list[_Entry] = []
        self._acquire()
        try:
            self._purge(now, dropped)
            self._insert(key, value, size, expires, fifo, dropped)
        finally:
            self._release()

    def _now(self) -> float:
        return 0.0

    def _dump(self, now: float) -> tuple[list[tuple[Any, Any, float, float, bool]], list[int]]:
        """Live entries in insertion order, and their recency order as indexes into them."""
        self._acquire()
        try:
            entries = [e for e in self._data.values() if now < e.expires]
        finally:
            self._release()
        position = {id(e): i for i, e in enumerate(entries)}
        lru = [position[id(e)] for e in self._live_entries(now) if id(e) in position]
        return [(e.key, e.value, e.size, e.expires, e.fifo) for e in entries], lru

    def _load(self, entries: list[tuple[Any, Any, float, float, bool]], lru: list[int] | None = None) -> None:
        """Insert ``_dump()``'s entries, keeping both orders (``lru=None``: entries are in recency order)."""
        now = self._now()
        # oldest-expiring first, so the write-order list stays in expiry order ...
        for key, value, size, expires, fifo in sorted(entries, key=lambda e: e[3]):
            self._put(key, value, size, expires, fifo, now)
        self._acquire()
        try:
            # ... then the map back in insertion order, and recency as saved
            ordered = {e[0]: self._data[e[0]] for e in entries if e[0] in self._data}
            if len(ordered) == len(self._data):
                self._data = ordered
            for i in range(len(entries)) if lru is None else lru:
                entry = self._data.get(entries[i][0])
                if entry is not None:
                    self._touch(entry)
        finally:
            self._release()


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
        hash(key)
        now = self._now()
        dropped: list[_Entry] = []
        self._acquire()
        try:
            self._purge(now, dropped)
            entry = self._data.get(key)
            others = len(self._data) - (entry is not None)
            if others <= 0:
                return False  # nothing else to evict; size <= maxsize was checked
            return self._currsize - (0 if entry is None else entry.size) + size > self._cap
        finally:
            self._release()

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
            now = self._now()
            dropped: list[_Entry] = []
            self._acquire()
            try:
                self._purge(now, dropped)
                entry = self._root.newer if self._root.newer is not self._root else None
            finally:
                self._release()
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
        value = self._get(key, _MISSING, self._now())
        if value is _MISSING:
            return self.__missing__(key)
        return value

    def __missing__(self, key: Any) -> Any:
        """Called by ``cache[key]`` on a miss; the default raises ``KeyError``."""
        raise KeyError(key)

    def _store_now(self, key: Any, value: Any, size: float) -> None:
        now = self._now()
        self._put(key, value, size, self._expires_for(now), True, now)

    def __setitem__(self, key: Any, value: Any) -> None:
        hash(key)  # TypeError for unhashable keys before anything else
        if self._fastsess_hooks & (HOOK_POPITEM | HOOK_DELITEM | HOOK_EXPIRE):
            self._setitem_hooked(key, value)
            return
        self._store_now(key, value, self._size_of(value))  # getsizeof (user code) runs outside the lock

    def __delitem__(self, key: Any) -> None:
        now = self._now()
        entry = self._pop_key(key)
        if entry is None or not now < entry.expires:
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return self._has(key, self._now())

    def __iter__(self) -> Iterator[Any]:
        # Insertion order, like cachetools (overwriting keeps a key's place).  LRUCache
        # iterates the index itself, so adding or removing a key during the loop raises
        # RuntimeError like a dict; TTLCache iterates a snapshot of the keys and skips
        # those expired or removed since, as cachetools does.
        if isinstance(self, TTLCache):
            self._acquire()
            try:
                keys = list(self._data)
            finally:
                self._release()
            return self._iter_live(keys)
        return iter(self._data)

    def _iter_live(self, keys: list[Any]) -> Iterator[Any]:
        for key in keys:
            if self._has(key, self._now()):
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
            value = self._get(key, _MISSING, self._now())
            if value is not _MISSING:
                yield (key, value) if pairs else value

    def __len__(self) -> int:
        if self._fastsess_hooks & HOOK_EXPIRE:
            self._expire_hook()
        return self._count(self._now())

    def _items_in_order(self) -> dict[Any, Any]:
        now = self._now()
        self._acquire()
        try:
            entries = list(self._data.values())
        finally:
            self._release()
        return {e.key: e.value for e in entries if now < e.expires}

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
        now = self._now() if time is None else timer_seconds(time)
        dropped: list[_Entry] = []
        self._acquire()
        try:
            self._purge(now, dropped)
        finally:
            self._release()
        return [(e.key, e.value) for e in dropped]

    def get(self, key: Any, default: Any = None) -> Any:
        """Return the value for ``key`` (refreshing its recency) or ``default``. O(1).

        A subclass that overrides ``__getitem__`` or ``__contains__`` gets
        cachetools' ``get`` (``self[key] if key in self else default``).
        """
        if self._fastsess_hooks & (HOOK_GETITEM | HOOK_CONTAINS):
            with self._frozen():
                return self[key] if key in self else default  # noqa: SIM401 (cachetools' get, through the overrides)
        return self._get(key, default, self._now())

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
            now = self._now()
            entry = self._pop_key(key)
            if entry is not None and now < entry.expires:
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
        now = self._now()
        dropped: list[_Entry] = []
        self._acquire()
        try:
            self._purge(now, dropped)
            entry = self._root.newer if self._root.newer is not self._root else None
            if entry is not None:
                self._unlink(entry)
        finally:
            self._release()
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
    """The session-facing cache: CLOCK eviction with a default TTL and per-entry TTLs.

    Eviction is CLOCK (second chance), not exact LRU: a hit only marks its entry
    visited; when full, the oldest entry is evicted unless it is marked, in which
    case it moves to the newest end unmarked and the next oldest is examined.  ``get``/``set``/``delete`` are
    O(1) (amortized for eviction) for entries with the default TTL and O(log n)
    for entries given their own ``ttl``.  ``stats`` counts hits, misses,
    evictions and expirations.

    Raises:
        ValueError: ``max_size`` < 1, or ``ttl`` not a non-negative number.
    """

    __slots__ = ("_max_size", "_timer", "_ttl")

    __class_getitem__: ClassVar[Any] = classmethod(GenericAlias)

    _second_chance = True

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
        """Return the live value for ``key`` or ``default``; a hit marks the entry visited (CLOCK). O(1).

        Raises:
            TypeError: ``key`` is unhashable.
        """
        return self._get(key, default, self._now())

    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (default: the cache's TTL).

        A new key goes in at the newest end; overwriting a key keeps its place and
        marks it visited.  When full, evicts the entry CLOCK picks.  O(1)
        amortized, or O(log n) with a per-entry ``ttl``.

        Raises:
            TypeError: ``key`` is unhashable.
            ValueError: ``ttl`` is negative or not a number.
        """
        hash(key)
        fifo = ttl is None
        seconds = self._ttl if fifo else check_ttl(ttl)
        now = self._now()
        self._put(key, value, 1, now + seconds, fifo, now)

    def delete(self, key: Any) -> bool:
        """Remove ``key``; return whether a live entry was removed. O(1) (O(log n) heap upkeep is lazy)."""
        now = self._now()
        entry = self._pop_key(key)
        return entry is not None and now < entry.expires

    def pop(self, key: Any, default: Any = None) -> Any:
        """Remove ``key`` and return its live value, or ``default``. O(1)."""
        now = self._now()
        entry = self._pop_key(key)
        return entry.value if entry is not None and now < entry.expires else default

    def clear(self) -> None:
        """Remove every entry (statistics are kept; see ``reset_stats``)."""
        self._clear()

    def expire(self) -> int:
        """Remove the entries whose TTL has passed and return how many. O(expired)."""
        now = self._now()
        dropped: list[_Entry] = []
        self._acquire()
        try:
            self._purge(now, dropped)
        finally:
            self._release()
        return len(dropped)

    def keys(self) -> list[Any]:
        """The live keys in eviction-queue order, next to examine first. O(n).

        Hits do not reorder them; an eviction moves the marked entries it passes to the end.
        """
        return self._live_keys(self._now())

    def __len__(self) -> int:
        return self._count(self._now())

    def __contains__(self, key: object) -> bool:
        return self._has(key, self._now())

    def __iter__(self) -> Iterator[Any]:
        return iter(self.keys())

    def __repr__(self) -> str:
        return f"LocalCache(max_size={self._max_size}, ttl={self._ttl}, size={len(self)})"

    @property
    def stats(self) -> CacheStats:
        """A snapshot of hits, misses, evictions, expirations, size and hit rate."""
        size = len(self)  # purges first, so the expirations below include what it removed
        self._acquire()
        try:
            return make_stats(self._hits, self._misses, self._evictions, self._expirations, size, self._max_size)
        finally:
            self._release()

    def reset_stats(self) -> None:
        """Zero the hit, miss, eviction and expiration counters."""
        self._acquire()
        try:
            self._hits = self._misses = self._evictions = self._expirations = 0
        finally:
            self._release()

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
