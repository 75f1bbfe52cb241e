"""Outage policy under a blackholed Redis: the circuit breaker, and ``stale_if_error``.

Node B reaches Redis through the suite's TCP proxy; here the proxy drops everything in
both directions for every connection (a partition: no FIN, no RST), so each command B
sends waits its whole ``socket_timeout`` (0.25 s).  What is checked:

* after ``breaker_threshold`` such timeouts B's calls fail fast with ``CircuitOpen``
  (a ``StoreUnavailable``) without touching a socket: counted by the breaker, and far
  quicker than the socket timeout (the figures go to the summary; the only timing
  assertion is a loose one, a median under a quarter of the timeout);
* writes fail loudly, reads of anything not cached fail too;
* with ``stale_if_error=N`` B answers reads from its cache only within N seconds of the
  start of the outage, and never a session deleted before it (by ``delete`` or by
  ``delete_all``, log out everywhere, on the other node);
* when the partition ends the breaker closes by itself (logged once), and both nodes
  read what Redis holds (no acknowledged write lost, no stale copy).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest

from fastsess._core.keys import new_session_id

from ..support.waiting import wait_until
from .conftest import Rig, report, wait_for_value
from .nodes import SOCKET_TIMEOUT, LocalNode, Node, caught
from .test_faults import cache_on

FAILED = {"StoreUnavailable", "CircuitOpen"}
THRESHOLD = 3
COOLDOWN = 0.5


def partition(rig: Rig, on: bool) -> None:
    rig.proxy.blackhole_up = rig.proxy.blackhole_down = on


def attempt(fn: Callable[[], Any]) -> tuple[Any, str | None]:
    """``(fn(), None)``, or ``(None, the type name of what it raised)``."""
    box: list[Any] = [None]

    def call() -> None:
        box[0] = fn()

    error = caught(call)
    return box[0], error


def read_until_it_works(node: Node, sid: str, limit: float) -> float:
    """Read ``sid`` about every millisecond until a read returns; the time that took."""
    t0 = time.monotonic()
    while node.timed_reads([sid])[0][0] is not None:
        assert time.monotonic() - t0 < limit, f"{node.name} still failing after {limit} s"
        time.sleep(0.001)
    return time.monotonic() - t0


@pytest.mark.parametrize("b_kind", ["sync", "asyncio", "process"])
def test_blackholed_redis_trips_the_breaker_then_recovers(rig: Rig, b_kind: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fastsess.breaker")
    A, B = rig.start(b_kind, breaker_threshold=THRESHOLD, breaker_cooldown=COOLDOWN)
    L = rig.ledger
    sid = L.create(A, 0)
    assert B.state()["breaker"]["state"] == "closed"

    partition(rig, True)
    t0 = time.monotonic()
    slow = B.timed_reads([new_session_id() for _ in range(THRESHOLD)])  # misses: each goes to Redis
    assert [error for error, _ in slow] == ["StoreUnavailable"] * THRESHOLD
    assert min(seconds for _, seconds in slow) >= SOCKET_TIMEOUT * 0.9  # each waited its socket timeout
    opened = B.state()["breaker"]
    assert opened["state"] == "open" and opened["opened"] == 1

    fast = B.timed_reads([new_session_id() for _ in range(200)])
    after = B.state()["breaker"]
    errors = [error for error, _ in fast]
    assert set(errors) <= FAILED and errors.count("CircuitOpen") >= 199  # at most one probe in 200 calls
    assert after["rejected"] - opened["rejected"] == errors.count("CircuitOpen")  # no socket touched for these
    times = sorted(seconds for error, seconds in fast if error == "CircuitOpen")
    median = statistics.median(times)
    assert median < SOCKET_TIMEOUT / 4, f"fail-fast median {median * 1e3:.2f} ms"  # loose: typically ~10 us
    write_error = caught(lambda: B.create({"v": "during"}))
    assert write_error in FAILED  # writes fail loudly

    partition(rig, False)
    t_up = time.monotonic()
    recovered = read_until_it_works(B, sid, 10)
    assert B.state()["breaker"]["state"] == "closed"
    wait_until(lambda: B.state()["subscribed"], 10, what="B to resubscribe")
    L.check(rig.raw, rig.prefix, [A, B])
    recovery = rig.recovery(A, B, t_up)
    if isinstance(B, LocalNode):  # in this process: its log records are here
        logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "fastsess.breaker"]
        assert [level for level, _ in logged] == ["WARNING", "INFO"], logged
    report(
        "blackholed Redis, breaker", b_kind, callers=f"StoreUnavailable x{THRESHOLD} (timeouts), then CircuitOpen",
        timeout_s=statistics.median(s for _, s in slow), fast_median_us=round(median * 1e6, 1),
        fast_p99_us=round(times[int(len(times) * 0.99) - 1] * 1e6, 1), fast_max_ms=round(times[-1] * 1e3, 2),
        write=write_error, breaker_closed_after_s=recovered, recovery_s=recovery, open_for_s=t_up - t0,
    )


WINDOW = 2.0


@pytest.mark.parametrize("b_kind", ["sync", "asyncio"])
def test_stale_if_error_window_and_no_deleted_session(rig: Rig, b_kind: str) -> None:
    A, B = rig.start(b_kind, stale_if_error=WINDOW, breaker_threshold=THRESHOLD, breaker_cooldown=COOLDOWN)
    L = rig.ledger
    kept = L.create(A, "kept")
    cache_on(B, kept, "kept")
    gone = A.create({"v": "gone"})  # logged out before the outage
    cache_on(B, gone, "gone")
    written = L.create(A, "written")
    cache_on(B, written, "written")
    refreshed = L.create(A, "refreshed")  # saved on B once the breaker is open
    cache_on(B, refreshed, "refreshed")
    logout = A.create({"v": "logout"})  # B tries to delete it during the outage
    cache_on(B, logout, "logout")
    user = [A.create({"v": f"device {i}"}) for i in range(2)]  # logged out everywhere before the outage
    for sid in user:
        A.bind(sid, "user-7")  # a save: its invalidation may reach B after B read the new value
    for i, sid in enumerate(user):
        assert (B.read(sid) or {}).get("v") == f"device {i}"

    def settled() -> bool:
        # the binds' invalidations may reach B after it read a session (evicting that copy),
        # one after another: read again until all three copies are held 50 ms later
        for sid in (gone, *user):
            B.read(sid)
        time.sleep(0.05)
        return all(B.holds([gone, *user]))

    wait_until(settled, 5, what="B to hold the sessions deleted next")
    assert A.delete(gone) is True
    assert A.delete_all("user-7") == 2
    wait_until(lambda: not any(B.holds([gone, *user])), 5, what="the deletes' invalidations to reach B")

    partition(rig, True)
    t0 = time.monotonic()
    write_error = caught(lambda: B.write(written, "v", "during"))
    assert write_error == "StoreUnavailable"  # writes never pretend; this one timed out ...
    assert caught(lambda: B.read(written)) in FAILED  # ... so it may land later: B drops its copy
    assert caught(lambda: B.delete(logout)) in FAILED  # a logout fails loudly too ...
    assert caught(lambda: B.read(logout)) in FAILED  # ... and B stops serving its copy
    served_unsubscribed = 0
    last_served = refused_at = None
    refused_save = None
    while refused_at is None:
        now = time.monotonic()
        assert now < t0 + WINDOW + 5, "the cached copy was served for too long"
        unsubscribed = not B.state()["subscribed"]
        if refused_save is None and unsubscribed and B.state()["breaker"]["state"] == "open" and now < t0 + WINDOW / 2:
            # A save the open breaker refuses never left B: its copy stays a fallback.
            refused_save = caught(lambda: B.write(refreshed, "v", "during"))
            assert refused_save == "CircuitOpen"
            assert B.read(refreshed) == {"v": "refreshed"}
        got, error = attempt(lambda: B.read(kept))
        if error is None:
            assert got == {"v": "kept"}
            last_served = now
            served_unsubscribed += unsubscribed
        else:
            assert error in FAILED
            if unsubscribed:
                refused_at = now
        for sid in (gone, *user):
            assert caught(lambda sid=sid: B.read(sid)) in FAILED  # never a deleted session (nor None: Redis did not say so)
        time.sleep(0.005)
    assert last_served is not None and last_served <= t0 + WINDOW  # the window counts from before t0
    assert served_unsubscribed > 0  # served from the cache while the listener could not hear (stale)
    assert refused_save == "CircuitOpen"
    assert caught(lambda: B.read(kept)) in FAILED  # and it stays refused

    partition(rig, False)
    t_up = time.monotonic()
    read_until_it_works(B, kept, 10)
    wait_until(lambda: B.state()["subscribed"], 10, what="B to resubscribe")
    assert B.read(gone) is None and B.read(kept) == {"v": "kept"}
    assert all(B.read(sid) is None for sid in user)
    assert B.read(logout) == {"v": "logout"}  # the delete never reached Redis
    assert wait_for_value(B, written, "written", 5)  # the timed-out save did not land (it never reached Redis)
    assert B.read(refreshed) == {"v": "refreshed"}
    L.check(rig.raw, rig.prefix, [A, B])
    recovery = rig.recovery(A, B, t_up)
    report(
        f"blackholed Redis, stale_if_error={WINDOW:g}", b_kind, callers="cached reads served, then refused; writes fail",
        stale_served_until_s=last_served - t0, refused_from_s=refused_at - t0, deleted_served=0, write=write_error,
        recovery_s=recovery,
    )



DEAF_WINDOW = 1.0


@pytest.mark.parametrize("b_kind", ["sync", "asyncio"])
def test_no_stale_copy_after_the_listener_was_deaf_longer_than_the_window(rig: Rig, b_kind: str) -> None:
    """B's listener loses its channel silently (every subscriber connection blackholed, new
    ones too) while B's commands still work, and A logs a session out: B never hears of
    it and keeps its copy (``stale_if_error`` keeps the cache when the listener fails).
    When Redis then becomes unreachable for B, more than N seconds after its listener last
    heard from Redis, B serves nothing from its cache: the outage counts from then."""
    A, B = rig.start(b_kind, stale_if_error=DEAF_WINDOW)
    L = rig.ledger
    kept = L.create(A, "kept")
    cache_on(B, kept, "kept")
    gone = A.create({"v": "gone"})
    cache_on(B, gone, "gone")
    reconnects = B.state()["reconnects"]
    rig.proxy.blackhole_clients(b"SUBSCRIBE")
    t_deaf = time.monotonic()
    assert A.delete(gone) is True  # its invalidation never reaches B
    wait_until(lambda: not B.state()["subscribed"], 5, what="B's listener to give up the silent channel")
    assert B.read(gone) is None and B.read(kept) == {"v": "kept"}  # commands work: Redis answers
    time.sleep(max(0.0, t_deaf + DEAF_WINDOW - time.monotonic()))
    state = B.state()
    assert state["reconnects"] == reconnects and not state["subscribed"]  # deaf all along
    assert B.holds([kept, gone]) == [True, True]  # B still holds both copies, the logged-out one included

    partition(rig, True)
    t0 = time.monotonic()
    seen = {"kept": caught(lambda: B.read(kept)), "gone": caught(lambda: B.read(gone))}
    assert seen == {"kept": "StoreUnavailable", "gone": "StoreUnavailable"}, seen  # no stale copy

    partition(rig, False)
    rig.proxy.blackhole_clients(None)
    t_up = time.monotonic()
    wait_until(lambda: B.state()["subscribed"], 10, what="B to resubscribe")
    assert B.read(gone) is None and B.read(kept) == {"v": "kept"}
    L.check(rig.raw, rig.prefix, [A, B])
    recovery = rig.recovery(A, B, t_up)
    report(
        f"deaf listener, then partition, stale_if_error={DEAF_WINDOW:g}", b_kind, callers="StoreUnavailable (no stale copy)",
        deaf_for_s=t0 - t_deaf, recovery_s=recovery,
    )
