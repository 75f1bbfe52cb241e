"""Cache hits wait for a listener that is behind (``ThreadedCoordinator.yield_to_listener``).

On a free-threaded build the threads serving cache hits never wait for a lock the listener
holds: on a machine with fewer CPUs than busy threads the listener got too little CPU time
and applied invalidations hundreds of ms late (``fastsess demo --nodes 3`` counted stale
reads).  The same condition is forced here on any build: the listener needs wall time for
every message (``on_message`` sleeps), while this thread only does cache hits.  Input on the
listener's socket makes the next hit check (``on_input``), not one up to ``HITS_PER_CHECK``
hits later, and the check waits until the listener has applied what it has (at most
``LISTENER_CATCH_UP`` seconds), instead of sleeping once and serving stale copies; if the
listener still has input then, hits read Redis until it has applied it.
"""

from __future__ import annotations

import time
from typing import Any

from fastsess.cluster import HITS_PER_CHECK, LISTENER_CATCH_UP

from .conftest import Pair, received, wait_until

SESSIONS = 20
APPLY_TIME = 0.002  # seconds the listener takes per message: 20 messages, ~40 ms in all


def _cached_sessions(pair: Pair) -> list[Any]:
    """Sessions written by B and cached by A (B's creation messages applied first)."""
    a, b = pair.A, pair.B
    assert a.coordinator is not None and a._cache is not None
    before = a.coordinator.stats.created
    sessions = []
    for i in range(SESSIONS):
        session = b.create({"i": i})
        b.save(session)
        sessions.append(session)
    wait_until(lambda: a.coordinator is not None and a.coordinator.stats.created >= before + SESSIONS, 5.0, what="B's creations")
    for session in sessions:
        assert a.load(session.id) is not None
        assert a._cache.cached(session.id)
    return sessions


def test_hits_wait_until_a_slow_listener_applied_what_it_has(pair: Pair) -> None:
    a, b = pair.A, pair.B
    assert a.coordinator is not None
    sessions = _cached_sessions(pair)
    a.coordinator.on_message = lambda msg: time.sleep(APPLY_TIME)
    before = received(a)
    for session in sessions:
        session["n"] = 1
        b.save(session)
    last, version = sessions[-1].id, sessions[-1].version
    wait_until(lambda: received(a) > before, 5.0, what="the listener's first invalidation")
    assert received(a) < before + SESSIONS  # the listener is behind: the condition under test
    a.load(last)  # a hit (maybe of the old copy), which waits for the listener to catch up
    assert received(a) == before + SESSIONS
    fresh = a.load(last)  # the invalidation was applied: read from Redis
    assert fresh is not None and fresh.version == version


def test_hits_wait_for_the_listener_at_most_listener_catch_up(pair: Pair) -> None:
    a, b = pair.A, pair.B
    assert a.coordinator is not None
    sessions = _cached_sessions(pair)
    stuck = 5 * LISTENER_CATCH_UP
    a.coordinator.on_message = lambda msg: time.sleep(stuck)  # a listener that cannot keep up
    before = received(a)
    for session in sessions[:2]:
        session["n"] = 1
        b.save(session)
    wait_until(lambda: received(a) > before, 5.0, what="the listener's first invalidation")
    started = time.monotonic()
    for _ in range(HITS_PER_CHECK):
        assert a.load(sessions[-1].id) is not None  # not invalidated
    took = time.monotonic() - started
    # The first hit waited for the listener, and gave up after LISTENER_CATCH_UP; the
    # others did not wait again (they read Redis while the listener, stuck in a message,
    # still has input: see the next test).
    assert LISTENER_CATCH_UP * 0.9 <= took < 2 * LISTENER_CATCH_UP, took
    a.coordinator.on_message = None


def test_a_hit_that_gave_up_on_the_listener_reads_redis_until_it_caught_up(pair: Pair) -> None:
    """A listener kept from its input longer than ``LISTENER_CATCH_UP`` (on a free-threaded
    build with its CPUs overloaded: ``fastsess demo`` read copies 122-647 ms stale) must not
    leave the cache serving copies whose invalidations wait behind it: the hit that gave up
    waiting, and every hit while the listener still has input, read Redis."""
    a, b = pair.A, pair.B
    assert a.coordinator is not None and a._cache is not None
    sessions = _cached_sessions(pair)
    stuck = 5 * LISTENER_CATCH_UP
    a.coordinator.on_message = lambda msg: time.sleep(stuck)  # stuck after applying the first message
    before = received(a)
    first, last = sessions[0], sessions[-1]
    first["n"] = 1
    b.save(first)
    wait_until(lambda: received(a) > before, 5.0, what="the listener's first invalidation")
    last["n"] = 1
    b.save(last)  # its invalidation waits behind the stuck listener
    assert a._cache.cached(last.id)  # the old copy is still cached: the condition under test
    started = time.monotonic()
    for _ in range(2 * HITS_PER_CHECK):
        found = a.load(last.id)
        assert found is not None and found.version == last.version and found["n"] == 1
        shared = a.load_shared(last.id)
        assert shared is not None and shared.version == last.version
    assert received(a) == before + 1  # the listener is still stuck: every read went to Redis
    assert time.monotonic() - started < stuck  # waited once (LISTENER_CATCH_UP), not at every hit
    a.coordinator.on_message = None
    wait_until(lambda: received(a) == before + 2, 5.0, what="the listener's second invalidation")
    found = a.load(last.id)  # caught up: read from Redis once more, then cached again
    assert found is not None and found.version == last.version
    hits = a.cache_stats().hits
    again = a.load(last.id)
    assert again is not None and again.version == last.version and a.cache_stats().hits == hits + 1
