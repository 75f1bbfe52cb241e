"""Side-by-side cache measurements: fastsess against dict and the caches users would pick.

``run_cache_benchmarks`` measures, in one process and one run, a hit, a miss,
a set that evicts, and a 90/10 read/write mix for every candidate that is
installed, at each requested size, plus one-versus-two-thread throughput of
``LocalCache.get``.  Times are nanoseconds per operation with loop overhead
removed (see ``timing.per_op_ns``).
"""

from __future__ import annotations

import importlib
import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .timing import per_op_ns, threaded_seconds

TTL = 3600.0  # long enough that nothing expires while measuring


@dataclass(frozen=True)
class Candidate:
    """One cache under test: how to build it, read it and write it."""

    name: str
    build: Callable[[int], Any]
    read: str  # "subscript" (c[k]) or "call" (c.get(k))
    write: str  # "setitem" (c[k] = v) or "set_call" (c.set(k, v))

    def read_target(self, cache: Any) -> Any:
        """What the timed read loop calls or subscripts."""
        return cache if self.read == "subscript" else cache.get

    def write_target(self, cache: Any) -> Any:
        """What the timed write loop assigns into or calls."""
        return cache if self.write == "setitem" else cache.set

    def write_function(self, cache: Any) -> Callable[[Any, Any], Any]:
        """``f(key, value)`` that stores into ``cache``."""
        return cache.__setitem__ if self.write == "setitem" else cache.set


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def candidates() -> list[Candidate]:
    """Every candidate whose library is importable here, ``dict`` first (the floor)."""
    from .. import _lru_py

    found = [Candidate("dict", lambda n: {}, "call", "setitem")]
    compiled = _optional("fastsess._lru")
    for label, mod in (("c", compiled), ("py", _lru_py)):
        if mod is None:
            continue
        found.append(Candidate(f"fastsess LocalCache ({label})", lambda n, m=mod: m.LocalCache(n, TTL), "call", "set_call"))
        found.append(Candidate(f"fastsess TTLCache ({label})", lambda n, m=mod: m.TTLCache(n, TTL), "subscript", "setitem"))
        found.append(Candidate(f"fastsess LRUCache ({label})", lambda n, m=mod: m.LRUCache(n), "subscript", "setitem"))
    if (cachebox := _optional("cachebox")) is not None:
        found.append(Candidate("cachebox TTLCache", lambda n: cachebox.TTLCache(n, TTL), "subscript", "setitem"))
        found.append(Candidate("cachebox LRUCache", lambda n: cachebox.LRUCache(n), "subscript", "setitem"))
    if (cachetools := _optional("cachetools")) is not None:
        found.append(Candidate("cachetools TTLCache", lambda n: cachetools.TTLCache(n, TTL), "subscript", "setitem"))
        found.append(Candidate("cachetools LRUCache", lambda n: cachetools.LRUCache(n), "subscript", "setitem"))
    if (lru := _optional("lru")) is not None:
        found.append(Candidate("lru-dict LRU", lambda n: lru.LRU(n), "subscript", "setitem"))
    return found


def random_keys(n: int, rng: random.Random, length: int = 16) -> list[str]:
    """``n`` distinct random ASCII keys of ``length`` characters (session-id-like)."""
    alphabet = string.ascii_letters + string.digits
    keys: dict[str, None] = {}  # a dict, not a set: the order must not depend on PYTHONHASHSEED
    while len(keys) < n:
        keys.update(dict.fromkeys("".join(rng.choices(alphabet, k=length)) for _ in range(n - len(keys))))
    return list(keys)


def _mixed_ns(cache: Any, cand: Candidate, ops: Sequence[tuple[str, bool]], repeat: int) -> float:
    import time

    read = cache.get
    write = cand.write_function(cache)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for key, is_write in ops:
            if is_write:
                write(key, 1)
            else:
                read(key)
        best = min(best, time.perf_counter_ns() - t0)
    return best / len(ops)


def measure_candidate(cand: Candidate, size: int, keys: list[str], probes: int, repeat: int, rng: random.Random) -> dict[str, float]:
    """Hit, miss, set-with-eviction and mixed cost (ns/op) of one candidate at one size."""
    cache = cand.build(size)
    write = cand.write_function(cache)
    for k in keys:
        write(k, 1)
    hit_keys = rng.choices(keys, k=probes)
    absent = random_keys(probes, rng, length=17)  # length 17: never equal to a stored key
    out = {
        "hit": per_op_ns(cand.read, cand.read_target(cache), hit_keys, repeat),
        "miss": per_op_ns("call", cache.get, absent, repeat),
    }
    # every insertion of a fresh key into a full cache evicts one (dict just grows: the floor)
    out["set_evict"] = per_op_ns(cand.write, cand.write_target(cache), absent, 1)
    # 90% reads of (mostly) present keys, 10% writes over a keyspace 10% larger than the cache
    extra = random_keys(max(size // 10, 1), rng, length=18)
    keyspace = keys + extra
    ops = [(rng.choice(keyspace), rng.random() < 0.10) for _ in range(probes)]
    out["mixed"] = _mixed_ns(cache, cand, ops, repeat)
    return out


def run_cache_benchmarks(
    sizes: Sequence[int] = (1_000, 100_000, 1_000_000),
    probes: int = 100_000,
    repeat: int = 5,
    seed: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every installed candidate at every size; returns a JSON-ready dict.

    Shape: ``{"sizes": [...], "rows": [{"candidate", "size", "hit", "miss",
    "set_evict", "mixed"}...], "threads": {...}, "checks": {...}}`` with times in ns/op.
    Cost: roughly ``len(sizes) * len(candidates) * (size + 4 * repeat * probes)``
    operations; the default run takes about a minute on a 2-core machine.
    """
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    cands = candidates()
    for size in sizes:
        keys = random_keys(size, rng)
        for cand in cands:
            if progress:
                progress(f"cache {cand.name} @ {size:,}")
            rows.append({"candidate": cand.name, "size": size, **measure_candidate(cand, size, keys, probes, repeat, rng)})
    threads = measure_threads(min(sizes), max(probes * 4, 400_000), rng)
    return {"sizes": list(sizes), "rows": rows, "threads": threads, "checks": cache_checks(rows, threads)}


def measure_threads(size: int, work: int, rng: random.Random) -> dict[str, float]:
    """Wall time for 1 and 2 threads sharing ``work`` hits on one compiled LocalCache."""
    from ..cache import LocalCache

    keys = random_keys(size, rng)
    cache = LocalCache(size, TTL)
    for k in keys:
        cache.set(k, 1)
    probes = rng.choices(keys, k=work)

    def read_all(part: Sequence[str]) -> None:
        get = cache.get
        for k in part:
            get(k)

    one = threaded_seconds(read_all, probes, 1)
    two = threaded_seconds(read_all, probes, 2)
    return {"ops": work, "one_thread_s": one, "two_threads_s": two, "ratio": two / one}


def _row(rows: list[dict[str, Any]], name: str, size: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["candidate"] == name and r["size"] == size), None)


def cache_checks(rows: list[dict[str, Any]], threads: dict[str, float]) -> dict[str, Any]:
    """The targets from DESIGN.md section 5, evaluated on one run's rows.

    Each entry is ``{"value": ratio, "target": str, "ok": bool}``; a check whose
    inputs were not measured (library missing, size skipped) is left out.
    """
    checks: dict[str, Any] = {}
    small = min(r["size"] for r in rows)
    dict_small = _row(rows, "dict", small)

    def add(name: str, value: float, target: str, ok: bool) -> None:
        checks[name] = {"value": round(value, 3), "target": target, "ok": ok}

    for ours in ("fastsess LocalCache (c)", "fastsess TTLCache (c)"):
        mine = _row(rows, ours, small)
        if mine is None or dict_small is None:
            continue
        add(f"{ours} hit / dict.get", mine["hit"] / dict_small["hit"], "<= 2", mine["hit"] <= 2 * dict_small["hit"])
        box = _row(rows, "cachebox TTLCache", small)
        if box is not None:
            add(f"{ours} hit / cachebox TTLCache", mine["hit"] / box["hit"], "<= 1", mine["hit"] <= box["hit"])
        tools = _row(rows, "cachetools TTLCache", small)
        if tools is not None:
            add(f"cachetools TTLCache hit / {ours}", tools["hit"] / mine["hit"], ">= 6", tools["hit"] >= 6 * mine["hit"])
        # DESIGN.md defines the growth target from 1,000 to 1,000,000 entries only
        big, dict_big = _row(rows, ours, 1_000_000), _row(rows, "dict", 1_000_000)
        if small == 1_000 and big is not None and dict_big is not None:
            growth = (big["hit"] / mine["hit"]) / (dict_big["hit"] / dict_small["hit"])
            add(f"{ours} hit growth 1,000->1,000,000 / dict's growth", growth, "<= 1.5", growth <= 1.5)
    add("LocalCache.get 2 threads / 1 thread (same work)", threads["ratio"], "<= 1 (+5% noise)", threads["ratio"] <= 1.05)
    return checks
