"""The cores of fewer trips, without Redis: update messages, ``CoherentCache`` absent ids
and replacements, and ``Flights`` (single-flight bookkeeping)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgpack
import pytest

from fastsess import Session
from fastsess._core.coherence import CoherentCache
from fastsess._core.flights import RETRY, Flights
from fastsess._core.messages import (
    DELETED,
    FILLED,
    INVALIDATED,
    MAX_MESSAGE_BYTES,
    MAX_UPDATE_MESSAGE_BYTES,
    complete_fill,
    decode_message,
    encode_message,
    fill_prefix,
)
from fastsess._core.ops import GET_PTTL_FILL
from fastsess.config import MAX_UPDATE_BYTES
from fastsess.stores.base import new_session_id

SID = new_session_id()


# --- update messages --------------------------------------------------------------------------


def test_an_update_message_round_trips() -> None:
    data = encode_message(INVALIDATED, SID, "node/1", 7, 1800, payload=b"\x00value")
    assert decode_message(data) == {"t": INVALIDATED, "id": SID, "node": "node/1", "v": 7, "p": b"\x00value", "e": 1800}


def test_a_plain_message_has_no_payload_keys() -> None:
    assert decode_message(encode_message(INVALIDATED, SID, "node/1", 7)) == {"t": INVALIDATED, "id": SID, "node": "node/1", "v": 7}


def test_the_largest_update_fits_and_one_byte_more_is_refused() -> None:
    data = encode_message(INVALIDATED, SID, "n" * 200, 2**62, 10**9, payload=b"x" * MAX_UPDATE_BYTES)
    assert len(data) <= MAX_UPDATE_MESSAGE_BYTES
    assert decode_message(data) is not None
    with pytest.raises(ValueError):
        encode_message(INVALIDATED, SID, "n", 1, 60, payload=b"x" * (MAX_UPDATE_BYTES + 1))


@pytest.mark.parametrize(("kind", "expires_in"), [(DELETED, 60), (INVALIDATED, None)])
def test_a_payload_needs_an_invalidated_message_and_an_expiry(kind: str, expires_in: Any) -> None:
    with pytest.raises(ValueError):
        encode_message(kind, SID, "n", 1, expires_in, payload=b"x")


@pytest.mark.parametrize(
    "extra",
    [
        {"p": "text, not bytes", "e": 60},
        {"p": b"x"},  # no expiry
        {"p": b"x", "e": 0},
        {"p": b"x", "e": -1},
        {"p": b"x", "e": 1.5},
        {"p": b"x", "e": True},
        {"p": None, "e": 60},
    ],
)
def test_malformed_update_fields_make_the_message_malformed(extra: dict[str, Any]) -> None:
    assert decode_message(msgpack.packb({"t": INVALIDATED, "id": SID, "node": "n", "v": 1, **extra})) is None


def test_a_payload_on_another_kind_is_malformed() -> None:
    assert decode_message(msgpack.packb({"t": DELETED, "id": SID, "node": "n", "v": 1, "p": b"x", "e": 60})) is None


def test_without_a_payload_the_plain_size_limit_holds() -> None:
    big = msgpack.packb({"t": INVALIDATED, "id": SID, "node": "n" * MAX_MESSAGE_BYTES, "v": 1})
    assert decode_message(big) is None


# --- CoherentCache: absent ids and replacements ------------------------------------------------


def session(version: int, **data: Any) -> Session:
    return Session(SID, data, ttl=1800, new=False, version=version)


def test_absent_ids_need_an_unchanged_token() -> None:
    cache = CoherentCache(100, 30.0, absent_ttl=5.0)
    token = cache.fill_token(SID)
    cache.invalidate(SID)  # e.g. the create's message arrived during the read
    assert cache.fill_absent(SID, token) is False and not cache.is_absent(SID)
    assert cache.fill_absent(SID, cache.fill_token(SID)) is True and cache.is_absent(SID)


@pytest.mark.parametrize("forget", ["invalidate", "flush", "put_if", "fill", "replace"])
def test_every_sign_of_the_id_forgets_it_as_absent(forget: str) -> None:
    cache = CoherentCache(100, 30.0, absent_ttl=5.0)
    assert cache.fill_absent(SID, cache.fill_token(SID))
    if forget == "invalidate":
        cache.invalidate(SID)
    elif forget == "flush":
        cache.flush()
    elif forget == "put_if":
        cache.put_if(SID, session(1), cache.fill_token(SID), 10.0)
    elif forget == "fill":
        cache.fill(SID, session(1), cache.fill_token(SID), 10.0)
    else:
        cache.replace(SID, session(2), 10.0, 10)
    assert not cache.is_absent(SID)


def test_without_absent_ttl_nothing_is_remembered() -> None:
    cache = CoherentCache(100, 30.0)
    assert cache.fill_absent(SID, cache.fill_token(SID)) is False and not cache.is_absent(SID)


def test_the_absent_ids_are_bounded() -> None:
    cache = CoherentCache(100, 30.0, absent_ttl=5.0, absent_max_size=10)
    ids = [new_session_id() for _ in range(50)]
    for sid in ids:
        cache.fill_absent(sid, cache.fill_token(sid))
    assert sum(cache.is_absent(sid) for sid in ids) <= 10


def test_replace_installs_only_a_newer_version() -> None:
    cache = CoherentCache(100, 30.0)
    cache.fill(SID, session(5, v="cached"), cache.fill_token(SID), 10.0)
    assert cache.replace(SID, session(4, v="older"), 10.0, 10) is False
    assert cache.get(SID) is None  # evicted, never the older copy
    cache.fill(SID, session(5, v="cached"), cache.fill_token(SID), 10.0)
    assert cache.replace(SID, session(5, v="same"), 10.0, 10) is False and cache.get(SID) is None
    cache.fill(SID, session(5, v="cached"), cache.fill_token(SID), 10.0)
    assert cache.replace(SID, session(6, v="newer"), 10.0, 10) is True
    assert cache.get(SID)["v"] == "newer" and cache.replaced == 1


def test_replace_voids_fills_in_flight_and_adds_nothing_uncached() -> None:
    cache = CoherentCache(100, 30.0)
    token = cache.fill_token(SID)
    assert cache.replace(SID, session(9), 10.0, 10) is False  # not cached: not added
    assert cache.get(SID) is None
    assert cache.fill(SID, session(8), token, 10.0) is False  # the read in flight may be older


def test_replace_respects_the_item_size_limit() -> None:
    cache = CoherentCache(100, 30.0, max_bytes=1000, max_item_bytes=100)
    cache.fill(SID, session(1), cache.fill_token(SID), 10.0, 10)
    assert cache.replace(SID, session(2), 10.0, 101) is False and cache.get(SID) is None


# --- Flights ------------------------------------------------------------------------------------


def test_a_follower_joins_only_a_flight_with_its_token() -> None:
    flights = Flights()
    signals: list[object] = []
    lead, leading = flights.take(SID, (0, 0), lambda: signals.append(object()) or signals[-1])
    assert leading and lead.signal is None
    follow, leading = flights.take(SID, (0, 0), lambda: signals.append(object()) or signals[-1])
    assert not leading and follow is lead and lead.signal is signals[0] and lead.followers == 1
    newer, leading = flights.take(SID, (0, 1), object)  # after an invalidation: a flight of its own
    assert leading and newer is not lead
    assert flights.land(SID, lead, session(1, v=1)) is signals[0]
    assert flights.get(SID) is newer  # landing the older flight leaves the newer one
    assert flights.land(SID, newer, None) is None and len(flights) == 0


def test_followers_get_private_copies_of_a_pristine_result() -> None:
    flights = Flights()
    lead, _ = flights.take(SID, (0, 0), object)
    follow, _ = flights.take(SID, (0, 0), object)
    result = session(1, v=1)
    flights.land(SID, lead, result)
    result["v"] = "changed by the leader's caller"
    a, b = follow.outcome(), follow.outcome()
    assert a["v"] == b["v"] == 1 and a is not b


def test_followers_share_an_error_and_retry_after_a_cancellation() -> None:
    flights = Flights()
    lead, _ = flights.take(SID, (0, 0), object)
    follow, _ = flights.take(SID, (0, 0), object)
    flights.land(SID, lead, error=ConnectionError("down"))
    with pytest.raises(ConnectionError):
        follow.outcome()
    lead, _ = flights.take(SID, (0, 0), object)
    follow, _ = flights.take(SID, (0, 0), object)
    flights.land(SID, lead, error=KeyboardInterrupt())  # not an Exception: the follower reads itself
    assert follow.outcome() is RETRY


def test_a_payload_does_not_make_room_for_other_fields() -> None:
    padded = msgpack.packb({"t": INVALIDATED, "id": SID, "node": "n" * 2000, "v": 1, "p": b"x", "e": 60})
    assert decode_message(padded) is None


def test_a_creation_mark_goes_only_on_invalidated() -> None:
    assert decode_message(encode_message(INVALIDATED, SID, "n", 1, created=True))["c"] is True
    with pytest.raises(ValueError):
        encode_message(DELETED, SID, "n", 1, created=True)
    for bad in ({"t": DELETED, "c": True}, {"t": INVALIDATED, "c": 1}, {"t": INVALIDATED, "c": False}):
        assert decode_message(msgpack.packb({"id": SID, "node": "n", "v": 1, **bad})) is None


def test_a_creation_voids_absent_fills_but_keeps_copies_and_their_fills() -> None:
    cache = CoherentCache(100, 30.0, absent_ttl=5.0)
    other = new_session_id()
    absent_token, fill_token = cache.fill_token(SID), cache.fill_token(other)
    cache.fill(other, session(1), cache.fill_token(other), 10.0)
    cache.created(SID)
    assert cache.fill_absent(SID, absent_token) is False  # it may have read "no key" just before the creation
    cache.created(other)
    assert cache.get(other) is not None  # a copy read after the creation stays
    assert cache.fill(other, session(1), fill_token, 10.0) is True  # and so do fills in flight
    cache.invalidate(other)
    assert cache.fill(other, session(1), fill_token, 10.0) is False  # an invalidation still voids them


def test_a_forked_child_does_not_follow_a_parent_threads_read() -> None:
    # the fork hook calls after_fork on every coherent cache: the reads in flight go with it
    cache = CoherentCache(100, 30.0)
    parent_read, leading = cache.flights.take(SID, cache.fill_token(SID), object)
    assert leading
    cache.after_fork()
    child_read, leading = cache.flights.take(SID, cache.fill_token(SID), object)
    assert leading and child_read is not parent_read


# --- filled messages (warm_peers) -------------------------------------------------------------


def test_a_filled_message_round_trips_and_is_never_numbered() -> None:
    data = complete_fill(fill_prefix("sid", "n/1"), 90, b"\x81\xa1k\x01")
    assert decode_message(data) == {"t": FILLED, "id": "sid", "node": "n/1", "e": 90, "p": b"\x81\xa1k\x01"}
    numbered = msgpack.packb({"t": FILLED, "id": "sid", "node": "n/1", "e": 90, "p": b"x", "ep": "1", "sq": "7"})
    assert decode_message(numbered) is None  # a filled message must not move a listener's sequence


@pytest.mark.parametrize("fields", [
    {"e": 90}, {"p": b"x"}, {"p": "text", "e": 90}, {"p": b"x", "e": 0}, {"p": b"x", "e": "90"}, {"p": b"x", "e": 90, "c": True},
])
def test_malformed_filled_messages_are_dropped(fields: dict[str, Any]) -> None:
    assert decode_message(msgpack.packb({"t": FILLED, "id": "sid", "node": "n/1", **fields})) is None


def test_a_filled_message_is_built_only_by_fill_prefix() -> None:
    with pytest.raises(ValueError, match="fill_prefix"):
        encode_message(FILLED, "sid", "n/1")


def test_the_load_script_publishes_what_complete_fill_builds(redis_client: Any) -> None:
    """The Lua step and its Python twin give the same bytes (uint 32 expiry, bin 32 value)."""
    key, channel, value = f"fill-test:{uuid.uuid4().hex}", f"fill-test:{uuid.uuid4().hex}", b"v" * 300
    redis_client.set(key, value, ex=100)
    pubsub = redis_client.pubsub()
    pubsub.subscribe(channel)
    try:
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        prefix = fill_prefix("sid", "n/1")
        got, pttl = redis_client.eval(GET_PTTL_FILL.text, 1, key, channel, prefix, 4096)
        assert got == value and 99_000 <= pttl <= 100_000
        msg = pubsub.get_message(timeout=5)
        assert msg is not None and msg["data"] == complete_fill(prefix, pttl // 1000, value)
        redis_client.eval(GET_PTTL_FILL.text, 1, key, channel, prefix, 299)  # larger than the limit: not published
        redis_client.persist(key)
        redis_client.eval(GET_PTTL_FILL.text, 1, key, channel, prefix, 4096)  # no expiry: not published
        redis_client.pexpire(key, 999)
        got, pttl = redis_client.eval(GET_PTTL_FILL.text, 1, key, channel, prefix, 4096)  # under a second left: not published
        assert got == value and 0 < pttl < 1000
        assert pubsub.get_message(timeout=0.2) is None
    finally:
        pubsub.close()
        redis_client.delete(key)


# --- this node's own writes hold off adds until the listener heard past them -------------------


def test_a_written_id_is_not_added_until_the_listener_heard_past_the_write() -> None:
    import time

    from fastsess._core.coherence import MAX_WRITTEN

    cache = CoherentCache(100, 30.0)
    value = Session("a", {"v": 1}, ttl=60, new=False, version=1)
    before = time.monotonic()
    cache.wrote("a", before - 1)
    assert not cache.warm("a", value, 10.0, 10, heard=before)  # a PING sent before the write: not enough
    assert not cache.replace("a", value, 10.0, 10, add=True, heard=before)
    assert cache.warm("b", value, 10.0, 10, heard=before)  # another id: added
    assert cache.warm("a", value, 10.0, 10, heard=time.monotonic())  # heard past the write
    cache.wrote(None)  # a clear: every id waits
    assert not cache.warm("c", value, 10.0, 10, heard=before)
    assert cache.warm("c", value, 10.0, 10, heard=time.monotonic())
    # Full: the writes already heard past are forgotten first, so nothing else waits ...
    for n in range(MAX_WRITTEN):
        cache.wrote(f"w{n}", -1.0)
    heard = time.monotonic()
    cache.wrote("new", heard)
    assert cache.warm("d", value, 10.0, 10, heard=heard)
    assert not cache.warm("new", value, 10.0, 10, heard=heard)
    # ... and when none was, every id waits for the next proof.
    for n in range(MAX_WRITTEN):
        cache.wrote(f"x{n}", -1.0)
    cache.wrote("newer", -1.0)
    assert not cache.warm("e", value, 10.0, 10, heard=heard)
    assert cache.warm("e", value, 10.0, 10, heard=time.monotonic())


@pytest.mark.parametrize("warm", [False, True])
def test_only_a_warm_peers_policy_records_its_writes(warm: bool) -> None:
    """The map of this node's writes (``CoherentCache.wrote``) holds messages off adding an
    id; without warm_peers no message adds anything, so nothing is recorded."""
    from fastsess import ClusterConfig
    from fastsess._core.policy import CachePolicy

    cache = CoherentCache(100, 60.0)
    policy = CachePolicy(ClusterConfig(update_max_bytes=4096, warm_peers=warm), cache)
    s = session(1, user="x")
    policy.written(s, True, cache.fill_token(s.id), time.monotonic(), 10)
    policy.invalidate("other")
    policy.uncertain("third")
    assert sorted(cache._written) == (sorted([s.id, "other", "third"]) if warm else [])
    policy.flush()
    assert (cache._written_all is not None) is warm
