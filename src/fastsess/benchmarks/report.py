"""One ``fastsess bench`` run end to end: checks first, Redis to measure against, every section, the text report.

``run_bench`` returns a JSON-ready report::

    {"environment": {"date", "mode", "python", "fastsess", "redis_py",
                     "redis_server", "cpu_count", ...},
     "version", "implementation", "quick",
     "redis": {"source", "version", "private"},
     "cache": {...}, "stores": {...}, "cluster": {...}, "checks": {...}}

with every measured figure a number.  ``preflight`` checks, before anything is
measured, that the Redis to measure against exists and that the output files
can be written.  ``format_report`` renders the report as the text the CLI
prints; ``plot.write_plot`` draws it.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import ConfigError, StoreUnavailable
from .checks import check, fmt, format_check

QUICK = {
    "sizes": (1_000, 100_000), "rounds": 30, "thread_hits": 1_000_000, "thread_runs": 5,
    "store_ops": 1_200, "latency_samples": 300, "sessions": 3_000, "ops": 30_000,
}
FULL = {
    "sizes": (1_000, 100_000, 1_000_000), "rounds": 100, "thread_hits": 2_000_000, "thread_runs": 7,
    "store_ops": 4_000, "latency_samples": 1_000, "sessions": 10_000, "ops": 100_000,
}
LIBRARIES = ("redis", "hiredis", "msgpack", "cachebox", "cachetools", "lru-dict", "Flask-Session", "starsessions", "Django", "django-redis")


def check_writable(path: Path) -> None:
    """Make sure ``path`` can be written later, without creating or changing it.

    Raises:
        ConfigError: ``path`` is a directory, its directory does not exist, or it cannot be written.
    """
    if path.is_dir():
        raise ConfigError(f"cannot write {path}: it is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"cannot write {path}: directory {parent} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".fastsess-bench-"):
            pass
        if path.exists():
            with open(path, "r+b"):
                pass
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc


def check_redis(url: str | None) -> None:
    """Make sure there is a Redis to measure against: ``url`` answers PING, or a server binary exists.

    Raises:
        StoreUnavailable: ``url`` does not answer.
        ConfigError: no ``url`` and no redis-server (or valkey-server) to start.
    """
    if url:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            client.ping()
        except (redis.RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis at REDIS_URL/--url is not reachable: {exc}", exc) from exc
        finally:
            client.close()
        return
    from ..server import find_server_binary

    try:
        find_server_binary()
    except ConfigError as exc:
        raise ConfigError(f"{exc} (or set REDIS_URL, or use --cache-only)") from exc


def preflight(url: str | None, cache_only: bool, outputs: Sequence[Path | None] = ()) -> None:
    """Everything that can fail after minutes of measuring, checked before the first measurement.

    Raises:
        ConfigError: an output path cannot be written, or there is no Redis server to start.
        StoreUnavailable: the Redis at ``url`` does not answer.
    """
    for path in outputs:
        if path is not None:
            check_writable(path)
    if not cache_only:
        check_redis(url)


def environment(mode: str) -> dict[str, Any]:
    """Versions, CPU count, date and mode of this run (``redis_server`` is filled in once known)."""
    import redis

    from ..cache import IMPLEMENTATION

    libraries: dict[str, str] = {}
    for name in LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            libraries[name] = importlib.metadata.version(name)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": mode,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "fastsess": __version__,
        "cache_implementation": IMPLEMENTATION,
        "redis_py": redis.__version__,
        "redis_server": None,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "libraries": libraries,
    }


@contextlib.contextmanager
def redis_for_bench(url: str | None) -> Iterator[dict[str, Any]]:
    """``{"url", "source", "version", "private"}`` of the Redis to measure: ``url`` if given, else a private server.

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
        yield {"url": url, "source": "REDIS_URL", "version": str(info.get("redis_version", "?")), "private": False}
        return
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        version = str(client.info("server").get("redis_version", "?"))
        client.close()
        yield {
            "url": server.url,
            "source": f"private server started by fastsess ({server.binary}, port {server.port})",
            "version": version,
            "private": True,
        }


def steps(plan: dict[str, Any], cache_only: bool, n_candidates: int) -> int:
    """How many progress ticks ``run_bench`` will report (for the progress bar)."""
    total = len(plan["sizes"]) * n_candidates + 3  # + threads (2) + memory (1)
    if not cache_only:
        total += 4 * 24 + plan["latency_samples"] // 100 + 3 * (plan["ops"] // 20_000)
    return total


def run_bench(
    plan: dict[str, Any], *, url: str | None, cache_only: bool, mode: str = "full", progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run every section of the benchmark described by ``plan`` (``QUICK``/``FULL`` shape).

    Call ``preflight`` first: this function starts measuring straight away.

    Raises:
        StoreUnavailable: the Redis given by ``url`` is unreachable.
        ConfigError: no Redis to measure against.
    """
    from ..cache import IMPLEMENTATION
    from .cache import run_cache_benchmarks

    report: dict[str, Any] = {"environment": environment(mode), "version": __version__, "implementation": IMPLEMENTATION, "quick": mode == "quick"}
    report["plan"] = {k: list(v) if isinstance(v, tuple) else v for k, v in plan.items()}
    report["cache"] = run_cache_benchmarks(
        plan["sizes"], rounds=plan["rounds"], thread_hits=plan["thread_hits"], thread_runs=plan["thread_runs"], progress=progress
    )
    checks = dict(report["cache"]["checks"])
    if not cache_only:
        from .cluster import measure_invalidation_latency, measure_read_load
        from .stores import run_store_benchmarks

        with redis_for_bench(url) as target:
            report["redis"] = {"source": target["source"], "version": target["version"], "private": target["private"]}
            report["environment"]["redis_server"] = target["version"]
            report["stores"] = run_store_benchmarks(target["url"], ops=plan["store_ops"], progress=progress)
            latency = measure_invalidation_latency(target["url"], plan["latency_samples"], progress=progress)
            load = measure_read_load(target["url"], plan["sessions"], plan["ops"], progress=progress, private_server=target["private"])
        report["cluster"] = {"invalidation": latency, "read_load": load}
        checks.update(report["stores"]["checks"])
        checks.update(cluster_checks(report["cluster"]))
    report["checks"] = checks
    return report


def cluster_checks(cluster: dict[str, Any]) -> dict[str, Any]:
    """The project's targets for invalidation latency and read offload."""
    inv, load = cluster["invalidation"], cluster["read_load"]
    one = load["nodes_1"]["served_locally"]
    checks = {
        "invalidation between 2 processes, p50": check(inv["p50_ms"], "<", 1.0, "ms"),
        "invalidation between 2 processes, p99": check(inv["p99_ms"], "<", 5.0, "ms"),
        "reads served locally (1 node, 90% reads, Zipf; GETs counted on the server)": check(one, ">=", 0.85, "%"),
    }
    if "nodes_2_warm" in load:
        two = load["nodes_2_warm"]["served_locally"]
        checks["reads served locally (2 nodes alternately, update mode + warm_peers; GETs counted on the server)"] = check(
            two, ">=", 0.88, "%",
        )
    return checks


def _num(value: float | None) -> str:
    """A bare ns figure in a table cell (the ``fmt`` ns rules without the unit)."""
    return "-" if value is None else fmt(value, "ns").removesuffix(" ns")


def format_cache(cache: dict[str, Any]) -> list[str]:
    """Cache section: median ns per operation per size, with ratios to ``dict[k]`` / ``dict.get`` (same access)."""
    from .cache import median

    lines = []
    overhead = {o["size"]: o["median"] for o in cache.get("loop_overhead", [])}
    for size in cache["sizes"]:
        rows = [r for r in cache["rows"] if r["size"] == size]
        floor = next((r for r in rows if r["candidate"] == "dict"), None)
        sub_floor, get_floor = median(floor, "hit_subscript"), median(floor, "hit_get")
        loop = overhead.get(size)
        lines.append(
            f"\nCache, {size:,} entries: ns per operation, median of {cache['rounds']} rounds of {cache['batch']:,} "
            f"(loop included; the empty loop costs {_num(loop)} ns)"
        )
        lines.append(
            f"  {'cache':<28}{'c[k]':>8}{'/dict[k]':>10}{'c.get(k)':>10}{'/dict.get':>10}"
            f"{'miss':>8}{'set+evict':>11}{'90/10 mix':>11}{'mix hits':>10}"
        )
        for r in rows:
            sub, get = median(r, "hit_subscript"), median(r, "hit_get")
            sub_ratio = fmt(sub / sub_floor, "x") if sub is not None and sub_floor else "-"
            get_ratio = fmt(get / get_floor, "x") if get is not None and get_floor else "-"
            lines.append(
                f"  {r['candidate']:<28}{_num(sub):>8}{sub_ratio:>10}{_num(get):>10}{get_ratio:>10}"
                f"{_num(median(r, 'miss')):>8}{_num(median(r, 'set_evict')):>11}{_num(median(r, 'mixed')):>11}"
                f"{fmt(r['mixed_read_hit_rate'], '%'):>10}"
            )
    for t in cache["threads"]:
        r = t["ratio"]
        lines.append(
            f"\n{t['candidate']} get, the same {t['hits']:,} hits by 1 thread and by 2 ({t['runs']} alternating runs): "
            f"1 thread {t['one_thread_s']['median'] * 1e3:.0f} ms, 2 threads {t['two_threads_s']['median'] * 1e3:.0f} ms (medians); "
            f"2/1 ratio median {fmt(r['median'], 'x')}, IQR {fmt(r['q1'], 'x')}-{fmt(r['q3'], 'x')}, "
            f"range {fmt(r['min'], 'x')}-{fmt(r['max'], 'x')}"
        )
    memory = cache.get("memory") or {}
    if memory.get("rows"):
        lines.append(f"\nMemory per cached entry beyond key and value, {memory['entries']:,} entries (fresh process each)")
        lines.append(f"  {'cache':<28}{'RSS growth':>12}{'tracemalloc':>13}")
        for m in memory["rows"]:
            rss, traced = m.get("rss_bytes_per_entry"), m.get("traced_bytes_per_entry")
            lines.append(
                f"  {m['candidate']:<28}{'-' if rss is None else f'{rss:.0f} B':>12}{'-' if traced is None else f'{traced:.0f} B':>13}"
                + (f"  ({m['error']})" if "error" in m else "")
            )
    elif memory.get("skipped"):
        lines.append(f"  (memory per entry skipped: {memory['skipped']})")
    for name, why in cache.get("skipped", {}).items():
        lines.append(f"  (skipped {name}: {why})")
    return lines


def format_stores(stores: dict[str, Any], redis_info: dict[str, Any]) -> list[str]:
    """Store section: p50/p99 per candidate operation, with the ratio to raw redis-py."""
    rows = stores["rows"]
    floors = {"load": "redis-py GET + msgpack", "save": "redis-py SET EX + msgpack"}
    async_floors = {"load": "redis.asyncio GET + msgpack", "save": "redis.asyncio SET EX + msgpack"}
    p50 = {(r["candidate"], r["op"]): r["p50_us"] for r in rows}
    lines = [f"\nSession stores against Redis {redis_info['version']} ({redis_info['source']}), microseconds"]
    lines.append(f"  {'store':<38}{'operation':<17}{'p50':>10}{'p99':>10}{'/ raw':>9}")
    for r in rows:
        kind = "save" if r["op"].startswith("save") else "load"
        floor_name = (async_floors if "asyncio" in r["candidate"] or r["candidate"].startswith("starsessions") else floors)[kind]
        floor = p50.get((floor_name, kind))
        ratio = fmt(r["p50_us"] / floor, "x") if floor else "-"
        lines.append(f"  {r['candidate']:<38}{r['op']:<17}{r['p50_us']:>10,.2f}{r['p99_us']:>10,.2f}{ratio:>9}")
    for name, why in stores.get("skipped", {}).items():
        lines.append(f"  (skipped {name}: {why})")
    return lines


def format_cluster(cluster: dict[str, Any]) -> list[str]:
    """Cluster section: invalidation latency and Redis read load (GETs counted on the server)."""
    inv, load = cluster["invalidation"], cluster["read_load"]
    where = (
        "a private server: only this benchmark's commands"
        if load.get("private_server")
        else "the REDIS_URL server: GETs other clients sent during the run are counted too"
    )
    lines = [
        f"\nInvalidation between two processes ({inv['samples']} saves): "
        f"p50 {fmt(inv['p50_ms'], 'ms')}, p99 {fmt(inv['p99_ms'], 'ms')}, max {fmt(inv['max_ms'], 'ms')}",
        f"\nRedis read load, {load['ops']:,} requests over {load['sessions']:,} sessions "
        f"({load['read_fraction']:.0%} reads, Zipf; every request loads its session)",
        f"  GETs counted on the server (INFO commandstats), on {where}",
        f"  {'setup':<34}{'GETs':>9}{'per 1,000 reads':>17}{'served locally':>16}",
    ]
    labels = {
        "without_cache": "RedisStore (no local cache)", "nodes_1": "ClusteredRedisStore, 1 node", "nodes_2": "ClusteredRedisStore, 2 nodes",
        "nodes_2_update": "2 nodes, update mode", "nodes_2_warm": "2 nodes, update mode + warm_peers",
    }
    for key, label in labels.items():
        if key not in load:
            continue
        row = load[key]
        lines.append(f"  {label:<34}{row['redis_gets']:>9,}{row['redis_gets_per_1000']:>17.1f}{fmt(row['served_locally'], '%'):>16}")
    if "first_reads" in load.get("nodes_2", {}):
        floor = load["nodes_2"]["first_reads"]
        lines.append(
            f"  (2 nodes caching only what they read: each node's first reads alone are {floor:,} GETs, "
            f"at most {fmt(1 - floor / load['ops'], '%')} served locally; warm_peers shares first reads)",
        )
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The whole report as plain text: environment, sections, then the target checks."""
    env = report.get("environment", {})
    lines = [
        f"fastsess {env.get('fastsess', report.get('version', '?'))} ({report.get('implementation', '?')} cache core), "
        f"Python {env.get('python', '?')}, redis-py {env.get('redis_py', '?')}, {env.get('cpu_count', '?')} CPUs, "
        f"{env.get('date', '?')}, {env.get('mode', '?')} run"
    ]
    lines += format_cache(report["cache"])
    if "stores" in report:
        lines += format_stores(report["stores"], report["redis"])
        lines += format_cluster(report["cluster"])
    lines.append("\nTargets:")
    for name, c in report["checks"].items():
        lines.append(format_check(name, c))
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
        names = {
            "without_cache": "no local cache", "nodes_1": "ClusteredRedisStore, 1 node",
            "nodes_2": "ClusteredRedisStore, 2 nodes", "nodes_2_update": "2 nodes, update mode",
            "nodes_2_warm": "2 nodes, update mode + warm_peers",
        }
        keys = [k for k in names if k in load]
        panels["read_load"] = {
            "title": "GETs reaching Redis per 1,000 reads, counted by the server (lower is better)",
            "labels": [names[k] for k in keys],
            "values": [load[k]["redis_gets_per_1000"] for k in keys],
            "xlabel": "GETs per 1,000 reads",
            "log": False,
        }
    return panels
