"""``Session``: the mapping API, and the ``modified`` / ``accessed`` bookkeeping.

Every mutation through the mapping API must set ``modified`` (a save that
misses a mutation silently loses data); reads must not (a read-only request
must cost no Redis write) but must set ``accessed``.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

import pytest

from fastsess import MISSING, Session
from fastsess.stores.base import new_session_id


def fresh(data: dict[str, Any] | None = None) -> Session:
    """A session as a store hands it out after ``load``: not new, unmodified, unaccessed."""
    s = Session(new_session_id(), data if data is not None else {"a": 1, "b": [1, 2], "c": {"x": 1}}, ttl=60, new=False)
    assert not s.modified and not s.accessed
    return s


# --- construction and metadata ---------------------------------------------------------


def test_is_a_mutable_mapping_with_metadata() -> None:
    sid = new_session_id()
    s = Session(sid, {"a": 1}, ttl=30, created_at=123.5, version=4)
    assert isinstance(s, MutableMapping)
    assert s.id == sid
    assert s.ttl == 30
    assert s.created_at == 123.5
    assert s.refreshed_at == 123.5  # defaults to created_at
    assert s.version == 4
    assert s.new is True
    assert s.modified is False and s.accessed is False
    assert dict(s) == {"a": 1}


def test_constructor_copies_the_given_mapping() -> None:
    data = {"a": 1}
    s = Session(new_session_id(), data, ttl=30)
    s["b"] = 2
    assert data == {"a": 1}
    assert s.data == {"a": 1, "b": 2}


def test_created_at_defaults_to_now() -> None:
    import time

    before = time.time()
    s = Session(new_session_id(), ttl=30)
    assert before <= s.created_at <= time.time()
    assert len(s) == 0 and dict(s) == {}


def test_mapping_api_behaves_like_a_dict() -> None:
    s = fresh({"a": 1, "b": 2})
    assert s["a"] == 1
    assert s.get("zz") is None and s.get("zz", 7) == 7
    assert "a" in s and "zz" not in s
    assert len(s) == 2
    assert sorted(s) == ["a", "b"]
    assert sorted(s.keys()) == ["a", "b"]
    assert sorted(s.values()) == [1, 2]
    assert sorted(s.items()) == [("a", 1), ("b", 2)]
    with pytest.raises(KeyError):
        s["missing"]
    s["c"] = 3
    assert s.pop("c") == 3
    assert s.pop("c", "dflt") == "dflt"
    with pytest.raises(KeyError):
        s.pop("c")
    assert s.setdefault("a", 99) == 1
    assert s.setdefault("d", 4) == 4 and s["d"] == 4
    s.update({"e": 5}, f=6)
    assert s == {"a": 1, "b": 2, "d": 4, "e": 5, "f": 6}
    del s["a"]
    with pytest.raises(KeyError):
        del s["a"]
    k, v = s.popitem()
    assert k not in s and (k, v) in {("b", 2), ("d", 4), ("e", 5), ("f", 6)}
    s.clear()
    assert len(s) == 0
    with pytest.raises(KeyError):
        s.popitem()


def test_keys_must_be_str() -> None:
    s = fresh()
    for bad in (1, b"a", None, ("t",)):
        with pytest.raises(TypeError):
            s[bad] = 1  # type: ignore[index]
    assert not s.modified


def test_equality_and_unhashable() -> None:
    s = fresh({"a": 1})
    assert s == {"a": 1}
    assert s != {"a": 2}
    assert s == s.copy()
    other = Session(new_session_id(), {"a": 1}, ttl=60)
    assert s != other  # same data, different id
    with pytest.raises(TypeError):
        hash(s)


def test_repr_leaks_neither_data_nor_full_id() -> None:
    s = fresh({"password": "hunter2-secret"})
    text = repr(s)
    assert "hunter2" not in text and "password" not in text
    assert s.id not in text


# --- modified: every mutation sets it -------------------------------------------------

MUTATIONS: dict[str, Callable[[Session], Any]] = {
    "setitem-new": lambda s: s.__setitem__("new", 1),
    "setitem-existing": lambda s: s.__setitem__("a", 2),
    "setitem-same-value": lambda s: s.__setitem__("a", 1),
    "delitem": lambda s: s.__delitem__("a"),
    "pop": lambda s: s.pop("a"),
    "pop-with-default-present": lambda s: s.pop("a", None),
    "popitem": lambda s: s.popitem(),
    "clear": lambda s: s.clear(),
    "update-dict": lambda s: s.update({"z": 1}),
    "update-kwargs": lambda s: s.update(z=1),
    "update-pairs": lambda s: s.update([("z", 1)]),
    "setdefault-new": lambda s: s.setdefault("new", 1),
    "setdefault-new-none": lambda s: s.setdefault("new"),
    "nested-replacement": lambda s: s.__setitem__("b", [9, 9]),
    "nested-dict-replacement": lambda s: s.__setitem__("c", {"y": 2}),
}


@pytest.mark.parametrize("mutate", list(MUTATIONS.values()), ids=list(MUTATIONS))
def test_every_mutation_sets_modified(mutate: Callable[[Session], Any]) -> None:
    s = fresh()
    mutate(s)
    assert s.modified is True


NON_MUTATIONS: dict[str, Callable[[Session], Any]] = {
    "getitem": lambda s: s["a"],
    "get": lambda s: s.get("a"),
    "get-missing": lambda s: s.get("zz", 0),
    "contains": lambda s: "a" in s,
    "iter": lambda s: list(s),
    "len": lambda s: len(s),
    "keys": lambda s: list(s.keys()),
    "values": lambda s: list(s.values()),
    "items": lambda s: list(s.items()),
    "eq": lambda s: s == {"a": 1},
    "copy": lambda s: s.copy(),
    "data": lambda s: s.data,
    "repr": lambda s: repr(s),
    "setdefault-existing": lambda s: s.setdefault("a", 5),
    "pop-missing-default": lambda s: s.pop("zz", None),
    "update-empty": lambda s: s.update({}),
    "in-place-nested-mutation": lambda s: s["b"].append(3),  # invisible by design (documented)
}


@pytest.mark.parametrize("read", list(NON_MUTATIONS.values()), ids=list(NON_MUTATIONS))
def test_reads_do_not_set_modified(read: Callable[[Session], Any]) -> None:
    s = fresh()
    read(s)
    assert s.modified is False


FAILED_MUTATIONS: dict[str, Callable[[Session], Any]] = {
    "delitem-missing": lambda s: s.__delitem__("zz"),
    "pop-missing": lambda s: s.pop("zz"),
    "popitem-empty": lambda s: (s.clear(), setattr(s, "modified", False), s.popitem()),
    "setitem-bad-key": lambda s: s.__setitem__(1, 1),
}


@pytest.mark.parametrize("fail", list(FAILED_MUTATIONS.values()), ids=list(FAILED_MUTATIONS))
def test_failed_mutations_do_not_set_modified(fail: Callable[[Session], Any]) -> None:
    s = fresh()
    with pytest.raises((KeyError, TypeError)):
        fail(s)
    assert s.modified is False


def test_clear_of_an_empty_session_is_not_a_modification() -> None:
    s = fresh({})
    s.clear()
    assert s.modified is False


def test_modified_can_be_set_by_hand_for_in_place_changes() -> None:
    s = fresh()
    s["b"].append(3)
    assert not s.modified
    s.modified = True
    assert s.modified


# --- accessed ------------------------------------------------------------------------

READS: dict[str, Callable[[Session], Any]] = {
    "getitem": lambda s: s["a"],
    "getitem-missing": lambda s: s.get("zz"),
    "get": lambda s: s.get("a"),
    "contains": lambda s: "a" in s,
    "iter": lambda s: list(s),
    "keys": lambda s: list(s.keys()),
    "values": lambda s: list(s.values()),
    "items": lambda s: list(s.items()),
}


@pytest.mark.parametrize("read", list(READS.values()), ids=list(READS))
def test_reads_set_accessed(read: Callable[[Session], Any]) -> None:
    s = fresh()
    read(s)
    assert s.accessed is True


def test_accessed_is_not_set_by_metadata_or_len() -> None:
    s = fresh()
    _ = (s.id, s.ttl, s.version, s.created_at, s.new, s.modified, len(s), repr(s))
    assert s.accessed is False


def test_a_missing_key_read_still_counts_as_access() -> None:
    s = fresh()
    with pytest.raises(KeyError):
        s["zz"]
    assert s.accessed is True


# --- copy ----------------------------------------------------------------------------


def test_copy_is_shallow_and_independent_at_top_level() -> None:
    s = fresh({"a": 1, "nested": {"x": [1]}})
    s.version = 3
    s.refreshed_at = s.created_at + 5
    s["a"]  # accessed on the original
    c = s.copy()
    assert type(c) is Session
    assert c is not s
    assert c == s and c.data == s.data
    assert c.data is not s.data
    # metadata copied
    assert (c.id, c.ttl, c.created_at, c.refreshed_at, c.version, c.new, c.modified) == (
        s.id, s.ttl, s.created_at, s.refreshed_at, s.version, s.new, s.modified,
    )
    assert c.accessed is False  # a fresh copy has not been read
    # shallow: nested values are shared
    assert c.data["nested"] is s.data["nested"]
    # independent at top level, both ways
    c["a"] = 2
    c["only_copy"] = True
    assert s["a"] == 1 and "only_copy" not in s
    del s["nested"]
    assert "nested" in c
    # metadata independent too
    c.version = 99
    assert s.version == 3


def test_copy_keeps_modified_and_new_flags() -> None:
    s = Session(new_session_id(), ttl=5)
    s["x"] = 1
    c = s.copy()
    assert c.new is True and c.modified is True
    c.modified = False
    assert s.modified is True


# --- changes: which top-level keys this request set or deleted, and their previous values ----

CHANGED_KEYS: dict[str, tuple[Callable[[Session], Any], dict[str, Any]]] = {
    "setitem-new": (lambda s: s.__setitem__("new", 1), {"new": MISSING}),
    "setitem-existing": (lambda s: s.__setitem__("a", 2), {"a": 1}),
    "setitem-twice": (lambda s: (s.__setitem__("a", 2), s.__setitem__("a", 3)), {"a": 1}),
    "delitem": (lambda s: s.__delitem__("a"), {"a": 1}),
    "set-then-delete-new": (lambda s: (s.__setitem__("n", 1), s.__delitem__("n")), {"n": MISSING}),
    "pop": (lambda s: s.pop("a"), {"a": 1}),
    "popitem": (lambda s: s.popitem(), {"a": 1}),
    "clear": (lambda s: s.clear(), {"a": 1, "b": [1, 2], "c": {"x": 1}}),
    "update": (lambda s: s.update({"z": 1, "a": 0}), {"z": MISSING, "a": 1}),
    "setdefault-new": (lambda s: s.setdefault("new", 1), {"new": MISSING}),
    "setdefault-existing": (lambda s: s.setdefault("a", 5), {}),
    "pop-missing-default": (lambda s: s.pop("zz", None), {}),
    "in-place-nested-mutation": (lambda s: s["b"].append(3), {}),
}


@pytest.mark.parametrize("case", list(CHANGED_KEYS.values()), ids=list(CHANGED_KEYS))
def test_changes_record_keys_and_previous_values(case: tuple[Callable[[Session], Any], dict[str, Any]]) -> None:
    mutate, expected = case
    s = fresh()
    mutate(s)
    assert s.changes == expected


def test_changes_are_a_copy_and_travel_with_copy() -> None:
    s = fresh()
    s["a"] = 5
    s.changes.clear()
    assert s.changes == {"a": 1}
    c = s.copy()
    assert c.changes == {"a": 1} and c.modified
    c["z"] = 1
    assert s.changes == {"a": 1}  # not shared


def test_modified_false_forgets_the_changes() -> None:
    s = fresh()
    s["a"] = 5
    s.modified = False
    assert s.changes == {} and not s.modified


def test_missing_is_a_named_singleton() -> None:
    import copy
    import pickle

    assert repr(MISSING) == "MISSING"
    assert copy.deepcopy(MISSING) is MISSING
    assert pickle.loads(pickle.dumps(MISSING)) is MISSING


# --- the compare-and-set token: first bytes identify a write ---------------------------------


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_first_bytes_hold_the_version(codec: str) -> None:
    """Where ``_core.conflict.stamp`` compares only the first PREFIX_BYTES bytes,
    those bytes must differ between two writes of a key: they hold the version, even with
    the widest times, TTL and version fastsess writes."""
    from fastsess._core.conflict import PREFIX_BYTES, stamp
    from fastsess.serializers import resolve_serializer
    from fastsess.session import MAX_TTL

    serializer = resolve_serializer(codec)
    for created, refreshed in ((1764466800.1234567, 1764466801.7654321), (1.2345678901234567e300, -2.5e-300), (0, 1)):
        tokens = set()
        for version in (2**63 - 2, 2**63 - 1, 7, 8):
            s = Session(new_session_id(), {"blob": "x" * 500}, ttl=MAX_TTL, created_at=created, version=version)
            s.refreshed_at = refreshed
            token = stamp(serializer.encode(s))
            assert token is not None and token[0] == "p" and len(token[1]) == PREFIX_BYTES
            tokens.add(token[1])
        assert len(tokens) == 4


def test_compressed_and_foreign_values_are_hashed() -> None:
    from fastsess import MsgpackSerializer
    from fastsess._core.conflict import stamp

    s = Session(new_session_id(), {"blob": "x" * 500}, ttl=60)
    compressed = MsgpackSerializer(compress_threshold=0).encode(s)
    assert stamp(compressed)[0] == "h"
    assert stamp(b"not a session")[0] == "h"
    assert stamp(None) is None
