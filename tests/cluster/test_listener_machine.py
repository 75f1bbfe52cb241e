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
    PING,
    SERVE,
    STOPPED,
    SUBSCRIBING,
    WAITING,
    Dispatch,
    ListenerMachine,
    Reconnect,
)

IDLE_TIMEOUT = 1.0


class Steps:
    """A backoff that hands out 1, 2, 3, ... seconds (failures + 1) and records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def compute(self, failures: int) -> float:
        self.asked.append(failures)
        return float(failures + 1)


def machine(**config: object) -> ListenerMachine:
    settings: dict[str, object] = {"channel": "ch", "subscribe_timeout": IDLE_TIMEOUT, **config}
    return ListenerMachine(ClusterConfig(**settings), Steps())  # type: ignore[arg-type]


def listening(**config: object) -> ListenerMachine:
    m = machine(**config)
    assert m.start(0.0) == (CONNECT,)
    assert m.subscribed(0.1) == (FLUSH, SERVE)
    return m


def test_start_connects_and_the_confirmation_flushes_then_serves() -> None:
    m = machine()
    assert not m.serving
    assert m.start(10.0) == (CONNECT,) and m.state == SUBSCRIBING and not m.serving
    assert m.idle(10.5) == ()  # within the subscription deadline: keep waiting
    assert m.subscribed(10.6) == (FLUSH, SERVE)
    assert m.state == LISTENING and m.serving and m.reconnects == 0


def test_a_message_is_dispatched_as_it_came_and_counts_as_input() -> None:
    m = listening()
    assert m.message(b"payload", 0.9) == (Dispatch(b"payload"),)
    assert m.idle(0.9 + IDLE_TIMEOUT - 0.01) == ()  # the message reset the silence clock
    assert m.serving


def test_silence_asks_for_one_ping_and_a_pong_clears_it() -> None:
    m = listening()  # subscribed at 0.125 (times are exact binary fractions)
    m.reply(0.125)
    assert m.timeout(0.125) == IDLE_TIMEOUT
    assert m.idle(0.5) == ()
    assert m.idle(0.125 + IDLE_TIMEOUT) == (PING,)
    assert m.idle(0.25 + IDLE_TIMEOUT) == ()  # one PING, not one per idle event
    assert m.reply(0.375 + IDLE_TIMEOUT) == ()  # the PONG
    assert m.serving and m.idle(0.5 + IDLE_TIMEOUT) == ()
    assert m.idle(0.375 + 2 * IDLE_TIMEOUT) == (PING,)  # a new silence, a new PING


def test_an_unanswered_ping_fails_the_connection_and_reconnects() -> None:
    m = listening()
    assert m.idle(2.0) == (PING,)
    assert m.timeout(2.5) == pytest.approx(IDLE_TIMEOUT - 0.5)
    assert m.idle(2.0 + IDLE_TIMEOUT - 0.01) == ()
    assert m.idle(2.0 + IDLE_TIMEOUT) == (BYPASS, FLUSH, Reconnect(1.0))
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
    assert m.last_error == "ConnectionError: no slot map" and m.state == LISTENING


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
