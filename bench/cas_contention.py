"""Many requests saving one session at once: ``python bench/cas_contention.py``.

8 asyncio tasks on one ``fastsess.asyncio.ClusteredRedisStore`` (loads are local cache
hits, so they race a retrying save hardest), each looping load -> change its own key ->
save for ``--seconds`` (default 4) on a private ``redis-server``; prints the saves that
landed, the saves that gave up with ``ConcurrentModification``, and the p50/p99/max of
one load-modify-save.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import fastsess
import fastsess.asyncio as fa
from fastsess.errors import ConcurrentModification
from fastsess.server import RedisServer


async def contend(url: str, tasks: int, seconds: float) -> str:
    """Run the contention loop against ``url``; a one-line summary."""
    store = fa.ClusteredRedisStore(url=url, prefix="contend:", config=fastsess.ClusterConfig(channel="contend:ch"))
    await store.start()
    first = store.create({"n": 0})
    await store.save(first)
    landed = gave_up = 0
    times: list[float] = []
    end = time.monotonic() + seconds

    async def request(k: int) -> None:
        nonlocal landed, gave_up
        while time.monotonic() < end:
            started = time.perf_counter()
            session = await store.load(first.id)
            assert session is not None
            session[f"k{k}"] = session.get(f"k{k}", 0) + 1
            try:
                await store.save(session)
                landed += 1
            except ConcurrentModification:
                gave_up += 1
            times.append(time.perf_counter() - started)

    try:
        await asyncio.gather(*(request(k) for k in range(tasks)))
    finally:
        await store.close()
    times.sort()
    return (f"saves landed {landed}, gave up {gave_up}; load-modify-save p50 {times[len(times) // 2] * 1e3:.2f} ms, "
            f"p99 {times[int(len(times) * 0.99)] * 1e3:.1f} ms, max {times[-1] * 1e3:.0f} ms")


def main() -> None:
    """Start a private Redis and print one contention run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    with RedisServer() as server:
        print(asyncio.run(contend(server.url, args.tasks, args.seconds)))


if __name__ == "__main__":
    main()
