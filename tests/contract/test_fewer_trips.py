"""Fewer trips to Redis, for both flavours: concurrent misses share one read, unknown ids
are remembered as absent, and update mode replaces peers' copies instead of evicting them.

Reads are counted by the Redis server itself (``INFO commandstats``: the load script's
``PTTL``, since a save's compare-and-set runs a ``GET`` too).  Concurrency is forced, not hoped for: the first read's
reply is held (``hold_after``) until the other loads are waiting on it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fastsess import Session
from fastsess._core.messages import complete_fill, fill_prefix
from fastsess._core.ops import GET_PTTL
from fastsess.cluster import INVALIDATED, encode_message
from fastsess.stores.base import new_session_id

from .conftest import (
    Blocking,
    ClusteredBackend,
    Nodes,
    barrier,
    created,
    hold_after,
    make_backend,
    received,
    redis_command_calls,
    sync_store,
    wait_created,
    wait_received,
    wait_until,
)

UPDATE = {"update_max_bytes": 4096}


def saved(store: Any, data: dict[str, Any] | None = None) -> Session:
    s = store.create({"user": 1} if data is None else data)
    assert store.save(s) is True
    return s


def gets(backend: ClusteredBackend) -> int:
    """Reads by the load script (GET + PTTL): its PTTL, which nothing else runs (a save's
    compare-and-set also runs a GET)."""
    return redis_command_calls(backend.client, "pttl")


def start_loads(backend: ClusteredBackend, store: Any, sid: str, n: int) -> Any:
    """Start ``n`` loads of ``sid`` concurrently (threads, or tasks on the store's loop);
    returns a function that waits for them and gives their results."""
    if isinstance(store, Blocking):
        target = store.wrapped
        futures = [asyncio.run_coroutine_threadsafe(target.load(sid), backend.loop.loop) for _ in range(n)]
        return lambda: [f.result(10) for f in futures]
    results: list[Any] = []

    def load() -> None:
        try:
            results.append(store.load(sid))
        except Exception as exc:  # noqa: BLE001 - handed to the test
            results.append(exc)

    threads = [threading.Thread(target=load) for _ in range(n)]
    for t in threads:
        t.start()

    def finish() -> list[Any]:
        for t in threads:
            t.join(10)
        return results

    return finish


def followers(store: Any, sid: str) -> int:
    flight = sync_store(store)._cache.flights.get(sid)
    return 0 if flight is None else flight.followers


# --- single flight --------------------------------------------------------------------------


@pytest.mark.parametrize("n", [8])
def test_concurrent_misses_of_one_id_share_one_get(clustered: ClusteredBackend, n: int) -> None:
    writer, store = clustered.make(name="W"), clustered.make(name="R")
    before = created(store)
    s = saved(writer, {"v": 1})
    wait_created(store, before)  # the creation's message: arriving mid-read, it would start a new flight
    others: list[Any] = []

    def during() -> None:  # the first read has its reply; the others start and must wait for it
        others.append(start_loads(clustered, store, s.id, n - 1))
        wait_until(lambda: followers(store, s.id) == n - 1, 5, what="the other loads to follow the first")

    before, before_get = gets(clustered), redis_command_calls(clustered.client, "get")
    hold_after(store, GET_PTTL, during)
    first = store.load(s.id)
    rest = others[0]()
    assert gets(clustered) - before == 1
    assert redis_command_calls(clustered.client, "get") - before_get == 1  # N concurrent misses, 1 GET
    results = [first, *rest]
    assert len(results) == n and all(r is not None and r["v"] == 1 for r in results)
    assert len({id(r) for r in results}) == n  # each caller gets its own copy
    rest[0]["v"] = "changed by one caller"
    assert first["v"] == 1 and rest[1]["v"] == 1 and store.load(s.id)["v"] == 1
    assert len(sync_store(store)._cache.flights) == 0


def test_a_load_after_an_invalidation_does_not_follow_an_older_read(nodes: Nodes) -> None:
    # B's first read returned v=1; then A writes v=2 and B applies the invalidation; a load
    # on B that starts after that must read again (v=2), not share the older read (v=1).
    A, B, _, _, backend = nodes
    s = saved(A, {"v": 1})
    late: list[Any] = []

    def during() -> None:
        before = received(B)
        s["v"] = 2
        A.save(s)
        wait_received(B, before)
        late.append(start_loads(backend, B, s.id, 1))

    hold_after(B, GET_PTTL, during)
    first = B.load(s.id)
    assert first["v"] == 1  # read before the write
    assert late[0]()[0]["v"] == 2
    assert B.load(s.id)["v"] == 2


def test_a_failed_read_fails_its_followers_too(clustered: ClusteredBackend) -> None:
    from fastsess.errors import StoreUnavailable

    store = clustered.make()
    s = saved(store, {"v": 1})
    store.evict_from_cache(s.id)
    others: list[Any] = []

    def during() -> None:
        others.append(start_loads(clustered, store, s.id, 2))
        wait_until(lambda: followers(store, s.id) == 2, 5, what="two followers")
        raise StoreUnavailable("the leader's read failed")

    hold_after(store, GET_PTTL, during)  # the reply arrives, then the read fails
    with pytest.raises(StoreUnavailable):
        store.load(s.id)
    outcomes = _outcomes(others[0])
    assert len(outcomes) == 2 and all(isinstance(o, StoreUnavailable) for o in outcomes)
    assert store.load(s.id)["v"] == 1  # and the next load reads again


def _outcomes(finish: Any) -> list[Any]:
    try:
        return list(finish())
    except Exception as exc:  # noqa: BLE001 - asyncio: the first failure
        return [exc, exc]


# --- absent ids -------------------------------------------------------------------------------


def test_an_unknown_id_is_remembered_as_absent(clustered: ClusteredBackend) -> None:
    store = clustered.make()
    sid = new_session_id()
    before = gets(clustered)
    assert store.load(sid) is None
    assert [store.load(sid) for _ in range(5)] == [None] * 5
    assert gets(clustered) - before == 1
    exists = redis_command_calls(clustered.client, "exists")
    assert store.exists(sid) is False  # exists still asks Redis
    assert redis_command_calls(clustered.client, "exists") == exists + 1


def test_negative_cache_off_reads_every_time(clustered: ClusteredBackend) -> None:
    store = clustered.make(cluster={"negative_cache_ttl": 0})
    sid = new_session_id()
    before = gets(clustered)
    for _ in range(3):
        assert store.load(sid) is None
    assert gets(clustered) - before == 3


def test_absent_entries_expire(clustered: ClusteredBackend) -> None:
    store = clustered.make(cluster={"negative_cache_ttl": 0.05})
    sid = new_session_id()
    before = gets(clustered)
    assert store.load(sid) is None
    wait_until(lambda: store.load(sid) is None and gets(clustered) - before == 2, 2, what="the absent entry to expire")


def test_creating_the_id_on_another_node_clears_it(nodes: Nodes) -> None:
    A, B, _, _, _ = nodes
    sid = new_session_id()
    assert B.load(sid) is None and B.load(sid) is None  # remembered as absent on B
    before = created(B)
    s = A.create({"v": "created"})
    s.id = sid  # an id the application chose
    assert A.save(s) is True
    wait_created(B, before)
    assert B.load(sid)["v"] == "created"


def test_creating_the_id_locally_clears_it(clustered: ClusteredBackend) -> None:
    store = clustered.make()
    sid = new_session_id()
    assert store.load(sid) is None
    s = store.create({"v": "created"})
    s.id = sid
    assert store.save(s) is True
    store.evict_from_cache(sid)  # the cached copy gone: the absent entry must be gone too
    assert store.load(sid)["v"] == "created"


def test_an_absent_entry_is_not_kept_when_the_id_was_created_during_the_read(nodes: Nodes) -> None:
    # B's read finds nothing; before B acts on it, A creates the id and B applies A's message:
    # B must not remember the id as absent.
    A, B, _, _, _ = nodes
    sid = new_session_id()

    def during() -> None:
        before = created(B)
        s = A.create({"v": "created"})
        s.id = sid
        A.save(s)
        wait_created(B, before)

    hold_after(B, GET_PTTL, during)
    assert B.load(sid) is None  # read before the create
    assert B.load(sid)["v"] == "created"


def test_absent_ids_go_with_a_local_flush(clustered: ClusteredBackend) -> None:
    store = clustered.make()
    sid = new_session_id()
    assert store.load(sid) is None
    clustered.behind_the_back(store, sid, {"v": 1})
    assert store.load(sid) is None  # written behind fastsess's back: still remembered as absent
    store.clear_local_cache()
    assert store.load(sid)["v"] == 1


# --- update mode ------------------------------------------------------------------------------


def update_nodes(backend: ClusteredBackend, **extra: Any) -> tuple[Any, Any]:
    return backend.make(name="A", cluster={**UPDATE, **extra}), backend.make(name="B", cluster={**UPDATE, **extra})


def test_update_mode_replaces_the_peer_copy(clustered: ClusteredBackend) -> None:
    A, B = update_nodes(clustered)
    s = saved(A, {"v": 1})
    assert B.load(s.id)["v"] == 1  # cached on B
    for v in (2, 3):
        before = received(B)
        s["v"] = v
        A.save(s)
        wait_received(B, before)
        reads = gets(clustered)
        got = B.load(s.id)
        assert got["v"] == v and got.version == s.version
        assert gets(clustered) == reads  # served from B's replaced copy
    assert sync_store(B)._cache.replaced == 2


def test_update_mode_does_not_add_sessions_a_peer_never_read(clustered: ClusteredBackend) -> None:
    A, B = update_nodes(clustered)
    s = saved(A, {"v": 1})
    before = received(B)
    s["v"] = 2
    A.save(s)
    wait_received(B, before)
    assert B.cache_stats().size == 0
    assert B.load(s.id)["v"] == 2


def test_update_mode_sends_only_small_sessions(clustered: ClusteredBackend) -> None:
    A, B = update_nodes(clustered, update_max_bytes=200)
    s = saved(A, {"blob": "x" * 500})
    assert B.load(s.id) is not None
    before, reads = received(B), gets(clustered)
    s["blob"] = "y" * 500
    A.save(s)  # too large to travel: B evicts
    wait_received(B, before)
    assert B.load(s.id)["blob"] == "y" * 500
    assert gets(clustered) == reads + 1
    assert sync_store(B)._cache.replaced == 0


def test_an_update_never_installs_an_older_version(clustered: ClusteredBackend) -> None:
    A, B = update_nodes(clustered)
    s = saved(A, {"v": 1})
    for v in (2, 3):
        s["v"] = v
        A.save(s)
    assert B.load(s.id)["v"] == 3
    serializer = sync_store(A).serializer
    old = Session(s.id, {"v": "old"}, ttl=s.ttl, new=False, version=s.version - 1)
    same = Session(s.id, {"v": "same version"}, ttl=s.ttl, new=False, version=s.version)
    for stale in (old, same):  # late or reordered messages carrying older (or equal) versions
        before = received(B)
        clustered.client.publish(clustered.channel, encode_message(
            INVALIDATED, s.id, "elsewhere/1", stale.version, s.ttl, payload=serializer.encode(stale),
        ))
        wait_received(B, before)
        assert B.load(s.id)["v"] == 3  # evicted, read again: never the older copy
    assert sync_store(B)._cache.replaced == 0


def test_an_update_that_does_not_decode_only_evicts(clustered: ClusteredBackend) -> None:
    A, B = update_nodes(clustered)
    s = saved(A, {"v": 1})
    assert B.load(s.id)["v"] == 1
    before = received(B)
    clustered.client.publish(clustered.channel, encode_message(INVALIDATED, s.id, "elsewhere/1", 99, s.ttl, payload=b"garbage"))
    wait_received(B, before)
    assert B.cache_stats().size == 0
    assert B.load(s.id)["v"] == 1


def test_a_session_read_on_two_nodes_alternately_stays_local(clustered: ClusteredBackend) -> None:
    A, B = update_nodes(clustered)
    s = saved(A, {"n": 0})
    assert B.load(s.id)["n"] == 0
    before = gets(clustered)
    for n in range(1, 21):  # read-modify-write on alternate nodes, as behind a load balancer
        node, other = (A, B) if n % 2 else (B, A)
        got = node.load(s.id)
        assert got["n"] == n - 1
        got["n"] = n
        node.save(got)
        barrier(node, other)  # the update reached the other node
    assert gets(clustered) == before  # every read was local
    assert A.load(s.id)["n"] == B.load(s.id)["n"] == 20


def test_a_copy_read_right_after_the_creation_survives_its_message(nodes: Nodes) -> None:
    # the creation's message may arrive after B read the new session: it must not evict it
    A, B, _, _, _ = nodes
    before = created(B)
    s = saved(A, {"v": 1})
    assert B.load(s.id)["v"] == 1
    wait_created(B, before)
    reads = redis_command_calls(nodes.raw, "pttl")
    assert B.load(s.id)["v"] == 1
    assert redis_command_calls(nodes.raw, "pttl") == reads


@pytest.fixture(params=[pytest.param(("clustered", "asyncio"), id="clustered-asyncio")])
def async_clustered(request: pytest.FixtureRequest) -> Iterator[ClusteredBackend]:
    """The asyncio clustered store alone: cancellation has no sync counterpart."""
    backend = make_backend(request, *request.param)
    assert isinstance(backend, ClusteredBackend)
    yield backend
    backend.close()


def test_a_cancelled_read_leaves_its_followers_to_read_on_their_own(async_clustered: ClusteredBackend) -> None:
    clustered = async_clustered
    store = clustered.make()
    s = saved(store, {"v": 1})
    store.evict_from_cache(s.id)
    target = sync_store(store)
    release = threading.Event()
    held = hold_after(store, GET_PTTL, lambda: release.wait(10))  # the leader's reply is held

    async def scenario() -> tuple[bool, list[Any]]:
        leader = asyncio.ensure_future(target.load(s.id))
        while target._cache.flights.get(s.id) is None:
            await asyncio.sleep(0.001)
        waiting = [asyncio.ensure_future(target.load(s.id)) for _ in range(2)]
        while target._cache.flights.get(s.id).followers < 2 or not held:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.01)  # the hold's thread started: the leader awaits it
        leader.cancel()
        try:
            await leader
        except asyncio.CancelledError:
            cancelled = True
        else:
            cancelled = False
        results = await asyncio.gather(*waiting)
        return cancelled, results

    try:
        cancelled, results = clustered.loop.run(scenario())
    finally:
        release.set()
    assert cancelled
    assert [r["v"] for r in results] == [1, 1]  # they read again (the held reply was the leader's only)


# --- warm peers: every node keeps what any node reads or writes ------------------------------

WARM = {**UPDATE, "warm_peers": True}


def warmed(store: Any) -> int:
    return int(sync_store(store)._cache.warmed)


def fills(store: Any) -> int:
    return int(store.coordinator.stats.fills)


def test_warm_peers_a_miss_on_one_node_fills_the_other(clustered: ClusteredBackend) -> None:
    A, B = (clustered.make(name=n, cluster=WARM) for n in "AB")
    writer = clustered.make(name="W")  # not warm: its creation message carries nothing
    s = saved(writer, {"v": 1})
    before_fills, reads = fills(B), gets(clustered)
    assert A.load(s.id)["v"] == 1  # a miss: one GET, whose script publishes the value read
    assert gets(clustered) == reads + 1
    wait_until(lambda: fills(B) > before_fills, 5.0, what="B applying A's filled message")
    got = B.load(s.id)
    assert got["v"] == 1 and got.version == s.version
    assert gets(clustered) == reads + 1  # B answered from its cache: no second GET
    assert warmed(B) == 1 and warmed(A) == 0  # a node ignores its own filled message
    # An unnumbered message on a numbered channel: no gap, no flush; the next write still applies.
    assert B.coordinator.stats.gaps == 0 and B.coordinator.stats.full_flushes == 0
    before = received(B)
    s["v"] = 2
    writer.save(s)
    wait_received(B, before)
    assert B.load(s.id)["v"] == 2
    assert B.coordinator.stats.gaps == 0


def test_warm_peers_a_new_session_is_cached_on_every_node(clustered: ClusteredBackend) -> None:
    A, B = (clustered.make(name=n, cluster=WARM) for n in "AB")
    before, reads = created(B), gets(clustered)
    s = saved(A, {"v": "new"})
    wait_created(B, before)
    assert B.load(s.id)["v"] == "new" and gets(clustered) == reads  # no GET anywhere
    assert warmed(B) == 1


def test_warm_peers_an_update_adds_the_session_where_it_was_not_cached(clustered: ClusteredBackend) -> None:
    A, B = (clustered.make(name=n, cluster=WARM) for n in "AB")
    s = saved(clustered.make(name="W"), {"v": 1})
    loaded = A.load(s.id)
    wait_until(lambda: fills(B) > 0, 5.0, what="B applying A's filled message")
    sync_store(B).clear_local_cache()  # B no longer holds it
    before, reads = received(B), gets(clustered)
    loaded["v"] = 2
    A.save(loaded)  # update mode: the value travels; B adds it
    wait_received(B, before)
    assert B.load(s.id)["v"] == 2 and gets(clustered) == reads
    assert warmed(B) == 2  # the first by A's filled message, the second by its update


def test_warm_peers_a_filled_message_keeps_a_cached_copy(clustered: ClusteredBackend) -> None:
    B = clustered.make(name="B", cluster=WARM)
    s = saved(clustered.make(name="W"), {"v": 1})
    assert B.load(s.id)["v"] == 1  # cached on B
    other = Session(s.id, {"v": "other"}, ttl=s.ttl, new=False, version=s.version + 1)
    before = fills(B)
    clustered.client.publish(clustered.channel, complete_fill(
        fill_prefix(s.id, "elsewhere/1"), 60, sync_store(B).serializer.encode(other),
    ))
    wait_until(lambda: fills(B) > before, 5.0, what="B applying the filled message")
    assert warmed(B) == 0 and B.load(s.id)["v"] == 1  # kept: a read changes nothing, its copy is as new


def test_warm_peers_values_that_do_not_decode_or_are_too_large_are_not_added(clustered: ClusteredBackend) -> None:
    A, B = (clustered.make(name=n, cluster={**WARM, "update_max_bytes": 300}) for n in "AB")
    big = saved(clustered.make(name="W"), {"blob": "x" * 500})
    before_publish = redis_command_calls(clustered.client, "publish")
    A.load(big.id)  # larger than update_max_bytes: read, not shared
    assert redis_command_calls(clustered.client, "publish") == before_publish
    sid = new_session_id()
    prefix = fill_prefix(sid, "elsewhere/1")
    before = fills(B)
    for payload in (b"\x00garbage", b"\x92\x01\x02"):  # not a session envelope
        clustered.client.publish(clustered.channel, complete_fill(prefix, 60, payload))
    wait_until(lambda: fills(B) >= before + 2, 5.0, what="B applying the planted messages")
    assert warmed(B) == 0 and B.cache_stats().size == 0


def test_a_node_without_warm_peers_ignores_filled_messages(clustered: ClusteredBackend) -> None:
    A = clustered.make(name="A", cluster=WARM)
    B = clustered.make(name="B", cluster=UPDATE)  # update mode only
    s = saved(clustered.make(name="W"), {"v": 1})
    A.load(s.id)
    time.sleep(0.2)  # the filled message has reached B by now (loopback)
    assert warmed(B) == 0 and B.cache_stats().size == 0 and fills(B) == 0
