"""Markdown tables (as in bench/README.md) from a ``fastsess bench --json`` file or a ``pytest bench/ --benchmark-json`` file.

    fastsess bench --json results.json && python bench/report.py results.json > results.md
    pytest bench/ --benchmark-json=bench.json && python bench/report.py bench.json
    python bench/report.py --readme results.json     # the tables of the README's Performance section

Both files hold the output of the same functions (``fastsess.benchmarks``):
the pytest-benchmark file keeps each function's result in ``extra_info``.
Several pytest-benchmark files are merged.  Every cache figure is the median
ns per operation over the rounds, loop included, with the interquartile range
(IQR: the middle half of the rounds) beside it; the targets are evaluated by
the same code as ``fastsess bench`` (``cache_checks``, ``store_checks``,
``cluster_checks``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

from fastsess.benchmarks.cache import cache_checks, median, row
from fastsess.benchmarks.checks import fmt
from fastsess.benchmarks.report import cluster_checks

WORKLOADS = (
    ("hit_subscript", "hit, `c[k]`"),
    ("hit_get", "hit, `c.get(k)`"),
    ("miss", "miss, `c.get(k)` of a never-stored key"),
    ("mixed", "90/10 mix (`get` / overwrite; the same hits for every candidate)"),
    ("set_evict", "set of a never-seen key into the full cache (evicts one; `dict` grows)"),
)


def from_pytest_benchmark(files: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``fastsess bench`` report shape, rebuilt from the ``extra_info`` of pytest-benchmark files."""
    report: dict[str, Any] = {"cache": {"rows": [], "loop_overhead": [], "threads": [], "skipped": {}}}
    for data in files:
        for bench in data.get("benchmarks", []):
            info = bench.get("extra_info", {})
            section, result = info.get("section"), info.get("result")
            if result is None:
                continue
            report.setdefault("environment", info.get("environment", {}))
            if section == "cache":
                report["cache"]["rows"].append(result)
            elif section in ("loop_overhead", "threads"):
                report["cache"][section].append(result)
            elif section == "stores":
                report["stores"] = result
            elif section in ("invalidation", "read_load"):
                report.setdefault("cluster", {})[section] = result
    cache = report["cache"]
    cache["sizes"] = sorted({r["size"] for r in cache["rows"]})
    checks = cache_checks(cache["rows"], cache["threads"]) if cache["rows"] else {}
    if "stores" in report:
        checks.update(report["stores"]["checks"])
    if len(report.get("cluster", {})) == 2:
        checks.update(cluster_checks(report["cluster"]))
    report["checks"] = checks
    return report


def num(value: float | None) -> str:
    """A bare ns figure (``fmt``'s rules without the unit)."""
    return "-" if value is None else fmt(value, "ns").removesuffix(" ns")


def table(header: list[str], rows: Iterable[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def describe(env: dict[str, Any]) -> str:
    """One sentence: when, what, with which versions."""
    libs = ", ".join(f"{k} {v}" for k, v in env.get("libraries", {}).items())
    return (
        f"Run: {env.get('date', '?')}, {env.get('mode', '?')}; fastsess {env.get('fastsess', '?')} "
        f"({env.get('cache_implementation', '?')} cache core), {env.get('python_implementation', 'Python')} {env.get('python', '?')}, "
        f"redis-py {env.get('redis_py', '?')}, Redis server {env.get('redis_server') or '-'}, {env.get('cpu_count', '?')} CPUs, "
        f"{env.get('platform', '?')}. Libraries: {libs}.\n"
    )


def cache_tables(cache: dict[str, Any]) -> str:
    """One table per workload: median ns per operation (IQR) per size."""
    sizes = cache["sizes"]
    names = list(dict.fromkeys(r["candidate"] for r in cache["rows"]))
    out = []
    for field, title in WORKLOADS:
        body = []
        for name in names:
            cells = []
            for size in sizes:
                r = row(cache["rows"], name, size)
                s = None if r is None else r.get(field)
                cells.append("-" if s is None else f"{num(s['median'])} ({num(s['q1'])}-{num(s['q3'])})")
            if any(cell != "-" for cell in cells):
                body.append([name, *cells])
        if field == "hit_get" and cache.get("loop_overhead"):
            loop = {o["size"]: o for o in cache["loop_overhead"]}
            cells = [f"{num(loop[s]['median'])} ({num(loop[s]['q1'])}-{num(loop[s]['q3'])})" if s in loop else "-" for s in sizes]
            body.append(["empty loop (same keys)", *cells])
        header = ["candidate", *[f"{s:,}" for s in sizes]]
        out.append(f"**{title}**: ns per operation, median (IQR) of the rounds, loop included\n\n" + table(header, body))
    rates = {round(r["mixed_read_hit_rate"], 4) for r in cache["rows"]}
    out.append(f"Reads that hit in the 90/10 mix: {', '.join(fmt(x, '%') for x in sorted(rates))} for every candidate.\n")
    return "\n".join(out)


def ratio_table(cache: dict[str, Any]) -> str:
    """fastsess hits against ``dict`` in the same access style, at every size."""
    rows = cache["rows"]
    sizes = cache["sizes"]
    body = []
    for impl in ("c", "py"):
        pairs = (
            (f"fastsess LocalCache ({impl})", "hit_get", "dict.get"),
            (f"fastsess TTLCache ({impl})", "hit_subscript", "dict[k]"),
            (f"fastsess TTLCache ({impl})", "hit_get", "dict.get"),
        )
        for name, field, floor_label in pairs:
            cells = []
            for size in sizes:
                a, b = median(row(rows, name, size), field), median(row(rows, "dict", size), field)
                cells.append(fmt(a / b, "x") if a and b else "-")
            if any(c != "-" for c in cells):
                access = ".get" if field == "hit_get" else "[k]"
                body.append([f"{name}{access} / {floor_label}", *cells])
    return "**hit, fastsess / dict in the same access style** (medians, loop included)\n\n" + table(["ratio", *[f"{s:,}" for s in sizes]], body)


def threads_table(cache: dict[str, Any]) -> str:
    """1 thread vs 2 threads doing the same hits."""
    body = []
    for t in cache["threads"]:
        r = t["ratio"]
        body.append([
            f"{t['candidate']} `get`", f"{t['hits']:,}", str(t["runs"]),
            f"{t['one_thread_s']['median'] * 1e3:.0f}", f"{t['two_threads_s']['median'] * 1e3:.0f}",
            fmt(r["median"], "x"), f"{fmt(r['q1'], 'x')}-{fmt(r['q3'], 'x')}", f"{fmt(r['min'], 'x')}-{fmt(r['max'], 'x')}",
        ])
    header = ["candidate", "hits per run", "runs", "1 thread, ms", "2 threads, ms", "2/1 median", "2/1 IQR", "2/1 range"]
    return "**1 thread vs 2 threads, the same hits** (runs alternate the order; medians)\n\n" + table(header, body)


def stores_table(stores: dict[str, Any]) -> str:
    """p50/p99 per candidate operation, ratio to the raw client of the same kind."""
    p50 = {(r["candidate"], r["op"]): r["p50_us"] for r in stores["rows"]}
    body = []
    for r in stores["rows"]:
        kind = "save" if r["op"].startswith("save") else "load"
        is_async = "asyncio" in r["candidate"] or r["candidate"].startswith("starsessions")
        floor = p50.get((f"redis{'.asyncio' if is_async else '-py'} {'GET' if kind == 'load' else 'SET EX'} + msgpack", kind))
        body.append([r["candidate"], r["op"], f"{r['p50_us']:,.2f}", f"{r['p99_us']:,.2f}", fmt(r["p50_us"] / floor, "x") if floor else "-"])
    skipped = "".join(f"\nSkipped: {name} ({why})." for name, why in stores.get("skipped", {}).items())
    title = "**session stores** (microseconds; ratio of p50s to the raw client, sync or asyncio)\n\n"
    return title + table(["candidate", "operation", "p50", "p99", "/ raw"], body) + skipped


def cluster_text(cluster: dict[str, Any]) -> str:
    """Invalidation latency and the server-counted read load."""
    out = []
    inv = cluster.get("invalidation")
    if inv:
        out.append(
            f"**Invalidation between two processes** ({inv['samples']:,} saves): "
            f"p50 {fmt(inv['p50_ms'], 'ms')}, p99 {fmt(inv['p99_ms'], 'ms')}, max {fmt(inv['max_ms'], 'ms')}.\n"
        )
    load = cluster.get("read_load")
    if load:
        where = "a private server" if load.get("private_server") else "the REDIS_URL server (other clients' GETs included)"
        labels = {
            "without_cache": "RedisStore, no local cache", "nodes_1": "ClusteredRedisStore, 1 node",
            "nodes_2": "ClusteredRedisStore, 2 nodes", "nodes_2_update": "ClusteredRedisStore, 2 nodes, update mode",
            "nodes_2_warm": "ClusteredRedisStore, 2 nodes, update mode + warm_peers",
        }
        body = [
            [label, f"{load[key]['redis_gets']:,}", f"{load[key]['redis_gets_per_1000']:.1f}", fmt(load[key]["served_locally"], "%")]
            for key, label in labels.items()
            if key in load
        ]
        out.append(
            f"**Redis read load**: {load['ops']:,} requests over {load['sessions']:,} sessions, {load['read_fraction']:.0%} reads, Zipf; "
            f"GETs counted on the server (INFO commandstats) on {where}\n\n" + table(["setup", "GETs", "per 1,000 reads", "served locally"], body)
        )
    return "\n".join(out)


def targets_table(checks: dict[str, Any]) -> str:
    """Every target with its value and verdict."""
    body = []
    for name, c in checks.items():
        band = f" (runs {fmt(c['band'][0], c['unit'])}-{fmt(c['band'][1], c['unit'])})" if c.get("band") else ""
        goal = f"{c['op']} {fmt(c['target'], c['unit'])}"
        body.append([name, goal, fmt(c["value"], c["unit"]) + band, "yes" if c["ok"] else "**no**"])
    return "**targets**\n\n" + table(["target", "goal", "measured", "met"], body)


def render(report: dict[str, Any]) -> str:
    """The whole Markdown report."""
    parts = [describe(report.get("environment", {}))]
    cache = report.get("cache")
    if cache and cache.get("rows"):
        parts += [cache_tables(cache), ratio_table(cache)]
        if cache.get("threads"):
            parts.append(threads_table(cache))
        if cache.get("skipped"):
            parts.append("Skipped: " + "; ".join(f"{k} ({v})" for k, v in cache["skipped"].items()) + ".\n")
    if "stores" in report:
        parts.append(stores_table(report["stores"]))
    if "cluster" in report:
        parts.append(cluster_text(report["cluster"]))
    if report.get("checks"):
        parts.append(targets_table(report["checks"]))
    return "\n".join(parts)


def readme_tables(report: dict[str, Any]) -> str:
    """The tables of the README's Performance section, from one full ``fastsess bench`` report."""
    cache, rows = report["cache"], report["cache"]["rows"]
    small = min(cache["sizes"])
    out = []

    def cell(name: str, field: str, size: int) -> tuple[str, str]:
        r = row(rows, name, size)
        s = None if r is None else r.get(field)
        if s is None:
            return "-", "-"
        floor = median(row(rows, "dict", size), field)
        return f"{num(s['median'])} ({num(s['q1'])}-{num(s['q3'])})", fmt(s["median"] / floor, "x") if floor else "-"

    body = []
    for label, name, field in (
        ("`dict[k]`", "dict", "hit_subscript"),
        ("fastsess `TTLCache[k]`", "fastsess TTLCache (c)", "hit_subscript"),
        ("cachebox `TTLCache[k]`", "cachebox TTLCache", "hit_subscript"),
        ("cachetools `TTLCache[k]`", "cachetools TTLCache", "hit_subscript"),
        ("`dict.get(k)`", "dict", "hit_get"),
        ("fastsess `LocalCache.get(k)`", "fastsess LocalCache (c)", "hit_get"),
        ("cachebox `TTLCache.get(k)`", "cachebox TTLCache", "hit_get"),
        ("cachetools `TTLCache.get(k)`", "cachetools TTLCache", "hit_get"),
    ):
        value, ratio = cell(name, field, small)
        if value != "-":
            body.append([label, value, ratio])
    out.append(table([f"cache hit, {small:,} entries", "ns/op, median (IQR)", "vs dict, same access"], body))
    sizes = cache["sizes"]
    body = []
    for label, name, field in (
        ("fastsess `LocalCache.get` / `dict.get`", "fastsess LocalCache (c)", "hit_get"),
        ("fastsess `TTLCache[k]` / `dict[k]`", "fastsess TTLCache (c)", "hit_subscript"),
    ):
        body.append([label, *[cell(name, field, size)[1] for size in sizes]])
    out.append(table(["hit, ratio of medians", *[f"{s:,} entries" for s in sizes]], body))
    if "stores" in report:
        p50 = {(r["candidate"], r["op"]): r for r in report["stores"]["rows"]}
        raw_load, raw_save = p50[("redis-py GET + msgpack", "load")]["p50_us"], p50[("redis-py SET EX + msgpack", "save")]["p50_us"]
        body = []
        for label, key, floor in (
            ("raw `GET` + `msgpack.unpackb`", ("redis-py GET + msgpack", "load"), raw_load),
            ("`RedisStore.load`", ("fastsess RedisStore", "load"), raw_load),
            ("`ClusteredRedisStore.load`, cache miss", ("fastsess ClusteredRedisStore", "load (miss)"), raw_load),
            ("`ClusteredRedisStore.load`, cached", ("fastsess ClusteredRedisStore", "load (cached)"), raw_load),
            ("`MemoryStore.load`", ("fastsess MemoryStore", "load"), None),
            ("raw `SET ... EX` + `msgpack.packb`", ("redis-py SET EX + msgpack", "save"), raw_save),
            ("`RedisStore.save`", ("fastsess RedisStore", "save"), raw_save),
            ("`ClusteredRedisStore.save` (SET + PUBLISH)", ("fastsess ClusteredRedisStore", "save (+publish)"), raw_save),
        ):
            r = p50.get(key)
            if r is not None:
                body.append([label, f"{r['p50_us']:,.2f}", fmt(r["p50_us"] / floor, "x") if floor else ""])
        for label, name, floor_name in (
            ("Flask-Session load / save", "Flask-Session (redis)", "redis-py"),
            ("Django cache backend (django-redis) load / save", "Django cache backend (django-redis)", "redis-py"),
            ("starsessions load / save (vs `redis.asyncio`)", "starsessions RedisStore", "redis.asyncio"),
        ):
            load, save = p50.get((name, "load")), p50.get((name, "save"))
            fl, fs = p50.get((f"{floor_name} GET + msgpack", "load")), p50.get((f"{floor_name} SET EX + msgpack", "save"))
            if load and save and fl and fs:
                body.append([
                    label, f"{load['p50_us']:,.2f} / {save['p50_us']:,.2f}",
                    f"{fmt(load['p50_us'] / fl['p50_us'], 'x')} / {fmt(save['p50_us'] / fs['p50_us'], 'x')}",
                ])
        out.append(table(["session operation (p50)", "microseconds", "vs raw redis-py"], body))
    return "\n".join(out)


def main(argv: list[str]) -> int:
    """``python bench/report.py [--readme] FILE...``: print the Markdown report (or the README's tables)."""
    readme = "--readme" in argv
    argv = [a for a in argv if a != "--readme"]
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    files = []
    for path in argv[1:]:
        with open(path, encoding="utf-8") as f:
            files.append(json.load(f))
    plain = [f for f in files if "benchmarks" not in f]
    report = plain[0] if plain else from_pytest_benchmark(files)
    print(readme_tables(report) if readme else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
