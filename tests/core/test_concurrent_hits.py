"""Hits racing writers: every answer is right and the statistics stay exact.

On a GIL build a ``LocalCache`` hit of a str/int/bytes key runs without the lock
(the GIL makes it atomic); on a free-threaded build it takes only its own
thread's stripe of the striped lock, while writers take every stripe (the
cibuildwheel 3.14t job runs this file).  Either way, readers racing writers,
evictions, expiry, ``clear()`` and keys that switch the cache to the locked path
(a float key) must see only values stored under the key they asked for, and
count every lookup once.
"""

from __future__ import annotations

import random
import threading
from typing import Any

READERS = 3
READS = 6_000
WRITES = 6_000


def test_readers_racing_writers_see_only_their_own_keys_values(impl: Any) -> None:
    cache = impl.LocalCache(max_size=200, ttl=3600)
    keys: list[Any] = [f"sid-{i}" for i in range(300)] + list(range(100)) + [b"b%d" % i for i in range(100)]
    wrong: list[tuple[Any, Any]] = []
    errors: list[BaseException] = []
    reads = [0] * READERS
    barrier = threading.Barrier(READERS + 1)

    def reader(n: int) -> None:
        rng = random.Random(n)
        try:
            barrier.wait()
            for _ in range(READS):
                key = rng.choice(keys)
                probe = "".join(list(key)) if isinstance(key, str) else key  # an equal key, another object
                value = cache.get(probe)
                reads[n] += 1
                if value is not None and value[0] != key:
                    wrong.append((key, value))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def writer() -> None:
        rng = random.Random(99)
        try:
            barrier.wait()
            for step in range(WRITES):
                key = rng.choice(keys)
                r = rng.random()
                if r < 0.7:
                    cache.set(key, (key, step), ttl=None if r < 0.6 else 3600)
                elif r < 0.9:
                    cache.delete(key)
                elif r < 0.995:
                    cache.set(1.5, ("float", step))  # a key that is not str/int/bytes: every get takes the lock
                    cache.delete(1.5)
                else:
                    cache.clear()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(READERS)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == [] and wrong == []
    stats = cache.stats
    assert stats.hits + stats.misses == sum(reads)
    live = cache.keys()
    assert len(live) == len(set(live)) <= 200
    assert all(cache.get(k)[0] == k for k in live)


def test_the_compiled_core_leaves_a_free_threaded_interpreter_without_a_gil() -> None:
    """On a free-threaded build (3.13t, 3.14t), importing the cache core must not switch the GIL back on (the compiled core declares itself free-threading safe)."""
    import os
    import subprocess
    import sys
    import sysconfig

    from .conftest import NO_EXTENSIONS

    # the compiled core itself, not the pure-Python twin, unless it was deliberately not built
    module = "fastsess._lru_py" if NO_EXTENSIONS else "fastsess._lru"
    code = f"import sys, {module}, fastsess.cache; print(getattr(sys, '_is_gil_enabled', lambda: True)(), fastsess.cache.IMPLEMENTATION)"
    # PYTHON_GIL=0 would keep the GIL off whatever the module declares: the interpreter's default decides
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True, env=env)
    gil, implementation = done.stdout.split()
    assert gil == str(not sysconfig.get_config_var("Py_GIL_DISABLED"))
    assert implementation == ("py" if NO_EXTENSIONS else "c")
    assert "GIL" not in done.stderr, done.stderr  # no "enabled the GIL" RuntimeWarning
