"""warm_peers against this node's own writes: a peer's message published *before* this
node's write, and delivered to this node's (lagging) listener *after* the write returned,
must not put back what the write removed or replaced.

The writer's own echo is not applied to its cache (the write already did that), so no
later message would ever evict such a copy: a deleted (logged-out) session would be
served again by the very node that deleted it, for as long as its local lifetime.
The lag is real: the writer's pub/sub connection goes through a TCP proxy that delays
what the server sends on it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import fastsess.asyncio
from fastsess import ClusterConfig, ClusteredRedisStore, Session

from ..tcpproxy import TcpProxy
from .conftest import FAST, StoreFactory, wait_until

WARM: dict[str, Any] = {"update_max_bytes": 4096, "warm_peers": True}
LAG = 0.4  # seconds the writer's listener hears everything late


@pytest.fixture
def proxy(redis_server: Any) -> Iterator[TcpProxy]:
    p = TcpProxy(redis_server.port)
    yield p
    p.close()


def lagging(make_store: StoreFactory, proxy: TcpProxy) -> ClusteredRedisStore:
    """A warm store whose listener hears the channel ``LAG`` seconds late."""
    store = make_store(proxy.url, name="A", subscribe_timeout=3.0, **WARM)
    assert store.coordinator is not None and store.coordinator.wait_subscribed(5.0)
    links = proxy.find(b"SUBSCRIBE")
    assert len(links) == 1
    links[0].delay_down = LAG
    return store


def fills(store: ClusteredRedisStore) -> int:
    assert store.coordinator is not None
    return int(store.coordinator.stats.fills)


def settle(store: ClusteredRedisStore, before: int) -> None:
    """Until the lagging listener applied the peer's filled message, and then its own echo."""
    wait_until(lambda: fills(store) > before, 5.0, what="the late filled message")
    time.sleep(LAG)


def raced(make_store: StoreFactory, proxy: TcpProxy, redis_url: str, data: dict[str, Any]) -> tuple[ClusteredRedisStore, ClusteredRedisStore, Session]:
    """A lagging warm node A, a warm node B, and a session holding ``data`` that a third
    node, not warm (its creation message carries nothing), created; A has heard the creation."""
    A = lagging(make_store, proxy)
    B = make_store(redis_url, name="B", **WARM)
    W = make_store(redis_url, name="W")
    for store in (B, W):
        assert store.coordinator is not None and store.coordinator.wait_subscribed(5.0)
    s = W.create(data)
    assert W.save(s)
    time.sleep(LAG + 0.1)  # the creation message reached A
    return A, B, s


def test_a_peers_fill_delivered_after_this_nodes_delete_does_not_bring_the_session_back(
    make_store: StoreFactory, proxy: TcpProxy, redis_url: str,
) -> None:
    A, B, s = raced(make_store, proxy, redis_url, {"user": "alice"})
    before = fills(A)
    assert B.load(s.id)["user"] == "alice"  # a miss on B: its script publishes the value
    assert A.delete(s.id) is True  # logout on A, before A's listener hears B's fill
    settle(A, before)
    assert A.load(s.id) is None, "the deleted session came back on the node that deleted it"
    assert B.load(s.id) is None


def test_a_peers_fill_delivered_after_this_nodes_save_does_not_replace_it(
    make_store: StoreFactory, proxy: TcpProxy, redis_url: str,
) -> None:
    A, B, s = raced(make_store, proxy, redis_url, {"v": 1})
    before = fills(A)
    assert B.load(s.id)["v"] == 1  # B's fill carries v=1
    mine = A.load(s.id)
    mine["v"] = 2
    assert A.save(mine) is True  # v=2 in Redis and in A's cache
    A.evict_from_cache(s.id)  # the LRU dropped it (or any other reason): a later read must not get v=1
    settle(A, before)
    got = A.load(s.id)
    assert got is not None and got["v"] == 2, "a peer's older read replaced this node's newer write"


def test_a_peers_update_delivered_after_this_nodes_delete_does_not_bring_the_session_back(
    make_store: StoreFactory, proxy: TcpProxy, redis_url: str, redis_client: redis.Redis,
) -> None:
    A = lagging(make_store, proxy)
    B = make_store(redis_url, name="B", **WARM)
    for store in (B,):
        assert store.coordinator is not None and store.coordinator.wait_subscribed(5.0)
    s = B.create({"v": 1})
    assert B.save(s)
    time.sleep(LAG + 0.1)
    A.evict_from_cache(s.id)
    s["v"] = 2
    assert B.save(s) is True  # an update message carrying v=2 ...
    assert A.delete(s.id) is True  # ... published before A's delete, heard by A after it
    time.sleep(2 * LAG + 0.1)
    assert redis_client.exists(A._keys.key(s.id)) == 0
    assert A.load(s.id) is None, "the deleted session came back on the node that deleted it"


def test_a_peers_fill_delivered_after_this_nodes_clear_does_not_bring_the_session_back(
    make_store: StoreFactory, proxy: TcpProxy, redis_url: str,
) -> None:
    A, B, s = raced(make_store, proxy, redis_url, {"user": "alice"})
    before = fills(A)
    assert B.load(s.id)["user"] == "alice"
    A.clear()  # every session gone, before A's listener hears B's fill
    settle(A, before)
    assert A.load(s.id) is None, "a cleared session came back on the node that cleared"


def test_a_peers_fill_delivered_after_this_nodes_regenerate_does_not_bring_the_old_id_back(
    make_store: StoreFactory, proxy: TcpProxy, redis_url: str,
) -> None:
    A, B, s = raced(make_store, proxy, redis_url, {"user": "alice"})
    old = s.id
    before = fills(A)
    assert B.load(old)["user"] == "alice"
    mine = A.load(old)
    new = A.regenerate(mine)  # the old id is gone (login: session fixation defence)
    assert new.id != old
    settle(A, before)
    assert A.load(old) is None, "the old id of a regenerated session came back on the node that regenerated it"


def test_asyncio_a_peers_fill_delivered_after_this_nodes_delete_does_not_bring_the_session_back(
    make_store: StoreFactory, proxy: TcpProxy, redis_url: str,
) -> None:
    B = make_store(redis_url, name="B", **WARM)
    W = make_store(redis_url, name="W")
    for store in (B, W):
        assert store.coordinator is not None and store.coordinator.wait_subscribed(5.0)

    async def run() -> Any:
        config = ClusterConfig(node_id=f"A-{uuid.uuid4().hex[:8]}", channel=make_store.channel, **{**FAST, **WARM, "subscribe_timeout": 3.0})
        A = fastsess.asyncio.ClusteredRedisStore(url=proxy.url, config=config, prefix=make_store.prefix)
        try:
            assert A.coordinator is not None and await A.coordinator.start(timeout=5.0)
            links = proxy.find(b"SUBSCRIBE")
            assert len(links) == 1
            links[0].delay_down = LAG
            s = W.create({"user": "alice"})
            assert W.save(s)
            await asyncio.sleep(LAG + 0.1)
            before = fills(A)  # type: ignore[arg-type]
            assert B.load(s.id)["user"] == "alice"
            assert await A.delete(s.id) is True
            await asyncio.to_thread(settle, A, before)
            return await A.load(s.id)
        finally:
            await A.close()

    assert asyncio.run(run()) is None, "the deleted session came back on the node that deleted it"


# --- stores of another key prefix on the same channel ---------------------------------------


def test_a_store_of_another_prefix_on_the_same_channel_adds_nothing(make_store: StoreFactory, redis_url: str) -> None:
    """Two applications (key prefixes) on one Redis keep the default channel.  A session id
    valid in one must not become valid in the other: its fill, creation or update must not
    be added by a store of the other prefix (that store's Redis holds no such key)."""
    A = make_store(redis_url, name="A", **WARM)  # prefix: the test's
    other = make_store(redis_url, name="O", store_kwargs={"prefix": make_store.prefix + "other:"}, **WARM)
    W = make_store(redis_url, name="W")  # not warm: its creation carries nothing
    for store in (A, other, W):
        assert store.coordinator is not None and store.coordinator.wait_subscribed(5.0)
    assert other.prefix != A.prefix and other.config.channel == A.config.channel
    s = W.create({"user_id": 42})
    assert W.save(s)
    before = fills(other)
    assert A.load(s.id)["user_id"] == 42  # A's miss publishes a fill
    wait_until(lambda: fills(other) > before, 5.0, what="the other store hearing the fill")
    assert other.load(s.id) is None, "a session of another prefix was served"
    created_before = other.coordinator.stats.created  # type: ignore[union-attr]
    t = A.create({"user_id": 7})
    assert A.save(t)  # a creation carrying the value
    wait_until(lambda: other.coordinator.stats.created > created_before, 5.0, what="the creation")  # type: ignore[union-attr]
    assert other.load(t.id) is None, "a session created under another prefix was served"
    received_before = other.coordinator.stats.received  # type: ignore[union-attr]
    t["user_id"] = 8
    assert A.save(t)  # an update carrying the value
    wait_until(lambda: other.coordinator.stats.received > received_before, 5.0, what="the update")  # type: ignore[union-attr]
    assert other.load(t.id) is None, "a session updated under another prefix was served"


# --- stale_if_error: a logout that failed stays effective ------------------------------------


def test_with_stale_if_error_a_failed_logout_is_not_undone_by_a_peers_fill(
    make_store: StoreFactory, proxy: TcpProxy, redis_url: str,
) -> None:
    """A's commands cannot reach Redis (its listener still can): its delete of a session
    fails, which drops A's copy so that the stale path never serves it.  A peer's later fill
    of that session (Redis still holds it) must not put it back, to be served stale."""
    from fastsess.errors import FastsessError

    A = make_store(proxy.url, name="A", stale_if_error=30, store_kwargs={"socket_timeout": 0.3, "retries": 0}, **WARM)
    B = make_store(redis_url, name="B", **WARM)
    W = make_store(redis_url, name="W")
    for store in (A, B, W):
        assert store.coordinator is not None and store.coordinator.wait_subscribed(5.0)
    s = W.create({"user": "alice"})
    assert W.save(s)
    assert A.load(s.id)["user"] == "alice"  # cached on A
    proxy.blackhole_clients(b"EVALSHA")  # A's commands (every script call) are lost from now on
    with pytest.raises(FastsessError):
        A.delete(s.id)  # the logout: its outcome unknown
    time.sleep(0.6)  # a few heartbeats: A's listener has heard well past the failed delete
    before = fills(A)
    B.evict_from_cache(s.id)  # (B holds A's fill of its first read)
    assert B.load(s.id)["user"] == "alice"  # B reads it (the DEL never landed) and shares it
    wait_until(lambda: fills(A) > before, 5.0, what="A hearing B's fill")
    assert not A._cache.cached(s.id)  # type: ignore[union-attr]
    with pytest.raises(FastsessError):
        A.load(s.id)  # fails, with no stale copy to answer with


# --- a late message: the copy it adds must not outlive the key ---------------------------------


def test_a_fill_heard_late_does_not_outlive_the_key(make_store: StoreFactory, proxy: TcpProxy, redis_url: str, redis_client: redis.Redis) -> None:
    """A's listener hears B's fill 1.5 s late (its lease lapses meanwhile, then is proven
    again).  The fill said "3 s left" when it left Redis: A's copy must not be served
    after the key expired (an idle timeout must hold on every node)."""
    A = make_store(proxy.url, name="A", subscribe_timeout=5.0, **WARM)
    B = make_store(redis_url, name="B", **WARM)
    for store in (A, B):
        assert store.coordinator is not None and store.coordinator.wait_subscribed(5.0)
    W = make_store(redis_url, name="W")
    s = W.create({"user": "alice"})
    assert W.save(s)
    time.sleep(0.3)
    key = A._keys.key(s.id)
    links = proxy.find(b"SUBSCRIBE")
    assert len(links) == 1
    before = fills(A)
    redis_client.pexpire(key, 3020)  # B's read will see just over 3 s left: "e" = 3
    links[0].delay_down = 1.5
    assert B.load(s.id)["user"] == "alice"
    gone_at = time.monotonic() + 3.02  # the key expires no later than this
    time.sleep(0.05)
    links[0].delay_down = 0.0  # only what is on its way now is late
    wait_until(lambda: fills(A) > before, 5.0, what="A hearing B's fill")
    assert A._cache.cached(s.id)  # type: ignore[union-attr]
    while time.monotonic() < gone_at + 0.05:
        time.sleep(0.01)
    assert redis_client.exists(key) == 0
    wait_until(lambda: A.coordinator.subscribed, 2.0, what="A serving again")  # type: ignore[union-attr]
    assert A.load(s.id) is None, "A served a session whose key had expired"
