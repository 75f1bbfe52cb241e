"""The listener's shortcut for this node's own echo (``CoordinatorBase.own_echo``), without Redis.

Every save publishes a message that comes back to the node's own listener.  When its
bytes are exactly a message this coordinator built, completed with the current epoch
and the next sequence number, the listener only counts it and advances the sequence;
anything else goes the general way (decode, sequence check, ``apply_message``).  These
tests hold the shortcut to doing what the general way would have done.
"""

from __future__ import annotations

from typing import Any

from fastsess import ClusterConfig
from fastsess._core.coherence import CoherentCache
from fastsess._core.listener import CONNECT, FLUSH, LISTENING, SERVE, CoordinatorBase, Dispatch, Replay
from fastsess._core.messages import INVALIDATED, TOUCHED, append_sequence, encode_message
from fastsess._core.tracking import TrackedChanges
from fastsess.stores.base import new_session_id

EPOCH = "1700000000000001"


class Fixed:
    def compute(self, failures: int) -> float:
        return 1.0


def in_sync(cache: CoherentCache | None, last: int = 5, sequenced: bool = True) -> CoordinatorBase:
    """A coordinator whose machine is listening, in sync at sequence ``last`` (sequenced)."""
    c = CoordinatorBase(ClusterConfig(node_id="me", channel="ch", lease=60.0), cache, Fixed(), sequenced=sequenced)
    m = c.machine
    assert m.start(0.0) == (CONNECT,)
    if sequenced:
        assert m.subscribed(0.01) == (Replay(None),)
        assert m.replayed([b"run:replid", EPOCH.encode(), last, []], 0.01, 0.02) == (FLUSH, SERVE)
    else:
        assert m.subscribed(0.01) == (FLUSH, SERVE)
    assert m.state == LISTENING
    return c


def deliver(c: CoordinatorBase, data: bytes, now: float = 0.5) -> tuple[bool, tuple[Any, ...]]:
    """What the listener thread does with a message: the shortcut, else the general way.
    Returns (taken by the shortcut, the actions)."""
    actions = c.own_echo(data, now)
    fast = actions is not None
    if actions is None:
        actions = c.machine.message(data, now)
    c.apply(actions)
    return fast, tuple(actions)


def echo(c: CoordinatorBase, seq: int, session_id: str, version: int = 1, **kw: Any) -> bytes:
    """What the write script publishes for this node's message ``seq``."""
    return append_sequence(c.message(INVALIDATED, session_id, version, **kw), EPOCH, seq)


def cached(cache: CoherentCache, sid: str) -> None:
    cache.put_if(sid, {"sid": sid}, cache.fill_token(sid), 60.0)


def test_an_own_echo_next_in_sequence_is_counted_and_advances_the_sequence() -> None:
    cache = CoherentCache(100, 60.0)
    c = in_sync(cache)
    sid = new_session_id()
    cached(cache, sid)
    for seq in (6, 7, 8):
        fast, actions = deliver(c, echo(c, seq, sid, seq))
        assert fast and actions == ()
    s = c.stats
    assert (s.sequence, s.ignored_own, s.received, s.malformed, s.gaps, s.foreign_own_id) == (8, 3, 0, 0, 0, 0)
    assert cache.get(sid) is not None and c._pending == {}


def test_update_mode_and_touch_echoes_take_the_shortcut_too() -> None:
    c = in_sync(CoherentCache(100, 60.0))
    sid = new_session_id()
    assert deliver(c, echo(c, 6, sid, 2, expires_in=60, payload=b"\x01" * 300))[0]
    assert deliver(c, append_sequence(c.message(TOUCHED, sid, expires_in=30), EPOCH, 7))[0]
    assert c.stats.sequence == 7 and c.stats.ignored_own == 2


def test_echoes_arriving_in_another_order_than_built() -> None:
    """Two threads build their messages, the server runs the second write first."""
    c = in_sync(CoherentCache(100, 60.0))
    first, second = c.message(INVALIDATED, new_session_id(), 1), c.message(INVALIDATED, new_session_id(), 1)
    assert deliver(c, append_sequence(second, EPOCH, 6))[0]
    assert deliver(c, append_sequence(first, EPOCH, 7))[0]
    assert c.stats.sequence == 7 and c.stats.ignored_own == 2 and c._pending == {}


def test_the_same_bytes_twice_is_a_foreign_message_with_our_id() -> None:
    """A replayed copy of our message, even numbered as the next one, is not ours the
    second time: more echoes than messages built (counted and applied, as before)."""
    cache = CoherentCache(100, 60.0)
    c = in_sync(cache)
    sid = new_session_id()
    own = c.message(INVALIDATED, sid, 3)
    cached(cache, sid)
    assert deliver(c, append_sequence(own, EPOCH, 6)) == (True, ())
    cached(cache, sid)
    fast, actions = deliver(c, append_sequence(own, EPOCH, 7))
    assert not fast and isinstance(actions[0], Dispatch)
    s = c.stats
    assert s.foreign_own_id == 1 and s.ignored_own == 1 and s.received == 1 and s.sequence == 7
    assert cache.get(sid) is None  # applied like another node's invalidation


def test_a_forged_message_with_our_id_but_bytes_we_never_built_goes_the_general_way() -> None:
    cache = CoherentCache(100, 60.0)
    c = in_sync(cache)
    sid = new_session_id()
    built = c.message(INVALIDATED, sid, 3)
    forged = append_sequence(encode_message(INVALIDATED, sid, c.instance_id, 4, sequenced=True), EPOCH, 6)
    assert forged != append_sequence(built, EPOCH, 6)
    fast, _ = deliver(c, forged)
    assert not fast  # not bytes this coordinator built: decoded, and (issued > ignored) counted as own as before
    assert c.stats.ignored_own == 1 and c.stats.sequence == 6
    # The forgery used up the one echo we were owed: our real echo is now one too many,
    # counted as a foreign message with our id (as without the shortcut).
    fast, _ = deliver(c, append_sequence(built, EPOCH, 7))
    assert not fast and c.stats.ignored_own == 1 and c.stats.foreign_own_id == 1 and c.stats.sequence == 7


def test_a_gap_right_after_an_own_echo_is_seen_and_replayed() -> None:
    c = in_sync(CoherentCache(100, 60.0))
    sid = new_session_id()
    assert deliver(c, echo(c, 6, sid))[0]
    fast, actions = deliver(c, echo(c, 9, sid, 2))  # 7 and 8 never arrived: not the next number
    assert not fast and Replay(7) in actions
    assert c.machine.gaps == 1 and c.stats.ignored_own == 2 and not c.machine.serving


def test_an_own_echo_with_another_epoch_goes_the_general_way_and_flushes() -> None:
    cache = CoherentCache(100, 60.0)
    c = in_sync(cache)
    sid = new_session_id()
    cached(cache, sid)
    fast, actions = deliver(c, append_sequence(c.message(INVALIDATED, sid, 1), "1800000000000002", 6))
    assert not fast and FLUSH in actions and cache.get(sid) is None and c.machine.full_flushes == 1


def test_an_own_echo_of_an_uncertain_write_still_invalidates() -> None:
    cache = CoherentCache(100, 60.0)
    c = in_sync(cache)
    sid, other = new_session_id(), new_session_id()
    cache.mark_uncertain(sid)
    cached(cache, sid)
    cached(cache, other)
    assert deliver(c, echo(c, 6, sid))[0]
    assert cache.get(sid) is None  # the write may have landed after what was cached
    assert deliver(c, echo(c, 7, other))[0]
    assert cache.get(other) is not None  # no unknown outcome for this one: kept
    assert c.stats.ignored_own == 2 and c.stats.sequence == 7


def test_with_tracking_the_echo_marks_the_own_write() -> None:
    """Tracking: the own echo tells the listener that the notification of that key on the
    same connection is this node's own write (kept), as the general path does."""
    c = in_sync(CoherentCache(100, 60.0))
    c.tracking = TrackedChanges("p:")
    c.source = 1
    sid, outside = new_session_id(), new_session_id()
    assert deliver(c, echo(c, 6, sid))[0]
    assert c.tracking.notified(1, [b"p:" + sid.encode(), b"p:" + outside.encode()]) == [outside]
    assert c.stats.ignored_own == 1 and c.stats.sequence == 6


def test_the_short_way_and_the_general_way_leave_the_same_state() -> None:
    """The same echoes through both: same counters, sequence, cache, tracking marks."""
    states = []
    for short in (True, False):
        cache = CoherentCache(100, 60.0)
        c = in_sync(cache)
        c.tracking = TrackedChanges("p:")
        ids = [new_session_id() for _ in range(4)]
        for sid in ids:
            cached(cache, sid)
        cache.mark_uncertain(ids[0])
        cached(cache, ids[0])
        messages = [echo(c, 6 + n, sid, n) for n, sid in enumerate(ids)]
        messages.append(append_sequence(c.message(TOUCHED, ids[1], expires_in=30), EPOCH, 10))
        for data in messages:
            actions = c.own_echo(data, 0.5) if short else None
            assert (actions is not None) == short
            c.apply(actions if actions is not None else c.machine.message(data, 0.5))
        kept = c.tracking.notified(0, [b"p:" + sid.encode() for sid in ids])
        states.append((c.stats._replace(lease_left=0), [cache.get(sid) is not None for sid in ids], kept))
    assert states[0] == states[1]
    assert states[0][1] == [False, True, True, True] and states[0][2] == []


def test_while_syncing_the_echo_goes_the_general_way() -> None:
    c = in_sync(CoherentCache(100, 60.0))
    sid = new_session_id()
    deliver(c, echo(c, 8, sid))  # a gap: now syncing
    assert c.machine.state != LISTENING
    assert not deliver(c, echo(c, 9, sid, 2))[0]


def test_unsequenced_own_echoes_take_the_shortcut() -> None:
    c = in_sync(CoherentCache(100, 60.0), sequenced=False)
    sid = new_session_id()
    own = c.message(INVALIDATED, sid, 1)
    assert deliver(c, own) == (True, ())
    assert not deliver(c, own)[0] and c.stats.foreign_own_id == 1


def test_a_message_built_unsequenced_by_a_sequenced_coordinator_is_not_remembered() -> None:
    c = in_sync(CoherentCache(100, 60.0))
    own = c.message(INVALIDATED, new_session_id(), sequenced=False)  # publish(): PUBLISH as it is
    assert c._pending == {}
    assert not deliver(c, own)[0] and c.stats.ignored_own == 1


def test_messages_whose_echo_never_comes_do_not_pile_up() -> None:
    from fastsess._core.listener import MAX_PENDING_ECHOES

    c = in_sync(CoherentCache(100, 60.0))
    for n in range(MAX_PENDING_ECHOES * 3):
        c.message(INVALIDATED, new_session_id(), n)  # conflicts, failures: never published
    assert len(c._pending) <= MAX_PENDING_ECHOES
    sid = new_session_id()
    assert deliver(c, echo(c, 6, sid))[0]


def test_garbage_and_other_nodes_messages_are_left_to_the_general_way() -> None:
    c = in_sync(CoherentCache(100, 60.0))
    c.message(INVALIDATED, new_session_id(), 1)
    for data in (b"", b"garbage", b"\xa2sq", b"x" * 5000):
        assert c.own_echo(data, 0.5) is None
    assert c.own_echo("text", 0.5) is None  # type: ignore[arg-type]
    twin = in_sync(None)
    assert c.own_echo(append_sequence(twin.message(INVALIDATED, new_session_id(), 1), EPOCH, 6), 0.5) is None
    assert c.stats.ignored_own == 0 and c.stats.sequence == 5
