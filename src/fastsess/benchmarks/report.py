"""One ``fastsess bench`` run end to end: Redis to measure against, every section, the text report.

``run_bench`` returns a JSON-ready report::

    {"version", "implementation", "quick", "redis": {"source", "version"},
     "cache": {...}, "stores": {...}, "cluster": {...}, "checks": {...}}

``format_report`` renders it as the table the CLI prints; ``plot.write_plot``
draws it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from .. import __version__
from ..errors import StoreUnavailable

QUICK = {"sizes": (1_000, 100_000), "probes": 30_000, "repeat": 3, "store_ops": 1_200, "latency_samples": 300, "sessions": 10_000, "ops": 100_000}
FULL = {"sizes": (1_000, 100_000, 1_000_000), "probes": 100_000, "repeat": 5, "store_ops": 4_000, "latency_samples": 1_000, "sessions": 10_000, "ops": 100_000}


@contextlib.contextmanager
def redis_for_bench(url: str | None) -> Iterator[dict[str, str]]:
    """``{"url", "source"}`` of the Redis to measure: ``url`` if given, else a private server.

    Raises:
        StoreUnavailable: ``url`` does not answer.
        ConfigError: no URL and no redis-server binary to start.
    """
    import redis

    from ..server import RedisServer

    if url:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            info = client.info("server")
        except (redis.RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis at REDIS_URL/--url is not reachable: {exc}", exc) from exc
        finally:
            client.close()
        yield {"url": url, "source": "REDIS_URL", "version": str(info.get("redis_version", "?"))}
        return
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        version = str(client.info("server").get("redis_version", "?"))
        client.close()
        yield {"url": server.url, "source": f"private server started by fastsess ({server.binary}, port {server.port})", "version": version}


def steps(plan: dict[str, Any], cache_only: bool, n_candidates: int) -> int:
    """How many progress ticks ``run_bench`` will report (for the progress bar)."""
    total = len(plan["sizes"]) * n_candidates
    if not cache_only:
        total += 4 * 24 + plan["latency_samples"] // 100 + 2 * plan["ops"] // 20_000
    return total


def run_bench(
    plan: dict[str, Any], *, url: str | None, cache_only: bool, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run every section of the benchmark described by ``plan`` (``QUICK``/``FULL`` shape).

    Raises:
        StoreUnavailable: the Redis given by ``url`` is unreachable.
        ConfigError: no Redis to measure against.
    """
    from ..cache import IMPLEMENTATION
    from .cache import run_cache_benchmarks

    report: dict[str, Any] = {"version": __version__, "implementation": IMPLEMENTATION}
    report["cache"] = run_cache_benchmarks(plan["sizes"], probes=plan["probes"], repeat=plan["repeat"], progress=progress)
    checks = dict(report["cache"]["checks"])
    if not cache_only:
        from .cluster import measure_invalidation_latency, measure_read_load
        from .stores import run_store_benchmarks

        with redis_for_bench(url) as target:
            report["redis"] = {"source": target["source"], "version": target["version"]}
            report["stores"] = run_store_benchmarks(target["url"], ops=plan["store_ops"], progress=progress)
            latency = measure_invalidation_latency(target["url"], plan["latency_samples"], progress=progress)
            load = measure_read_load(target["url"], plan["sessions"], plan["ops"], progress=progress)
        report["cluster"] = {"invalidation": latency, "read_load": load}
        checks.update(report["stores"]["checks"])
        checks.update(cluster_checks(report["cluster"]))
    report["checks"] = checks
    return report


def cluster_checks(cluster: dict[str, Any]) -> dict[str, Any]:
    """DESIGN.md section 5 targets for invalidation latency and read offload."""
    inv, load = cluster["invalidation"], cluster["read_load"]
    one = load["nodes_1"]["served_locally"]
    return {
        "invalidation p50 (2 processes)": {"value": f"{inv['p50_ms']:.3f} ms", "target": "< 1 ms", "ok": inv["p50_ms"] < 1.0},
        "invalidation p99 (2 processes)": {"value": f"{inv['p99_ms']:.3f} ms", "target": "< 5 ms", "ok": inv["p99_ms"] < 5.0},
        "reads served locally (1 node, 90% reads, Zipf)": {"value": f"{one:.1%}", "target": ">= 85%", "ok": one >= 0.85},
    }


def format_cache(cache: dict[str, Any]) -> list[str]:
    """Cache section: ns per operation per size, with the ratio to ``dict.get``."""
    lines = []
    for size in cache["sizes"]:
        rows = [r for r in cache["rows"] if r["size"] == size]
        floor = next((r["hit"] for r in rows if r["candidate"] == "dict"), None)
        lines.append(f"\nCache, {size:,} entries (ns per operation, loop overhead removed)")
        lines.append(f"  {'cache':<28}{'hit':>9}{'x dict':>8}{'miss':>9}{'set+evict':>11}{'90/10 mix':>11}")
        for r in rows:
            ratio = f"{r['hit'] / floor:7.2f}x" if floor else "      -"
            lines.append(f"  {r['candidate']:<28}{r['hit']:>9.1f}{ratio:>8}{r['miss']:>9.1f}{r['set_evict']:>11.1f}{r['mixed']:>11.1f}")
    threads = cache["threads"]
    lines.append(
        f"\nLocalCache.get, {threads['ops']:,} hits: 1 thread {threads['one_thread_s'] * 1e3:.1f} ms, "
        f"2 threads {threads['two_threads_s'] * 1e3:.1f} ms (ratio {threads['ratio']:.2f})"
    )
    return lines


def format_stores(stores: dict[str, Any], redis_info: dict[str, Any]) -> list[str]:
    """Store section: p50/p99 per candidate operation, with the ratio to raw redis-py."""
    rows = stores["rows"]
    floors = {"load": "redis-py GET + msgpack", "save": "redis-py SET EX + msgpack"}
    async_floors = {"load": "redis.asyncio GET + msgpack", "save": "redis.asyncio SET EX + msgpack"}
    p50 = {(r["candidate"], r["op"]): r["p50_us"] for r in rows}
    lines = [f"\nSession stores against Redis {redis_info['version']} ({redis_info['source']}), microseconds"]
    lines.append(f"  {'store':<38}{'operation':<17}{'p50':>9}{'p99':>9}{'x raw':>8}")
    for r in rows:
        kind = "save" if r["op"].startswith("save") else "load"
        floor_name = (async_floors if "asyncio" in r["candidate"] or r["candidate"].startswith("starsessions") else floors)[kind]
        floor = p50.get((floor_name, kind))
        ratio = f"{r['p50_us'] / floor:7.2f}x" if floor else "      -"
        lines.append(f"  {r['candidate']:<38}{r['op']:<17}{r['p50_us']:>9.2f}{r['p99_us']:>9.2f}{ratio:>8}")
    for name, why in stores.get("skipped", {}).items():
        lines.append(f"  ({name}: {why})")
    return lines


def format_cluster(cluster: dict[str, Any]) -> list[str]:
    """Cluster section: invalidation latency and Redis read load."""
    inv, load = cluster["invalidation"], cluster["read_load"]
    lines = [
        f"\nInvalidation between two processes ({inv['samples']} saves): "
        f"p50 {inv['p50_ms']:.3f} ms, p99 {inv['p99_ms']:.3f} ms, max {inv['max_ms']:.3f} ms",
        f"\nRedis read load, {load['ops']:,} requests over {load['sessions']:,} sessions "
        f"({load['read_fraction']:.0%} reads, Zipf; every request loads its session)",
        f"  {'setup':<34}{'GETs per 1,000 reads':>22}{'served locally':>16}",
        f"  {'RedisStore (no local cache)':<34}{load['without_cache_per_1000']:>22.0f}{0:>16.1%}",
    ]
    for n in (1, 2):
        row = load[f"nodes_{n}"]
        label = f"ClusteredRedisStore, {n} node{'s' if n > 1 else ''}"
        lines.append(f"  {label:<34}{row['redis_gets_per_1000']:>22.1f}{row['served_locally']:>16.1%}")
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The whole report as plain text, ending with the target checks."""
    lines = format_cache(report["cache"])
    if "stores" in report:
        lines += format_stores(report["stores"], report["redis"])
        lines += format_cluster(report["cluster"])
    lines.append("\nTargets (DESIGN.md section 5):")
    for name, check in report["checks"].items():
        mark = "ok  " if check["ok"] else "MISS"
        lines.append(f"  [{mark}] {name}: {check['value']} (target {check['target']})")
    return "\n".join(lines)


def plot_panels(report: dict[str, Any]) -> dict[str, Any]:
    """Bar-chart panels for ``plot.write_plot`` beyond the cache panel."""
    panels: dict[str, Any] = {}
    if "stores" in report:
        rows = report["stores"]["rows"]
        panels["stores"] = {
            "title": "Session load / save, p50 (log scale, lower is better)",
            "labels": [f"{r['candidate']} · {r['op']}" for r in rows],
            "values": [r["p50_us"] for r in rows],
            "xlabel": "microseconds",
            "log": True,
        }
        load = report["cluster"]["read_load"]
        panels["read_load"] = {
            "title": "GETs reaching Redis per 1,000 reads (lower is better)",
            "labels": ["no local cache", "ClusteredRedisStore, 1 node", "ClusteredRedisStore, 2 nodes"],
            "values": [load["without_cache_per_1000"], load["nodes_1"]["redis_gets_per_1000"], load["nodes_2"]["redis_gets_per_1000"]],
            "xlabel": "GETs per 1,000 reads",
            "log": False,
        }
    return panels
