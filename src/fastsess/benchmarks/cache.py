"""Side-by-side cache measurements: fastsess against dict and the caches users would pick.

Every candidate gets the same workload: a fresh cache, filled with the same
``size`` keys in the same order, then (all from ``cache_workload``, seeded):

* ``hit_subscript``: ``c[k]`` of present keys (candidates that support it;
  ``LocalCache`` has no ``[]``), next to ``dict[k]``;
* ``hit_get``: ``c.get(k)`` of the same present keys, next to ``dict.get``;
* ``miss``: ``c.get(k)`` of keys never stored;
* ``mixed``: 90% ``get`` / 10% writes; a read asks for a stored key 90% of the
  time and for a never-stored key 10% of the time, a write overwrites a stored
  key.  No operation adds or evicts a key, so every candidate, whatever its
  eviction policy, sees exactly the same hits and misses (about 90% of reads
  hit; ``mixed_read_hit_rate`` is counted on each cache afterwards);
* ``set_evict``: writes of keys never seen, so a full cache evicts on every
  one (``dict`` just grows: the floor).  It runs last: it is the only workload
  that changes which keys the cache holds.

Rounds walk through pre-shuffled key lists, so at a million entries the
lookups are spread over memory.  Figures are nanoseconds per operation with the
loop included (see ``timing``); ``loop_overhead`` is the empty loop over the
hit keys.  ``measure_threads`` times the same hits done by one thread and by
two, alternating, over several long runs, and reports the median ratio with
its range.  ``measure_memory`` gives the bytes each cached entry costs beyond its
key and value (RSS growth of a new interpreter filling 100,000 entries, and
what ``tracemalloc`` sees of it).
"""

from __future__ import annotations

import functools
import gc
import importlib
import json
import os
import random
import string
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .checks import check
from .timing import (
    BATCH,
    VALUE,
    call_loop,
    empty_loop,
    mixed_loop,
    set_call_loop,
    setitem_loop,
    subscript_loop,
    summarize,
    threaded_seconds,
    time_rounds,
)

TTL = 3600.0  # long enough that nothing expires while measuring
SEED = 20_240_601  # every key list and access order derives from this
WRITE_SHARE = 0.10  # mixed: share of operations that are writes
ABSENT_READ_SHARE = 0.10  # mixed: share of reads that ask for a never-stored key
THREAD_SIZE = 10_000  # entries of the cache the thread measurement reads
MEMORY_ENTRIES = 100_000  # entries per cache in the memory measurement
# Memory is measured for these (when installed): the floor, our caches, the closest rival.
MEMORY_CANDIDATES = (
    "dict", "fastsess LocalCache (c)", "fastsess TTLCache (c)", "fastsess LocalCache (py)",
    "cachebox TTLCache", "cachebox LRUCache", "cachetools TTLCache", "lru-dict LRU",
)
# Key families: distinct lengths never collide.
STORED_LEN, ABSENT_LEN, FRESH_LEN = 16, 17, 18


@dataclass(frozen=True)
class Candidate:
    """One cache under test: how to build it and write into it, and whether ``c[k]`` works."""

    name: str
    build: Callable[[int], Any]
    subscript: bool  # supports c[k] for a hit
    write: str  # "setitem" (c[k] = v) or "set_call" (c.set(k, v))

    def write_target(self, cache: Any) -> Any:
        """What the timed write loop assigns into (``setitem``) or calls (``set_call``)."""
        return cache if self.write == "setitem" else cache.set

    def write_function(self, cache: Any) -> Callable[[Any, Any], Any]:
        """``f(key, value)`` that stores into ``cache``."""
        write: Callable[[Any, Any], Any] = cache.__setitem__ if self.write == "setitem" else cache.set
        return write

    def write_loop(self) -> Callable[[Any, Sequence[Any]], None]:
        """The timed loop for writes in this candidate's style."""
        return setitem_loop if self.write == "setitem" else set_call_loop


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def _local_cache(mod: Any, n: int) -> Any:
    return mod.LocalCache(n, TTL)


def _ttl_cache(mod: Any, n: int) -> Any:
    return mod.TTLCache(n, TTL)


def _lru_cache(mod: Any, n: int) -> Any:
    return mod.LRUCache(n)


def find_candidates() -> tuple[list[Candidate], dict[str, str]]:
    """Every candidate whose library is importable here (``dict`` first: the floor), and what was skipped and why."""
    from .. import _lru_py

    found = [Candidate("dict", lambda n: {}, True, "setitem")]
    skipped: dict[str, str] = {}
    try:
        compiled: Any = importlib.import_module("fastsess._lru")
    except ImportError as exc:
        compiled = None
        skipped["fastsess compiled core"] = f"not importable ({exc})"
    for label, mod in (("c", compiled), ("py", _lru_py)):
        if mod is None:
            continue
        found.append(Candidate(f"fastsess LocalCache ({label})", functools.partial(_local_cache, mod), False, "set_call"))
        found.append(Candidate(f"fastsess TTLCache ({label})", functools.partial(_ttl_cache, mod), True, "setitem"))
        found.append(Candidate(f"fastsess LRUCache ({label})", functools.partial(_lru_cache, mod), True, "setitem"))
    if (cachebox := _optional("cachebox")) is not None:
        found.append(Candidate("cachebox TTLCache", lambda n: cachebox.TTLCache(n, TTL), True, "setitem"))
        found.append(Candidate("cachebox LRUCache", lambda n: cachebox.LRUCache(n), True, "setitem"))
    else:
        skipped["cachebox"] = "not installed"
    if (cachetools := _optional("cachetools")) is not None:
        found.append(Candidate("cachetools TTLCache", lambda n: cachetools.TTLCache(n, TTL), True, "setitem"))
        found.append(Candidate("cachetools LRUCache", lambda n: cachetools.LRUCache(n), True, "setitem"))
    else:
        skipped["cachetools"] = "not installed"
    if (lru := _optional("lru")) is not None:
        found.append(Candidate("lru-dict LRU", lambda n: lru.LRU(n), True, "setitem"))
    else:
        skipped["lru-dict"] = "not installed"
    return found, skipped


def candidates() -> list[Candidate]:
    """The candidates of ``find_candidates`` (without the skipped list)."""
    return find_candidates()[0]


def random_keys(n: int, rng: random.Random, length: int = 16) -> list[str]:
    """``n`` distinct random ASCII keys of ``length`` characters (session-id-like), in a reproducible order."""
    alphabet = string.ascii_letters + string.digits
    keys: dict[str, None] = {}  # a dict, not a set: the order must not depend on PYTHONHASHSEED
    while len(keys) < n:
        keys.update(dict.fromkeys("".join(rng.choices(alphabet, k=length)) for _ in range(n - len(keys))))
    return list(keys)


def _batches(items: list[Any]) -> list[list[Any]]:
    return [items[i : i + BATCH] for i in range(0, len(items), BATCH)]


@dataclass(frozen=True)
class CacheWorkload:
    """The inputs every candidate of one size is measured with (``rounds`` batches of ``BATCH`` each)."""

    size: int
    rounds: int
    stored: list[str]  # filled into every cache, in this order
    hit: list[list[str]]  # present keys, every round a slice of a shuffled pass over ``stored``
    miss: list[list[str]]  # never-stored keys
    mixed: list[list[tuple[str, bool]]]  # (key, is_write)
    fresh: list[list[str]]  # never-seen keys for set_evict, one batch per round
    fresh_warmup: list[str]  # never-seen keys for set_evict's untimed warm-up round


@functools.lru_cache(maxsize=2)
def cache_workload(size: int, rounds: int, seed: int = SEED) -> CacheWorkload:
    """The seeded workload for ``size`` entries and ``rounds`` rounds (built once per process; read-only).

    Raises:
        ValueError: ``size`` or ``rounds`` is below 1.
    """
    if size < 1 or rounds < 1:
        raise ValueError("size and rounds must be at least 1")
    rng = random.Random(f"{seed}:{size}:{rounds}")
    total = rounds * BATCH
    stored = random_keys(size, rng, STORED_LEN)
    order: list[str] = []
    while len(order) < total:
        shuffled = list(stored)
        rng.shuffle(shuffled)
        order += shuffled[: total - len(order)]
    absent = random_keys(min(total, 100_000), rng, ABSENT_LEN)
    miss = [absent[i % len(absent)] for i in range(total)]
    ops: list[tuple[str, bool]] = []
    absent_reads = (1.0 - WRITE_SHARE) * ABSENT_READ_SHARE
    for _ in range(total):
        r = rng.random()
        if r < WRITE_SHARE:
            ops.append((rng.choice(stored), True))
        elif r < WRITE_SHARE + absent_reads:
            ops.append((rng.choice(absent), False))
        else:
            ops.append((rng.choice(stored), False))
    fresh = random_keys(total + BATCH, rng, FRESH_LEN)
    return CacheWorkload(size, rounds, stored, _batches(order), _batches(miss), _batches(ops), _batches(fresh[BATCH:]), fresh[:BATCH])


def filled_cache(cand: Candidate, workload: CacheWorkload) -> Any:
    """A fresh cache of ``cand`` holding ``workload.stored`` (same keys, same order for everyone).

    Raises:
        AssertionError: the cache does not hold exactly the stored keys afterwards.
    """
    cache = filled_cache_of(cand, workload.size, workload.stored)
    if len(cache) != workload.size:
        raise AssertionError(f"{cand.name}: {len(cache)} entries after filling {workload.size}")
    return cache


def read_hit_rate(cache: Any, ops: Sequence[Sequence[tuple[Any, bool]]]) -> float:
    """Share of the reads in ``ops`` that find their key in ``cache`` (untimed; the writes are not replayed)."""
    get = cache.get
    reads = hits = 0
    for batch in ops:
        for key, is_write in batch:
            if not is_write:
                reads += 1
                hits += get(key) is VALUE
    return hits / reads if reads else 0.0


# -- the workloads, one function each: bench/test_cache.py calls the same ones ---------------------


def run_hit_subscript(cache: Any, workload: CacheWorkload) -> list[float]:
    """``c[k]`` of present keys: ns per op of each round."""
    return time_rounds(subscript_loop, cache, workload.hit)


def run_hit_get(cache: Any, workload: CacheWorkload) -> list[float]:
    """``c.get(k)`` of present keys: ns per op of each round."""
    return time_rounds(call_loop, cache.get, workload.hit)


def run_miss(cache: Any, workload: CacheWorkload) -> list[float]:
    """``c.get(k)`` of never-stored keys: ns per op of each round."""
    return time_rounds(call_loop, cache.get, workload.miss)


def run_mixed(cand: Candidate, cache: Any, workload: CacheWorkload) -> list[float]:
    """90/10 ``get``/overwrite operations: ns per op of each round."""
    return time_rounds(mixed_loop, (cache.get, cand.write_function(cache)), workload.mixed)


def run_set_evict(cand: Candidate, cache: Any, workload: CacheWorkload) -> list[float]:
    """Writes of never-seen keys (each evicts in a full cache): ns per op of each round."""
    return time_rounds(cand.write_loop(), cand.write_target(cache), workload.fresh, warmup=workload.fresh_warmup)


def run_loop_overhead(workload: CacheWorkload) -> list[float]:
    """The hit loop with an empty body: ns per key of each round."""
    return time_rounds(empty_loop, None, workload.hit)


def measure_candidate(cand: Candidate, workload: CacheWorkload) -> dict[str, Any]:
    """Every workload on one fresh cache of ``cand``, in order (the content-preserving ones first).

    Returns ``{"candidate", "size", "hit_subscript" (or None), "hit_get", "miss",
    "mixed", "set_evict"}`` (each a ``summarize`` dict of ns per op) plus
    ``mixed_read_hit_rate`` and ``len_after_mixed``.

    Raises:
        AssertionError: a hit key is absent or a miss key present (a broken candidate).
    """
    cache = filled_cache(cand, workload)
    if cache.get(workload.hit[0][0]) is not VALUE or cache.get(workload.miss[0][0]) is not None:
        raise AssertionError(f"{cand.name}: hit keys must be present and miss keys absent")
    row: dict[str, Any] = {"candidate": cand.name, "size": workload.size}
    row["hit_subscript"] = summarize(run_hit_subscript(cache, workload)) if cand.subscript else None
    row["hit_get"] = summarize(run_hit_get(cache, workload))
    row["miss"] = summarize(run_miss(cache, workload))
    row["mixed"] = summarize(run_mixed(cand, cache, workload))
    row["mixed_read_hit_rate"] = read_hit_rate(cache, workload.mixed)
    row["len_after_mixed"] = len(cache)
    row["set_evict"] = summarize(run_set_evict(cand, cache, workload))
    return row


def run_cache_benchmarks(
    sizes: Sequence[int] = (1_000, 100_000, 1_000_000),
    rounds: int = 100,
    thread_hits: int = 2_000_000,
    thread_runs: int = 7,
    seed: int = SEED,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every installed candidate at every size; returns a JSON-ready dict.

    Shape: ``{"sizes", "rounds", "batch", "rows": [measure_candidate(...)...],
    "loop_overhead": [{"size", **summary}...], "threads": [measure_threads(...)...],
    "skipped": {library: why}, "checks": {...}}``, times in ns per operation.

    Raises:
        ValueError: ``sizes`` is empty or ``rounds`` < 1.
    """
    if not sizes:
        raise ValueError("at least one size is needed")
    cands, skipped = find_candidates()
    rows: list[dict[str, Any]] = []
    overhead: list[dict[str, Any]] = []
    for size in sizes:
        workload = cache_workload(size, rounds, seed)
        overhead.append({"size": size, **summarize(run_loop_overhead(workload))})
        for cand in cands:
            if progress:
                progress(f"cache {cand.name} @ {size:,}")
            rows.append(measure_candidate(cand, workload))
    by_name = {cand.name: cand for cand in cands}
    impl = "c" if "fastsess LocalCache (c)" in by_name else "py"  # the targets are checked on the core installed
    threads = []
    for name in ("dict", f"fastsess LocalCache ({impl})"):
        if progress:
            progress(f"threads {name}")
        threads.append(measure_threads(by_name[name], thread_hits, thread_runs, seed))
    if progress:
        progress("memory per entry")
    # 100,000 entries, or fewer when every measured size is smaller (a tiny test run)
    memory = measure_memory([c for c in cands if c.name in MEMORY_CANDIDATES], min(MEMORY_ENTRIES, max(sizes)), seed)
    return {
        "sizes": list(sizes),
        "rounds": rounds,
        "batch": BATCH,
        "rows": rows,
        "loop_overhead": overhead,
        "threads": threads,
        "memory": memory,
        "skipped": skipped,
        "checks": cache_checks(rows, threads, impl),
    }


def _rss_bytes() -> int | None:
    """This process's resident set size, from ``/proc/self/statm`` (None where there is none)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _memory_child(name: str, entries: int, seed: int) -> dict[str, Any]:
    """In a fresh interpreter: bytes per entry of candidate ``name`` holding ``entries`` keys (keys and value made beforehand)."""
    cand = next(c for c in find_candidates()[0] if c.name == name)
    keys = random_keys(entries, random.Random(f"{seed}:memory"), STORED_LEN)
    gc.collect()
    before = _rss_bytes()
    cache = filled_cache_of(cand, entries, keys)
    gc.collect()
    after = _rss_bytes()
    tracemalloc.start()
    other = filled_cache_of(cand, entries, keys)  # a second one, traced from empty
    traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del cache, other
    rss = None if before is None or after is None else (after - before) / entries
    return {"candidate": name, "entries": entries, "rss_bytes_per_entry": rss, "traced_bytes_per_entry": traced / entries}


def _memory_child_main() -> None:
    """Entry point of the child process: ``name entries seed`` in ``sys.argv``, one JSON line out."""
    name, entries, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(_memory_child(name, entries, seed)))


def filled_cache_of(cand: Candidate, size: int, keys: Sequence[str]) -> Any:
    """A new cache of ``cand`` for ``size`` entries holding ``keys`` (all mapped to ``VALUE``)."""
    cache = cand.build(size)
    set_call_loop(cand.write_function(cache), keys)
    return cache


def measure_memory(cands: Sequence[Candidate], entries: int = MEMORY_ENTRIES, seed: int = SEED) -> dict[str, Any]:
    """Bytes per cached entry beyond its key and value, for each candidate, each in a fresh child process.

    Every entry maps a pre-made 16-character key to one shared value object, so
    what grows is the cache's own structure.  ``rss_bytes_per_entry``: growth of
    the child's resident set size while filling (the whole process: includes
    allocations ``tracemalloc`` cannot see, such as a Rust or C library's own
    ``malloc``); ``traced_bytes_per_entry``: what ``tracemalloc`` saw while filling a
    second cache (Python's allocators only).  Needs ``/proc`` (Linux); elsewhere
    returns ``{"rows": [], "skipped": why}``.
    """
    if _rss_bytes() is None:
        return {"entries": entries, "rows": [], "skipped": "needs /proc/self/statm (Linux)"}
    code = "from fastsess.benchmarks.cache import _memory_child_main; _memory_child_main()"
    rows = []
    for cand in cands:
        # a new interpreter each: a forked child would reuse memory its parent freed
        done = subprocess.run(
            [sys.executable, "-c", code, cand.name, str(entries), str(seed)], capture_output=True, text=True, timeout=600, check=False
        )
        if done.returncode == 0:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        else:
            rows.append({"candidate": cand.name, "entries": entries, "error": f"child exited with {done.returncode}: {done.stderr.strip()[-200:]}"})
    return {"entries": entries, "rows": rows}


def measure_threads(cand: Candidate, hits: int, runs: int, seed: int = SEED) -> dict[str, Any]:
    """Wall time of ``hits`` ``get`` hits done by one thread, then shared by two, ``runs`` times.

    Every key maps to a value object of its own and every thread calls its own bound
    ``get``, as threads of a server reading different sessions do.

    The order of the two alternates from run to run, so slow drift of a shared
    machine hits both alike.  ``ratio`` summarizes two / one over the runs.

    Raises:
        ValueError: ``hits`` < 2 or ``runs`` < 1.
    """
    if hits < 2 or runs < 1:
        raise ValueError("need at least 2 hits and 1 run")
    rng = random.Random(f"{seed}:threads")
    keys = random_keys(THREAD_SIZE, rng, STORED_LEN)
    cache = cand.build(THREAD_SIZE)
    write = cand.write_function(cache)
    for key in keys:  # a value object per key, as every session is its own object
        write(key, object())
    probes = rng.choices(keys, k=hits)

    def work(part: Sequence[str]) -> None:
        # each thread binds its own get: on a free-threaded build one bound method (or one
        # value) shared by every thread makes each hit write the same reference counts
        call_loop(cache.get, part)

    work(probes[: min(hits, 100_000)])  # warm-up
    ones: list[float] = []
    twos: list[float] = []
    for i in range(runs):
        if i % 2 == 0:
            ones.append(threaded_seconds(work, probes, 1))
            twos.append(threaded_seconds(work, probes, 2))
        else:
            twos.append(threaded_seconds(work, probes, 2))
            ones.append(threaded_seconds(work, probes, 1))
    ratios = [two / one for one, two in zip(ones, twos, strict=True)]
    return {
        "candidate": cand.name,
        "access": "get",
        "size": THREAD_SIZE,
        "hits": hits,
        "runs": runs,
        "one_thread_s": summarize(ones),
        "two_threads_s": summarize(twos),
        "ratio": summarize(ratios),
        "ratios": ratios,
    }


def row(rows: list[dict[str, Any]], name: str, size: int) -> dict[str, Any] | None:
    """The row of candidate ``name`` at ``size``, if measured."""
    return next((r for r in rows if r["candidate"] == name and r["size"] == size), None)


def median(r: dict[str, Any] | None, field: str) -> float | None:
    """``r[field]["median"]``, or None when ``r`` or the field is missing."""
    if r is None or r.get(field) is None:
        return None
    return float(r[field]["median"])


def cache_checks(rows: list[dict[str, Any]], threads: list[dict[str, Any]], impl: str = "c") -> dict[str, Any]:
    """The project's cache targets, evaluated on one run's medians (loop included).

    Hits are compared within one access style: ``LocalCache.get`` with
    ``dict.get`` and ``cachebox``/``cachetools`` ``.get``; ``TTLCache[k]`` with
    ``dict[k]`` and their ``[k]``.  Ratios at the smallest size (1,000 entries
    in the default run); the growth targets need the 1,000 and 1,000,000 sizes.
    A check whose inputs were not measured is left out.
    """
    checks: dict[str, Any] = {}
    if not rows:
        return checks
    small = min(r["size"] for r in rows)
    ours = {"get": f"fastsess LocalCache ({impl})", "subscript": f"fastsess TTLCache ({impl})"}
    label = {"get": ("LocalCache.get", "{}.get"), "subscript": ("TTLCache[k]", "{}[k]")}
    for style, name in ours.items():
        field = "hit_get" if style == "get" else "hit_subscript"
        mine_label, other_fmt = label[style]
        mine = median(row(rows, name, small), field)
        if mine is None:
            continue
        floor = median(row(rows, "dict", small), field)
        if floor and style == "subscript":
            checks[f"{mine_label} / {other_fmt.format('dict')}, hit, {small:,} entries"] = check(mine / floor, "<=", 2, "x")
        if style == "get":  # LocalCache.get: within 1.5x of dict.get at every size
            for size in sorted({r["size"] for r in rows}):
                at, floor_at = median(row(rows, name, size), field), median(row(rows, "dict", size), field)
                if at and floor_at:
                    checks[f"{mine_label} / dict.get, hit, {size:,} entries"] = check(at / floor_at, "<=", 1.5, "x")
        box = median(row(rows, "cachebox TTLCache", small), field)
        if box:
            checks[f"{mine_label} / cachebox {other_fmt.format('TTLCache')}, hit, {small:,} entries"] = check(mine / box, "<=", 1, "x")
        tools = median(row(rows, "cachetools TTLCache", small), field)
        if tools:
            checks[f"cachetools {other_fmt.format('TTLCache')} / {mine_label}, hit, {small:,} entries"] = check(tools / mine, ">=", 6, "x")
        big, floor_big = median(row(rows, name, 1_000_000), field), median(row(rows, "dict", 1_000_000), field)
        small_floor = median(row(rows, "dict", 1_000), field)
        small_mine = median(row(rows, name, 1_000), field)
        if big and floor_big and small_floor and small_mine:
            growth = (big / small_mine) / (floor_big / small_floor)
            checks[f"{mine_label} hit growth 1,000 -> 1,000,000 entries / {other_fmt.format('dict')}'s growth"] = check(growth, "<=", 1.5, "x")
    for t in threads:
        if t["candidate"] == ours["get"]:
            r = t["ratio"]
            checks[f"LocalCache.get, 2 threads / 1 thread, same {t['hits']:,} hits (median of {t['runs']} runs)"] = check(
                r["median"], "<=", 1.0, "x", band=(r["min"], r["max"]), note="two threads no slower than one"
            )
    return checks
