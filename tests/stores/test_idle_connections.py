"""``IdleConnections`` / ``AsyncIdleConnections``: a store built from a URL keeps the
pooled connections of its hot commands (load, save, touch, staged saves) between
commands instead of a pool round per command.  Here: one connection serves one thread's
commands; threads and tasks beyond the pool still queue and never fail (a waiter gets
the next connection handed back); a command of another kind finds the pool; an
interrupted command drops its connection instead of leaving a reply for the next one;
a forked child takes its own; close disconnects all.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis

import fastsess.asyncio as fa
from fastsess import ClusterConfig, ClusteredRedisStore, RedisStore
from fastsess._core import ops


def connections(admin: redis.Redis) -> int:
    """Client connections the server has, besides ``admin``'s own."""
    return len(admin.client_list()) - 1


@pytest.fixture
def server(redis_server_factory: Callable[..., Any]) -> Any:
    return redis_server_factory()


def test_one_thread_uses_one_connection(server: Any) -> None:
    admin = redis.Redis.from_url(server.url)
    store = RedisStore(url=server.url, prefix="l1:")
    try:
        s = store.create({"n": 0})
        assert store.save(s) is True
        for n in range(1, 20):
            loaded = store.load(s.id)
            assert loaded is not None and loaded["n"] == n - 1
            loaded["n"] = n
            assert store.save(loaded) is True
        assert connections(admin) == 1
        assert store._idle is not None and len(store._idle._idle) == 1
    finally:
        store.close()
        admin.close()


@pytest.mark.parametrize("pool_size", [1, 2])
def test_a_small_pool_serves_every_kind_of_command(server: Any, pool_size: int) -> None:
    """Kept connections go back to the pool before a command of another kind, and at most
    half the pool is kept: a pool of one or two still serves everything."""
    store = RedisStore(url=server.url, prefix="l2:", pool_size=pool_size, pool_timeout=0.5)
    try:
        small = store.create({"n": 0})
        big = store.create({"blob": "x" * (ops.STAGE_FROM + 10)})
        assert store.save(small) is True and store.save(big) is True
        loaded = store.load(big.id)
        assert loaded is not None
        loaded["k"] = 1
        assert store.save(loaded) is True  # staged: SET + script on a kept connection
        assert len(store._idle._idle) == pool_size // 2  # type: ignore[union-attr]
        assert store.exists(small.id) is True  # EXISTS: execute_command, after the hand-back
        assert store._idle._idle == []  # type: ignore[union-attr]
        assert store.load(small.id).data == {"n": 0}  # type: ignore[union-attr]
        assert sorted(store.iter_ids()) == sorted([small.id, big.id])  # SCAN
        assert store.touch(small.id) is True
        assert store.clear() == 2  # UNLINK pipeline
        assert store.load(small.id) is None
    finally:
        store.close()


def test_more_threads_than_connections_queue_and_never_fail(server: Any) -> None:
    """12 threads on a pool of 4 (2 kept at most): a thread that waits for the pool gets
    the next connection a command is done with, so nobody times out."""
    admin = redis.Redis.from_url(server.url)
    store = RedisStore(url=server.url, prefix="l3:", pool_size=4, pool_timeout=2)
    try:
        s = store.create({"n": 0})
        assert store.save(s) is True
        errors: list[BaseException] = []

        def request(me: int) -> None:
            try:
                for i in range(30):
                    loaded = store.load(s.id)
                    assert loaded is not None
                    loaded[f"t{me}-{i}"] = i
                    assert store.save(loaded) is True
                    assert store.exists(s.id) is True  # another kind of command now and then
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=request, args=(me,)) for me in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert connections(admin) <= 4
        assert len(store.load(s.id).data) == 1 + 12 * 30  # type: ignore[union-attr]
        assert len(store._idle._idle) <= 2  # type: ignore[union-attr]
    finally:
        store.close()
        admin.close()


class Interrupt(BaseException):
    pass


def test_an_interrupted_command_drops_its_connection(server: Any) -> None:
    """Interrupted after the write, before the read: the reply must not be read later as
    the answer to another command."""
    store = RedisStore(url=server.url, prefix="l5:")
    try:
        a, b = store.create({"who": "a"}), store.create({"who": "b"})
        assert store.save(a) is True and store.save(b) is True
        connection = store._idle._idle[-1]  # type: ignore[union-attr]
        original = connection.read_response

        def interrupted(*args: Any, **kwargs: Any) -> Any:
            connection.read_response = original
            raise Interrupt

        connection.read_response = interrupted
        with pytest.raises(Interrupt):
            store.load(a.id)
        assert store.load(b.id).data == {"who": "b"}  # type: ignore[union-attr]
        assert store.load(a.id).data == {"who": "a"}  # type: ignore[union-attr]
    finally:
        store.close()


def test_a_forked_child_takes_its_own_connection(server: Any) -> None:
    store = RedisStore(url=server.url, prefix="l6:")
    try:
        s = store.create({"n": 0})
        assert store.save(s) is True
        parent_connection = store._idle._idle[-1]  # type: ignore[union-attr]
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: answers through the pipe, never returns into pytest
            code = 1
            try:
                loaded = store.load(s.id)
                ok = loaded is not None and loaded.data == {"n": 0}
                ok = ok and store._idle._idle[-1] is not parent_connection  # type: ignore[union-attr]
                loaded["child"] = 1  # type: ignore[index]
                ok = ok and store.save(loaded) is True  # type: ignore[arg-type]
                os.write(write, b"ok" if ok else b"no")
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        assert os.read(read, 2) == b"ok"
        os.close(read)
        assert os.waitpid(pid, 0)[1] == 0
        loaded = store.load(s.id)  # the parent's kept connection still in step
        assert loaded is not None and loaded.data == {"n": 0, "child": 1}
        assert store._idle._idle[-1] is parent_connection  # type: ignore[union-attr]
    finally:
        store.close()


def test_close_disconnects_the_kept_connections(server: Any) -> None:
    admin = redis.Redis.from_url(server.url)
    store = ClusteredRedisStore(url=server.url, prefix="l7:", config=ClusterConfig(enabled=False))
    try:
        s = store.create({"n": 0})
        assert store.save(s) is True
        assert store._idle is not None and len(store._idle._idle) == 1
        store.close()
        assert store._idle._idle == []
        assert connections(admin) == 0
    finally:
        admin.close()


def test_a_client_of_the_caller_keeps_none(server: Any) -> None:
    client = redis.Redis.from_url(server.url)
    store = RedisStore(client=client, prefix="l8:")
    try:
        assert store._idle is None
        s = store.create({"n": 0})
        assert store.save(s) is True
        assert store.load(s.id).data == {"n": 0}  # type: ignore[union-attr]
    finally:
        client.close()


async def test_async_tasks_beyond_the_pool_queue_and_reuse_connections(server: Any) -> None:
    admin = redis.Redis.from_url(server.url)
    store: Any = fa.RedisStore(url=server.url, prefix="l9:", pool_size=4, pool_timeout=2)
    try:
        s = store.create({"n": 0})
        assert await store.save(s) is True
        for _ in range(5):
            assert (await store.load(s.id)).data == {"n": 0}
        assert connections(admin) == 1  # one task: one connection, kept between commands

        async def request(me: int) -> None:
            for i in range(10):
                loaded = await store.load(s.id)
                loaded[f"t{me}-{i}"] = i
                assert await store.save(loaded) is True
                assert await store.exists(s.id) is True

        await asyncio.gather(*(request(me) for me in range(40)))
        assert connections(admin) <= 4
        assert len((await store.load(s.id)).data) == 1 + 40 * 10
        assert len(store._idle._idle) <= 2
    finally:
        await store.close()
        admin.close()


def test_an_async_store_used_from_a_second_loop_drops_the_first_loops_connections(server: Any) -> None:
    """``asyncio.run`` twice on one store: the kept connections of the first (closed) loop
    are never handed to the second.  (redis-py's own pool must be reset in between, as
    for any redis.asyncio client moved to another loop.)"""
    store: Any = fa.RedisStore(url=server.url, prefix="l11:", pool_size=4)
    s = store.create({"n": 0})

    async def first() -> Any:
        assert await store.save(s) is True
        assert len(store._idle._idle) == 1
        return store._idle._idle[-1]

    old = asyncio.run(first())
    store.client.connection_pool.reset()

    async def second() -> None:
        assert (await store.load(s.id)).data == {"n": 0}
        assert old not in store._idle._idle
        await store.close()

    asyncio.run(second())
