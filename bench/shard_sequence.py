"""What numbering an invalidation per shard costs a save on Redis Cluster, side by side.

``python bench/shard_sequence.py [rounds] [per_round]``

Starts a private 3-master Redis Cluster (``redis-server`` on free ports, loopback) and
times, every round, ``per_round`` saves of the ~300-byte sample session through each
candidate in turn (rotating which goes first), each save timed alone; the figures are
medians over all of them.

* ``numbered``: a ``ClusteredRedisStore`` on a ``RedisCluster`` client, as shipped: the
  save script also advances its shard channel's sequence and appends to its log;
* ``unnumbered``: the same store with numbering turned off on the writer (the script gets
  no cap or id, and publishes the message as it is, as before per-shard sequencing);
* the two save scripts alone, sent raw to the key's master (``EVALSHA``), numbered and not.

Each store has its own channel and listener (its own echo comes back to it).
"""

from __future__ import annotations

import logging
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from redis.cluster import RedisCluster

from fastsess import ClusterConfig, ClusteredRedisStore
from fastsess._core.conflict import stamp
from fastsess._core.ops import SAVE
from fastsess.benchmarks.stores import SAMPLE_SESSION
from fastsess.server import RedisServer, find_cli_binary, free_port

CLUSTER_ARGS = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000")


def start_cluster() -> list[RedisServer]:
    """Three cluster-enabled masters joined into one cluster (ports whose bus port is valid)."""
    ports: set[int] = set()
    while len(ports) < 3:
        port = free_port()
        if port + 10000 <= 65535:
            ports.add(port)
    servers = [RedisServer(port=p, extra_args=CLUSTER_ARGS).start() for p in sorted(ports)]
    subprocess.run([find_cli_binary(), "--cluster", "create", *(f"127.0.0.1:{s.port}" for s in servers), "--cluster-yes"],
                   check=True, timeout=30, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for server in servers:
        client = redis.Redis(port=server.port)
        deadline = time.monotonic() + 20
        while client.cluster("info").get("cluster_state") != "ok":
            if time.monotonic() > deadline:
                raise RuntimeError("cluster not ok")
            time.sleep(0.05)
        client.close()
    return servers


def _time(fn: Callable[[], Any], count: int, samples: list[float]) -> None:
    clock = time.perf_counter_ns
    for _ in range(count):
        t0 = clock()
        fn()
        samples.append(clock() - t0)


def main(argv: list[str]) -> None:
    """Print the medians (see the module doc for the arguments)."""
    rounds = int(argv[0]) if argv else 30
    per_round = int(argv[1]) if len(argv) > 1 else 100
    logging.disable(logging.WARNING)
    servers = start_cluster()
    stores: list[ClusteredRedisStore] = []
    try:
        for name in ("numbered", "unnumbered"):
            client = RedisCluster(host="127.0.0.1", port=servers[0].port)
            config = ClusterConfig(channel=f"bench:{name}:{uuid.uuid4().hex[:6]}")
            store = ClusteredRedisStore(client=client, config=config, prefix=f"bench:{name}:")
            assert store.coordinator is not None and store.coordinator.wait_subscribed(5.0)
            stores.append(store)
        numbered, unnumbered = stores
        assert unnumbered.coordinator is not None
        unnumbered.coordinator.sequenced = False  # messages built whole ...
        unnumbered._core._shard_log = False  # ... and the script gets no cap nor id: not numbered
        sessions = {}
        for store in stores:
            s = store.create(dict(SAMPLE_SESSION))
            assert store.save(s) is True
            sessions[id(store)] = s

        def saver(store: ClusteredRedisStore) -> Callable[[], Any]:
            s = sessions[id(store)]

            def save() -> None:
                s["n"] = s.get("n", 0) + 1
                assert store.save(s) is True
            return save

        # The raw scripts: on the master of one key, its shard channel, a fixed value.
        raw_key = "bench:raw:" + uuid.uuid4().hex
        coordinator = numbered.coordinator
        assert coordinator is not None
        cluster = RedisCluster(host="127.0.0.1", port=servers[0].port)
        node = cluster.get_node_from_key(raw_key)
        master = redis.Redis(host=node.host, port=int(node.port))
        master.script_load(SAVE.text)
        value = numbered.serializer.encode(sessions[id(numbered)])
        master.set(raw_key, value)
        kind, token = stamp(value)
        channel = coordinator.channel_for(raw_key)
        whole = coordinator.message("invalidated", "a" * 43, 1, sequenced=False)
        partial = coordinator.message("invalidated", "a" * 43, 1, sequenced=True)

        def raw(numbered_script: bool) -> Callable[[], Any]:
            tail = (10_000, "a" * 43) if numbered_script else ()
            message = partial if numbered_script else whole

            def run() -> None:
                assert master.execute_command("EVALSHA", SAVE.sha, 1, raw_key, value, 3600, kind, token, channel, message, *tail) == 1
            return run

        candidates = {
            "numbered save (as shipped)": saver(numbered),
            "unnumbered save": saver(unnumbered),
            "save script alone, numbered": raw(True),
            "save script alone, unnumbered": raw(False),
        }
        samples: dict[str, list[float]] = {name: [] for name in candidates}
        names = list(candidates)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                _time(candidates[name], per_round, samples[name])
        load = open("/proc/loadavg").read().split()[:3]
        print(f"{rounds} rounds x {per_round} saves, load {' '.join(load)}")
        for name in names:
            print(f"{name:32s} p50 {statistics.median(samples[name]) / 1000:8.1f} us")
        seq = int(master.hget(channel + ":seq", "s") or 0)
        print(f"(the raw numbered script advanced {channel}:seq to {seq})")
        master.close()
        cluster.close()
    finally:
        for store in stores:
            store.close()
            store.client.close()
        for server in servers:
            server.close()


if __name__ == "__main__":
    main(sys.argv[1:])
