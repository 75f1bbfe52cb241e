"""Timing helpers: best-of-N loops measured with ``perf_counter_ns``.

The loops are compiled from source text so that every candidate is measured
with the same loop shape (``c[k]`` or ``g(k)``), and the cost of an empty
loop over the same keys is subtracted: what remains is the operation itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

_LOOPS: dict[str, Callable[..., int]] = {}


def _compile(body: str) -> Callable[..., int]:
    fn = _LOOPS.get(body)
    if fn is None:
        src = (
            "def run(target, keys, value, _now=_now):\n"
            "    t0 = _now()\n"
            "    for k in keys:\n"
            f"        {body}\n"
            "    return _now() - t0\n"
        )
        namespace: dict[str, Any] = {"_now": time.perf_counter_ns}
        exec(compile(src, f"<fastsess loop: {body}>", "exec"), namespace)  # noqa: S102 - fixed templates only
        fn = _LOOPS[body] = namespace["run"]
    return fn


# loop bodies; ``target`` is the cache (subscript forms) or a bound method
BODIES = {
    "subscript": "target[k]",
    "call": "target(k)",
    "setitem": "target[k] = value",
    "set_call": "target(k, value)",
    "pass": "pass",
}


def per_op_ns(body: str, target: Any, keys: Sequence[Any], repeat: int = 5, value: Any = 1) -> float:
    """Best-of-``repeat`` cost of one ``body`` operation in nanoseconds, loop overhead removed.

    Raises:
        KeyError: ``body`` is not one of ``BODIES``.
    """
    loop = _compile(BODIES[body])
    empty = _compile(BODIES["pass"])
    n = len(keys)
    best = min(loop(target, keys, value) for _ in range(repeat)) / n
    overhead = min(empty(None, keys, value) for _ in range(repeat)) / n
    return max(best - overhead, 0.0)


def threaded_seconds(work: Callable[[Sequence[Any]], Any], keys: Sequence[Any], threads: int, repeat: int = 3) -> float:
    """Best wall time for ``threads`` threads to share ``keys`` (each takes every n-th key)."""
    parts = [keys[i::threads] for i in range(threads)]
    best = float("inf")
    for _ in range(repeat):
        workers = [threading.Thread(target=work, args=(part,)) for part in parts]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - t0)
    return best
