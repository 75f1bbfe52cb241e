"""Code written for cachetools 8 runs unchanged on fastsess' LRUCache and TTLCache.

Each test runs on both implementations (``c``, ``py``) and, wherever cachetools
itself behaves the same way, on cachetools' classes too (``cachetools-*`` ids):
the test then proves that the behaviour is cachetools' and that ours matches it.
"""

from __future__ import annotations

import copy
import importlib
import math
import pickle
from datetime import datetime, timedelta
from typing import Any

import cachetools
import pytest

from .conftest import IMPLEMENTATIONS, MODULES, FakeClock

SOURCES = [*IMPLEMENTATIONS, "cachetools"]
KINDS = [(source, kind) for source in SOURCES for kind in ("LRUCache", "TTLCache")]
KIND_IDS = [f"{source}-{kind}" for source, kind in KINDS]


def base_class(source: str, kind: str) -> Any:
    module = cachetools if source == "cachetools" else importlib.import_module(MODULES[source])
    return getattr(module, kind)


class Maker:
    """Builds caches of one class (or a subclass of it); TTL caches get a TTL of 100 on a fake clock."""

    def __init__(self, source: str, kind: str, clock: FakeClock) -> None:
        self.source = source
        self.kind = kind
        self.cls = base_class(source, kind)
        self.clock = clock

    def __call__(self, maxsize: Any, getsizeof: Any = None, cls: Any = None) -> Any:
        cls = cls or self.cls
        if self.kind == "TTLCache":
            return cls(maxsize, ttl=100, timer=self.clock, getsizeof=getsizeof)
        return cls(maxsize, getsizeof=getsizeof)


@pytest.fixture(params=KINDS, ids=KIND_IDS)
def make(request: pytest.FixtureRequest, clock: FakeClock) -> Maker:
    return Maker(*request.param, clock)


@pytest.fixture(params=SOURCES)
def ttl_cls(request: pytest.FixtureRequest) -> Any:
    return base_class(request.param, "TTLCache")


@pytest.fixture(params=SOURCES)
def lru_cls(request: pytest.FixtureRequest) -> Any:
    return base_class(request.param, "LRUCache")


# -- module-level subclasses (pickle finds classes by name) ------------------------------


def _define_subclasses(source: str, kind: str) -> None:
    base = base_class(source, kind)
    timed = kind == "TTLCache"

    class Named(base):  # type: ignore[misc,valid-type]
        """A subclass with its own constructor signature."""

        def __init__(self, name: str, clock: Any = None) -> None:
            if timed:
                super().__init__(4, ttl=100, timer=clock)
            else:
                super().__init__(4)
            self.name = name

    class Sized(base):  # type: ignore[misc,valid-type]
        """A subclass sizing items by overriding getsizeof."""

        def getsizeof(self, value: Any) -> int:
            return len(value)

    for cls in (Named, Sized):
        cls.__name__ = cls.__qualname__ = f"{cls.__name__}_{source}_{kind}"
        globals()[cls.__name__] = cls


for _source, _kind in KINDS:
    _define_subclasses(_source, _kind)


def subclass(name: str, make: Maker) -> Any:
    return globals()[f"{name}_{make.source}_{make.kind}"]


def clones(cache: Any) -> list[Any]:
    return [copy.copy(cache), copy.deepcopy(cache), pickle.loads(pickle.dumps(cache))]


# -- copy and pickle of subclasses -----------------------------------------------------------


def test_subclass_with_own_init_survives_copy_deepcopy_and_pickle(make: Maker) -> None:
    cls = subclass("Named", make)
    cache = cls("sessions", make.clock) if make.kind == "TTLCache" else cls("sessions")
    cache["a"] = [1]
    cache["b"] = [2]
    for clone in clones(cache):
        assert type(clone) is cls and clone.name == "sessions" and clone.maxsize == 4
        assert dict(clone.items()) == {"a": [1], "b": [2]} and len(clone) == 2 and clone.currsize == 2
        for key in "cde":
            clone[key] = [0]
        assert len(clone) == 4 and "a" not in clone and len(cache) == 2  # evicts in the copy only


def test_subclass_overriding_getsizeof_survives_copy_deepcopy_and_pickle(make: Maker) -> None:
    cache = make(10, cls=subclass("Sized", make))
    cache["a"] = "xxxx"
    cache["b"] = "yyy"
    assert cache.currsize == 7
    for clone in clones(cache):
        assert type(clone) is type(cache) and dict(clone.items()) == {"a": "xxxx", "b": "yyy"}
        assert clone.currsize == 7 and clone.getsizeof("abcde") == 5
        clone["c"] = "zzzzzz"  # size 6: evicts a (4), still sized by the override
        assert set(clone) == {"b", "c"} and clone.currsize == 9
    assert cache.currsize == 7


def test_copies_keep_iteration_and_recency_order(make: Maker) -> None:
    cache = make(3)
    for key in "abc":
        cache[key] = key
    cache["a"]  # recency: b, c, a
    for clone in clones(cache):
        assert list(clone) == list(cache) == ["a", "b", "c"]
        clone["d"] = "d"
        assert list(clone) == ["a", "c", "d"]  # b was least recently used


# -- overridden hooks are honoured ---------------------------------------------------------------


def test_popitem_override_sees_evictions(make: Maker) -> None:
    """cachetools' documented eviction-logging subclass."""
    evicted: list[tuple[Any, Any]] = []

    class Logging(make.cls):  # type: ignore[misc,name-defined]
        def popitem(self) -> tuple[Any, Any]:
            key, value = super().popitem()
            evicted.append((key, value))
            return key, value

    cache = make(2, cls=Logging)
    cache["a"] = 1
    cache["b"] = 2
    cache["c"] = 3
    assert evicted == [("a", 1)] and dict(cache.items()) == {"b": 2, "c": 3}
    sized = make(10, getsizeof=len, cls=Logging)
    sized["a"] = "xxxx"
    sized["b"] = "yyyy"
    sized["c"] = "zzzzzzzz"  # needs 8: evicts a and b, through popitem()
    assert evicted == [("a", 1), ("a", "xxxx"), ("b", "yyyy")] and list(sized) == ["c"]
    assert sized.currsize == 8


def test_delitem_override_sees_pop_popitem_and_evictions(make: Maker) -> None:
    deleted: list[Any] = []

    class Tracking(make.cls):  # type: ignore[misc,name-defined]
        def __delitem__(self, key: Any) -> None:
            deleted.append(key)
            super().__delitem__(key)

    cache = make(2, cls=Tracking)
    cache["a"] = 1
    cache["b"] = 2
    cache["c"] = 3  # evicts a via popitem() -> del self[a]
    assert cache.pop("b") == 2 and cache.pop("zz", None) is None
    assert cache.popitem() == ("c", 3)
    assert deleted == ["a", "b", "c"] and len(cache) == 0


def test_expire_override_sees_expirations(ttl_cls: Any, clock: FakeClock) -> None:
    """cachetools' documented way to log expired items: override expire()."""
    expired: list[tuple[Any, Any]] = []

    class Logging(ttl_cls):  # type: ignore[misc,valid-type]
        def expire(self, time: Any = None) -> Any:
            items = super().expire(time)
            expired.extend(items)
            return items

    cache = Logging(5, ttl=10, timer=clock)
    cache["a"] = 1
    clock.advance(5)
    cache["b"] = 2
    clock.advance(6)
    cache["c"] = 3  # the next write expires a
    assert expired == [("a", 1)]
    clock.advance(10)
    assert len(cache) == 0 and sorted(expired) == [("a", 1), ("b", 2), ("c", 3)]
    cache["d"] = 4
    clock.advance(10)
    assert cache.currsize == 0 and expired[-1] == ("d", 4)
    cache["e"] = 5
    clock.advance(10)
    with pytest.raises(KeyError):
        cache.popitem()
    assert expired[-1] == ("e", 5)


def test_an_lru_subclass_method_named_expire_is_not_a_hook(lru_cls: Any) -> None:
    calls: list[Any] = []

    class WithExpire(lru_cls):  # type: ignore[misc,valid-type]
        def expire(self, time: Any = None) -> None:
            calls.append(time)

    cache = WithExpire(2)
    cache["a"] = 1
    cache["b"] = 2
    cache["c"] = 3
    assert len(cache) == 2 and cache.currsize == 2 and calls == []  # LRUCache never calls expire()


def test_get_pop_setdefault_go_through_overridden_getitem(make: Maker) -> None:
    calls: list[Any] = []

    class Scaled(make.cls):  # type: ignore[misc,name-defined]
        def __getitem__(self, key: Any) -> Any:
            calls.append(key)
            return super().__getitem__(key) * 10

    cache = make(5, cls=Scaled)
    cache["a"] = 1
    cache["b"] = 2
    cache["c"] = 3
    assert cache.get("a") == 10 and cache.get("zz") is None and cache.get("zz", 7) == 7
    assert cache.pop("b") == 20 and "b" not in cache
    assert cache.setdefault("c", 99) == 30 and cache.setdefault("d", 4) == 4
    assert calls == ["a", "b", "c"]  # absent keys are checked with `in` first, as in cachetools
    assert sorted(cache.values()) == [10, 30, 40] and dict(cache.items())["d"] == 40


def test_contains_override_is_honoured_by_get(make: Maker) -> None:
    class Hiding(make.cls):  # type: ignore[misc,name-defined]
        def __contains__(self, key: object) -> bool:
            return key != "hidden" and super().__contains__(key)

    cache = make(5, cls=Hiding)
    cache["hidden"] = 1
    cache["shown"] = 2
    assert cache.get("hidden") is None and cache.get("shown") == 2
    assert cache.pop("hidden", "gone") == "gone" and cache.setdefault("hidden", 3) == 3


def test_subclass_overriding_nothing_behaves_like_the_class(make: Maker) -> None:
    class Plain(make.cls):  # type: ignore[misc,name-defined]
        extra = "attribute"

    cache = make(2, cls=Plain)
    cache["a"] = 1
    cache["b"] = 2
    cache["a"]
    cache["c"] = 3
    assert list(cache) == ["a", "c"] and cache.get("a") == 1 and cache.pop("c") == 3
    assert cache.popitem() == ("a", 1) and len(cache) == 0
    if make.source != "cachetools":  # the decision, made once per class: no hook, so the fast paths

        class Overriding(Plain):
            def popitem(self) -> tuple[Any, Any]:
                return super().popitem()

        Overriding(1) if make.kind == "LRUCache" else Overriding(1, 10)
        assert Plain._fastsess_hooks == 0 and Overriding._fastsess_hooks != 0


# -- timers ---------------------------------------------------------------------------------


class DateClock:
    """A settable ``datetime.now``."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, 0)

    def __call__(self) -> datetime:
        return self.now


def test_timedelta_ttl_with_datetime_timer(ttl_cls: Any) -> None:
    clock = DateClock()
    cache = ttl_cls(3, ttl=timedelta(hours=1), timer=clock)
    assert cache.ttl == timedelta(hours=1) and cache.timer() == clock.now
    cache["a"] = 1
    clock.now += timedelta(minutes=59)
    cache["b"] = 2
    assert cache["a"] == 1 and len(cache) == 2
    clock.now += timedelta(minutes=2)
    assert "a" not in cache and cache.get("a") is None and list(cache) == ["b"]
    assert ("b", 2) in cache.expire(clock.now + timedelta(hours=2)) and len(cache) == 0
    real = ttl_cls(3, ttl=timedelta(hours=1), timer=datetime.now)
    real["a"] = 1
    assert real["a"] == 1 and len(real) == 1 and real.currsize == 1
    with real.timer as now:
        assert isinstance(now, datetime) and real.timer() is now


def test_with_timer_freezes_time_for_the_block(ttl_cls: Any, clock: FakeClock) -> None:
    cache = ttl_cls(5, ttl=10, timer=clock)
    cache["a"] = 1
    with cache.timer as now:
        assert now == clock.now
        clock.advance(20)
        assert cache.timer() == now and "a" in cache and cache["a"] == 1 and len(cache) == 1
        with cache.timer as inner:
            assert inner == now
        assert cache.timer() == now  # still frozen after the inner block
    assert cache.timer() == clock.now and "a" not in cache and len(cache) == 0


def test_with_timer_on_the_default_clock(ttl_cls: Any) -> None:
    cache = ttl_cls(5, ttl=60)
    with cache.timer as now:
        assert isinstance(now, float) and cache.timer() == now
        cache["a"] = 1
    assert cache["a"] == 1
    assert copy.copy(cache).timer() >= now and pickle.loads(pickle.dumps(cache))["a"] == 1


# -- errors ---------------------------------------------------------------------------------


def test_popitem_on_empty_cache_raises_keyerror_from_none(make: Maker) -> None:
    cache = make(3)
    with pytest.raises(KeyError, match="is empty") as info:
        cache.popitem()
    assert info.value.__suppress_context__ is True and info.value.__cause__ is None
    cache["a"] = 1
    cache.popitem()
    with pytest.raises(KeyError) as again:
        cache.popitem()
    assert again.value.__suppress_context__ is True


# -- iteration ------------------------------------------------------------------------------


def test_iteration_is_in_insertion_order(make: Maker) -> None:
    cache = make(5)
    cache["a"] = 1
    cache["b"] = 2
    cache["c"] = 3
    cache["a"]  # reading does not move a key
    cache["b"] = 20  # overwriting keeps its place
    assert list(cache) == list(cache.keys()) == ["a", "b", "c"]
    del cache["a"]
    cache["a"] = 10  # removed and re-added: goes last
    assert list(cache) == ["b", "c", "a"] and list(cache.values()) == [20, 3, 10]
    assert list(cache.items()) == [("b", 20), ("c", 3), ("a", 10)]
    assert repr(cache) == f"{type(cache).__name__}({{'b': 20, 'c': 3, 'a': 10}}, maxsize=5, currsize=3)"


@pytest.mark.parametrize("view", ["values", "items", "keys"])
def test_ttl_views_skip_an_entry_expiring_mid_loop(ttl_cls: Any, clock: FakeClock, view: str) -> None:
    cache = ttl_cls(5, ttl=100, timer=clock)
    for key in "abc":
        cache[key] = key.upper()
        clock.advance(10)
    # written at 1000, 1010, 1020 (expiring at 1100, 1110, 1120); now 1030
    seen = []
    for element in getattr(cache, view)():
        seen.append(element)
        clock.now = 1115  # b expires while the loop runs; c does not
    expected = {"values": ["A", "C"], "items": [("a", "A"), ("c", "C")], "keys": ["a", "c"]}
    assert seen == expected[view]


def test_lru_mutation_during_iteration_raises_runtime_error(lru_cls: Any) -> None:
    cache = lru_cls(10)
    for key in "abc":
        cache[key] = key
    with pytest.raises(RuntimeError):
        for key in cache:
            cache[key + "2"] = key
    with pytest.raises(RuntimeError):
        for key in cache:
            del cache[key]
    with pytest.raises(RuntimeError):
        for _ in cache.values():
            cache.popitem()
    with pytest.raises(RuntimeError):
        for _ in cache.items():
            cache.clear()
    cache["x"] = 1
    for key in cache:  # reading and overwriting are not mutations of the key set
        cache[key] = cache[key]
        cache.get(key)
    assert list(cache) == ["x"]


def test_ttl_iteration_is_over_a_snapshot(ttl_cls: Any, clock: FakeClock) -> None:
    """cachetools' TTLCache iterates a snapshot (items may expire meanwhile): removing is allowed."""
    cache = ttl_cls(10, ttl=100, timer=clock)
    for key in "abcd":
        cache[key] = key
    seen = []
    for key in cache:
        seen.append(key)
        if key == "a":
            del cache["b"]
            cache["e"] = "e"
    assert seen == ["a", "c", "d"] and list(cache) == ["a", "c", "d", "e"]
    for key in cache:
        del cache[key]
    assert len(cache) == 0


# -- sizes ----------------------------------------------------------------------------------


def test_getsizeof_may_return_floats(make: Maker) -> None:
    cache = make(10, getsizeof=lambda value: value)
    for key in "abcd":
        cache[key] = 2.5
    assert cache.currsize == 10.0 and isinstance(cache.currsize, float) and len(cache) == 4
    cache["e"] = 0.5  # 10.5 > 10: evicts a
    assert list(cache) == ["b", "c", "d", "e"] and cache.currsize == 8.0
    cache["b"] = 1.5
    assert cache.currsize == 7.0
    with pytest.raises(ValueError, match="too large"):
        cache["f"] = 10.5
    fractional = make(7.5, getsizeof=lambda value: value)
    fractional["a"] = 4
    fractional["b"] = 3.5
    assert fractional.currsize == 7.5 and len(fractional) == 2
    fractional["c"] = 0.25
    assert list(fractional) == ["b", "c"] and fractional.currsize == 3.75


def test_huge_sizes_never_overflow(make: Maker) -> None:
    cache = make(2**64, getsizeof=lambda value: value)
    for key in "abcd":
        cache[key] = 2**62
    assert cache.currsize == 2**64 and len(cache) == 4
    cache["e"] = 2**62  # evicts a; the sum is exact, never negative
    assert list(cache) == ["b", "c", "d", "e"] and cache.currsize == 2**64
    cache["b"]  # c is least recently used now
    cache["b"] = 2**63  # grows in place: evicts c
    assert list(cache) == ["b", "d", "e"] and cache.currsize == 2**64
    unbounded = make(math.inf, getsizeof=lambda value: value)
    for i in range(10):
        unbounded[i] = 2**62
    assert len(unbounded) == 10 and unbounded.currsize == 10 * 2**62


# -- repr -----------------------------------------------------------------------------------


def test_repr_of_a_cache_containing_itself(make: Maker) -> None:
    cache = make(4)
    cache["self"] = cache
    name = type(cache).__name__
    assert repr(cache) == f"{name}({{'self': {name}({{...}}, maxsize=4, currsize=1)}}, maxsize=4, currsize=1)"
    cache["n"] = 1
    assert repr(cache) == f"{name}({{'self': {name}({{...}}, maxsize=4, currsize=2), 'n': 1}}, maxsize=4, currsize=2)"
    other = make(4)
    other["inner"] = cache
    cache["other"] = other
    inner = f"{name}({{...}}, maxsize=4, currsize=3)"
    assert repr(cache) == (
        f"{name}({{'self': {inner}, 'n': 1, 'other': {name}({{'inner': {inner}}}, maxsize=4, currsize=1)}}, maxsize=4, currsize=3)"
    )


# -- the differences the README lists, shown on both sides ------------------------------------


def test_lookup_removes_the_expired_entry_it_finds(ttl_cls: Any, clock: FakeClock) -> None:
    cache = ttl_cls(5, ttl=10, timer=clock)
    cache["a"] = 1
    clock.advance(10)
    assert cache.get("a") is None
    if ttl_cls is cachetools.TTLCache:
        assert cache.expire() == [("a", 1)]  # cachetools kept it until expire()
    else:
        assert cache.expire() == []  # already gone
    assert len(cache) == 0


def test_growing_the_least_recently_used_item(make: Maker) -> None:
    cache = make(10, getsizeof=lambda value: value)
    cache["a"] = 4
    cache["b"] = 2
    cache["c"] = 2
    cache["a"] = 7  # a is least recently used and grows: 11 > 10
    assert cache.currsize == 9 and "b" not in cache and set(cache) == {"a", "c"}  # the same items go
    if make.source == "cachetools":
        assert list(cache) == ["c", "a"]  # evicted a itself first, then b, and re-added a last
    else:
        assert list(cache) == ["a", "c"]  # updated a in place (keeping its place), evicted b


def test_time_is_not_frozen_inside_a_loop_over_the_views(ttl_cls: Any, clock: FakeClock) -> None:
    cache = ttl_cls(5, ttl=100, timer=clock)
    cache["a"] = 1
    cache["b"] = 2
    for _ in cache.values():
        clock.advance(1)
        if ttl_cls is cachetools.TTLCache:
            assert cache.timer() != clock.now  # cachetools' iterator holds the timer frozen
        else:
            assert cache.timer() == clock.now


def test_timer_must_return_a_number_or_a_datetime(impl: Any) -> None:
    cache = impl.TTLCache(5, ttl=10, timer=lambda: "noon")
    with pytest.raises(TypeError, match="timer must return"):
        cache["a"] = 1
    assert len(impl.TTLCache(5, ttl=10, timer=lambda: 5)) == 0  # ints are fine


def test_growing_the_least_recently_used_item_with_popitem_overridden(make: Maker) -> None:
    class Overriding(make.cls):  # type: ignore[misc,name-defined]
        def popitem(self) -> tuple[Any, Any]:
            return super().popitem()

    cache = make(10, getsizeof=lambda value: value, cls=Overriding)
    cache["a"] = 4
    cache["b"] = 2
    cache["c"] = 2
    cache["a"] = 7
    assert list(cache) == ["c", "a"] and cache.currsize == 9  # cachetools' way, everywhere


def test_reading_through_the_views_refreshes_recency(make: Maker) -> None:
    cache = make(3)
    for key in "abc":
        cache[key] = key
    cache["a"]  # recency: b, c, a
    assert list(cache.values()) == ["a", "b", "c"]  # reads a, b, c in that order
    cache["d"] = "d"  # so a is now the least recently used
    assert list(cache) == ["b", "c", "d"]


def test_timer_attributes_come_from_the_wrapped_timer(ttl_cls: Any, clock: FakeClock) -> None:
    cache = ttl_cls(5, ttl=10, timer=clock)
    clock.advance(3)
    assert cache.timer.now == clock.now and cache.timer.advance == clock.advance
    if ttl_cls is not cachetools.TTLCache:  # cachetools has no public name for it
        assert cache.timer.wrapped is clock
    assert ttl_cls(5, ttl=10).timer.__name__ == "monotonic"


def test_state_pickled_by_fastsess_0_1_still_loads(impl: Any, clock: FakeClock) -> None:
    """0.1 pickled (cls, args, (entries in recency order, attrs)); such pickles keep loading."""
    class Tagged(impl.TTLCache):  # type: ignore[misc,name-defined]
        pass

    cache = Tagged(3, 100, clock)
    cache.__setstate__(([("a", 1, 1, clock.now + 50, True), ("b", 2, 1, clock.now + 40, True)], {"tag": "x"}))
    assert dict(cache.items()) == {"a": 1, "b": 2} and cache.tag == "x"
    cache["c"] = 3
    cache["d"] = 4  # a was least recently used in the saved order
    assert "a" not in cache and set(cache) == {"b", "c", "d"}
    clock.advance(45)  # b expires at +40
    assert set(cache) == {"c", "d"}


def test_getsizeof_is_a_method_not_a_staticmethod(lru_cls: Any) -> None:
    assert lru_cls(3).getsizeof("abc") == 1 and lru_cls(3, getsizeof=len).getsizeof("abc") == 3
    if lru_cls is cachetools.LRUCache:
        assert lru_cls.getsizeof("abc") == 1  # cachetools: a staticmethod, callable on the class
    else:
        with pytest.raises(TypeError):
            lru_cls.getsizeof("abc")  # ours needs an instance (it answers for that cache)
