"""delete_all: one invalidation per session id, or one message per batch of ids? (on demand)

    python bench/principals.py                # 3 rounds of 10, 100, 1,000 and 10,000 sessions
    python bench/principals.py --rounds 5 --sizes 10000

Starts its own private ``redis-server`` (``fastsess.server.RedisServer``) on a free
loopback port.  Two sync ``ClusteredRedisStore`` nodes in this process: A deletes, B
holds every session in its local cache.  For each size, alternating the two ways in each
round (medians printed):

* ``batch``: ``A.delete_all`` as shipped: per batch of 1,000 ids, an UNLINK pipeline,
  then a script that drops the batch from the index and PUBLISHes ONE ``deleted_many``
  message listing the ids;
* ``per-id``: the alternative, the same UNLINK pipeline, then ZREM and one ``deleted``
  message per id (what ``delete`` publishes), in one pipeline per batch.

Reported: A's call time, the time until B's cache holds none of the sessions, and the CPU
time of B's listener thread in that span (``pthread_getcpuclockid``).  Not a test: the
figures depend on the machine and its load (``uptime`` printed with them).
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

from fastsess import ClusterConfig, ClusteredRedisStore, Session
from fastsess._core.keys import new_session_id
from fastsess._core.messages import DELETED
from fastsess._core.principals import BATCH, COVER, PRINCIPAL_KEY, index_key
from fastsess.server import RedisServer

CHANNEL = "bench:principals"


def listener_clock(store: ClusteredRedisStore) -> int:
    thread = store.coordinator._thread  # type: ignore[union-attr]
    return time.pthread_getcpuclockid(thread.ident)


def seed(store: ClusteredRedisStore, reader: ClusteredRedisStore, principal: str, n: int) -> list[str]:
    """``n`` sessions bound to ``principal`` (written with one pipeline), all cached by ``reader``."""
    key = index_key(store._keys, principal)
    pipe = store.client.pipeline(transaction=False)
    ids = []
    for i in range(n):
        s = Session(new_session_id(), {"i": i, PRINCIPAL_KEY: [principal, "", 0]}, ttl=store.ttl, new=False)
        pipe.set(store.prefix + s.id, store.serializer.encode(s), ex=store.ttl)
        pipe.zadd(key, {s.id: time.time() + COVER * store.ttl})
        ids.append(s.id)
    pipe.execute()
    for session_id in ids:
        assert reader.load(session_id) is not None
    cache = reader._cache
    assert cache is not None and all(cache.get(i) is not None for i in ids)
    return ids


def per_id_delete(store: ClusteredRedisStore, principal: str) -> int:
    """The 'per-id' way: UNLINK pipeline, then ZREM and one ``deleted`` message per id."""
    key = index_key(store._keys, principal)
    coordinator = store.coordinator
    assert coordinator is not None
    client, deleted = store.client, 0
    while ids := [m.decode() for m in client.zrange(key, 0, BATCH - 1)]:
        pipe = client.pipeline(transaction=False)
        for i in ids:
            pipe.execute_command("UNLINK", store.prefix + i)
        deleted += sum(pipe.execute())
        pipe = client.pipeline(transaction=False)
        pipe.zrem(key, *ids)
        for i in ids:
            pipe.publish(CHANNEL, coordinator.message(DELETED, i))
        pipe.execute()
        coordinator.note_published(len(ids))
    return deleted


def run(size: int, way: str, A: ClusteredRedisStore, B: ClusteredRedisStore, round_no: int) -> tuple[float, float, float]:
    principal = f"user-{way}-{size}-{round_no}"
    ids = seed(A, B, principal, size)
    cache = B._cache
    assert cache is not None
    clock = listener_clock(B)
    cpu0, t0 = time.clock_gettime(clock), time.perf_counter()
    deleted = A.delete_all(principal) if way == "batch" else per_id_delete(A, principal)
    t_call = time.perf_counter() - t0
    while any(cache.get(i) is not None for i in (ids[-1], ids[0])) or len(cache) > 0:
        time.sleep(0.0005)
    t_applied = time.perf_counter() - t0
    cpu = time.clock_gettime(clock) - cpu0
    assert deleted == size, (deleted, size)
    assert all(cache.get(i) is None for i in ids)
    return t_call, t_applied, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000, 10_000])
    args = parser.parse_args()
    with RedisServer() as server:
        config = {"channel": CHANNEL, "local_cache_max_size": 20_000}
        A = ClusteredRedisStore(url=server.url, config=ClusterConfig(node_id="A", **config))
        B = ClusteredRedisStore(url=server.url, config=ClusterConfig(node_id="B", **config))
        try:
            assert A.coordinator is not None and B.coordinator is not None
            assert A.coordinator.wait_subscribed(5) and B.coordinator.wait_subscribed(5)
            print(f"load average before: {os.getloadavg()}")
            print(f"{'sessions':>8} {'way':>7} {'call ms':>9} {'applied on B ms':>16} {'B listener CPU ms':>18}")
            for size in args.sizes:
                results: dict[str, list[tuple[float, float, float]]] = {"per-id": [], "batch": []}
                for r in range(args.rounds):
                    ways = ("per-id", "batch") if r % 2 == 0 else ("batch", "per-id")
                    for way in ways:
                        results[way].append(run(size, way, A, B, r))
                for way, rows in results.items():
                    call, applied, cpu = (statistics.median(col) * 1000 for col in zip(*rows))
                    print(f"{size:>8} {way:>7} {call:>9.2f} {applied:>16.2f} {cpu:>18.2f}")
            print(f"load average after: {os.getloadavg()}")
        finally:
            A.close()
            B.close()


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
