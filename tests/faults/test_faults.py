"""Fault injection against a real private ``redis-server``: what callers see, and recovery.

Two nodes share one Redis and one invalidation channel: A (a sync ``ClusteredRedisStore``
straight to Redis) writes, B (sync, asyncio, or a sync store in a child process)
reaches Redis through a TCP proxy (``tests/tcpproxy.py``), so that one of B's
connections can be blackholed or stalled.  For every fault the test records the
exception type callers get during it, then checks after recovery that

* B's listener resubscribed and its cache was flushed (or bypassed meanwhile),
* no acknowledged write was lost (Redis holds the last acknowledged value, or a later
  one whose save raised: its outcome was unknown to the caller),
* both nodes read what Redis holds (no stale copy survives), and a new write of A's
  reaches B.

Recovery times and stale-read windows are printed in the run's summary (``report``),
never asserted: the machine is shared.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis

from ..support import kill
from ..support.waiting import wait_until
from .conftest import Rig, report, wait_for_value
from .nodes import Node, caught

UNAVAILABLE = "StoreUnavailable"


def cache_on(node: Node, sid: str, value: object) -> None:
    """Read ``sid`` on ``node`` twice: the second read is a cache hit."""
    assert node.read(sid) == {"v": value}
    assert node.read(sid) == {"v": value}


def pubsub_addresses(raw: redis.Redis) -> set[str]:
    return {str(c["addr"]) for c in raw.client_list(_type="pubsub")}


@pytest.mark.parametrize("b_kind", ["sync", "asyncio", "process"])
def test_kill_9_and_restart(rig: Rig, b_kind: str) -> None:
    A, B = rig.start(b_kind)
    L = rig.ledger
    ids = [L.create(A, i) for i in range(3)]
    for i, sid in enumerate(ids):
        cache_on(B, sid, i)
    assert L.write(A, ids[0], 10) is None  # acknowledged, then the crash
    assert wait_for_value(B, ids[0], 10, 5)
    cache_on(B, ids[0], 10)

    kill(rig.server)  # SIGKILL
    t_kill = time.monotonic()
    wait_until(lambda: not A.state()["subscribed"] and not B.state()["subscribed"], 5, what="both listeners to see the crash")
    noticed = time.monotonic() - t_kill
    seen = {
        "load (cached on B)": caught(lambda: B.read(ids[0])),
        "load": caught(lambda: A.read(ids[1])),
        "save": L.write(A, ids[2], 20),
        "create": caught(lambda: A.create({"v": "new"})),
    }
    assert set(seen.values()) == {UNAVAILABLE}, seen  # fail closed: no cached copy, no silent loss
    # B's copies are bypassed, not dropped: its replay after resubscribing decides (below:
    # a restarted server has a new run_id, so they are flushed then).
    assert not B.state()["subscribed"]

    rig.server.start()  # same port and directory: the append-only file is replayed
    t_up = time.monotonic()
    wait_until(lambda: A.state()["subscribed"] and B.state()["subscribed"], 10, what="both listeners to resubscribe")
    assert B.state()["reconnects"] >= 1 and B.state()["cached"] == 0  # the server restarted: flushed
    L.check(rig.raw, rig.prefix, [A, B])  # ids[0] is 10: acknowledged before the crash, still there
    assert B.read(ids[0]) == {"v": 10}
    recovery = rig.recovery(A, B, t_up)
    report("kill -9 + restart", b_kind, callers=UNAVAILABLE, noticed_s=noticed, recovery_s=recovery)


@pytest.mark.parametrize("b_kind", ["sync", "asyncio"])
def test_kill_9_without_persistence_serves_no_cached_copy_of_lost_data(rig: Rig, b_kind: str) -> None:
    """A server that restarts empty: the sessions are gone, and no node brings them back."""
    A, B = rig.start(b_kind)
    L = rig.ledger
    sid = L.create(A, 1)
    cache_on(B, sid, 1)
    kill(rig.server)
    wait_until(lambda: not B.state()["subscribed"], 5, what="B to see the crash")
    rig.server.extra_args = ("--enable-debug-command", "yes")  # restarts without its append-only file: empty
    rig.server.start()
    t_up = time.monotonic()
    wait_until(lambda: A.state()["subscribed"] and B.state()["subscribed"], 10, what="resubscription")
    assert A.read(sid) is None and B.read(sid) is None  # what Redis holds: nothing
    assert A.write(sid, "v", 2) is False and A.read(sid) is None  # a save does not resurrect it (SET XX)
    del L.acked[sid]
    recovery = rig.recovery(A, B, t_up)
    report("kill -9, no persistence", b_kind, callers="None (data lost)", recovery_s=recovery)


@pytest.mark.parametrize("b_kind", ["sync", "asyncio"])
def test_client_pause(rig: Rig, b_kind: str) -> None:
    A, B = rig.start(b_kind)
    L = rig.ledger
    sid = L.create(A, 0)
    cache_on(B, sid, 0)
    uncached = L.create(B, "b")  # cached on B only: a read on A is a miss
    pauser = redis.Redis.from_url(rig.server.url)
    try:
        pauser.execute_command("CLIENT", "PAUSE", 1500, "ALL")  # room for both timeouts on a busy machine
        t0 = time.monotonic()
        cached = B.read(sid) if caught(lambda: B.read(sid)) is None else UNAVAILABLE
        seen = {"save": L.write(A, sid, 1), "load (miss)": caught(lambda: A.read(uncached))}
        assert seen == {"save": UNAVAILABLE, "load (miss)": UNAVAILABLE}
        # A cached read is served while B still hears its channel (no write can land
        # during the pause, so the copy is current), else it fails closed.
        assert cached in ({"v": 0}, UNAVAILABLE)
        time.sleep(max(0.0, t0 + 1.5 - time.monotonic()))
        t_end = time.monotonic()
    finally:
        pauser.close()
    L.check(rig.raw, rig.prefix, [A, B])
    landed = (A.read(sid) or {}).get("v") == 1
    recovery = rig.recovery(A, B, t_end)
    report("CLIENT PAUSE 1500 ms ALL", b_kind, callers=UNAVAILABLE, cached_read="served" if cached != UNAVAILABLE else UNAVAILABLE,
           timed_out_save_landed=landed, recovery_s=recovery)


@pytest.mark.parametrize("b_kind", ["sync", "asyncio", "process"])
def test_client_kill_type_pubsub(rig: Rig, b_kind: str) -> None:
    A, B = rig.start(b_kind)
    L = rig.ledger
    sid = L.create(A, 0)
    cache_on(B, sid, 0)
    before = B.state()["reconnects"]
    killed = rig.raw.client_kill_filter(_type="pubsub")
    t0 = time.monotonic()
    assert killed >= 2  # A's listener and B's
    assert L.write(A, sid, 1) is None  # writes are not affected; B may miss this invalidation
    errors, stale, last_stale = set(), 0, t0
    while B.state()["reconnects"] == before:
        assert time.monotonic() < t0 + 10, "B never resubscribed"
        try:
            if (B.read(sid) or {}).get("v") != 1:
                # possible only until B's listener has seen the close: the invalidation was lost
                stale, last_stale = stale + 1, time.monotonic()
        except Exception as exc:  # noqa: BLE001 - recorded, asserted below
            errors.add(type(exc).__name__)
        time.sleep(0.0005)  # a request loop, not a spin: the shared machine has 2 CPUs
    resubscribed = time.monotonic() - t0
    assert errors == set()  # callers see nothing: reads go to Redis until resubscribed
    assert B.read(sid) == {"v": 1}  # the flushed cache cannot hold the old copy
    recovery = rig.recovery(A, B, t0)
    L.check(rig.raw, rig.prefix, [A, B])
    report("CLIENT KILL TYPE pubsub", b_kind, callers="nothing", stale_reads=stale, stale_for_s=last_stale - t0,
           resubscribed_s=resubscribed, recovery_s=recovery)


@pytest.mark.parametrize("b_kind", ["sync", "asyncio"])
def test_subscriber_output_buffer_overflow(rig: Rig, b_kind: str) -> None:
    """B's listener stops reading (its connection stalls in the proxy) while the channel is
    flooded; Redis drops it at the ``client-output-buffer-limit``.  B learns it when it reads
    again: the buffered data, then EOF; it resubscribes and flushes."""
    A, B = rig.start(b_kind, subscribe_timeout=2.0)  # the stall ends long before a PING would notice it
    L = rig.ledger
    rig.raw.config_set("client-output-buffer-limit", "pubsub 256kb 0 0")
    sid = L.create(A, 0)
    cache_on(B, sid, 0)
    link = rig.subscriber_link()
    b_addr = f"127.0.0.1:{link.server.getsockname()[1]}"
    assert b_addr in pubsub_addresses(rig.raw)
    before = B.state()

    link.stall_down = True
    t0 = time.monotonic()
    flood = rig.raw.pipeline(transaction=False)
    junk = b"\xc1" * 8192  # not a fastsess message: counted as malformed by whoever reads it
    batches = 0
    while b_addr in pubsub_addresses(rig.raw):
        assert batches < 100, "the subscriber was never dropped"
        for _ in range(32):
            flood.publish(rig.channel, junk)
        flood.execute()
        batches += 1
    assert L.write(A, sid, 1) is None  # its invalidation cannot reach B
    assert B.state()["reconnects"] == before["reconnects"]
    stale_during = B.read(sid)
    assert stale_during == {"v": 0}  # B does not know yet: it serves its cached copy
    link.stall_down = False
    t_release = time.monotonic()
    wait_until(lambda: B.state()["reconnects"] > before["reconnects"], 10, what="B to resubscribe")
    assert B.read(sid) == {"v": 1}
    after = B.state()
    recovery = rig.recovery(A, B, t_release)
    L.check(rig.raw, rig.prefix, [A, B])
    assert after["malformed"] > before["malformed"]  # it read what was buffered before the EOF
    report("pub/sub output buffer overflow", b_kind, callers="nothing", flood_mb=round(batches * 32 * 8192 / 2**20, 1),
           stall_s=t_release - t0, stale_read_while_stalled=stale_during == {"v": 0},
           junk_drained=after["malformed"] - before["malformed"], recovery_s=recovery)


@pytest.mark.parametrize("b_kind", ["sync", "asyncio"])
def test_debug_sleep(rig: Rig, b_kind: str) -> None:
    A, B = rig.start(b_kind)
    L = rig.ledger
    sid = L.create(A, 0)
    cache_on(B, sid, 0)
    uncached = L.create(B, "b")
    sleeper = redis.Redis.from_url(rig.server.url)
    done = threading.Event()

    def sleep() -> None:
        try:
            sleeper.execute_command("DEBUG", "SLEEP", "1.5")
        finally:
            done.set()

    threading.Thread(target=sleep, daemon=True).start()
    asleep = redis.Redis.from_url(rig.server.url, socket_timeout=0.05)
    try:
        wait_until(lambda: caught(asleep.ping) is not None, 5, what="the server to fall asleep")  # it answers nothing now
    finally:
        asleep.close()
    try:
        cached = B.read(sid) if caught(lambda: B.read(sid)) is None else UNAVAILABLE
        seen = {"save": L.write(A, sid, 1), "load (miss)": caught(lambda: A.read(uncached))}
        assert seen == {"save": UNAVAILABLE, "load (miss)": UNAVAILABLE}
        assert cached in ({"v": 0}, UNAVAILABLE)
        assert done.wait(10)
        t_end = time.monotonic()
    finally:
        sleeper.close()
    # The save that timed out may still have run after the sleep (its bytes were sent):
    # either way both nodes now read what Redis holds.
    L.check(rig.raw, rig.prefix, [A, B])
    recovery = rig.recovery(A, B, t_end)
    landed = (A.read(sid) or {}).get("v") == 1
    report("DEBUG SLEEP 1.5 s", b_kind, callers=UNAVAILABLE, cached_read="served" if cached != UNAVAILABLE else UNAVAILABLE,
           timed_out_save_landed=landed, recovery_s=recovery)


@pytest.mark.parametrize("b_kind", ["sync", "asyncio"])
def test_maxmemory_noeviction(rig: Rig, b_kind: str) -> None:
    A, B = rig.start(b_kind)
    L = rig.ledger
    sid = L.create(A, 0)
    gone = L.create(A, "to delete")
    uncached = L.create(B, "b")  # a read on A is a miss
    cache_on(B, sid, 0)
    cache_on(B, gone, "to delete")
    filler = rig.raw.pipeline(transaction=False)
    for i in range(200):
        filler.set(f"filler:{i}", b"x" * 10_000)
    filler.execute()
    rig.raw.config_set("maxmemory-policy", "noeviction")
    rig.raw.config_set("maxmemory", 1_000_000)  # well under what is used: every write that adds data fails
    try:
        seen = {
            "save": L.write(A, sid, 1),
            "create": caught(lambda: A.create({"v": "new"})),
            "regenerate": caught(lambda: A.regenerate(sid)),
            "load": caught(lambda: A.read(sid)),
            "load (miss)": caught(lambda: A.read(uncached)),
            "load (cached on B)": caught(lambda: B.read(sid)),
            "delete": caught(lambda: A.delete(gone)),
        }
        assert seen == {"save": UNAVAILABLE, "create": UNAVAILABLE, "regenerate": UNAVAILABLE,
                        "load": None, "load (miss)": None, "load (cached on B)": None, "delete": None}, seen
        del L.acked[gone]
        assert wait_for_value(B, gone, None, 5)  # the delete's invalidation reached B
        assert B.read(gone) is None
        assert A.read(sid) == {"v": 0} and B.read(sid) == {"v": 0}  # the refused save changed nothing
    finally:
        rig.raw.config_set("maxmemory", 0)
    t_end = time.monotonic()
    assert L.write(A, sid, 2) is None
    assert wait_for_value(B, sid, 2, 5)
    L.check(rig.raw, rig.prefix, [A, B])
    recovery = rig.recovery(A, B, t_end)
    report("maxmemory noeviction", b_kind, callers=f"{UNAVAILABLE} on save/create/regenerate; reads and deletes work",
           recovery_s=recovery)


@pytest.mark.parametrize("direction", ["down", "up"])
@pytest.mark.parametrize("b_kind", ["sync", "asyncio"])
def test_blackholed_subscriber_connection(rig: Rig, b_kind: str, direction: str) -> None:
    """B's pub/sub connection silently loses everything in one direction (no FIN, no RST).

    Downstream: B does not hear invalidations, and keeps serving its cached copies -- of a
    session saved meanwhile, and of one deleted (logged out) meanwhile -- until its lease
    runs out: ``lease`` (1 s) after the last PONG proved it current, plus scheduling
    delays (then it reads Redis; ``subscribe_timeout`` later it reconnects and replays).
    Upstream: the invalidations still arrive; nothing is stale once they are applied.
    """
    A, B = rig.start(b_kind, subscribe_timeout=1.0)
    L = rig.ledger
    created = B.state()["received"]
    sid = L.create(A, 0)
    cache_on(B, sid, 0)
    logged_out = A.create({"v": "logged out"})  # deleted during the fault (a logout)
    cache_on(B, logged_out, "logged out")
    wait_until(lambda: B.state()["received"] >= created + 2, 5, what="B to hear both creations")
    before = B.state()
    link = rig.subscriber_link()
    setattr(link, f"blackhole_{direction}", True)
    t0 = time.monotonic()
    assert L.write(A, sid, 1) is None
    assert A.delete(logged_out) is True
    t_write = time.monotonic()
    first = B.read(sid)
    first_deleted = B.read(logged_out)
    stale_reads, last_stale = 0, None
    while True:
        state = B.state()
        got = B.read(sid)
        now = time.monotonic()
        if got == {"v": 1}:
            break
        assert got == {"v": 0}
        # Never stale once the invalidation was applied or the listener gave up on the link.
        assert state["received"] == before["received"] and state["reconnects"] == before["reconnects"]
        stale_reads, last_stale = stale_reads + 1, now
        assert now < t0 + 10, "B served the old copy for 10 s"
        time.sleep(0.0005)
    fresh_after = time.monotonic() - t_write
    if direction == "down":
        # The write is invisible to B until its lease runs out (then it reads Redis).
        assert first == {"v": 0} and stale_reads > 0
        assert first_deleted == {"v": "logged out"}  # a deleted session is served too
        wait_until(lambda: B.state()["reconnects"] > before["reconnects"], 5, what="B to reconnect")
        assert B.state()["received"] == before["received"]  # the invalidation itself never arrived
    else:
        # The invalidation arrives as usual; stale reads, if any, only while it was in flight.
        assert B.state()["received"] > before["received"]
    recovery = rig.recovery(A, B, t0)
    assert B.read(sid) == {"v": 1} and B.read(logged_out) is None
    L.check(rig.raw, rig.prefix, [A, B])
    report(f"blackholed subscriber ({direction})", b_kind, callers="nothing", stale_reads=stale_reads,
           stale_for_s=(last_stale - t_write) if last_stale else 0.0, fresh_after_s=fresh_after, recovery_s=recovery)
