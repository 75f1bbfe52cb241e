"""Cache core: fastsess against ``dict`` and the caches users would otherwise pick.

What is measured, per candidate and per size (1,000 / 100,000 / 1,000,000 entries):

* ``hit-N``: look up present keys (``LocalCache.get(k)``, ``TTLCache[k]``,
  ``LRUCache[k]``, ``c[k]`` for the other caches; ``dict.get(k)`` is the floor).
  The group also holds ``test_loop_overhead``: the same loop with an empty
  body, i.e. what every row pays besides the lookup itself.
* ``miss-N``: ``get(k)`` of absent keys (every candidate through ``.get``:
  ``c[k]`` would time raising ``KeyError``).
* ``mixed-N``: 90% ``get`` / 10% writes over a keyspace 10% larger than the
  cache, so some reads miss and some writes evict (the steady state of a
  session cache).
* ``set-evict-N``: insert keys never seen before into the full cache, so every
  insertion evicts the least recently used entry (``dict`` just grows: the floor).
* ``threads-10000``: the same 200,000 hits done by one thread, then split over
  two threads (``LocalCache.get`` compiled, ``dict.get``, and ``lru-dict`` as
  another cache that, like LocalCache, relinks an entry on every hit): with a
  GIL the two threads take turns, so "no slower than one" is the target, not 2x.

Candidates come from ``fastsess.benchmarks.cache.candidates()`` (the same
definitions ``fastsess bench`` uses); one is skipped only when its package is
not installed.  Each round times a batch of 1,000 operations over a
pre-shuffled key list, and successive rounds walk through the whole key list,
so at a million entries the lookups really are spread over memory instead of
re-reading 1,000 warm entries.  The cost of one operation is round time / 1,000
(``extra_info["per_op_ns"]``; ``--benchmark-time-unit=us`` shows it directly).

Each filled cache is built once (a module-scoped fixture parametrized over
candidate and size, which pytest runs as one block) and the workloads run on
it in order: hit, miss, mixed, then set-evict, the two that change its content
last.
"""

from __future__ import annotations

import functools
import itertools
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from fastsess.benchmarks.cache import Candidate, candidates

from .support import BATCH, SEED, SIZES, batches, random_str_keys, record_per_op, sized

# param id -> (name in candidates(), module whose absence skips it)
CANDIDATES: dict[str, tuple[str, str]] = {
    "dict": ("dict", "builtins"),
    "LocalCache-c": ("fastsess LocalCache (c)", "fastsess._lru"),
    "TTLCache-c": ("fastsess TTLCache (c)", "fastsess._lru"),
    "LRUCache-c": ("fastsess LRUCache (c)", "fastsess._lru"),
    "LocalCache-py": ("fastsess LocalCache (py)", "fastsess._lru_py"),
    "TTLCache-py": ("fastsess TTLCache (py)", "fastsess._lru_py"),
    "LRUCache-py": ("fastsess LRUCache (py)", "fastsess._lru_py"),
    "cachebox-TTLCache": ("cachebox TTLCache", "cachebox"),
    "cachebox-LRUCache": ("cachebox LRUCache", "cachebox"),
    "cachetools-TTLCache": ("cachetools TTLCache", "cachetools"),
    "cachetools-LRUCache": ("cachetools LRUCache", "cachetools"),
    "lru-dict-LRU": ("lru-dict LRU", "lru"),
}
THREAD_CANDIDATES = ("dict", "LocalCache-c", "lru-dict-LRU")

VALUE = object()  # what every cache stores; identity lets the sanity checks see hits
MISS_POOL = 100_000  # absent keys cycled through by the miss benchmark
MIXED_OPS = 100_000  # pre-drawn (key, is_write) operations cycled through by the mixed benchmark
WRITE_SHARE = 0.10
SET_ROUNDS = 200  # rounds of 1,000 never-seen keys for set-evict
THREAD_SIZE = 10_000
THREAD_WORK = 200_000  # hits per round, shared by the threads
THREAD_ROUNDS = 10

# Key families (see random_str_keys): distinct lengths never collide.
STORED_LEN, ABSENT_LEN, FRESH_LEN, EXTRA_LEN = 16, 17, 18, 19


# -- the timed loops: one shape per access style, identical for every candidate -------------


def subscript_loop(cache: Any, keys: Sequence[Any]) -> None:
    for k in keys:
        cache[k]


def call_loop(read: Callable[[Any], Any], keys: Sequence[Any]) -> None:
    for k in keys:
        read(k)


def setitem_loop(cache: Any, keys: Sequence[Any]) -> None:
    for k in keys:
        cache[k] = VALUE


def set_call_loop(write: Callable[[Any, Any], Any], keys: Sequence[Any]) -> None:
    for k in keys:
        write(k, VALUE)


def empty_loop(_target: object, keys: Sequence[Any]) -> None:
    for _k in keys:
        pass


def mixed_loop(target: tuple[Callable[[Any], Any], Callable[[Any, Any], Any]], ops: Sequence[tuple[str, bool]]) -> None:
    read, write = target
    for k, is_write in ops:
        if is_write:
            write(k, VALUE)
        else:
            read(k)


LOOPS: dict[str, Callable[[Any, Sequence[Any]], None]] = {
    "subscript": subscript_loop,
    "call": call_loop,
    "setitem": setitem_loop,
    "set_call": set_call_loop,
}


def rotating(loop: Callable[[Any, Any], None], target: Any, rounds: Sequence[Any]) -> Callable[[], None]:
    """One benchmark round: ``loop(target, batch)`` over the next batch, round-robin."""
    batch = itertools.cycle(rounds).__next__

    def one_round() -> None:
        loop(target, batch())

    return one_round


# -- inputs, built once per run -------------------------------------------------------------


@functools.cache
def candidate_table() -> dict[str, Candidate]:
    return {cand.name: cand for cand in candidates()}


def candidate(cand_id: str) -> Candidate:
    """The candidate behind a param id; skips the test when its package is missing."""
    name, module = CANDIDATES[cand_id]
    pytest.importorskip(module)
    found = candidate_table().get(name)
    if found is None:
        pytest.fail(f"{module} imports but fastsess.benchmarks.cache.candidates() has no {name!r}")
    return found


@functools.cache
def hit_rounds(size: int) -> list[list[str]]:
    """Every stored key once, in an order unrelated to insertion, cut into batches."""
    keys = list(random_str_keys(size, STORED_LEN))
    random.Random(f"{SEED}:hit:{size}").shuffle(keys)
    return batches(keys)


@functools.cache
def miss_rounds() -> list[list[str]]:
    return batches(random_str_keys(MISS_POOL, ABSENT_LEN))


@functools.cache
def mixed_rounds(size: int) -> list[list[tuple[str, bool]]]:
    """90/10 read/write operations over the stored keys plus 10% more that are absent at first."""
    rng = random.Random(f"{SEED}:mixed:{size}")
    keyspace = random_str_keys(size, STORED_LEN) + random_str_keys(max(size // 10, 1), EXTRA_LEN)
    return batches([(rng.choice(keyspace), rng.random() < WRITE_SHARE) for _ in range(MIXED_OPS)])


@functools.cache
def fresh_rounds() -> list[list[str]]:
    return batches(random_str_keys(SET_ROUNDS * BATCH, FRESH_LEN))


@dataclass
class Filled:
    """A candidate's cache holding ``size`` entries (the keys of ``random_str_keys(size)``)."""

    cand_id: str
    candidate: Candidate
    size: int
    cache: Any

    def label(self, benchmark: Any, workload: str) -> None:
        benchmark.group = f"{workload}-{self.size}"

    def record(self, benchmark: Any, workload: str, ops: int = BATCH) -> None:
        record_per_op(benchmark, ops, candidate=self.candidate.name, workload=workload, size=self.size)


@pytest.fixture(
    scope="module",
    params=[sized((cand_id, size), size, f"{cand_id}-{size}") for size in SIZES for cand_id in CANDIDATES],
)
def filled(request: pytest.FixtureRequest) -> Iterator[Filled]:
    """One filled cache per (candidate, size); pytest runs all tests of one param together."""
    cand_id, size = request.param
    cand = candidate(cand_id)
    cache = cand.build(size)
    set_call_loop(cand.write_function(cache), random_str_keys(size, STORED_LEN))
    yield Filled(cand_id, cand, size, cache)


# -- benchmarks -----------------------------------------------------------------------------


def test_hit(benchmark: Any, filled: Filled) -> None:
    cand, cache = filled.candidate, filled.cache
    rounds = hit_rounds(filled.size)
    assert all(cache.get(k) is VALUE for k in rounds[0]), "hit keys must be present"
    filled.label(benchmark, "hit")
    benchmark(rotating(LOOPS[cand.read], cand.read_target(cache), rounds))
    filled.record(benchmark, "hit")


@pytest.mark.parametrize("size", [sized(size, size, str(size)) for size in SIZES])
def test_loop_overhead(benchmark: Any, size: int) -> None:
    """The hit loop with an empty body over the same keys: the part of a hit row that is not the lookup."""
    benchmark.group = f"hit-{size}"
    benchmark(rotating(empty_loop, None, hit_rounds(size)))
    record_per_op(benchmark, BATCH, candidate="empty loop", workload="hit", size=size)


def test_miss(benchmark: Any, filled: Filled) -> None:
    cache = filled.cache
    rounds = miss_rounds()
    assert all(cache.get(k) is None for k in rounds[0]), "miss keys must be absent"
    filled.label(benchmark, "miss")
    benchmark(rotating(call_loop, cache.get, rounds))
    filled.record(benchmark, "miss")


def test_mixed(benchmark: Any, filled: Filled) -> None:
    cand, cache = filled.candidate, filled.cache
    filled.label(benchmark, "mixed")
    benchmark(rotating(mixed_loop, (cache.get, cand.write_function(cache)), mixed_rounds(filled.size)))
    filled.record(benchmark, "mixed")


def test_set_evict(benchmark: Any, filled: Filled) -> None:
    """Runs last on its cache: after it the cache holds mostly never-seen keys."""
    cand, cache = filled.candidate, filled.cache
    target = cand.write_target(cache)
    loop = LOOPS[cand.write]
    next_batch = itertools.cycle(fresh_rounds()).__next__
    assert cache.get(fresh_rounds()[0][0]) is None, "set-evict keys must be new to the cache"
    filled.label(benchmark, "set-evict")
    # pedantic: each round must get keys the cache has never seen, which
    # benchmark()'s open-ended calibration could run out of.
    benchmark.pedantic(loop, setup=lambda: ((target, next_batch()), {}), rounds=SET_ROUNDS)
    filled.record(benchmark, "set-evict")
    if filled.cand_id != "dict":
        assert len(cache) == filled.size, "a full cache must stay at maxsize while inserting"


@pytest.mark.parametrize("threads", [1, 2], ids=["1thread", "2threads"])
@pytest.mark.parametrize("cand_id", THREAD_CANDIDATES)
def test_threads(benchmark: Any, cand_id: str, threads: int) -> None:
    """THREAD_WORK hits per round, done by one thread or split evenly over two."""
    cand = candidate(cand_id)
    keys = random_str_keys(THREAD_SIZE, STORED_LEN)
    cache = cand.build(THREAD_SIZE)
    set_call_loop(cand.write_function(cache), keys)
    probes = random.Random(f"{SEED}:threads").choices(keys, k=THREAD_WORK)
    parts = [probes[i::threads] for i in range(threads)]
    loop, target = LOOPS[cand.read], cand.read_target(cache)

    def one_round() -> None:
        workers = [threading.Thread(target=loop, args=(target, part)) for part in parts]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    benchmark.group = f"threads-{THREAD_SIZE}"
    benchmark.pedantic(one_round, rounds=THREAD_ROUNDS, warmup_rounds=1)
    record_per_op(benchmark, THREAD_WORK, candidate=f"{cand.name} x{threads}", workload="threads", size=THREAD_SIZE)
    benchmark.extra_info["threads"] = threads
