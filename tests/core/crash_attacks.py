"""Attacks on the cache core, each run in a child process by ``test_crash.py``.

``python crash_attacks.py IMPL ATTACK`` imports the compiled core (``c``) or the
pure twin (``py``), runs one attack for about a second at most, then checks that
the cache is still consistent.  Python exceptions raised by the cache during an
attack are allowed (that is the contract: at worst an exception); a crash (a
signal) or a broken invariant is not: the first kills the process, the second
exits with status 1 and a message on stderr.
"""

# The lambdas below are called at once by attempt(), inside the loop that binds their names.
# ruff: noqa: B023

from __future__ import annotations

import gc
import importlib
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MODULES = {"c": "fastsess._lru", "py": "fastsess._lru_py"}
SECONDS = float(os.environ.get("CRASH_ATTACK_SECONDS", "0.8"))  # each timed attack stops by itself


def consistent(cache: Any, probe: bool = True) -> None:
    """Exit with status 1 unless ``cache`` agrees with itself (call with every key disarmed).

    ``probe``: also store, read and remove a fresh key (not with a TTL shorter than the check).
    """
    keys = list(cache)
    problems = []
    if len(keys) != len(cache):
        problems.append(f"len(list(c))={len(keys)} != len(c)={len(cache)}")
    if len({id(k) for k in keys}) != len(keys):
        problems.append("a key is listed twice")
    for key in keys:
        if key not in cache:
            problems.append(f"{key!r} listed but not `in` the cache")
    if hasattr(cache, "currsize"):
        sizes = sum(cache.getsizeof(cache[k]) for k in keys)
        if not cache.currsize <= cache.maxsize:
            problems.append(f"currsize {cache.currsize} > maxsize {cache.maxsize}")
        if cache.currsize != sizes:
            problems.append(f"currsize {cache.currsize} != sum of sizes {sizes}")
    else:
        if len(keys) > cache.max_size:
            problems.append(f"{len(keys)} entries > max_size {cache.max_size}")
        if cache.stats.size != len(keys):
            problems.append(f"stats.size {cache.stats.size} != {len(keys)}")
    # still usable afterwards
    key = ("probe", len(keys))
    if not probe:
        ok = True
    elif hasattr(cache, "currsize"):
        value: Any = "v"
        try:
            cache.getsizeof(value)
        except TypeError:
            value = 1
        cache[key] = value
        ok = cache.get(key) == value and cache.pop(key) == value and key not in cache
    else:
        cache.set(key, 1, ttl=3600.0)
        ok = cache.get(key) == 1 and cache.delete(key) and key not in cache
    if not ok:
        problems.append("store/get/remove of a fresh key failed afterwards")
    if problems:
        sys.stderr.write("INCONSISTENT: " + "; ".join(problems) + "\n")
        sys.exit(1)


def attempt(op: Callable[[], Any]) -> None:
    """Run one cache call; a Python exception is an allowed outcome."""
    try:
        op()
    except Exception:  # noqa: BLE001 - the contract allows any exception, not a crash
        pass


def run_threads(workers: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []

    def wrap(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(w)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@dataclass(frozen=True)
class Point:
    x: int
    y: str


@dataclass(frozen=True)
class YieldingPoint:
    """A frozen dataclass whose ``__hash__`` lets other threads run (as any Python code may)."""

    x: int

    def __hash__(self) -> int:
        time.sleep(0)  # releases the GIL: a thread switch inside the hash, every time
        return hash(self.x)


# -- the attacks ------------------------------------------------------------------


def threads_dataclass_keys(m: Any) -> None:
    """Threads doing ``c[k] = 1`` and ``c.pop(k, None)`` over 48 frozen dataclass keys.

    (At the default switch interval this takes seconds to go wrong on a busy machine;
    1 us makes a thread switch inside a key's ``__hash__``/``__eq__`` near certain.)
    """
    sys.setswitchinterval(1e-6)
    for keys in ([Point(i, str(i)) for i in range(48)], [YieldingPoint(i) for i in range(48)]):
        cache = m.LRUCache(32)
        stop = time.monotonic() + SECONDS / 2

        def writer() -> None:
            while time.monotonic() < stop:
                for k in keys:
                    cache[k] = 1

        def remover() -> None:
            while time.monotonic() < stop:
                for k in keys:
                    cache.pop(k, None)

        run_threads([writer, remover, writer, remover])
        consistent(cache)


def cachetools_cached_pool(m: Any) -> None:
    """``@cachetools.cached(LRUCache(64))`` on a function of a dataclass, 4 worker threads."""
    from concurrent.futures import ThreadPoolExecutor

    import cachetools

    sys.setswitchinterval(1e-6)
    rng = random.Random(1)
    for make in (lambda x: Point(x, "ab"), YieldingPoint):
        cache = m.LRUCache(64)

        @cachetools.cached(cache)
        def double(p: Any) -> int:
            return p.x * 2

        points = [make(rng.randrange(200)) for _ in range(2000)]
        stop = time.monotonic() + SECONDS / 2
        with ThreadPoolExecutor(4) as pool:
            while time.monotonic() < stop:
                assert list(pool.map(double, points, chunksize=20)) == [p.x * 2 for p in points]
        consistent(cache)


class SelfStoringKey:
    """A key whose ``__hash__`` stores the key itself in the cache on its 2nd call."""

    armed = True

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.calls = 0

    def __hash__(self) -> int:
        self.calls += 1
        if self.armed and self.calls == 2:
            attempt(lambda: self.cache.__setitem__(self, "inner"))
        return 12345

    def __eq__(self, other: object) -> bool:
        return self is other


def hash_stores_itself(m: Any) -> None:
    for make in (lambda: m.LRUCache(8), lambda: m.TTLCache(8, 100)):
        cache = make()
        key = SelfStoringKey(cache)
        attempt(lambda: cache.__setitem__(key, "outer"))
        for i in range(20):
            attempt(lambda: cache.__setitem__(i, i))
        SelfStoringKey.armed = False
        consistent(cache)
        SelfStoringKey.armed = True
    cache = m.LocalCache(8, 100)
    key = SelfStoringKey(cache)
    key.cache = type("Adapter", (), {"__setitem__": lambda _, k, v: cache.set(k, v)})()
    attempt(lambda: cache.set(key, "outer"))
    for i in range(20):
        attempt(lambda: cache.set(i, i))
    SelfStoringKey.armed = False
    consistent(cache)


class Meddler:
    """A key whose ``__hash__``/``__eq__`` run a cache method on the same cache."""

    armed = True

    def __init__(self, n: int, action: Callable[[], Any], hash_value: int | None = None) -> None:
        self.n = n
        self.action = action
        self.hash_value = n if hash_value is None else hash_value

    depth = 0  # actions do not nest (iterating a TTLCache hashes every key again)

    def meddle(self) -> None:
        if self.armed and Meddler.depth == 0:
            Meddler.depth += 1
            try:
                attempt(self.action)
            finally:
                Meddler.depth -= 1

    def __hash__(self) -> int:
        self.meddle()
        return self.hash_value

    def __eq__(self, other: object) -> bool:
        self.meddle()
        return isinstance(other, Meddler) and other.n == self.n

    def __repr__(self) -> str:
        return f"Meddler({self.n})"


def hash_clears_during_get(m: Any) -> None:
    """``__hash__`` calls ``c.clear()`` during ``c.get(k)`` (and friends).

    After clearing it allocates buffers, to overwrite the memory of anything the clear freed.
    """

    junk: list[Any] = []

    def clear_and_churn(cache: Any) -> Callable[[], Any]:
        def run() -> None:
            cache.clear()
            junk[:] = [bytearray(b"\x41") * size for size in (600, 1200, 2400, 4800) for _ in range(4)]

        return run

    for make in (lambda: m.LRUCache(64), lambda: m.TTLCache(64, 100), lambda: m.LocalCache(64, 100)):
        cache = make()
        store = cache.set if hasattr(cache, "set") else cache.__setitem__
        for j in range(100):
            Meddler.armed = False
            key = Meddler(j, clear_and_churn(cache))
            for i in range(40):
                store(i, i)
            store(key, j)  # stored while quiet: the lookups below find it
            Meddler.armed = True
            attempt(lambda: cache.get(key))
            attempt(lambda: key in cache)
            if hasattr(cache, "set"):
                attempt(lambda: cache.set(key, j))
                attempt(lambda: cache.delete(key))
            else:
                attempt(lambda: cache[key])
                attempt(lambda: cache.__setitem__(key, j))
                attempt(lambda: cache.pop(key, None))
        Meddler.armed = False
        consistent(cache)
    Meddler.armed = True


def hash_reenters(m: Any) -> None:
    """Keys whose ``__hash__``/``__eq__`` call clear/popitem/setitem/del on the same cache, mixed ops.

    Keys collide (10 hash values), so lookups call ``__eq__`` too.  This is also the
    ``OrderedDict`` re-entrancy crash of the pure twin.
    """
    rng = random.Random(7)
    for make in (lambda: m.LRUCache(16), lambda: m.TTLCache(16, 100, getsizeof=len)):
        cache = make()
        actions: list[Callable[[], Any]] = [
            cache.clear,
            cache.popitem,
            lambda: cache.__setitem__(rng.randrange(100), "v"),
            lambda: cache.__delitem__(rng.randrange(100)),
            lambda: cache.pop(rng.randrange(100), None),
            lambda: list(cache),
            lambda: len(cache),
        ]
        keys = [Meddler(i, rng.choice(actions), hash_value=i % 10) for i in range(40)]
        stop = time.monotonic() + SECONDS / 2
        while time.monotonic() < stop:
            for _ in range(200):
                k = rng.choice(keys) if rng.random() < 0.7 else rng.randrange(100)
                r = rng.random()
                if r < 0.35:
                    attempt(lambda: cache.__setitem__(k, "v" * rng.randrange(1, 4)))
                elif r < 0.6:
                    attempt(lambda: cache.get(k))
                elif r < 0.7:
                    attempt(lambda: cache.pop(k, None))
                elif r < 0.8:
                    attempt(cache.popitem)
                elif r < 0.9:
                    attempt(lambda: cache.__delitem__(k))
                else:
                    attempt(lambda: k in cache)
        Meddler.armed = False
        consistent(cache)
        Meddler.armed = True


class Fragile:
    """A key whose ``__hash__`` raises once armed."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.armed = False

    def __hash__(self) -> int:
        if self.armed:
            raise ValueError("hash refused")
        return self.n

    def __eq__(self, other: object) -> bool:
        return self is other


def hash_raises_during_eviction(m: Any) -> None:
    """An overwrite in ``TTLCache(3, 100, getsizeof=len)`` evicts a key whose ``__hash__`` raises."""
    cache = m.TTLCache(3, 100, getsizeof=len)
    fragile = Fragile(1)
    cache[fragile] = "x"
    cache["b"] = "x"
    cache["c"] = "x"
    fragile.armed = True
    attempt(lambda: cache.__setitem__("c", "xxx"))  # must evict fragile and "b"
    try:
        size = cache.currsize
    except Exception:  # noqa: BLE001 - allowed; consistency is checked below
        size = 0
    if not size <= cache.maxsize:
        sys.stderr.write(f"INCONSISTENT: currsize {size} > maxsize after the failed overwrite\n")
        sys.exit(1)
    attempt(cache.expire)
    attempt(lambda: cache.expire(time.monotonic() + 1000))
    attempt(lambda: list(cache))
    fragile.armed = False
    consistent(cache)
    # the same with per-item sizes on an LRUCache
    cache = m.LRUCache(3, getsizeof=len)
    fragile = Fragile(2)
    cache[fragile] = "x"
    cache["b"] = "xx"
    fragile.armed = True
    attempt(lambda: cache.__setitem__("b", "xxx"))
    attempt(lambda: cache.__setitem__("d", "xxx"))
    fragile.armed = False
    consistent(cache)


class Touchy:
    """Colliding keys (4 hash values) whose ``__eq__`` raises 30% of the time."""

    rng = random.Random(3)
    armed = True

    def __init__(self, n: int) -> None:
        self.n = n

    def __hash__(self) -> int:
        return self.n % 4

    def __eq__(self, other: object) -> bool:
        if self.armed and self.rng.random() < 0.3:
            raise ArithmeticError("eq refused")
        return isinstance(other, Touchy) and other.n == self.n


def eq_raises_on_collisions(m: Any) -> None:
    """20,000 mixed operations on colliding keys whose ``__eq__`` raises at random."""
    rng = random.Random(5)
    now = [0.0]
    caches = [m.LRUCache(12), m.TTLCache(12, 0.001, timer=lambda: now[0], getsizeof=len), m.LRUCache(20, getsizeof=len)]
    keys = [Touchy(i) for i in range(30)]
    local = m.LocalCache(12, 0.001, timer=lambda: now[0])
    for op in range(20_000):
        now[0] += 0.0001
        cache = caches[op % 3]
        k = rng.choice(keys)
        r = rng.random()
        if r < 0.3:
            attempt(lambda: cache.__setitem__(k, "v" * rng.randrange(1, 5)))
            if hasattr(cache, "expire"):
                attempt(cache.expire)  # right after a write that may have failed halfway
        elif r < 0.5:
            attempt(lambda: cache.get(k))
        elif r < 0.6:
            attempt(lambda: cache.pop(k, None))
        elif r < 0.65:
            attempt(cache.popitem)
        elif r < 0.7:
            attempt(lambda: cache.__delitem__(k))
        elif r < 0.75:
            attempt(lambda: k in cache)
        elif r < 0.78:
            attempt(lambda: cache.setdefault(k, "d"))
        elif r < 0.8:
            attempt(lambda: cache.expire() if hasattr(cache, "expire") else list(cache))
        elif r < 0.9:
            attempt(lambda: local.set(k, op, ttl=rng.choice([None, 0.0005, 0.002])))
        elif r < 0.95:
            attempt(lambda: local.get(k))
        else:
            attempt(lambda: local.delete(k))
    Touchy.armed = False
    for cache in caches:
        consistent(cache)
    consistent(local)


def _tp_clear() -> Callable[[Any], bool]:
    """Call ``type(obj)->tp_clear(obj)``, as the cyclic GC does to break a garbage cycle.

    Returns False when the type has no ``tp_clear``.  ``tp_flags`` is found in the
    ``PyTypeObject`` (its offset depends on the build: free-threaded objects have a
    larger header) as the one offset holding ``__flags__`` for several types;
    ``tp_clear`` follows ``tp_doc`` and ``tp_traverse``.
    """
    import ctypes

    ptr = ctypes.sizeof(ctypes.c_void_p)
    probes = (dict, list, set, type, Point)
    offsets = [at for at in range(ptr, 40 * ptr, ptr) if all(ctypes.c_ulong.from_address(id(tp) + at).value == tp.__flags__ for tp in probes)]
    if len(offsets) != 1:
        raise RuntimeError(f"tp_flags not found in the PyTypeObject layout: {offsets}")
    clear_at = offsets[0] + 3 * ptr  # tp_flags (padded to a pointer), tp_doc, tp_traverse

    def clear(obj: Any) -> bool:
        slot = ctypes.c_void_p.from_address(id(type(obj)) + clear_at).value
        if not slot:
            return False
        ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object)(slot)(obj)
        return True

    return clear


def finalizer_after_gc_clear(m: Any) -> None:
    """A finalizer uses a cache after the cyclic GC cleared it (or the dict inside it).

    When the collector breaks a garbage cycle it calls ``tp_clear`` on the objects in
    it, in no particular order; a finalizer that still reaches the cache (directly
    or through a value) then calls its methods.  The collector's ``tp_clear`` calls
    are made here directly, in several orders, on a cache full of entries.
    """
    clear = _tp_clear()

    def fill(cache: Any) -> None:
        for i in range(6):
            if hasattr(cache, "set"):
                cache.set(i, i, ttl=None if i % 2 else 50.0)
            else:
                cache[i] = i

    def use(cache: Any) -> None:
        attempt(lambda: list(cache))
        attempt(lambda: len(cache))
        attempt(lambda: 3 in cache)
        attempt(lambda: cache.get(3))
        if hasattr(cache, "set"):
            attempt(lambda: cache.set("late", 1))
            attempt(lambda: cache.set("late2", 1, ttl=3.0))
            attempt(cache.expire)
            attempt(lambda: cache.delete(1))
            attempt(lambda: cache.stats)
        else:
            attempt(cache.popitem)
            attempt(lambda: cache.__setitem__("late", 1))
            attempt(lambda: cache.pop(5, None))
            attempt(lambda: cache.currsize)
            attempt(lambda: repr(cache))
        attempt(cache.clear)
        attempt(lambda: list(cache))

    def internals(cache: Any) -> list[Any]:
        inner = [o for o in gc.get_referents(cache) if isinstance(o, (dict, list))]
        nodes = [v for o in inner if isinstance(o, dict) for v in o.values()]
        return inner + nodes

    makers = [lambda: m.LRUCache(10), lambda: m.TTLCache(10, 100), lambda: m.LocalCache(10, 100)]
    for make in makers:
        for scenario in ("cache", "internals", "nodes", "all"):
            cache = make()
            fill(cache)
            cleared_cache = False
            if scenario in ("cache", "all"):
                cleared_cache = clear(cache)
            if scenario in ("internals", "all"):
                for obj in internals(cache):
                    if isinstance(obj, (dict, list)):
                        clear(obj)
            if scenario in ("nodes", "all"):
                for obj in internals(cache):
                    if not isinstance(obj, (dict, list)):
                        clear(obj)
            use(cache)
            if not cleared_cache:
                fill(cache)
                consistent(cache)


def str_threads_cyclic_garbage(m: Any) -> None:
    """4 threads, plain ``str`` keys, while cyclic garbage with ``__del__`` keeps the GC busy."""
    sys.setswitchinterval(1e-6)
    gc.set_threshold(20, 5, 5)
    lru = m.LRUCache(50)
    ttl = m.TTLCache(50, 0.002)
    local = m.LocalCache(50, 0.002)
    keys = [f"k{i}" for i in range(80)]

    class Cyclic:
        def __init__(self) -> None:
            self.me = self

        def __del__(self) -> None:
            lru.get("k1")
            local.set("k2", 2)
            ttl.pop("k3", None)

    stop = time.monotonic() + SECONDS

    def worker(seed: int) -> Callable[[], None]:
        def run() -> None:
            rng = random.Random(seed)
            while time.monotonic() < stop:
                for _ in range(10):
                    k = rng.choice(keys)
                    r = rng.random()
                    Cyclic()
                    if r < 0.3:
                        lru[k] = r
                        local.set(k, r, ttl=None if r < 0.2 else 0.001)
                        ttl[k] = r
                    elif r < 0.7:
                        lru.get(k)
                        local.get(k)
                        ttl.get(k)
                    elif r < 0.85:
                        lru.pop(k, None)
                        local.delete(k)
                        ttl.pop(k, None)
                    else:
                        attempt(lru.popitem)
                        attempt(lambda: list(ttl))
                        len(local)

        return run

    run_threads([worker(i) for i in range(4)])
    sys.setswitchinterval(0.005)
    gc.collect()
    consistent(lru)
    time.sleep(0.01)  # past every TTL: nothing can expire during the checks
    for cache in (ttl, local):
        consistent(cache, probe=False)


def dataclass_thread_stress(m: Any) -> None:
    """4 threads of mixed operations with dataclass keys at a 1 us switch interval."""
    sys.setswitchinterval(1e-6)
    now = [0.0]
    running = [True]

    def timer() -> float:
        if running[0]:  # time moves during the run, so entries expire; it stands still for the checks
            now[0] += 1e-5
        return now[0]

    lru = m.LRUCache(40, getsizeof=lambda v: 1 + v % 3)
    ttl = m.TTLCache(40, 0.01, timer=timer)
    local = m.LocalCache(40, 0.01, timer=timer)
    keys = [Point(i, "p") for i in range(60)] + [f"s{i}" for i in range(20)]
    stop = time.monotonic() + SECONDS

    def worker(seed: int) -> Callable[[], None]:
        def run() -> None:
            rng = random.Random(seed)
            while time.monotonic() < stop:
                for _ in range(100):
                    k = rng.choice(keys)
                    r = rng.random()
                    if r < 0.35:
                        lru[k] = seed
                        ttl[k] = seed
                        local.set(k, seed, ttl=None if r < 0.25 else 0.005)
                    elif r < 0.7:
                        lru.get(k)
                        ttl.get(k)
                        local.get(k)
                    elif r < 0.85:
                        lru.pop(k, None)
                        ttl.pop(k, None)
                        local.delete(k)
                    elif r < 0.9:
                        attempt(lru.popitem)
                        ttl.expire()
                        local.expire()
                    else:
                        attempt(lambda: list(lru))  # a dict-like RuntimeError if it changes mid-loop
                        len(ttl)
                        local.keys()

        return run

    run_threads([worker(i) for i in range(4)])
    running[0] = False
    sys.setswitchinterval(0.005)
    for cache in (lru, ttl, local):
        consistent(cache)


def reentry_is_refused(m: Any) -> None:
    """A colliding key's ``__eq__`` that calls the same cache gets ``RuntimeError``, not a deadlock."""
    seen: list[str] = []

    class Nosy:
        def __init__(self, n: int, cache: Any) -> None:
            self.n = n
            self.cache = cache

        def __hash__(self) -> int:
            return 42

        def __eq__(self, other: object) -> bool:
            try:
                self.cache.clear()
                seen.append("cleared")
            except RuntimeError:
                seen.append("RuntimeError")
            return isinstance(other, Nosy) and other.n == self.n

    for cache in (m.LRUCache(4), m.TTLCache(4, 100)):
        cache[Nosy(1, cache)] = 1
        seen.clear()
        cache[Nosy(2, cache)] = 2  # the insert compares with Nosy(1) inside the cache's update
        if "RuntimeError" not in seen or "cleared" in seen:
            sys.stderr.write(f"re-entry from __eq__ during an update was not refused: {seen}\n")
            sys.exit(1)
        consistent(cache)
        if len(cache) != 2:
            sys.stderr.write(f"expected both keys, got {list(cache)}\n")
            sys.exit(1)


ATTACKS: dict[str, Callable[[Any], None]] = {
    f.__name__: f
    for f in (
        threads_dataclass_keys,
        cachetools_cached_pool,
        hash_stores_itself,
        hash_clears_during_get,
        hash_reenters,
        hash_raises_during_eviction,
        eq_raises_on_collisions,
        finalizer_after_gc_clear,
        str_threads_cyclic_garbage,
        dataclass_thread_stress,
        reentry_is_refused,
    )
}


def main(argv: list[str]) -> None:
    impl, name = argv
    ATTACKS[name](importlib.import_module(MODULES[impl]))
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1:])
