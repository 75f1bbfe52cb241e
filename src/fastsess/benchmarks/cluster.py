"""What clustering buys: invalidation latency between processes, and Redis read load.

* ``measure_invalidation_latency``: a second OS process runs a
  ``ClusteredRedisStore`` and timestamps every invalidation its listener
  applies; this process saves a session repeatedly.  Latency = from just
  before ``save()`` starts here to the moment the other process has evicted
  its copy (``time.monotonic_ns`` is one clock for every process of a Linux
  machine).  Reported as p50/p99 in milliseconds.
* ``measure_read_load``: a Zipf-like workload (90% reads, 10% writes) over
  ``sessions`` sessions, served by a ``RedisStore`` (no local cache), by one
  ``ClusteredRedisStore`` node and by two nodes taking requests alternately
  (as behind a load balancer), the last once more in update mode
  (``update_max_bytes``: a save sends the value, the other node replaces its copy).  The GETs are counted *on the server*, from the
  deltas of ``INFO commandstats`` around each run, for every row alike.  On a
  private server nothing else runs commands; on a server given by
  ``REDIS_URL`` other clients' GETs during the run are counted too (the report
  says which kind of server it was).  A save's compare-and-set may run a ``GET``
  inside its script: ``load_reads`` counts the loads' reads alone.
"""

from __future__ import annotations

import itertools
import multiprocessing
import random
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from .._core.sequence import log_keys
from ..config import ClusterConfig
from ..stores.clustered import ClusteredRedisStore
from ..stores.redis import RedisStore
from .stores import SAMPLE_SESSION

READY_TIMEOUT = 10.0
UPDATE_MAX_BYTES = 4096  # the update-mode row: the sample session (~300 bytes) travels in the message
DELIVERY_TIMEOUT = 2.0


def _latency_listener(url: str, channel: str, prefix: str, conn: Any) -> None:
    """Child process: apply invalidations and report (version, monotonic_ns) for each."""
    config = ClusterConfig(node_id=f"bench-listener-{uuid.uuid4().hex[:6]}", channel=channel)
    store = ClusteredRedisStore(url=url, prefix=prefix, config=config)
    with store:
        coordinator = store.coordinator
        assert coordinator is not None
        coordinator.on_message = lambda msg: conn.send((msg["v"], time.monotonic_ns()))
        conn.send(("ready", coordinator.wait_subscribed(READY_TIMEOUT)))
        conn.recv()  # blocks until the parent says stop (or closes the pipe)


def receive(conn: Any, proc: Any, timeout: float) -> Any:
    """The next object from ``conn``; fails fast if ``proc`` died.

    Raises:
        RuntimeError: nothing arrived within ``timeout`` seconds, or the process exited.
    """
    deadline = time.monotonic() + timeout
    while not conn.poll(0.05):
        if not proc.is_alive():
            raise RuntimeError(f"the node process exited (code {proc.exitcode})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no answer from the node process within {timeout:g} s")
    return conn.recv()


def measure_invalidation_latency(url: str, samples: int = 500, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """p50/p99/max milliseconds from a save on this process to eviction in another.

    Raises:
        RuntimeError: the listener process did not subscribe, or a message was lost.
    """
    tag = uuid.uuid4().hex[:8]
    channel, prefix = f"fastsess-bench:{tag}:invalidate", f"fastsess-bench:{tag}:"
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_latency_listener, args=(url, channel, prefix, child), daemon=True)
    proc.start()
    config = ClusterConfig(node_id=f"bench-writer-{tag}", channel=channel)
    latencies: list[float] = []
    try:
        if receive(parent, proc, READY_TIMEOUT * 2) != ("ready", True):
            raise RuntimeError("the listener process did not subscribe in time")
        with ClusteredRedisStore(url=url, prefix=prefix, config=config) as store:
            session = store.create(SAMPLE_SESSION)
            store.save(session)  # first save: SET NX, and a creation message
            if receive(parent, proc, DELIVERY_TIMEOUT)[0] != session.version:
                raise RuntimeError("the listener process did not report the creation")
            for i in range(samples):
                session["n"] = i
                t0 = time.monotonic_ns()
                store.save(session)
                version, t1 = receive(parent, proc, DELIVERY_TIMEOUT)
                if version != session.version:
                    raise RuntimeError(f"expected version {session.version}, got {version}")
                latencies.append((t1 - t0) / 1e6)
                if progress and i % 100 == 99:
                    progress("invalidation latency")
            store.clear()
            store.client.delete(*log_keys(channel))  # the channel's invalidation log, after the clear it logged
    finally:
        parent.send("stop")
        proc.join(5)
        if proc.is_alive():
            proc.kill()
    ordered = sorted(latencies)
    return {
        "samples": len(ordered),
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max_ms": ordered[-1],
    }


def zipf_sequence(n_items: int, length: int, rng: random.Random, exponent: float = 1.0) -> list[int]:
    """``length`` item indexes drawn from a Zipf-like law (item k has weight 1/(k+1)^exponent)."""
    weights = list(itertools.accumulate(1.0 / (k + 1) ** exponent for k in range(n_items)))
    return rng.choices(range(n_items), cum_weights=weights, k=length)


READ_COMMANDS = ("get", "getex", "mget")  # what a session load can send


def load_reads(deltas: dict[str, int], clustered: bool) -> int:
    """The GETs the loads of a run sent, from its ``command_deltas``.

    A clustered store's load is the ``GET`` + ``PTTL`` script, the only command that runs
    ``PTTL``: its ``pttl`` count (a save's compare-and-set may run a ``GET`` too, on a
    conflict or for a value it compares by digest).  A plain ``RedisStore`` load is a
    plain ``GET``; its saves here compare by prefix (one ``GETRANGE``), no ``GET``.
    """
    if clustered:
        return deltas.get("pttl", 0)
    return sum(deltas.get(name, 0) for name in READ_COMMANDS)


def server_command_calls(client: Any) -> dict[str, int]:
    """Calls per command (lower-case name) since the server's stats were last reset, from ``INFO commandstats``.

    Raises:
        redis.RedisError: the server is unreachable.
    """
    info = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stats.get("calls", 0)) for name, stats in info.items() if isinstance(stats, dict)}


def command_deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Per-command call counts between two ``server_command_calls`` snapshots (only the commands that ran)."""
    return {name: after[name] - before.get(name, 0) for name in after if after[name] - before.get(name, 0) > 0}


def _run_workload(
    stores: list[Any], ids: list[str], sequence: list[int], is_read: list[bool], progress: Callable[[str], None] | None, label: str
) -> None:
    n = len(stores)
    for i, (index, read) in enumerate(zip(sequence, is_read, strict=True)):
        store = stores[i % n]
        session = store.load(ids[index])
        if not read and session is not None:  # a write is a read-modify-write, as in a request handler
            session["n"] = i
            store.save(session)
        if progress and i % 20_000 == 19_999:
            progress(f"read load, {label}")


def measure_read_load(
    url: str,
    sessions: int = 10_000,
    ops: int = 100_000,
    read_fraction: float = 0.9,
    seed: int = 7,
    progress: Callable[[str], None] | None = None,
    private_server: bool = False,
) -> dict[str, Any]:
    """GETs reaching Redis per 1,000 requests, counted on the server, without a local cache and with 1 and 2 nodes
    (``nodes_2_update``: 2 nodes in update mode; ``nodes_2_warm``: the same with ``warm_peers``).

    Every request loads its session (10% then save it back), so requests and
    reads are the same number.  Each row: ``{"reads", "redis_gets" (server
    count), "redis_gets_per_1000", "served_locally", "commands" (every command
    the server ran during the row, by name)}``, plus ``"store_misses"`` (the
    nodes' own miss counters) and ``"first_reads"`` (how many sessions each node reads
    at least once, summed: the fewest GETs a cold node that caches only what it read can
    send) for the clustered rows.

    Raises:
        redis.RedisError / StoreUnavailable: Redis unreachable.
    """
    import redis

    rng = random.Random(seed)
    sequence = zipf_sequence(sessions, ops, rng)
    is_read = [rng.random() < read_fraction for _ in range(ops)]
    results: dict[str, Any] = {
        "sessions": sessions,
        "ops": ops,
        "read_fraction": read_fraction,
        "counted_by": "INFO commandstats deltas on the server",
        "private_server": private_server,
    }
    client = redis.Redis.from_url(url)
    try:
        rows = (("without_cache", 0), ("nodes_1", 1), ("nodes_2", 2), ("nodes_2_update", 2), ("nodes_2_warm", 2))
        for label, n_nodes in rows:
            update = UPDATE_MAX_BYTES if label in ("nodes_2_update", "nodes_2_warm") else 0
            tag = uuid.uuid4().hex[:8]
            channel, prefix = f"fastsess-bench:{tag}:invalidate", f"fastsess-bench:{tag}:"
            stores: list[Any]
            if n_nodes == 0:
                stores = [RedisStore(url=url, prefix=prefix)]
            else:
                stores = [
                    ClusteredRedisStore(
                        url=url, prefix=prefix,
                        config=ClusterConfig(
                            node_id=f"bench-{tag}-{k}", channel=channel, local_cache_max_size=max(sessions, 1), update_max_bytes=update,
                            warm_peers=label == "nodes_2_warm",
                        ),
                    )
                    for k in range(n_nodes)
                ]
            try:
                for store in stores if n_nodes else ():  # a node serves its cache once subscribed
                    if not store.coordinator.wait_subscribed(READY_TIMEOUT):
                        raise RuntimeError(f"a node did not subscribe within {READY_TIMEOUT:g} s")
                writer = stores[0]
                ids = []
                for _ in range(sessions):
                    session = writer.create(SAMPLE_SESSION)
                    writer.save(session)
                    ids.append(session.id)
                if n_nodes:  # start cold: every node fills its cache from Redis
                    deadline = time.monotonic() + READY_TIMEOUT  # once the creation messages are in (warm_peers adds)
                    while any(store.coordinator.stats.created < sessions for store in stores[1:]) and time.monotonic() < deadline:
                        time.sleep(0.01)
                    for store in stores:
                        store.clear_local_cache()
                        store.reset_cache_stats()
                before = server_command_calls(client)
                _run_workload(stores, ids, sequence, is_read, progress, label)
                deltas = command_deltas(before, server_command_calls(client))
                deltas.pop("info", None)  # the snapshots themselves
                gets = load_reads(deltas, clustered=bool(n_nodes))
                entry: dict[str, Any] = {
                    "reads": ops,
                    "redis_gets": gets,
                    "redis_gets_per_1000": 1000.0 * gets / ops,
                    "served_locally": 1.0 - gets / ops,
                    "commands": deltas,
                }
                if n_nodes:
                    entry["store_misses"] = sum(store.cache_stats().misses for store in stores)
                    # the floor for a node that caches only what it read: each node's first read of each
                    # session (with warm_peers, a session's first read on any node serves them all)
                    entry["first_reads"] = (
                        len(set(sequence)) if label == "nodes_2_warm" else sum(len(set(sequence[k::n_nodes])) for k in range(n_nodes))
                    )
                results[label] = entry
                writer.clear()
                client.delete(*log_keys(channel))  # the channel's invalidation log, after the clear it logged
            finally:
                for store in stores:
                    store.close()
    finally:
        client.close()
    return results
