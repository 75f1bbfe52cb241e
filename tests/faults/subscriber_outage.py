"""A subscriber outage under write load, measured: stale reads, and the hit rate after.

``run_outage(...)`` starts a private ``redis-server``, a ``TcpProxy`` in front of it and
a reader node B in a child process (a sync ``ClusteredRedisStore`` reaching Redis only
through the proxy), warms B's cache with ``sessions`` sessions, then lets B read at
random while a writer A (in this process, straight to Redis) writes random sessions at
``write_rate`` per second.  After ``before`` seconds the fault hits B's pub/sub
connection in the proxy (``fault``):

* ``"outage"``: blackholed both ways for ``outage`` seconds, then reset (RST): B's
  listener reconnects at once and resubscribes (its PINGs go unanswered meanwhile, so
  its lease lapses; ``subscribe_timeout`` is set longer than the outage);
* ``"blackhole"``: blackholed downstream (B hears nothing) for ``outage`` seconds, then
  left to B's own detection (no PONG within ``subscribe_timeout``);
* ``"delay"``: every chunk Redis sends B's listener is held ``delay`` seconds for
  ``outage`` seconds.

Every read B makes is recorded (its start time, the session, the value's write counter,
whether it was a cache hit, whether the cache was served); A records when each write
was acknowledged.  A read is **stale by d** if it returned a value older than a write
acknowledged more than ``d`` seconds before the read began (clocks: ``time.monotonic``,
shared by the processes of one machine).  ``flush_mode=True`` makes B's listener behave
as before sequencing: every resubscription flushes the cache (for the comparison).

Bounded: everything runs on 127.0.0.1 and ends by itself within
``before + outage + after`` seconds plus start-up.
"""

from __future__ import annotations

import bisect
import multiprocessing
import random
import threading
import time
import uuid
from typing import Any

import redis

from fastsess import ClusterConfig, ClusteredRedisStore
from fastsess.server import RedisServer

from ..tcpproxy import TcpProxy


def _reader(url: str, channel: str, prefix: str, ids: list[str], config: dict[str, Any], flush_mode: bool, conn: Any) -> None:
    """Node B: warm the cache, then read at random until told to stop; send the records."""
    store = ClusteredRedisStore(url=url, prefix=prefix, config=ClusterConfig(node_id="B", channel=channel, **config),
                                socket_timeout=0.5)
    coordinator = store.coordinator
    assert coordinator is not None
    if flush_mode:  # as before sequencing: a resubscription flushes
        coordinator.machine.sequenced = False
    conn.send(coordinator.wait_subscribed(10.0))
    cache = store._cache
    assert cache is not None
    for sid in ids:
        store.load(sid)
        store.load(sid)
    conn.send(len(cache))
    conn.recv()  # go
    rng = random.Random(7)
    starts: list[float] = []
    which: list[int] = []
    values: list[int] = []
    hits: list[bool] = []
    served: list[bool] = []
    n = len(ids)
    while not conn.poll():
        i = rng.randrange(n)
        sid = ids[i]
        hit = coordinator.subscribed and cache.get(sid) is not None
        serving = coordinator.subscribed
        t = time.monotonic()
        session = store.load(sid)
        starts.append(t)
        which.append(i)
        values.append(-1 if session is None else int(session.get("n", 0)))
        hits.append(hit)
        served.append(serving)
        time.sleep(0.0002)  # a request loop, not a spin: the machine is shared
    conn.recv()
    stats = coordinator.stats
    conn.send({
        "starts": starts, "which": which, "values": values, "hits": hits, "served": served, "cached": len(cache),
        "stats": stats._asdict(),
    })
    store.close()


def _writer(store: Any, ids: list[str], rate: float, stop: threading.Event, acked: list[list[tuple[float, int]]]) -> None:
    """Node A: write random sessions at ``rate`` per second; ``acked[i]``: (time, counter) per write."""
    rng = random.Random(11)
    counters = [0] * len(ids)
    sessions = {}
    period = 1.0 / rate
    next_at = time.monotonic()
    while not stop.is_set():
        i = rng.randrange(len(ids))
        s = sessions.get(i) or store.load(ids[i])
        counters[i] += 1
        s["n"] = counters[i]
        if store.save(s):
            acked[i].append((time.monotonic(), counters[i]))
            sessions[i] = s
        next_at += period
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def analyse(reads: dict[str, Any], acked: list[list[tuple[float, int]]], bounds: tuple[float, ...]) -> dict[str, Any]:
    """Stale reads by each bound ``d``, and the oldest staleness seen (seconds)."""
    times = [[t for t, _ in writes] for writes in acked]
    stale = dict.fromkeys(bounds, 0)
    worst = 0.0
    for t, i, value in zip(reads["starts"], reads["which"], reads["values"]):
        writes = acked[i]
        # The first write newer than the value read: when was it acknowledged?
        newer = next((k for k, (_, counter) in enumerate(writes) if counter > value), None) if value >= 0 else None
        if newer is None or times[i][newer] >= t:
            continue
        age = t - times[i][newer]
        worst = max(worst, age)
        for d in bounds:
            if age > d:
                stale[d] += 1
    return {"stale": stale, "worst_stale_s": worst}


def hit_rate(reads: dict[str, Any], start: float, end: float) -> tuple[float, int]:
    """The share of reads started in ``[start, end)`` that were cache hits, and how many reads."""
    lo, hi = bisect.bisect_left(reads["starts"], start), bisect.bisect_left(reads["starts"], end)
    count = hi - lo
    return (sum(reads["hits"][lo:hi]) / count if count else 0.0), count


def resubscribed_at(reads: dict[str, Any], after: float) -> float | None:
    """When B served its cache again after ``after`` (the first served read after a bypassed one)."""
    starts, served = reads["starts"], reads["served"]
    k = bisect.bisect_left(starts, after)
    while k < len(starts) and served[k]:
        k += 1  # still serving on the old proof (the lease runs out later)
    while k < len(starts) and not served[k]:
        k += 1
    return starts[k] if k < len(starts) else None


def run_outage(
    fault: str = "outage", sessions: int = 2000, write_rate: float = 200.0, before: float = 1.0, outage: float = 2.0,
    after: float = 1.0, lease: float = 1.0, delay: float = 1.5, flush_mode: bool = False, subscribe_timeout: float | None = None,
) -> dict[str, Any]:
    """Run one scenario (see the module doc); returns the figures and B's raw records."""
    server = RedisServer()
    server.start()
    proxy = TcpProxy(server.port)
    raw = redis.Redis.from_url(server.url)
    tag = uuid.uuid4().hex[:8]
    channel, prefix = f"outage:{tag}", f"o{tag}:"
    config = {"lease": lease, "subscribe_timeout": subscribe_timeout or (outage + 2.0 if fault == "outage" else 1.0),
              "reconnect_backoff": (0.02, 0.1)}
    writer = ClusteredRedisStore(url=server.url, prefix=prefix, config=ClusterConfig(node_id="A", channel=channel, **config))
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = None
    try:
        ids = []
        for k in range(sessions):
            s = writer.create({"n": 0, "k": k})
            writer.save(s)
            ids.append(s.id)
        proc = ctx.Process(target=_reader, args=(proxy.url, channel, prefix, ids, config, flush_mode, child), daemon=True)
        proc.start()
        if not parent.poll(60) or not parent.recv():
            raise RuntimeError("B did not subscribe")
        if not parent.poll(120):
            raise RuntimeError("B did not warm its cache")
        warmed = parent.recv()
        links = [link for link in proxy.find(b"SUBSCRIBE")]
        assert len(links) == 1, f"{len(links)} subscriber connections through the proxy"
        link = links[0]
        acked: list[list[tuple[float, int]]] = [[(0.0, 0)] for _ in ids]
        stop = threading.Event()
        thread = threading.Thread(target=_writer, args=(writer, ids, write_rate, stop, acked), daemon=True)
        parent.send("go")
        thread.start()
        time.sleep(before)
        t_fault = time.monotonic()
        if fault == "delay":
            link.delay_down = delay
        elif fault == "blackhole":
            link.blackhole_down = True
        else:
            link.blackhole_down = link.blackhole_up = True
        time.sleep(outage)
        t_end = time.monotonic()
        if fault == "delay":
            link.delay_down = 0.0
        elif fault == "blackhole":
            link.blackhole_down = False
        else:
            link.reset()
        time.sleep(after)
        stop.set()
        thread.join(10)
        parent.send("stop")
        parent.send("report")
        if not parent.poll(60):
            raise RuntimeError("B did not report")
        reads = parent.recv()
        proc.join(10)
    finally:
        if proc is not None and proc.is_alive():
            proc.kill()
        writer.close()
        proxy.close()
        raw.close()
        server.close()
    before_rate, before_n = hit_rate(reads, t_fault - before, t_fault)
    resub = resubscribed_at(reads, t_fault)
    after_rate, after_n = hit_rate(reads, resub, resub + 0.1) if resub is not None else (0.0, 0)
    after_resub = {k: [v for v, t in zip(reads[k], reads["starts"]) if resub is not None and t >= resub]
                   for k in ("starts", "which", "values")}
    figures = analyse(reads, acked, (0.1, lease + 0.1))
    return {
        "fault": fault, "flush_mode": flush_mode, "sessions": sessions, "warmed": warmed, "write_rate": write_rate,
        "writes": sum(len(w) - 1 for w in acked), "outage_s": t_end - t_fault, "lease": lease, "reads": len(reads["starts"]),
        "hit_rate_before": before_rate, "reads_before": before_n,
        "resubscribed_after_s": None if resub is None else resub - t_fault,
        "hit_rate_first_100ms": after_rate, "reads_first_100ms": after_n,
        "stale_100ms": figures["stale"][0.1], "stale_beyond_lease": figures["stale"][lease + 0.1],
        "worst_stale_s": figures["worst_stale_s"],
        "stale_100ms_after_resubscribing": analyse(after_resub, acked, (0.1,))["stale"][0.1],
        "listener": reads["stats"], "cached_at_end": reads["cached"],
    }
