"""Saves racing on one session back off between conflicts instead of giving up.

Without a pause, a save that keeps retrying can lose every race to requests that keep
arriving with a fresh copy (an asyncio server with many requests on one session), and
raise ``ConcurrentModification`` after ``MAX_CONFLICT_RETRIES`` conflicts.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Generator
from typing import Any

import pytest

import fastsess
import fastsess.asyncio as fa
from fastsess._core.breaker import CircuitBreaker
from fastsess._core.conflict import FIRST_PAUSE, MAX_CONFLICT_RETRIES, MAX_PAUSE, conflict_pause
from fastsess._core.ops import PAUSE, pause
from fastsess._redis import Run

WRITERS = 24
ROUNDS = 25


def test_pause_schedule_none_first_then_doubling_and_capped() -> None:
    assert conflict_pause(1, lambda: 1.0) == 0.0
    assert conflict_pause(2, lambda: 1.0) == FIRST_PAUSE
    assert conflict_pause(3, lambda: 1.0) == 2 * FIRST_PAUSE
    assert conflict_pause(MAX_CONFLICT_RETRIES, lambda: 1.0) == MAX_PAUSE
    assert conflict_pause(3, lambda: 0.5) == FIRST_PAUSE  # jitter: a fraction of the bound
    # the whole schedule of one save that conflicts every time stays bounded (seconds)
    assert sum(conflict_pause(n, lambda: 1.0) for n in range(1, MAX_CONFLICT_RETRIES + 1)) < 5.0


def _flow() -> Generator[Any, Any, Any]:
    yield pause(0.0)
    return "done"


def test_a_pause_is_not_a_redis_call_for_the_breaker() -> None:
    clock = [0.0]
    breaker = CircuitBreaker(threshold=1, cooldown=10.0, clock=lambda: clock[0])
    breaker.failed(ConnectionError("down"), False)  # open
    assert not breaker.closed
    run = Run(_flow(), breaker)
    assert run.command[1] is PAUSE and not run.probe  # passed through, not admitted as a probe
    run.reply(None)
    assert run.done and run.value == "done"
    assert not breaker.closed  # the pause's reply did not close the breaker


@pytest.mark.parametrize("clustered", [False, True], ids=["redis", "clustered"])
def test_many_asyncio_tasks_saving_one_session_all_land(redis_url: str, prefix: str, clustered: bool) -> None:
    """Like many requests of one user on an asyncio server: the clustered store's tasks
    load from the local cache (no round trip), so they race a retrying save hardest."""

    async def main() -> dict[str, Any]:
        store: Any = (
            fa.ClusteredRedisStore(url=redis_url, prefix=prefix, config=fastsess.ClusterConfig(channel=prefix + "ch"))
            if clustered else fa.RedisStore(url=redis_url, prefix=prefix)
        )
        try:
            first = store.create({"start": 1})
            await store.save(first)

            async def writer(n: int) -> None:
                for r in range(ROUNDS):
                    session = await store.load(first.id)
                    assert session is not None
                    session[f"w{n}"] = r
                    assert await store.save(session)

            await asyncio.gather(*(writer(n) for n in range(WRITERS)))
            final = await store.load(first.id)
            assert final is not None
            return dict(final)
        finally:
            await store.close()

    final = asyncio.run(main())
    assert final == {"start": 1, **{f"w{n}": ROUNDS - 1 for n in range(WRITERS)}}


def test_many_threads_saving_one_session_all_land(redis_url: str, prefix: str) -> None:
    store = fastsess.ClusteredRedisStore(url=redis_url, prefix=prefix, config=fastsess.ClusterConfig(channel=prefix + "ch"))
    errors: list[BaseException] = []
    try:
        first = store.create({"start": 1})
        store.save(first)

        def writer(n: int) -> None:
            try:
                for r in range(ROUNDS):
                    session = store.load(first.id)
                    assert session is not None
                    session[f"w{n}"] = r
                    assert store.save(session)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors[:3]
        final = store.load(first.id)
        assert final is not None and dict(final) == {"start": 1, **{f"w{n}": ROUNDS - 1 for n in range(12)}}
    finally:
        store.close()
