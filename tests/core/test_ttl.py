"""TTLCache expiry semantics, checked against cachetools' TTLCache as the reference."""

from __future__ import annotations

import importlib
from typing import Any

import cachetools
import pytest

from .conftest import IMPLEMENTATIONS, MODULES, FakeClock

SOURCES = [*IMPLEMENTATIONS, "cachetools"]


@pytest.fixture(params=SOURCES)
def ttl_cls(request: pytest.FixtureRequest) -> Any:
    if request.param == "cachetools":
        return cachetools.TTLCache
    return importlib.import_module(MODULES[request.param]).TTLCache


def test_attributes(ttl_cls: Any, clock: FakeClock) -> None:
    cache = ttl_cls(5, ttl=2.5, timer=clock)
    assert cache.ttl == 2.5 and cache.maxsize == 5 and cache.timer() == clock.now


def test_expiry_follows_write_time_not_access_time(ttl_cls: Any, clock: FakeClock) -> None:
    cache = ttl_cls(5, ttl=10, timer=clock)
    cache["a"] = 1
    clock.advance(9)
    assert cache["a"] == 1  # reading does not extend the lifetime
    clock.advance(1)
    assert "a" not in cache and cache.get("a") is None
    with pytest.raises(KeyError):
        cache["a"]


def test_overwrite_restarts_the_clock(ttl_cls: Any, clock: FakeClock) -> None:
    cache = ttl_cls(5, ttl=10, timer=clock)
    cache["a"] = 1
    clock.advance(8)
    cache["a"] = 2
    clock.advance(8)
    assert cache["a"] == 2
    clock.advance(2)
    assert "a" not in cache


def test_expired_items_are_invisible(ttl_cls: Any, clock: FakeClock) -> None:
    cache = ttl_cls(5, ttl=10, timer=clock)
    cache["old"] = 1
    clock.advance(5)
    cache["new"] = 2
    clock.advance(5)
    assert len(cache) == 1 and list(cache) == ["new"] and "old" not in cache
    assert dict(cache.items()) == {"new": 2} and cache.currsize == 1


def test_expire_returns_the_expired_pairs(ttl_cls: Any, clock: FakeClock) -> None:
    cache = ttl_cls(5, ttl=10, timer=clock)
    cache["a"] = 1
    clock.advance(1)
    cache["b"] = 2
    cache["c"] = 3
    assert cache.expire() == []
    assert sorted(cache.expire(clock.now + 10)) == [("a", 1), ("b", 2), ("c", 3)]
    assert len(cache) == 0


def test_expire_with_an_explicit_time(ttl_cls: Any, clock: FakeClock) -> None:
    cache = ttl_cls(5, ttl=10, timer=clock)
    cache["a"] = 1
    clock.advance(3)
    cache["b"] = 2
    assert cache.expire(clock.now + 7) == [("a", 1)]
    assert list(cache) == ["b"]


def test_writes_purge_expired_items_before_evicting_live_ones(ttl_cls: Any, clock: FakeClock) -> None:
    cache = ttl_cls(2, ttl=10, timer=clock)
    cache["stale"] = 0
    clock.advance(5)
    cache["live"] = 1
    clock.advance(5)  # stale is now expired, live is not
    cache["fresh"] = 2
    assert set(cache) == {"live", "fresh"}


def test_delete_of_an_expired_item_raises_key_error(ttl_cls: Any, clock: FakeClock) -> None:
    cache = ttl_cls(5, ttl=10, timer=clock)
    cache["a"] = 1
    clock.advance(10)
    with pytest.raises(KeyError):
        del cache["a"]
    assert cache.pop("a", "gone") == "gone"


def test_popitem_skips_expired_items(ttl_cls: Any, clock: FakeClock) -> None:
    cache = ttl_cls(5, ttl=10, timer=clock)
    cache["a"] = 1
    clock.advance(5)
    cache["b"] = 2
    clock.advance(5)
    assert cache.popitem() == ("b", 2)
    with pytest.raises(KeyError):
        cache.popitem()


def test_default_timer_is_time_monotonic(ttl_cls: Any) -> None:
    import time

    cache = ttl_cls(5, ttl=60)
    assert cache.timer() == pytest.approx(time.monotonic(), abs=0.05)
    cache["a"] = 1
    assert cache["a"] == 1 and cache.expire() == []
    assert cache.expire(time.monotonic() + 61) == [("a", 1)]


def test_real_clock_expiry(impl: Any) -> None:
    import time

    cache = impl.TTLCache(5, ttl=0.05)
    local = impl.LocalCache(5, ttl=0.05)
    cache["a"] = 1
    local.set("a", 1)
    time.sleep(0.1)  # > ttl plus the coarse clock's tick
    assert "a" not in cache and local.get("a") is None
