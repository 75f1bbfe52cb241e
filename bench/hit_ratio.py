"""Miss ratios of fastsess's caches and reference policies replaying the same traces.

Every candidate replays every trace (``bench/traces.py``) at several cache sizes,
given as fractions of the trace's distinct ids. A replay looks each id up and,
on a miss, stores it: for fastsess's caches through their public API
(``LocalCache.get`` / ``set``, ``LRUCache.get`` / ``c[k] = v``), for the
reference policies of ``bench/policies.py`` through ``access``. Nothing
expires (``LocalCache`` gets ``ttl=math.inf``): the misses are the first
request of each id plus those the eviction policy causes. Miss ratio = misses /
requests, the same denominator for every candidate.

Candidates: fastsess ``LocalCache`` and ``LRUCache`` (whichever core
``fastsess.cache`` loads: ``c`` compiled or ``py``), and the pure-Python
references LRU, SIEVE, CLOCK, TinyLFU+SIEVE, W-TinyLFU+SIEVE (1% and 10% windows)
and TinyLFU+LRU (``bench/policies.py``). The report says
which reference each fastsess cache matches miss for miss at every size (a
cross-check of the compiled policy), and whether ``LocalCache`` misses no more
than ``LRUCache`` (exact LRU) at every size of the session-shaped traces.

    python bench/hit_ratio.py --quick                 # 100,000-request traces, under 30 s
    python bench/hit_ratio.py --json hr.json --plot bench/hit_ratio.png   # 1,000,000 requests
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.policies import Clock, ExactLRU, Sieve, TinyLFU, WindowTinyLFU
from bench.traces import Trace, standard_traces, summarize
from fastsess import __version__
from fastsess.cache import IMPLEMENTATION, LocalCache, LRUCache

__all__ = [
    "CANDIDATES",
    "FRACTIONS",
    "capacities",
    "format_markdown",
    "replay_get_set",
    "replay_local_cache",
    "replay_lru_cache",
    "replay_policy",
    "run",
]

FRACTIONS = (0.001, 0.01, 0.05, 0.10, 0.25)
FULL_REQUESTS = 1_000_000
QUICK_REQUESTS = 100_000
QUICK_ALPHAS = (1.0,)


def replay_get_set(keys: Iterable[int], get: Callable[[int], Any], put: Callable[[int, Any], Any]) -> int:
    """Replay ``keys`` through a cache's ``get`` (None: a miss) and ``put`` (called on each miss); return the misses."""
    misses = 0
    for key in keys:
        if get(key) is None:
            misses += 1
            put(key, True)
    return misses


def replay_local_cache(keys: Iterable[int], capacity: int, cls: type[Any] = LocalCache) -> tuple[int, Any]:
    """Replay ``keys`` on a fresh ``cls(max_size=capacity, ttl=inf)`` (a ``LocalCache``); return (misses, the cache)."""
    cache = cls(max_size=capacity, ttl=math.inf)
    return replay_get_set(keys, cache.get, cache.set), cache


def replay_lru_cache(keys: Iterable[int], capacity: int, cls: type[Any] = LRUCache) -> tuple[int, Any]:
    """Replay ``keys`` on a fresh ``cls(maxsize=capacity)`` (an ``LRUCache``); return (misses, the cache)."""
    cache = cls(maxsize=capacity)
    return replay_get_set(keys, cache.get, cache.__setitem__), cache


def replay_policy(keys: Iterable[int], policy: ExactLRU | Sieve | Clock | TinyLFU) -> int:
    """Replay ``keys`` through ``policy.access``; return the misses."""
    access = policy.access
    misses = 0
    for key in keys:
        if not access(key):
            misses += 1
    return misses


Replay = Callable[[Sequence[int], int], int]


def _windowed(fraction: float) -> Replay:
    def replay(keys: Sequence[int], cap: int) -> int:
        return replay_policy(keys, WindowTinyLFU(Sieve(cap), fraction) if cap >= 2 else Sieve(cap))

    return replay


CANDIDATES: dict[str, Replay] = {
    f"LocalCache ({IMPLEMENTATION})": lambda keys, cap: replay_local_cache(keys, cap)[0],
    f"LRUCache ({IMPLEMENTATION})": lambda keys, cap: replay_lru_cache(keys, cap)[0],
    "LRU (ref)": lambda keys, cap: replay_policy(keys, ExactLRU(cap)),
    "SIEVE (ref)": lambda keys, cap: replay_policy(keys, Sieve(cap)),
    "CLOCK (ref)": lambda keys, cap: replay_policy(keys, Clock(cap)),
    "TinyLFU+SIEVE (ref)": lambda keys, cap: replay_policy(keys, TinyLFU(Sieve(cap))),
    "W-TinyLFU 1%+SIEVE (ref)": _windowed(0.01),
    "W-TinyLFU 10%+SIEVE (ref)": _windowed(0.10),
    "TinyLFU+LRU (ref)": lambda keys, cap: replay_policy(keys, TinyLFU(ExactLRU(cap))),
}
FULL_ONLY = ("W-TinyLFU 10%+SIEVE (ref)", "TinyLFU+LRU (ref)")  # left out of --quick to keep it under 30 s
LOCAL, LRU = list(CANDIDATES)[:2]
REFERENCES = ("CLOCK (ref)", "SIEVE (ref)", "LRU (ref)")


def capacities(distinct: int, fractions: Sequence[float] = FRACTIONS) -> list[int]:
    """Cache sizes for a trace: each fraction of its distinct ids, at least 1 entry."""
    return [max(1, round(f * distinct)) for f in fractions]


def run(
    traces: Sequence[Trace],
    fractions: Sequence[float] = FRACTIONS,
    candidates: dict[str, Replay] | None = None,
    reuse: dict[str, Any] | None = None,
    fresh: Sequence[str] = (),
) -> dict[str, Any]:
    """Replay every trace on every candidate at every size; return misses, ratios and the checks.

    ``reuse``: an earlier ``run`` result. For a trace it replayed with the same
    parameters (seed included) and cache sizes, a candidate's misses are copied
    from it instead of replayed (the traces are deterministic, so a replay
    would give the same), unless the candidate is in ``fresh``.
    """
    cands = CANDIDATES if candidates is None else candidates
    earlier_rows = reuse["traces"] if reuse else []
    out: dict[str, Any] = {"fractions": list(fractions), "candidates": list(cands), "traces": []}
    for trace in traces:
        caps = capacities(trace.distinct, fractions)
        earlier = next((r for r in earlier_rows if r["params"] == trace.params and r["capacities"] == caps), None)
        misses: dict[str, list[int]] = {}
        seconds: dict[str, float] = {}
        for label, replay in cands.items():
            if earlier is not None and label in earlier["misses"] and label not in fresh:
                misses[label] = earlier["misses"][label]
                seconds[label] = earlier["seconds"][label]
                continue
            t0 = time.perf_counter()
            misses[label] = [replay(trace.keys, cap) for cap in caps]
            seconds[label] = time.perf_counter() - t0
        n = len(trace.keys)
        row: dict[str, Any] = {
            "summary": summarize(trace),
            "params": trace.params,
            "capacities": caps,
            "misses": misses,
            "miss_ratio": {label: [m / n for m in ms] for label, ms in misses.items()},
            "seconds": seconds,
            "matches": {
                label: [ref for ref in REFERENCES if ref in misses and misses[ref] == misses[label]] for label in (LOCAL, LRU) if label in misses
            },
        }
        exact_lru = LRU if LRU in misses else "LRU (ref)"
        if LOCAL in misses and exact_lru in misses:
            row["local_le_lru"] = all(a <= b for a, b in zip(misses[LOCAL], misses[exact_lru]))
            row["exact_lru"] = exact_lru
        out["traces"].append(row)
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def format_markdown(result: dict[str, Any]) -> str:
    """The report as Markdown: one table of miss ratios (%) per trace, then the checks."""
    lines: list[str] = []
    cands = result["candidates"]
    for row in result["traces"]:
        s = row["summary"]
        lines.append(
            f"**{s['name']}**: {s['requests']:,} requests, {s['distinct']:,} distinct ids "
            f"({s['one_time_ids']:,} requested once; bots {s['bot_requests']:.0%} of requests, scans {s['scan_requests']:.0%}; "
            f"the top 1% of ids get {s['top_1pct_share']:.0%}). Miss ratio, % of requests (lower is better; "
            f"first requests alone, which every cache misses, are {_pct(s['distinct'] / s['requests'])}%):"
        )
        lines.append("")
        lines.append("| cache size | " + " | ".join(cands) + " |")
        lines.append("|---" * (len(cands) + 1) + "|")
        for i, (frac, cap) in enumerate(zip(result["fractions"], row["capacities"])):
            ratios = [row["miss_ratio"][c][i] for c in cands]
            best = min(ratios)
            cells = [f"**{_pct(r)}**" if r == best else _pct(r) for r in ratios]
            lines.append(f"| {frac:.1%} ({cap:,}) | " + " | ".join(cells) + " |")
        lines.append("")
        notes = []
        for label, refs in row["matches"].items():
            notes.append(f"{label} misses exactly as {' and '.join(refs)}" if refs else f"{label} matches no reference exactly")
        if "local_le_lru" in row:
            notes.append(f"{LOCAL} <= {row.get('exact_lru', LRU)} at every size: **{'yes' if row['local_le_lru'] else 'NO'}**")
        if notes:
            lines.append("; ".join(notes) + ".")
            lines.append("")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str, names: Sequence[str] = ("session", "session-nobots", "session-1req")) -> None:
    """Miss ratio against cache size, one panel per named trace, one line per candidate (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["traces"] if r["summary"]["name"] in names] or result["traces"][:2]
    fig, axes = plt.subplots(1, len(rows), figsize=(6 * len(rows), 4.5), squeeze=False)
    for ax, row in zip(axes[0], rows):
        xs = [100 * f for f in result["fractions"]]
        for label in result["candidates"]:
            style = "--" if label.startswith("TinyLFU") else (":" if label.endswith("(ref)") else "-")
            ax.plot(xs, [100 * r for r in row["miss_ratio"][label]], style, marker="o", markersize=3, label=label)
        s = row["summary"]
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:g}%" for x in xs])
        ax.minorticks_off()
        ax.set_xlabel("cache size, % of the trace's distinct ids (log scale)")
        ax.set_ylabel("miss ratio, % of requests")
        ax.set_title(f"{s['name']}: {s['requests']:,} requests, {s['distinct']:,} ids")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _run_line(r: dict[str, Any]) -> str:
    load = r.get("load_average")
    return (
        f"Run {r['when']} ({r['mode']}, seed {r['seed']}): fastsess {r['fastsess']} ({r['implementation']} cache core), "
        f"CPython {r['python']}; {r['wall_seconds']} s wall ({r['generate_seconds']} s generating traces), {r['cpu_seconds']} s CPU"
        + (f"; load average at the end {load[0]:.1f}" if load else "")
        + (
            f"; candidates other than {', '.join(r['fresh']) or 'none'} were replayed in the run of {r['reused']} where it had the same trace"
            if r.get("reused")
            else ""
        )
        + ".\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: generate the traces, replay them, print the Markdown report."""
    parser = argparse.ArgumentParser(description="Miss ratios of fastsess caches and reference policies on synthetic traces.")
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_REQUESTS:,}-request traces, Zipf alpha {QUICK_ALPHAS} only, without {', '.join(FULL_ONLY)}".replace("%", "%%")
    )
    parser.add_argument("--requests", type=int, default=None, help=f"requests per trace (default {FULL_REQUESTS:,})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=None, metavar="NAMES", help="comma-separated trace names to run (e.g. session,session-nobots)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--plot", default=None, help="write the chart (PNG) here; needs matplotlib")
    parser.add_argument("--candidates", default=None, metavar="PREFIXES", help="comma-separated: run only the candidates whose label starts so")
    parser.add_argument("--reuse", default=None, metavar="JSON", help="take misses from an earlier --json where it replayed the same trace and sizes")
    parser.add_argument(
        "--fresh", default="", metavar="PREFIXES", help="with --reuse: replay the candidates whose label starts so (comma-separated) anyway"
    )
    parser.add_argument("--render", default=None, metavar="JSON", help="replay nothing: print (and --plot) the results of an earlier --json")
    args = parser.parse_args(argv)
    if args.render:
        with open(args.render, encoding="utf-8") as f:
            saved = json.load(f)
        print(_run_line(saved["run"]))
        print(format_markdown(saved))
        if args.plot:
            plot(saved, args.plot)
        return 0
    requests = args.requests or (QUICK_REQUESTS if args.quick else FULL_REQUESTS)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    traces = standard_traces(requests, args.seed, QUICK_ALPHAS if args.quick else (0.6, 0.8, 1.0, 1.2))
    if args.only:
        traces = [t for t in traces if t.name in args.only.split(",")]
    gen_seconds = time.perf_counter() - t0
    cands = {k: v for k, v in CANDIDATES.items() if not (args.quick and k in FULL_ONLY)}
    if args.candidates:
        cands = {k: v for k, v in cands.items() if k.startswith(tuple(args.candidates.split(",")))}
    fresh = [k for k in cands if args.fresh and k.startswith(tuple(args.fresh.split(",")))]
    reuse = None
    if args.reuse:
        with open(args.reuse, encoding="utf-8") as f:
            reuse = json.load(f)
    result = run(traces, candidates=cands, reuse=reuse, fresh=fresh)
    result["run"] = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "requests": requests,
        "seed": args.seed,
        "fastsess": __version__,
        "implementation": IMPLEMENTATION,
        "python": platform.python_version(),
        "generate_seconds": round(gen_seconds, 1),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(time.process_time() - cpu0, 1),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "reused": f"{reuse['run']['when']} ({reuse['run']['implementation']})" if reuse else None,
        "fresh": fresh,
    }
    print(_run_line(result["run"]))
    print(format_markdown(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
