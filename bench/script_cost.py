"""What the server spends on a clustered save's script, against a plain ``SET EX``.

``python bench/script_cost.py [calls] [--server PATH]``

Counted by the server itself (``INFO commandstats``, reset before each row): microseconds
of server time per call, the script's own line including the commands it runs, and each
inner command's own figure.  Rows: a plain ``SET EX``; ``EVALSHA`` of scripts that do
nothing, one ``SET``, ``SET`` + ``PUBLISH``, and ``HINCRBY`` + ``XADD`` + ``SET`` +
``PUBLISH`` (the sequencing a numbered save adds, without the compare); the same four
commands in ``MULTI``/``EXEC``; and a real ``ClusteredRedisStore.save`` (compare-and-set,
sequence, log and publish, with this store's listener subscribed).  A private server is
started on a free port (``redis-server`` on PATH, or ``--server``); nothing else talks to it.
Server time is CPU time of the server's one thread: a busy machine moves it less than it
moves round trips, but it moves it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import redis

from fastsess import ClusterConfig, ClusteredRedisStore
from fastsess.server import RedisServer

VALUE = b"x" * 300
MESSAGE = b"m" * 60


def row(client: redis.Redis, name: str, call: Callable[[int], Any], calls: int) -> None:
    client.config_resetstat()
    for i in range(calls):
        call(i)
    stats = {k.removeprefix("cmdstat_"): v for k, v in client.info("commandstats").items() if not k.startswith("cmdstat_config")}
    outer = max(stats.values(), key=lambda v: v["usec"])  # the script (its figure includes its commands), or the command
    inner = ", ".join(f"{k} {v['usec_per_call']:.2f}" for k, v in sorted(stats.items()))
    print(f"| {name} | {outer['usec'] / calls:.2f} | {inner} |", flush=True)


def main(argv: list[str]) -> None:
    """Print the table (arguments: see the module docstring)."""
    binary = argv[argv.index("--server") + 1] if "--server" in argv else None
    args = [a for i, a in enumerate(argv) if not a.startswith("--") and (i == 0 or argv[i - 1] != "--server")]
    calls = int(args[0]) if args else 5000
    server = RedisServer(binary=binary).start()
    client = redis.Redis.from_url(server.url)
    try:
        info = client.info("server")
        version = info.get("valkey_version") or info.get("redis_version")
        print(f"{calls:,} calls a row, server {os.path.basename(server.binary)} {version}, load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
        print("| row | server us a call | per command (us a call, as the server counts) |\n|---|---|---|")
        scripts = {
            name: client.script_load(text) for name, text in (
                ("nothing", "return 1"),
                ("set", "return redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])"),
                ("set_publish", "redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]); return redis.call('PUBLISH', ARGV[3], ARGV[4])"),
                ("sequenced", "local s = redis.call('HINCRBY', KEYS[2], 's', 1); "
                              "redis.call('XADD', KEYS[3], 'MAXLEN', '~', 10000, s .. '-0', 'i', ARGV[5]); "
                              "redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]); return redis.call('PUBLISH', ARGV[3], ARGV[4] .. s)"),
            )
        }
        row(client, "SET EX", lambda i: client.set("k", VALUE, ex=600), calls)
        row(client, "EVALSHA, script returns 1", lambda i: client.evalsha(scripts["nothing"], 0), calls)
        row(client, "EVALSHA: SET", lambda i: client.evalsha(scripts["set"], 1, "k", VALUE, 600), calls)
        row(client, "EVALSHA: SET, PUBLISH", lambda i: client.evalsha(scripts["set_publish"], 1, "k", VALUE, 600, "ch", MESSAGE), calls)
        row(client, "EVALSHA: HINCRBY, XADD, SET, PUBLISH", lambda i: client.evalsha(
            scripts["sequenced"], 3, "k", "{x}m", "{x}l", VALUE, 600, "ch", MESSAGE, "i" * 20), calls)
        row(client, "MULTI: SET, HINCRBY, XADD, PUBLISH, EXEC", lambda i: client.pipeline(transaction=True).set("k", VALUE, ex=600)
            .hincrby("m", "s", 1).xadd("l", {"i": "i" * 20}, maxlen=10000, approximate=True).publish("ch", MESSAGE).execute(), calls)
        store = ClusteredRedisStore(url=server.url, config=ClusterConfig(channel="script-cost"))
        try:
            if not store.coordinator.wait_subscribed(5):
                raise RuntimeError("the store's listener did not subscribe")
            session = store.create({"user": 1, "blob": "x" * 250})
            store.save(session)
            session = store.load(session.id)

            def save(i: int) -> None:
                session["n"] = i
                store.save(session)

            row(client, "ClusteredRedisStore.save (compare, sequence, log, publish)", save, calls)
        finally:
            store.close()
    finally:
        client.close()
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
