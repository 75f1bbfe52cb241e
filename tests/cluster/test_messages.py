"""The wire messages ``{t, id, node, v}`` and the no-stale-fill bookkeeping, without Redis."""

from __future__ import annotations

import time
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from fastsess import ClusterConfig
from fastsess.cluster import (
    CLEARED,
    DELETED,
    DELETED_MANY,
    GENERATION_SLOTS,
    INVALIDATED,
    MAX_IDS,
    MAX_MANY_BYTES,
    MAX_MESSAGE_BYTES,
    MESSAGE_TYPES,
    TOUCHED,
    CoherentCache,
    CoordinatorBase,
    decode_message,
    encode_message,
)
from fastsess.stores.base import new_session_id

# What ``encode_message`` builds (a ``filled`` message is built by ``fill_prefix``: test_fewer_trips_core).
KINDS = sorted(MESSAGE_TYPES - {"filled"})
assert set(KINDS) == {"invalidated", "deleted", "cleared", "touched", "deleted_many"} == {
    INVALIDATED, DELETED, CLEARED, TOUCHED, DELETED_MANY,
}


# --- encode / decode ---------------------------------------------------------------------


@given(
    kind=st.sampled_from(KINDS),
    session_id=st.one_of(st.just(None), st.just(new_session_id()), st.text(max_size=60)),
    node=st.text(min_size=1, max_size=60),
    version=st.integers(min_value=0, max_value=2**63 - 1),
)
def test_encode_decode_round_trip(kind: str, session_id: str | None, node: str, version: int) -> None:
    assume(kind in (CLEARED, DELETED_MANY) or session_id is not None)
    expires_in = 60 if kind == TOUCHED else None
    ids = [new_session_id(), new_session_id()] if kind == DELETED_MANY else None
    try:
        wire = encode_message(kind, session_id, node, version, expires_in, ids)
    except UnicodeEncodeError:  # lone surrogates cannot be msgpack str
        assume(False)
    assert isinstance(wire, bytes)
    expected: dict[str, Any] = {"t": kind, "id": session_id, "node": node, "v": version}
    if kind == TOUCHED:
        expected["x"] = 60
    if kind == DELETED_MANY:
        expected["ids"] = ids
    assert decode_message(wire) == expected


def test_real_messages_are_small() -> None:
    wire = encode_message(INVALIDATED, new_session_id(), ClusterConfig().node_id, 2**40)
    assert len(wire) < 120
    assert decode_message(encode_message(CLEARED, None, "n")) == {"t": CLEARED, "id": None, "node": "n", "v": 0}


def test_encode_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError):
        encode_message("evicted", new_session_id(), "n")
    with pytest.raises(ValueError):
        encode_message(TOUCHED, new_session_id(), "n")  # a touch must say when the key expires
    for ids in (None, [], [new_session_id()] * (MAX_IDS + 1)):
        with pytest.raises(ValueError):
            encode_message(DELETED_MANY, None, "n", ids=ids)


def test_a_full_deleted_many_message_fits_its_bound() -> None:
    ids = [new_session_id() for _ in range(MAX_IDS)]
    node = ClusterConfig().node_id
    wire = encode_message(DELETED_MANY, None, node, ids=ids)
    assert MAX_MESSAGE_BYTES < len(wire) < MAX_MANY_BYTES
    assert decode_message(wire) == {"t": DELETED_MANY, "id": None, "node": node, "v": 0, "ids": ids}
    for bad in ([], [1], ["x", b"y"], "x", [new_session_id()] * (MAX_IDS + 1)):
        assert decode_message(msgpack.packb({"t": DELETED_MANY, "id": None, "node": "n", "ids": bad})) is None


def well_formed(obj: Any) -> bool:
    """The spec of a message, written independently of ``decode_message``."""
    if not isinstance(obj, dict):
        return False
    t = obj.get("t")
    if not (isinstance(t, str) and t in KINDS):
        return False
    if not isinstance(obj.get("node"), str):
        return False
    v = obj.get("v", 0)
    if type(v) is not int:
        return False
    if t == TOUCHED and not (type(obj.get("x")) is int and obj["x"] >= 0):
        return False
    if t == DELETED_MANY:
        ids = obj.get("ids")
        return type(ids) is list and 0 < len(ids) <= MAX_IDS and all(isinstance(i, str) for i in ids)
    return t == CLEARED or isinstance(obj.get("id"), str)


def check_result(result: Any) -> None:
    if result is None:
        return
    assert isinstance(result, dict) and well_formed(result)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
@example(b"")
@example(b"\xc1")  # never-used msgpack byte
@example(b"\x81\xa1t")  # truncated map
@example(msgpack.packb({"t": "invalidated", "id": "x", "node": "n"}) + b"\x00")  # trailing data
@example(b"\x91" * 1000 + b"\xc0")  # deep nesting
@example(b"\xdd\xff\xff\xff\xff")  # array header claiming 4 G elements
def test_decode_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    check_result(decode_message(data))


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True), st.text(max_size=20), st.binary(max_size=20),
)
packable = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=6), st.binary(max_size=6)), children, max_size=4),
    ),
    max_leaves=12,
)
# maps shaped almost like a message: every field right, wrong, missing or of another type
field = st.one_of(packable, st.sampled_from(KINDS), st.just(new_session_id()))
message_like = st.builds(
    lambda fields, extra: {**extra, **{k: v for k, v in fields.items() if v is not _ABSENT}},
    st.fixed_dictionaries({
        "t": st.one_of(st.sampled_from([*KINDS, "INVALIDATED", "evicted", ""]), st.just(_ABSENT := object()), packable),
        "id": st.one_of(st.just(_ABSENT), field),
        "node": st.one_of(st.just(_ABSENT), field),
        "v": st.one_of(st.just(_ABSENT), field),
    }),
    st.dictionaries(st.text(max_size=4), packable, max_size=2),
)


@settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(packable, message_like))
@example({"t": ["invalidated"], "id": "x", "node": "n"})  # unhashable t
@example({"t": {"k": 1}, "id": "x", "node": "n"})
@example({"t": "invalidated", "id": "x", "node": "n", "v": True})  # bool is not a version
@example({"t": "deleted", "id": None, "node": "n"})
@example({"t": "deleted_many", "node": "n", "ids": ["a", "b"]})
@example({"t": "deleted_many", "id": "x", "node": "n", "ids": []})
@example({"t": "cleared", "node": b"n"})
@example({"t": "invalidated", "id": b"x", "node": "n"})
@example({"t": "cleared", "node": "n", "v": 1.0})
def test_decode_packed_objects_returns_none_exactly_for_malformed(obj: Any) -> None:
    try:
        data = msgpack.packb(obj)
    except (UnicodeEncodeError, OverflowError, TypeError, ValueError):
        assume(False)
    result = decode_message(data)  # must never raise
    check_result(result)
    limit = MAX_MANY_BYTES if isinstance(obj, dict) and obj.get("t") == DELETED_MANY else MAX_MESSAGE_BYTES
    expect_valid = well_formed(obj) and len(data) <= limit
    assert (result is not None) == expect_valid, (obj, result)


@pytest.mark.parametrize("junk", [None, "text", 3, bytearray(b"\x80"), memoryview(b"\x80"), [b"x"]])
def test_decode_non_bytes_is_none(junk: Any) -> None:
    assert decode_message(junk) is None


def test_oversized_message_is_malformed() -> None:
    big = msgpack.packb({"t": INVALIDATED, "id": "x" * 2000, "node": "n", "v": 1})
    assert decode_message(big) is None
    assert decode_message(b"\x00" * (10 * 1024 * 1024)) is None


# --- CoordinatorBase.handle_message (no Redis) ------------------------------------------


def coordinator(cache: CoherentCache | None = None) -> CoordinatorBase:
    return CoordinatorBase(ClusterConfig(node_id="me"), cache)


def test_handle_message_counts_and_applies() -> None:
    cache = CoherentCache(100, 60.0)
    c = coordinator(cache)
    seen: list[dict[str, Any]] = []
    c.on_message = seen.append
    a, b, d = new_session_id(), new_session_id(), new_session_id()
    for sid in (a, b, d):
        cache.put_if(sid, {"sid": sid}, cache.fill_token(sid), 60.0)

    c.handle_message(c.message(INVALIDATED, a))  # own: ignored, nothing evicted
    assert c.stats.ignored_own == 1 and c.stats.received == 0 and cache.get(a) is not None
    c.handle_message(encode_message(INVALIDATED, a, "other", 3))
    assert cache.get(a) is None and cache.get(b) is not None and c.stats.received == 1
    c.handle_message(encode_message(DELETED, b, "other"))
    assert cache.get(b) is None and cache.get(d) is not None
    c.handle_message(encode_message(CLEARED, None, "other"))
    assert len(cache) == 0
    c.handle_message(b"garbage")
    c.handle_message(msgpack.packb([1, 2, 3]))
    s = c.stats
    assert (s.received, s.ignored_own, s.malformed, s.published, s.reconnects, s.subscribed) == (3, 1, 2, 0, 0, False)
    assert [m["t"] for m in seen] == [INVALIDATED, DELETED, CLEARED]
    assert seen[0] == {"t": INVALIDATED, "id": a, "node": "other", "v": 3}


def test_node_id_is_a_label_and_a_foreign_message_with_our_instance_id_is_counted_and_applied() -> None:
    cache = CoherentCache(100, 60.0)
    c, twin = coordinator(cache), coordinator(None)
    assert c.node_id == twin.node_id == "me" and c.instance_id != twin.instance_id
    a = new_session_id()
    cache.put_if(a, {"x": 1}, cache.fill_token(a), 60.0)
    c.handle_message(encode_message(INVALIDATED, a, "me"))  # the bare label: another process's message
    assert cache.get(a) is None and c.stats.received == 1 and c.stats.ignored_own == 0
    c.handle_message(twin.message(INVALIDATED, a))  # same label, other instance: applied
    assert c.stats.received == 2 and c.stats.foreign_own_id == 0
    own = c.message(INVALIDATED, a)
    cache.put_if(a, {"x": 2}, cache.fill_token(a), 60.0)
    c.handle_message(own)  # our echo: ignored
    assert cache.get(a) is not None and c.stats.ignored_own == 1
    c.handle_message(own)  # the same bytes again: more echoes than we sent, so not ours
    assert cache.get(a) is None and c.stats.foreign_own_id == 1 and c.stats.received == 3 and c.stats.ignored_own == 1


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300), packable.map(lambda o: _pack_or_empty(o)), message_like.map(lambda o: _pack_or_empty(o))))
@example(msgpack.packb({"t": ["invalidated"], "id": "x", "node": "other"}))
def test_handle_message_never_raises_and_counts_every_message_once(data: bytes) -> None:
    cache = CoherentCache(10, 60.0)
    c = coordinator(cache)
    c.handle_message(data)
    s = c.stats
    assert s.received + s.ignored_own + s.malformed == 1
    assert (s.malformed == 1) == (decode_message(data) is None)


def _pack_or_empty(obj: Any) -> bytes:
    try:
        return msgpack.packb(obj)
    except Exception:  # noqa: BLE001
        return b""


def test_a_deleted_many_message_evicts_each_id() -> None:
    cache = CoherentCache(100, 60.0)
    c = coordinator(cache)
    ids = [new_session_id() for _ in range(5)]
    for sid in ids:
        cache.put_if(sid, {"sid": sid}, cache.fill_token(sid), 60.0)
    c.handle_message(c.message(DELETED_MANY, None, ids=ids[:2]))  # own echo: the store already evicted
    assert all(cache.get(sid) is not None for sid in ids) and c.stats.ignored_own == 1
    cache.mark_uncertain(ids[0])  # a delete_all of unknown outcome: its own echo evicts
    cache.put_if(ids[0], {"sid": ids[0]}, cache.fill_token(ids[0]), 60.0)
    c.handle_message(c.message(DELETED_MANY, None, ids=ids[:2]))
    assert cache.get(ids[0]) is None and cache.get(ids[1]) is not None
    c.handle_message(encode_message(DELETED_MANY, None, "other", ids=ids[1:4]))
    assert [cache.get(sid) is None for sid in ids] == [True, True, True, True, False]
    assert c.stats.received == 1


def test_handle_message_without_cache_only_counts() -> None:
    c = coordinator(None)
    c.handle_message(encode_message(CLEARED, None, "other"))
    c.handle_message(encode_message(DELETED, new_session_id(), "other"))
    assert c.stats.received == 2


# --- CoherentCache: no stale fill ---------------------------------------------------------


def two_ids_in_different_slots() -> tuple[str, str]:
    a = new_session_id()
    while True:
        b = new_session_id()
        if hash(a) % GENERATION_SLOTS != hash(b) % GENERATION_SLOTS:
            return a, b


def test_fill_with_a_fresh_token_is_accepted() -> None:
    cache = CoherentCache(10, 60.0)
    sid = new_session_id()
    token = cache.fill_token(sid)
    assert cache.fill(sid, "v1", token, 60.0) is True
    assert cache.get(sid) == "v1"
    assert len(cache) == 1 and cache.stats().size == 1


@pytest.mark.parametrize("event", ["invalidate", "local-write", "flush", "invalidate-uncached"])
def test_fill_with_a_stale_token_is_refused(event: str) -> None:
    cache = CoherentCache(10, 60.0)
    sid = new_session_id()
    if event != "invalidate-uncached":
        cache.put_if(sid, "v0", cache.fill_token(sid), 60.0)
        cache.invalidate(sid)  # the miss that starts a read
    token = cache.fill_token(sid)  # taken before reading Redis
    if event.startswith("invalidate"):
        assert cache.invalidate(sid) is False  # nothing cached, but the fill is voided anyway
        expected = None
    elif event == "local-write":
        cache.put_if(sid, "v2-local-write", cache.fill_token(sid), 60.0)
        expected = "v2-local-write"
    else:
        cache.flush()
        expected = None
    assert cache.fill(sid, "v1-old", token, 60.0) is False
    assert cache.get(sid) == expected
    # a token taken after the event is good again
    assert cache.fill(sid, "v3", cache.fill_token(sid), 60.0) is True
    assert cache.get(sid) == "v3"


def test_invalidate_of_another_slot_does_not_void_a_fill() -> None:
    cache = CoherentCache(10, 60.0)
    a, b = two_ids_in_different_slots()
    token = cache.fill_token(a)
    cache.put_if(b, "b", cache.fill_token(b), 60.0)
    cache.invalidate(b)
    assert cache.fill(a, "a", token, 60.0) is True
    assert cache.get(a) == "a"


def test_invalidate_reports_whether_cached() -> None:
    cache = CoherentCache(10, 60.0)
    sid = new_session_id()
    assert cache.invalidate(sid) is False
    cache.put_if(sid, 1, cache.fill_token(sid), 60.0)
    assert cache.invalidate(sid) is True
    assert cache.get(sid) is None


@settings(max_examples=300)
@given(st.lists(st.tuples(st.sampled_from(["token", "fill", "invalidate", "put_if", "flush"]), st.integers(0, 2)), max_size=40))
def test_coherent_cache_model(ops: list[tuple[str, int]]) -> None:
    """Against a model: a fill lands iff nothing touched its id (or everything) since its token."""
    ids = [new_session_id() for _ in range(3)]
    while len({hash(i) % GENERATION_SLOTS for i in ids}) < 3:
        ids = [new_session_id() for _ in range(3)]
    cache = CoherentCache(10, 60.0)
    gen = [0, 0, 0]
    epoch = 0
    tokens: dict[int, tuple[Any, tuple[int, int]]] = {}
    expected: dict[int, Any] = {}
    for n, (op, i) in enumerate(ops):
        sid = ids[i]
        if op == "token":
            tokens[i] = (cache.fill_token(sid), (epoch, gen[i]))
        elif op == "fill" and i in tokens:
            token, seen = tokens[i]
            ok = cache.fill(sid, n, token, 60.0)
            assert ok == (seen == (epoch, gen[i]))
            if ok:
                expected[i] = n
        elif op == "invalidate":
            cache.invalidate(sid)
            gen[i] += 1
            expected.pop(i, None)
        elif op == "put_if" and i in tokens:  # a local write, its token taken before it
            token, seen = tokens[i]
            ok = cache.put_if(sid, n, token, 60.0)
            assert ok == (seen == (epoch, gen[i]))
            gen[i] += 1
            if ok:
                expected[i] = n
            else:
                expected.pop(i, None)
        elif op == "flush":
            cache.flush()
            epoch += 1
            expected.clear()
        for j in range(3):
            assert cache.get(ids[j]) == expected.get(j)


def test_cache_hit_is_lock_free_and_ttl_bounded() -> None:
    cache = CoherentCache(10, 60.0)
    sid = new_session_id()
    cache.put_if(sid, "v", cache.fill_token(sid), 0.05)
    assert cache.get(sid) == "v"
    deadline = time.monotonic() + 3
    while cache.get(sid) is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cache.get(sid) is None  # the per-entry TTL (capped by the Redis expiry) applies
    assert len(cache) == 0
