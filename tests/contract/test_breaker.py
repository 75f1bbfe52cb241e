"""The circuit breaker of every Redis-backed store, both flavours (each test has its own server).

A frozen server (SIGSTOP: connections stay open, nothing answers) makes each command
wait its socket timeout; after ``breaker_threshold`` of those, every operation fails
fast with ``CircuitOpen`` (a ``StoreUnavailable``) without a Redis call; after the
cool-down one call at a time probes; when the server answers again the breaker closes,
logged once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from fastsess.errors import CircuitOpen, ConfigError, StoreUnavailable
from fastsess.stores.base import new_session_id

from ..support import RedisServer, kill, pause
from .conftest import ClusteredBackend, LoopThread, RedisBackend, sync_store, wait_until

SOCKET_TIMEOUT = 0.1
THRESHOLD = 2
COOLDOWN = 0.3


def concurrent_loads(backend: RedisBackend, store: Any, n: int) -> list[BaseException | None]:
    """``n`` loads of unknown ids at once (threads, or tasks on the store's loop): what each raised."""
    if backend.is_async:

        async def gather() -> list[Any]:
            return await asyncio.gather(*(sync_store(store).load(new_session_id()) for _ in range(n)), return_exceptions=True)

        return [r if isinstance(r, BaseException) else None for r in backend.loop.run(gather())]
    results: list[BaseException | None] = []
    start = threading.Barrier(n)

    def load() -> None:
        start.wait()
        try:
            store.load(new_session_id())
            results.append(None)
        except BaseException as exc:  # noqa: BLE001 - the outcome is the result
            results.append(exc)

    threads = [threading.Thread(target=load) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results


def test_breaker_fails_fast_probes_alone_and_recovers(
    redis_backend: RedisBackend, redis_server_factory: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="fastsess.breaker")
    server = redis_server_factory()
    store = redis_backend.make(url=server.url, socket_timeout=SOCKET_TIMEOUT, breaker_threshold=THRESHOLD, breaker_cooldown=COOLDOWN)
    breaker = sync_store(store).breaker
    s = store.create({"v": 1})
    assert store.save(s) is True
    with pause(server):
        for _ in range(THRESHOLD):
            with pytest.raises(StoreUnavailable) as info:
                store.load(new_session_id())
            assert type(info.value) is StoreUnavailable  # a real timeout
        assert breaker.state == "open"
        rejected = breaker.stats.rejected
        s["v"] = 2
        sid, version = s.id, s.version
        operations: list[Callable[[], Any]] = [
            lambda: store.load(new_session_id()), lambda: store.save(s), lambda: store.save(store.create({"new": 1})),
            lambda: store.delete(s.id), lambda: store.touch(s.id), lambda: store.exists(s.id),
            lambda: store.regenerate(s), lambda: store.count(), lambda: store.clear(),
        ]
        for op in operations:
            with pytest.raises(CircuitOpen) as open_info:
                op()
            assert open_info.value.cause is not None  # the timeout that tripped it
        assert s.id == sid and s.version == version and s.modified and s["v"] == 2  # nothing saved, nothing lost
        # No Redis call was made: each was refused by the breaker (a call would have waited
        # its socket timeout on the frozen server).  clear() is refused twice: its SCAN, then
        # the cache flush and invalidation it always sends.
        assert breaker.stats.rejected - rejected >= len(operations)

        time.sleep(COOLDOWN)  # the cool-down passes while the server is still frozen
        probes = breaker.stats.probes
        results = concurrent_loads(redis_backend, store, 8)
        assert breaker.stats.probes == probes + 1  # one caller probed ...
        assert sum(type(r) is StoreUnavailable for r in results) == 1  # ... and waited its timeout
        assert sum(type(r) is CircuitOpen for r in results) == 7  # the others failed fast
        assert breaker.state == "open"  # the failed probe re-opened it
    wait_until(lambda: _loads(store), 5, what="the breaker to close")
    assert breaker.state == "closed" and breaker.stats.failures == 0 and breaker.stats.opened == 1
    assert store.load(s.id)["v"] == 1
    logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "fastsess.breaker"]
    assert [level for level, _ in logged] == ["WARNING", "INFO"], logged


def _loads(store: Any) -> bool:
    try:
        store.load(new_session_id())
    except StoreUnavailable:
        return False
    return True


def test_breaker_settings_are_validated(redis_backend: RedisBackend) -> None:
    with pytest.raises(ConfigError, match="breaker_threshold"):
        redis_backend.make(breaker_threshold=-1)
    with pytest.raises(ConfigError, match="breaker_cooldown"):
        redis_backend.make(breaker_cooldown=0)
    off = redis_backend.make(breaker_threshold=0)
    assert sync_store(off).breaker.threshold == 0
    store = redis_backend.make()
    breaker = sync_store(store).breaker
    assert (breaker.threshold, breaker.cooldown, breaker.state) == (5, 1.0, "closed")


def test_a_resubscribed_listener_ends_the_cooldown(clustered: ClusteredBackend, redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory()
    store = clustered.make(url=server.url, socket_timeout=SOCKET_TIMEOUT, breaker_threshold=THRESHOLD, breaker_cooldown=600)
    breaker = sync_store(store).breaker
    kill(server)
    for _ in range(THRESHOLD):
        with pytest.raises(StoreUnavailable):
            store.load(new_session_id())
    assert breaker.state == "open"
    with pytest.raises(CircuitOpen):
        store.load(new_session_id())
    clustered.wait_down(store)
    server.start()
    wait_until(lambda: store.coordinator.subscribed, 10, what="the listener to resubscribe")
    assert store.load(new_session_id()) is None  # the probe, long before the 600 s cool-down
    assert breaker.state == "closed" and breaker.stats.probes == 1


def test_a_cancelled_asyncio_probe_hands_the_probe_on(
    loop_thread: LoopThread, redis_server_factory: Callable[..., RedisServer], prefix: str,
) -> None:
    """asyncio only: a probe whose task is cancelled tells the breaker, so the next call
    probes instead of failing fast behind a probe that will never answer."""
    import fastsess.asyncio

    server = redis_server_factory()

    async def scenario() -> tuple[int, str, str]:
        store = fastsess.asyncio.RedisStore(
            url=server.url, prefix=prefix, socket_timeout=5.0, breaker_threshold=1, breaker_cooldown=0.05,
        )
        try:
            with pause(server):
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(store.load(new_session_id()), 0.1)  # cancelled: not a failure
                assert store.breaker.failures == 0
                store.breaker.failed(TimeoutError("frozen"))  # as a timed-out command would report
                await asyncio.sleep(0.06)
                probe = asyncio.ensure_future(store.load(new_session_id()))
                await asyncio.sleep(0.05)
                assert store.breaker.state == "half-open"
                probe.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await probe
                state = store.breaker.state
                second = asyncio.ensure_future(store.load(new_session_id()))
                await asyncio.sleep(0.05)
                probes, half_open = store.breaker.stats.probes, store.breaker.state
                second.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await second
            return probes, state, half_open
        finally:
            await store.close()

    probes, after_cancel, second = loop_thread.run(scenario())
    assert after_cancel == "open" and second == "half-open" and probes == 2
