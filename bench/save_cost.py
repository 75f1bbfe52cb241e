"""What a clustered save costs next to a raw ``SET EX``, side by side in one process.

``python bench/save_cost.py [rounds] [per_round] [--peer]``

Every round runs ``per_round`` saves of the same ~300-byte session through each
candidate in turn (rotating which goes first, so drift of a shared machine hits all
alike); each save is timed alone, and the figure is the median over all of them.  The
server counts what each candidate sent (``INFO commandstats`` deltas around each of its
slices), so the table says how many commands of each kind one save runs.

Candidates:

* ``raw SET EX``: ``redis.Redis.set(key, msgpack.packb(data), ex=...)``, the floor;
* ``RedisStore.save``: the same write through the store (encode with its round-trip check);
* ``ClusteredRedisStore.save``: the script that writes and publishes, with this node's
  own listener subscribed (its own message comes back to it: the "echo");
* ``... update mode``: the same, the message carrying the value (``update_max_bytes``);
* three breakdown rows: the clustered save with its message published on a channel nobody
  listens to (no echo: what the listener costs the writer); the same with the message
  read instead by a bare thread of this process that only waits with ``select`` and
  ``os.read``s it (the floor of any listener that must wake up for its own messages);
  and the save script alone, without the store (with its compare-and-set, on a channel
  nobody listens to).

``--peer`` adds one subscriber in another process (``redis-cli SUBSCRIBE``), as a second
node would be: the server then delivers every message twice.  A private ``redis-server``
is started on a free port; nothing else talks to it.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import redis

from fastsess import ClusterConfig, ClusteredRedisStore, RedisStore
from fastsess._core.conflict import stamp
from fastsess._core.ops import SAVE
from fastsess.benchmarks.cluster import command_deltas, server_command_calls
from fastsess.benchmarks.stores import SAMPLE_SESSION, TTL
from fastsess.server import RedisServer

CHANNEL = "bench:save:invalidate"


def _time(fn: Callable[[int], Any], count: int, start: int, samples: list[float]) -> None:
    clock = time.perf_counter_ns
    for i in range(start, start + count):
        t0 = clock()
        fn(i)
        samples.append(clock() - t0)


def main(argv: list[str]) -> None:
    """Print the table (see the module doc for the arguments)."""
    peer = "--peer" in argv
    args = [a for a in argv if not a.startswith("--")]
    rounds = int(args[0]) if args else 40
    per_round = int(args[1]) if len(args) > 1 else 100
    logging.disable(logging.WARNING)
    server = RedisServer().start()
    listener: subprocess.Popen[bytes] | None = None
    stores: list[Any] = []
    bare_stop = threading.Event()
    bare_sock: socket.socket | None = None
    bare_thread: threading.Thread | None = None
    try:
        client = redis.Redis.from_url(server.url)
        if peer:
            cli = shutil.which("redis-cli")
            if cli is None:
                raise SystemExit("--peer needs redis-cli")
            listener = subprocess.Popen(
                [cli, "-p", str(server.port), "SUBSCRIBE", CHANNEL, CHANNEL + ":u", CHANNEL + ":q"], stdout=subprocess.DEVNULL,
            )
        # one channel per store: a save wakes only its own store's listener
        plain = RedisStore(url=server.url, prefix="bench:r:")
        node = ClusteredRedisStore(url=server.url, prefix="bench:c:", config=ClusterConfig(channel=CHANNEL))
        update = ClusteredRedisStore(
            url=server.url, prefix="bench:u:", config=ClusterConfig(channel=CHANNEL + ":u", update_max_bytes=4096),
        )
        quiet = ClusteredRedisStore(url=server.url, prefix="bench:q:", config=ClusterConfig(channel=CHANNEL + ":q"))
        bare = ClusteredRedisStore(url=server.url, prefix="bench:b:", config=ClusterConfig(channel=CHANNEL + ":b"))
        stores += [plain, node, update, quiet, bare]
        for store in (node, update, quiet, bare):
            assert store.coordinator is not None and store.coordinator.wait_subscribed(5.0)
        assert quiet.coordinator is not None and bare.coordinator is not None
        quiet.coordinator.channel = CHANNEL + ":nobody"  # publishes where nobody listens; still listens on its own
        # publishes where only a bare thread listens: it wakes up and reads, nothing else
        bare.coordinator.channel = CHANNEL + ":bare"
        bare_sock = socket.create_connection(("127.0.0.1", server.port))
        bare_sock.sendall(f"SUBSCRIBE {CHANNEL}:bare\r\n".encode())
        bare_sock.recv(4096)  # the confirmation

        def bare_reader(sock: socket.socket = bare_sock) -> None:
            fd = sock.fileno()
            while not bare_stop.is_set():
                if select.select([fd], [], [], 0.25)[0] and not os.read(fd, 65536):
                    return

        bare_thread = threading.Thread(target=bare_reader, name="bare-reader", daemon=True)
        bare_thread.start()
        if peer:
            deadline = time.monotonic() + 5
            while client.pubsub_numsub(CHANNEL)[0][1] < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        sessions = {}
        for name, store in (("plain", plain), ("node", node), ("update", update), ("quiet", quiet), ("bare", bare)):
            s = store.create(dict(SAMPLE_SESSION))
            store.save(s)
            sessions[name] = (store, s)
        client.script_load(SAVE.text)
        message = node.coordinator.message("invalidated", sessions["node"][1].id, 1) if node.coordinator else b""
        client.set("bench:raw", b"x")
        # two stored values (serializer envelopes, as a store writes) to alternate between
        envelopes = []
        for n in range(2):
            s = plain.create({**SAMPLE_SESSION, "n": n})
            envelopes.append(plain.serializer.encode(s))
        last = [envelopes[1]]  # what bench:script holds: the script compares with it, as a save would
        client.set("bench:script", last[0])

        def script_alone(i: int) -> None:  # the command the quiet store sends (sequenced as it is), built here
            payload = envelopes[i % 2]
            command = quiet._core._announce(
                "SET", SAVE, ("bench:script",), "bench-script", payload, TTL, *stamp(last[0]), CHANNEL + ":nobody", message,
            )
            client.execute_command(*command[2])
            last[0] = payload

        def save(name: str) -> Callable[[int], Any]:
            store, s = sessions[name]

            def run(i: int) -> None:
                s["n"] = i
                store.save(s)

            return run

        candidates: dict[str, Callable[[int], Any]] = {
            "raw SET EX + packb": lambda i: client.set("bench:raw", msgpack.packb({**SAMPLE_SESSION, "n": i}), ex=TTL),
            "RedisStore.save": save("plain"),
            "ClusteredRedisStore.save": save("node"),
            "ClusteredRedisStore.save, update mode": save("update"),
            "  breakdown: clustered save, message where nobody listens (no echo)": save("quiet"),
            "  breakdown: the same, message read by a bare select + read thread (the wake-up alone)": save("bare"),
            "  breakdown: the save script alone (EVALSHA with its compare, nobody listens)": script_alone,
        }
        names = list(candidates)
        samples: dict[str, list[float]] = {n: [] for n in names}
        commands: dict[str, dict[str, int]] = {n: {} for n in names}
        load_before = os.getloadavg()
        for r in range(rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                before = server_command_calls(client)
                _time(candidates[name], per_round, r * per_round, samples[name])
                for cmd, n in command_deltas(before, server_command_calls(client)).items():
                    if cmd != "info":
                        commands[name][cmd] = commands[name].get(cmd, 0) + n
        load_after = os.getloadavg()
        base = statistics.median(samples[names[0]])
        total = rounds * per_round
        print(f"{total} saves per candidate, {rounds} alternating rounds; peer subscriber: {'yes' if peer else 'no'}")
        print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
              f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
        print("| candidate | p50 us | / raw | commands per save (server) |")
        print("|---|---|---|---|")
        for name in names:
            p50 = statistics.median(samples[name])
            per = ", ".join(f"{cmd} {n / total:g}" for cmd, n in sorted(commands[name].items()))
            print(f"| {name.strip()} | {p50 / 1e3:.1f} | {p50 / base:.2f}x | {per} |")
    finally:
        bare_stop.set()
        if bare_sock is not None:
            bare_sock.shutdown(socket.SHUT_RDWR)  # wakes the bare reader: it reads the end
            if bare_thread is not None:
                bare_thread.join(5)
            bare_sock.close()
        for store in stores:
            store.close()
        if listener is not None:
            listener.kill()
            listener.wait(5)
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
