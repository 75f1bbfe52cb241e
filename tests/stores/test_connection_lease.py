"""``ConnectionLease``: a sync store built from a URL keeps, per thread, the pooled
connection of its last hot command (load, save, touch) for the next one instead of a
pool round per command.  Here: one connection per thread, handed back before any other
kind of command (so a pool of one connection still serves everything), when the thread
ends, after a fork and at close; an interrupted command drops its connection instead of
leaving a reply to be read by the next one.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis

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
        assert store._lease is not None and store._lease.held is not None
    finally:
        store.close()
        admin.close()


def test_a_pool_of_one_serves_every_kind_of_command(server: Any) -> None:
    """The lease goes back to the pool before a command of another kind, so even one
    connection serves loads, saves, staged saves, EXISTS, SCAN, UNLINK pipelines."""
    store = RedisStore(url=server.url, prefix="l2:", pool_size=1, pool_timeout=0.5)
    try:
        small = store.create({"n": 0})
        big = store.create({"blob": "x" * (ops.STAGE_FROM + 10)})
        assert store.save(small) is True and store.save(big) is True
        loaded = store.load(big.id)
        assert loaded is not None
        loaded["k"] = 1
        assert store.save(loaded) is True  # staged: SET + script on the leased connection
        assert store.exists(small.id) is True  # EXISTS: execute_command, after handing the lease back
        assert sorted(store.iter_ids()) == sorted([small.id, big.id])  # SCAN
        assert store.load(small.id).data == {"n": 0}  # type: ignore[union-attr]
        assert store.touch(small.id) is True
        assert store.clear() == 2  # UNLINK pipeline
        assert store.load(small.id) is None
    finally:
        store.close()


def test_a_thread_that_ends_hands_its_connection_back(server: Any) -> None:
    store = RedisStore(url=server.url, prefix="l3:", pool_size=2, pool_timeout=0.5)
    try:
        s = store.create({"n": 0})
        assert store.save(s) is True
        store._lease.release()  # type: ignore[union-attr]
        errors: list[BaseException] = []

        def request(n: int) -> None:
            try:
                loaded = store.load(s.id)
                assert loaded is not None
                loaded[f"t{n}"] = n
                assert store.save(loaded) is True
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        for n in range(10):  # ten threads one after the other on a pool of two
            t = threading.Thread(target=request, args=(n,))
            t.start()
            t.join()
        gc.collect()
        assert errors == []
        assert set(store.load(s.id).data) == {"n"} | {f"t{n}" for n in range(10)}  # type: ignore[union-attr]
    finally:
        store.close()


def test_threads_at_once_each_keep_one(server: Any) -> None:
    admin = redis.Redis.from_url(server.url)
    store = RedisStore(url=server.url, prefix="l4:", pool_size=4, pool_timeout=2)
    try:
        s = store.create({"n": 0})
        assert store.save(s) is True
        store._lease.release()  # type: ignore[union-attr]
        gate = threading.Barrier(4)
        errors: list[BaseException] = []

        def request(me: int) -> None:
            try:
                for i in range(30):
                    loaded = store.load(s.id)
                    assert loaded is not None
                    loaded[f"t{me}-{i}"] = i
                    assert store.save(loaded) is True
                gate.wait()  # all four still hold their lease here
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=request, args=(me,)) for me in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert connections(admin) <= 4
        assert len(store.load(s.id).data) == 1 + 4 * 30  # type: ignore[union-attr]
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
        held = store._lease.held  # type: ignore[union-attr]
        assert held is not None
        connection = held.connection
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
        parent_connection = store._lease.held.connection  # type: ignore[union-attr]
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: answers through the pipe, never returns into pytest
            code = 1
            try:
                loaded = store.load(s.id)
                ok = loaded is not None and loaded.data == {"n": 0}
                ok = ok and store._lease.held.connection is not parent_connection  # type: ignore[union-attr]
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
        loaded = store.load(s.id)  # the parent's connection still in step
        assert loaded is not None and loaded.data == {"n": 0, "child": 1}
        assert store._lease.held.connection is parent_connection  # type: ignore[union-attr]
    finally:
        store.close()


def test_close_hands_the_lease_back_and_disconnects(server: Any) -> None:
    admin = redis.Redis.from_url(server.url)
    store = ClusteredRedisStore(url=server.url, prefix="l7:", config=ClusterConfig(enabled=False))
    try:
        s = store.create({"n": 0})
        assert store.save(s) is True
        assert store._lease is not None and store._lease.held is not None
        store.close()
        assert store._lease.held is None
        assert connections(admin) == 0
    finally:
        admin.close()


def test_a_client_of_the_caller_gets_no_lease(server: Any) -> None:
    client = redis.Redis.from_url(server.url)
    store = RedisStore(client=client, prefix="l8:")
    try:
        assert store._lease is None
        s = store.create({"n": 0})
        assert store.save(s) is True
        assert store.load(s.id).data == {"n": 0}  # type: ignore[union-attr]
    finally:
        client.close()
