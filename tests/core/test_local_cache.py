"""LocalCache: per-entry TTL, statistics and the session-facing API."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from .conftest import FakeClock


@pytest.fixture
def cache(impl: Any, clock: FakeClock) -> Any:
    return impl.LocalCache(max_size=3, ttl=10.0, timer=clock)


def test_defaults(impl: Any) -> None:
    cache = impl.LocalCache()
    assert cache.max_size == 10_000 and cache.ttl == 30.0 and len(cache) == 0
    assert cache.stats == impl.CacheStats(0, 0, 0, 0, 0, 10_000, 0.0)


def test_get_set_delete_pop(cache: Any) -> None:
    cache.set("a", 1)
    assert cache.get("a") == 1 and cache.get("b") is None and cache.get("b", 0) == 0
    assert "a" in cache and len(cache) == 1
    assert cache.delete("a") is True and cache.delete("a") is False
    cache.set("b", 2)
    assert cache.pop("b") == 2 and cache.pop("b", "x") == "x"


def test_per_entry_ttl_overrides_the_default(cache: Any, clock: FakeClock) -> None:
    cache.set("default", 1)
    cache.set("short", 2, ttl=1)
    cache.set("long", 3, ttl=100)
    clock.advance(1)
    assert cache.get("short") is None and cache.get("default") == 1
    clock.advance(9)
    assert cache.get("default") is None and cache.get("long") == 3
    clock.advance(90)
    assert cache.get("long") is None and len(cache) == 0


def test_rewriting_switches_between_default_and_own_ttl(cache: Any, clock: FakeClock) -> None:
    cache.set("k", 1, ttl=1)
    cache.set("k", 2)  # back to the default 10 s
    clock.advance(5)
    assert cache.get("k") == 2
    cache.set("k", 3, ttl=100)
    clock.advance(50)
    assert cache.get("k") == 3
    assert cache.expire() == 0


def test_expire_counts_and_removes(cache: Any, clock: FakeClock) -> None:
    cache.set("a", 1, ttl=1)
    cache.set("b", 2, ttl=2)
    cache.set("c", 3)
    clock.advance(2)
    assert cache.expire() == 2 and cache.keys() == ["c"]
    assert cache.stats.expirations == 2


def test_stats_count_hits_misses_evictions_expirations(impl: Any, cache: Any, clock: FakeClock) -> None:
    for key in "abc":
        cache.set(key, key)
    cache.get("a")
    cache.get("a")
    cache.get("zz")
    cache.set("d", "d")  # evicts b: a is older but was read (CLOCK)
    assert "b" not in cache
    clock.advance(10)
    cache.get("c")  # expired: one miss and one expiration
    "a" in cache  # noqa: B015 - membership tests don't count
    cache.delete("zz")
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.evictions, stats.expirations) == (2, 2, 1, 3)
    assert stats.size == 0 and stats.max_size == 3 and stats.hit_rate == 0.5
    assert isinstance(stats, impl.CacheStats)
    cache.reset_stats()
    assert cache.stats == impl.CacheStats(0, 0, 0, 0, 0, 3, 0.0)


def test_clear_keeps_stats(cache: Any) -> None:
    cache.set("a", 1)
    cache.get("a")
    cache.clear()
    assert len(cache) == 0 and cache.get("a") is None and cache.stats.hits == 1


def test_unhashable_key(cache: Any) -> None:
    with pytest.raises(TypeError):
        cache.set(["x"], 1)
    with pytest.raises(TypeError):
        cache.get({})
    assert len(cache) == 0


def test_pickle_round_trip(impl: Any) -> None:
    cache = impl.LocalCache(max_size=5, ttl=60)
    cache.set("a", {"user": 1})
    cache.set("b", [1, 2], ttl=120)
    clone = pickle.loads(pickle.dumps(cache))
    assert clone.get("a") == {"user": 1} and clone.get("b") == [1, 2] and clone.max_size == 5


def test_generic_alias(impl: Any) -> None:
    assert impl.LocalCache[str, dict].__origin__ is impl.LocalCache


def test_many_per_entry_ttls_expire_in_deadline_order(impl: Any, clock: FakeClock) -> None:
    import random

    rng = random.Random(7)
    cache = impl.LocalCache(max_size=1000, ttl=50, timer=clock)
    deadlines = {}
    for i in range(500):
        ttl = rng.uniform(0, 100)
        cache.set(i, i, ttl=ttl if i % 3 else None)
        deadlines[i] = clock.now + (ttl if i % 3 else 50)
    for step in range(1, 11):
        clock.now = 1000.0 + step * 10
        cache.expire()
        expected = sorted(k for k, d in deadlines.items() if clock.now < d)
        assert sorted(cache.keys()) == expected


def test_get_arguments_like_a_python_method(cache: Any) -> None:
    # the compiled get is a C method with its own argument handling: same rules as the twin's def
    cache.set("a", 1)
    assert cache.get(key="a") == 1 and cache.get("b", default=3) == 3 and cache.get(key="b", default=4) == 4
    assert cache.get("a", None) == 1 and cache.get("b", None) is None
    for bad in (lambda: cache.get(), lambda: cache.get("a", 1, 2), lambda: cache.get("a", key="a"), lambda: cache.get("a", d=1)):
        with pytest.raises(TypeError):
            bad()
    assert cache.stats.hits == 2 and cache.stats.misses == 3
