"""cachetools compatibility of LRUCache and TTLCache.

Every test here also runs against cachetools' own classes (ids ``cachetools-*``):
that proves the tests describe cachetools' behaviour, and that ours matches it.
"""

from __future__ import annotations

import collections.abc
import copy
import importlib
import pickle
from typing import Any

import cachetools
import pytest

from .conftest import IMPLEMENTATIONS, MODULES, FakeClock

SOURCES = [*IMPLEMENTATIONS, "cachetools"]
KINDS = [(source, kind) for source in SOURCES for kind in ("LRUCache", "TTLCache")]


class Maker:
    """Builds caches of one class; TTL caches get a long TTL on a fake clock."""

    def __init__(self, source: str, kind: str, clock: FakeClock) -> None:
        module = cachetools if source == "cachetools" else importlib.import_module(MODULES[source])
        self.cls = getattr(module, kind)
        self.kind = kind
        self.source = source
        self.clock = clock

    def __call__(self, maxsize: Any, getsizeof: Any = None, cls: Any = None) -> Any:
        cls = cls or self.cls
        if self.kind == "TTLCache":
            return cls(maxsize, ttl=100, timer=self.clock, getsizeof=getsizeof)
        return cls(maxsize, getsizeof=getsizeof)


@pytest.fixture(params=KINDS, ids=[f"{s}-{k}" for s, k in KINDS])
def make(request: pytest.FixtureRequest, clock: FakeClock) -> Maker:
    return Maker(*request.param, clock)


def test_is_a_mutable_mapping(make: Maker) -> None:
    cache = make(3)
    assert isinstance(cache, collections.abc.MutableMapping)
    assert isinstance(cache, collections.abc.Mapping)


def test_mapping_basics(make: Maker) -> None:
    cache = make(10)
    cache["a"] = 1
    cache["b"] = 2
    assert cache["a"] == 1 and cache.get("b") == 2 and cache.get("zz") is None and cache.get("zz", 7) == 7
    assert "a" in cache and "zz" not in cache
    assert len(cache) == 2 and cache.currsize == 2 and cache.maxsize == 10
    assert sorted(cache) == ["a", "b"]
    assert sorted(cache.keys()) == ["a", "b"] and sorted(cache.values()) == [1, 2]
    assert sorted(cache.items()) == [("a", 1), ("b", 2)]
    assert cache == {"a": 1, "b": 2} and cache != {"a": 1}
    cache["a"] = 10  # overwrite keeps the size
    assert cache["a"] == 10 and len(cache) == 2
    del cache["a"]
    assert "a" not in cache and len(cache) == 1
    with pytest.raises(KeyError):
        del cache["a"]
    with pytest.raises(KeyError):
        cache["a"]
    cache.clear()
    assert len(cache) == 0 and cache.currsize == 0 and list(cache) == []


def test_evicts_least_recently_used(make: Maker) -> None:
    cache = make(3)
    for key in "abc":
        cache[key] = key
    assert cache["a"] == "a"  # a is now the most recent
    cache["d"] = "d"
    assert "b" not in cache and set(cache) == {"a", "c", "d"}
    assert cache.get("c") == "c"  # get refreshes recency too: order a, d, c
    cache["e"] = "e"
    assert set(cache) == {"c", "d", "e"}
    cache["d"] = "D"  # writing refreshes recency: order c, e, d
    cache["f"] = "f"
    assert set(cache) == {"d", "e", "f"}


def test_popitem_removes_least_recently_used(make: Maker) -> None:
    cache = make(3)
    for key in "abc":
        cache[key] = key.upper()
    cache["a"]
    assert cache.popitem() == ("b", "B")
    assert cache.popitem() == ("c", "C")
    assert cache.popitem() == ("a", "A")
    with pytest.raises(KeyError):
        cache.popitem()


def test_getsizeof_accounts_and_evicts_until_it_fits(make: Maker) -> None:
    cache = make(10, getsizeof=len)
    cache["a"] = "xxxx"
    cache["b"] = "yyy"
    cache["c"] = "zz"
    assert cache.currsize == 9 and cache.getsizeof("abc") == 3
    cache["d"] = "wwwwww"  # needs 6: evicts a and b
    assert set(cache) == {"c", "d"} and cache.currsize == 8
    cache["c"] = "zzzz"  # grows an existing item: evicts nothing else
    assert set(cache) == {"c", "d"} and cache.currsize == 10


def test_value_too_large_leaves_cache_unchanged(make: Maker) -> None:
    cache = make(5, getsizeof=len)
    cache["a"] = "xx"
    with pytest.raises(ValueError, match="too large"):
        cache["b"] = "x" * 6
    with pytest.raises(ValueError, match="too large"):
        cache["a"] = "x" * 6
    assert dict(cache.items()) == {"a": "xx"} and cache.currsize == 2


def test_maxsize_zero_rejects_every_value(make: Maker) -> None:
    cache = make(0)
    with pytest.raises(ValueError):
        cache["a"] = 1
    assert len(cache) == 0


def test_getsizeof_that_raises_leaves_cache_consistent(make: Maker) -> None:
    def sizer(value: Any) -> int:
        if value == "bad":
            raise RuntimeError("boom")
        return 1

    cache = make(3, getsizeof=sizer)
    cache["a"] = "ok"
    with pytest.raises(RuntimeError):
        cache["b"] = "bad"
    with pytest.raises(RuntimeError):
        cache["a"] = "bad"
    assert dict(cache.items()) == {"a": "ok"} and cache.currsize == 1 and len(cache) == 1


def test_unhashable_key_raises_type_error(make: Maker) -> None:
    cache = make(3)
    with pytest.raises(TypeError):
        cache[["list"]] = 1
    with pytest.raises(TypeError):
        cache[{"a": 1}]
    assert len(cache) == 0


def test_missing_hook_in_subclass(make: Maker) -> None:
    calls: list[Any] = []

    class Computing(make.cls):  # type: ignore[misc,name-defined]
        def __missing__(self, key: Any) -> Any:
            calls.append(key)
            self[key] = value = key * 2
            return value

    cache = make(2, cls=Computing)
    assert cache[3] == 6 and cache[3] == 6 and calls == [3]
    assert cache.get(4) is None and calls == [3]  # get() never calls __missing__
    assert 4 not in cache


def test_missing_hook_that_raises_leaves_cache_consistent(make: Maker) -> None:
    class Failing(make.cls):  # type: ignore[misc,name-defined]
        def __missing__(self, key: Any) -> Any:
            raise LookupError(key)

    cache = make(2, cls=Failing)
    cache["a"] = 1
    with pytest.raises(LookupError):
        cache["b"]
    assert dict(cache.items()) == {"a": 1} and len(cache) == 1


def test_pop_setdefault_update(make: Maker) -> None:
    cache = make(5)
    assert cache.setdefault("a", 1) == 1 and cache.setdefault("a", 2) == 1
    assert cache.pop("a") == 1 and cache.pop("a", "dflt") == "dflt"
    with pytest.raises(KeyError):
        cache.pop("a")
    cache.update({"x": 1}, y=2)
    cache.update([("z", 3)])
    assert dict(cache.items()) == {"x": 1, "y": 2, "z": 3}


def test_pickle_copy_and_deepcopy_keep_contents_and_order(make: Maker) -> None:
    cache = make(3)
    for key in "abc":
        cache[key] = [key]
    cache["a"]  # order now b, c, a
    for clone in (pickle.loads(pickle.dumps(cache)), copy.copy(cache), copy.deepcopy(cache)):
        assert type(clone) is type(cache) and clone == cache and clone.maxsize == 3
        clone["d"] = ["d"]
        assert "d" not in cache and len(clone) == 3
        if make.source != "cachetools":  # cachetools' copies forget recency order; ours keep it
            assert "b" not in clone and "b" in cache
    deep = copy.deepcopy(cache)
    deep["a"].append(1)
    assert cache["a"] == ["a"]


def test_generic_alias(make: Maker) -> None:
    alias = make.cls[str, int]
    assert alias.__origin__ is make.cls and alias.__args__ == (str, int)


def test_works_under_cachetools_cached(make: Maker) -> None:
    calls = []

    @cachetools.cached(make(16))
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    assert [double(1), double(2), double(1)] == [2, 4, 2] and calls == [1, 2]
