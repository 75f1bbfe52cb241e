"""LocalCache.get against dict.get (and cachebox, and optionally an older core), side by side in one process.

Uses the ``fastsess bench`` engine.  To compare with an older core, build it
under another module name first, e.g. for ``main`` at 3bb2401::

    mkdir /tmp/before && git show 3bb2401:src/fastsess/_lru.pyx > /tmp/before/_lru_before.pyx
    cd /tmp/before && cythonize -i -X language_level=3 -X freethreading_compatible=True \\
        -X boundscheck=False -X wraparound=False -X cdivision=True _lru_before.pyx

then ``python bench/cache_before_after.py /tmp/before [sizes] [rounds] [thread_hits] [thread_runs]``;
``-`` instead of the directory leaves the older core out.

Every round runs the same batch of 1,000 random hits on each candidate (``dict``,
the current ``LocalCache``, the older one if given, cachebox's ``LRUCache`` and
``TTLCache`` if installed), rotating which goes first, so drift of a shared
machine hits all alike; figures are ns per ``get`` with the loop included,
median and IQR of the rounds, and the ratio of medians to ``dict.get``.  With an
older core, the same for three more workloads of ``fastsess bench`` on the two
``LocalCache`` cores alone: ``miss`` (``get`` of never-stored keys), ``mixed``
(90% ``get``, 10% overwrites) and ``set_evict`` (``set`` of new keys into the full
cache, one eviction each; it runs last, as it changes the contents).  Then
the 1-vs-2-thread measurement of ``fastsess bench`` (``measure_threads``: the same
total hits done by one thread and shared by two, alternating, ``thread_runs``
times) for ``dict`` and each ``LocalCache``.  The load average is printed at the
start and the end.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from typing import Any

from fastsess import _lru
from fastsess.benchmarks import cache as engine
from fastsess.benchmarks.timing import call_loop, mixed_loop, set_call_loop, summarize, time_rounds


def _local(module: Any, n: int) -> Any:
    return module.LocalCache(n, engine.TTL)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str]) -> None:
    """Print the side-by-side figures (see the module docstring for the arguments)."""
    cands = [
        engine.Candidate("dict", lambda n: {}, True, "setitem"),
        engine.Candidate("LocalCache", functools.partial(_local, _lru), False, "set_call"),
    ]
    if argv and argv[0] != "-":
        sys.path.insert(0, argv[0])
        before = importlib.import_module("_lru_before")
        cands.append(engine.Candidate("LocalCache before", functools.partial(_local, before), False, "set_call"))
    try:
        cachebox: Any = importlib.import_module("cachebox")
    except ImportError:
        cachebox = None
    if cachebox is not None:
        cands.append(engine.Candidate("cachebox LRUCache", lambda n: cachebox.LRUCache(n), True, "setitem"))
        cands.append(engine.Candidate("cachebox TTLCache", lambda n: cachebox.TTLCache(n, engine.TTL), True, "setitem"))
    sizes = [int(x) for x in argv[1].split(",")] if len(argv) > 1 else [1_000, 100_000, 1_000_000]
    rounds = int(argv[2]) if len(argv) > 2 else 100
    thread_hits = int(argv[3]) if len(argv) > 3 else 2_000_000
    thread_runs = int(argv[4]) if len(argv) > 4 else 7
    print(f"load average at start: {_load()}; CPython {sys.version.split()[0]}", flush=True)
    for size in sizes:
        workload = engine.cache_workload(size, rounds)
        caches = {c.name: engine.filled_cache(c, workload) for c in cands}
        per: dict[str, list[float]] = {c.name: [] for c in cands}
        names = [c.name for c in cands]
        for i, batch in enumerate(workload.hit):
            k = i % len(names)
            for name in names[k:] + names[:k]:
                per[name] += time_rounds(call_loop, caches[name].get, [batch])
        floor = summarize(per["dict"])["median"]
        for name, values in per.items():
            s = summarize(values)
            print(f"{size:>9,} {name:<18} {s['median']:8.1f} ns  IQR {s['q1']:.1f}-{s['q3']:.1f}  {s['median'] / floor:.2f}x dict.get", flush=True)
        print(f"          (load average now {_load()})", flush=True)
        pair = [name for name in names if name.startswith("LocalCache")]
        if len(pair) == 2:
            for label, loop, batches, target in (
                ("miss", call_loop, workload.miss, lambda c: c.get),
                ("mixed", mixed_loop, workload.mixed, lambda c: (c.get, c.set)),
                ("set_evict", set_call_loop, workload.fresh, lambda c: c.set),
            ):
                runs: dict[str, list[float]] = {name: [] for name in pair}
                for i, batch in enumerate(batches):
                    for name in pair if i % 2 == 0 else pair[::-1]:
                        runs[name] += time_rounds(loop, target(caches[name]), [batch])
                now, old = (summarize(runs[name]) for name in pair)
                print(
                    f"{size:>9,} {label:<10} LocalCache {now['median']:7.1f} ns (IQR {now['q1']:.1f}-{now['q3']:.1f}), "
                    f"before {old['median']:7.1f} ns (IQR {old['q1']:.1f}-{old['q3']:.1f}): {now['median'] / old['median']:.2f}x",
                    flush=True,
                )
        del caches
    for cand in cands:
        if not cand.name.startswith(("dict", "LocalCache")):
            continue
        t = engine.measure_threads(cand, thread_hits, thread_runs)
        r = t["ratio"]
        print(
            f"threads {cand.name:<18} 2/1 median {r['median']:.2f}x IQR {r['q1']:.2f}-{r['q3']:.2f} "
            f"range {r['min']:.2f}-{r['max']:.2f} (1 thread {t['one_thread_s']['median'] * 1e3:.0f} ms, {thread_runs} runs)",
            flush=True,
        )
    print(f"load average at end: {_load()}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
