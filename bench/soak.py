"""A bounded soak of ClusteredRedisStore: 3 processes, mixed load, faults mid-run (on demand).

    python bench/soak.py                 # 120 s, 3 worker processes
    python bench/soak.py --quick         # 20 s
    python bench/soak.py --duration 600 --workers 4 --rate 2000 --json soak.json

Starts its own private ``redis-server`` (``fastsess.server.RedisServer``, append-only
file fsynced every second) on a free loopback port, never another one.  Each worker
process runs one ``ClusteredRedisStore`` (default settings) and paces a mixed load at
``--rate`` operations per second:

* shared sessions (every worker reads and writes them, so invalidations flow between
  processes): 85% ``load``, 10% ``load`` + change + ``save``;
* sessions of its own: 3% ``regenerate``, 2% ``delete`` and a new one in its place.

Faults, at fixed fractions of the run: at 40% ``CLIENT KILL TYPE pubsub`` (every listener
loses its connection), at 60% ``kill -9`` of the server and a restart 1 s later (same
port, the append-only file replayed).

Every ``--interval`` seconds each worker reports its operations, latency percentiles (the
time each call took; calls are paced, so this is not a closed-loop maximum), cache hit
rate, errors by type and RSS; the table and a summary (memory growth after warm-up, and
whether every node ends agreeing with Redis on every shared session) are printed at the
end.  Not a test: the figures depend on the machine and its load (printed with them).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
from collections import Counter
from typing import Any

SHARED = 1000  # sessions all workers read and write
OWN = 200  # sessions per worker that it regenerates and deletes
WARMUP_FRACTION = 0.25  # memory is compared from the end of this part of the run
PUBSUB_KILL_AT = 0.4
SERVER_KILL_AT = 0.6
RESTART_AFTER = 1.0


def rss_mb() -> float:
    """This process's resident set size in MB (Linux /proc; else the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def worker(index: int, url: str, channel: str, shared: list[str], args: dict[str, Any], start_at: float, out: Any) -> None:
    """One node: paced mixed load until ``start_at + duration``; a report per interval."""
    from fastsess import ClusterConfig, ClusteredRedisStore

    store = ClusteredRedisStore(url=url, config=ClusterConfig(node_id=f"soak-{index}", channel=channel), prefix="soak:")
    rng = random.Random(index)
    own = []
    for _ in range(OWN):
        s = store.create({"owner": index, "n": 0})
        store.save(s)
        own.append(s.id)
    weights = [1.0 / (i + 1) ** 0.8 for i in range(len(shared))]  # Zipf-like popularity
    cum = []
    total = 0.0
    for w in weights:
        total += w
        cum.append(total)
    import bisect

    def pick() -> str:
        return shared[min(len(shared) - 1, bisect.bisect(cum, rng.random() * total))]

    period = 1.0 / args["rate"]
    end = start_at + args["duration"]
    while time.monotonic() < start_at:
        time.sleep(0.01)
    next_op = time.monotonic()
    bucket_end = start_at + args["interval"]
    lat: dict[str, list[float]] = {"load": [], "save": []}
    ops, errors = Counter(), Counter()
    stats0 = store.cache_stats()
    while True:
        now = time.monotonic()
        if now >= bucket_end or now >= end:
            st = store.cache_stats()
            lookups = (st.hits - stats0.hits) + (st.misses - stats0.misses)
            out.put({
                "worker": index, "t": round(bucket_end - start_at, 1), "ops": dict(ops), "errors": dict(errors),
                "load_p50_us": percentile(lat["load"], 0.5) * 1e6, "load_p99_us": percentile(lat["load"], 0.99) * 1e6,
                "save_p50_us": percentile(lat["save"], 0.5) * 1e6, "save_p99_us": percentile(lat["save"], 0.99) * 1e6,
                "hit_rate": (st.hits - stats0.hits) / lookups if lookups else float("nan"),
                "rss_mb": rss_mb(), "subscribed": bool(store.coordinator and store.coordinator.subscribed),
                "reconnects": store.coordinator.stats.reconnects if store.coordinator else 0,
            })
            stats0, ops, errors = st, Counter(), Counter()
            lat = {"load": [], "save": []}
            bucket_end += args["interval"]
            if now >= end:
                break
        delay = next_op - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        next_op = max(next_op + period, time.monotonic() - 1.0)  # after a stall, do not burst for more than 1 s
        r = rng.random()
        t0 = time.perf_counter()
        try:
            if r < 0.85:
                kind = "load"
                store.load(pick())
            elif r < 0.95:
                kind = "save"
                s = store.load(pick())
                if s is not None:
                    s["n"] = s.get("n", 0) + 1
                    s[f"w{index}"] = rng.random()
                    store.save(s)
            elif r < 0.98:
                kind = "regenerate"
                i = rng.randrange(len(own))
                s = store.load(own[i])
                if s is None:
                    s = store.create({"owner": index, "n": 0})
                    store.save(s)
                else:
                    store.regenerate(s)
                own[i] = s.id
            else:
                kind = "delete"
                i = rng.randrange(len(own))
                store.delete(own[i])
                s = store.create({"owner": index, "n": 0})
                store.save(s)
                own[i] = s.id
            ops[kind] += 1
            if kind in lat:
                lat[kind].append(time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - counted: the faults cause them on purpose
            errors[type(exc).__name__] += 1
    # Convergence: after the run (and a moment for the last invalidations), every node's
    # reads of the shared sessions must equal what Redis holds.
    time.sleep(1.0)
    seen = {}
    for sid in shared:
        try:
            s = store.load(sid)
            seen[sid] = None if s is None else [s.version, s.get("n")]
        except Exception as exc:  # noqa: BLE001
            seen[sid] = f"error {type(exc).__name__}"
    out.put({"worker": index, "final": seen})
    store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load (default 120)")
    parser.add_argument("--quick", action="store_true", help="20 s instead")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1500.0, help="operations per second per worker (default 1500)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds per report line (default 10; 4 with --quick)")
    parser.add_argument("--json", help="write every report line and the summary to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.interval = 20.0, 4.0

    import redis

    from fastsess import RedisStore
    from fastsess.server import RedisServer

    server = RedisServer(extra_args=("--appendonly", "yes", "--appendfsync", "everysec")).start()
    channel = f"soak:{os.getpid()}"
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = []
    try:
        seed = RedisStore(url=server.url, prefix="soak:")
        shared = []
        for i in range(SHARED):
            s = seed.create({"n": 0, "i": i, "pad": "x" * 200})
            seed.save(s)
            shared.append(s.id)
        start_at = time.monotonic() + 3.0  # time for the workers to start and subscribe
        settings = {"duration": args.duration, "rate": args.rate, "interval": args.interval}
        for i in range(args.workers):
            p = ctx.Process(target=worker, args=(i, server.url, channel, shared, settings, start_at, out), daemon=True)
            p.start()
            procs.append(p)
        faults = []
        raw = redis.Redis.from_url(server.url)
        wait_until(start_at + PUBSUB_KILL_AT * args.duration)
        killed = raw.client_kill_filter(_type="pubsub")
        faults.append({"t": round(time.monotonic() - start_at, 1), "fault": f"CLIENT KILL TYPE pubsub ({killed} connections)"})
        raw.close()
        wait_until(start_at + SERVER_KILL_AT * args.duration)
        kill_9(server)
        faults.append({"t": round(time.monotonic() - start_at, 1), "fault": "kill -9 redis-server"})
        time.sleep(RESTART_AFTER)
        server.start()
        faults.append({"t": round(time.monotonic() - start_at, 1), "fault": "redis-server restarted (AOF replayed)"})
        lines, finals = [], {}
        deadline = start_at + args.duration + 60
        while len(finals) < args.workers and time.monotonic() < deadline:
            try:
                msg = out.get(timeout=1.0)
            except Exception:  # noqa: BLE001 - queue.Empty
                if not any(p.is_alive() for p in procs):
                    break
                continue
            if "final" in msg:
                finals[msg["worker"]] = msg["final"]
            else:
                lines.append(msg)
        truth = {}
        for sid in shared:
            s = seed.load(sid)
            truth[sid] = None if s is None else [s.version, s.get("n")]
        seed.close()
        summary = summarize(lines, finals, truth, args)
        print_report(lines, faults, summary, args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"lines": lines, "faults": faults, "summary": summary, "load": os.getloadavg(), "settings": vars(args)}, f, indent=1)
        return 0 if summary["converged"] else 1
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
        server.close()


def kill_9(server: Any) -> None:
    """SIGKILL the server process, as a crash would; ``server.start()`` brings it back."""
    import signal

    os.kill(server.pid, signal.SIGKILL)
    while server.running:  # polls, and so reaps, the process
        time.sleep(0.002)
    server.stop()  # forgets the dead process


def wait_until(t: float) -> None:
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(0.1, left))


def summarize(lines: list[dict[str, Any]], finals: dict[int, Any], truth: dict[str, Any], args: Any) -> dict[str, Any]:
    per: dict[int, dict[str, Any]] = {}
    warm = args.duration * WARMUP_FRACTION
    for w in sorted({line["worker"] for line in lines}):
        mine = [line for line in lines if line["worker"] == w]
        ops = sum(sum(line["ops"].values()) for line in mine)
        errs: Counter[str] = Counter()
        for line in mine:
            errs.update(line["errors"])
        after_warm = [line["rss_mb"] for line in mine if line["t"] > warm]
        per[w] = {
            "ops_per_s": ops / args.duration,
            "errors": dict(errs),
            "load_p50_us": statistics.median(line["load_p50_us"] for line in mine),
            "load_p99_us_worst_interval": max(line["load_p99_us"] for line in mine),
            "save_p50_us": statistics.median(line["save_p50_us"] for line in mine if line["save_p50_us"] == line["save_p50_us"]),
            "hit_rate_median": statistics.median(line["hit_rate"] for line in mine if line["hit_rate"] == line["hit_rate"]),
            "rss_after_warmup_mb": after_warm[0] if after_warm else float("nan"),
            "rss_end_mb": mine[-1]["rss_mb"],
            "reconnects": mine[-1]["reconnects"],
        }
        per[w]["rss_growth_mb"] = per[w]["rss_end_mb"] - per[w]["rss_after_warmup_mb"]
    disagree = {w: sum(1 for sid, v in final.items() if v != truth.get(sid)) for w, final in finals.items()}
    return {
        "per_worker": per,
        "disagreeing_reads_at_end": disagree,
        "converged": len(finals) == args.workers and not any(disagree.values()),
        "memory_flat": all(abs(p["rss_growth_mb"]) <= max(5.0, 0.05 * p["rss_after_warmup_mb"]) for p in per.values()),
    }


def print_report(lines: list[dict[str, Any]], faults: list[dict[str, Any]], summary: dict[str, Any], args: Any) -> None:
    print(f"soak: {args.workers} processes x {args.rate:g} ops/s for {args.duration:g} s; load average {os.getloadavg()}; "
          f"{os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
    for fault in faults:
        print(f"  fault at {fault['t']:>6} s: {fault['fault']}")
    print(f"{'t (s)':>6} {'proc':>4} {'ops/s':>7} {'load p50/p99 us':>17} {'save p50/p99 us':>17} {'hit':>5} {'errors':>24} {'RSS MB':>7} sub")
    for line in sorted(lines, key=lambda x: (x["t"], x["worker"])):
        n = sum(line["ops"].values()) / args.interval
        errs = ",".join(f"{k}:{v}" for k, v in sorted(line["errors"].items())) or "-"
        print(f"{line['t']:>6} {line['worker']:>4} {n:>7.0f} {line['load_p50_us']:>8.0f}/{line['load_p99_us']:<8.0f} "
              f"{line['save_p50_us']:>8.0f}/{line['save_p99_us']:<8.0f} {line['hit_rate']:>5.2f} {errs:>24} {line['rss_mb']:>7.1f} {'y' if line['subscribed'] else 'n'}")
    print("summary per process:")
    for w, p in summary["per_worker"].items():
        print(f"  {w}: {p['ops_per_s']:.0f} ops/s, load p50 {p['load_p50_us']:.0f} us (worst interval p99 {p['load_p99_us_worst_interval']:.0f} us), "
              f"save p50 {p['save_p50_us']:.0f} us, hit rate {p['hit_rate_median']:.2f}, errors {p['errors'] or 'none'}, "
              f"reconnects {p['reconnects']}, RSS {p['rss_after_warmup_mb']:.1f} -> {p['rss_end_mb']:.1f} MB after warm-up")
    print(f"memory flat after warm-up: {summary['memory_flat']}; every node agrees with Redis at the end: {summary['converged']} "
          f"(disagreeing reads per process: {summary['disagreeing_reads_at_end']})")


if __name__ == "__main__":
    sys.exit(main())
