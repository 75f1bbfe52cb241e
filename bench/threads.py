"""Two threads against one doing the same total ``get`` hits: ``dict`` and ``LocalCache``, interleaved.

``python bench/threads.py [hits] [runs] [size]`` (defaults 2,000,000, 11, 10,000).

Each candidate is filled with ``size`` random 16-character keys (one shared
value); the same ``hits`` random present keys are then read by one thread, and
split between two threads (thread i takes every other key from i), in every run.
Within a run the four measurements (dict 1 thread, dict 2 threads, LocalCache 1,
LocalCache 2) go in a rotating order, so a shared machine's drift hits them
alike.  Printed per candidate: the ratio two threads / one thread of wall time
(the issue's measure) and of the process's CPU time, median, IQR and range over
the runs, with the load average at the start and the end.
"""

from __future__ import annotations

import os
import random
import sys
from typing import Any

from freethreaded import fixed, interleaved, timed  # bench/, this script's directory

from fastsess.benchmarks.cache import STORED_LEN, random_keys
from fastsess.benchmarks.timing import VALUE, summarize
from fastsess.cache import IMPLEMENTATION, LocalCache


def main(argv: list[str]) -> None:
    """Print the interleaved 1-vs-2-thread ratios (arguments: see the module docstring)."""
    hits = int(argv[0]) if argv else 2_000_000
    runs = int(argv[1]) if len(argv) > 1 else 11
    size = int(argv[2]) if len(argv) > 2 else 10_000
    rng = random.Random(15)
    keys = random_keys(size, rng, STORED_LEN)
    probes = rng.choices(keys, k=hits)
    d: dict[str, Any] = {}
    local = LocalCache(size, 3600.0)
    for k in keys:
        d[k] = VALUE
        local.set(k, VALUE)
    readers = {"dict": fixed(d.get), f"LocalCache ({IMPLEMENTATION})": fixed(local.get)}
    for get_reader in readers.values():  # warm-up
        timed(get_reader, probes[:100_000], 1)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; CPython {sys.version.split()[0]}; "
          f"{hits:,} hits on {size:,} entries, {runs} runs", flush=True)
    wall, cpu = interleaved(readers, probes, [2], runs)
    for name in readers:
        for label, table in (("wall", wall), ("CPU", cpu)):
            ratios = [two / one for one, two in zip(table[(name, 1)], table[(name, 2)])]
            r = summarize(ratios)
            one = summarize(table[(name, 1)])["median"]
            print(
                f"{name:<16} {label:<4} 2 threads / 1: median {r['median']:.2f}x  IQR {r['q1']:.2f}-{r['q3']:.2f}  "
                f"range {r['min']:.2f}-{r['max']:.2f}  (1 thread: {one * 1e3:.0f} ms, {one / hits * 1e9:.0f} ns a hit)",
                flush=True,
            )
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
