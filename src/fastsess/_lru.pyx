# cython: language_level=3
# cython: freethreading_compatible=True
# cython: binding=False
"""Compiled cache core: ``LRUCache``, ``TTLCache`` and ``LocalCache``.

Layout (every operation O(1), per-entry TTLs O(log n)):

* ``_map``: a dict from key to ``_Node``; it owns the nodes.
* eviction queue: an intrusive circular doubly linked list through every node,
  the next to evict right after the sentinel ``_root``.  ``LRUCache`` and
  ``TTLCache`` keep it in exact recency order (a hit relinks its node at the
  newest end).  ``LocalCache`` uses CLOCK (second chance, as FIFO with
  reinsertion): a new node goes in unvisited at the newest end, a hit only sets
  the entry's visited flag (no relink, no neighbour written), and eviction looks
  at the oldest node: visited, it moves to the newest end with its flag cleared;
  unvisited, it is evicted.
* hit index (``LocalCache``): an open-addressing table from each exact
  str/int/bytes key to a copy of its value, a rounded-down copy of its expiry and
  its visited flag (``fastsess_slot``, 24 bytes), so that a hit reads one slot and
  no node.  It holds borrowed pointers and is updated by the same structure updates
  as the lists.  It is at most 80% full; on Linux a table of 2 MiB or more is
  mapped on its own and advised to use transparent huge pages.
* write-order list: a second intrusive list through the entries that use the
  cache's single TTL; with one TTL, write order is expiry order, so expiry pops
  from its head.
* heap: a binary min-heap (a C array) on ``expires`` for entries given their own
  TTL (``LocalCache.set(..., ttl=...)``); each node knows its heap index.

The links, the heap and the index hold borrowed ``PyObject*`` pointers (the dict
holds the only strong reference to a node, the node to its key and value), so
relinking never touches a reference count.

Never a crash, whatever the keys and callbacks do:

* Python code (a key's ``__hash__``/``__eq__``, ``getsizeof``, a ``timer``, a
  finalizer run by an allocation or a release) never runs between two steps of a
  structure update.  ``getsizeof`` and the timer are called, the key hashed and the
  new node allocated before the structure is touched; evicted nodes and replaced
  values are released after it is consistent again; ``__missing__`` runs after.
* An entry is removed from the dict first (deleting can run ``__eq__`` of a
  colliding key), and unlinked only once that succeeded, so an exception leaves
  the entry fully in place.  A new entry is inserted with ``PyDict_SetDefault``,
  so a key whose ``__eq__`` changes its mind can never replace (and free) a
  linked node.
* Operations whose dict calls may run Python code -- a key that is not an exact
  ``str``, ``int`` or ``bytes``, or a cache holding such a key -- hold a real lock
  (``cython.pymutex``; the GIL is released while waiting).  Re-entering the same
  cache from that code in the same thread raises ``RuntimeError`` instead of
  deadlocking or corrupting.  With only such exact keys, nothing in an operation
  can run Python code, so on GIL builds it runs lock-free (the GIL makes it
  atomic); free-threaded builds always lock, but ``LocalCache``'s lock is striped:
  a hit takes only its thread's stripe, a structure change takes every stripe.
* ``no_gc_clear``: the collector never clears a cache's fields or a node's.  If it
  clears the internal dict while a finalizer still holds the cache, the next call
  notices (the dict's size no longer matches the node count) and starts empty.
"""

cimport cython
from cpython.dict cimport PyDict_GetItemWithError
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.object cimport PyObject, PyObject_Hash
from cpython.pythread cimport PyThread_get_thread_ident
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.stdint cimport uint32_t

import copy as _copy
import copyreg as _copyreg
import sys as _sys
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
    #include <string.h>
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

    /* GIL builds: an operation that runs no Python code is atomic.
       FASTSESS_TEST_STRIPED_LOCK (a test build only) runs a GIL build as a
       free-threaded one is run: every operation locked, hits on the striped lock. */
    #if defined(Py_GIL_DISABLED) || defined(FASTSESS_TEST_STRIPED_LOCK)
    #define FASTSESS_GIL 0
    #else
    #define FASTSESS_GIL 1
    #endif

    /* Free-threaded builds: LocalCache's lock is striped, one mutex per counter
       stripe (below).  A hit takes only its own thread's stripe; whatever changes
       the structure (or must see it whole) takes every stripe, in order.  So hits
       from different threads take different mutexes, and no hit runs while the
       structure changes. */
    #if defined(Py_GIL_DISABLED)
    #define FASTSESS_STRIPED_LOCK 1
    typedef PyMutex fastsess_mutex;
    static inline int fastsess_mutex_init(fastsess_mutex* m) { memset(m, 0, sizeof(*m)); return 0; }
    static inline void fastsess_mutex_fini(fastsess_mutex* m) { (void)m; }
    static inline void fastsess_mutex_lock(fastsess_mutex* m) { PyMutex_Lock(m); }
    static inline void fastsess_mutex_unlock(fastsess_mutex* m) { PyMutex_Unlock(m); }
    #elif defined(FASTSESS_TEST_STRIPED_LOCK)
    #define FASTSESS_STRIPED_LOCK 1
    typedef PyThread_type_lock fastsess_mutex;
    static inline int fastsess_mutex_init(fastsess_mutex* m) { *m = PyThread_allocate_lock(); return *m == NULL ? -1 : 0; }
    static inline void fastsess_mutex_fini(fastsess_mutex* m) { if (*m != NULL) PyThread_free_lock(*m); *m = NULL; }
    static inline void fastsess_mutex_lock(fastsess_mutex* m) {
        if (!PyThread_acquire_lock(*m, NOWAIT_LOCK)) {
            Py_BEGIN_ALLOW_THREADS
            PyThread_acquire_lock(*m, WAIT_LOCK);
            Py_END_ALLOW_THREADS
        }
    }
    static inline void fastsess_mutex_unlock(fastsess_mutex* m) { PyThread_release_lock(*m); }
    #else
    #define FASTSESS_STRIPED_LOCK 0
    typedef char fastsess_mutex;
    static inline int fastsess_mutex_init(fastsess_mutex* m) { *m = 0; return 0; }
    static inline void fastsess_mutex_fini(fastsess_mutex* m) { (void)m; }
    static inline void fastsess_mutex_lock(fastsess_mutex* m) { (void)m; }
    static inline void fastsess_mutex_unlock(fastsess_mutex* m) { (void)m; }
    #endif

    /* Dict calls with the hash computed beforehand (before the lock is taken, and
       never again for a stored key).  The known-hash variants are not public from
       3.13 on; there the key is hashed again, under the lock. */
    #if PY_VERSION_HEX < 0x030D0000 && !defined(PYPY_VERSION)
    #define fastsess_dict_get(d, k, h) _PyDict_GetItem_KnownHash(d, k, h)
    #define fastsess_dict_del(d, k, h) _PyDict_DelItem_KnownHash(d, k, h)
    #else
    #define fastsess_dict_get(d, k, h) PyDict_GetItemWithError(d, k)
    #define fastsess_dict_del(d, k, h) PyDict_DelItem(d, k)
    #endif

    /* LocalCache's hit and miss counters: one 64-byte line per stripe, the stripe
       picked by hashing where the thread's stack lies, so threads counting hits do not write one
       shared line; stats sums the stripes.  Every increment runs with the GIL (GIL
       builds) or under the stripe's mutex (free-threaded builds), so the sums are exact. */
    #define FASTSESS_STRIPES 16
    typedef struct {
        unsigned long long hits;
        unsigned long long misses;
        fastsess_mutex lock;
        char pad[64 - 2 * sizeof(unsigned long long) - sizeof(fastsess_mutex)];
    } fastsess_stripe;
    static int fastsess_stripes_init(fastsess_stripe* stripes) {
        int i;
        for (i = 0; i < FASTSESS_STRIPES; i++) {
            if (fastsess_mutex_init(&stripes[i].lock) < 0) return -1;
        }
        return 0;
    }
    static void fastsess_stripes_fini(fastsess_stripe* stripes) {
        int i;
        for (i = 0; i < FASTSESS_STRIPES; i++) fastsess_mutex_fini(&stripes[i].lock);
    }
    static inline void fastsess_stripe_lock(fastsess_stripe* stripe) { fastsess_mutex_lock(&stripe->lock); }
    static inline void fastsess_stripe_unlock(fastsess_stripe* stripe) { fastsess_mutex_unlock(&stripe->lock); }
    static void fastsess_lock_all(fastsess_stripe* stripes) {
        int i;
        for (i = 0; i < FASTSESS_STRIPES; i++) fastsess_mutex_lock(&stripes[i].lock);
    }
    static void fastsess_unlock_all(fastsess_stripe* stripes) {
        int i;
        for (i = FASTSESS_STRIPES - 1; i >= 0; i--) fastsess_mutex_unlock(&stripes[i].lock);
    }
    static inline fastsess_stripe* fastsess_stripe_of(fastsess_stripe* stripes) {
        /* The thread, told by where its stack is (threads' stacks lie megabytes
           apart; free, unlike a call for the thread id).  A thread may use more
           than one stripe and two threads may share one: the sums stay exact. */
        char here;
        unsigned long long at = (unsigned long long)(uintptr_t)&here >> 16;
        return stripes + (size_t)((at * 0x9E3779B97F4A7C15ULL) >> 60);
    }
    static void* fastsess_stripes_alloc(fastsess_stripe** aligned) {
        char* raw = (char*)PyMem_Calloc(FASTSESS_STRIPES + 1, sizeof(fastsess_stripe));
        if (raw != NULL) {
            *aligned = (fastsess_stripe*)(((uintptr_t)raw + 63) & ~(uintptr_t)63);
        }
        return raw;
    }
    """
    const bint FASTSESS_HAVE_C_CLOCK
    const bint FASTSESS_GIL
    const bint FASTSESS_STRIPED_LOCK
    double fastsess_clock() noexcept nogil
    PyObject* fastsess_dict_get(object d, object k, Py_hash_t h) except? NULL
    int fastsess_dict_del(object d, object k, Py_hash_t h) except -1
    PyObject* PyDict_SetDefault(object d, object k, object v) except NULL
    Py_ssize_t PyDict_GET_SIZE(object d)
    Py_ssize_t fastsess_dict_size "PyDict_GET_SIZE"(PyObject* d)  # no reference taken: for the hit paths
    void fastsess_incref "Py_INCREF"(PyObject* o)
    Py_hash_t fastsess_hash "PyObject_Hash"(PyObject* o)
    object fastsess_steal "(PyObject*)"(PyObject* o)  # hands a new reference over as is
    const int FASTSESS_STRIPES
    ctypedef struct fastsess_stripe:
        unsigned long long hits
        unsigned long long misses
    fastsess_stripe* fastsess_stripe_of(fastsess_stripe* stripes) noexcept
    void* fastsess_stripes_alloc(fastsess_stripe** aligned) noexcept
    int fastsess_stripes_init(fastsess_stripe* stripes) noexcept
    void fastsess_stripes_fini(fastsess_stripe* stripes) noexcept
    void fastsess_stripe_lock(fastsess_stripe* stripe) noexcept
    void fastsess_stripe_unlock(fastsess_stripe* stripe) noexcept
    void fastsess_lock_all(fastsess_stripe* stripes) noexcept
    void fastsess_unlock_all(fastsess_stripe* stripes) noexcept

cdef extern from *:
    """
    #include <string.h>
    /* LocalCache's hit index: an open-addressing table (linear probing) from key to a
       copy of what a hit needs -- the value, the expiry and the CLOCK visited bit --
       so that a hit reads one slot instead of a dict entry and then a node.  The
       dict and the nodes stay the owners (the slot's pointers are borrowed); the
       index is kept in step by every structure update and holds exactly the
       cache's nodes with exact str/int/bytes keys, whose comparison runs no Python
       code.  24 bytes a slot; a removal shifts the slots behind it back (no
       tombstones), so the table is rebuilt only to grow.

       The expiry is kept relative to the index's epoch (the first finite expiry it
       stored) as a float rounded down, so a slot proves an entry live ("now - epoch <
       expires" implies "now < the entry's expiry": rounding is monotonic) but cannot
       prove it expired: a hit that fails the test takes the exact path through the
       entry itself.  That happens in the last float-ulp of an entry's life, 1/128 s
       a day after the epoch, 2 s a year after. */
    #include <stdint.h>
    #include <float.h>
    #include <math.h>
    typedef struct {
        PyObject* key;       /* NULL: empty */
        PyObject* value;
        uint32_t tag;        /* 32 bits folded from the key's hash, except bit 0: the entry's visited bit */
        float expires;       /* expiry - epoch, rounded down (+inf: never) */
    } fastsess_slot;

    static inline uint32_t fastsess_tag(Py_hash_t h) {
        /* bit 0 clear: not visited */
        unsigned long long u = (unsigned long long)h;
        return (uint32_t)(u ^ (u >> 32)) & ~(uint32_t)1;
    }

    static inline size_t fastsess_pos(uint32_t tag, int shift) {
        /* Fibonacci hashing of the tag without bit 0 (the visited bit); shift >= 32 */
        return (size_t)((((unsigned long long)tag | 1ULL) * 0x9E3779B97F4A7C15ULL) >> shift);
    }

    /* ``expires - epoch`` as a float no larger than the double difference. */
    static inline float fastsess_rel_expiry(double expires, double epoch) {
        double d = expires - epoch;
        float f;
        if (!(d < (double)FLT_MAX)) return d == HUGE_VAL ? HUGE_VALF : FLT_MAX;  /* FLT_MAX <= d: below d; NaN: never */
        if (d < -(double)FLT_MAX) return -HUGE_VALF;
        f = (float)d;
        if ((double)f > d) {  /* rounded up: one float down (no libm call) */
            if (f > 0.0f) {
                uint32_t bits;
                memcpy(&bits, &f, sizeof bits);
                bits -= 1;
                memcpy(&f, &bits, sizeof f);
            } else {
                f = -HUGE_VALF;  /* at or before the epoch: left to the exact path */
            }
        }
        return f;
    }

    /* Equality of two exact str/int/bytes objects, in C (what their __eq__ does). */
    static inline int fastsess_safe_eq(PyObject* a, PyObject* b) {
        PyTypeObject* t = Py_TYPE(a);
        Py_ssize_t n;
        if (t != Py_TYPE(b)) return 0;
        if (t == &PyUnicode_Type) {
            n = PyUnicode_GET_LENGTH(a);
            if (n != PyUnicode_GET_LENGTH(b) || PyUnicode_KIND(a) != PyUnicode_KIND(b)) return 0;
            return memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)n * PyUnicode_KIND(a)) == 0;
        }
        if (t == &PyBytes_Type) {
            n = PyBytes_GET_SIZE(a);
            return n == PyBytes_GET_SIZE(b) && memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), (size_t)n) == 0;
        }
        return PyObject_RichCompareBool(a, b, Py_EQ) == 1;  /* exact ints: never fails */
    }

    /* The slot whose key equals ``key`` (an exact str/int/bytes hashing to ``h``), or NULL. */
    static inline fastsess_slot* fastsess_index_find(fastsess_slot* t, size_t mask, int shift, PyObject* key, Py_hash_t h) {
        uint32_t tag = fastsess_tag(h);
        size_t i = fastsess_pos(tag, shift);
        for (;;) {
            fastsess_slot* sl = t + i;
            PyObject* k = sl->key;
            if (k == key) return sl;
            if (k == NULL) return NULL;
            if (((sl->tag ^ tag) & ~(uint32_t)1) == 0 && fastsess_safe_eq(k, key)) return sl;
            i = (i + 1) & mask;
        }
    }

    /* The slot holding this very key object (a node's own key), or NULL: pointer comparisons only. */
    static inline fastsess_slot* fastsess_index_find_same(fastsess_slot* t, size_t mask, int shift, PyObject* key, Py_hash_t h) {
        size_t i = fastsess_pos(fastsess_tag(h), shift);
        for (;;) {
            fastsess_slot* sl = t + i;
            if (sl->key == key) return sl;
            if (sl->key == NULL) return NULL;
            i = (i + 1) & mask;
        }
    }

    /* The first empty slot of ``tag``'s probe sequence (the key is known to be absent). */
    static inline fastsess_slot* fastsess_index_free_slot(fastsess_slot* t, size_t mask, int shift, uint32_t tag) {
        size_t i = fastsess_pos(tag, shift);
        while (t[i].key != NULL) i = (i + 1) & mask;
        return t + i;
    }

    /* Empty slot ``sl``, moving back each later slot of the run that may take its place
       (one whose home is not between the hole and itself), so every probe still ends
       at the first empty slot. */
    static void fastsess_index_delete(fastsess_slot* t, size_t mask, int shift, fastsess_slot* sl) {
        size_t hole = (size_t)(sl - t), j = hole, home;
        for (;;) {
            j = (j + 1) & mask;
            if (t[j].key == NULL) break;
            home = fastsess_pos(t[j].tag, shift);
            if (((j - home) & mask) >= ((j - hole) & mask)) {
                t[hole] = t[j];
                hole = j;
            }
        }
        memset(t + hole, 0, sizeof(fastsess_slot));
    }

    /* The table's memory.  On Linux a table of 2 MiB or more is mapped on its own,
       2-MiB-aligned, and advised to use transparent huge pages (MADV_HUGEPAGE: a hint,
       honoured when THP is "always" or "madvise"): a hit reads one random slot, and
       with 4 KiB pages a table of several MiB also misses the TLB on most hits.  The
       mapping is registered with tracemalloc, as PyMem memory is.  Smaller tables, and
       every table elsewhere, come from PyMem_Calloc.  Both are zero-filled. */
    #if defined(__linux__)
    #include <sys/mman.h>
    #endif
    #if defined(__linux__) && defined(MADV_HUGEPAGE)
    #define FASTSESS_HUGE_INDEX 1
    #define FASTSESS_HUGE_PAGE ((size_t)2 << 20)
    #define FASTSESS_TRACE_DOMAIN 0x46535353u  /* tracemalloc domain of the mapped tables */
    static inline size_t fastsess_index_mapped_bytes(size_t cap) {
        /* 0: not mapped (PyMem); else the length of the mapping: the table, rounded up
           to 64 KiB (a multiple of any page size; the start is 2 MiB-aligned, so the
           whole 2 MiB stretches are huge pages and the tail, if any, small ones) */
        size_t bytes = cap * sizeof(fastsess_slot);
        if (bytes < FASTSESS_HUGE_PAGE) return 0;
        return (bytes + 0xFFFF) & ~(size_t)0xFFFF;
    }
    #else
    #define FASTSESS_HUGE_INDEX 0
    #endif

    static fastsess_slot* fastsess_index_alloc(size_t cap) {
    #if FASTSESS_HUGE_INDEX
        size_t len, span;
        char *raw, *t;
        if (cap > ((size_t)-1) / 2 / sizeof(fastsess_slot)) return NULL;  /* the size would overflow */
        len = fastsess_index_mapped_bytes(cap);
        if (len != 0) {
            span = len + FASTSESS_HUGE_PAGE;  /* room to align the start */
            raw = (char*)mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (raw == (char*)MAP_FAILED) return NULL;
            t = (char*)(((uintptr_t)raw + FASTSESS_HUGE_PAGE - 1) & ~(uintptr_t)(FASTSESS_HUGE_PAGE - 1));
            if (t > raw) munmap(raw, (size_t)(t - raw));
            if (t + len < raw + span) munmap(t + len, (size_t)(raw + span - (t + len)));
            (void)madvise(t, len, MADV_HUGEPAGE);  /* refused: small pages, still correct */
    #if !defined(PYPY_VERSION)
            (void)PyTraceMalloc_Track(FASTSESS_TRACE_DOMAIN, (uintptr_t)t, len);
    #endif
            return (fastsess_slot*)t;
        }
    #endif
        return (fastsess_slot*)PyMem_Calloc(cap, sizeof(fastsess_slot));
    }

    /* Release a table of ``cap`` slots from fastsess_index_alloc (NULL: nothing). */
    static void fastsess_index_free(fastsess_slot* t, size_t cap) {
        if (t == NULL) return;
    #if FASTSESS_HUGE_INDEX
        {
            size_t len = fastsess_index_mapped_bytes(cap);
            if (len != 0) {
    #if !defined(PYPY_VERSION)
                (void)PyTraceMalloc_Untrack(FASTSESS_TRACE_DOMAIN, (uintptr_t)t);
    #endif
                munmap((void*)t, len);
                return;
            }
        }
    #endif
        PyMem_Free(t);
    }

    /* A new table of 2**bits slots holding the live slots of ``old`` (``old_cap`` slots; may be NULL).
       NULL on failure (nothing changed). */
    static fastsess_slot* fastsess_index_rebuilt(fastsess_slot* old, size_t old_cap, int bits) {
        size_t cap = (size_t)1 << bits, mask = cap - 1, j;
        int shift = 64 - bits;
        fastsess_slot* t = fastsess_index_alloc(cap);
        if (t == NULL) return NULL;
        for (j = 0; j < old_cap; j++) {
            if (old[j].key != NULL) {
                *fastsess_index_free_slot(t, mask, shift, old[j].tag) = old[j];
            }
        }
        return t;
    }
    """
    ctypedef struct fastsess_slot:
        PyObject* key
        PyObject* value
        uint32_t tag
        float expires
    uint32_t fastsess_tag(Py_hash_t h) noexcept nogil
    float fastsess_rel_expiry(double expires, double epoch) noexcept nogil
    fastsess_slot* fastsess_index_find(fastsess_slot* t, size_t mask, int shift, PyObject* key, Py_hash_t h) noexcept
    fastsess_slot* fastsess_index_find_same(fastsess_slot* t, size_t mask, int shift, PyObject* key, Py_hash_t h) noexcept
    fastsess_slot* fastsess_index_free_slot(fastsess_slot* t, size_t mask, int shift, uint32_t tag) noexcept
    fastsess_slot* fastsess_index_rebuilt(fastsess_slot* old, size_t old_cap, int bits) noexcept
    void fastsess_index_free(fastsess_slot* t, size_t cap) noexcept
    void fastsess_index_delete(fastsess_slot* t, size_t mask, int shift, fastsess_slot* sl) noexcept

cdef extern from *:
    """
    /* LocalCache.get as a METH_FASTCALL C method: dict.get-like argument handling
       without the generic keyword parser on the hit path. */
    typedef PyObject* (*fastsess_get_fn)(PyObject* self, PyObject* key, PyObject* dflt);
    static fastsess_get_fn fastsess_local_get_impl = NULL;

    static PyObject* fastsess_local_get(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
        PyObject* key = NULL;
        PyObject* dflt = NULL;
        Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
        Py_ssize_t i;
        if (nkw == 0 && nargs == 1) {
            return fastsess_local_get_impl(self, args[0], Py_None);
        }
        if (nargs > 2) {
            PyErr_Format(PyExc_TypeError, "get() takes at most 2 arguments (%zd given)", nargs + nkw);
            return NULL;
        }
        if (nargs >= 1) key = args[0];
        if (nargs == 2) dflt = args[1];
        for (i = 0; i < nkw; i++) {
            PyObject* name = PyTuple_GET_ITEM(kwnames, i);
            PyObject** slot;
            if (PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, "key") == 0) {
                slot = &key;
            } else if (PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, "default") == 0) {
                slot = &dflt;
            } else {
                PyErr_Format(PyExc_TypeError, "get() got an unexpected keyword argument '%S'", name);
                return NULL;
            }
            if (*slot != NULL) {
                PyErr_Format(PyExc_TypeError, "get() got multiple values for argument '%S'", name);
                return NULL;
            }
            *slot = args[nargs + i];
        }
        if (key == NULL) {
            PyErr_SetString(PyExc_TypeError, "get() missing required argument 'key'");
            return NULL;
        }
        return fastsess_local_get_impl(self, key, dflt == NULL ? Py_None : dflt);
    }

    static PyMethodDef fastsess_local_get_def = {
        "get", (PyCFunction)(void(*)(void))fastsess_local_get, METH_FASTCALL | METH_KEYWORDS,
        "get($self, key, default=None)\\n--\\n\\n"
        "Return the live value for ``key`` or ``default``; a hit marks the entry visited (CLOCK). O(1).\\n\\n"
        "Raises:\\n    TypeError: ``key`` is unhashable.\\n"
    };

    /* Replace the class's ``get`` with the C method above (done once, at import). */
    static int fastsess_install_get(PyObject* type, fastsess_get_fn impl) {
        PyObject* descr;
        int rc;
        fastsess_local_get_impl = impl;
        descr = PyDescr_NewMethod((PyTypeObject*)type, &fastsess_local_get_def);
        if (descr == NULL) return -1;
        rc = PyDict_SetItemString(((PyTypeObject*)type)->tp_dict, "get", descr);
        Py_DECREF(descr);
        if (rc == 0) PyType_Modified((PyTypeObject*)type);
        return rc;
    }
    """
    ctypedef object (*fastsess_get_fn)(object self, object key, object dflt)
    int fastsess_install_get(object type, fastsess_get_fn impl) except -1

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
# With -b, comparing bytes to str warns (Python code: the warnings machinery).
cdef bint _BYTES_SAFE = not _sys.flags.bytes_warning


cdef inline bint _safe_key(object key) noexcept:
    """Exact str/int/bytes: hashing and comparing it with any such key runs no Python code."""
    cdef type t = type(key)
    return t is str or t is int or (t is bytes and _BYTES_SAFE)


@cython.final
@cython.no_gc_clear
@cython.freelist(32)
cdef class _Node:
    # What a hit reads (value, expires, visited) comes first, side by side: one
    # cache line for most nodes.  96 bytes + the GC header: 112 per node.
    cdef object value
    cdef double expires
    cdef char visited          # CLOCK: read since inserted or given its second chance (indexed nodes: the slot's bit)
    cdef char safe             # _safe_key(key)
    cdef int heap_index        # position in the heap, -1 when not in it
    cdef object key
    cdef Py_hash_t hash
    cdef object size          # 1, or what getsizeof gave (an int or a float)
    cdef PyObject* prev        # eviction queue; NULL when unlinked (once detached: the release chain)
    cdef PyObject* next
    cdef PyObject* xprev       # write-order list; NULL when not in it
    cdef PyObject* xnext


# -- intrusive list primitives (no reference counting, no Python calls) ----------

cdef inline void _unlink(_Node node) noexcept:
    if node.prev is NULL:
        return
    (<_Node>node.prev).next = node.next
    (<_Node>node.next).prev = node.prev
    node.prev = node.next = NULL


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
    # Keep the list sorted by expiry, so expiry can pop from its head: a writer that
    # read the clock a moment before another but stored after it gets the later
    # deadline (the difference is the time between the two clock reads).
    if root.xprev != <PyObject*>root and (<_Node>root.xprev).expires > node.expires:
        node.expires = (<_Node>root.xprev).expires
    node.xnext = <PyObject*>root
    node.xprev = root.xprev
    (<_Node>root.xprev).xnext = <PyObject*>node
    root.xprev = <PyObject*>node


cdef inline void _reset_root(_Node root) noexcept:
    root.prev = root.next = <PyObject*>root
    root.xprev = root.xnext = <PyObject*>root


cdef _Node _new_root():
    cdef _Node root = _Node.__new__(_Node)
    _reset_root(root)
    root.heap_index = -1
    return root


cdef void _release_chain(PyObject* chain) noexcept:
    """Drop the references held by a chain of detached nodes (may run finalizers)."""
    cdef PyObject* p
    while chain is not NULL:
        p = chain
        chain = (<_Node>p).prev
        (<_Node>p).prev = NULL
        Py_DECREF(<object>p)


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


@cython.no_gc_clear
cdef class _Core:
    """Hash map + eviction queue + expiry order + counters + guard, shared by every cache."""

    cdef dict _map
    cdef _Node _root          # root.next: least recently used (CLOCK: next to examine); root.prev: newest
    cdef _Node _xroot         # xroot.xnext: oldest write among default-TTL entries
    cdef PyObject** _heap     # borrowed node pointers, min-heap on expires
    cdef Py_ssize_t _heap_len
    cdef Py_ssize_t _heap_cap
    cdef Py_ssize_t _count    # linked nodes; always len(_map) when consistent
    cdef Py_ssize_t _unsafe   # linked nodes whose key is not _safe_key
    cdef Py_ssize_t _cap
    cdef bint _second_chance  # LocalCache: CLOCK eviction instead of exact LRU
    cdef bint _indexed        # LocalCache: nodes with exact str/int/bytes keys are in the hit index
    cdef fastsess_slot* _index  # the hit index (NULL until the first such node)
    cdef size_t _index_mask   # slots - 1 (slots: a power of two)
    cdef int _index_bits      # log2(slots)
    cdef Py_ssize_t _index_used
    cdef double _index_epoch  # slots keep expiry - epoch (see fastsess_slot)
    cdef bint _index_epoch_set
    cdef bint _sized          # sizes come from getsizeof: _osum and _omax do the accounting
    cdef object _osum         # sum of the sizes (Python int or float: exact, never overflows)
    cdef object _omax         # maxsize as given
    cdef object _timer        # None: the C clock
    cdef _Timer _clock        # TTLCache: its timer, which may be frozen
    cdef bint _timed          # False for LRUCache: entries never expire
    cdef double _ttl
    cdef void* _stripe_mem      # LocalCache: the hit/miss stripes (NULL: not counted)
    cdef fastsess_stripe* _stripes
    cdef unsigned long long _evictions
    cdef unsigned long long _expirations
    cdef cython.pymutex _lock  # (free-threaded LocalCache: the stripes' mutexes instead)
    cdef unsigned long _owner  # thread holding the lock, 0 when free
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        self._map = {}
        self._root = _new_root()
        self._xroot = _new_root()
        self._ttl = INF
        self._osum = 0

    def __dealloc__(self):
        PyMem_Free(self._heap)
        self._heap = NULL
        self._index_drop()
        if self._stripes is not NULL:
            fastsess_stripes_fini(self._stripes)
        PyMem_Free(self._stripe_mem)
        self._stripe_mem = NULL
        self._stripes = NULL

    # -- guard -------------------------------------------------------------------------

    @cython.final
    cdef inline bint _lock_free(self, object key) noexcept:
        """Can this operation run without the lock (GIL build, no Python code possible)?"""
        return FASTSESS_GIL and self._owner == 0 and self._unsafe == 0 and (key is None or _safe_key(key))

    @cython.final
    cdef int _acquire(self) except -1:
        cdef unsigned long me = PyThread_get_thread_ident()
        if self._owner == me:
            raise RuntimeError(
                f"{type(self).__name__} re-entered while it was being updated (from a key's "
                "__hash__/__eq__ or a finalizer running in the middle of one of its operations)"
            )
        if FASTSESS_STRIPED_LOCK and self._stripes is not NULL:
            fastsess_lock_all(self._stripes)  # every stripe, in order (waits detached from the interpreter)
        else:
            self._lock.acquire()  # waits with the GIL released
        self._owner = me
        return 0

    @cython.final
    cdef inline void _release(self) noexcept:
        self._owner = 0
        if FASTSESS_STRIPED_LOCK and self._stripes is not NULL:
            fastsess_unlock_all(self._stripes)
        else:
            self._lock.release()

    @cython.final
    cdef inline int _enter(self, object key) except -1:
        """Start an operation: 1 if the lock was taken (pass it to ``_leave``), else 0."""
        if self._lock_free(key):
            self._check_torn()
            return 0
        self._acquire()
        self._check_torn()
        return 1

    @cython.final
    cdef inline void _leave(self, int locked) noexcept:
        if locked:
            self._release()

    @cython.final
    cdef inline void _check_torn(self) noexcept:
        # The collector cleared the dict (the cache was garbage, a finalizer still
        # used it): the nodes it owned are gone, so start empty.
        if PyDict_GET_SIZE(self._map) != self._count:
            self._reset_links()

    @cython.final
    cdef void _reset_links(self) noexcept:
        _reset_root(self._root)
        _reset_root(self._xroot)
        self._index_drop()
        self._heap_len = 0
        self._count = PyDict_GET_SIZE(self._map)
        self._unsafe = self._count  # unknown keys: take the lock until the cache is cleared
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

    # -- the hit index (LocalCache); the caller is inside _enter/_leave -----------------

    @cython.final
    cdef void _index_drop(self) noexcept:
        """Forget the index (the nodes it described are gone or unlinked)."""
        fastsess_index_free(self._index, 0 if self._index is NULL else self._index_mask + 1)
        self._index = NULL
        self._index_mask = 0
        self._index_bits = 0
        self._index_used = 0
        self._index_epoch = 0.0
        self._index_epoch_set = False

    @cython.final
    cdef int _index_reserve(self) except -1:
        """Make room for one more slot (before the structure is touched: may raise MemoryError)."""
        cdef int bits
        cdef fastsess_slot* grown
        if not self._indexed:
            return 0
        # At most 80% full: a hit's expected probe is 3 slots (1.5 lines) at worst, and
        # a smaller table keeps more of it in cache (100,000 entries: 4 MiB, not 8).
        if self._index is not NULL and (self._index_used + 1) * 5 <= <Py_ssize_t>(self._index_mask + 1) * 4:
            return 0
        bits = 3  # at least 8 slots; at most half full after a rebuild (so growing doubles)
        while (<Py_ssize_t>1 << bits) < (self._index_used + 1) * 2:
            bits += 1
        if bits > 31:  # the home of a slot comes from its 32-bit tag
            raise MemoryError()
        grown = fastsess_index_rebuilt(self._index, 0 if self._index is NULL else self._index_mask + 1, bits)
        if grown is NULL:
            raise MemoryError()
        fastsess_index_free(self._index, 0 if self._index is NULL else self._index_mask + 1)
        self._index = grown
        self._index_bits = bits
        self._index_mask = (<size_t>1 << bits) - 1
        return 0

    @cython.final
    cdef inline fastsess_slot* _slot_of(self, _Node node) noexcept:
        """The index slot of a linked node, or NULL if it is not indexed."""
        if self._index is NULL or not node.safe:
            return NULL
        return fastsess_index_find_same(self._index, self._index_mask, 64 - self._index_bits, <PyObject*>node.key, node.hash)

    @cython.final
    cdef void _index_add(self, _Node node) noexcept:
        # the caller reserved the slot
        cdef uint32_t tag = fastsess_tag(node.hash)  # not visited
        cdef fastsess_slot* sl = fastsess_index_free_slot(self._index, self._index_mask, 64 - self._index_bits, tag)
        sl.tag = tag
        sl.key = <PyObject*>node.key
        sl.value = <PyObject*>node.value
        sl.expires = self._slot_expiry(node.expires)
        self._index_used += 1

    @cython.final
    cdef inline float _slot_expiry(self, double expires) noexcept:
        """What a slot keeps of ``expires``: relative to the epoch, which the first finite expiry sets."""
        if not self._index_epoch_set and expires < INF and expires > -INF:
            self._index_epoch = expires
            self._index_epoch_set = True
        return fastsess_rel_expiry(expires, self._index_epoch)

    @cython.final
    cdef void _index_remove(self, _Node node) noexcept:
        cdef fastsess_slot* sl = self._slot_of(node)
        if sl is not NULL:
            fastsess_index_delete(self._index, self._index_mask, 64 - self._index_bits, sl)
            self._index_used -= 1

    @cython.final
    cdef void _index_sync(self, _Node node) noexcept:
        """Copy a node's value and expiry into its slot after an update."""
        cdef fastsess_slot* sl = self._slot_of(node)
        if sl is not NULL:
            sl.value = <PyObject*>node.value
            sl.expires = self._slot_expiry(node.expires)

    @cython.final
    cdef inline void _mark(self, _Node node) noexcept:
        """CLOCK: mark ``node`` visited (in its slot if it has one), writing only if it was not."""
        cdef fastsess_slot* sl = self._slot_of(node)
        if sl is not NULL:
            if not (sl.tag & 1):
                sl.tag |= 1
        elif not node.visited:
            node.visited = True

    @cython.final
    cdef inline bint _take_mark(self, _Node node) noexcept:
        """CLOCK: was ``node`` visited?  Clears the mark."""
        cdef fastsess_slot* sl = self._slot_of(node)
        cdef bint marked
        if sl is not NULL:
            marked = sl.tag & 1
            sl.tag &= ~(<uint32_t>1)
            return marked
        marked = node.visited
        node.visited = False
        return marked

    # -- heap on a C array of borrowed pointers ------------------------------------------

    @cython.final
    cdef int _heap_reserve(self) except -1:
        cdef Py_ssize_t cap
        cdef PyObject** grown
        if self._heap_len < self._heap_cap:
            return 0
        if self._heap_cap >= 0x40000000:  # heap_index is a C int
            raise MemoryError("too many entries with their own TTL")
        cap = 16 if self._heap_cap == 0 else self._heap_cap * 2
        grown = <PyObject**>PyMem_Realloc(self._heap, cap * sizeof(PyObject*))
        if grown is NULL:
            raise MemoryError()
        self._heap = grown
        self._heap_cap = cap
        return 0

    @cython.final
    cdef inline void _heap_place(self, _Node node, Py_ssize_t i) noexcept:
        self._heap[i] = <PyObject*>node
        node.heap_index = i

    @cython.final
    cdef void _heap_sift_up(self, Py_ssize_t i) noexcept:
        cdef _Node node = <_Node>self._heap[i]
        cdef _Node parent
        cdef Py_ssize_t up
        while i > 0:
            up = (i - 1) >> 1
            parent = <_Node>self._heap[up]
            if parent.expires <= node.expires:
                break
            self._heap_place(parent, i)
            i = up
        self._heap_place(node, i)

    @cython.final
    cdef void _heap_sift_down(self, Py_ssize_t i) noexcept:
        cdef Py_ssize_t n = self._heap_len
        cdef _Node node = <_Node>self._heap[i]
        cdef Py_ssize_t c
        while True:
            c = 2 * i + 1
            if c >= n:
                break
            if c + 1 < n and (<_Node>self._heap[c + 1]).expires < (<_Node>self._heap[c]).expires:
                c += 1
            if node.expires <= (<_Node>self._heap[c]).expires:
                break
            self._heap_place(<_Node>self._heap[c], i)
            i = c
        self._heap_place(node, i)

    @cython.final
    cdef void _heap_push(self, _Node node) noexcept:
        # the caller reserved the slot
        self._heap[self._heap_len] = <PyObject*>node
        node.heap_index = self._heap_len
        self._heap_len += 1
        self._heap_sift_up(node.heap_index)

    @cython.final
    cdef void _heap_remove(self, _Node node) noexcept:
        cdef Py_ssize_t i = node.heap_index
        cdef _Node last
        if i < 0:
            return
        node.heap_index = -1
        self._heap_len -= 1
        last = <_Node>self._heap[self._heap_len]
        if last is not node:
            self._heap_place(last, i)
            self._heap_sift_up(i)
            self._heap_sift_down(last.heap_index)

    # -- structure updates; the caller is inside _enter/_leave ----------------------------

    @cython.final
    cdef inline void _link(self, _Node node, bint fifo) noexcept:
        _append(self._root, node)
        if self._timed:
            if fifo:
                _x_append(self._xroot, node)
            else:
                self._heap_push(node)
        self._count += 1
        if self._sized:
            self._osum = self._osum + node.size  # exact int or float: no user code, no overflow
        if not node.safe:
            self._unsafe += 1
        elif self._indexed:
            self._index_add(node)  # after the expiry lists, which may round its expiry up

    @cython.final
    cdef int _detach(self, _Node node, PyObject** chain) except -1:
        """Remove ``node`` from the dict, then from the lists; on error nothing changed."""
        Py_INCREF(node)  # the dict's reference goes away; the chain keeps this one
        try:
            fastsess_dict_del(self._map, node.key, node.hash)  # may run a colliding key's __eq__
        except BaseException:
            Py_DECREF(node)
            raise
        self._index_remove(node)
        _unlink(node)
        _x_unlink(node)
        self._heap_remove(node)
        self._count -= 1
        if self._sized:
            self._osum = self._osum - node.size
        if not node.safe:
            self._unsafe -= 1
        node.prev = chain[0]  # unlinked above: prev now chains the detached nodes
        chain[0] = <PyObject*>node
        return 0

    @cython.final
    cdef _Node _expired_head(self, double now):
        cdef _Node node
        if self._xroot.xnext != <PyObject*>self._xroot:
            node = <_Node>self._xroot.xnext
            if not now < node.expires:
                return node
        if self._heap_len:
            node = <_Node>self._heap[0]
            if not now < node.expires:
                return node
        return None

    @cython.final
    cdef Py_ssize_t _purge(self, double now, PyObject** chain) except -1:
        cdef _Node node
        cdef Py_ssize_t count = 0
        if not self._timed:
            return 0
        while True:
            node = self._expired_head(now)
            if node is None:
                return count
            self._detach(node, chain)
            self._expirations += 1
            count += 1

    @cython.final
    cdef int _evict_for(self, object size, _Node keep, PyObject** chain) except -1:
        """Evict entries (never ``keep``) until ``size`` fits: least recently used first, or CLOCK's pick.

        ``keep``: the node an update replaces (its old size is freed), or None for a new entry.
        """
        cdef _Node victim
        if self._second_chance:
            return self._evict_clock(size, keep, chain)
        while self._root.next != <PyObject*>self._root:
            victim = <_Node>self._root.next
            if victim is keep or not self._full(size, keep):
                break
            self._detach(victim, chain)
            self._evictions += 1
        return 0

    @cython.final
    cdef bint _full(self, object size, _Node keep) except -1:
        """Does storing ``size`` (replacing ``keep``'s size, if given) need an eviction first?"""
        if self._sized:
            return self._osum - (0 if keep is None else keep.size) + size > self._omax
        return self._count + (1 if keep is None else 0) > self._cap

    @cython.final
    cdef int _evict_clock(self, object size, _Node keep, PyObject** chain) except -1:
        """CLOCK: the oldest node, if visited (or ``keep``), moves to the newest end unvisited; else it is evicted.

        Ends: every pass clears a flag, so within two rounds of the queue.
        """
        cdef PyObject* root = <PyObject*>self._root
        cdef _Node victim
        while self._full(size, keep):
            if self._root.next == root:
                return 0  # nothing to evict
            victim = <_Node>self._root.next
            if self._take_mark(victim) or victim is keep:
                if victim is keep and victim.next == root:
                    return 0  # nothing else to evict
                _unlink(victim)  # its second chance
                _append(self._root, victim)
                continue
            self._detach(victim, chain)
            self._evictions += 1
        return 0

    @cython.final
    cdef inline void _count_lookup(self, bint hit) noexcept:
        """Count a hit or a miss in this thread's stripe (LocalCache; the other caches keep no stats)."""
        cdef fastsess_stripe* stripe
        if self._stripes is not NULL:
            stripe = fastsess_stripe_of(self._stripes)
            if hit:
                stripe.hits += 1
            else:
                stripe.misses += 1

    @cython.final
    cdef PyObject* _lookup(self, object key, Py_hash_t h) except? NULL:
        if h == -1:
            return PyDict_GetItemWithError(self._map, key)
        return fastsess_dict_get(self._map, key, h)

    @cython.final
    cdef _Node _find(self, object key, Py_hash_t h, double now, PyObject** chain):
        """The live node for ``key`` made most recent, or None (counts hit/miss)."""
        cdef PyObject* p = self._lookup(key, h)
        cdef _Node node
        if p is NULL:
            self._count_lookup(False)
            return None
        node = <_Node>p
        if self._timed and not now < node.expires:
            self._detach(node, chain)
            self._expirations += 1
            self._count_lookup(False)
            return None
        if self._second_chance:
            self._mark(node)  # written once, not on every hit: the line stays shared
        elif node.next != <PyObject*>self._root:
            _unlink(node)
            _append(self._root, node)
        self._count_lookup(True)
        return node

    @cython.final
    cdef object _store(self, _Node fresh, double now, PyObject** chain):
        """Store ``fresh`` (key, hash, value, size, expires set; fifo: heap_index == -2).

        Returns the replaced value (to release after leaving), or _MISSING.
        """
        cdef bint fifo = fresh.heap_index == -2
        cdef PyObject* p
        cdef _Node node
        cdef object old
        fresh.heap_index = -1
        self._purge(now, chain)
        p = self._lookup(fresh.key, fresh.hash)
        if p is NULL:
            self._evict_for(fresh.size, None, chain)
            if self._timed and not fifo:
                self._heap_reserve()
            self._index_reserve()
            # SetDefault, not SetItem: a key whose __eq__ changed its mind since the
            # lookup finds the existing node here instead of replacing (freeing) it.
            p = PyDict_SetDefault(self._map, fresh.key, fresh)
            if p == <PyObject*>fresh:
                self._link(fresh, fifo)
                return _MISSING
        node = <_Node>p
        # Update in place: make room first (never evicting the node itself), so a
        # failure leaves the old value and currsize <= maxsize.
        if self._second_chance:
            self._mark(node)
        elif node.next != <PyObject*>self._root:
            _unlink(node)
            _append(self._root, node)
        self._evict_for(fresh.size, node, chain)
        if self._timed and not fifo and node.heap_index < 0:
            self._heap_reserve()
        old = node.value
        node.value = fresh.value
        if self._sized:
            self._osum = self._osum - node.size + fresh.size
        node.size = fresh.size
        node.expires = fresh.expires
        if self._timed:
            if fifo:
                self._heap_remove(node)
                _x_unlink(node)
                _x_append(self._xroot, node)
            else:
                _x_unlink(node)
                if node.heap_index >= 0:
                    self._heap_sift_up(node.heap_index)
                    self._heap_sift_down(node.heap_index)
                else:
                    self._heap_push(node)
        self._index_sync(node)
        return old

    @cython.final
    cdef _Node _new_node(self, object key, object value, object size, double expires, bint fifo):
        """Allocate (may run the GC and so any Python code: before the structure is touched)."""
        cdef _Node node = _Node.__new__(_Node)
        node.key = key
        node.value = value
        node.size = size
        node.expires = expires
        node.heap_index = -2 if fifo else -1
        node.safe = _safe_key(key)
        node.hash = PyObject_Hash(key)
        return node

    @cython.final
    cdef int _put(self, object key, object value, object size, double expires, bint fifo, double now) except -1:
        cdef _Node fresh = self._new_node(key, value, size, expires, fifo)
        cdef PyObject* chain = NULL
        cdef object old = None
        cdef int locked = self._enter(key)
        try:
            old = self._store(fresh, now, &chain)
        finally:
            self._leave(locked)
            _release_chain(chain)
        return 0

    @cython.final
    cdef object _get(self, object key, object default, double now):
        cdef PyObject* chain = NULL
        cdef _Node node
        cdef object value = default
        cdef Py_hash_t h = -1
        cdef int locked
        if self._lock_free(key):
            self._check_torn()
            node = self._find(key, -1, now, &chain)
            if node is not None:
                value = node.value
            if chain is not NULL:
                _release_chain(chain)
            return value
        h = PyObject_Hash(key)
        locked = self._enter(key)
        try:
            node = self._find(key, h, now, &chain)
            if node is not None:
                value = node.value
        finally:
            self._leave(locked)
            _release_chain(chain)
        return value

    @cython.final
    cdef _Node _remove(self, object key):
        """Detach ``key``'s node (live or not) and return it, or None."""
        cdef PyObject* chain = NULL
        cdef PyObject* p
        cdef _Node node = None
        cdef Py_hash_t h = PyObject_Hash(key)
        cdef int locked = self._enter(key)
        try:
            p = self._lookup(key, h)
            if p is not NULL:
                node = <_Node>p
                self._detach(node, &chain)
        finally:
            self._leave(locked)
            _release_chain(chain)
        return node

    @cython.final
    cdef bint _has(self, object key, double now) except -1:
        cdef PyObject* p
        cdef bint found
        cdef Py_hash_t h = PyObject_Hash(key)
        cdef int locked = self._enter(key)
        try:
            p = self._lookup(key, h)
            found = p is not NULL and (not self._timed or now < (<_Node>p).expires)
        finally:
            self._leave(locked)
        return found

    @cython.final
    cdef Py_ssize_t _expire_count(self, double now) except -1:
        cdef PyObject* chain = NULL
        cdef Py_ssize_t count = 0
        cdef int locked
        if not self._timed:
            return 0
        locked = self._enter(None)
        try:
            count = self._purge(now, &chain)
        finally:
            self._leave(locked)
            _release_chain(chain)
        return count

    @cython.final
    cdef Py_ssize_t _live_count(self, double now) except -1:
        cdef Py_ssize_t count
        cdef int locked
        if self._timed:
            self._expire_count(now)
        locked = self._enter(None)
        count = self._count
        self._leave(locked)
        return count

    @cython.final
    cdef _Node _pop_lru(self, double now):
        cdef PyObject* chain = NULL
        cdef _Node node = None
        cdef int locked = self._enter(None)
        try:
            self._purge(now, &chain)
            if self._root.next != <PyObject*>self._root:
                node = <_Node>self._root.next
                self._detach(node, &chain)
        finally:
            self._leave(locked)
            _release_chain(chain)
        return node

    @cython.final
    cdef dict _clear_all(self):
        """Empty the cache; returns the old map, whose nodes the caller releases."""
        cdef dict fresh = {}
        cdef dict old
        cdef int locked = self._enter(None)
        old = self._map
        self._map = fresh
        self._reset_links()
        self._leave(locked)
        return old

    @cython.final
    cdef list _collect(self, double now, int width):
        """Live entries, least recently used first, flattened: width 1 keys; 2 key, value; 3 node, key, value.

        The list is allocated before the walk (an allocation can run the GC and its
        finalizers), so the walk itself runs no Python code.
        """
        cdef list out
        cdef Py_ssize_t n, i
        cdef PyObject* p
        cdef _Node node
        cdef int locked
        while True:
            n = self._count
            out = [None] * (n * width)
            locked = self._enter(None)
            if self._count != n:
                self._leave(locked)
                continue
            i = 0
            p = self._root.next
            while p != <PyObject*>self._root:
                node = <_Node>p
                if not self._timed or now < node.expires:
                    if width == 3:
                        out[i] = node
                        i += 1
                    out[i] = node.key
                    i += 1
                    if width >= 2:
                        out[i] = node.value
                        i += 1
                p = node.next
            self._leave(locked)
            del out[i:]
            return out

    def _dump(self):
        """The live entries in the map's (insertion) order, and their recency order.

        Returns ``(entries, lru)``: ``entries`` are ``(key, value, size, expires,
        fifo)`` tuples, ``lru`` the indexes into ``entries``, least recently used first.
        """
        cdef double now = self._now() if self._timed else 0.0
        cdef list flat = self._collect(now, 3)  # recency order: node, key, value
        cdef list nodes
        cdef _Node node
        cdef int locked = self._enter(None)
        try:
            nodes = list(self._map.values())  # the map's order is insertion order
        finally:
            self._leave(locked)
        nodes = [node for node in nodes if not self._timed or now < node.expires]
        index = {id(node): i for i, node in enumerate(nodes)}
        lru = [index[id(flat[i])] for i in range(0, len(flat), 3) if id(flat[i]) in index]
        return [(node.key, node.value, node.size, node.expires, node.heap_index < 0) for node in nodes], lru

    def _load(self, list entries, lru=None):
        """Insert ``_dump()``'s entries into this empty cache, keeping both orders.

        ``lru=None``: the entries are in recency order (the pickle format of fastsess 0.1).
        """
        cdef PyObject* p
        cdef dict ordered = {}
        cdef Py_hash_t h
        cdef int locked
        cdef double now = self._now() if self._timed else 0.0
        # Store oldest-expiring first, so the write-order list stays sorted ...
        for key, value, size, expires, fifo in sorted(entries, key=lambda e: e[3]):
            self._put(key, value, size, expires, fifo, now)
        locked = self._enter(None)
        try:
            # ... then put the map back in insertion order ...
            for entry in entries:
                p = self._lookup(entry[0], -1)
                if p is not NULL:
                    ordered[entry[0]] = <object>p
            if len(ordered) == self._count:
                self._map = ordered
            # ... and re-establish recency by touching in the saved order.
            for i in (range(len(entries)) if lru is None else lru):
                p = self._lookup(entries[i][0], -1)
                if p is not NULL:
                    _unlink(<_Node>p)
                    _append(self._root, <_Node>p)
        finally:
            self._leave(locked)


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


@cython.no_gc_clear
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
        cdef PyObject* chain = NULL
        cdef bint live
        cdef Py_hash_t h = PyObject_Hash(key)
        cdef int locked = self._enter(key)
        try:
            self._purge(now, &chain)
            p = self._lookup(key, h)
            live = p is not NULL
            if self._count - live <= 0:
                over = False  # nothing else to evict; size <= maxsize was checked
            elif self._sized:
                over = self._osum - ((<_Node>p).size if live else 0) + size > self._omax
            else:
                over = self._count - live + 1 > self._cap
        finally:
            self._leave(locked)
            _release_chain(chain)
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
        cdef PyObject* chain = NULL
        cdef int locked
        time = self._freeze()
        try:
            if self._hooks & H_EXPIRE:
                self.expire(time)
            now = self._now() if self._timed else 0.0
            locked = self._enter(None)
            try:
                self._purge(now, &chain)
                if self._root.next != <PyObject*>self._root:
                    node = <_Node>self._root.next
            finally:
                self._leave(locked)
                _release_chain(chain)
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
        cdef object value = self._get(key, _MISSING, self._now() if self._timed else 0.0)
        if value is _MISSING:
            return self.__missing__(key)
        return value

    def __missing__(self, key):
        """Called by ``cache[key]`` on a miss; the default raises ``KeyError``."""
        raise KeyError(key)

    @cython.final
    cdef int _store_now(self, object key, object value, object size) except -1:
        cdef double now = self._now() if self._timed else 0.0
        self._put(key, value, size, now + self._ttl, True, now)
        return 0

    def __setitem__(self, key, value):
        cdef object size
        cdef double now
        if self._hooks & (H_POPITEM | H_DELITEM | H_EXPIRE):
            self._setitem_hooked(key, value)
            return
        size = self._size_of(value)
        now = self._now() if self._timed else 0.0
        self._put(key, value, size, now + self._ttl, True, now)

    def __delitem__(self, key):
        cdef double now = self._now() if self._timed else 0.0
        cdef _Node node = self._remove(key)
        if node is None or (self._timed and not now < node.expires):
            raise KeyError(key)

    def __contains__(self, key):
        return self._has(key, self._now() if self._timed else 0.0)

    def __len__(self):
        if self._hooks & H_EXPIRE:
            self._expire_hook()
        return self._live_count(self._now() if self._timed else 0.0)

    def __iter__(self):
        # Insertion order, like cachetools (the map is a dict; overwriting keeps a
        # key's place).  LRUCache iterates the map itself, so adding or removing a key
        # during the loop raises RuntimeError like a dict; TTLCache iterates a
        # snapshot of the keys and skips those expired or removed since, as cachetools does.
        cdef list keys
        cdef int locked
        if not self._timed:
            locked = self._enter(None)
            self._leave(locked)  # (notices a map the collector cleared)
            return iter(self._map)
        locked = self._enter(None)
        try:
            keys = list(self._map)
        finally:
            self._leave(locked)
        return self._iter_live(keys)

    def _iter_live(self, list keys):
        for key in keys:
            if self._has(key, self._now()):
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
            value = self._get(key, _MISSING, self._now() if self._timed else 0.0)
            if value is not _MISSING:
                yield (key, value) if pairs else value

    def _items_in_order(self):
        cdef double now = self._now() if self._timed else 0.0
        cdef _Node node
        cdef int locked = self._enter(None)
        try:
            nodes = list(self._map.values())
        finally:
            self._leave(locked)
        return {node.key: node.value for node in nodes if not self._timed or now < node.expires}

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
        if self._hooks & (H_GETITEM | H_CONTAINS):
            return self._get_hooked(key, default)
        return self._get(key, default, self._now() if self._timed else 0.0)

    def pop(self, key, default=_MISSING):
        """Remove ``key`` and return its value, or ``default``. O(1).

        A subclass overriding ``__getitem__``, ``__contains__`` or ``__delitem__``
        gets cachetools' ``pop`` (through those methods).

        Raises:
            KeyError: ``key`` is absent (or expired) and no default was given.
        """
        cdef double now
        cdef _Node node
        if self._hooks & (H_GETITEM | H_CONTAINS | H_DELITEM):
            return self._pop_hooked(key, default)
        now = self._now() if self._timed else 0.0
        node = self._remove(key)
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
        cdef _Node node
        if self._hooks & (H_DELITEM | H_EXPIRE):
            return self._popitem_hooked()
        node = self._pop_lru(self._now() if self._timed else 0.0)
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
        cdef dict old = self._clear_all()
        # a loop over the old map (LRUCache iteration) now raises RuntimeError, as with dict.clear()
        old.clear()

    @property
    def maxsize(self):
        """The maximum size of the cache, as given to the constructor."""
        return self._maxsize

    @property
    def currsize(self):
        """The sum of the sizes of the live items (an exact int, or a float if ``getsizeof`` gave floats)."""
        cdef int locked
        if self._hooks & H_EXPIRE:
            self._expire_hook()
        if self._timed:
            self._expire_count(self._now())
        locked = self._enter(None)
        size = self._osum if self._sized else self._count
        self._leave(locked)
        return size

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


@cython.no_gc_clear
cdef class LRUCache(_MappingCache):
    """Least-recently-used cache; a drop-in replacement for ``cachetools.LRUCache``.

    ``LRUCache(maxsize, getsizeof=None)``.  Every operation is O(1).  Each
    item's size is ``getsizeof(value)`` (default 1; ints or floats);
    inserting evicts least recently used items until the new one fits.

    Raises:
        ValueError: ``maxsize`` negative or not a number; on insert, a value
            larger than ``maxsize`` (the cache is left unchanged).
    """


@cython.no_gc_clear
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
        cdef PyObject* chain = NULL
        cdef PyObject* p
        cdef list out = []
        cdef int locked = self._enter(None)
        try:
            self._purge(now, &chain)
        finally:
            self._leave(locked)
        try:
            p = chain
            while p is not NULL:
                out.append(((<_Node>p).key, (<_Node>p).value))
                p = (<_Node>p).prev
        finally:
            _release_chain(chain)
        return out

    def _config(self):
        return (self._maxsize, self._sizeof_arg, self._ttl_arg, self._clock.wrapped)

    def _configure(self, maxsize, getsizeof, ttl, timer):
        TTLCache.__init__(self, maxsize, ttl, timer, getsizeof)


MutableMapping.register(LRUCache)
MutableMapping.register(TTLCache)


cdef PyObject* _local_get_striped(LocalCache self, object key, PyObject* default, double now) noexcept:
    """A free-threaded hit: only this thread's stripe is locked.

    Returns a new reference to the value (hit) or to ``default`` (miss), or NULL to
    fall back to the locked path (expired entry, keys outside the index, a torn map).
    The caller checked that ``key`` is an exact str/int/bytes and that this thread
    does not hold the cache's lock.  Every structure change holds every stripe, so
    under one stripe the index, the dict size and the counts are whole; nothing here
    runs Python code or writes a shared object other than the value's reference
    count.  Readers under other stripes may set the same visited bit at the same
    time (the same value).
    """
    cdef fastsess_stripe* stripe = fastsess_stripe_of(self._stripes)
    cdef fastsess_slot* sl = NULL
    cdef PyObject* result = NULL
    cdef Py_hash_t h = fastsess_hash(<PyObject*>key)  # exact str/int/bytes: never fails
    fastsess_stripe_lock(stripe)
    if self._unsafe == 0 and fastsess_dict_size(<PyObject*>self._map) == self._count:
        if self._index is not NULL:
            sl = fastsess_index_find(self._index, self._index_mask, 64 - self._index_bits, <PyObject*>key, h)
        if sl is NULL:
            stripe.misses += 1
            result = default
            fastsess_incref(result)
        elif now - self._index_epoch < sl.expires:  # sure to be live (else: the exact path)
            if not (sl.tag & 1):
                sl.tag |= 1
            stripe.hits += 1
            result = sl.value
            fastsess_incref(result)  # before the stripe is let go: no release can come between
    fastsess_stripe_unlock(stripe)
    return result


cdef object _local_get(LocalCache self, object key, object default):
    """``LocalCache.get``: the hit path inlined, everything else through ``_Core._get``.

    ``self`` is typed in the signature, so it stays a borrowed reference: a hit
    writes nothing to the cache object (not even its reference count).
    """
    cdef double now = self._now()
    cdef fastsess_slot* sl = NULL
    cdef Py_hash_t h
    cdef PyObject* found
    if FASTSESS_STRIPED_LOCK:
        if self._stripes is not NULL and _safe_key(key) and self._owner != PyThread_get_thread_ident():
            found = _local_get_striped(self, key, <PyObject*>default, now)
            if found is not NULL:
                return fastsess_steal(found)
    elif self._lock_free(key) and fastsess_dict_size(<PyObject*>self._map) == self._count:
        # An exact str/int/bytes key on a GIL build, and only such keys in the cache:
        # nothing here runs Python code.  Every node is in the index, so a hit reads
        # one slot (and sets its visited bit, once) and a miss ends at an empty slot.
        if self._index is not NULL:
            h = PyObject_Hash(key)
            sl = fastsess_index_find(self._index, self._index_mask, 64 - self._index_bits, <PyObject*>key, h)
        if sl is NULL:
            self._count_lookup(False)
            return default
        if now - self._index_epoch < sl.expires:  # sure to be live (else: the exact path decides)
            if not (sl.tag & 1):  # written once, not on every hit
                sl.tag |= 1
            self._count_lookup(True)
            return <object>sl.value
    return self._get(key, default, now)


@cython.no_gc_clear
cdef class LocalCache(_Core):
    """The session-facing cache: CLOCK eviction with a default TTL and per-entry TTLs.

    ``LocalCache(max_size=10_000, ttl=30.0, timer=None)``.  Eviction is CLOCK
    (second chance), not exact LRU: a hit only marks its entry visited; when
    full, the oldest entry is evicted unless it is marked, in which case it
    moves to the newest end unmarked and the next oldest is examined.  ``get``, ``set`` and ``delete`` are O(1) (eviction
    amortized) for entries with the default TTL and O(log n) for entries given
    their own ``ttl``.  ``stats`` counts hits, misses, evictions and
    expirations (always on).  ``timer=None`` reads the monotonic clock in C.

    Raises:
        ValueError: ``max_size`` < 1, ``ttl`` negative or not a number, or
            ``timer`` not callable.
    """

    cdef Py_ssize_t _max_size

    def __cinit__(self, *args, **kwargs):
        self._second_chance = True
        self._indexed = True
        self._stripe_mem = fastsess_stripes_alloc(&self._stripes)
        if self._stripe_mem is NULL:
            raise MemoryError()
        if fastsess_stripes_init(self._stripes) < 0:
            PyMem_Free(self._stripe_mem)
            self._stripe_mem = NULL
            self._stripes = NULL
            raise MemoryError()

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
        """Return the live value for ``key`` or ``default``; a hit marks the entry visited (CLOCK). O(1).

        (Replaced at import by the same method as a METH_FASTCALL C function; see
        ``_local_get``.)

        Raises:
            TypeError: ``key`` is unhashable.
        """
        return _local_get(self, key, default)

    def set(self, key, value, ttl=None):
        """Store ``value`` under ``key`` for ``ttl`` seconds (default: the cache's TTL).

        A new key goes in at the newest end; overwriting a key keeps its place and
        marks it visited.  When full, evicts the entry CLOCK picks.  O(1)
        amortized, or O(log n) with a per-entry ``ttl``.

        Raises:
            TypeError: ``key`` is unhashable.
            ValueError: ``ttl`` is negative or not a number.
        """
        cdef bint fifo = ttl is None
        cdef double seconds = self._ttl if fifo else check_ttl(ttl)
        cdef double now = self._now()
        self._put(key, value, 1, now + seconds, fifo, now)

    def delete(self, key):
        """Remove ``key``; return True if a live entry was removed. O(1) (O(log n) per-entry TTL)."""
        cdef double now = self._now()
        cdef _Node node = self._remove(key)
        return node is not None and now < node.expires

    def pop(self, key, default=None):
        """Remove ``key`` and return its live value, or ``default``. O(1)."""
        cdef double now = self._now()
        cdef _Node node = self._remove(key)
        if node is not None and now < node.expires:
            return node.value
        return default

    def clear(self):
        """Remove every entry (statistics are kept; see ``reset_stats``)."""
        self._clear_all()

    def expire(self):
        """Remove the entries whose TTL has passed and return how many. O(expired)."""
        return self._expire_count(self._now())

    def keys(self):
        """The live keys in eviction-queue order, next to examine first. O(n).

        Hits do not reorder them; an eviction moves the marked entries it passes to the end.
        """
        return self._collect(self._now(), 1)

    def __len__(self):
        return self._live_count(self._now())

    def __contains__(self, key):
        return self._has(key, self._now())

    def __iter__(self):
        return iter(self.keys())

    def __repr__(self):
        return f"LocalCache(max_size={self._max_size}, ttl={self._ttl}, size={len(self)})"

    @property
    def stats(self):
        """A ``CacheStats`` snapshot: hits, misses, evictions, expirations, size, max_size, hit_rate."""
        cdef unsigned long long hits = 0, misses = 0
        cdef int i
        cdef int locked
        size = len(self)
        locked = self._enter(None)
        for i in range(FASTSESS_STRIPES):
            hits += self._stripes[i].hits
            misses += self._stripes[i].misses
        self._leave(locked)
        return make_stats(hits, misses, self._evictions, self._expirations, size, self._max_size)

    def reset_stats(self):
        """Zero the hit, miss, eviction and expiration counters."""
        cdef int i
        cdef int locked = self._enter(None)
        for i in range(FASTSESS_STRIPES):
            self._stripes[i].hits = self._stripes[i].misses = 0
        self._evictions = self._expirations = 0
        self._leave(locked)

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


fastsess_install_get(LocalCache, <fastsess_get_fn>_local_get)
