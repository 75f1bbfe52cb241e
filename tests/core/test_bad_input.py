"""fastsess's own argument checking (stricter than cachetools: it rejects nonsense early)."""

from __future__ import annotations

import math
from typing import Any

import pytest

BAD_NUMBERS = [-1, "10", None, float("nan"), True, object()]


@pytest.mark.parametrize("bad", BAD_NUMBERS)
def test_bad_maxsize_is_rejected(impl: Any, bad: Any) -> None:
    with pytest.raises(ValueError, match="maxsize"):
        impl.LRUCache(bad)
    with pytest.raises(ValueError, match="maxsize"):
        impl.TTLCache(bad, 10)


@pytest.mark.parametrize("bad", BAD_NUMBERS)
def test_bad_ttl_is_rejected(impl: Any, bad: Any) -> None:
    with pytest.raises(ValueError, match="ttl"):
        impl.TTLCache(10, bad)
    with pytest.raises(ValueError, match="ttl"):
        impl.LocalCache(10, bad)
    cache = impl.LocalCache(10, 5)
    if bad is not None:  # None means "use the default TTL" in set()
        with pytest.raises(ValueError, match="ttl"):
            cache.set("k", 1, ttl=bad)
    assert len(cache) == 0


@pytest.mark.parametrize("bad", [0, -5, 2.5j, "many"])
def test_local_cache_needs_room_for_one(impl: Any, bad: Any) -> None:
    with pytest.raises(ValueError, match="max_size"):
        impl.LocalCache(bad)


def test_timer_must_be_callable(impl: Any) -> None:
    with pytest.raises(ValueError, match="timer"):
        impl.TTLCache(10, 1, timer=5)
    with pytest.raises(ValueError, match="timer"):
        impl.LocalCache(10, 1, timer="clock")


def test_edge_values_that_are_allowed(impl: Any) -> None:
    unbounded = impl.LRUCache(math.inf)
    for i in range(100):
        unbounded[i] = i
    assert len(unbounded) == 100
    forever = impl.TTLCache(10, math.inf)
    forever["a"] = 1
    assert forever["a"] == 1
    instant = impl.LocalCache(10, 0)
    instant.set("a", 1)
    assert instant.get("a") is None  # ttl=0 expires at once


def test_getsizeof_must_return_a_sane_size(impl: Any) -> None:
    negative = impl.LRUCache(10, getsizeof=lambda v: -1)
    with pytest.raises(ValueError):
        negative["a"] = 1
    wordy = impl.LRUCache(10, getsizeof=lambda v: "1")
    with pytest.raises(TypeError):
        wordy["a"] = 1
    nan = impl.LRUCache(10, getsizeof=lambda v: float("nan"))
    with pytest.raises(ValueError):
        nan["a"] = 1
    assert len(negative) == 0 and len(wordy) == 0 and len(nan) == 0
