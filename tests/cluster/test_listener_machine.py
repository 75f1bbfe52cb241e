"""The listener's state machine, without Redis: events in, actions out (``fastsess._core.listener``)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from fastsess import ClusterConfig
from fastsess._core.listener import (
    BYPASS,
    CLOSE,
    CONNECT,
    FLUSH,
    LISTENING,
    SERVE,
    STOPPED,
    SUBSCRIBING,
    SYNCING,
    WAITING,
    Dispatch,
    Evict,
    Flush,
    ListenerMachine,
    Ping,
    Reconnect,
    Replay,
)
from fastsess._core.messages import append_sequence, decode_message, encode_message

IDLE_TIMEOUT = 1.0
LEASE = 1.0
HEARTBEAT = 0.25  # lease / 4


class Steps:
    """A backoff that hands out 1, 2, 3, ... seconds (failures + 1) and records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def compute(self, failures: int) -> float:
        self.asked.append(failures)
        return float(failures + 1)


def machine(sequenced: bool = False, **config: object) -> ListenerMachine:
    settings: dict[str, object] = {"channel": "ch", "subscribe_timeout": IDLE_TIMEOUT, "lease": LEASE, **config}
    return ListenerMachine(ClusterConfig(**settings), Steps(), sequenced)  # type: ignore[arg-type]


def listening(**config: object) -> ListenerMachine:
    m = machine(**config)
    assert m.start(0.0) == (CONNECT,)
    assert m.subscribed(0.125) == (FLUSH, SERVE)
    return m


def test_start_connects_and_the_confirmation_flushes_then_serves() -> None:
    m = machine()
    assert not m.serving
    assert m.start(10.0) == (CONNECT,) and m.state == SUBSCRIBING and not m.serving
    assert m.idle(10.5) == ()  # within the subscription deadline: keep waiting
    assert m.subscribed(10.6) == (FLUSH, SERVE)
    assert m.state == LISTENING and m.serving and m.reconnects == 0


def test_a_message_is_dispatched_decoded() -> None:
    m = listening()
    data = encode_message("invalidated", "a" * 43, "n/1", 3)
    assert m.message(data, 0.2) == (Dispatch(decode_message(data)),)
    assert m.message(b"junk", 0.2) == (Dispatch(None),)  # malformed: counted by the coordinator
    assert m.serving


def test_pings_go_out_every_quarter_lease_and_pongs_renew_the_lease() -> None:
    m = listening()  # subscribed (proven) at 0.125
    assert m.timeout(0.125) == HEARTBEAT
    assert m.idle(0.25) == ()
    assert m.idle(0.375) == (Ping(1),)
    assert m.idle(0.5) == ()  # the next one is due a heartbeat later
    assert m.timeout(0.5) == HEARTBEAT - 0.125
    assert m.pong(b"1", 0.5) == ()  # still serving: nothing to do, proven as of 0.375
    assert m.lease_until == 0.375 + LEASE
    assert m.idle(0.625) == (Ping(2),)
    assert m.pong(b"", 0.7) == () and m.pong(b"junk", 0.7) == ()  # not ours (no number, or an old one)
    assert m.serving


def test_a_lease_that_runs_out_bypasses_until_a_pong_proves_it_again() -> None:
    """1.5 s of added latency: every PONG proves the cache current as of 1.5 s ago, older
    than the lease, so the cache stays bypassed; when the latency goes, it is served again."""
    m = listening(subscribe_timeout=5.0)  # the connection itself is not given up
    assert m.idle(0.375) == (Ping(1),)
    assert m.idle(0.625) == (Ping(2),)
    assert m.idle(0.875) == (Ping(3),)
    assert m.idle(1.125) == (BYPASS, Ping(4))  # proven at 0.125: the lease ran out at 1.125
    assert not m.serving and m.lease_lapses == 1
    assert m.pong(b"1", 1.875) == (Ping(5),)  # proves 0.375: older than the lease (and the next PING is due)
    assert not m.serving
    assert m.pong(b"2", 1.95) == () and m.pong(b"3", 2.0) == () and m.pong(b"4", 2.0625) == (SERVE,)  # proves 1.125
    assert m.serving and m.lease_until == 1.125 + LEASE


def test_a_pong_that_skips_a_ping_means_lost_input() -> None:
    m = listening()
    assert m.idle(0.375) == (Ping(1),)
    assert m.idle(0.625) == (Ping(2),)
    assert m.pong(b"2", 0.7) == (BYPASS, FLUSH, Reconnect(1.0))
    assert m.last_error is not None and "went missing" in m.last_error


def test_an_unanswered_ping_fails_the_connection_and_reconnects() -> None:
    m = listening()
    assert m.idle(0.375) == (Ping(1),)
    assert m.timeout(0.5) == HEARTBEAT - 0.125
    assert m.idle(0.625) == (Ping(2),)
    assert m.idle(0.875) == (Ping(3),)
    assert m.idle(1.125) == (BYPASS, Ping(4))  # the lease ran out first
    assert m.timeout(1.25) == 0.125  # the first PING's deadline
    assert m.idle(0.375 + IDLE_TIMEOUT) == (BYPASS, FLUSH, Reconnect(1.0))
    assert m.state == WAITING and not m.serving
    assert m.last_error == f"ConnectionError: no PONG within {IDLE_TIMEOUT:g} s on the invalidation channel"
    assert m.retry(5.0) == (CONNECT,) and m.state == SUBSCRIBING


def test_an_unconfirmed_subscription_times_out_into_a_reconnect() -> None:
    m = machine()
    m.start(0.0)
    assert m.timeout(0.25) == pytest.approx(IDLE_TIMEOUT - 0.25)
    assert m.idle(IDLE_TIMEOUT) == (BYPASS, FLUSH, Reconnect(1.0))
    assert m.last_error is not None and m.last_error.startswith("TimeoutError: subscription to 'ch' not confirmed")


def test_an_error_bypasses_and_flushes_the_cache_then_reconnects(caplog: pytest.LogCaptureFixture) -> None:
    m = listening()
    with caplog.at_level(logging.DEBUG, logger="fastsess.cluster"):
        assert m.error(ConnectionError("reset by peer"), 1.0) == (BYPASS, FLUSH, Reconnect(1.0))
        assert m.last_error == "ConnectionError: reset by peer" and not m.serving
        assert m.retry(2.0) == (CONNECT,)
        assert m.error(OSError("refused"), 2.1) == (BYPASS, FLUSH, Reconnect(2.0))  # not served: still flushed
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert levels[0][0] == logging.WARNING and "lost the invalidation channel" in levels[0][1]
    assert levels[1][0] == logging.DEBUG and "OSError: refused" in levels[1][1]  # a failed attempt is no news


def test_with_stale_if_error_an_error_keeps_the_cached_copies() -> None:
    m = listening(stale_if_error=True)
    assert m.error(ConnectionError("x"), 1.0) == (BYPASS, Reconnect(1.0))
    assert m.retry(2.0) == (CONNECT,)
    assert m.subscribed(2.1) == (FLUSH, SERVE)  # flushed when the subscription is back


def test_unsubscribed_by_the_server_is_a_failure() -> None:
    m = listening()
    assert m.unsubscribed(1.0) == (BYPASS, FLUSH, Reconnect(1.0))
    assert m.last_error == "ConnectionError: unsubscribed from the invalidation channel"


def test_resubscribing_counts_a_reconnect_and_a_resubscribe_under_us_flushes() -> None:
    m = listening()
    m.error(ConnectionError("x"), 1.0)
    m.retry(2.0)
    assert m.subscribed(2.1) == (FLUSH, SERVE) and m.reconnects == 1
    assert m.subscribed(3.0) == (FLUSH,) and m.reconnects == 2 and m.serving  # redis-py resubscribed by itself


def test_backoff_grows_with_consecutive_failures_and_resets_on_subscribe() -> None:
    m = machine()
    backoff = m.backoff
    assert isinstance(backoff, Steps)
    m.start(0.0)
    delays = []
    for n in range(4):
        (*_, reconnect) = m.error(OSError("refused"), float(n))
        assert isinstance(reconnect, Reconnect)
        delays.append(reconnect.delay)
        assert m.retry(float(n) + 0.5) == (CONNECT,)
    assert delays == [1.0, 2.0, 3.0, 4.0] and backoff.asked == [0, 1, 2, 3] and m.failures == 4
    m.subscribed(9.0)
    assert m.failures == 0
    m.error(OSError("again"), 10.0)
    assert backoff.asked[-1] == 0  # a fresh run of failures starts from the first delay


def test_the_failure_count_given_to_the_backoff_is_capped() -> None:
    from fastsess._core.listener import MAX_BACKOFF_EXPONENT

    m = machine()
    m.start(0.0)
    for n in range(MAX_BACKOFF_EXPONENT + 5):
        m.error(OSError("refused"), float(n))
        m.retry(float(n))
    backoff = m.backoff
    assert isinstance(backoff, Steps) and max(backoff.asked) == MAX_BACKOFF_EXPONENT


def test_backoff_with_jitter_spreads_the_delays_within_bounds() -> None:
    """With redis-py's EqualJitterBackoff, as the listener thread uses: the n-th delay of a run of
    failures lies in [b/2, b] with b = min(max, first * 2**(n-1)), and twenty machines failing
    together do not all pick the same delay."""
    from redis.backoff import EqualJitterBackoff

    first, cap = 0.05, 5.0
    config = ClusterConfig(channel="ch", reconnect_backoff=(first, cap))
    for n in range(1, 12):
        bound = min(cap, first * 2 ** (n - 1))
        delays = []
        for _ in range(20):
            m = ListenerMachine(config, EqualJitterBackoff(cap=cap, base=first))
            m.start(0.0)
            for _ in range(n - 1):
                m.error(OSError("refused"), 0.0)
                m.retry(0.0)
            (*_, reconnect) = m.error(OSError("refused"), 0.0)
            assert isinstance(reconnect, Reconnect)
            delays.append(reconnect.delay)
        assert all(bound / 2 <= d <= bound <= cap for d in delays), (n, bound, delays)
        assert len(set(delays)) > 1, delays


def test_stop_bypasses_and_closes_and_later_events_do_nothing() -> None:
    m = listening()
    assert m.stop() == (BYPASS, CLOSE)
    assert m.state == STOPPED and not m.serving
    assert m.error(ConnectionError("woken by stop"), 1.0) == ()
    assert m.subscribed(1.0) == () and m.retry(1.0) == () and m.idle(100.0) == ()
    assert m.start(2.0) == (CONNECT,)  # a stopped listener can be started again


def test_retry_only_after_a_failure() -> None:
    m = listening()
    assert m.retry(1.0) == ()
    assert m.serving


def test_fork_starts_over_with_zeroed_counters() -> None:
    m = listening()
    m.error(ConnectionError("x"), 1.0)
    m.retry(1.5)
    m.subscribed(1.6)
    assert m.reconnects == 1 and m.last_error is not None
    assert m.forked() == (BYPASS, FLUSH)
    assert not m.serving and m.reconnects == 0 and m.last_error is None and m.failures == 0
    assert m.start(2.0) == (CONNECT,)
    assert m.subscribed(2.1) == (FLUSH, SERVE) and m.reconnects == 0  # the child's first subscription


def test_an_error_outside_the_listener_bypasses_without_touching_the_connection() -> None:
    m = listening()
    assert m.outside_error(ConnectionError("no slot map")) == (BYPASS, FLUSH)
    assert m.last_error == "ConnectionError: no slot map" and m.state == LISTENING and not m.serving
    assert m.idle(0.375) == (Ping(1),)
    assert m.pong(b"1", 0.4) == (SERVE,)  # the connection still proves the (flushed) cache current


def test_the_core_modules_import_no_redis() -> None:
    code = (
        "import sys\n"
        "import fastsess._core.coherence, fastsess._core.listener, fastsess._core.messages\n"
        "assert 'redis' not in sys.modules, sorted(m for m in sys.modules if m.startswith('redis'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_both_coordinators_drive_the_same_machine() -> None:
    import redis
    import redis.asyncio
    from redis.backoff import EqualJitterBackoff

    from fastsess.asyncio.cluster import ClusterCoordinator as AsyncCoordinator
    from fastsess.cluster import ClusterCoordinator

    config = ClusterConfig(channel="ch")
    sync_client, async_client = redis.Redis(port=1), redis.asyncio.Redis(port=1)
    try:
        coordinators = [ClusterCoordinator(sync_client, config), AsyncCoordinator(async_client, config)]
        assert all(type(c.machine) is ListenerMachine for c in coordinators)
        assert all(type(c.machine.backoff) is EqualJitterBackoff for c in coordinators)  # reconnects with jitter
        assert all(not c.subscribed and c.stats.reconnects == 0 for c in coordinators)
    finally:
        sync_client.close()


# -- sequenced (standalone Redis, Sentinel) ------------------------------------------------

EPOCH = "1700000000000001"
SERVER = "run:replid"


def numbered(seq: int, epoch: str = EPOCH, session_id: str = "a" * 43) -> bytes:
    """A message as a sequenced write script publishes it."""
    return append_sequence(encode_message("invalidated", session_id, "other/1", 1, sequenced=True), epoch, seq)


def log_reply(last: int, entries: list[tuple[int, str]], epoch: str = EPOCH, server: str = SERVER) -> list[object]:
    """The REPLAY script's reply, as redis-py hands it over (bytes)."""
    return [server.encode(), epoch.encode(), last, [[f"{n}-0".encode(), [b"i", sid.encode()]] for n, sid in entries]]


def in_sync(last: int = 5) -> ListenerMachine:
    m = machine(sequenced=True)
    assert m.start(0.0) == (CONNECT,)
    assert m.subscribed(0.0625) == (Replay(None),) and m.state == SYNCING and not m.serving
    assert m.replayed(log_reply(last, []), 0.0625, 0.125) == (FLUSH, SERVE)  # first sync: nothing known, flushed
    assert m.serving and m.seq == last and m.epoch == EPOCH and m.identity == SERVER
    return m


def test_sequenced_messages_in_order_are_applied() -> None:
    m = in_sync(5)
    for n in (6, 7, 8):
        (dispatch,) = m.message(numbered(n), 0.2)
        assert isinstance(dispatch, Dispatch) and dispatch.data["sq"] == n
    assert m.seq == 8 and m.gaps == 0 and m.serving


def test_a_gap_bypasses_and_replays_the_missed_ids_only() -> None:
    m = in_sync(5)
    dispatch, bypass, replay = m.message(numbered(8), 0.2)  # 6 and 7 never arrived
    assert isinstance(dispatch, Dispatch) and bypass == BYPASS and replay == Replay(6)
    assert m.gaps == 1 and not m.serving and m.state == SYNCING
    assert m.message(numbered(9), 0.21) == (Dispatch(decode_message(numbered(9))),)  # applied; the replay decides
    actions = m.replayed(log_reply(9, [(6, "x" * 43), (7, "y" * 43), (8, "a" * 43), (9, "a" * 43)]), 0.22, 0.23)
    assert actions == (Evict(("x" * 43, "y" * 43, "a" * 43, "a" * 43)), SERVE)
    assert m.seq == 9 and m.replays == 1 and m.replayed_ids == 4 and m.full_flushes == 0 and m.serving
    assert m.message(numbered(9), 0.24) == (Dispatch(decode_message(numbered(9))),)  # a repeat of what the replay read
    assert m.full_flushes == 0 and m.message(numbered(10), 0.25)[0] == Dispatch(decode_message(numbered(10)))
    assert m.seq == 10


def test_a_resubscription_replays_from_the_last_number_and_keeps_the_cache() -> None:
    m = in_sync(5)
    assert m.error(ConnectionError("reset"), 1.0) == (BYPASS, Reconnect(1.0))  # sequenced: no flush
    assert m.retry(2.0) == (CONNECT,)
    assert m.subscribed(2.1) == (Replay(6),) and m.reconnects == 1
    assert m.replayed(log_reply(7, [(6, "x" * 43), (7, "y" * 43)]), 2.1, 2.2) == (Evict(("x" * 43, "y" * 43)), SERVE)
    m.error(ConnectionError("reset"), 3.0)
    m.retry(4.0)
    assert m.subscribed(4.1) == (Replay(8),)
    assert m.replayed(log_reply(7, []), 4.1, 4.2) == (SERVE,)  # nothing was missed


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (log_reply(9, [(8, "x" * 43), (9, "y" * 43)]), "the log was trimmed past 6"),
        (log_reply(9, []), "the log is gone"),
        (log_reply(9, [(6, "x" * 43), (7, "y" * 43)]), "fewer entries than numbers (the count limit)"),
        (log_reply(9, [(6, "x" * 43), (7, "y" * 43), (8, "z" * 43), (9, "w" * 43)], epoch="1700000000000002"), "a new epoch (flushed)"),
        (log_reply(9, [(6, "x" * 43), (7, "y" * 43), (8, "z" * 43), (9, "w" * 43)], server="other:server"), "restarted or failed over"),
        (log_reply(3, []), "the sequence went back"),
        (log_reply(6, [(6, "")]), "a clear"),
    ],
)
def test_the_cache_is_flushed_when_the_log_cannot_tell_what_was_missed(reply: list[object], why: str) -> None:
    m = in_sync(5)
    m.error(ConnectionError("reset"), 1.0)
    m.retry(2.0)
    assert m.subscribed(2.1) == (Replay(6),)
    actions = m.replayed(reply, 2.1, 2.2)
    assert actions == (FLUSH, SERVE), why
    assert m.serving and m.seq == reply[2]


def test_a_new_epoch_on_a_live_connection_flushes() -> None:
    m = in_sync(5)
    (dispatch, flush) = m.message(numbered(1, epoch="1700000000000009"), 0.2)  # FLUSHDB, then a write
    assert flush == FLUSH and m.epoch == "1700000000000009" and m.seq == 1 and m.full_flushes == 1 and m.serving


def test_a_number_seen_before_that_no_replay_explains_resynchronises() -> None:
    m = in_sync(5)  # the sync read the log up to 5: a repeat of 1..5 may still come
    assert m.message(numbered(4), 0.2) == (Dispatch(decode_message(numbered(4))),) and m.full_flushes == 0
    m.message(numbered(6), 0.2)  # the first new message: no repeat can come after it
    m.message(numbered(7), 0.2)
    (dispatch, bypass, replay) = m.message(numbered(5, session_id="b" * 43), 0.3)  # a failover under us: 5 again
    assert bypass == BYPASS and replay == Replay(None) and m.full_flushes == 1
    assert m.replayed(log_reply(6, []), 0.3, 0.31) == (FLUSH, SERVE)


def test_a_malformed_replay_reply_is_a_connection_failure() -> None:
    m = machine(sequenced=True)
    m.start(0.0)
    m.subscribed(0.1)
    assert m.replayed([b"x"], 0.1, 0.2) == (BYPASS, Reconnect(1.0))
    assert m.last_error is not None and m.last_error.startswith("ValueError: malformed replay reply")


def test_a_replay_slower_than_the_lease_does_not_serve_until_a_pong() -> None:
    m = machine(sequenced=True)
    m.start(0.0)
    m.subscribed(0.0)
    assert m.replayed(log_reply(5, []), 0.0, 1.5) == (FLUSH,)  # proves 0.0: already older than the lease
    assert not m.serving and m.state == LISTENING
    (ping,) = m.idle(1.5)
    assert isinstance(ping, Ping) and m.pong(str(ping.token).encode(), 1.6) == (SERVE,)


# --- one sequence per shard channel (Redis Cluster) ----------------------------------------

SHARDS = ("{0}ch", "{1}ch", "{3}ch")


def sharded_in_sync(last: int = 5) -> ListenerMachine:
    m = machine(sequenced=True)
    m.shard_names = SHARDS
    assert m.start(0.0) == (CONNECT,)
    assert m.subscribed(0.0625) == (Replay(None, SHARDS[0]),)  # one replay at a time, one per shard
    assert m.replayed(log_reply(last, []), 0.07, 0.08) == (FLUSH, Replay(None, SHARDS[1]))
    assert m.replayed(log_reply(last + 1, []), 0.08, 0.09) == (FLUSH, Replay(None, SHARDS[2]))
    assert not m.serving and m.state == SYNCING
    assert m.replayed(log_reply(last + 2, []), 0.09, 0.1) == (FLUSH, SERVE)
    assert m.serving and m.synced and [m.sequence_of(s).seq for s in SHARDS] == [last, last + 1, last + 2]  # type: ignore[union-attr]
    assert m.proven == 0.07  # every shard current as of the earliest replay
    return m


def test_each_shard_channel_has_its_own_sequence() -> None:
    m = sharded_in_sync(5)
    assert m.message(numbered(6), 0.2, SHARDS[0]) == (Dispatch(decode_message(numbered(6))),)
    assert m.message(numbered(7), 0.2, SHARDS[1]) == (Dispatch(decode_message(numbered(7))),)
    assert m.message(numbered(8), 0.2, SHARDS[2]) == (Dispatch(decode_message(numbered(8))),)
    assert [m.sequence_of(s).seq for s in SHARDS] == [6, 7, 8] and m.gaps == 0  # type: ignore[union-attr]
    assert m.next_tail(SHARDS[1]) == numbered(8)[-len(m.next_tail(SHARDS[1]) or b""):]  # type: ignore[index]
    assert m.message(numbered(1), 0.2) == (Dispatch(decode_message(numbered(1))),)  # the plain channel: not numbered


def test_a_gap_on_one_shard_replays_that_shard_only() -> None:
    m = sharded_in_sync(5)
    dispatch, bypass, replay = m.message(numbered(8), 0.2, SHARDS[0])  # 6 and 7 never arrived
    assert bypass == BYPASS and replay == Replay(6, SHARDS[0]) and m.gaps == 1 and not m.serving
    assert m.message(numbered(9), 0.21, SHARDS[0]) == (Dispatch(decode_message(numbered(9))),)  # the replay covers it
    # another shard is still checked meanwhile: its gap waits for the replay under way
    dispatch, = m.message(numbered(9), 0.21, SHARDS[1])
    assert m.gaps == 2
    actions = m.replayed(log_reply(9, [(6, "x" * 43), (7, "y" * 43), (8, "a" * 43), (9, "a" * 43)]), 0.22, 0.23)
    assert actions == (Evict(("x" * 43, "y" * 43, "a" * 43, "a" * 43), SHARDS[0]), Replay(7, SHARDS[1]))
    assert m.replayed(log_reply(9, [(7, "c" * 43), (8, "d" * 43), (9, "e" * 43)], server=SERVER), 0.24, 0.25) == (
        Evict(("c" * 43, "d" * 43, "e" * 43), SHARDS[1]), SERVE)
    assert m.full_flushes == 0 and m.replays == 2 and m.sequence_of(SHARDS[2]).seq == 7  # type: ignore[union-attr]


def test_a_failed_over_shard_flushes_that_shard() -> None:
    m = sharded_in_sync(5)
    m.error(ConnectionError("master down"), 1.0)
    m.retry(2.0)
    assert m.subscribed(2.1) == (Replay(6, SHARDS[0]),)
    assert m.replayed(log_reply(5, []), 2.1, 2.2) == (Replay(7, SHARDS[1]),)
    assert m.replayed(log_reply(6, [], server="promoted:replica"), 2.2, 2.3) == (Flush(SHARDS[1]), Replay(8, SHARDS[2]))
    assert m.replayed(log_reply(7, []), 2.3, 2.4) == (SERVE,)
    assert m.full_flushes == 1 and m.sequence_of(SHARDS[1]).identity == "promoted:replica"  # type: ignore[union-attr]


def test_forgetting_flushes_at_the_next_replays_and_a_dropped_shard_is_forgotten() -> None:
    m = sharded_in_sync(5)
    m.error(ConnectionError("slot map changed"), 1.0)
    m.retry(2.0)
    m.forget()
    assert m.full_flushes == 1
    m.shard_names = SHARDS[:2]
    assert m.subscribed(2.1) == (Replay(None, SHARDS[0]),)
    assert m.sequence_of(SHARDS[2]) is None
    assert m.replayed(log_reply(5, []), 2.1, 2.2) == (FLUSH, Replay(None, SHARDS[1]))
    assert m.replayed(log_reply(6, []), 2.2, 2.3) == (FLUSH, SERVE)


def test_a_changed_slot_map_makes_the_next_subscriptions_flush_for_a_while() -> None:
    """Messages on the plain channel are not numbered: writers send them while a changed map
    waits (``SHARD_MAP_WAIT`` subscribe_timeouts) or when theirs is out of date.  A
    subscription with a changed map, or soon after one, replays nothing it knew: it flushes."""
    from fastsess._core.listener import SHARD_MAP_WAIT, CoordinatorBase
    from fastsess._core.slots import ShardMap

    config = ClusterConfig(channel="ch", subscribe_timeout=0.5, lease=LEASE)
    c = CoordinatorBase(config, None, Steps(), sequenced=True)
    c.is_cluster = True
    m = c.machine
    one = ShardMap("ch", [[(0, 8000)], [(8001, 16383)]])
    two = ShardMap("ch", [[(0, 7000)], [(7001, 16383)]])

    def subscribe(shards: ShardMap, now: float) -> None:
        m.error(ConnectionError("reconnect"), now) if m.state != "idle" else m.start(now)
        m.retry(now)
        c.adopt_shards(shards, now)
        actions = m.subscribed(now)
        while actions and isinstance(actions[-1], Replay):
            actions = m.replayed(log_reply(3, []), now, now)

    subscribe(one, 0.0)
    assert m.shard_names == tuple(one.channels) and m.synced and m.full_flushes == 0
    subscribe(one, 1.0)  # the same map: replays, no flush
    assert m.full_flushes == 0
    subscribe(two, 2.0)  # a changed map
    assert m.full_flushes == 1 and m.shard_names == tuple(two.channels)
    window = (SHARD_MAP_WAIT + 2) * config.subscribe_timeout
    subscribe(two, 2.0 + window - 0.1)  # the same map again, but writers may still publish plain
    assert m.full_flushes == 2
    subscribe(two, 2.0 + window + 0.1)
    assert m.full_flushes == 2
    c.adopt_shards(None, 9.0)  # masters older than Redis 7 (or sharding off): unnumbered, flushes on resubscribe
    assert not m.sequenced


def test_a_master_that_took_slots_over_flushes_even_with_the_same_map() -> None:
    """Slots that moved and came back while the listener was away: the same map, but a
    master of the earlier subscription has a higher configuration epoch (it took slots
    over), so unnumbered messages may have been missed.  A replica promoted meanwhile is
    another node: not counted (its shard's replay finds another server)."""
    from fastsess._core.listener import CoordinatorBase
    from fastsess._core.slots import ShardMap

    c = CoordinatorBase(ClusterConfig(channel="ch", subscribe_timeout=0.5, lease=LEASE), None, Steps(), sequenced=True)
    c.is_cluster = True
    m = c.machine
    one = ShardMap("ch", [[(0, 8000)], [(8001, 16383)]])

    def subscribe(now: float, epochs: dict[str, int] | None) -> None:
        m.error(ConnectionError("reconnect"), now) if m.state != "idle" else m.start(now)
        m.retry(now)
        c.adopt_shards(one, now, epochs)
        actions = m.subscribed(now)
        while actions and isinstance(actions[-1], Replay):
            actions = m.replayed(log_reply(3, []), now, now)

    subscribe(0.0, {"a": 1, "b": 2})
    subscribe(10.0, {"a": 1, "b": 2})
    subscribe(20.0, None)  # unknown: nothing to compare
    subscribe(30.0, {"a": 1, "c": 7})  # b failed over to its replica c: another node
    assert m.full_flushes == 0
    subscribe(40.0, {"a": 8, "c": 7})  # a took slots over (and maybe gave them back)
    assert m.full_flushes == 1
    subscribe(50.0, {"a": 8, "c": 7})
    subscribe(60.0, {"a": 5, "c": 7})  # a node that learned less: never below the highest seen
    assert m.full_flushes == 1
    assert c.listening_shards is one


def test_a_shard_flush_evicts_the_sessions_of_its_slots_only() -> None:
    """``Flush(shard)``: the cached sessions (and ids remembered as absent) whose key is in
    a slot of that shard channel go; the others stay; every fill in flight is voided."""
    from fastsess._core.coherence import CoherentCache
    from fastsess._core.listener import CoordinatorBase
    from fastsess._core.slots import ShardMap, key_slot

    cache = CoherentCache(1000, 60.0, absent_ttl=60.0)
    c = CoordinatorBase(ClusterConfig(channel="ch"), cache, Steps(), prefix="p:", sequenced=True)
    c.is_cluster = True
    shards = ShardMap("ch", [[(0, 8000)], [(8001, 16383)]])
    c.adopt_shards(shards, 0.0, {"a": 1, "b": 1})
    ids = [f"{i:043d}" for i in range(60)]
    for sid in ids:
        assert cache.fill(sid, {"v": 1}, cache.fill_token(sid), 60.0)
    ghost = "g" * 43
    assert cache.fill_absent(ghost, cache.fill_token(ghost))
    in_flight = cache.fill_token("f" * 43)
    first = shards.channels[0]
    mine = [sid for sid in ids if shards.by_slot[key_slot(("p:" + sid).encode())] == first]
    assert 0 < len(mine) < len(ids)
    c.apply((Flush(first),))
    assert not any(cache.cached(sid) for sid in mine)
    assert all(cache.cached(sid) for sid in ids if sid not in mine)
    assert cache.is_absent(ghost) == (shards.by_slot[key_slot(("p:" + ghost).encode())] != first)
    assert not cache.fill("f" * 43, {"v": 0}, in_flight, 60.0)  # voided
    c.apply((Flush("{9}unknown"),))  # not a channel of the map: everything
    assert len(cache) == 0
