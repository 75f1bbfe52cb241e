"""LocalCache's hit path answers exactly as a dict would, whatever the keys.

The compiled LocalCache serves a hit of an exact str/int/bytes key from its own
open-addressing index (a copy of the value, the expiry and the CLOCK bit per
slot) instead of the dict.  These tests drive the cases where that index could
disagree with the dict: equal keys that are different objects, colliding
hashes, slots shifted back after removals, the index rebuilt as it grows, keys of other
types that compare equal to an int, overwrites that change the value or the
expiry.  They run on the pure twin too (which has no index): same answers.
"""

from __future__ import annotations

import random
from typing import Any

from .conftest import FakeClock

P = 2**61 - 1  # CPython hashes ints modulo P: i and i + P collide


def fresh(text: str) -> str:
    """An equal str that is a different object."""
    return "".join(list(text))


def test_equal_keys_that_are_other_objects_hit(impl: Any, clock: FakeClock) -> None:
    cache = impl.LocalCache(max_size=100, ttl=10, timer=clock)
    sid = fresh("session-" + "x" * 20)
    big = 10**30
    cache.set(sid, "s")
    cache.set(big, "i")
    cache.set(b"bytes-key", "b")
    cache.set("é-ünïcode-€", "u")
    assert cache.get(fresh(sid)) == "s"
    assert cache.get(int(str(big))) == "i"
    assert cache.get(bytes(bytearray(b"bytes-key"))) == "b"
    assert cache.get(fresh("é-ünïcode-€")) == "u"
    assert cache.get(fresh("é-ünïcode-$")) is None
    assert cache.get("1") is None and cache.get(1) is None and cache.get(b"1") is None
    cache.set("1", "str")
    cache.set(b"1", "bytes")
    cache.set(1, "int")
    assert (cache.get("1"), cache.get(b"1"), cache.get(1)) == ("str", "bytes", "int")
    assert cache.stats.hits == 7


def test_colliding_hashes_removed_slots_and_growth(impl: Any, clock: FakeClock) -> None:
    cache = impl.LocalCache(max_size=10_000, ttl=10, timer=clock)
    keys = [7 + k * P for k in range(40)] + [-1, -2]  # 40 equal hashes; hash(-1) == hash(-2)
    assert len({hash(k) for k in keys}) == 2
    for k in keys:
        cache.set(k, k)
    for k in keys[::3]:
        assert cache.delete(k) is True
    for k in keys:
        assert cache.get(k) == (None if keys.index(k) % 3 == 0 else k)
    assert cache.get(7 + 99 * P) is None
    for k in keys[::3]:  # back in, after the removals shifted the others
        cache.set(k, -k)
    assert all(cache.get(k) == (-k if keys.index(k) % 3 == 0 else k) for k in keys)
    for i in range(3_000):  # many rebuilds of the index
        cache.set(f"k{i}", i)
    assert all(cache.get(k) == (-k if keys.index(k) % 3 == 0 else k) for k in keys)
    assert all(cache.get(f"k{i}") == i for i in range(0, 3_000, 7))


def test_random_operations_agree_with_a_dict(impl: Any, clock: FakeClock) -> None:
    cache = impl.LocalCache(max_size=1_000, ttl=10, timer=clock)  # never full: the dict is the model
    model: dict[Any, int] = {}
    rng = random.Random(15)
    universe = [f"s{i}" for i in range(300)] + list(range(300)) + [b"b%d" % i for i in range(300)]
    for step in range(20_000):
        key = rng.choice(universe)
        r = rng.random()
        if r < 0.5:
            assert cache.get(fresh(key) if isinstance(key, str) else key) == model.get(key), step
        elif r < 0.8:
            cache.set(key, step)
            model[key] = step
        else:
            assert cache.delete(key) == (model.pop(key, None) is not None), step
    assert sorted(map(repr, cache.keys())) == sorted(map(repr, model))


def test_keys_equal_to_an_int_but_of_other_types(impl: Any, clock: FakeClock) -> None:
    cache = impl.LocalCache(max_size=10, ttl=10, timer=clock)
    cache.set(1.0, "float")  # 1.0 == 1 == True, one dict key
    assert cache.get(1) == "float" and cache.get(True) == "float"
    assert cache.delete(1) is True
    assert cache.get(1) is None and cache.get(1.0) is None
    cache.set(1, "int")
    cache.set(1.0, "via float")  # updates the entry whose key is the int 1
    assert cache.get(1) == "via float" and cache.get(True) == "via float"
    assert cache.keys() == [1] and type(cache.keys()[0]) is int


def test_overwrites_change_what_a_hit_sees(impl: Any, clock: FakeClock) -> None:
    cache = impl.LocalCache(max_size=10, ttl=100, timer=clock)
    cache.set("a", 1)
    cache.set("a", 2)
    assert cache.get("a") == 2
    cache.set("a", 3, ttl=1)  # now its own, shorter TTL
    assert cache.get("a") == 3
    clock.advance(2)
    assert cache.get("a") is None and cache.stats.expirations == 1
    cache.set("a", 4, ttl=1)
    cache.set("a", 5)  # back to the cache's TTL
    clock.advance(50)
    assert cache.get("a") == 5
    clock.advance(60)
    assert cache.get("a") is None
    cache.set("b", 6)
    cache.clear()
    assert cache.get("b") is None
    cache.set("b", 7)
    assert cache.get("b") == 7


def test_the_visited_bit_of_a_hit_protects_the_entry(impl: Any, clock: FakeClock) -> None:
    cache = impl.LocalCache(max_size=100, ttl=100, timer=clock)
    for i in range(100):
        cache.set(fresh(f"k{i}"), i)
    for i in range(0, 100, 2):
        assert cache.get(f"k{i}") == i  # equal keys, other objects: marks the stored entries
    for i in range(50):
        cache.set(f"new{i}", i)  # the 50 unmarked ones go first
    assert sorted(cache.keys()) == sorted([f"k{i}" for i in range(0, 100, 2)] + [f"new{i}" for i in range(50)])


def test_expiry_is_exact_far_from_the_index_epoch(impl: Any, clock: FakeClock) -> None:
    # The compiled index keeps each expiry as a float relative to the first one it
    # stored: 1e7 s later a float step is 1 s, so for this entry's whole 0.75 s life
    # the slot cannot prove it live and every hit takes the exact path.
    cache = impl.LocalCache(max_size=100, ttl=30, timer=clock)
    cache.set("first", 1)  # sets the epoch
    clock.advance(1e7)
    cache.set("short", 2, ttl=0.75)
    cache.set("forever", 3, ttl=float("inf"))
    for _ in range(3):
        clock.advance(0.25 - 1e-6)
        assert cache.get("short") == 2 and cache.get("forever") == 3
    clock.advance(3e-6)  # 0.75 s and a hair: expired
    assert cache.get("short") is None and cache.get("forever") == 3
    assert cache.get("first") is None  # long expired
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.expirations) == (7, 2, 2)
    clock.now = 1e300  # expiries beyond a float's range from the epoch
    cache.set("huge", 4, ttl=1e299)
    clock.advance(1e299 * 0.5)
    assert cache.get("huge") == 4 and cache.get("forever") == 3
    clock.advance(1e299 * 0.6)
    assert cache.get("huge") is None and cache.get("forever") == 3


def test_an_entry_near_its_expiry_still_counts_as_visited(impl: Any, clock: FakeClock) -> None:
    # A hit served by the exact path (the slot could not prove the entry live) marks
    # it visited as a fast hit does: CLOCK then keeps it over an unvisited one.
    cache = impl.LocalCache(max_size=2, ttl=30, timer=clock)
    cache.set("epoch", 0)
    clock.advance(1e7)
    cache.set("a", 1, ttl=0.5)  # shorter than a float step (1 s) this far from the epoch
    cache.set("b", 2, ttl=100)  # evicts "epoch"
    assert cache.get("a") == 1  # the exact path
    cache.set("c", 3)  # evicts "b", the unvisited one
    assert sorted(cache.keys()) == ["a", "c"]
