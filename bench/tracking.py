"""What ``ClusterConfig(track_external_changes=True)`` costs, and how fast it evicts (on demand).

    python bench/tracking.py                  # 5 alternating rounds of 3,000 writes each way
    python bench/tracking.py --rounds 3 --writes 1000

Starts its own private ``redis-server`` on a free loopback port.  Each round measures
tracking off and on (alternating which goes first), on fresh prefixes, two kinds of write:

* ``update``: a modified, already saved session (SET XX + PUBLISH script);
* ``create``: brand-new sessions (SET NX + PUBLISH of the creation message);

first with node A alone in the process (its own listener only, as in a deployment with
one node per process): A's writes per second and the process CPU time per write; then
with a second node B in the process: the CPU time of B's listener thread per write of A
(what every other node pays for each write anywhere; with tracking each write also
reaches every listener as a notification).  Then, with tracking on, the delay from sending an outside
``DEL`` (its round trip included) to the eviction of B's cached copy (polled every 50 us).  Medians; not a
test: the figures depend on the machine and its load (``uptime`` printed with them).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from typing import Any

import redis

from fastsess import ClusterConfig, ClusteredRedisStore
from fastsess.server import RedisServer


def listener_cpu(store: ClusteredRedisStore) -> float:
    thread = store.coordinator._thread  # type: ignore[union-attr]
    assert thread is not None and thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def nodes(url: str, tracking: bool, names: str = "AB") -> list[ClusteredRedisStore]:
    channel, prefix = f"bench:{uuid.uuid4().hex[:8]}", f"bt{uuid.uuid4().hex[:6]}:"
    made = []
    for name in names:
        config = ClusterConfig(node_id=f"{name}-{uuid.uuid4().hex[:6]}", channel=channel, track_external_changes=tracking)
        made.append(ClusteredRedisStore(url=url, config=config, prefix=prefix))
    for store in made:
        assert store.coordinator is not None and store.coordinator.wait_subscribed(5)
    return made


def settle(b: ClusteredRedisStore, before: int, expected: int, timeout: float = 10.0) -> None:
    """Wait until B's listener applied ``expected`` more messages (so its CPU is all counted)."""
    deadline = time.monotonic() + timeout
    while b.coordinator.stats.received < before + expected and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.001)


def write(a: ClusteredRedisStore, writes: int, kind: str) -> float:
    """Seconds for ``writes`` saves of ``kind`` by ``a``."""
    session = a.create({"user": 42, "cart": list(range(10))})
    if kind == "update":
        assert a.save(session)
    t0 = time.perf_counter()
    for i in range(writes):
        if kind == "create":
            session = a.create({"user": i, "cart": list(range(10))})
        else:
            session["n"] = i
        assert a.save(session)
    return time.perf_counter() - t0


def measure(url: str, tracking: bool, writes: int, kind: str) -> dict[str, float]:
    (a,) = nodes(url, tracking, "A")
    try:
        cpu = time.process_time()
        elapsed = write(a, writes, kind)
        time.sleep(0.02)  # the last own notifications
        alone = {"A alone writes/s": writes / elapsed, "A alone CPU us/write": (time.process_time() - cpu) / writes * 1e6}
    finally:
        a.close()
    a, b = nodes(url, tracking)
    try:
        received = b.coordinator.stats.received  # type: ignore[union-attr]
        cpu_b = listener_cpu(b)
        write(a, writes, kind)
        settle(b, received, writes if kind == "update" else 0)
        time.sleep(0.05)  # the last notifications
        return {**alone, "B listener us/write": (listener_cpu(b) - cpu_b) / writes * 1e6}
    finally:
        a.close()
        b.close()


def eviction_delays(url: str, n: int) -> list[float]:
    a, b = nodes(url, True)
    raw = redis.Redis.from_url(url)
    cache = b._cache
    assert cache is not None
    delays = []
    try:
        for i in range(n):
            s = a.create({"i": i})
            assert a.save(s)
            while cache.get(s.id) is None:  # a fill may be voided by the notification of A's save
                assert b.load(s.id) is not None
            t0 = time.perf_counter()
            raw.delete(a.prefix + s.id)
            while cache.get(s.id) is not None:
                time.sleep(0.00005)
            delays.append(time.perf_counter() - t0)
    finally:
        raw.close()
        a.close()
        b.close()
    return delays


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--writes", type=int, default=3000)
    parser.add_argument("--evictions", type=int, default=300)
    args = parser.parse_args(argv)
    print("load before:", os.getloadavg())
    with RedisServer() as server:
        results: dict[tuple[str, bool], list[dict[str, float]]] = {}
        for r in range(args.rounds):
            for kind in ("update", "create"):
                for tracking in ((False, True) if r % 2 == 0 else (True, False)):
                    results.setdefault((kind, tracking), []).append(measure(server.url, tracking, args.writes, kind))
        for kind in ("update", "create"):
            off, on = results[(kind, False)], results[(kind, True)]
            print(f"\n{kind} ({args.rounds} rounds x {args.writes} writes, medians)")
            for metric in off[0]:
                m_off = statistics.median(x[metric] for x in off)
                m_on = statistics.median(x[metric] for x in on)
                print(f"  {metric:24s} off {m_off:10.1f}   on {m_on:10.1f}   on/off {m_on / m_off:5.2f}")
        delays = sorted(eviction_delays(server.url, args.evictions))
        q: Any = statistics.quantiles(delays, n=100, method="inclusive")
        print(f"\noutside DEL sent -> evicted (n={len(delays)}): median {statistics.median(delays) * 1e3:.3f} ms, "
              f"p99 {q[98] * 1e3:.3f} ms, max {delays[-1] * 1e3:.3f} ms")
    print("load after:", os.getloadavg())


if __name__ == "__main__":
    main()
