"""The circuit breaker's state machine (``fastsess._core.breaker``) on a fake clock, no Redis;
and the ``stale_if_error`` window of ``CachePolicy.stale`` that counts on it."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import pytest

from fastsess import ClusterConfig, Session
from fastsess._core.breaker import CLOSED, HALF_OPEN, OPEN, BreakerStats, CircuitBreaker
from fastsess._core.coherence import CoherentCache
from fastsess._core.keys import new_session_id
from fastsess._core.listener import ListenerMachine
from fastsess._core.policy import CachePolicy
from fastsess.errors import CircuitOpen, ConfigError, StoreUnavailable


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def breaker(threshold: int = 3, cooldown: float = 2.0) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(threshold, cooldown, clock=clock), clock


def fail(b: CircuitBreaker, n: int, probe: bool = False) -> None:
    for _ in range(n):
        b.failed(ConnectionError("refused"), probe)


def test_defaults() -> None:
    b = CircuitBreaker()
    assert (b.threshold, b.cooldown, b.state) == (5, 1.0, CLOSED)
    assert b.stats == BreakerStats(CLOSED, 0, 0, 0, 0, None, None)


def test_opens_after_threshold_failures_in_a_row_only() -> None:
    b, clock = breaker()
    fail(b, 2)
    b.succeeded()  # an answer resets the count
    fail(b, 2)
    assert b.state == CLOSED and b.admit() is False
    fail(b, 1)
    assert b.state == OPEN and not b.closed
    with pytest.raises(CircuitOpen) as info:
        b.admit()
    assert isinstance(info.value, StoreUnavailable)
    assert isinstance(info.value.cause, ConnectionError) and info.value.__cause__ is info.value.cause
    assert "3 connection failures in a row" in str(info.value) and "next probe in 2.000 s" in str(info.value)
    assert b.stats.rejected == 1 and b.stats.opened == 1 and b.stats.failures == 3


def test_one_probe_after_the_cooldown_then_closed_on_its_answer() -> None:
    b, clock = breaker()
    fail(b, 3)
    clock.now += 1.999
    with pytest.raises(CircuitOpen):
        b.admit()
    clock.now += 0.001
    assert b.admit() is True and b.state == HALF_OPEN  # this call probes
    with pytest.raises(CircuitOpen, match="a probe is in flight"):
        b.admit()  # everyone else still fails fast
    b.succeeded(probe=True)
    assert b.state == CLOSED and b.closed and b.admit() is False
    assert b.stats == BreakerStats(CLOSED, 0, 1, 2, 1, None, "ConnectionError: refused")


def test_a_failed_probe_reopens_for_another_cooldown() -> None:
    b, clock = breaker()
    fail(b, 3)
    clock.now += 2.0
    assert b.admit() is True
    clock.now += 0.5  # the probe took a while
    fail(b, 1, probe=True)
    assert b.state == OPEN and b.stats.opened == 1  # one outage, one opening
    clock.now += 1.999
    with pytest.raises(CircuitOpen):
        b.admit()
    clock.now += 0.001
    assert b.admit() is True


def test_failures_of_calls_sent_before_it_opened_do_not_extend_the_cooldown() -> None:
    b, clock = breaker()
    fail(b, 3)
    clock.now += 1.5
    fail(b, 10)  # late timeouts of calls already in flight
    clock.now += 0.5
    assert b.admit() is True
    fail(b, 1)  # a late non-probe failure while probing: the probe stays the only one
    assert b.state == HALF_OPEN


def test_a_late_answer_closes_it_too() -> None:
    b, clock = breaker()
    fail(b, 3)
    b.succeeded()  # a call sent before it opened got its reply
    assert b.state == CLOSED and b.failures == 0 and b.outage_started is None


def test_a_released_probe_lets_the_next_call_probe() -> None:
    b, clock = breaker()
    fail(b, 3)
    clock.now += 2.0
    assert b.admit() is True
    b.released(probe=True)  # cancelled, or the pool had no connection: nothing learned
    assert b.state == OPEN
    assert b.admit() is True  # at once: the cool-down had passed
    b.released(probe=False)  # a non-probe release changes nothing
    assert b.state == HALF_OPEN


def test_a_resubscribed_listener_ends_the_cooldown_early() -> None:
    b, clock = breaker()
    subscribed = [0.0]
    b.resubscribed_at = lambda: subscribed[0]
    fail(b, 3)
    clock.now += 0.1
    with pytest.raises(CircuitOpen):
        b.admit()
    subscribed[0] = clock.now  # the listener just resubscribed: Redis answers again
    assert b.admit() is True


def test_threshold_zero_never_opens_but_tracks_the_outage() -> None:
    b, clock = breaker(threshold=0)
    fail(b, 100)
    assert b.state == CLOSED and b.admit() is False
    assert b.outage_started == 100.0 and b.failures == 100


def test_outage_started_is_the_first_failure_of_the_current_run() -> None:
    b, clock = breaker()
    assert b.outage_started is None
    fail(b, 1)
    clock.now += 5
    fail(b, 4)
    assert b.outage_started == 100.0 and b.stats.outage_for == 5.0
    b.succeeded()
    clock.now += 1
    fail(b, 1)
    assert b.outage_started == 106.0


def test_check_is_for_calls_that_never_probe() -> None:
    b, clock = breaker()
    b.check()
    fail(b, 3)
    clock.now += 10
    with pytest.raises(CircuitOpen):
        b.check()  # even after the cool-down: SCAN walks do not probe
    assert b.admit() is True


def test_logs_once_on_open_and_once_on_close(caplog: pytest.LogCaptureFixture) -> None:
    b, clock = breaker()
    with caplog.at_level(logging.DEBUG, logger="fastsess.breaker"):
        fail(b, 3)
        for _ in range(5):
            with pytest.raises(CircuitOpen):
                b.admit()
        for _ in range(3):  # failed probes
            clock.now += 2.0
            assert b.admit() is True
            fail(b, 1, probe=True)
        clock.now += 2.0
        assert b.admit() is True
        b.succeeded(probe=True)
        b.succeeded()
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert [level for level, _ in records] == [logging.WARNING, logging.INFO], records
    assert "open after 3 connection failures" in records[0][1] and "ConnectionError: refused" in records[0][1]
    assert "closed" in records[1][1] and "8.000 s" in records[1][1]


@pytest.mark.parametrize(
    ("threshold", "cooldown"),
    [(-1, 1.0), (1.5, 1.0), (True, 1.0), ("5", 1.0), (None, 1.0),
     (5, 0), (5, -1.0), (5, float("inf")), (5, float("nan")), (5, "1"), (5, True), (5, None), (5, 10**400)],
)
def test_bad_settings_are_config_errors(threshold: Any, cooldown: Any) -> None:
    with pytest.raises(ConfigError) as info:
        CircuitBreaker(threshold, cooldown)
    assert ("breaker_threshold" if threshold != 5 else "breaker_cooldown") in str(info.value)


def test_only_one_thread_probes() -> None:
    b, clock = breaker(threshold=1, cooldown=1.0)
    fail(b, 1)
    clock.now += 1.0
    start = threading.Barrier(16)
    probes: list[bool] = []
    rejected: list[int] = []

    def call() -> None:
        start.wait()
        try:
            probes.append(b.admit())
        except CircuitOpen:
            rejected.append(1)

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert probes == [True] and len(rejected) == 15


# --- stale_if_error: the window, counted from the start of the outage ----------------------


def policy(stale: bool | float, listener: Any = None) -> tuple[CachePolicy, CircuitBreaker, Clock, Session]:
    clock = Clock()
    config = ClusterConfig(stale_if_error=stale, local_cache_ttl=30.0)
    cache = CoherentCache(100, 30.0)
    b = CircuitBreaker(3, 1.0, clock=clock)
    p = CachePolicy(config, cache, clock, breaker=b, listener=listener)
    session = Session(new_session_id(), {"v": 1}, ttl=1800)
    cache.fill(session.id, session, cache.fill_token(session.id), 30.0, 10)
    return p, b, clock, session


def test_stale_window_is_counted_from_the_first_failure_of_the_run() -> None:
    p, b, clock, s = policy(10.0)
    assert p.stale(s.id) is None  # no failure: no outage (an exhausted pool, a WRONGTYPE)
    fail(b, 1)
    got = p.stale(s.id)
    assert got is not None and got["v"] == 1 and got is not p.cache.get(s.id)  # a copy
    clock.now += 10.0
    assert p.stale(s.id) is not None
    fail(b, 5)  # later failures do not move the start
    clock.now += 0.001
    assert p.stale(s.id) is None
    b.succeeded()
    fail(b, 1)  # a new run, a new window
    assert p.stale(s.id) is not None


def test_stale_off_by_default_and_true_means_local_cache_ttl() -> None:
    assert ClusterConfig().stale_window == 0.0 and ClusterConfig(stale_if_error=False).stale_window == 0.0
    assert ClusterConfig(stale_if_error=True, local_cache_ttl=12).stale_window == 12.0
    p, b, clock, s = policy(False)
    fail(b, 1)
    assert p.stale(s.id) is None
    p, b, clock, s = policy(True)
    fail(b, 1)
    clock.now += 29.0
    assert p.stale(s.id) is not None


def test_stale_window_starts_when_the_listener_last_heard_redis_if_earlier() -> None:
    machine = ListenerMachine(ClusterConfig(subscribe_timeout=1.0, stale_if_error=5.0), _NoBackoff())
    p, b, clock, s = policy(5.0, listener=machine)
    fail(b, 1)
    assert p.stale(s.id) is None  # the listener never subscribed: the cache may have missed anything
    machine.start(50.0)
    machine.subscribed(99.0)
    assert machine.last_heard == 99.0 and p.stale(s.id) is not None
    machine.error(ConnectionError("reset"), 99.5)  # lost the channel: heard last at 99.0
    assert machine.last_heard == 99.0
    clock.now = 104.0
    assert p.stale(s.id) is not None  # 5.0 s after it last heard Redis
    clock.now = 104.01
    assert p.stale(s.id) is None  # the failure run began at 100.0, but the listener was deaf since 99.0


class _NoBackoff:
    def compute(self, failures: int) -> float:
        return 1.0


def test_a_stale_copy_never_outlives_its_local_lifetime() -> None:
    import time

    p, b, clock, s = policy(60.0)
    short = Session(new_session_id(), {"v": 2}, ttl=1800)
    p.cache.fill(short.id, short, p.cache.fill_token(short.id), 0.05, 10)  # its key expires in 50 ms
    fail(b, 1)
    assert p.stale(short.id) is not None
    time.sleep(0.1)
    assert p.stale(short.id) is None and p.stale(s.id) is not None


def test_what_counts_as_a_connection_failure() -> None:
    import redis

    from fastsess._redis import is_connection_failure

    for failure in (redis.ConnectionError("refused"), redis.TimeoutError("timed out"), OSError("reset"),
                    TimeoutError("socket"), redis.exceptions.BusyLoadingError("LOADING")):
        assert is_connection_failure(failure), failure
    for answer in (redis.ResponseError("WRONGTYPE"), redis.exceptions.OutOfMemoryError("OOM"),
                   redis.exceptions.ReadOnlyError("READONLY"), redis.ConnectionError("Too many connections")):
        assert not is_connection_failure(answer), answer  # Redis answered, or our own pool was full


def test_the_breaker_and_the_policy_import_no_redis() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import fastsess._core.breaker, fastsess._core.policy\n"
        "assert 'redis' not in sys.modules, sorted(m for m in sys.modules if m.startswith('redis'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork() only")
def test_a_forked_child_gets_a_usable_breaker_whatever_the_parent_held() -> None:
    """A parent thread inside the breaker (its lock held) or probing at the fork must not wedge
    the child: the child's breaker has a new lock, and a probe in flight in the parent is
    given up (the child's next call probes)."""
    clock = [0.0]
    breaker = CircuitBreaker(threshold=1, cooldown=1.0, clock=lambda: clock[0])
    breaker.failed(ConnectionError("down"))
    clock[0] = 2.0
    assert breaker.admit() is True  # this thread is the probe: half-open
    with breaker._lock:  # and another thread is inside the breaker right now
        pid = os.fork()
        if pid == 0:  # the child: every call must return, and the next call probes
            signal.alarm(5)
            try:
                ok = breaker.admit() is True and breaker.state == "half-open"
                breaker.succeeded(probe=True)
                ok = ok and breaker.closed and breaker.stats.state == "closed"
            finally:
                os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert breaker.state == "half-open"  # the parent's own state is untouched
