"""LocalCache.get before and after a change, side by side in one process, with the ``fastsess bench`` engine.

Build the old core under another module name first, e.g. for ``main`` at 3bb2401::

    mkdir /tmp/before && git show 3bb2401:src/fastsess/_lru.pyx > /tmp/before/_lru_before.pyx
    cd /tmp/before && cythonize -i -X language_level=3 -X freethreading_compatible=True \\
        -X boundscheck=False -X wraparound=False -X cdivision=True _lru_before.pyx

then ``python bench/cache_before_after.py /tmp/before [sizes] [rounds] [thread_hits] [thread_runs]``.

Every round runs the same batch of 1,000 random hits on ``dict``, the old
``LocalCache`` and the current one, rotating which goes first, so drift of a
shared machine hits all three alike; figures are ns per ``get`` with the loop
included, median and IQR of the rounds.  Then the 1-vs-2-thread measurement of
``fastsess bench`` for each.
"""

from __future__ import annotations

import functools
import importlib
import sys
from typing import Any

from fastsess import _lru
from fastsess.benchmarks import cache as engine
from fastsess.benchmarks.timing import call_loop, summarize, time_rounds


def _local(module: Any, n: int) -> Any:
    return module.LocalCache(n, engine.TTL)


def main(argv: list[str]) -> None:
    """Print the side-by-side figures (see the module docstring for the arguments)."""
    sys.path.insert(0, argv[0])
    before = importlib.import_module("_lru_before")
    sizes = [int(x) for x in argv[1].split(",")] if len(argv) > 1 else [1_000, 100_000, 1_000_000]
    rounds = int(argv[2]) if len(argv) > 2 else 100
    thread_hits = int(argv[3]) if len(argv) > 3 else 2_000_000
    thread_runs = int(argv[4]) if len(argv) > 4 else 7
    cands = [
        engine.Candidate("dict", lambda n: {}, True, "setitem"),
        engine.Candidate("LocalCache before", functools.partial(_local, before), False, "set_call"),
        engine.Candidate("LocalCache after", functools.partial(_local, _lru), False, "set_call"),
    ]
    for size in sizes:
        workload = engine.cache_workload(size, rounds)
        caches = {c.name: engine.filled_cache(c, workload) for c in cands}
        per: dict[str, list[float]] = {c.name: [] for c in cands}
        for i, batch in enumerate(workload.hit):
            names = [c.name for c in cands]
            for name in names[i % 3 :] + names[: i % 3]:
                per[name] += time_rounds(call_loop, caches[name].get, [batch])
        floor = summarize(per["dict"])["median"]
        for name, values in per.items():
            s = summarize(values)
            print(f"{size:>9,} {name:<18} {s['median']:8.1f} ns  IQR {s['q1']:.1f}-{s['q3']:.1f}  {s['median'] / floor:.2f}x dict.get", flush=True)
        del caches
    for cand in cands:
        t = engine.measure_threads(cand, thread_hits, thread_runs)
        r = t["ratio"]
        print(
            f"threads {cand.name:<18} 2/1 median {r['median']:.2f}x IQR {r['q1']:.2f}-{r['q3']:.2f} "
            f"range {r['min']:.2f}-{r['max']:.2f} (1 thread {t['one_thread_s']['median'] * 1e3:.0f} ms)",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
