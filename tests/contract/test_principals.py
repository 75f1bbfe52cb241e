"""Log out everywhere: ``bind`` / ``sessions_of`` / ``delete_all`` on every store kind, both
flavours (``backend``), the Redis index behind them (``redis_backend``) and two nodes
(``nodes``): another node's cached copy is gone after ``delete_all``."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest

from fastsess import Session
from fastsess._core.principals import BATCH, COVER, INDEX_ADD, PRINCIPAL_KEY, index_key
from fastsess.errors import InvalidSessionId
from fastsess.stores.base import new_session_id

from .conftest import Backend, Nodes, RedisBackend, barrier, hold_after, redis_command_calls, sync_store


def bound(store: Any, principal: str, data: dict[str, Any] | None = None, **kw: Any) -> Session:
    """A session bound to ``principal``, then saved (the documented order)."""
    s = store.create(dict(data or {"a": 1}), **kw)
    store.bind(s, principal)
    assert store.save(s) is True
    return s


def test_bind_lists_the_live_sessions_of_a_principal(backend: Backend) -> None:
    store = backend.make()
    mine = [bound(store, "user-1") for _ in range(3)]
    other = bound(store, "user-2")
    unbound = store.create({"x": 1})
    store.save(unbound)
    assert sorted(store.sessions_of("user-1")) == sorted(s.id for s in mine)
    assert store.sessions_of("user-2") == [other.id]
    assert store.sessions_of("nobody") == []
    assert store.load(mine[0].id)[PRINCIPAL_KEY][0] == "user-1"  # the principal is saved with the session
    # a deleted session is no longer listed (its entry is dropped on the way)
    assert store.delete(mine[0].id)
    assert sorted(store.sessions_of("user-1")) == sorted(s.id for s in mine[1:])
    # the index is not a session: count, iter_ids and clear see sessions only
    assert store.count() == 4
    assert sorted(store.iter_ids()) == sorted([s.id for s in mine[1:]] + [other.id, unbound.id])


def test_expired_sessions_are_not_listed(backend: Backend) -> None:
    store = backend.make(ttl=100)
    short = bound(store, "oscar", ttl=5)
    long = bound(store, "oscar")
    if isinstance(backend, RedisBackend):
        backend.client.delete(store.prefix + short.id)  # Redis expired it (its TTL is real time)
    else:
        backend.age(short, 6)
    assert store.sessions_of("oscar") == [long.id]


def test_delete_all_logs_a_principal_out_everywhere(backend: Backend) -> None:
    store = backend.make()
    mine = [bound(store, "42") for _ in range(4)]
    other = bound(store, "43")
    assert store.delete_all("42") == 4
    for s in mine:
        assert store.load(s.id) is None and not store.exists(s.id)
    assert store.sessions_of("42") == []
    assert store.load(other.id) is not None and store.sessions_of("43") == [other.id]
    assert store.delete_all("42") == 0  # nothing left: nothing to do
    # a late save or regenerate of a session logged out meanwhile does not bring it back
    mine[0]["b"] = 2
    assert store.save(mine[0]) is False
    assert store.load(mine[0].id) is None
    old_id = mine[1].id
    store.regenerate(mine[1])
    assert mine[1].id == old_id and store.count() == 1 and store.sessions_of("42") == []


def test_delete_all_keeps_except_id(backend: Backend) -> None:
    store = backend.make()
    current, *others = [bound(store, "alice") for _ in range(3)]
    assert store.delete_all("alice", except_id=current.id) == 2
    assert store.sessions_of("alice") == [current.id]
    assert store.load(current.id) is not None
    assert all(store.load(s.id) is None for s in others)
    assert store.delete_all("alice", except_id="not an id") == 1  # a malformed except_id keeps nothing
    assert store.load(current.id) is None


def test_principal_and_session_are_validated(backend: Backend) -> None:
    store = backend.make()
    s = store.create({"a": 1})
    for bad, error, words in (
        (42, TypeError, "must be a str"),
        (None, TypeError, "must be a str"),
        (b"42", TypeError, "must be a str"),
        ("", ValueError, "must not be empty"),
        ("x" * 1025, ValueError, "at most 1024"),
        ("\udcff", ValueError, "valid Unicode"),
    ):
        for call in (lambda p: store.bind(s, p), store.sessions_of, store.delete_all):
            with pytest.raises(error, match=words):
                call(bad)
    assert PRINCIPAL_KEY not in s  # a refused bind changes nothing
    store.bind(s, "x" * 1024)  # the longest principal allowed
    assert store.save(s) and store.sessions_of("x" * 1024) == [s.id]
    hand_made = Session("../etc*", {}, ttl=60)
    with pytest.raises(InvalidSessionId):
        store.bind(hand_made, "user")
    assert store.sessions_of("user") == []


def test_binding_to_another_principal_unbinds_it_from_the_first(backend: Backend) -> None:
    store = backend.make()
    s = bound(store, "mia")
    store.bind(s, "noah")
    assert store.save(s) is True
    assert store.sessions_of("mia") == [] and store.sessions_of("noah") == [s.id]
    assert store.delete_all("mia") == 0 and store.load(s.id) is not None


def test_regenerate_moves_the_index_entry(backend: Backend) -> None:
    store = backend.make()
    s = bound(store, "bob")
    old_id = s.id
    store.regenerate(s)
    assert s.id != old_id
    assert store.sessions_of("bob") == [s.id]
    assert store.delete_all("bob") == 1
    assert store.load(s.id) is None and store.load(old_id) is None


def test_bind_before_the_first_save_and_regenerate_of_a_new_session(backend: Backend) -> None:
    store = backend.make()
    s = store.create()
    store.bind(s, "carol")
    store.regenerate(s)  # never saved: just a new id, nothing written
    assert store.sessions_of("carol") == []  # nothing stored yet
    assert store.save(s) is True  # the first save indexes the id it writes
    assert store.sessions_of("carol") == [s.id]


def test_a_login_racing_delete_all_stays_bound(backend: Backend) -> None:
    """bind, then a delete_all elsewhere (it finds the entry but no session yet), then the
    first save: the new session is in the index again, for the next delete_all."""
    store = backend.make()
    s = store.create({"a": 1})
    store.bind(s, "liz")
    assert store.delete_all("liz") == 0
    assert store.save(s) is True and s.modified is False
    assert store.sessions_of("liz") == [s.id]
    assert store.delete_all("liz") == 1


def test_a_regenerate_racing_delete_all_leaves_no_session_out_of_the_index(redis_backend: RedisBackend) -> None:
    """regenerate indexes the new id, a delete_all elsewhere removes that entry before the
    move writes the key: whatever the move then does, a session that exists is listed."""
    store, other = redis_backend.make(), redis_backend.make()
    s = bound(store, "pia")
    hold_after(store, INDEX_ADD, lambda: other.delete_all("pia"))
    store.regenerate(s)
    assert store.exists(s.id) == (s.id in store.sessions_of("pia"))
    store.delete_all("pia")
    assert not store.exists(s.id)


def test_saves_keep_a_bound_session_indexed_past_its_first_cover(backend: Backend) -> None:
    """An entry covers its session for COVER TTLs; a later save extends it, so a trim by a
    newer bind never drops a session that saves kept alive."""
    store = backend.make(ttl=100)
    s = bound(store, "dave")
    for seen in (1, 2):  # saves every 90 s keep it alive; the second one (at 180 s) would
        backend.age(s, 90)  # make it outlive its cover (200 s): it is re-indexed first
        s["seen"] = seen
        assert store.save(s) is True
    backend.age(s, 30)  # past the first cover, before the session's expiry (280 s)
    newer = bound(store, "dave")  # trims ended entries
    assert sorted(store.sessions_of("dave")) == sorted([s.id, newer.id])
    assert store.delete_all("dave") == 2


def test_a_session_kept_alive_by_touch_stays_bound(backend: Backend) -> None:
    store = backend.make(ttl=10)
    gone, touched = bound(store, "erin"), bound(store, "erin")
    backend.age(gone, 8)
    assert store.touch(touched.id, 100)  # no save: its index entry keeps its first cover (20 s)
    store.delete(gone.id)
    backend.age(gone, COVER * 10 - 8 + 1)  # past both covers
    fresh = bound(store, "erin")  # trims ended entries: drops gone's, keeps touched's
    assert sorted(store.sessions_of("erin")) == sorted([touched.id, fresh.id])
    assert store.delete_all("erin") == 2


def test_touch_renews_a_bound_sessions_index_entry(redis_backend: RedisBackend) -> None:
    """A session kept alive by ``touch`` alone, with no save and no other ``bind``: its entry
    and the index key outlive it, so ``delete_all`` still finds it after its first cover."""
    store = redis_backend.make(ttl=10)
    key = index_key(sync_store(store)._keys, "judy")
    kept, plain = bound(store, "judy"), store.create({"p": 1})
    assert store.save(plain)
    assert redis_backend.client.pttl(key) <= COVER * 10 * 1000  # the first cover: 20 s
    redis_backend.age(kept, 8)
    assert store.touch(kept.id, 1000)
    assert store.touch(plain.id, 1000)  # not bound: no index is made for it
    entries = dict(redis_backend.client.zrange(key, 0, -1, withscores=True))
    assert entries[kept.id.encode()] >= redis_backend.now() + COVER * 1000 - 1  # covers twice the new TTL
    assert redis_backend.client.pttl(key) > (COVER * 1000 - 5) * 1000  # and the index key lives as long
    assert redis_backend.client.pttl(store.prefix + kept.id) > 990_000
    assert len(redis_backend.client.keys(store.prefix + "principal:*")) == 1
    # the first cover (and the key's first life) would have ended here: it is still listed
    redis_backend.age(kept, COVER * 10 + 1)
    assert store.sessions_of("judy") == [kept.id]
    assert store.touch(kept.id, 5)  # a shorter TTL keeps the longer cover
    assert dict(redis_backend.client.zrange(key, 0, -1, withscores=True))[kept.id.encode()] >= entries[kept.id.encode()]
    assert store.delete_all("judy") == 1
    assert store.load(kept.id) is None and store.load(plain.id) is not None


def test_touch_of_an_unreadable_value_still_extends_it(redis_backend: RedisBackend) -> None:
    """A value this store cannot decode (another tool's, planted) is touched as before."""
    store = redis_backend.make(ttl=10)
    planted = new_session_id()
    redis_backend.client.set(store.prefix + planted, b"not a session", ex=10)
    assert store.touch(planted, 500)
    assert redis_backend.client.pttl(store.prefix + planted) > 490_000
    hashed = new_session_id()
    redis_backend.client.hset(store.prefix + hashed, "x", "1")  # not even a string
    assert store.touch(hashed, 500)
    assert redis_backend.client.pttl(store.prefix + hashed) > 490_000
    assert store.touch(new_session_id(), 500) is False


def test_a_bind_trims_by_what_redis_holds(redis_backend: RedisBackend) -> None:
    store = redis_backend.make(ttl=10)
    key = index_key(sync_store(store)._keys, "ivan")
    expired, touched = bound(store, "ivan"), bound(store, "ivan")
    redis_backend.client.delete(store.prefix + expired.id)  # as if it had expired
    assert redis_backend.client.expire(store.prefix + touched.id, 1000)  # kept alive by another tool
    redis_backend.age(touched, COVER * 10 + 1)
    fresh = bound(store, "ivan")
    entries = dict(redis_backend.client.zrange(key, 0, -1, withscores=True))
    assert sorted(entries) == sorted(s.id.encode() for s in (touched, fresh))  # the expired one's dropped
    assert abs(entries[touched.id.encode()] - (redis_backend.now() + 1000)) < 3  # covered until its expiry
    assert redis_backend.client.pttl(key) > 990_000  # and the index lives as long


def test_many_sessions_in_bounded_batches(backend: Backend) -> None:
    """10,000 sessions of one principal: listed and deleted BATCH at a time."""
    store = backend.make()
    n = 10 * BATCH
    ids = seed(backend, store, "busy", n)
    keep = ids[0]
    started = time.perf_counter()
    assert len(set(store.sessions_of("busy"))) == n
    before = redis_command_calls(backend.client, "zrem") if isinstance(backend, RedisBackend) else 0
    unlinks = redis_command_calls(backend.client, "unlink") if isinstance(backend, RedisBackend) else 0
    published = store.coordinator.stats.published if backend.kind == "clustered" else 0
    assert store.delete_all("busy", except_id=keep) == n - 1
    elapsed = time.perf_counter() - started
    assert store.sessions_of("busy") == [keep]
    assert store.count() == 1
    if isinstance(backend, RedisBackend):
        # one script per batch: it removes the batch from the index (one ZREM) and returns the next;
        # a batch holding except_id deletes BATCH - 1
        scripts = redis_command_calls(backend.client, "zrem") - before
        assert n // BATCH <= scripts <= n // BATCH + 1
        # on one Redis each batch is one script: one UNLINK of its keys, with the ZREM
        assert redis_command_calls(backend.client, "unlink") - unlinks == scripts
        if backend.kind == "clustered":  # one message per batch
            assert store.coordinator.stats.published - published == scripts
    print(f"{backend}: listed and deleted {n} sessions in {elapsed:.2f} s")


def seed(backend: Backend, store: Any, principal: str, n: int) -> list[str]:
    """``n`` sessions bound to ``principal``: through the store for memory, else written
    straight into Redis (one pipeline) as ``bind`` + ``save`` would."""
    if not isinstance(backend, RedisBackend):
        sessions = [store.create({"i": i}) for i in range(n)]
        for s in sessions:
            store.bind(s, principal)
        backend.save_all(store, sessions)
        return [s.id for s in sessions]
    inner = sync_store(store)
    key = index_key(inner._keys, principal)
    pipe = backend.client.pipeline(transaction=False)
    ids = []
    for i in range(n):
        s = Session(new_session_id(), {"i": i, PRINCIPAL_KEY: [principal, "", 0]}, ttl=store.ttl, new=False)
        pipe.set(store.prefix + s.id, inner.serializer.encode(s), ex=store.ttl)
        pipe.zadd(key, {s.id: backend.now() + COVER * store.ttl})
        ids.append(s.id)
    pipe.execute()
    return ids


# --- the Redis index -------------------------------------------------------------------------


def test_the_index_key_expires_after_its_sessions(redis_backend: RedisBackend) -> None:
    store = redis_backend.make(ttl=100)
    s = bound(store, "frank")
    key = index_key(sync_store(store)._keys, "frank")
    assert key == store.prefix + "principal:" + hashlib.sha256(b"frank").hexdigest()  # not the user id
    assert redis_backend.client.type(key) == b"zset"
    assert 199_000 < redis_backend.client.pttl(key) <= 200_000  # COVER x the session's TTL
    assert redis_backend.client.zscore(key, s.id) == pytest.approx(redis_backend.now() + COVER * 100)
    bound(store, "frank", ttl=10)  # a shorter session never shortens it
    assert 199_000 < redis_backend.client.pttl(key) <= 200_000
    bound(store, "frank", ttl=1000)
    assert 1_999_000 < redis_backend.client.pttl(key) <= 2_000_000
    assert store.touch(s.id, 3000)  # touch renews the bound session's entry: the key lives longer too
    assert 5_999_000 < redis_backend.client.pttl(key) <= 6_000_000
    # a session that expired in Redis is not listed, and its entry is dropped
    redis_backend.client.delete(store.prefix + s.id)
    assert s.id not in store.sessions_of("frank")
    assert redis_backend.client.zcard(key) == 2


def test_a_bind_looks_at_1000_ended_entries_at_most(redis_backend: RedisBackend) -> None:
    store = redis_backend.make(ttl=10)
    key = index_key(sync_store(store)._keys, "kim")
    ended = {new_session_id(): redis_backend.now() - 1 for _ in range(BATCH + 500)}  # sessions long gone
    redis_backend.client.zadd(key, ended)
    bound(store, "kim")
    assert redis_backend.client.zcard(key) == 500 + 1
    bound(store, "kim")
    assert redis_backend.client.zcard(key) == 2


def test_at_most_one_save_in_two_renews_the_index_entry(redis_backend: RedisBackend) -> None:
    store = redis_backend.make(ttl=100)
    s = bound(store, "jane")
    before = redis_command_calls(redis_backend.client, "zadd")
    for i in range(8):  # saves as far apart as a session allows (just under its TTL)
        redis_backend.age(s, 99)
        s["i"] = i
        assert store.save(s)
    renewals = redis_command_calls(redis_backend.client, "zadd") - before
    assert renewals == 4
    redis_backend.age(s, 99)
    assert bound(store, "jane").id in store.sessions_of("jane") and s.id in store.sessions_of("jane")


def test_delete_all_on_a_plain_store_publishes_nothing(plain_redis: RedisBackend) -> None:
    store = plain_redis.make()
    for _ in range(3):
        bound(store, "gina")
    before = redis_command_calls(plain_redis.client, "publish")
    assert store.delete_all("gina") == 3
    assert redis_command_calls(plain_redis.client, "publish") == before


# --- two nodes -----------------------------------------------------------------------------------


def test_delete_all_drops_every_nodes_cached_copy(nodes: Nodes) -> None:
    A, B = nodes.A, nodes.B
    sessions = [bound(A, "henry", {"n": i}) for i in range(5)]
    current = sessions[0]
    for s in sessions:  # B caches them
        assert B.load(s.id) is not None
        assert B.load(s.id) is not None
    assert B.cache_stats().hits >= 5
    cache = sync_store(B)._cache
    assert all(cache.get(s.id) is not None for s in sessions)
    barrier(A, B)  # B has applied everything A published so far
    before = B.coordinator.stats.received
    assert A.delete_all("henry", except_id=current.id) == 4
    barrier(A, B)  # ... and now everything delete_all published
    assert B.coordinator.stats.received == before + 2  # one message for the batch, one marker
    assert all(cache.get(s.id) is None for s in sessions[1:])
    assert all(B.load(s.id) is None for s in sessions[1:])
    assert cache.get(current.id) is not None and B.load(current.id) is not None
    assert A.sessions_of("henry") == B.sessions_of("henry") == [current.id]
