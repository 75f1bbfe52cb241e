"""Concurrency and re-entrancy: the structure stays consistent whatever the interleaving."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

THREADS = 4
OPS = 20_000


def _check_mapping_invariants(cache: Any) -> None:
    keys = list(cache)
    assert len(keys) == len(set(keys)) == len(cache) <= cache.maxsize
    assert cache.currsize == sum(cache.getsizeof(cache[k]) for k in keys)
    for k in keys:
        assert k in cache


def _hammer(worker: Any) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def run(seed: int) -> None:
        try:
            barrier.wait()
            worker(random.Random(seed))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


def test_ttl_cache_survives_concurrent_mixed_operations(impl: Any) -> None:
    clock_lock = threading.Lock()
    now = [0.0]

    def timer() -> float:
        with clock_lock:
            now[0] += 0.0001  # time moves, so entries expire during the run
            return now[0]

    cache = impl.TTLCache(64, ttl=0.5, timer=timer, getsizeof=lambda v: 1 + v % 3)

    def worker(rng: random.Random) -> None:
        for _ in range(OPS):
            key = rng.randrange(200)
            op = rng.random()
            if op < 0.5:
                cache.get(key)
            elif op < 0.8:
                cache[key] = rng.randrange(1000)
            elif op < 0.9:
                cache.pop(key, None)
            elif op < 0.95:
                try:
                    cache.popitem()
                except KeyError:
                    pass
            else:
                cache.expire()

    _hammer(worker)
    _check_mapping_invariants(cache)


def test_local_cache_survives_concurrent_mixed_operations(impl: Any) -> None:
    cache = impl.LocalCache(max_size=100, ttl=0.01)

    def worker(rng: random.Random) -> None:
        for _ in range(OPS):
            key = rng.randrange(300)
            op = rng.random()
            if op < 0.6:
                cache.get(key)
            elif op < 0.85:
                cache.set(key, key, ttl=None if op < 0.8 else rng.random() / 50)
            elif op < 0.95:
                cache.delete(key)
            else:
                cache.expire()

    _hammer(worker)
    keys = cache.keys()
    assert len(keys) == len(set(keys)) <= 100
    assert all(cache.get(k, k) == k for k in keys)
    stats = cache.stats
    assert stats.size <= stats.max_size
    assert stats.hits + stats.misses > 0
    # every TTL above is at most 20 ms of real time: once they have passed, the structure
    # must agree with itself (comparing size and len earlier would race the clock)
    time.sleep(0.05)
    assert len(cache) == 0 and cache.stats.size == 0 and cache.keys() == []


def test_value_destructor_may_use_the_cache_during_eviction(impl: Any) -> None:
    cache = impl.LRUCache(2)
    seen: list[int] = []

    class Noisy:
        def __init__(self, n: int) -> None:
            self.n = n

        def __del__(self) -> None:
            # runs when the cache drops us: the cache must already be consistent
            seen.append(len(cache))
            cache[f"ghost{self.n}"] = self.n if self.n < 3 else 0
            list(cache)

    for n in range(5):
        cache[n] = Noisy(n)
    _check_mapping_invariants(cache)
    assert seen and all(size <= 2 for size in seen)


def test_local_cache_destructor_reentrancy(impl: Any, clock: Any) -> None:
    cache = impl.LocalCache(max_size=2, ttl=1, timer=clock)

    class Reentrant:
        def __del__(self) -> None:
            cache.set("from-del", 1)
            cache.get("from-del")

    cache.set("a", Reentrant())
    cache.set("b", Reentrant())
    cache.set("c", 1)  # evicts a
    clock.advance(2)
    assert cache.expire() >= 1  # expires b and c, their destructors write again
    assert len(cache.keys()) == len(cache) <= 2
