"""Turn ``pytest bench/ --benchmark-json=FILE`` results into the Markdown tables of bench/README.md.

    python bench/report.py cache.json stores.json > results.md

Several files (e.g. the cache run and the CPU-pinned store run) are merged.
Every figure is the cost of one operation: a round's time divided by the
operations in it (``extra_info["ops_per_round"]``, set by
``support.record_per_op``).  Tables use the median round.

The targets of DESIGN.md section 5 are evaluated on the median and on the
fastest round (min): on a shared 2-core machine another process can slow
some rounds down, and the min shows what a candidate costs undisturbed.
Cache targets go through ``fastsess.benchmarks.cache.cache_checks`` (the
code behind ``fastsess bench``), fed with hit costs *net* of the empty loop
(``test_loop_overhead``: iterating over the keys, which every row pays), as
the design's per-lookup figures mean; the as-measured ratio is shown too.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

from fastsess.benchmarks.cache import cache_checks

CACHE_WORKLOADS = ("hit", "miss", "mixed", "set-evict")
STORE_WORKLOADS = ("redis-load", "redis-save", "memory-load")
EMPTY_LOOP = "empty loop"
ASYNC_CANDIDATES = ("raw-async", "fastsess-async", "starsessions")
STORE_ORDER = ("raw", "fastsess", "flask-session", "django", *ASYNC_CANDIDATES)

# (workload, candidate, size or None) -> ns per operation
Costs = dict[tuple[str, str, int | None], float]


def costs(benches: list[dict[str, Any]], stat: str) -> tuple[Costs, list[str]]:
    """Per-operation cost of every benchmark for ``stat`` ("median" or "min"), and candidates in run order."""
    out: Costs = {}
    order: list[str] = []
    for bench in benches:
        info = bench["extra_info"]
        if "ops_per_round" not in info:
            continue
        out[(info["workload"], info["candidate"], info.get("size"))] = bench["stats"][stat] / info["ops_per_round"] * 1e9
        if info["candidate"] not in order:
            order.append(info["candidate"])
    return out, order


def fmt(ns: float) -> str:
    return f"{ns:,.0f}" if ns >= 100 else f"{ns:.1f}"


def table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def sizes_of(cost: Costs) -> list[int]:
    return sorted({size for (workload, _, size) in cost if workload in CACHE_WORKLOADS and size is not None})


# -- tables -----------------------------------------------------------------------------------


def cache_tables(cost: Costs, order: list[str]) -> str:
    sizes = sizes_of(cost)
    out = []
    for workload in CACHE_WORKLOADS:
        names = [name for name in order if any((workload, name, s) in cost for s in sizes)]
        if names:
            rows = [[name] + [fmt(cost[(workload, name, s)]) if (workload, name, s) in cost else "-" for s in sizes] for name in names]
            out.append(f"**{workload}** (ns per operation, median)\n\n" + table(["candidate"] + [f"{s:,}" for s in sizes], rows))
    return "\n".join(out)


def net_hits(cost: Costs) -> dict[tuple[str, int], float]:
    """Hit cost minus the empty loop's at the same size (candidates measured at sizes with a loop figure)."""
    loop = {size: ns for (workload, name, size), ns in cost.items() if workload == "hit" and name == EMPTY_LOOP}
    return {
        (name, size): ns - loop[size]
        for (workload, name, size), ns in cost.items()
        if workload == "hit" and name != EMPTY_LOOP and size in loop
    }


def hit_ratio_table(cost: Costs) -> str:
    """Compiled fastsess hits against dict.get, cachebox and cachetools at every size, net of the loop."""
    hit, sizes = net_hits(cost), sizes_of(cost)
    rows = []
    for ours in ("fastsess LocalCache (c)", "fastsess TTLCache (c)"):
        for other, ours_first in (("dict", True), ("cachebox TTLCache", True), ("cachetools TTLCache", False)):
            cells = []
            for size in sizes:
                a, b = hit.get((ours, size)), hit.get((other, size))
                cells.append("-" if a is None or b is None else f"{(a / b if ours_first else b / a):.2f}")
            rows.append([f"{ours} / {other}" if ours_first else f"{other} / {ours}"] + cells)
    if not rows or not sizes:
        return ""
    header = ["hit ratio, net of loop (median)"] + [f"{s:,}" for s in sizes]
    return "**hit ratios at every size** (the targets below are checked at 1,000 entries)\n\n" + table(header, rows)


def threads_table(cost: Costs) -> str:
    per = {name: ns for (workload, name, _), ns in cost.items() if workload == "threads"}
    rows = []
    for base in sorted({name.rsplit(" x", 1)[0] for name in per}):
        one, two = per.get(f"{base} x1"), per.get(f"{base} x2")
        if one and two:
            rows.append([base, fmt(one), fmt(two), f"{two / one:.2f}"])
    if not rows:
        return ""
    return "**threads** (the same hits; ns of wall time per hit, median)\n\n" + table(["candidate", "1 thread", "2 threads", "2 / 1"], rows)


def baseline(name: str) -> str:
    return "raw-async" if name in ASYNC_CANDIDATES else "raw"


def store_tables(cost: Costs) -> str:
    out = []
    names = [n for n in STORE_ORDER if any((w, n, None) in cost for w in ("redis-load", "redis-save"))]
    if names:
        rows = []
        for name in names:
            row = [name]
            for workload in ("redis-load", "redis-save"):
                mine, ref = cost.get((workload, name, None)), cost.get((workload, baseline(name), None))
                row += ["-", "-"] if mine is None else [f"{mine / 1000:.1f}", f"{mine / ref:.2f}" if ref else "-"]
            rows.append(row)
        out.append(
            "**Redis stores** (us per operation, median; ratio to `raw`, or to `raw-async` for the asyncio candidates)\n\n"
            + table(["candidate", "load", "load / raw", "save", "save / raw"], rows)
        )
    memory = [[name, fmt(ns)] for (workload, name, _), ns in cost.items() if workload == "memory-load"]
    if memory:
        out.append("**memory-load** (ns per load, median)\n\n" + table(["candidate", "ns"], memory))
    return "\n".join(out)


def cluster_tables(cost: Costs, benches: list[dict[str, Any]]) -> str:
    """ClusteredRedisStore: cached vs miss vs raw load, save with its publish, latency, read load."""
    out = []
    load = [(n, cost.get(("cluster-load", n, None))) for n in ("cached", "miss", "raw")]
    save = [(n, cost.get(("cluster-save", n, None))) for n in ("fastsess (SET+PUBLISH)", "raw SET EX")]
    raw_load, raw_save = dict(load).get("raw"), dict(save).get("raw SET EX")
    rows = [[f"load, {n}", fmt(ns), f"{ns / raw_load:.3f}" if raw_load else "-"] for n, ns in load if ns]
    rows += [[f"save, {n}", fmt(ns), f"{ns / raw_save:.3f}" if raw_save else "-"] for n, ns in save if ns]
    if rows:
        out.append("**ClusteredRedisStore** (ns per operation, median; ratio to the raw redis-py row)\n\n" + table(["operation", "ns", "/ raw"], rows))
    for bench in benches:
        info = bench.get("extra_info", {})
        if "invalidation_p50_ms" in info:
            out.append(
                f"**Invalidation between two processes** ({info['invalidation_samples']} saves): "
                f"p50 {info['invalidation_p50_ms']:.3f} ms, p99 {info['invalidation_p99_ms']:.3f} ms, "
                f"max {info['invalidation_max_ms']:.3f} ms\n"
            )
        if "gets_per_1000_reads_1_nodes" in info:
            out.append(
                "**Redis read load**, 100,000 requests over 10,000 sessions, 90% reads, Zipf "
                "(GETs reaching Redis per 1,000 reads; 1,000 without a local cache)\n\n"
                + table(
                    ["nodes", "GETs per 1,000 reads", "served locally"],
                    [[str(n), f"{info[f'gets_per_1000_reads_{n}_nodes']:.1f}", f"{info[f'served_locally_{n}_nodes']:.1%}"] for n in (1, 2)],
                )
            )
    return "\n".join(out)


# -- targets ----------------------------------------------------------------------------------


def cache_targets(cost: Costs, net: bool) -> dict[str, dict[str, Any]]:
    """``cache_checks`` on this run's hit costs (net of the empty loop when ``net``)."""
    hits = net_hits(cost) if net else {(n, s): ns for (w, n, s), ns in cost.items() if w == "hit" and n != EMPTY_LOOP and s is not None}
    threads = {name: ns for (w, name, _), ns in cost.items() if w == "threads"}
    one, two = threads.get("fastsess LocalCache (c) x1"), threads.get("fastsess LocalCache (c) x2")
    if not hits or not one or not two:
        return {}
    rows = [{"candidate": name, "size": size, "hit": ns} for (name, size), ns in hits.items()]
    return cache_checks(rows, {"ratio": two / one})


def store_targets(cost: Costs) -> dict[str, tuple[str, float, bool]]:
    """name -> (target, value, met) for the store targets of DESIGN.md section 5."""
    out: dict[str, tuple[str, float, bool]] = {}
    for name, workload, mine, limit in (
        ("RedisStore.load / raw GET + unpackb", "redis-load", "fastsess", 1.15),
        ("RedisStore.save / raw SET EX + packb", "redis-save", "fastsess", 1.2),
        ("asyncio RedisStore.load / raw async GET + unpackb", "redis-load", "fastsess-async", 1.15),
        ("asyncio RedisStore.save / raw async SET EX + packb", "redis-save", "fastsess-async", 1.2),
    ):
        a, b = cost.get((workload, mine, None)), cost.get((workload, baseline(mine), None))
        if a and b:
            out[name] = (f"<= {limit}", a / b, a / b <= limit)
    memory = cost.get(("memory-load", "MemoryStore.load", None))
    if memory:
        out["MemoryStore.load, ns per load"] = ("< 1000", memory, memory < 1000)
    return out


def targets_table(median: Costs, fastest: Costs) -> str:
    rows = []
    as_measured, med_net, min_net = cache_targets(median, False), cache_targets(median, True), cache_targets(fastest, True)
    for name, check in med_net.items():
        raw, low = as_measured.get(name), min_net.get(name)
        rows.append(
            [name, check["target"], "-" if raw is None else f"{raw['value']:.3f}", f"{check['value']:.3f}",
             "-" if low is None else f"{low['value']:.3f}", "yes" if check["ok"] else "**no**"]
        )
    low_stores = store_targets(fastest)
    for name, (target, value, ok) in store_targets(median).items():
        low = low_stores.get(name)
        shown = fmt if name.startswith("MemoryStore") else (lambda v: f"{v:.3f}")
        rows.append([name, target, shown(value), "-", "-" if low is None else shown(low[1]), "yes" if ok else "**no**"])
    if not rows:
        return ""
    header = ["target (DESIGN.md section 5)", "goal", "median", "median, net", "min, net", "met (median, net)"]
    return "**Targets** (\"net\": the empty loop's cost taken out of each hit)\n\n" + table(header, rows)


# -- entry point ------------------------------------------------------------------------------


def describe(result: dict[str, Any]) -> str:
    machine = result.get("machine_info", {})
    cpu = machine.get("cpu", {})
    return (
        f"{result.get('datetime', '?')[:16]} UTC, {machine.get('python_implementation', 'Python')} "
        f"{machine.get('python_version', '?')}, {cpu.get('count', '?')} cores ({cpu.get('brand_raw', 'unknown CPU')})"
    )


def render(results: list[dict[str, Any]]) -> str:
    benches = [bench for result in results for bench in result["benchmarks"]]
    median, order = costs(benches, "median")
    fastest, _ = costs(benches, "min")
    parts = [
        "Runs: " + "; ".join(describe(result) for result in results) + ".\n",
        cache_tables(median, order),
        hit_ratio_table(median),
        threads_table(median),
        store_tables(median),
        cluster_tables(median, benches),
        targets_table(median, fastest),
    ]
    return "\n".join(part for part in parts if part)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    results = []
    for path in argv[1:]:
        with open(path, encoding="utf-8") as f:
            results.append(json.load(f))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
