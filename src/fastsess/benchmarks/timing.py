"""Timing primitives shared by ``fastsess bench`` and the pytest-benchmark suite in ``bench/``.

A measurement is a number of *rounds*.  Each round runs one loop function
(``subscript_loop``, ``call_loop``, ...) over one batch of ``BATCH`` inputs and
is timed as a whole with ``time.perf_counter_ns``; the cost of one operation is
the round's time divided by the operations in it.  ``summarize`` reduces the
rounds to the figures every report shows: the median (the headline number) and
the noise band around it (quartiles, min, max).

Loop overhead is *not* removed: a figure is what ``for k in keys: c[k]`` costs
per key, iteration included, for every candidate alike.  The cost of the same
loop with an empty body is measured (``empty_loop``) and shown as its own row,
so a reader can subtract it; no report subtracts it for them.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

BATCH = 1_000  # operations per timed round
VALUE = object()  # what every cache stores; identity tells a hit from a miss


# -- the timed loops: one shape per access style, identical for every candidate ---------------


def subscript_loop(cache: Any, keys: Sequence[Any]) -> None:
    """``cache[k]`` for every key."""
    for k in keys:
        cache[k]


def call_loop(read: Callable[[Any], Any], keys: Sequence[Any]) -> None:
    """``read(k)`` for every key (``read`` is a bound ``get``)."""
    for k in keys:
        read(k)


def setitem_loop(cache: Any, keys: Sequence[Any]) -> None:
    """``cache[k] = VALUE`` for every key."""
    for k in keys:
        cache[k] = VALUE


def set_call_loop(write: Callable[[Any, Any], Any], keys: Sequence[Any]) -> None:
    """``write(k, VALUE)`` for every key (``write`` is a bound ``set``)."""
    for k in keys:
        write(k, VALUE)


def mixed_loop(target: tuple[Callable[[Any], Any], Callable[[Any, Any], Any]], ops: Sequence[tuple[Any, bool]]) -> None:
    """``write(k, VALUE)`` where the op is a write, else ``read(k)``."""
    read, write = target
    for k, is_write in ops:
        if is_write:
            write(k, VALUE)
        else:
            read(k)


def empty_loop(_target: object, keys: Sequence[Any]) -> None:
    """The loop of ``call_loop`` with an empty body: the part of a figure that is not the operation."""
    for _k in keys:
        pass


# -- rounds and their statistics -----------------------------------------------------------------


def time_rounds(loop: Callable[[Any, Any], Any], target: Any, batches: Sequence[Sequence[Any]], warmup: Sequence[Any] | None = None) -> list[float]:
    """Run ``loop(target, batch)`` once per batch; nanoseconds per operation of each round.

    ``warmup`` (default: the first batch) runs once, untimed, before the rounds.

    Raises:
        ValueError: ``batches`` is empty or holds an empty batch.
    """
    if not batches or not all(batches):
        raise ValueError("time_rounds needs at least one non-empty batch")
    loop(target, batches[0] if warmup is None else warmup)
    clock = time.perf_counter_ns
    out: list[float] = []
    for batch in batches:
        t0 = clock()
        loop(target, batch)
        out.append((clock() - t0) / len(batch))
    return out


def summarize(values: Iterable[float]) -> dict[str, float]:
    """``{"median", "q1", "q3", "min", "max", "n"}`` of ``values`` (quartiles: inclusive method).

    Raises:
        ValueError: ``values`` is empty.
    """
    data = sorted(float(v) for v in values)
    if not data:
        raise ValueError("summarize needs at least one value")
    q1, _, q3 = statistics.quantiles(data, n=4, method="inclusive") if len(data) > 1 else (data[0], data[0], data[0])
    return {"median": statistics.median(data), "q1": q1, "q3": q3, "min": data[0], "max": data[-1], "n": len(data)}


def threaded_seconds(work: Callable[[Sequence[Any]], Any], keys: Sequence[Any], threads: int) -> float:
    """Wall time for ``threads`` threads to share ``keys`` (thread i takes every n-th key from i)."""
    parts = [keys[i::threads] for i in range(threads)]
    workers = [threading.Thread(target=work, args=(part,)) for part in parts]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - t0
