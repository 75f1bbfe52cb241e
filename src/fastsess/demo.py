"""``fastsess demo``: N node processes share one Redis; watch their caches stay coherent.

Each node process runs a ``ClusteredRedisStore`` with its own node id and
serves a Zipf-like stream of requests: mostly reads, some writes, a few
deletes.  Session ``i`` is written and deleted only by node ``i % N`` (its
"owner"), so each session's versions only grow and every node can check what
it reads against what the owner has committed.  Owners publish their commits
in shared memory: ``committed[i]`` (version, or -1 once deleted) and
``committed_at[i]``, the monotonic time the owner started its latest write
(set before the write goes to Redis, so a read that overlaps a write sees the
shared state change during the read and is not judged).

A **stale read** is a load that returned an older version (or a deleted
session) although the newer commit happened more than ``GRACE`` seconds
before the read started.  Within the grace window an old copy is allowed: it
is the pub/sub delivery time, which the README allows for (p99 is a few ms).
The demo passes when every node reports zero stale reads.

**Gaps repaired, lease state.**  Every ``drop_every`` seconds one node (in turn) breaks
its own listener's connection, as a network failure would
(``coordinator.drop_connection()``): writes go on meanwhile, so its listener misses
some invalidations.  On resubscribing it replays the missed sequence numbers from the
server's log and evicts only those ids (the ``replays``/``ids`` columns); a full flush
(``flushes``) happens only when the log cannot tell.  ``lease`` is the time left on the
node's proof that every invalidation arrived (``off``: the cache is bypassed).  The
stale-read check above runs throughout: a replay that missed something would show.
"""

from __future__ import annotations

import multiprocessing
import random
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from .benchmarks.cluster import receive, zipf_sequence
from .config import ClusterConfig
from .stores.clustered import ClusteredRedisStore

GRACE = 0.1  # seconds an invalidation may take to arrive before an old read counts as stale
REPORT_EVERY = 0.5
ID_LENGTH = 43
READ, WRITE, DELETE = 0, 1, 2


def _node(
    index: int, nodes: int, url: str, channel: str, prefix: str, shared: dict[str, Any], duration: float, conn: Any,
    drop_every: float = 0.0,
) -> None:
    """One node process: serve requests, report counters every ``REPORT_EVERY`` seconds,
    and break its own listener's connection at its turn (every ``drop_every * nodes``
    seconds, staggered by node; 0: never)."""
    ids, committed, committed_at = shared["ids"], shared["committed"], shared["committed_at"]
    sessions = len(committed)
    rng = random.Random(index)
    sequence = zipf_sequence(sessions, 50_000, rng)
    config = ClusterConfig(node_id=f"demo-node-{index}-{uuid.uuid4().hex[:6]}", channel=channel)
    counts = {"reads": 0, "writes": 0, "deletes": 0, "stale_reads": 0, "worst_stale_ms": 0, "errors": 0, "drops": 0}

    def session_id(i: int) -> str:
        return bytes(ids[i * ID_LENGTH : (i + 1) * ID_LENGTH]).decode("ascii", "replace")

    def begin(i: int) -> None:
        # Announce a write before it reaches Redis: a read overlapping it sees the shared
        # state change and is not judged (it may legitimately see either side).
        committed_at[i] = time.monotonic()

    def commit(i: int, version: int, new_id: str | None = None) -> None:
        if new_id is not None:
            ids[i * ID_LENGTH : (i + 1) * ID_LENGTH] = new_id.encode("ascii")
        committed_at[i] = time.monotonic()
        committed[i] = version

    with ClusteredRedisStore(url=url, prefix=prefix, config=config) as store:
        coordinator = store.coordinator
        assert coordinator is not None
        if index == 0:  # node 0 creates every session once; owners take over from there
            for i in range(sessions):
                created = store.create({"i": i, "n": 0})
                store.save(created)
                commit(i, created.version, created.id)
        conn.send(("ready", coordinator.wait_subscribed(5.0)))
        conn.recv()  # "go": every node starts together
        start = time.monotonic()
        deadline = start + duration
        next_report = start + REPORT_EVERY
        next_drop = start + drop_every * (index + 1) if drop_every > 0 else float("inf")
        step = 0
        while time.monotonic() < deadline:
            i = sequence[step % len(sequence)]
            step += 1
            roll = rng.random()
            action = READ if i % nodes != index or roll < 0.90 else (WRITE if roll < 0.99 else DELETE)
            started = time.monotonic()  # before reading the shared state: see _is_stale
            sid = session_id(i)
            want, want_at = committed[i], committed_at[i]
            try:
                session = store.load(sid)
            except Exception:  # noqa: BLE001 - a demo node keeps going and counts errors
                counts["errors"] += 1
                continue
            counts["reads"] += 1
            unchanged = committed[i] == want and committed_at[i] == want_at
            if unchanged and _is_stale(session, want, started - want_at):
                counts["stale_reads"] += 1
                counts["worst_stale_ms"] = max(counts["worst_stale_ms"], int((started - want_at) * 1000))
            try:
                if action == WRITE and session is not None:
                    session["n"] = step
                    begin(i)
                    store.save(session)
                    commit(i, session.version)
                    counts["writes"] += 1
                elif action == DELETE and session is not None:
                    begin(i)
                    store.delete(session.id)
                    commit(i, -1)
                    fresh = store.create({"i": i, "n": 0})
                    store.save(fresh)
                    commit(i, fresh.version, fresh.id)
                    counts["deletes"] += 1
            except Exception:  # noqa: BLE001 - Redis hiccup: count it, keep serving
                counts["errors"] += 1
            if started >= next_drop:
                next_drop += drop_every * nodes
                if coordinator.drop_connection():
                    counts["drops"] += 1
            if started >= next_report:
                next_report = started + REPORT_EVERY
                conn.send(("stats", _row(index, store, counts)))
        conn.send(("done", _row(index, store, counts)))
        conn.recv()  # wait until the parent has read everything before closing
        if index == 0:
            store.clear()


def _is_stale(session: Any, want: int, age: float) -> bool:
    """Whether a read returned older data than a commit made ``age`` seconds before it began.

    Only called when no commit happened while the read ran (the shared state
    was the same before and after), so ``want`` is the state the read had to see.
    """
    if age <= GRACE:
        return False
    if want == -1:
        return session is not None
    return session is None or session.version < want


def _row(index: int, store: ClusteredRedisStore, counts: dict[str, int]) -> dict[str, Any]:
    cache = store.cache_stats()
    coordinator = store.coordinator
    assert coordinator is not None
    stats = coordinator.stats
    return {
        "node": index, "hits": cache.hits, "misses": cache.misses, "hit_rate": cache.hit_rate, "invalidations": stats.received,
        "sequence": stats.sequence, "gaps": stats.gaps, "replays": stats.replays, "replayed_ids": stats.replayed_ids,
        "full_flushes": stats.full_flushes, "lease_left": stats.lease_left if stats.subscribed else 0.0,
        "lease_lapses": stats.lease_lapses, **counts,
    }


def format_table(rows: list[dict[str, Any]]) -> list[str]:
    """The live table: one line per node.

    ``drops``: connections the node broke on purpose; ``replays``/``ids``: resubscriptions
    and live gaps repaired by replaying the log, and the ids those replays evicted;
    ``flushes``: full flushes (the log could not tell); ``lease``: ms left on the proof
    that every invalidation arrived (``off``: bypassing the cache), then lapses so far.
    """
    lines = [
        f"{'node':>4} {'reads':>9} {'hits':>9} {'misses':>8} {'hit rate':>9} {'writes':>7} {'deletes':>8} {'invalidations':>14} "
        f"{'stale':>6} {'seq':>7} {'drops':>6} {'replays':>8} {'ids':>6} {'flushes':>8} {'lease':>11}"
    ]
    for r in rows:
        lease = f"{r['lease_left'] * 1000:.0f}ms" if r["lease_left"] > 0 else "off"
        lines.append(
            f"{r['node']:>4} {r['reads']:>9,} {r['hits']:>9,} {r['misses']:>8,} {r['hit_rate']:>9.1%} "
            f"{r['writes']:>7,} {r['deletes']:>8,} {r['invalidations']:>14,} {r['stale_reads']:>6} "
            f"{r['sequence']:>7} {r['drops']:>6} {r['replays']:>8} {r['replayed_ids']:>6} {r['full_flushes']:>8} "
            f"{lease + '/' + str(r['lease_lapses']):>11}"
        )
    return lines


def run_demo(
    url: str, nodes: int = 3, duration: float = 10.0, sessions: int = 2_000, out: Callable[[str], None] = print,
    invalidation: bool = True, drop_every: float = 1.0,
) -> dict[str, Any]:
    """Start ``nodes`` processes against ``url`` for ``duration`` seconds; returns the final counters.

    ``invalidation=False`` puts every node on a channel of its own, so no node
    hears the others: the stale reads that fastsess exists to prevent show up.
    ``drop_every``: seconds between two nodes breaking their listener's connection (in
    turn; 0: never), to show the missed invalidations replayed.

    Raises:
        RuntimeError: a node process failed to start or died.
    """
    ctx = multiprocessing.get_context("spawn")
    tag = uuid.uuid4().hex[:8]
    channel, prefix = f"fastsess-demo:{tag}:invalidate", f"fastsess-demo:{tag}:"
    shared = {
        "ids": ctx.Array("c", sessions * ID_LENGTH, lock=False),
        "committed": ctx.Array("q", sessions, lock=False),
        "committed_at": ctx.Array("d", sessions, lock=False),
    }
    pipes, procs = [], []
    try:
        for index in range(nodes):
            parent, child = ctx.Pipe()
            node_channel = channel if invalidation else f"{channel}:{index}"
            proc = ctx.Process(target=_node, args=(index, nodes, url, node_channel, prefix, shared, duration, child, drop_every), daemon=True)
            proc.start()
            pipes.append(parent)
            procs.append(proc)
            if index == 0:  # node 0 seeds the sessions before the others look for them
                _expect_ready(parent, proc)
        for parent, proc in list(zip(pipes, procs))[1:]:
            _expect_ready(parent, proc)
        for parent in pipes:
            parent.send("go")
        rows: dict[int, dict[str, Any]] = {}
        done: set[int] = set()
        live = sys.stdout.isatty()
        shown = 0
        last_print = 0.0
        while len(done) < nodes:
            for index, (parent, proc) in enumerate(zip(pipes, procs)):
                while parent.poll():
                    kind, row = parent.recv()
                    rows[index] = row
                    if kind == "done":
                        done.add(index)
                if index not in done and not proc.is_alive():
                    raise RuntimeError(f"demo node {index} exited (code {proc.exitcode})")
            now = time.monotonic()
            # a terminal gets the table redrawn in place; a log gets it every 2 s and at the end
            if rows and (live or len(done) == nodes or now - last_print >= 2.0):
                table = format_table([rows[k] for k in sorted(rows)])
                if live and shown:
                    table[0] = f"\x1b[{shown}F" + table[0]
                else:
                    out("")
                for line in table:
                    out(line)
                shown, last_print = len(table), now
            time.sleep(REPORT_EVERY)
        for parent in pipes:
            parent.send("exit")
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    final = [rows[k] for k in sorted(rows)]
    return {
        "nodes": final,
        "replays": sum(r["replays"] for r in final),
        "replayed_ids": sum(r["replayed_ids"] for r in final),
        "full_flushes": sum(r["full_flushes"] for r in final),
        "reads": sum(r["reads"] for r in final),
        "writes": sum(r["writes"] for r in final),
        "deletes": sum(r["deletes"] for r in final),
    }


def _expect_ready(parent: Any, proc: Any) -> None:
    message = receive(parent, proc, 60.0)
    if message != ("ready", True):
        raise RuntimeError(f"a demo node could not subscribe to Redis: {message!r}")
