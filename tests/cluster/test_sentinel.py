"""Sentinel-managed clients: a real master plus a real Sentinel process, both private.

The Sentinel is ``redis-server <conf> --sentinel`` (the same binary; Debian's
``redis-sentinel`` is only a link to it) on a free port, monitoring a master
started by ``redis_server_factory``.  Stores get their clients from
``redis.sentinel.Sentinel(...).master_for(...)``, as a deployment behind
Sentinel would.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.sentinel import Sentinel

from fastsess import ClusterConfig, ClusteredRedisStore, RedisStore
from fastsess.server import find_server_binary, free_port

from .conftest import received, wait_received

MASTER = "fastsess-test"


@pytest.fixture
def sentinel(redis_server_factory, tmp_path: Path) -> Iterator[Sentinel]:
    master = redis_server_factory()
    port = free_port()
    conf = tmp_path / "sentinel.conf"  # Sentinel rewrites its config file: it must be writable
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {master.port} 1\n"
        f"sentinel down-after-milliseconds {MASTER} 2000\n"
    )
    log = open(tmp_path / "sentinel.log", "wb")  # noqa: SIM115 - closed in the finalizer
    proc = subprocess.Popen([find_server_binary(), str(conf), "--sentinel"], stdout=log, stderr=subprocess.STDOUT)
    client = Sentinel([("127.0.0.1", port)], socket_timeout=1.0)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.discover_master(MASTER) == ("127.0.0.1", master.port):
                    break
            except (redis.RedisError, OSError):
                pass
            assert proc.poll() is None, (tmp_path / "sentinel.log").read_text()
            assert time.monotonic() < deadline, "the Sentinel never reported the master"
            time.sleep(0.05)
        yield client
    finally:
        for conn in client.sentinels:
            conn.close()
        proc.terminate()
        proc.wait(5)
        log.close()


def test_redis_store_through_sentinel(sentinel: Sentinel, prefix: str) -> None:
    client = sentinel.master_for(MASTER, socket_timeout=1.0)
    with RedisStore(client=client, prefix=prefix) as store:
        session = store.create({"user": 1})
        assert store.save(session)
        assert dict(store.load(session.id)) == {"user": 1}
        assert store.count() == 1
        assert store.delete(session.id) and store.load(session.id) is None
    client.ping()  # a client the store did not create is left open
    client.close()


def test_clustered_stores_through_sentinel_invalidate_each_other(sentinel: Sentinel, prefix: str) -> None:
    clients = [sentinel.master_for(MASTER, socket_timeout=1.0) for _ in range(2)]
    stores = [
        ClusteredRedisStore(client=c, prefix=prefix, config=ClusterConfig(channel=prefix + "ch", node_id=f"{prefix}{i}"))
        for i, c in enumerate(clients)
    ]
    try:
        A, B = stores
        assert A.coordinator.wait_subscribed(5) and B.coordinator.wait_subscribed(5)
        session = A.create({"n": 0})
        A.save(session)
        assert B.load(session.id)["n"] == 0
        assert B.load(session.id)["n"] == 0 and B.cache_stats().hits == 1  # cached on B
        before = received(B)
        session["n"] = 1
        A.save(session)
        wait_received(B, before)
        assert B.load(session.id)["n"] == 1  # not B's old copy
        before = received(B)
        A.delete(session.id)
        wait_received(B, before)
        assert B.load(session.id) is None
    finally:
        for store in stores:
            store.close()
        for c in clients:
            c.close()


async def test_async_clustered_stores_through_sentinel_invalidate_each_other(sentinel: Sentinel, prefix: str) -> None:
    """The asyncio listener is a thread on a sync twin of the asyncio Sentinel client."""
    from redis.asyncio.sentinel import Sentinel as AsyncSentinel

    from fastsess.asyncio import ClusteredRedisStore as AsyncClusteredRedisStore

    address = sentinel.sentinels[0].connection_pool.connection_kwargs
    asentinel = AsyncSentinel([(address["host"], address["port"])], socket_timeout=1.0)
    stores = [
        AsyncClusteredRedisStore(client=asentinel.master_for(MASTER, socket_timeout=1.0), prefix=prefix,
                                 config=ClusterConfig(channel=prefix + "ach", node_id=f"{prefix}a{i}"))
        for i in range(2)
    ]
    try:
        A, B = stores
        assert await A.start() and await B.start()
        session = A.create({"n": 0})
        assert await A.save(session)
        assert (await B.load(session.id))["n"] == 0
        assert (await B.load(session.id))["n"] == 0 and B.cache_stats().hits == 1  # cached on B
        before = received(B)
        session["n"] = 1
        assert await A.save(session)
        wait_received(B, before)
        assert (await B.load(session.id))["n"] == 1
    finally:
        for store in stores:
            await store.close()
            await store.client.aclose()
        for s in asentinel.sentinels:
            await s.aclose()
