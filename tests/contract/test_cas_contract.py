"""Lost updates: a save of a loaded session is a compare-and-set, for every store kind and
flavour.  Two "requests" are two sessions loaded from the same stored one; the second
save finds the first's write and re-applies its own changes on top of it."""

from __future__ import annotations

from typing import Any

import pytest

import fastsess
from fastsess import MISSING, ConcurrentModification, Session
from fastsess._core.conflict import MAX_CONFLICT_RETRIES
from fastsess.errors import ConfigError

from .conftest import Backend, Nodes, RedisBackend, received, redis_command_calls, wait_received


def saved(store: Any, data: dict[str, Any]) -> Session:
    s = store.create(dict(data))
    assert store.save(s) is True
    return s


@pytest.fixture(autouse=True, params=["script", "staged"])
def write_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test twice for ``RedisStore`` on a single Redis: as shipped (these sessions are
    small: one script, ``SAVE_PLAIN``) and with every save of an existing session staged
    (``ops.STAGE_FROM`` 0: a SET of a staged copy + ``STAGED_SAVE``)."""
    from fastsess._core import ops

    if request.param == "staged":
        monkeypatch.setattr(ops, "STAGE_FROM", 0)
    return str(request.param)


def two_requests(store: Any, data: dict[str, Any]) -> tuple[Session, Session]:
    s = saved(store, data)
    a, b = store.load(s.id), store.load(s.id)
    assert a is not None and b is not None
    return a, b


def stored(store: Any, sid: str) -> dict[str, Any]:
    s = store.load(sid)
    assert s is not None
    return dict(s.data)


def test_disjoint_keys_both_kept(backend: Backend) -> None:
    store = backend.make()
    a, b = two_requests(store, {"shared": 0, "gone_a": 1, "gone_b": 2})
    a["a"] = 1
    del a["gone_a"]
    b["b"] = 2
    b.pop("gone_b")
    assert store.save(a) is True
    assert store.save(b) is True  # conflict: re-applied on a's write
    assert stored(store, a.id) == {"shared": 0, "a": 1, "b": 2}
    assert dict(b.data) == {"shared": 0, "a": 1, "b": 2}  # b now holds what was stored
    assert b.version == a.version + 1 and not b.modified and b.changes == {}
    c = store.load(a.id)
    c["c"] = 3
    assert store.save(c) is True  # no conflict left behind
    assert c.version == b.version + 1
    assert stored(store, a.id) == {"shared": 0, "a": 1, "b": 2, "c": 3}


def test_same_key_last_writer_wins_by_default(backend: Backend) -> None:
    store = backend.make()
    a, b = two_requests(store, {"cart": ["x"], "theme": "light"})
    a["cart"] = ["x", "from-a"]
    a["theme"] = "dark"
    b["cart"] = ["x", "from-b"]
    assert store.save(a) is True
    assert store.save(b) is True
    assert stored(store, a.id) == {"cart": ["x", "from-b"], "theme": "dark"}


def test_on_conflict_raise(backend: Backend) -> None:
    store = backend.make(on_conflict="raise")
    a, b = two_requests(store, {"n": 0, "other": 0})
    a["n"] = 1
    b["n"] = 2
    b["mine"] = True
    assert store.save(a) is True
    with pytest.raises(ConcurrentModification) as info:
        store.save(b)
    assert info.value.keys == ("n",)
    assert isinstance(info.value, fastsess.FastsessError)
    assert stored(store, a.id) == {"n": 1, "other": 0}  # nothing written
    assert b["n"] == 2 and b.modified and set(b.changes) == {"n", "mine"}  # b keeps its changes
    # disjoint changes, or the same change on both sides, are no conflict even with "raise"
    c, d = store.load(a.id), store.load(a.id)
    c["other"] = 1
    d["mine"] = True
    d["n"] = 1  # what c's side already holds
    assert store.save(c) is True and store.save(d) is True
    assert stored(store, a.id) == {"n": 1, "other": 1, "mine": True}


def test_merge_function_gets_base_mine_theirs(backend: Backend) -> None:
    calls: list[tuple[Any, ...]] = []

    def merge(key: str, base: Any, mine: Any, theirs: Any) -> Any:
        calls.append((key, base, mine, theirs))
        if key == "hits":
            return mine + theirs - base  # a counter: both increments count
        return MISSING  # anything else changed on both sides: drop it

    store = backend.make(on_conflict=merge)
    a, b = two_requests(store, {"hits": 10, "flash": "old"})
    a["hits"] += 1
    a["flash"] = "from-a"
    b["hits"] += 5
    b["flash"] = "from-b"
    b["only_b"] = 1
    assert store.save(a) is True
    assert store.save(b) is True
    assert sorted(calls) == [("flash", "old", "from-b", "from-a"), ("hits", 10, 15, 11)]
    assert stored(store, a.id) == {"hits": 16, "only_b": 1}


def test_merge_function_error_leaves_the_session_unsaved(backend: Backend) -> None:
    def merge(key: str, base: Any, mine: Any, theirs: Any) -> Any:
        raise LookupError("no idea")

    store = backend.make(on_conflict=merge)
    a, b = two_requests(store, {"k": 0})
    a["k"] = 1
    b["k"] = 2
    assert store.save(a) is True
    with pytest.raises(LookupError):
        store.save(b)
    assert stored(store, a.id) == {"k": 1}
    assert b["k"] == 2 and b.modified


def test_deleted_meanwhile_is_not_recreated(backend: Backend) -> None:
    store = backend.make()
    a, b = two_requests(store, {"user": 1})
    c = store.load(a.id)
    b["x"] = 1
    c["y"] = 1
    assert store.save(b) is True  # c is now behind as well
    assert store.delete(a.id) is True  # logged out
    a["late"] = True
    assert store.save(a) is False
    assert store.save(c) is False  # stale *and* deleted: still never re-created
    assert not store.exists(a.id) and store.load(a.id) is None


def test_hand_set_modified_counts_every_key(backend: Backend) -> None:
    """``modified = True`` by hand (a nested value mutated in place): on a conflict every
    key the session holds is re-applied; keys only the other request added are kept."""
    store = backend.make()
    a, b = two_requests(store, {"cart": ["x"], "seen": 1})
    a["added_by_a"] = 1
    a["seen"] = 2
    assert store.save(a) is True
    b.data["cart"].append("y")  # invisible to the mapping
    b.modified = True
    assert store.save(b) is True
    assert stored(store, a.id) == {"cart": ["x", "y"], "seen": 1, "added_by_a": 1}


def test_refresh_only_save_after_a_conflict(backend: Backend) -> None:
    """An unmodified session due for its TTL refresh also saves by compare-and-set: it
    must not write back the data it loaded over a newer write."""
    store = backend.make(ttl=100)
    a, b = two_requests(store, {"v": 1})
    a["v"] = 2
    assert store.save(a) is True
    backend.age(b, 60)  # past refresh_fraction (0.5) of the TTL
    assert store.save(b) is True
    assert stored(store, a.id) == {"v": 2}


def test_changes_are_forgotten_after_a_save(backend: Backend) -> None:
    store = backend.make()
    a, b = two_requests(store, {"k": 0})
    a["k"] = 1
    assert store.save(a) is True and a.changes == {}
    b["other"] = 1
    assert store.save(b) is True
    a["again"] = 1  # a is now behind b: its old change of "k" must not be re-applied
    assert store.save(a) is True
    assert stored(store, a.id) == {"k": 1, "other": 1, "again": 1}


def test_on_conflict_is_validated(backend: Backend) -> None:
    for bad in ("lww", 3, None):
        with pytest.raises(ConfigError):
            backend.make(on_conflict=bad)


@pytest.mark.parametrize("blob", [10, 5000, 60000])
def test_unconflicted_save_is_one_round_trip(redis_backend: RedisBackend, blob: int) -> None:
    """One script, which recognises the stored value by its first bytes (one GETRANGE): no
    GET of the whole value, whatever its size.  A plain ``RedisStore`` (a single Redis)
    sends a value of ``STAGE_FROM`` bytes or more as a staged copy (SET) that the script
    RENAMEs over the key, in the same round trip; a smaller one, or any clustered
    store's, is SET by the script itself."""
    from fastsess._core import ops

    store = redis_backend.make()
    s = saved(store, {"k": 0, "blob": "x" * blob})
    loaded = store.load(s.id)
    loaded["k"] = 0
    assert store.save(loaded) is True  # the server learns the script (NOSCRIPT, then EVAL)
    loaded["k"] = 1
    client = redis_backend.client
    commands = ("get", "getrange", "strlen", "set", "rename", "publish", "spublish")
    scripts = redis_command_calls(client, "evalsha", "eval")
    before = {c: redis_command_calls(client, c) for c in commands}
    assert store.save(loaded) is True
    after = {c: redis_command_calls(client, c) - before[c] for c in commands}
    assert redis_command_calls(client, "evalsha", "eval") - scripts == 1
    staged = redis_backend.kind == "redis" and len(loaded._base) >= ops.STAGE_FROM
    assert {c: after[c] for c in ("get", "getrange", "strlen", "set", "rename")} == {
        "get": 0, "getrange": 1, "strlen": 0, "set": 1, "rename": int(staged),
    }
    assert not [k for k in client.scan_iter(match=store.prefix + "*~*")]  # no staged copy left behind
    assert stored(store, s.id)["k"] == 1


def staged_copies(redis_backend: RedisBackend, store: Any) -> list[bytes]:
    """Staged copies (``ops.staged_key``: key + "~" + 16 hex) left in Redis."""
    return list(redis_backend.client.scan_iter(match=store.prefix + "*~*"))


def test_no_staged_copy_outlives_its_save(redis_backend: RedisBackend) -> None:
    """Written, conflicted (re-applied) or refused (the session was deleted): the staged
    copy is renamed over the key or deleted in the same script; none is left behind, and
    none counts as a session."""
    store = redis_backend.make()
    a, b = two_requests(store, {"k": 0, "blob": "x" * 3000})
    a["a"] = 1
    b["b"] = 1
    assert store.save(a) is True
    assert store.save(b) is True  # a conflict first: the staged copy of the first attempt is dropped
    assert stored(store, a.id)["a"] == stored(store, a.id)["b"] == 1
    c = store.load(a.id)
    assert store.delete(a.id) is True
    c["c"] = 1
    assert store.save(c) is False and not store.exists(a.id)
    assert staged_copies(redis_backend, store) == []
    assert store.count() == 0 and list(store.iter_ids()) == []


def test_a_server_without_the_scripts_learns_them(redis_backend: RedisBackend) -> None:
    """After SCRIPT FLUSH (or a restart) a save sends its script whole (EVAL), staged or not."""
    store = redis_backend.make()
    for blob in (10, 60000):
        s = saved(store, {"k": 0, "blob": "x" * blob})
        loaded = store.load(s.id)
        redis_backend.client.script_flush()
        loaded["k"] = 1
        assert store.save(loaded) is True
        assert stored(store, s.id)["k"] == 1
    assert staged_copies(redis_backend, store) == []


def test_conflict_costs_one_more_round_trip(redis_backend: RedisBackend) -> None:
    store = redis_backend.make()
    a, b = two_requests(store, {"k": 0})
    a["a"] = 1
    b["b"] = 1
    assert store.save(a) is True
    client = redis_backend.client
    scripts, gets = redis_command_calls(client, "evalsha", "eval"), redis_command_calls(client, "get")
    assert store.save(b) is True  # the conflict reply carries the stored value: no GET of its own
    assert redis_command_calls(client, "evalsha", "eval") - scripts == 2
    assert redis_command_calls(client, "get") - gets == 0  # read with GETRANGE: not counted as a load


def test_encrypted_values_are_compared_by_their_header(backend: Backend) -> None:
    """An encrypted value starts with a fresh random nonce per write: its length and first
    bytes identify it (no GET, no hash), and conflicts rebase as in the clear."""
    import os

    from fastsess.crypto import Encryption

    store = backend.make(encryption=Encryption([os.urandom(32)]))
    a, b = two_requests(store, {"k": 0})
    a["a"] = 1
    b["b"] = 1
    assert store.save(a) is True and store.save(b) is True
    assert b.version == a.version + 1
    assert stored(store, a.id) == {"k": 0, "a": 1, "b": 1}


def test_compressed_values_are_compared_by_digest(redis_backend: RedisBackend) -> None:
    """A compressed body's first bytes need not show its version: such values are
    compared whole (their SHA-1, computed by Redis)."""
    store = redis_backend.make(serializer=fastsess.MsgpackSerializer(compress_threshold=0))
    a, b = two_requests(store, {"k": 0})
    a["a"] = 1
    client = redis_backend.client
    reads = redis_command_calls(client, "getrange")
    assert store.save(a) is True
    assert redis_command_calls(client, "getrange") - reads == 1  # the whole value, then its SHA-1
    b["b"] = 1
    assert store.save(b) is True
    assert stored(store, a.id) == {"k": 0, "a": 1, "b": 1}


def test_retries_are_bounded(redis_backend: RedisBackend) -> None:
    """Another writer lands before every retry: after MAX_CONFLICT_RETRIES re-applications
    the save gives up with ConcurrentModification, having written nothing."""
    other = fastsess.RedisStore(url=redis_backend.url, prefix=redis_backend.prefix)
    calls = 0

    def merge(key: str, base: Any, mine: Any, theirs: Any) -> Any:
        nonlocal calls
        calls += 1
        rival = other.load(s.id)
        rival["k"] = f"rival{calls}"
        assert other.save(rival) is True  # lands before the retry
        return mine

    try:
        store = redis_backend.make(on_conflict=merge)
        s = saved(store, {"k": 0})
        a = store.load(s.id)
        rival = other.load(s.id)
        rival["k"] = "rival0"
        assert other.save(rival) is True
        a["k"] = "mine"
        with pytest.raises(ConcurrentModification) as info:
            store.save(a)
        assert info.value.keys == ()
        assert calls == MAX_CONFLICT_RETRIES
        assert stored(store, s.id) == {"k": f"rival{calls}"}
    finally:
        other.close()


@pytest.mark.parametrize("serializer", ["json", "compressed"])
def test_any_stored_bytes_are_compared(redis_backend: RedisBackend, serializer: str) -> None:
    codec: Any = serializer if serializer == "json" else fastsess.MsgpackSerializer(compress_threshold=0)
    store = redis_backend.make(serializer=codec)
    a, b = two_requests(store, {"k": "x" * 100})
    a["a"] = 1
    b["b"] = 1
    assert store.save(a) is True and store.save(b) is True
    assert b.version == a.version + 1
    assert stored(store, a.id) == {"k": "x" * 100, "a": 1, "b": 1}


def test_sessions_made_by_hand_replace_the_stored_one(backend: Backend) -> None:
    """A ``Session`` built by hand rather than loaded (nothing to compare with) replaces the
    stored session whole, as ``SET XX`` did: its save reads the stored version first, so
    the stored version still grows with every write.  Never a resurrection."""
    store = backend.make()
    s = saved(store, {"k": 0, "other": 1})
    b = store.load(s.id)
    b["k"] = 1
    assert store.save(b) is True and b.version == 2
    by_hand = Session(s.id, {"k": 2}, ttl=60, new=False, version=0)
    by_hand.modified = True
    assert store.save(by_hand) is True
    assert by_hand.version == 3
    again = store.load(s.id)
    assert dict(again.data) == {"k": 2} and again.version == 3
    assert store.delete(s.id) is True
    assert store.save(by_hand) is False
    assert not store.exists(s.id)


def test_hand_made_session_redis_round_trips(redis_backend: RedisBackend) -> None:
    store = redis_backend.make()
    s = saved(store, {"k": 0})
    by_hand = Session(s.id, {"k": 2}, ttl=60, new=False)
    by_hand.modified = True
    client = redis_backend.client
    scripts, gets = redis_command_calls(client, "evalsha", "eval"), redis_command_calls(client, "get")
    assert store.save(by_hand) is True
    assert redis_command_calls(client, "evalsha", "eval") - scripts == 1
    assert redis_command_calls(client, "get") - gets == 1  # the read of the stored version
    by_hand["k"] = 3
    gets = redis_command_calls(client, "get")
    assert store.save(by_hand) is True  # now it knows what it wrote: one script, no read
    assert redis_command_calls(client, "get") - gets == 0


def test_versions_grow_by_one_per_write(redis_backend: RedisBackend) -> None:
    """What the length-and-first-bytes comparison rests on: every write of a key stores a
    higher version, whoever writes (loaded, rebased, built by hand)."""
    store = redis_backend.make()
    s = saved(store, {"k": 0})
    a, b = store.load(s.id), store.load(s.id)
    a["a"] = 1
    b["b"] = 1
    assert store.save(a) is True
    assert store.save(b) is True
    by_hand = Session(s.id, {"k": 9}, ttl=60, new=False, version=0)
    by_hand.modified = True
    assert store.save(by_hand) is True
    assert [a.version, b.version, by_hand.version] == [2, 3, 4]
    assert store.load(s.id).version == 4


def test_foreign_bytes_on_conflict_are_corrupt(redis_backend: RedisBackend) -> None:
    store = redis_backend.make()
    s = saved(store, {"k": 0})
    a = store.load(s.id)
    redis_backend.client.set(store.prefix + s.id, b"not a session", xx=True)
    a["k"] = 1
    with pytest.raises(fastsess.SessionCorrupt):
        store.save(a)
    assert redis_backend.client.get(store.prefix + s.id) == b"not a session"


# --- the clustered store's cache ----------------------------------------------------------


def test_cache_never_older_than_own_write(nodes: Nodes) -> None:
    """A (cached) and B both change the session; A's save conflicts, rebases and writes:
    A's cache then holds that newest write, never the older copy it had."""
    A, B, raw, _, _ = nodes
    s = saved(A, {"k": 0})
    a = A.load(s.id)
    assert A.load(s.id) is not None and A.cache_stats().size == 1
    b = B.load(s.id)
    b["b"] = 1
    before = received(A)
    assert B.save(b) is True
    wait_received(A, before)
    a["a"] = 1
    assert A.save(a) is True
    newest = A.load(s.id)
    assert dict(newest.data) == {"k": 0, "a": 1, "b": 1} and newest.version == a.version
    # and the copy it caches compares equal to Redis: its next save needs no retry
    newest["c"] = 1
    calls = redis_command_calls(raw, "evalsha", "eval")
    assert A.save(newest) is True and newest.version == a.version + 1
    assert redis_command_calls(raw, "evalsha", "eval") - calls == 1


def test_stale_cached_copy_saves_by_rebasing(nodes: Nodes) -> None:
    """A's cached copy is older than Redis (B wrote through a client A does not hear): the
    save compares with Redis, not with the cache, and loses nothing."""
    A, B, raw, _, backend = nodes
    s = saved(A, {"k": 0})
    assert A.load(s.id) is not None
    with fastsess.RedisStore(url=backend.url, prefix=A.prefix) as outside:
        o = outside.load(s.id)
        o["outside"] = 1
        assert outside.save(o) is True  # no PUBLISH: A's cache is now behind
    a = A.load(s.id)
    assert "outside" not in a  # served from A's (stale) cache
    a["a"] = 1
    assert A.save(a) is True
    assert dict(B.load(s.id).data) == {"k": 0, "outside": 1, "a": 1}
    assert dict(A.load(s.id).data) == {"k": 0, "outside": 1, "a": 1}


# --- regenerate --------------------------------------------------------------------------


def test_regenerate_moves_a_concurrent_save_too(backend: Backend) -> None:
    """Another request saved the session after this one loaded it: the move carries that
    save's keys and this request's changes (single Redis: one script; MemoryStore: its lock)."""
    store = backend.make()
    a, b = two_requests(store, {"k": 0})
    b["b"] = 1
    assert store.save(b) is True
    old_id = a.id
    a["a"] = 1  # e.g. set at login, before the new id
    assert store.regenerate(a) is a and a.id != old_id
    assert not store.exists(old_id)
    assert stored(store, a.id) == {"k": 0, "a": 1, "b": 1}
    assert a.version == b.version + 1 and not a.modified


def test_regenerate_raises_on_a_conflicting_key(backend: Backend) -> None:
    store = backend.make(on_conflict="raise")
    a, b = two_requests(store, {"k": 0})
    b["k"] = 1
    assert store.save(b) is True
    old_id = a.id
    a["k"] = 2
    with pytest.raises(ConcurrentModification):
        store.regenerate(a)
    assert a.id == old_id and a["k"] == 2 and a.changes == {"k": 0} and a.modified
    assert stored(store, old_id) == {"k": 1}


def test_regenerate_retry_after_unknown_outcome_still_idempotent(plain_redis: RedisBackend) -> None:
    """The second run of a move whose first run landed finds the new key holding its
    payload (the old key is gone, so there is nothing to compare): moved, not a conflict."""
    from fastsess._core.conflict import stamp
    from fastsess._core.ops import MOVE
    from fastsess.stores.base import new_session_id

    store = plain_redis.make()
    s = saved(store, {"k": 0})
    token = stamp(store.load(s.id)._base)
    payload = b"any bytes: the script does not decode them"
    keys = (store.prefix + s.id, store.prefix + new_session_id())
    client = plain_redis.client
    assert client.eval(MOVE.text, 2, *keys, payload, 60, *token) == 1
    assert client.eval(MOVE.text, 2, *keys, payload, 60, *token) == 2
    assert client.get(keys[1]) == payload and not client.exists(keys[0])


def test_regenerate_never_recreates_a_session_deleted_meanwhile(backend: Backend) -> None:
    """Logged out (or expired) after this request loaded it: the move writes nothing, the
    session keeps its old id, and its next save returns False."""
    store = backend.make()
    s = saved(store, {"user": 1})
    late = store.load(s.id)
    assert store.delete(s.id) is True
    count = backend.raw_count(store)
    late["x"] = 1
    assert store.regenerate(late) is late
    assert late.id == s.id and late.modified and late["x"] == 1
    assert backend.raw_count(store) == count
    assert store.save(late) is False
    assert not store.exists(s.id)


def test_regenerate_of_a_gone_session_on_two_nodes(nodes: Nodes) -> None:
    A, B, raw, _, _ = nodes
    s = saved(A, {"user": 1})
    late = B.load(s.id)
    assert A.delete(s.id) is True
    before = raw.dbsize()
    B.regenerate(late)
    assert late.id == s.id and raw.dbsize() == before


def test_mark_for_save_writes_without_claiming_changes(backend: Backend) -> None:
    """``mark_for_save`` makes the next save write (e.g. a new ttl) without claiming any key:
    a concurrent save's changes survive it."""
    store = backend.make()
    a, b = two_requests(store, {"k": 0})
    b["k"] = 1
    assert store.save(b) is True
    a.ttl = 120
    a.mark_for_save()
    assert a.modified and a.changes == {}
    assert store.save(a) is True
    assert stored(store, a.id) == {"k": 1}
    backend.assert_ttl(store, a.id, 120)
