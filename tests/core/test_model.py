"""Property-based tests: random operation sequences against a simple reference model.

The models (``reference.Model``) are exact LRU for TTLCache and CLOCK for
LocalCache; Hypothesis drives the caches and the models with the same
operations (including clock jumps) and compares every observable result, the
eviction order and, for LocalCache, the statistics.
"""

from __future__ import annotations

import importlib
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from .conftest import IMPLEMENTATIONS, MODULES, FakeClock
from .reference import Model

KEYS = st.integers(min_value=0, max_value=12)
VALUES = st.integers()
TTLS = st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0, 3.0, 7.5]))
MAXSIZE = 5
DEFAULT_TTL = 4.0


class CacheMachine(RuleBasedStateMachine):
    implementation: str = "py"

    @initialize()
    def setup(self) -> None:
        # imported here, not at collection: a missing extension fails these tests
        # instead of aborting the whole run with a collection error
        self.module = importlib.import_module(MODULES[self.implementation])
        self.clock = FakeClock()
        self.model = Model(self.clock, MAXSIZE, second_chance=True)
        self.ttl_cache = self.module.TTLCache(MAXSIZE, DEFAULT_TTL, timer=self.clock)
        self.local = self.module.LocalCache(MAXSIZE, DEFAULT_TTL, timer=self.clock)
        # TTLCache has one TTL, so it gets its own model
        self.ttl_model = Model(self.clock, MAXSIZE, second_chance=False)

    @rule(key=KEYS, value=VALUES, ttl=TTLS)
    def set(self, key: int, value: int, ttl: float | None) -> None:
        self.local.set(key, value, ttl=ttl)
        self.model.set(key, value, DEFAULT_TTL if ttl is None else ttl)
        self.ttl_cache[key] = value
        self.ttl_model.set(key, value, DEFAULT_TTL)

    @rule(key=KEYS)
    def get(self, key: int) -> None:
        assert self.local.get(key) == self.model.get(key)
        assert self.ttl_cache.get(key) == self.ttl_model.get(key)

    @rule(key=KEYS)
    def subscript(self, key: int) -> None:
        expected = self.ttl_model.get(key)
        try:
            got = self.ttl_cache[key]
        except KeyError:
            got = None
        assert got == expected

    @rule(key=KEYS)
    def delete(self, key: int) -> None:
        assert self.local.delete(key) == self.model.delete(key)
        expected_live = self.ttl_model.delete(key)
        try:
            del self.ttl_cache[key]
            deleted = True
        except KeyError:
            deleted = False
        assert deleted == expected_live

    @rule()
    def popitem(self) -> None:
        self.ttl_model.purge()
        if self.ttl_model.data:
            expected_key, (expected_value, _) = next(iter(self.ttl_model.data.items()))
            del self.ttl_model.data[expected_key]
            assert self.ttl_cache.popitem() == (expected_key, expected_value)
        else:
            try:
                self.ttl_cache.popitem()
            except KeyError:
                pass
            else:
                raise AssertionError("popitem on an empty cache must raise KeyError")

    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0, 2.0, 5.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def expire(self) -> None:
        assert self.local.expire() == len(self.model.purge())
        assert sorted(self.ttl_cache.expire()) == sorted(self.ttl_model.purge())

    @invariant()
    def same_contents_and_order(self) -> None:
        if not hasattr(self, "model"):
            return
        assert self.local.keys() == self.model.live_keys()
        assert list(self.ttl_cache) == self.ttl_model.inserted_live_keys()
        assert len(self.ttl_cache) == len(self.ttl_model.live_keys())
        self.ttl_model.purge()  # len() purged the cache
        stats = self.local.stats  # purges too
        self.model.purge()
        m = self.model
        assert (stats.hits, stats.misses, stats.evictions, stats.expirations, stats.size) == (
            m.hits, m.misses, m.evictions, m.expirations, len(m.data)
        )


def _machine_test(impl: str) -> Any:
    machine = type(f"CacheMachine_{impl}", (CacheMachine,), {"implementation": impl})
    case = machine.TestCase
    case.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
    return case


for _impl in IMPLEMENTATIONS:
    globals()[f"TestCacheModel_{_impl}"] = _machine_test(_impl)
