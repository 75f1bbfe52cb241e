"""The store contract: one set of tests for every store kind in both flavours.

Each test taking ``backend`` runs for memory, redis and clustered stores, sync and
asyncio (ids ``<kind>-<flavour>``); the asyncio stores are driven through the sync
facade of ``conftest.py`` (each coroutine awaited on one long-lived event loop in its
own thread).  Behaviours that only some kinds have take ``redis_backend`` (redis and
clustered) or build memory stores of both flavours directly.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest

from fastsess import Session
from fastsess.errors import ConfigError
from fastsess.stores.base import DEFAULT_PREFIX, DEFAULT_TTL, is_valid_session_id, new_session_id

from .conftest import FLAVOURS, Backend, LoopThread, MemoryBackend, RedisBackend

DATA: dict[str, Any] = {
    "user_id": 42,
    "name": "Zoë",
    "roles": ["admin", "ops"],
    "prefs": {"theme": "dark", "tz": "+05:30"},
    "token": b"\x00\x01\xffsecret",
    "login_at": dt.datetime(2024, 5, 1, 8, 30, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    "logout_at": dt.datetime(2024, 5, 1, 8, 30, tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30))),
    "birthday": dt.date(1990, 1, 2),
    "naive": dt.datetime(2024, 5, 1, 8, 30),
    "ratio": 0.25,
    "flag": False,
    "nothing": None,
}


def saved(store: Any, data: dict[str, Any] | None = None, **kw: Any) -> Session:
    s = store.create(dict(DATA if data is None else data), **kw)
    assert store.save(s) is True
    return s


# --- create ----------------------------------------------------------------------------


def test_create_writes_nothing(backend: Backend) -> None:
    store = backend.make()
    before = backend.raw_count(store)
    empty = store.create()
    full = store.create({"a": 1})
    assert backend.raw_count(store) == before == 0
    for s in (empty, full):
        assert isinstance(s, Session)
        assert is_valid_session_id(s.id) and len(s.id) == 43
        assert s.new is True and s.version == 0
        assert s.ttl == store.ttl
        assert not store.exists(s.id)
        assert store.load(s.id) is None
    assert empty.id != full.id
    assert empty.modified is False  # nothing to write for anonymous traffic
    assert full.modified is True  # created with data: the first save writes it
    assert dict(full) == {"a": 1}
    assert store.count() == 0


def test_create_ttl(backend: Backend) -> None:
    store = backend.make(ttl=120)
    assert store.ttl == 120
    assert store.create().ttl == 120
    assert store.create(ttl=7).ttl == 7
    for bad in (0, -1, 1.5, True, "10"):
        with pytest.raises(ConfigError):
            store.create(ttl=bad)


def test_create_copies_the_given_data(backend: Backend) -> None:
    store = backend.make()
    data = {"a": 1}
    s = store.create(data)
    s["b"] = 2
    assert data == {"a": 1}


def test_default_settings(backend: Backend) -> None:
    store = backend.make() if backend.kind == "memory" else backend.make(prefix=DEFAULT_PREFIX)
    assert store.ttl == DEFAULT_TTL == 1800
    assert store.prefix == DEFAULT_PREFIX == "fastsess:"
    assert store.refresh_fraction == 0.5


# --- save / load -----------------------------------------------------------------------


def test_anonymous_session_is_never_written(backend: Backend) -> None:
    store = backend.make()
    s = store.create()
    _ = s.get("user"), "x" in s, list(s)  # reads only
    assert store.save(s) is False
    assert backend.raw_count(store) == 0
    assert s.new is True and s.version == 0
    assert not store.exists(s.id)


def test_first_save_writes_with_ttl(backend: Backend) -> None:
    store = backend.make(ttl=300)
    s = store.create()
    s["user"] = 1
    before = backend.now()
    assert store.save(s) is True
    assert backend.raw_count(store) == 1
    assert s.new is False and s.modified is False and s.version == 1
    assert before <= s.refreshed_at <= backend.now()
    assert store.exists(s.id)
    backend.assert_ttl(store, s.id, 300)


def test_first_save_uses_the_sessions_own_ttl(backend: Backend) -> None:
    store = backend.make(ttl=300)
    s = store.create({"a": 1}, ttl=45)
    assert store.save(s) is True
    loaded = store.load(s.id)
    assert loaded is not None and loaded.ttl == 45
    backend.assert_ttl(store, s.id, 45)


def test_load_returns_equal_data_and_metadata(backend: Backend) -> None:
    store = backend.make(ttl=600)
    s = saved(store)
    loaded = store.load(s.id)
    assert loaded is not None
    assert loaded.new is False and loaded.modified is False and loaded.accessed is False
    assert loaded is not s
    assert loaded == s
    assert loaded.id == s.id
    assert loaded.data == DATA
    assert loaded["login_at"].utcoffset() == dt.timedelta(hours=5, minutes=30)
    assert loaded["logout_at"].utcoffset() == dt.timedelta(hours=-3, minutes=-30)
    assert loaded["naive"].tzinfo is None
    assert type(loaded["token"]) is bytes
    assert loaded.version == s.version == 1
    assert loaded.created_at == s.created_at
    assert loaded.refreshed_at == s.refreshed_at
    assert loaded.ttl == 600


def test_load_absent_returns_none(backend: Backend) -> None:
    store = backend.make()
    assert store.load(new_session_id()) is None


def test_loads_are_independent_copies(backend: Backend) -> None:
    store = backend.make()
    s = saved(store, {"a": 1, "l": [1]})
    s["a"] = "changed after save, not saved"
    first = store.load(s.id)
    second = store.load(s.id)
    assert first is not second and first.data is not second.data
    first["a"] = 2
    first["new"] = True
    assert second["a"] == 1 and "new" not in second
    third = store.load(s.id)
    assert third["a"] == 1 and "new" not in third


def test_save_of_unmodified_loaded_session_does_not_write(backend: Backend) -> None:
    store = backend.make()
    s = saved(store)
    loaded = store.load(s.id)
    _ = loaded["user_id"], loaded.get("roles"), list(loaded.items())  # reads only
    marker = backend.write_marker(store, s.id)
    assert store.save(loaded) is False
    assert store.save(s) is False  # the object that was just saved, too
    assert not backend.wrote_since(store, s.id, marker)
    assert loaded.version == 1 and s.version == 1


def test_save_of_modified_session_writes_and_bumps_version(backend: Backend) -> None:
    store = backend.make()
    s = saved(store)
    loaded = store.load(s.id)
    marker = backend.write_marker(store, s.id)
    loaded["user_id"] = 43
    del loaded["nothing"]
    assert store.save(loaded) is True
    assert backend.wrote_since(store, s.id, marker)
    assert loaded.version == 2 and loaded.modified is False
    again = store.load(s.id)
    assert again["user_id"] == 43 and "nothing" not in again
    assert again.version == 2
    assert again.created_at == s.created_at
    assert again.refreshed_at >= s.refreshed_at
    assert store.save(again) is False  # and now it is clean again


def test_every_write_bumps_version(backend: Backend) -> None:
    store = backend.make()
    s = saved(store, {"n": 0})
    for i in range(1, 6):
        s["n"] = i
        assert store.save(s) is True
        assert s.version == i + 1
        assert store.load(s.id).version == i + 1


def test_save_rewrites_when_refresh_is_due(backend: Backend) -> None:
    store = backend.make(ttl=100, refresh_fraction=0.5)
    s = saved(store)
    loaded = store.load(s.id)
    if isinstance(backend, RedisBackend):
        backend.client.expire(store.prefix + s.id, 10)  # so the refresh is visible in Redis
    backend.age(loaded, 45)  # 45 s of 100: not yet due
    marker = backend.write_marker(store, s.id)
    assert store.save(loaded) is False
    assert not backend.wrote_since(store, s.id, marker)
    assert loaded.version == 1
    backend.age(loaded, 6)  # 51 s of 100: due
    before = backend.now()
    assert store.save(loaded) is True
    assert loaded.version == 2
    assert loaded.refreshed_at >= before
    assert loaded.modified is False
    reloaded = store.load(s.id)
    assert reloaded.version == 2 and reloaded.refreshed_at == loaded.refreshed_at
    assert reloaded.data == DATA
    backend.assert_ttl(store, s.id, 100)


def test_refresh_in_real_time(backend: Backend) -> None:
    store = backend.make(ttl=1, refresh_fraction=0.1, real_clock=True)  # due after 0.1 s of the wall clock
    s = saved(store, {"a": 1})
    assert store.save(s) is False
    time.sleep(0.15)
    assert store.save(s) is True
    assert s.version == 2
    assert store.save(s) is False


def test_save_of_session_deleted_meanwhile_returns_false_and_does_not_resurrect(backend: Backend) -> None:
    store = backend.make()
    s = saved(store)
    loaded = store.load(s.id)
    assert store.delete(s.id) is True  # e.g. logged out in another tab
    loaded["cart"] = [1, 2]
    assert store.save(loaded) is False
    assert loaded.version == 1  # rolled back
    assert loaded.id == s.id
    assert not store.exists(s.id)
    assert store.load(s.id) is None
    assert backend.raw_count(store) == 0
    # an unmodified session whose refresh is due is not resurrected either
    loaded.modified = False
    backend.age(loaded, 10_000)
    assert store.save(loaded) is False
    assert not store.exists(s.id) and backend.raw_count(store) == 0


def test_new_session_never_overwrites_an_existing_id(backend: Backend) -> None:
    store = backend.make()
    first = saved(store, {"owner": "first"})
    intruder = store.create({"owner": "second"})
    intruder.id = first.id  # an id collision, however unlikely
    assert store.save(intruder) is True
    assert intruder.id != first.id and is_valid_session_id(intruder.id)
    assert store.load(first.id)["owner"] == "first"
    assert store.load(intruder.id)["owner"] == "second"
    assert store.count() == 2


# --- delete / exists / touch --------------------------------------------------------------


def test_delete_and_exists(backend: Backend) -> None:
    store = backend.make()
    s = saved(store)
    other = saved(store)
    assert store.exists(s.id) is True
    assert store.delete(s.id) is True
    assert store.exists(s.id) is False
    assert store.load(s.id) is None
    assert store.delete(s.id) is False
    assert store.delete(new_session_id()) is False
    assert store.exists(new_session_id()) is False
    assert store.exists(other.id) is True  # only that one
    assert backend.raw_count(store) == 1


def test_touch_absent_session(backend: Backend) -> None:
    store = backend.make()
    assert store.touch(new_session_id()) is False
    assert store.touch(new_session_id(), 30) is False
    assert backend.raw_count(store) == 0


def test_touch_sets_the_given_ttl(backend: Backend) -> None:
    store = backend.make(ttl=100)
    s = saved(store)
    assert store.touch(s.id, 37) is True
    loaded = store.load(s.id)
    assert loaded.data == DATA and loaded.version == 1  # touch changes only the expiry
    backend.assert_ttl(store, s.id, 37)


def test_touch_can_extend_beyond_the_store_ttl(backend: Backend) -> None:
    store = backend.make(ttl=100)
    s = saved(store)
    assert store.touch(s.id, 5000) is True
    backend.assert_ttl(store, s.id, 5000)


def test_touch_without_ttl_uses_the_store_default(backend: Backend) -> None:
    store = backend.make(ttl=100)
    s = saved(store, ttl=1000)  # the session's own TTL differs from the store's
    if isinstance(backend, RedisBackend):
        backend.assert_ttl(store, s.id, 1000)
    assert store.touch(s.id) is True
    backend.assert_ttl(store, s.id, 100)


def test_touch_rejects_bad_ttl(backend: Backend) -> None:
    store = backend.make()
    s = saved(store)
    for bad in (0, -5, 1.5, True, "60"):
        with pytest.raises(ConfigError):
            store.touch(s.id, bad)
    assert store.exists(s.id)


# --- regenerate ----------------------------------------------------------------------------


def test_regenerate_saved_session(backend: Backend) -> None:
    store = backend.make()
    s = saved(store)
    old_id = s.id
    result = store.regenerate(s)
    assert result is s
    assert s.id != old_id and is_valid_session_id(s.id)
    assert not store.exists(old_id)
    assert store.load(old_id) is None
    loaded = store.load(s.id)
    assert loaded is not None and loaded.data == DATA
    assert loaded.created_at == s.created_at
    assert loaded.version == s.version
    assert s.new is False and s.modified is False
    assert backend.raw_count(store) == 1
    assert store.save(s) is False  # clean after the move
    assert list(store.iter_ids()) == [s.id]


def test_regenerate_keeps_pending_changes(backend: Backend) -> None:
    store = backend.make()
    s = saved(store, {"anon": True})
    s["user_id"] = 7  # login: modify, then regenerate before saving
    old_id = s.id
    store.regenerate(s)
    assert s.modified is False and s.new is False
    assert store.load(s.id).data == {"anon": True, "user_id": 7}
    assert store.load(s.id).version == s.version
    assert store.load(old_id) is None
    assert backend.raw_count(store) == 1


def test_regenerate_a_loaded_session(backend: Backend) -> None:
    store = backend.make()
    s = saved(store)
    loaded = store.load(s.id)
    store.regenerate(loaded)
    assert loaded.id != s.id
    assert store.load(loaded.id).data == DATA
    assert not store.exists(s.id)
    assert store.count() == 1


def test_regenerate_unsaved_session_just_gets_a_new_id(backend: Backend) -> None:
    store = backend.make()
    s = store.create({"a": 1})
    old_id = s.id
    marker = backend.write_marker(store, old_id)
    assert store.regenerate(s) is s
    assert s.id != old_id and is_valid_session_id(s.id)
    assert not backend.wrote_since(store, old_id, marker)
    assert backend.raw_count(store) == 0
    assert s.new is True and s.modified is True and s.version == 0
    assert store.save(s) is True
    assert store.load(s.id).data == {"a": 1}
    assert store.load(old_id) is None


def test_regenerate_twice(backend: Backend) -> None:
    store = backend.make()
    s = saved(store)
    ids = {s.id}
    for _ in range(3):
        store.regenerate(s)
        ids.add(s.id)
    assert len(ids) == 4
    assert list(store.iter_ids()) == [s.id]


# --- iter_ids / count / clear ----------------------------------------------------------------


def test_iter_ids_count_and_clear_only_touch_this_store(backend: Backend) -> None:
    store = backend.make()
    foreign_alive = backend.plant_foreign()
    assert store.count() == 0 and list(store.iter_ids()) == []
    assert store.clear() == 0
    ids = {saved(store, {"i": i}).id for i in range(5)}
    anonymous = store.create()  # never saved: not listed
    assert set(store.iter_ids()) == ids
    assert anonymous.id not in set(store.iter_ids())
    assert all(is_valid_session_id(i) for i in store.iter_ids())
    assert store.count() == 5
    assert store.clear() == 5
    assert store.count() == 0 and list(store.iter_ids()) == []
    assert foreign_alive()


def test_non_ascii_prefix_iter_ids_count_clear(backend: Backend) -> None:
    """A non-ASCII prefix works like any other (the prefix length is counted in the
    keys' encoded bytes, not in characters)."""
    results = {}
    for pfx in ("sessão:", "セッション:", "🍪:"):
        store = backend.make(prefix=pfx)
        ids = {saved(store, {"i": i}).id for i in range(3)}
        assert all(store.exists(i) for i in ids)
        listed, counted, cleared = set(store.iter_ids()), store.count(), store.clear()
        left = sum(store.exists(i) for i in ids)
        results[pfx] = (listed == ids, counted, cleared, left)
    assert results == {p: (True, 3, 3, 0) for p in results}


def test_clear_many_sessions_in_batches(backend: Backend) -> None:
    store = backend.make()
    n = 2345  # more than two SCAN/UNLINK batches
    if isinstance(backend, RedisBackend):
        pipe = backend.client.pipeline(transaction=False)
        payload = store.serializer.encode(store.create({"x": 1}))
        ids = [new_session_id() for _ in range(n)]
        for sid in ids:
            pipe.set(store.prefix + sid, payload, ex=600)
        pipe.execute()
    else:
        sessions = [store.create({"x": 1}) for _ in range(n)]
        assert all(backend.save_all(store, sessions))
        ids = [s.id for s in sessions]
    foreign_alive = backend.plant_foreign()
    assert store.count() == n
    seen = list(store.iter_ids())
    assert len(seen) == n and set(seen) == set(ids)  # no duplicates, nothing missing
    assert store.clear() == n
    assert store.count() == 0
    assert foreign_alive()


# --- lifecycle -------------------------------------------------------------------------------


def test_context_manager_returns_the_store_and_closes(backend: Backend) -> None:
    store = backend.make()
    with store as entered:
        assert entered is store
        saved(store)
    if isinstance(backend, RedisBackend):
        connections = backend.connections(store.client)
        assert connections and not any(connections), "the owned client was not closed"


def test_close_is_idempotent(backend: Backend) -> None:
    store = backend.make()
    saved(store)
    store.close()
    store.close()


# --- malformed ids: None/False, and no I/O at all ---------------------------------------------


class StrSubclass(str):
    pass


MALFORMED: dict[str, Any] = {
    "empty": "",
    "short": "short",
    "42-chars": "a" * 42,
    "44-chars": "a" * 44,
    "43-with-slash": "a" * 21 + "/" + "b" * 21,
    "43-with-plus": "a" * 42 + "+",
    "43-with-eq": "a" * 42 + "=",
    "43-with-space": "a" * 42 + " ",
    "43-with-newline": "a" * 42 + "\n",
    "43-with-colon": "a" * 42 + ":",
    "43-with-star": "a" * 42 + "*",
    "43-non-ascii": "é" * 43,
    "43-fullwidth-digit": "a" * 42 + "\uff11",
    "glob-star": "*",
    "prefix-injection": "../" + "a" * 40,
    "none": None,
    "int": 123,
    "bytes-43": b"a" * 43,
    "bytearray": bytearray(b"a" * 43),
    "list": ["a" * 43],
    "float": 1.5,
    "str-subclass": StrSubclass("a" * 43),
}


def test_malformed_ids_give_none_or_false(backend: Backend) -> None:
    store = backend.make()
    s = saved(store)
    for name, bad in MALFORMED.items():
        marker = backend.write_marker(store, s.id)
        assert store.load(bad) is None, name
        assert store.exists(bad) is False, name
        assert store.delete(bad) is False, name
        assert store.touch(bad) is False, name
        assert store.touch(bad, 10) is False, name
        assert not backend.wrote_since(store, s.id, marker), name
    assert store.exists(s.id)


def test_valid_ids() -> None:
    ids = [new_session_id() for _ in range(100)]
    assert all(is_valid_session_id(i) and len(i) == 43 for i in ids)
    assert len(set(ids)) == 100
    assert is_valid_session_id("A" * 20 + "z9_-" + "0" * 19)


# --- configuration ----------------------------------------------------------------------------

BAD_CONFIG: list[dict[str, Any]] = [
    {"ttl": 0},
    {"ttl": -1},
    {"ttl": 1.5},
    {"ttl": True},
    {"ttl": "60"},
    {"ttl": None},
    {"refresh_fraction": 0},
    {"refresh_fraction": 2},
    {"refresh_fraction": -0.5},
    {"refresh_fraction": True},
    {"refresh_fraction": "0.5"},
    {"prefix": None},
    {"prefix": b"bytes:"},
]


def test_bad_config_raises_config_error(backend: Backend) -> None:
    for kwargs in BAD_CONFIG:
        with pytest.raises(ConfigError):
            backend.make(**kwargs)
            pytest.fail(f"accepted {kwargs}")


def test_good_edge_config(backend: Backend) -> None:
    store = backend.make(ttl=1, refresh_fraction=1)
    assert store.ttl == 1 and store.refresh_fraction == 1.0
    store = backend.make(refresh_fraction=0.01)
    assert store.refresh_fraction == 0.01


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_memory_store_max_sessions(flavour: str, loop_thread: LoopThread) -> None:
    backend = MemoryBackend(flavour, loop_thread)
    store = backend.make(max_sessions=3)
    ids = [saved(store, {"i": i}).id for i in range(5)]
    assert store.count() == 3
    assert set(store.iter_ids()) == set(ids[2:])  # least recently used evicted
    with pytest.raises(ValueError):
        backend.make(max_sessions=0)


# --- values that cannot be stored ---------------------------------------------------------------


class Thing:
    pass


UNSTORABLE: dict[str, Any] = {
    "set": {1, 2}, "object": Thing(), "bare-object": object(), "nested-set": [1, {2}], "nested-object": {"deep": object()},
}


def test_unserializable_value_raises_type_error_and_keeps_version(backend: Backend) -> None:
    """Values msgpack/JSON cannot carry are refused by every store, not only by Redis."""
    for value in UNSTORABLE.values():
        check_unstorable(backend, value)


def check_unstorable(backend: Backend, value: Any) -> None:
    store = backend.make()
    # a new session
    s = store.create()
    s["bad"] = value
    with pytest.raises(TypeError):
        store.save(s)
    assert s.version == 0 and s.new is True and s.modified is True
    assert backend.raw_count(store) == 0 and not store.exists(s.id)
    # a saved one
    good = saved(store, {"ok": 1})
    refreshed_at = good.refreshed_at
    good["bad"] = value
    with pytest.raises(TypeError):
        store.save(good)
    assert good.version == 1 and good.modified is True and good.refreshed_at == refreshed_at
    assert store.load(good.id).data == {"ok": 1}
    # regenerate with such a value keeps the old id and the stored session
    old_id = good.id
    with pytest.raises(TypeError):
        store.regenerate(good)
    assert good.id == old_id and good.version == 1
    assert store.load(old_id).data == {"ok": 1}
    assert store.count() == 1
    assert store.clear() == 1
