"""The stores' hot commands (``fastsess._redis.DIRECT``: GET, GETRANGE, GETEX, SET, EVALSHA,
EVAL) go straight on a pooled connection of a plain client instead of through redis-py's
``execute_command``; everything else, and every command of a single-connection client,
still goes through it.  Here: which path each command takes, and that the direct path
behaves as ``execute_command`` would (NOSCRIPT fallback, reconnect after a dropped
connection, error replies and timeouts leaving no unread reply behind, cancellation).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio

import fastsess.asyncio as fa
from fastsess import RedisStore
from fastsess._redis import _direct_pool
from fastsess.errors import SessionCorrupt, StoreUnavailable


class CountingRedis(redis.Redis):
    """A plain client that records the commands sent through ``execute_command``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[str] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.seen.append(str(args[0]).upper())
        return super().execute_command(*args, **options)


class CountingAsyncRedis(redis.asyncio.Redis):
    """``CountingRedis`` for asyncio."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[str] = []

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.seen.append(str(args[0]).upper())
        return await super().execute_command(*args, **options)


def server_calls(client: redis.Redis, command: str) -> int:
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_hot_commands_skip_execute_command(redis_url: str, redis_client: redis.Redis, prefix: str) -> None:
    client = CountingRedis.from_url(redis_url)
    store = RedisStore(client=client, prefix=prefix)
    try:
        s = store.create({"n": 0})
        assert store.save(s) is True  # SET NX
        loaded = store.load(s.id)  # GET
        assert loaded is not None and loaded.data == {"n": 0}
        loaded["n"] = 1
        before = server_calls(redis_client, "evalsha")
        assert store.save(loaded) is True  # EVALSHA (compare-and-set)
        assert server_calls(redis_client, "evalsha") == before + 1
        assert store.load("A" * 43) is None  # GET of an absent key: None, not b""
        assert client.seen == []
        assert store.exists(s.id) is True  # not a hot command: through execute_command
        assert client.seen == ["EXISTS"]
        assert store.load(s.id).data == {"n": 1}  # type: ignore[union-attr]
    finally:
        client.close()


def test_a_single_connection_client_keeps_execute_command(redis_url: str, prefix: str) -> None:
    client = CountingRedis.from_url(redis_url, single_connection_client=True)
    store = RedisStore(client=client, prefix=prefix)
    try:
        s = store.create({"n": 0})
        assert store.save(s) is True
        assert store.load(s.id).data == {"n": 0}  # type: ignore[union-attr]
        assert client.seen[:2] == ["SET", "GET"]
    finally:
        client.close()


def test_noscript_falls_back_to_eval_on_the_direct_path(redis_url: str, redis_client: redis.Redis, prefix: str) -> None:
    store = RedisStore(url=redis_url, prefix=prefix)
    try:
        s = store.create({"n": 0})
        assert store.save(s) is True
        loaded = store.load(s.id)
        assert loaded is not None
        redis_client.script_flush()
        evals = server_calls(redis_client, "eval")
        loaded["n"] = 1
        assert store.save(loaded) is True
        assert server_calls(redis_client, "eval") == evals + 1
        assert store.load(s.id).data == {"n": 1}  # type: ignore[union-attr]
    finally:
        store.close()


def test_an_error_reply_on_the_direct_path_keeps_the_connection_in_step(redis_url: str, redis_client: redis.Redis, prefix: str) -> None:
    store = RedisStore(url=redis_url, prefix=prefix, pool_size=1)  # one connection: the next command reuses it
    try:
        s = store.create({"n": 0})
        assert store.save(s) is True
        loaded = store.load(s.id)
        assert loaded is not None
        redis_client.delete(prefix + s.id)
        redis_client.hset(prefix + s.id, "f", "v")
        loaded["n"] = 1
        with pytest.raises(SessionCorrupt):
            store.save(loaded)  # WRONGTYPE from the script
        with pytest.raises(SessionCorrupt):
            store.load(s.id)  # WRONGTYPE from GET
        other = store.create({"m": 2})
        assert store.save(other) is True
        assert store.load(other.id).data == {"m": 2}  # type: ignore[union-attr]
    finally:
        store.close()


def test_the_direct_path_reconnects_after_the_server_drops_it(redis_server_factory: Callable[..., Any], prefix: str) -> None:
    server = redis_server_factory()
    admin = redis.Redis.from_url(server.url)
    store = RedisStore(url=server.url, prefix=prefix)
    try:
        s = store.create({"n": 0})
        assert store.save(s) is True
        assert admin.client_kill_filter(_type="normal", skipme=True) >= 1  # the store's pooled connection
        loaded = store.load(s.id)  # the dead connection fails, the retry reconnects
        assert loaded is not None and loaded.data == {"n": 0}
        admin.client_kill_filter(_type="normal", skipme=True)
        loaded["n"] = 1
        assert store.save(loaded) is True
        assert store.load(s.id).data == {"n": 1}  # type: ignore[union-attr]
    finally:
        store.close()
        admin.close()


def test_a_timeout_on_the_direct_path_leaves_no_reply_to_read_later(redis_server_factory: Callable[..., Any], prefix: str) -> None:
    """A GET that times out (the server is busy) raises StoreUnavailable; its late reply is
    never read as the answer to a later command: the connection was dropped."""
    server = redis_server_factory(extra_args=("--enable-debug-command", "yes"))
    admin = redis.Redis.from_url(server.url)
    store = RedisStore(url=server.url, prefix=prefix, socket_timeout=0.2, retries=0, pool_size=1, breaker_threshold=0)
    try:
        a, b = store.create({"who": "a"}), store.create({"who": "b"})
        assert store.save(a) is True and store.save(b) is True
        sleeper = threading.Thread(target=lambda: admin.execute_command("DEBUG", "SLEEP", "0.6"))
        sleeper.start()
        time.sleep(0.1)
        with pytest.raises(StoreUnavailable):
            store.load(a.id)
        sleeper.join()
        assert store.load(b.id).data == {"who": "b"}  # type: ignore[union-attr]
        assert store.load(a.id).data == {"who": "a"}  # type: ignore[union-attr]
    finally:
        store.close()
        admin.close()


async def test_async_hot_commands_skip_execute_command(redis_url: str, redis_client: redis.Redis, prefix: str) -> None:
    client = CountingAsyncRedis.from_url(redis_url)
    store: Any = fa.RedisStore(client=client, prefix=prefix)
    try:
        s = store.create({"n": 0})
        assert await store.save(s) is True
        loaded = await store.load(s.id)
        loaded["n"] = 1
        assert await store.save(loaded) is True
        redis_client.script_flush()
        loaded["n"] = 2
        assert await store.save(loaded) is True  # NOSCRIPT: EVAL, still direct
        assert client.seen == []
        assert (await store.load(s.id)).data == {"n": 2}
        assert await store.exists(s.id) is True
        assert client.seen == ["EXISTS"]
    finally:
        await client.aclose()


async def test_async_single_connection_client_keeps_execute_command(redis_url: str, prefix: str) -> None:
    client = CountingAsyncRedis.from_url(redis_url, single_connection_client=True)
    store: Any = fa.RedisStore(client=client, prefix=prefix)
    try:
        s = store.create({"n": 0})
        assert await store.save(s) is True
        assert (await store.load(s.id)).data == {"n": 0}
        assert client.seen[:2] == ["SET", "GET"]
    finally:
        await client.aclose()


@pytest.mark.parametrize("pool_size", [1, 4])
async def test_async_cancelled_direct_commands_leave_the_store_usable(redis_url: str, prefix: str, pool_size: int) -> None:
    """Cancelled at any await of a load or a save, the next commands read their own replies
    (a pool of one keeps no connection between commands; of four, up to two are kept:
    ``AsyncIdleConnections``, whose kept ones must be in step too)."""
    store: Any = fa.RedisStore(url=redis_url, prefix=prefix, pool_size=pool_size)
    try:
        s = store.create({"n": -1})
        assert await store.save(s) is True
        for steps in range(10):
            loaded = await store.load(s.id)
            loaded["n"] = steps
            for op in (store.save(loaded), store.load(s.id)):
                task = asyncio.ensure_future(op)
                for _ in range(steps):
                    await asyncio.sleep(0)
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
            assert len(store._idle._idle) <= pool_size // 2
            other = store.create({"m": steps})
            assert await store.save(other) is True
            assert (await store.load(other.id)).data == {"m": steps}
            assert (await store.load(s.id)).data["n"] in (steps - 1, steps, -1)
    finally:
        await store.close()


def test_a_client_with_redis_py_client_side_cache_keeps_execute_command() -> None:
    """redis-py's own client-side cache answers in ``execute_command``: such a client keeps it.
    (redis-py refuses that cache below Redis 7.4, so this checks the decision, not a round trip.)"""
    plain = redis.Redis(port=1)
    assert _direct_pool(plain) is plain.connection_pool
    try:
        from redis.cache import CacheConfig
    except ImportError:  # redis-py before 5.1 has no CacheConfig and no pool-level cache
        assert tuple(int(p) for p in redis.__version__.split(".")[:2]) < (5, 1)
        return
    assert _direct_pool(redis.Redis(port=1, protocol=3, cache_config=CacheConfig())) is None
