# cython: language_level=3
# cython: freethreading_compatible=True
# cython: binding=False
"""Compiled cache core: ``LRUCache``, ``TTLCache`` and ``LocalCache``.

Layout (every operation O(1), per-entry TTLs O(log n)):

* ``_map``: a dict from key to ``_Node``; it owns the nodes.
* recency list: an intrusive circular doubly linked list through every node,
  least recently used right after the sentinel ``_root``.
* write-order list: a second intrusive list through the entries that use the
  cache's single TTL; with one TTL, write order is expiry order, so expiry pops
  from its head.
* ``_heap``: a binary min-heap on ``expires`` for entries given their own TTL
  (``LocalCache.set(..., ttl=...)``); each node knows its heap index.

The links are borrowed ``PyObject*`` pointers (the dict holds the only strong
reference to a node), so relinking never touches a reference count and can
never run a destructor halfway through an update.

Thread safety: each public method guards its O(1) updates with
``cython.critical_section(self)``, which compiles to nothing on GIL builds and
to a per-object lock on free-threaded builds.  User code never runs inside it:
the clock is read and ``getsizeof`` called before entering, ``__missing__``
after leaving, and nodes unlinked inside are parked in ``_dropped`` and
released after leaving, so an evicted value's ``__del__`` sees a consistent
cache.  (A key type whose ``__hash__``/``__eq__`` is Python code still runs
inside the dict operations, as it would for a plain dict; the structure is
updated only after those return, and unlinking is idempotent.)
"""

cimport cython
from cpython.dict cimport PyDict_DelItem, PyDict_GetItemWithError, PyDict_SetItem
from cpython.object cimport PyObject

import copy as _copy
import copyreg as _copyreg
import time as _time
from collections.abc import ItemsView, KeysView, Mapping, MutableMapping, ValuesView
from types import GenericAlias

from fastsess import _cache_common
from fastsess._cache_common import (
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

cdef extern from *:
    """
    #include <time.h>
    /* The default clock.  On Linux CLOCK_MONOTONIC_COARSE has the same epoch as
       time.monotonic() (CLOCK_MONOTONIC) at jiffy resolution (1-4 ms), which is
       plenty for TTLs in seconds and ~20 ns cheaper.  Elsewhere, Python 3.13+
       exposes time.monotonic()'s own clock to C; older Pythons call
       time.monotonic() through Python. */
    #if defined(__linux__) && defined(CLOCK_MONOTONIC_COARSE)
    #define FASTSESS_HAVE_C_CLOCK 1
    static double fastsess_clock(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    }
    #elif PY_VERSION_HEX >= 0x030D0000
    #define FASTSESS_HAVE_C_CLOCK 1
    static double fastsess_clock(void) {
        PyTime_t t;
        if (PyTime_MonotonicRaw(&t) < 0) { return 0.0; }
        return PyTime_AsSecondsDouble(t);
    }
    #else
    #define FASTSESS_HAVE_C_CLOCK 0
    static double fastsess_clock(void) { return 0.0; }
    #endif
    """
    const bint FASTSESS_HAVE_C_CLOCK
    double fastsess_clock() noexcept nogil

# The cachetools hooks a subclass may override (bits of _MappingCache._hooks), as C
# constants so that the fast paths test them without a Python lookup.
cdef enum:
    H_GETITEM = 1
    H_CONTAINS = 2
    H_DELITEM = 4
    H_POPITEM = 8
    H_EXPIRE = 16

assert (H_GETITEM, H_CONTAINS, H_DELITEM, H_POPITEM, H_EXPIRE) == (
    _cache_common.HOOK_GETITEM,
    _cache_common.HOOK_CONTAINS,
    _cache_common.HOOK_DELITEM,
    _cache_common.HOOK_POPITEM,
    _cache_common.HOOK_EXPIRE,
)

cdef double INF = float("inf")
cdef object _MISSING = object()
cdef object _monotonic = _time.monotonic


@cython.final
cdef class _Node:
    cdef object key
    cdef object value
    cdef object size          # 1, or what getsizeof gave (an int or a float)
    cdef double expires
    cdef PyObject* prev        # recency list; NULL when unlinked
    cdef PyObject* next
    cdef PyObject* xprev       # write-order list; NULL when not in it
    cdef PyObject* xnext
    cdef Py_ssize_t heap_index  # position in _heap, -1 when not in it


# -- intrusive list primitives (no reference counting, no Python calls) ----------

cdef inline bint _unlink(_Node node) noexcept:
    if node.prev is NULL:
        return False
    (<_Node>node.prev).next = node.next
    (<_Node>node.next).prev = node.prev
    node.prev = node.next = NULL
    return True


cdef inline void _append(_Node root, _Node node) noexcept:
    node.next = <PyObject*>root
    node.prev = root.prev
    (<_Node>root.prev).next = <PyObject*>node
    root.prev = <PyObject*>node


cdef inline void _x_unlink(_Node node) noexcept:
    if node.xprev is NULL:
        return
    (<_Node>node.xprev).xnext = node.xnext
    (<_Node>node.xnext).xprev = node.xprev
    node.xprev = node.xnext = NULL


cdef inline void _x_append(_Node root, _Node node) noexcept:
    node.xnext = <PyObject*>root
    node.xprev = root.xprev
    (<_Node>root.xprev).xnext = <PyObject*>node
    root.xprev = <PyObject*>node


cdef _Node _new_root():
    cdef _Node root = _Node.__new__(_Node)
    root.prev = root.next = <PyObject*>root
    root.xprev = root.xnext = <PyObject*>root
    root.heap_index = -1
    return root


# -- indexed binary min-heap on expires ------------------------------------------

cdef void _heap_place(list heap, _Node node, Py_ssize_t i):
    heap[i] = node
    node.heap_index = i


cdef void _heap_sift_up(list heap, Py_ssize_t i):
    cdef _Node node = heap[i]
    cdef _Node parent
    cdef Py_ssize_t up
    while i > 0:
        up = (i - 1) >> 1
        parent = heap[up]
        if parent.expires <= node.expires:
            break
        _heap_place(heap, parent, i)
        i = up
    _heap_place(heap, node, i)


cdef void _heap_sift_down(list heap, Py_ssize_t i):
    cdef Py_ssize_t n = len(heap)
    cdef _Node node = heap[i]
    cdef _Node child
    cdef Py_ssize_t c
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and (<_Node>heap[c + 1]).expires < (<_Node>heap[c]).expires:
            c += 1
        child = heap[c]
        if node.expires <= child.expires:
            break
        _heap_place(heap, child, i)
        i = c
    _heap_place(heap, node, i)


cdef void _heap_push(list heap, _Node node):
    heap.append(node)
    node.heap_index = len(heap) - 1
    _heap_sift_up(heap, node.heap_index)


cdef void _heap_remove(list heap, _Node node):
    cdef Py_ssize_t i = node.heap_index
    cdef _Node last
    if i < 0:
        return
    node.heap_index = -1
    last = heap.pop()
    if last is not node:
        _heap_place(heap, last, i)
        _heap_sift_up(heap, i)
        _heap_sift_down(heap, last.heap_index)


@cython.final
cdef class _Timer:
    """A ``TTLCache``'s clock, like cachetools' timer wrapper.

    Call it for the current time; ``with cache.timer as now:`` freezes the
    cache's time at ``now`` for the block (nested blocks see the same time).
    Other attributes are those of the wrapped timer.
    """

    cdef object func           # the user's timer; None: the C clock (time.monotonic)
    cdef object raw            # the frozen time, as the timer returned it
    cdef double frozen         # the frozen time in seconds
    cdef Py_ssize_t nesting

    def __init__(self, timer=_time.monotonic):
        if not callable(timer):
            raise ValueError(f"timer must be callable, not {timer!r}")
        self.func = None if timer is _monotonic else timer

    cdef object _read(self):
        if self.func is None:
            if FASTSESS_HAVE_C_CLOCK:
                return fastsess_clock()
            return _monotonic()
        return self.func()

    @property
    def wrapped(self):
        """The timer callable this wraps (``time.monotonic`` by default)."""
        return _monotonic if self.func is None else self.func

    def __call__(self):
        if self.nesting:
            return self.raw
        return self._read()

    def __enter__(self):
        if self.nesting == 0:
            raw = self._read()
            self.frozen = timer_seconds(raw)
            self.raw = raw
        self.nesting += 1
        return self.raw

    def __exit__(self, *exc_info):
        if self.nesting > 0:
            self.nesting -= 1
            if self.nesting == 0:
                self.raw = None
        return False

    def __getattr__(self, name):
        return getattr(self.wrapped, name)

    def __reduce__(self):
        return (_Timer, (self.wrapped,))

    def __copy__(self):
        return _Timer(self.wrapped)

    def __deepcopy__(self, memo):
        return _Timer(_copy.deepcopy(self.wrapped, memo))


cdef class _Core:
    """Hash map + recency list + expiry order + counters, shared by every cache."""

    cdef dict _map
    cdef _Node _root          # root.next: least recently used; root.prev: most recent
    cdef _Node _xroot         # xroot.xnext: oldest write among default-TTL entries
    cdef list _heap
    cdef list _dropped        # nodes and values to release once the structure is consistent
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _currsize  # number of linked nodes, when every size is 1
    cdef bint _sized          # sizes come from getsizeof: _osum and _omax do the accounting
    cdef object _osum         # sum of the sizes (Python int or float: exact, never overflows)
    cdef object _omax         # maxsize as given
    cdef object _timer        # None: the C clock
    cdef _Timer _clock        # TTLCache: its timer, which may be frozen
    cdef bint _timed          # False for LRUCache: entries never expire
    cdef double _ttl
    cdef unsigned long long _hits
    cdef unsigned long long _misses
    cdef unsigned long long _evictions
    cdef unsigned long long _expirations
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        self._map = {}
        self._root = _new_root()
        self._xroot = _new_root()
        self._heap = []
        self._ttl = INF
        self._osum = 0

    @cython.final
    cdef inline double _now(self) except? -1.0:
        cdef object t
        if self._clock is not None and self._clock.nesting:
            return self._clock.frozen
        if self._timer is None:
            if FASTSESS_HAVE_C_CLOCK:
                return fastsess_clock()
            return _monotonic()
        t = self._timer()
        if type(t) is float:
            return <double>t
        return timer_seconds(t)

    @cython.final
    cdef inline void _park(self, object obj):
        if self._dropped is None:
            self._dropped = [obj]
        else:
            self._dropped.append(obj)

    @cython.final
    cdef inline list _take_dropped(self):
        cdef list dropped = self._dropped
        self._dropped = None
        return dropped

    @cython.final
    cdef int _detach(self, _Node node) except -1:
        # The dict first: deleting may run a key's Python __hash__, and the links
        # are still consistent at that point.  Unlinking is idempotent, so a node
        # detached twice (possible only through such re-entrant key code) is harmless.
        try:
            PyDict_DelItem(self._map, node.key)
        except KeyError:
            pass
        if _unlink(node):
            self._currsize -= 1
            if self._sized:
                self._osum = self._osum - node.size
        _x_unlink(node)
        _heap_remove(self._heap, node)
        self._park(node)
        return 0

    @cython.final
    cdef _Node _expired_head(self, double now):
        cdef _Node node
        if self._xroot.xnext != <PyObject*>self._xroot:
            node = <_Node>self._xroot.xnext
            if not now < node.expires:
                return node
        if self._heap:
            node = self._heap[0]
            if not now < node.expires:
                return node
        return None

    @cython.final
    cdef Py_ssize_t _purge(self, double now) except -1:
        cdef _Node node
        cdef Py_ssize_t count = 0
        if not self._timed:
            return 0
        while True:
            node = self._expired_head(now)
            if node is None:
                return count
            self._detach(node)
            self._expirations += 1
            count += 1

    @cython.final
    cdef int _make_room(self, object incoming) except -1:
        # incoming: the size about to be added (0 after an in-place update).  With
        # getsizeof the sums are Python numbers (int or float), so they never overflow.
        cdef _Node victim
        cdef Py_ssize_t adding = 0
        if not self._sized and incoming:
            adding = 1
        while self._root.next != <PyObject*>self._root:
            if self._sized:
                if not self._osum + incoming > self._omax:
                    break
            elif not self._currsize + adding > self._cap:
                break
            victim = <_Node>self._root.next
            self._detach(victim)
            self._evictions += 1
        return 0

    @cython.final
    cdef _Node _find(self, object key, double now):
        """The live node for ``key`` made most recent, or None (counts hit/miss)."""
        cdef PyObject* p = PyDict_GetItemWithError(self._map, key)
        cdef _Node node
        if p is NULL:
            self._misses += 1
            return None
        node = <_Node>p
        if self._timed and not now < node.expires:
            self._detach(node)
            self._expirations += 1
            self._misses += 1
            return None
        if node.next != <PyObject*>self._root:
            _unlink(node)
            _append(self._root, node)
        self._hits += 1
        return node

    @cython.final
    cdef int _store(self, object key, object value, object size, double expires, bint fifo, double now) except -1:
        cdef PyObject* p = PyDict_GetItemWithError(self._map, key)  # TypeError before any change
        cdef _Node node = None if p is NULL else <_Node>p
        self._purge(now)
        if node is not None and node.prev is not NULL:
            # Update in place; the old value is released after the critical section.
            self._park(node.value)
            node.value = value
            if self._sized:
                self._osum = self._osum + size - node.size
            node.size = size
            node.expires = expires
            if node.next != <PyObject*>self._root:
                _unlink(node)
                _append(self._root, node)
            if self._timed:
                if fifo:
                    _heap_remove(self._heap, node)
                    _x_unlink(node)
                    _x_append(self._xroot, node)
                else:
                    _x_unlink(node)
                    if node.heap_index >= 0:
                        _heap_sift_up(self._heap, node.heap_index)
                        _heap_sift_down(self._heap, node.heap_index)
                    else:
                        _heap_push(self._heap, node)
            # node is most recent, so eviction takes it last; it alone always fits
            self._make_room(0)
            return 0
        self._make_room(size)
        node = _Node.__new__(_Node)
        node.key = key
        node.value = value
        node.size = size
        node.expires = expires
        node.heap_index = -1
        PyDict_SetItem(self._map, key, node)
        _append(self._root, node)
        if self._timed:
            if fifo:
                _x_append(self._xroot, node)
            else:
                _heap_push(self._heap, node)
        self._currsize += 1
        if self._sized:
            self._osum = self._osum + size
        return 0

    @cython.final
    cdef list _clear_all(self):
        """Empty the structure; returns the old map for release outside the critical section."""
        cdef dict old = self._map
        self._map = {}
        self._root = _new_root()
        self._xroot = _new_root()
        self._heap = []
        self._currsize = 0
        self._osum = 0
        return [old]

    @cython.final
    cdef list _live_nodes(self, double now):
        """Live nodes, least recently used first. O(n); caller holds the critical section."""
        cdef list out = []
        cdef PyObject* p = self._root.next
        cdef _Node node
        while p != <PyObject*>self._root:
            node = <_Node>p
            if not self._timed or now < node.expires:
                out.append(node)
            p = node.next
        return out

    def _dump(self):
        """The live entries in the map's (insertion) order, and their recency order.

        Returns ``(entries, lru)``: ``entries`` are ``(key, value, size, expires,
        fifo)`` tuples, ``lru`` the indexes into ``entries``, least recently used first.
        """
        cdef _Node node
        cdef list nodes
        cdef list lru
        cdef double now = self._now() if self._timed else 0.0
        with cython.critical_section(self):
            nodes = [node for node in self._map.values() if not self._timed or now < node.expires]
            index = {id(node): i for i, node in enumerate(nodes)}
            lru = [index[id(node)] for node in self._live_nodes(now)]
        return [(node.key, node.value, node.size, node.expires, node.heap_index < 0) for node in nodes], lru

    def _load(self, list entries, lru=None):
        """Insert ``_dump()``'s entries into this empty cache, keeping both orders.

        ``lru=None``: the entries are in recency order (the pickle format of fastsess 0.1).
        """
        cdef PyObject* p
        cdef list dropped
        cdef dict ordered
        cdef double now = self._now() if self._timed else 0.0
        # Store oldest-expiring first, so the write-order list stays sorted ...
        by_expiry = sorted(entries, key=lambda e: e[3])
        with cython.critical_section(self):
            for key, value, size, expires, fifo in by_expiry:
                self._store(key, value, size, expires, fifo, now)
            # ... then put the map back in insertion order ...
            ordered = {}
            for entry in entries:
                p = PyDict_GetItemWithError(self._map, entry[0])
                if p is not NULL:
                    ordered[entry[0]] = <object>p
            self._map = ordered
            # ... and re-establish recency by touching in the saved order.
            for i in (range(len(entries)) if lru is None else lru):
                p = PyDict_GetItemWithError(self._map, entries[i][0])
                if p is not NULL:
                    _unlink(<_Node>p)
                    _append(self._root, <_Node>p)
            dropped = self._take_dropped()


class _CacheValuesView(ValuesView):
    """``cache.values()``: skips an entry that expires or goes away during the loop."""

    __slots__ = ()

    def __iter__(self):
        return self._mapping._iter_entries(False)

    def __contains__(self, value):
        for v in self:
            if v is value or v == value:
                return True
        return False


class _CacheItemsView(ItemsView):
    """``cache.items()``: skips an entry that expires or goes away during the loop."""

    __slots__ = ()

    def __iter__(self):
        return self._mapping._iter_entries(True)


cdef class _MappingCache(_Core):
    """The cachetools-compatible ``MutableMapping`` surface of LRUCache and TTLCache."""

    cdef object _maxsize
    cdef object _sizeof       # what sizes come from: the getsizeof argument or an overriding method
    cdef object _sizeof_arg   # the getsizeof argument as given
    cdef int _hooks           # HOOK_* bits: cachetools hooks a subclass overrides

    def __cinit__(self, *args, **kwargs):
        # Which cachetools hooks a subclass overrides is decided once per class (on
        # its first instance; extension types get no __init_subclass__): the exact
        # classes and subclasses that override none of them keep the fast paths.
        cls = type(self)
        if cls is not LRUCache and cls is not TTLCache:
            hooks = cls.__dict__.get("_fastsess_hooks")
            if hooks is None:
                hooks = overridden_hooks(cls, (TTLCache, LRUCache))
                cls._fastsess_hooks = hooks
            self._hooks = hooks

    def __init__(self, maxsize, getsizeof=None):
        self._cap = check_capacity(maxsize)
        self._maxsize = self._omax = maxsize
        self._sizeof_arg = getsizeof
        if getsizeof is None and type(self).getsizeof is not _MappingCache.getsizeof:
            getsizeof = self.getsizeof  # a subclass overriding getsizeof, as cachetools allows
        self._sizeof = getsizeof
        self._sized = getsizeof is not None

    @classmethod
    def __class_getitem__(cls, params):
        return GenericAlias(cls, params)

    @cython.final
    cdef object _size_of(self, object value):
        if self._sizeof is None:
            if self._cap < 1:
                raise ValueError("value too large")
            return 1
        return check_item_size(self._sizeof(value), self._maxsize)

    # -- cachetools hooks: used only when a subclass overrides one of them -------------

    @cython.final
    cdef object _freeze(self):
        """Freeze a TTLCache's time (like ``with self.timer:``); returns the time or None."""
        if self._clock is None:
            return None
        return self._clock.__enter__()

    @cython.final
    cdef void _thaw(self):
        if self._clock is not None:
            self._clock.__exit__(None, None, None)

    @cython.final
    cdef bint _over(self, object key, object size) except -1:
        """Does storing ``size`` under ``key`` need an eviction first?"""
        cdef double now = self._now() if self._timed else 0.0
        cdef PyObject* p
        cdef list dropped
        cdef bint live
        with cython.critical_section(self):
            self._purge(now)
            p = PyDict_GetItemWithError(self._map, key)
            live = p is not NULL and (<_Node>p).prev is not NULL
            if self._currsize - live <= 0:
                over = False  # nothing else to evict; size <= maxsize was checked
            elif self._sized:
                over = self._osum - ((<_Node>p).size if live else 0) + size > self._omax
            else:
                over = self._currsize - live + 1 > self._cap
            dropped = self._take_dropped()
        return over

    def _setitem_hooked(self, key, value):
        # cachetools' order: expire(), then popitem() until the item fits, then store.
        size = self._size_of(value)
        time = self._freeze()
        try:
            if self._hooks & H_EXPIRE:
                self.expire(time)
            if self._hooks & (H_POPITEM | H_DELITEM):
                while self._over(key, size):
                    self.popitem()
            self._store_now(key, value, size)
        finally:
            self._thaw()

    def _popitem_hooked(self):
        cdef double now
        cdef _Node node = None
        cdef list dropped
        time = self._freeze()
        try:
            if self._hooks & H_EXPIRE:
                self.expire(time)
            now = self._now() if self._timed else 0.0
            with cython.critical_section(self):
                self._purge(now)
                if self._root.next != <PyObject*>self._root:
                    node = <_Node>self._root.next
                dropped = self._take_dropped()
            if node is None:
                raise KeyError(f"{type(self).__name__} is empty") from None
            key, value = node.key, node.value
            del self[key]  # an overridden __delitem__ sees the eviction, as in cachetools
            return (key, value)
        finally:
            self._thaw()

    def _get_hooked(self, key, default):
        self._freeze()
        try:
            return self[key] if key in self else default
        finally:
            self._thaw()

    def _pop_hooked(self, key, default):
        self._freeze()
        try:
            if key in self:
                value = self[key]
                del self[key]
                return value
        finally:
            self._thaw()
        if default is _MISSING:
            raise KeyError(key)
        return default

    def _setdefault_hooked(self, key, default):
        self._freeze()
        try:
            if key in self:
                return self[key]
            self[key] = default
            return default
        finally:
            self._thaw()

    def _expire_hook(self):
        # cachetools calls expire() from len(), currsize and repr(); so do we when it is overridden
        time = self._freeze()
        try:
            self.expire(time)
        finally:
            self._thaw()

    # -- the mapping --------------------------------------------------------------------

    def __getitem__(self, key):
        cdef double now = self._now() if self._timed else 0.0
        cdef _Node node
        cdef object value = _MISSING
        cdef list dropped
        with cython.critical_section(self):
            node = self._find(key, now)
            if node is not None:
                value = node.value
            dropped = self._take_dropped()
        if value is _MISSING:
            return self.__missing__(key)
        return value

    def __missing__(self, key):
        """Called by ``cache[key]`` on a miss; the default raises ``KeyError``."""
        raise KeyError(key)

    @cython.final
    cdef int _store_now(self, object key, object value, object size) except -1:
        cdef double now = self._now() if self._timed else 0.0
        cdef list dropped
        with cython.critical_section(self):
            self._store(key, value, size, now + self._ttl, True, now)
            dropped = self._take_dropped()
        return 0

    def __setitem__(self, key, value):
        cdef object size
        cdef double now
        cdef list dropped
        if self._hooks & (H_POPITEM | H_DELITEM | H_EXPIRE):
            self._setitem_hooked(key, value)
            return
        size = self._size_of(value)
        now = self._now() if self._timed else 0.0
        with cython.critical_section(self):
            self._store(key, value, size, now + self._ttl, True, now)
            dropped = self._take_dropped()

    def __delitem__(self, key):
        cdef double now = self._now() if self._timed else 0.0
        cdef PyObject* p
        cdef _Node node = None
        cdef list dropped
        with cython.critical_section(self):
            p = PyDict_GetItemWithError(self._map, key)
            if p is not NULL:
                node = <_Node>p
                self._detach(node)
            dropped = self._take_dropped()
        if node is None or (self._timed and not now < node.expires):
            raise KeyError(key)

    def __contains__(self, key):
        cdef double now = self._now() if self._timed else 0.0
        cdef PyObject* p
        with cython.critical_section(self):
            p = PyDict_GetItemWithError(self._map, key)
            return p is not NULL and (not self._timed or now < (<_Node>p).expires)

    def __len__(self):
        cdef double now
        cdef list dropped
        if self._hooks & H_EXPIRE:
            self._expire_hook()
        if not self._timed:
            return len(self._map)
        now = self._now()
        with cython.critical_section(self):
            self._purge(now)
            dropped = self._take_dropped()
            return len(self._map)

    def __iter__(self):
        # Insertion order, like cachetools (the map is a dict; overwriting keeps a
        # key's place).  LRUCache iterates the map itself, so adding or removing a key
        # during the loop raises RuntimeError like a dict; TTLCache iterates a
        # snapshot of the keys and skips those expired or removed since, as cachetools does.
        cdef list keys
        if not self._timed:
            return iter(self._map)
        with cython.critical_section(self):
            keys = list(self._map)
        return self._iter_live(keys)

    def _iter_live(self, list keys):
        cdef PyObject* p
        cdef double now
        cdef bint live
        for key in keys:
            now = self._now()
            with cython.critical_section(self):
                p = PyDict_GetItemWithError(self._map, key)
                live = p is not NULL and now < (<_Node>p).expires
            if live:
                yield key

    def _iter_entries(self, bint pairs):
        """Values or items in iteration order; each read refreshes recency, like ``cache[key]``."""
        cdef double now
        cdef _Node node
        cdef object value
        cdef list dropped
        if self._hooks & (H_GETITEM | H_CONTAINS):
            # cachetools reads through the subclass's __getitem__, with time frozen
            for key in self:
                self._freeze()
                try:
                    if key not in self:
                        continue
                    value = self[key]
                finally:
                    self._thaw()
                yield (key, value) if pairs else value
            return
        for key in self:
            now = self._now() if self._timed else 0.0
            value = _MISSING
            with cython.critical_section(self):
                node = self._find(key, now)
                if node is not None:
                    value = node.value
                dropped = self._take_dropped()
            if value is not _MISSING:
                yield (key, value) if pairs else value

    def _items_in_order(self):
        cdef double now = self._now() if self._timed else 0.0
        cdef _Node node
        with cython.critical_section(self):
            pairs = [(node.key, node.value) for node in self._map.values() if not self._timed or now < node.expires]
        return dict(pairs)

    def __repr__(self):
        if self._hooks & H_EXPIRE:
            self._expire_hook()
        return mapping_repr(self, self._items_in_order)

    def __eq__(self, other):
        if not isinstance(other, Mapping):
            return NotImplemented
        return self._items_in_order() == dict(other.items())

    def keys(self):
        """A live view of the keys (``collections.abc.KeysView``), in insertion order."""
        return KeysView(self)

    def values(self):
        """A live view of the values, in key order; an entry that expires mid-loop is skipped."""
        return _CacheValuesView(self)

    def items(self):
        """A live view of the ``(key, value)`` pairs, in key order; expired entries are skipped."""
        return _CacheItemsView(self)

    def get(self, key, default=None):
        """Return the value for ``key`` (refreshing its recency) or ``default``. O(1).

        Unlike ``cache[key]``, never calls ``__missing__``.  A subclass that
        overrides ``__getitem__`` or ``__contains__`` gets cachetools' ``get``
        (``self[key] if key in self else default``).

        Raises:
            TypeError: ``key`` is unhashable.
        """
        cdef double now
        cdef _Node node
        cdef object value = default
        cdef list dropped
        if self._hooks & (H_GETITEM | H_CONTAINS):
            return self._get_hooked(key, default)
        now = self._now() if self._timed else 0.0
        with cython.critical_section(self):
            node = self._find(key, now)
            if node is not None:
                value = node.value
            dropped = self._take_dropped()
        return value

    def pop(self, key, default=_MISSING):
        """Remove ``key`` and return its value, or ``default``. O(1).

        A subclass overriding ``__getitem__``, ``__contains__`` or ``__delitem__``
        gets cachetools' ``pop`` (through those methods).

        Raises:
            KeyError: ``key`` is absent (or expired) and no default was given.
        """
        cdef double now
        cdef PyObject* p
        cdef _Node node = None
        cdef list dropped
        if self._hooks & (H_GETITEM | H_CONTAINS | H_DELITEM):
            return self._pop_hooked(key, default)
        now = self._now() if self._timed else 0.0
        with cython.critical_section(self):
            p = PyDict_GetItemWithError(self._map, key)
            if p is not NULL:
                node = <_Node>p
                self._detach(node)
            dropped = self._take_dropped()
        if node is not None and (not self._timed or now < node.expires):
            return node.value
        if default is _MISSING:
            raise KeyError(key)
        return default

    def setdefault(self, key, default=None):
        """Return ``cache[key]`` if present, else store ``default`` and return it. O(1)."""
        if self._hooks & (H_GETITEM | H_CONTAINS):
            return self._setdefault_hooked(key, default)
        value = self.get(key, _MISSING)
        if value is _MISSING:
            self[key] = value = default
        return value

    def popitem(self):
        """Remove and return the least recently used live ``(key, value)`` pair. O(1).

        Raises:
            KeyError: the cache is empty (raised ``from None``, like cachetools).
        """
        cdef double now
        cdef _Node node = None
        cdef list dropped
        if self._hooks & (H_DELITEM | H_EXPIRE):
            return self._popitem_hooked()
        now = self._now() if self._timed else 0.0
        with cython.critical_section(self):
            self._purge(now)
            if self._root.next != <PyObject*>self._root:
                node = <_Node>self._root.next
                self._detach(node)
            dropped = self._take_dropped()
        if node is None:
            raise KeyError(f"{type(self).__name__} is empty") from None
        return (node.key, node.value)

    def update(self, other=(), /, **kwargs):
        """Store every pair from a mapping or iterable of pairs, then ``kwargs``."""
        if isinstance(other, Mapping):
            for key in other:
                self[key] = other[key]
        elif hasattr(other, "keys"):
            for key in other.keys():
                self[key] = other[key]
        else:
            for key, value in other:
                self[key] = value
        for key, value in kwargs.items():
            self[key] = value

    def clear(self):
        """Remove every item; values are released after the structure is reset."""
        cdef list old
        with cython.critical_section(self):
            old = self._clear_all()
        # a loop over the old map (LRUCache iteration) now raises RuntimeError, as with dict.clear()
        for obj in old:
            if type(obj) is dict:
                (<dict>obj).clear()

    @property
    def maxsize(self):
        """The maximum size of the cache, as given to the constructor."""
        return self._maxsize

    @property
    def currsize(self):
        """The sum of the sizes of the live items (an exact int, or a float if ``getsizeof`` gave floats)."""
        cdef double now
        cdef list dropped
        if self._hooks & H_EXPIRE:
            self._expire_hook()
        if self._timed:
            now = self._now()
            with cython.critical_section(self):
                self._purge(now)
                dropped = self._take_dropped()
        return self._osum if self._sized else self._currsize

    def getsizeof(self, value):
        """Return the size of ``value`` (1 unless a ``getsizeof`` callable was given)."""
        return 1 if self._sizeof is None else self._sizeof(value)

    # -- copy and pickle: no __init__ call, so subclasses with their own __init__ work ----

    def _config(self):
        return (self._maxsize, self._sizeof_arg)

    def _configure(self, maxsize, getsizeof):
        _MappingCache.__init__(self, maxsize, getsizeof)

    def __reduce__(self):
        entries, lru = self._dump()
        return (_copyreg.__newobj__, (type(self),), (self._config(), entries, lru, getattr(self, "__dict__", None)))

    def __copy__(self):
        cls = type(self)
        new = cls.__new__(cls)
        new.__setstate__(self.__reduce__()[2])
        return new

    def __setstate__(self, state):
        if len(state) == 2:  # fastsess 0.1 pickles: built by __init__, entries in recency order
            entries, attrs = state
            lru = None
        else:
            config, entries, lru, attrs = state
            self._configure(*config)
        if attrs:
            self.__dict__.update(attrs)
        self._load(entries, lru)


cdef class LRUCache(_MappingCache):
    """Least-recently-used cache; a drop-in replacement for ``cachetools.LRUCache``.

    ``LRUCache(maxsize, getsizeof=None)``.  Every operation is O(1).  Each
    item's size is ``getsizeof(value)`` (default 1; ints or floats);
    inserting evicts least recently used items until the new one fits.

    Raises:
        ValueError: ``maxsize`` negative or not a number; on insert, a value
            larger than ``maxsize`` (the cache is left unchanged).
    """


cdef class TTLCache(_MappingCache):
    """LRU cache whose items expire ``ttl`` seconds after they were written.

    ``TTLCache(maxsize, ttl, timer=time.monotonic, getsizeof=None)``: a
    drop-in replacement for ``cachetools.TTLCache``.  ``ttl`` may be a number
    of seconds or a ``timedelta``, and ``timer`` may return seconds or a
    ``datetime`` (e.g. ``timer=datetime.now``).  Expiry follows write time,
    not access time; expired items are invisible to ``len``, ``in``, iteration
    and lookups, and are purged on writes.  Every operation is O(1)
    (``expire`` is O(number expired)).  With the default timer the clock is
    read in C (on Linux the coarse monotonic clock, 1-4 ms resolution).

    Raises:
        ValueError: ``maxsize`` or ``ttl`` negative or not a number, ``timer``
            not callable; on insert, a value larger than ``maxsize``.
    """

    cdef object _ttl_arg

    def __init__(self, maxsize, ttl, timer=_time.monotonic, getsizeof=None):
        self._ttl = check_ttl(ttl)
        self._ttl_arg = ttl
        self._clock = _Timer(timer)
        self._timer = self._clock.func
        self._timed = True
        _MappingCache.__init__(self, maxsize, getsizeof)

    @property
    def ttl(self):
        """The time-to-live of the cache's items, as given (seconds or a ``timedelta``)."""
        return self._ttl_arg

    @property
    def timer(self):
        """The cache's clock: call it for the time; ``with cache.timer as now:`` freezes it."""
        return self._clock

    def expire(self, time=None):
        """Remove items expired at ``time`` (default: now); return them as ``(key, value)`` pairs. O(expired).

        Raises:
            TypeError: ``time`` is neither a number nor a ``datetime``.
        """
        cdef double now = self._now() if time is None else timer_seconds(time)
        cdef list dropped
        with cython.critical_section(self):
            self._purge(now)
            dropped = self._take_dropped()
        if dropped is None:
            return []
        return [((<_Node>node).key, (<_Node>node).value) for node in dropped]

    def _config(self):
        return (self._maxsize, self._sizeof_arg, self._ttl_arg, self._clock.wrapped)

    def _configure(self, maxsize, getsizeof, ttl, timer):
        TTLCache.__init__(self, maxsize, ttl, timer, getsizeof)


MutableMapping.register(LRUCache)
MutableMapping.register(TTLCache)


cdef class LocalCache(_Core):
    """The session-facing cache: LRU with a default TTL and per-entry TTLs.

    ``LocalCache(max_size=10_000, ttl=30.0, timer=None)``.  ``get``, ``set``
    and ``delete`` are O(1) for entries with the default TTL and O(log n) for
    entries given their own ``ttl``.  ``stats`` counts hits, misses, LRU
    evictions and expirations (plain counters, always on).  ``timer=None``
    reads the monotonic clock in C.

    Raises:
        ValueError: ``max_size`` < 1, ``ttl`` negative or not a number, or
            ``timer`` not callable.
    """

    cdef Py_ssize_t _max_size

    def __init__(self, max_size=10_000, ttl=30.0, timer=None):
        self._max_size = check_capacity(max_size, "max_size", 1)
        self._cap = self._max_size
        self._ttl = check_ttl(ttl)
        if timer is not None and not callable(timer):
            raise ValueError(f"timer must be callable, not {timer!r}")
        self._timer = None if timer is _monotonic else timer
        self._timed = True

    @classmethod
    def __class_getitem__(cls, params):
        return GenericAlias(cls, params)

    @property
    def max_size(self):
        """The most entries the cache holds."""
        return self._max_size

    @property
    def ttl(self):
        """The default time-to-live, in seconds."""
        return self._ttl

    def get(self, key, default=None):
        """Return the live value for ``key`` or ``default``; a hit refreshes recency. O(1).

        Raises:
            TypeError: ``key`` is unhashable.
        """
        cdef double now = self._now()
        cdef _Node node
        cdef object value = default
        cdef list dropped
        with cython.critical_section(self):
            node = self._find(key, now)
            if node is not None:
                value = node.value
            dropped = self._take_dropped()
        return value

    def set(self, key, value, ttl=None):
        """Store ``value`` under ``key`` for ``ttl`` seconds (default: the cache's TTL).

        Evicts the least recently used entry when full.  O(1), or O(log n)
        with a per-entry ``ttl``.

        Raises:
            TypeError: ``key`` is unhashable.
            ValueError: ``ttl`` is negative or not a number.
        """
        cdef bint fifo = ttl is None
        cdef double seconds = self._ttl if fifo else check_ttl(ttl)
        cdef double now = self._now()
        cdef list dropped
        with cython.critical_section(self):
            self._store(key, value, 1, now + seconds, fifo, now)
            dropped = self._take_dropped()

    def delete(self, key):
        """Remove ``key``; return True if a live entry was removed. O(1) (O(log n) per-entry TTL)."""
        cdef double now = self._now()
        cdef PyObject* p
        cdef _Node node = None
        cdef list dropped
        with cython.critical_section(self):
            p = PyDict_GetItemWithError(self._map, key)
            if p is not NULL:
                node = <_Node>p
                self._detach(node)
            dropped = self._take_dropped()
        return node is not None and now < node.expires

    def pop(self, key, default=None):
        """Remove ``key`` and return its live value, or ``default``. O(1)."""
        cdef double now = self._now()
        cdef PyObject* p
        cdef _Node node = None
        cdef list dropped
        with cython.critical_section(self):
            p = PyDict_GetItemWithError(self._map, key)
            if p is not NULL:
                node = <_Node>p
                self._detach(node)
            dropped = self._take_dropped()
        if node is not None and now < node.expires:
            return node.value
        return default

    def clear(self):
        """Remove every entry (statistics are kept; see ``reset_stats``)."""
        cdef list old
        with cython.critical_section(self):
            old = self._clear_all()

    def expire(self):
        """Remove the entries whose TTL has passed and return how many. O(expired)."""
        cdef double now = self._now()
        cdef Py_ssize_t count
        cdef list dropped
        with cython.critical_section(self):
            count = self._purge(now)
            dropped = self._take_dropped()
        return count

    def keys(self):
        """The live keys, least recently used first. O(n)."""
        cdef double now = self._now()
        cdef _Node node
        with cython.critical_section(self):
            return [node.key for node in self._live_nodes(now)]

    def __len__(self):
        cdef double now = self._now()
        cdef list dropped
        with cython.critical_section(self):
            self._purge(now)
            dropped = self._take_dropped()
            return len(self._map)

    def __contains__(self, key):
        cdef double now = self._now()
        cdef PyObject* p
        with cython.critical_section(self):
            p = PyDict_GetItemWithError(self._map, key)
            return p is not NULL and now < (<_Node>p).expires

    def __iter__(self):
        return iter(self.keys())

    def __repr__(self):
        return f"LocalCache(max_size={self._max_size}, ttl={self._ttl}, size={len(self)})"

    @property
    def stats(self):
        """A ``CacheStats`` snapshot: hits, misses, evictions, expirations, size, max_size, hit_rate."""
        size = len(self)
        with cython.critical_section(self):
            return make_stats(self._hits, self._misses, self._evictions, self._expirations, size, self._max_size)

    def reset_stats(self):
        """Zero the hit, miss, eviction and expiration counters."""
        with cython.critical_section(self):
            self._hits = self._misses = self._evictions = self._expirations = 0

    def __reduce__(self):
        entries, lru = self._dump()
        return (
            type(self),
            (self._max_size, self._ttl, None if self._timer is None else self._timer),
            (entries, lru, getattr(self, "__dict__", None)),
        )

    def __setstate__(self, state):
        if len(state) == 2:  # fastsess 0.1 pickles: entries in recency order
            entries, attrs = state
            lru = None
        else:
            entries, lru, attrs = state
        if attrs:
            self.__dict__.update(attrs)
        self._load(entries, lru)
