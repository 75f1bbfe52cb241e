"""The listener's life: close() wakes it, unclosed stores are released, fork() starts clean,
node ids are labels (two processes may share one), an asyncio loop that only serves cache
hits still applies invalidations, and every reconnect is seen (CLIENT KILL).

The stale-read tests run a writer in another OS process (``tests/cluster/node.py``)
that records when each version was committed; the reader counts reads that returned a
value older than a version committed ``LAG`` seconds before the read started.  Both
processes stamp with ``time.monotonic()``, which is system-wide on Linux.
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import multiprocessing
import select
import socket
import statistics
import threading
import time
import uuid
import warnings
from array import array
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import fastsess.cluster.thread
from fastsess import ClusterConfig, ClusteredRedisStore, Session
from fastsess.asyncio import ClusteredRedisStore as AsyncClusteredRedisStore
from fastsess.errors import StoreUnavailable
from fastsess.server import RedisServer, free_port
from fastsess.stores.base import new_session_id

from .conftest import FAST, StoreFactory, listener_threads, received, wait_received, wait_until
from .test_multiprocess import Node, cache_on, watch

LAG = 0.1  # a read may not return a value older than a version committed this long before it


def saved(store: Any, data: dict[str, Any]) -> Session:
    s = store.create(data)
    assert store.save(s) is True
    return s


def config(channel: str, **changes: Any) -> ClusterConfig:
    return ClusterConfig(channel=channel, **{**FAST, **changes})


# --- close() wakes the listener --------------------------------------------------------------


def test_close_wakes_the_listener_instead_of_waiting_for_its_poll(make_store: StoreFactory, redis_url: str, monkeypatch: Any) -> None:
    """With a 60 s poll, a close() that waited for the poll would time out its 5 s join
    and leave the thread running; a woken listener ends at once."""
    monkeypatch.setattr(fastsess.cluster.thread, "POLL_INTERVAL", 60.0)
    store = make_store(redis_url, subscribe_timeout=60.0)
    assert store.coordinator.wait_subscribed(5.0)
    thread = store.coordinator._thread
    t0 = time.monotonic()
    store.close()
    took = time.monotonic() - t0
    assert not thread.is_alive() and not store.coordinator.running
    assert took < 4.0, took  # generous: the old code took the full 5 s join timeout here


async def test_async_close_wakes_the_listener(redis_url: str, prefix: str, monkeypatch: Any) -> None:
    monkeypatch.setattr(fastsess.cluster.thread, "POLL_INTERVAL", 60.0)
    store = AsyncClusteredRedisStore(url=redis_url, config=config(f"lc:{uuid.uuid4().hex[:8]}", subscribe_timeout=60.0), prefix=prefix)
    assert await store.start()
    thread = store.coordinator._thread
    t0 = time.monotonic()
    await store.close()
    took = time.monotonic() - t0
    assert not thread.is_alive() and not store.coordinator.running
    assert took < 4.0, took


def test_close_time_with_default_settings(make_store: StoreFactory, redis_url: str) -> None:
    """Measured for the record (printed with -s); the bound is generous on purpose."""
    times = []
    for _ in range(10):
        store = make_store(redis_url, subscribe_timeout=1.0)
        assert store.coordinator.wait_subscribed(5.0)
        t0 = time.monotonic()
        store.close()
        times.append(time.monotonic() - t0)
        assert not store.coordinator.running
    print(f"close() with the default 250 ms poll: median {statistics.median(times) * 1000:.2f} ms, max {max(times) * 1000:.2f} ms")
    assert statistics.median(times) < 0.2, times


# --- the constructor never waits for Redis ---------------------------------------------------


@pytest.mark.parametrize("redis_side", ["refused", "silent"])
def test_constructor_does_not_wait_for_a_dead_redis(redis_side: str) -> None:
    """Against a port nobody listens on (refused) or a server that accepts and never answers
    (silent), with a 60 s subscribe_timeout: the constructor returns with the listener
    started and not subscribed, and the first load fails with StoreUnavailable.  A
    constructor that waited for the subscription would take the full 60 s, so the 20 s
    bound below is generous."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if redis_side == "silent":  # the kernel completes the handshakes; nobody ever reads
            silent.bind(("127.0.0.1", 0))
            silent.listen(16)
            port = silent.getsockname()[1]
        else:
            port = free_port()
        built: list[ClusteredRedisStore] = []
        cfg = config(f"ctor:{uuid.uuid4().hex[:8]}", subscribe_timeout=60.0)
        thread = threading.Thread(target=lambda: built.append(
            ClusteredRedisStore(url=f"redis://127.0.0.1:{port}/0", config=cfg, socket_timeout=0.2, retries=0)
        ))
        thread.start()
        thread.join(20.0)
        assert not thread.is_alive(), "the constructor waited for the subscription"
        store = built[0]
        try:
            assert store.coordinator is not None and store.coordinator.running
            assert not store.coordinator.subscribed and not store.coordinator.stats.subscribed
            with pytest.raises(StoreUnavailable):
                store.load(new_session_id())
            if redis_side == "refused":
                wait_until(lambda: store.coordinator.stats.last_error is not None, what="the listener's failed attempt")
        finally:
            store.close()
        assert not store.coordinator.running
    finally:
        silent.close()


def test_constructor_returns_before_the_subscription_and_the_cache_is_served_after(make_store: StoreFactory, redis_url: str) -> None:
    store = make_store(redis_url)
    assert store.coordinator is not None
    assert store.coordinator.wait_subscribed(5.0)
    session = saved(store, {"v": 1})
    store.clear_local_cache()
    assert store.load(session.id)["v"] == 1 and store.load(session.id)["v"] == 1
    assert store.cache_stats().hits >= 1


# --- stores that are never closed ------------------------------------------------------------


def client_count(raw: redis.Redis) -> int:
    return len(raw.client_list())


def test_unclosed_stores_are_released_when_collected(redis_server_factory: Any, prefix: str) -> None:
    server: RedisServer = redis_server_factory()
    raw = redis.Redis.from_url(server.url)
    channel = f"lc:{uuid.uuid4().hex[:8]}"
    gc.collect()
    threads0, conns0 = len(listener_threads()), client_count(raw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(20):
            store = ClusteredRedisStore(url=server.url, config=config(channel), prefix=prefix)
            assert store.coordinator.wait_subscribed(5.0)
            s = saved(store, {"i": i})
            assert store.load(s.id)["i"] == i
            del store, s
        gc.collect()
        wait_until(lambda: len(listener_threads()) == threads0, 10.0, what="the listener threads to end")
        wait_until(lambda: client_count(raw) == conns0, 10.0, what=f"the server's client count back to {conns0}")
    ours = [w for w in caught if issubclass(w.category, ResourceWarning) and "unclosed ClusteredRedisStore" in str(w.message)]
    assert len(ours) == 20
    raw.close()


async def test_unclosed_async_stores_are_released_when_collected(redis_server_factory: Any, prefix: str) -> None:
    server: RedisServer = redis_server_factory()
    raw = redis.Redis.from_url(server.url)
    channel = f"lc:{uuid.uuid4().hex[:8]}"
    gc.collect()
    threads0, conns0 = len(listener_threads()), client_count(raw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(20):
            store = AsyncClusteredRedisStore(url=server.url, config=config(channel), prefix=prefix)
            assert await store.start()
            s = store.create({"i": i})
            assert await store.save(s)
            assert (await store.load(s.id))["i"] == i
            del store, s
        gc.collect()
        deadline = time.monotonic() + 10.0
        while (len(listener_threads()), client_count(raw)) != (threads0, conns0):
            assert time.monotonic() < deadline, (len(listener_threads()), threads0, client_count(raw), conns0)
            await asyncio.sleep(0.02)
            gc.collect()
    ours = [w for w in caught if issubclass(w.category, ResourceWarning) and "unclosed ClusteredRedisStore" in str(w.message)]
    assert len(ours) == 20
    raw.close()


def test_a_closed_store_emits_no_resource_warning(make_store: StoreFactory, redis_url: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = make_store(redis_url)
        store.close()
        make_store.stores.remove(store)
        del store
        gc.collect()
    assert not [w for w in caught if "unclosed ClusteredRedisStore" in str(w.message)]


# --- fork() ----------------------------------------------------------------------------------


def _sync_child(store: ClusteredRedisStore, sid: str, conn: Any) -> None:
    try:
        coordinator = store.coordinator
        out: dict[str, Any] = {"instance_id": coordinator.instance_id, "cached": len(store._cache)}
        out["first"] = store.load(sid)["v"]  # the parent cached v=0; Redis has v=1
        out["subscribed"] = coordinator.wait_subscribed(5.0)
        out["running"] = coordinator.running
        assert store.load(sid)["v"] == 1  # cached now
        out["hit"] = store.cache_stats().hits >= 0 and store.load(sid)["v"] == 1
        conn.send(out)
        assert conn.recv() == "written"
        deadline = time.monotonic() + 5.0
        while (value := store.load(sid)["v"]) != 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        conn.send({"seen": value, "received": coordinator.stats.received})
        store.close()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send({"error": repr(exc)})


def _async_child(store: AsyncClusteredRedisStore, sid: str, conn: Any) -> None:
    async def main() -> None:
        coordinator = store.coordinator
        out: dict[str, Any] = {"instance_id": coordinator.instance_id, "cached": len(store._cache)}
        out["first"] = (await store.load(sid))["v"]
        out["subscribed"] = await coordinator.wait_subscribed(5.0)
        out["running"] = coordinator.running
        assert (await store.load(sid))["v"] == 1
        out["hit"] = (await store.load(sid))["v"] == 1
        conn.send(out)
        assert conn.recv() == "written"
        deadline = time.monotonic() + 5.0
        while (value := (await store.load(sid))["v"]) != 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        conn.send({"seen": value, "received": coordinator.stats.received})
        await store.close()

    try:
        asyncio.run(main())
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send({"error": repr(exc)})


def _fork_and_check(parent_store: Any, child: Callable[..., None], writer: ClusteredRedisStore, raw: redis.Redis, s: Session) -> None:
    """``parent_store`` has ``s`` (v=0) cached; Redis now has v=1 behind its back.  The
    forked child must not serve the cached v=0, must get its own identity and listener,
    and must see the writer's v=2 through an invalidation."""
    ctx = multiprocessing.get_context("fork")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=child, args=(parent_store, s.id, theirs))
    proc.start()
    try:
        assert ours.poll(20), "the child did not report"
        first = ours.recv()
        assert "error" not in first, first
        assert first["cached"] == 0 and first["first"] == 1, first  # never the parent's copy
        assert first["instance_id"] != parent_store.coordinator.instance_id
        assert first["subscribed"] and first["running"] and first["hit"], first
        s["v"] = 2
        assert writer.save(s)
        ours.send("written")
        assert ours.poll(20), "the child did not report"
        second = ours.recv()
        assert second.get("seen") == 2 and second["received"] >= 1, second
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    assert proc.exitcode == 0


def _behind_the_back(store: Any, raw: redis.Redis, s: Session, value: int) -> None:
    ghost = Session(s.id, {"v": value}, ttl=store.ttl, new=False, version=s.version + 10)
    raw.set(store.prefix + s.id, store.serializer.encode(ghost), ex=store.ttl)


def test_fork_child_starts_clean_and_listens(make_store: StoreFactory, redis_url: str, redis_client: redis.Redis) -> None:
    parent, writer = make_store(redis_url, name="parent"), make_store(redis_url, name="writer")
    for store in (parent, writer):
        assert store.coordinator.wait_subscribed(5.0)
    s = saved(writer, {"v": 0})
    cache_hits = parent.cache_stats().hits
    assert parent.load(s.id)["v"] == 0 and parent.load(s.id)["v"] == 0
    assert parent.cache_stats().hits == cache_hits + 1
    _behind_the_back(parent, redis_client, s, 1)
    assert parent.load(s.id)["v"] == 0  # the parent's copy is cached (no message was sent)
    _fork_and_check(parent, _sync_child, writer, redis_client, s)
    # the child never touched the parent's connection: the parent still listens
    assert parent.coordinator.subscribed and parent.coordinator.running
    before = received(parent)
    s["v"] = 3
    assert writer.save(s)
    wait_received(parent, before)
    assert parent.load(s.id)["v"] == 3


def test_fork_child_of_an_asyncio_store(make_store: StoreFactory, redis_url: str, redis_client: redis.Redis, prefix: str) -> None:
    """gunicorn --preload style: the store is made and used by the parent, then the
    worker runs its own event loop on it."""
    writer = make_store(redis_url, name="writer")
    store = AsyncClusteredRedisStore(url=redis_url, config=config(make_store.channel), prefix=prefix)
    s = saved(writer, {"v": 0})

    async def warm() -> None:
        assert await store.start()
        assert (await store.load(s.id))["v"] == 0 and (await store.load(s.id))["v"] == 0

    asyncio.run(warm())  # the pool now holds a connection of this (closed) loop
    _behind_the_back(store, redis_client, s, 1)
    _fork_and_check(store, _async_child, writer, redis_client, s)
    # the parent's connections belong to its closed loop: drop them, then close
    store.client.connection_pool.reset()
    asyncio.run(store.close())


# --- node ids are labels ---------------------------------------------------------------------


@pytest.fixture
def two_same_id(redis_server_factory: Any) -> Iterator[tuple[Node, Node, list[dict[str, Any]]]]:
    server = redis_server_factory()
    channel, prefix = f"mp:{uuid.uuid4().hex[:8]}", f"mp{uuid.uuid4().hex[:6]}:"
    started = [Node(name, env={"FASTSESS_NODE_ID": "web-3"}) for name in "AB"]
    try:
        for node in started:
            node.send("init_env", url=server.url, channel=channel, prefix=prefix)
        infos = [node.recv(20) for node in started]
        yield started[0], started[1], infos
    finally:
        for node in started:
            node.close()


def test_two_processes_with_the_same_node_id_invalidate_each_other(two_same_id: tuple[Node, Node, list[dict[str, Any]]]) -> None:
    A, B, infos = two_same_id
    assert all(info["subscribed"] and info["node_id"] == "web-3" for info in infos)
    assert infos[0]["instance_id"] != infos[1]["instance_id"]
    sid = A.call("create", data={"v": 0})["id"]
    for version in (1, 2):
        cache_on(B, sid, version - 1)
        watch(B, sid, version - 1, version)
        assert A.call("update", sid=sid, key="v", value=version)["wrote"] is True
        assert B.recv(10)["received"] >= 1
    cache_on(A, sid, 2)
    watch(A, sid, 2, 3)
    assert B.call("update", sid=sid, key="v", value=3)["wrote"] is True
    assert A.recv(10)["received"] >= 1
    for node in (A, B):
        stats = node.call("stats")["coordinator"]
        assert stats["foreign_own_id"] == 0 and stats["ignored_own"] >= 1


# --- stale reads with a writer process -------------------------------------------------------


@pytest.fixture
def writer_node(redis_server_factory: Any) -> Iterator[tuple[Node, RedisServer, str, str]]:
    server = redis_server_factory()
    channel, prefix = f"sr:{uuid.uuid4().hex[:8]}", f"sr{uuid.uuid4().hex[:6]}:"
    node = Node("W")
    try:
        assert node.call("init", _wait=20, url=server.url, node_id="writer", channel=channel, prefix=prefix) is True
        yield node, server, channel, prefix
    finally:
        node.close()


def node_done(node: Node) -> bool:
    assert node.proc.stdout is not None
    return b"\n" in node._buf or bool(select.select([node.proc.stdout.fileno()], [], [], 0)[0])


class Reads:
    """(start time, value) of every load, compactly."""

    def __init__(self) -> None:
        self.t = array("d")
        self.v = array("q")

    def stale(self, committed: list[list[float]], lag: float = LAG) -> tuple[int, float]:
        """Reads older than a version committed ``lag`` s before they started; the worst age."""
        times = [t for _, t in committed]
        values = [int(v) for v, _ in committed]
        count, worst = 0, 0.0
        for t, v in zip(self.t, self.v):
            i = bisect.bisect_right(times, t - lag)  # versions committed at least lag before t
            if i and values[i - 1] > v:
                count += 1
                first_newer = times[bisect.bisect_right(values, v)]
                worst = max(worst, t - first_newer)
        return count, worst


SERIES = {"count": 40, "interval": 0.02}


def run_sync_reader(store: ClusteredRedisStore, sid: str, writer: Node, kill: Callable[[], None] | None = None) -> tuple[Reads, list[list[float]]]:
    reads = Reads()
    writer.send("write_series", sid=sid, key="v", **SERIES)
    t_end = time.monotonic() + 20.0
    kill_at = time.monotonic() + 0.25
    i = 0
    while True:
        t = time.monotonic()
        s = store.load(sid)
        reads.t.append(t)
        reads.v.append(s["v"])
        i += 1
        if kill is not None and t >= kill_at:
            kill()
            kill_at += 0.25
        if i % 256 == 0 and node_done(writer):
            break
        assert t < t_end, "the writer did not finish"
    committed = writer.recv(10)
    return reads, committed


async def run_async_reader(
    store: AsyncClusteredRedisStore, sid: str, writer: Node, kill: Callable[[], None] | None = None, yield_to_loop: bool = False,
) -> tuple[Reads, list[list[float]]]:
    reads = Reads()
    writer.send("write_series", sid=sid, key="v", **SERIES)
    t_end = time.monotonic() + 20.0
    kill_at = time.monotonic() + 0.25
    i = 0
    while True:
        t = time.monotonic()
        s = await store.load(sid)  # a cache hit never yields to the event loop
        reads.t.append(t)
        reads.v.append(s["v"])
        i += 1
        if kill is not None and t >= kill_at:
            kill()
            kill_at += 0.25
        if yield_to_loop:
            await asyncio.sleep(0)
        if i % 256 == 0 and node_done(writer):
            break
        assert t < t_end, "the writer did not finish"
    committed = writer.recv(10)
    return reads, committed


def check(reads: Reads, committed: list[list[float]], hits: int) -> None:
    stale, worst = reads.stale(committed)
    final = int(committed[-1][0])
    print(f"{len(reads.t)} reads, {hits} cache hits, {len(committed)} versions; stale (> {LAG * 1000:.0f} ms): {stale}, worst {worst * 1000:.1f} ms")
    assert len(committed) == SERIES["count"]
    assert hits > len(committed)  # the cache really answered
    assert stale == 0, (stale, worst)
    assert max(reads.v) == final or reads.t[-1] - committed[-1][1] < LAG


def test_sync_hit_loop_applies_invalidations(writer_node: Any) -> None:
    writer, server, channel, prefix = writer_node
    sid = writer.call("create", data={"v": 0})["id"]
    store = ClusteredRedisStore(url=server.url, config=config(channel), prefix=prefix)
    try:
        assert store.coordinator.wait_subscribed(5.0)
        assert store.load(sid)["v"] == 0
        reads, committed = run_sync_reader(store, sid, writer)
        check(reads, committed, store.cache_stats().hits)
    finally:
        store.close()


async def test_async_hit_only_loop_applies_invalidations(writer_node: Any) -> None:
    """``while True: await store.load(id)`` never yields to the event loop while it hits;
    the invalidations must apply anyway."""
    writer, server, channel, prefix = writer_node
    sid = writer.call("create", data={"v": 0})["id"]
    store = AsyncClusteredRedisStore(url=server.url, config=config(channel), prefix=prefix)
    try:
        assert await store.start()
        assert (await store.load(sid))["v"] == 0
        reads, committed = await run_async_reader(store, sid, writer)
        check(reads, committed, store.cache_stats().hits)
    finally:
        await store.close()


def killer(server: RedisServer) -> tuple[Callable[[], None], redis.Redis]:
    raw = redis.Redis.from_url(server.url)

    def kill() -> None:
        raw.client_kill_filter(_type="pubsub")

    return kill, raw


def test_sync_reconnects_flush_and_are_counted(writer_node: Any) -> None:
    writer, server, channel, prefix = writer_node
    sid = writer.call("create", data={"v": 0})["id"]
    store = ClusteredRedisStore(url=server.url, config=config(channel), prefix=prefix)
    kill, raw = killer(server)
    try:
        assert store.coordinator.wait_subscribed(5.0)
        assert store.load(sid)["v"] == 0
        reads, committed = run_sync_reader(store, sid, writer, kill=kill)
        check(reads, committed, store.cache_stats().hits)
        assert store.coordinator.stats.reconnects >= 1
        assert store.coordinator.wait_subscribed(5.0)
    finally:
        store.close()
        raw.close()


@pytest.mark.parametrize("yield_to_loop", [True, False], ids=["yielding", "hit-only"])
async def test_async_reconnects_flush_and_are_counted(writer_node: Any, yield_to_loop: bool) -> None:
    """redis-py's asyncio PubSub reconnects silently inside get_message; the listener
    must still see every drop: flush, bypass until resubscribed, count it."""
    writer, server, channel, prefix = writer_node
    sid = writer.call("create", data={"v": 0})["id"]
    store = AsyncClusteredRedisStore(url=server.url, config=config(channel), prefix=prefix)
    kill, raw = killer(server)
    try:
        assert await store.start()
        assert (await store.load(sid))["v"] == 0
        reads, committed = await run_async_reader(store, sid, writer, kill=kill, yield_to_loop=yield_to_loop)
        check(reads, committed, store.cache_stats().hits)
        assert store.coordinator.stats.reconnects >= 1
        assert await store.coordinator.wait_subscribed(5.0)
    finally:
        await store.close()
        raw.close()


class AppRedis(redis.asyncio.Redis):
    """An application's own subclass of the asyncio client, defined outside redis-py."""


async def test_a_subclass_of_the_asyncio_client_is_treated_as_asyncio(redis_url: str, prefix: str) -> None:
    """The listener's connection, the fork/close paths and the store all see an asyncio
    client, whatever module its class was defined in."""
    from fastsess.cluster.redis_adapter import is_asyncio_client

    client = AppRedis.from_url(redis_url)
    assert is_asyncio_client(client) and not is_asyncio_client(redis.Redis.from_url(redis_url))
    store = AsyncClusteredRedisStore(client=client, config=config(f"lc:{uuid.uuid4().hex[:8]}"), prefix=prefix)
    try:
        assert await store.start()
        session = store.create({"n": 1})
        assert await store.save(session)
        assert (await store.load(session.id))["n"] == 1
        assert (await store.load(session.id))["n"] == 1  # from the local cache
        await client.set(prefix + session.id, b"x")  # an outside write: no message, so the copy stays...
        assert await store.delete(session.id) is True  # ...until a delete through the store
        assert await store.load(session.id) is None
    finally:
        await store.close()
        await client.aclose()
