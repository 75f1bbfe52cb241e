"""Hits from N threads against one thread doing the same total hits, for free-threaded builds.

``python bench/freethreaded.py [hits] [runs] [threads ...]`` (defaults 2,000,000, 9, 2 4).

Meant for a free-threaded CPython (3.13t/3.14t), where ``LocalCache.get`` takes only
its thread's stripe of the striped lock; it runs on a GIL build too (there N threads
cannot beat one).  ``dict`` and ``LocalCache`` are each filled with 10,000 random
16-character keys; the same ``hits`` random present keys are then read by one thread
and split between N threads (thread i takes every N-th key from i).  Two shapes:

* ``shared``: every key stores one shared value object and the threads call one
  bound ``get`` -- the shape of ``fastsess bench``'s thread measurement
  (``fastsess.benchmarks.cache.measure_threads``).  On a free-threaded build every
  hit of every thread then writes the reference counts of the same two objects
  (the value and the bound method), which no cache can avoid.
* ``own``: every key stores its own value object and each thread takes its own
  bound ``get`` (``cache.get`` evaluated in the thread), as threads of a server
  reading different sessions do.

A third candidate, ``dict (own copy)``, gives each thread a private copy of the ``own``
dict, made in the thread: nothing but the key objects is shared, so its ratio is what
the machine allows for this loop (on a VM whose two CPUs are busy with other work, or
share a core, two threads get well under twice the CPU of one).

Within a run the measurements go in a rotating order, so a shared machine's drift
hits them alike.  Printed per candidate, shape and thread count: the ratio N threads
/ one thread of wall time (the issue's measure) and of process CPU time, median and
range over the runs, how many CPUs the N threads kept busy, the one-thread wall time
and the load average.
"""

from __future__ import annotations

import os
import random
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from fastsess.benchmarks.cache import STORED_LEN, THREAD_SIZE, random_keys
from fastsess.benchmarks.timing import VALUE, summarize
from fastsess.cache import IMPLEMENTATION, LocalCache

K = TypeVar("K")


def timed(get_reader: Callable[[], Callable[[Any], Any]], keys: Sequence[str], threads: int) -> tuple[float, float]:
    """Wall and process CPU seconds for ``threads`` threads to read ``keys`` (split evenly).

    ``get_reader()`` is called in each thread for the ``get`` that thread calls.
    """
    parts = [keys[i::threads] for i in range(threads)]
    start = threading.Barrier(threads + 1)

    def work(part: Sequence[str]) -> None:
        read = get_reader()
        start.wait()
        for k in part:
            read(k)

    workers = [threading.Thread(target=work, args=(part,)) for part in parts]
    for w in workers:
        w.start()
    c0, t0 = time.process_time(), time.perf_counter()
    start.wait()
    for w in workers:
        w.join()
    return time.perf_counter() - t0, time.process_time() - c0


def fixed(read: Callable[[Any], Any]) -> Callable[[], Callable[[Any], Any]]:
    """A reader factory handing every thread the same bound ``get``."""
    return lambda: read


def interleaved(
    readers: Mapping[K, Callable[[], Callable[[Any], Any]]], probes: Sequence[str], counts: Sequence[int], runs: int,
) -> tuple[dict[tuple[K, int], list[float]], dict[tuple[K, int], list[float]]]:
    """Wall and process CPU seconds of every (reader, thread count), 1 thread and each of
    ``counts``: ``runs`` rounds, each measuring every cell once (``timed``) in an order that
    rotates from round to round, so a shared machine's drift hits them alike."""
    cells = [(name, n) for name in readers for n in [1, *counts]]
    wall: dict[tuple[K, int], list[float]] = {c: [] for c in cells}
    cpu: dict[tuple[K, int], list[float]] = {c: [] for c in cells}
    for i in range(runs):
        k = i % len(cells)
        for name, n in cells[k:] + cells[:k]:
            w, c = timed(readers[name], probes, n)
            wall[(name, n)].append(w)
            cpu[(name, n)].append(c)
    return wall, cpu


def _bound_in_thread(cache: Any, copy: bool = False) -> Callable[[], Callable[[Any], Any]]:
    """A reader factory evaluating ``cache.get`` (of a private copy if ``copy``) in the calling thread."""

    def reader() -> Callable[[Any], Any]:
        target = dict(cache) if copy else cache
        read: Callable[[Any], Any] = target.get
        return read

    return reader


def _readers(keys: Sequence[str]) -> dict[tuple[str, str], Callable[[], Callable[[Any], Any]]]:
    """For each (candidate, shape): what a thread calls to get the ``get`` it reads with."""
    out: dict[tuple[str, str], Callable[[], Callable[[Any], Any]]] = {}
    local_name = f"LocalCache ({IMPLEMENTATION})"
    for shape in ("shared", "own"):
        d: dict[str, Any] = {}
        local: LocalCache[str, Any] = LocalCache(len(keys), 3600.0)
        for k in keys:
            value = VALUE if shape == "shared" else object()
            d[k] = value
            local.set(k, value)
        if shape == "shared":
            out[("dict", shape)] = fixed(d.get)
            out[(local_name, shape)] = fixed(local.get)
        else:
            out[("dict", shape)] = _bound_in_thread(d)
            out[(local_name, shape)] = _bound_in_thread(local)
            out[("dict (own copy)", shape)] = _bound_in_thread(d, copy=True)
    return out


def _gil_state() -> str:
    """``free-threaded, GIL off`` and the like: the build and whether the GIL is on now."""
    build = "free-threaded" if sysconfig.get_config_var("Py_GIL_DISABLED") else "GIL build"
    enabled = getattr(sys, "_is_gil_enabled", lambda: True)()
    return f"{build}, GIL {'on' if enabled else 'off'}"


def main(argv: list[str]) -> None:
    """Print the interleaved N-vs-1-thread ratios (arguments: see the module docstring)."""
    hits = int(argv[0]) if argv else 2_000_000
    runs = int(argv[1]) if len(argv) > 1 else 9
    counts = [int(a) for a in argv[2:]] or [2, 4]
    rng = random.Random(15)
    keys = random_keys(THREAD_SIZE, rng, STORED_LEN)
    probes = rng.choices(keys, k=hits)
    readers = _readers(keys)
    for get_reader in readers.values():  # warm-up
        timed(get_reader, probes[:100_000], 1)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; CPython {sys.version.split()[0]} "
          f"({_gil_state()}); {os.cpu_count()} CPUs; {hits:,} hits on {THREAD_SIZE:,} entries, {runs} runs", flush=True)
    wall, cpu = interleaved(readers, probes, counts, runs)
    for name in readers:
        one_wall = summarize(wall[(name, 1)])
        print(f"{name[0]:<16} {name[1]:<6} 1 thread: {one_wall['median'] * 1e3:.0f} ms wall "
              f"({one_wall['min'] * 1e3:.0f}-{one_wall['max'] * 1e3:.0f})")
        for n in counts:
            used = summarize([c / w for c, w in zip(cpu[(name, n)], wall[(name, n)], strict=True)])
            print(f"{'':<23} {n} threads kept {used['median']:.2f} CPUs busy (median CPU / wall time)")
            for label, table in (("wall", wall), ("CPU", cpu)):
                ratios = [m / one for one, m in zip(table[(name, 1)], table[(name, n)], strict=True)]
                r = summarize(ratios)
                print(f"{'':<23} {n} threads / 1, {label:<4}: median {r['median']:.2f}x  "
                      f"range {r['min']:.2f}-{r['max']:.2f}  ({', '.join(f'{x:.2f}' for x in ratios)})")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
