"""Coherence v2 figures: a subscriber outage under write load (replay vs flush), the lease
under a blackholed or delayed subscriber, and what the sequence costs a save.

    python -m bench.coherence_v2 [--rounds 3] [--quick]

Outage rows: ``tests/faults/subscriber_outage.py`` (B in a child process behind a TCP proxy, A
writing at random in this process); replay (today) and flush (every resubscription
empties the cache, as before sequencing) alternate, round after round; medians.
Save cost: one process, a raw redis-py client, the save script (compare, SET, publish)
with and without the sequence (HINCRBY/HGET/XADD), and a plain SET EX, alternating in
rounds of 2,000 calls; median microseconds per call.  Prints the load average with each block.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import redis

from fastsess._core.messages import encode_message
from fastsess._core.ops import SAVE
from fastsess._core.sequence import log_keys
from fastsess.server import RedisServer
from tests.faults.subscriber_outage import run_outage


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.1f} {five:.1f} {fifteen:.1f}"


def median_of(rows: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in rows if r[key] is not None]
    return statistics.median(values) if values else float("nan")


def outage_block(sessions: int, rounds: int, write_rate: float, outage: float) -> None:
    results: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for _ in range(rounds):
        for flush_mode in (False, True):
            results[flush_mode].append(run_outage("outage", sessions=sessions, write_rate=write_rate, before=1.0, outage=outage,
                                                  after=1.0, flush_mode=flush_mode))
    print(f"\n## {outage:g} s subscriber outage, {sessions:,} sessions cached, {write_rate:g} writes/s ({load()})")
    print("| mode | hit rate before | first 100 ms after resubscribing | ratio | stale reads after resubscribing | "
          "stale >100 ms (whole run) | worst stale | ids evicted by replay | full flushes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for flush_mode, rows in results.items():
        before, after = median_of(rows, "hit_rate_before"), median_of(rows, "hit_rate_first_100ms")
        print(f"| {'flush (before)' if flush_mode else 'replay'} | {before:.1%} | {after:.1%} | {after / before:.2f} | "
              f"{max(r['stale_100ms_after_resubscribing'] for r in rows)} | {median_of(rows, 'stale_100ms'):.0f} | "
              f"{median_of(rows, 'worst_stale_s') * 1000:.0f} ms | "
              f"{statistics.median(r['listener']['replayed_ids'] for r in rows):.0f} | "
              f"{max(r['listener']['full_flushes'] for r in rows)} |")


def lease_block(rounds: int) -> None:
    print(f"\n## Lease 1 s: the subscriber's connection blackholed downstream, or every chunk to it delayed 1.5 s, for 2 s ({load()})")
    print("| fault | reads | stale >100 ms | stale > lease + 100 ms | worst stale | lease lapses |")
    print("|---|---|---|---|---|---|")
    for fault in ("blackhole", "delay"):
        rows = [run_outage(fault, sessions=500, write_rate=200, before=1.0, outage=2.0, after=1.0, lease=1.0, delay=1.5)
                for _ in range(rounds)]
        print(f"| {fault} | {median_of(rows, 'reads'):.0f} | {median_of(rows, 'stale_100ms'):.0f} | "
              f"{max(r['stale_beyond_lease'] for r in rows)} | {max(r['worst_stale_s'] for r in rows) * 1000:.0f} ms (max) | "
              f"{statistics.median(r['listener']['lease_lapses'] for r in rows):.0f} |")


def save_cost_block(rounds: int, calls: int = 2000) -> None:
    """The clustered save's script (``SAVE``: compare, SET, publish) with and without the
    sequence, and a plain SET EX, on one client, alternating rounds."""
    server = RedisServer()
    server.start()
    client = redis.Redis.from_url(server.url)
    try:
        key, payload = "bench:key", b"x" * 200
        client.set(key, payload)
        meta, log = log_keys("bench:channel")
        compare = ("p", payload[:16])  # what a loaded session compares with
        numbered = encode_message("invalidated", "a" * 43, "bench/1", 1, sequenced=True)
        whole = encode_message("invalidated", "a" * 43, "bench/1", 1)

        def run(sequenced: bool) -> float:
            keys = (key, meta, log) if sequenced else (key,)
            tail = (numbered, 10_000, "a" * 43) if sequenced else (whole,)
            args = (payload, 3600, *compare, "bench:channel", *tail)
            client.execute_command("EVAL", SAVE.text, len(keys), *keys, *args)
            start = time.perf_counter()
            for _ in range(calls):
                client.execute_command("EVALSHA", SAVE.sha, len(keys), *keys, *args)
            return (time.perf_counter() - start) / calls * 1e6

        def set_ex() -> float:
            start = time.perf_counter()
            for _ in range(calls):
                client.execute_command("SET", key, payload, "EX", 3600)
            return (time.perf_counter() - start) / calls * 1e6

        timings: dict[str, list[float]] = {"SET EX": [], "SAVE, unnumbered (Redis Cluster)": [], "SAVE, numbered and logged": []}
        for _ in range(rounds):
            timings["SET EX"].append(set_ex())
            timings["SAVE, unnumbered (Redis Cluster)"].append(run(False))
            timings["SAVE, numbered and logged"].append(run(True))
        print(f"\n## Save script cost, one client, loopback, {rounds} alternating rounds of {calls:,} calls ({load()})")
        print("| command | median us/call | vs SET EX |")
        print("|---|---|---|")
        base = statistics.median(timings["SET EX"])
        for name, values in timings.items():
            print(f"| {name} | {statistics.median(values):.1f} | {statistics.median(values) / base:.2f}x |")
    finally:
        client.close()
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one round, 2,000 sessions only")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    save_cost_block(max(rounds, 5))
    outage_block(10_000, rounds, 200.0, 2.0)
    if not args.quick:
        outage_block(2_000, rounds, 200.0, 2.0)
    lease_block(rounds)


if __name__ == "__main__":
    main()
