"""The ``fastsess`` command line tool (also ``python -m fastsess``).

    fastsess bench [--quick] [--cache-only] [--json FILE] [--plot FILE.png]
    fastsess demo --nodes 3
    fastsess doctor [--url URL]

Errors (Redis unreachable, bad settings, missing extras) print one line and
exit with status 1; bad arguments exit with status 2 (click's usage error).
``--debug`` shows the traceback and turns on debug logging.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import FastsessError

EXIT_ERROR = 1


class _SizeList(click.ParamType):  # type: ignore[type-arg,unused-ignore]  # generic in recent click only
    """A comma-separated list of positive integers, e.g. ``1000,100000``."""

    name = "sizes"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, ...]:
        """Parse ``"1000,100000"``; a usage error (exit 2) for anything else."""
        if isinstance(value, tuple):
            return value
        try:
            sizes = tuple(int(part.replace("_", "")) for part in str(value).split(",") if part.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers", param, ctx)
        if not sizes or min(sizes) < 1:
            self.fail(f"{value!r}: sizes must be positive integers", param, ctx)
        return sizes


SIZES = _SizeList()


class _Group(click.Group):
    """Turns expected failures into one line on stderr and exit status 1 (traceback with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; expected failures become one line and exit status 1."""
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except (FastsessError, OSError) as exc:
            if ctx.meta.get("fastsess.debug"):
                raise
            click.echo(f"fastsess: error: {exc}", err=True)
            ctx.exit(EXIT_ERROR)
        except Exception as exc:  # redis errors and the like: still one line unless --debug
            if ctx.meta.get("fastsess.debug"):
                raise
            click.echo(f"fastsess: error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
            ctx.exit(EXIT_ERROR)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fastsess")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """fastsess: a compiled in-process session cache in front of Redis, kept coherent by pub/sub."""
    ctx.meta["fastsess.debug"] = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--quick", is_flag=True, help="Smaller sizes and fewer samples (about half a minute).")
@click.option("--cache-only", is_flag=True, help="Only the in-process cache comparison (no Redis).")
@click.option("--url", envvar="REDIS_URL", help="Redis to measure against (default: $REDIS_URL, else a private server).")
@click.option("--sizes", type=SIZES, help="Cache sizes, comma separated (default 1000,100000,1000000; quick 1000,100000).")
@click.option("--probes", type=click.IntRange(min=100), help="Cache operations per measurement, in rounds of 1,000 (default 100000; quick 30000).")
@click.option(
    "--thread-hits", type=click.IntRange(min=10_000), help="Hits per run of the 1-vs-2-thread measurement (default 2000000; quick 1000000)."
)
@click.option("--thread-runs", type=click.IntRange(min=5), help="Runs of the 1-vs-2-thread measurement, median reported (default 7; quick 5).")
@click.option("--store-ops", type=click.IntRange(min=20), help="Redis operations per store measurement (default 4000; quick 1200).")
@click.option("--latency-samples", type=click.IntRange(min=10), help="Saves timed for invalidation latency (default 1000; quick 300).")
@click.option("--sessions", type=click.IntRange(min=10), help="Sessions in the read-load workload (default 10000; quick 3000).")
@click.option("--requests", type=click.IntRange(min=100), help="Requests in the read-load workload (default 100000; quick 30000).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write the results as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="Also draw the results as a PNG chart.")
def bench(
    quick: bool,
    cache_only: bool,
    url: str | None,
    sizes: tuple[int, ...] | None,
    probes: int | None,
    thread_hits: int | None,
    thread_runs: int | None,
    store_ops: int | None,
    latency_samples: int | None,
    sessions: int | None,
    requests: int | None,
    json_path: Path | None,
    plot_path: Path | None,
) -> None:
    """Measure fastsess against dict, cachetools, cachebox, lru-dict, raw redis-py and the
    pure-Python session stores installed; invalidation latency; Redis read load.

    Uses $REDIS_URL when set (keys under a random prefix, deleted afterwards);
    otherwise starts and stops a private redis-server on a free port.  Checks
    that Redis and the output paths are usable before measuring anything.
    """
    from .benchmarks.cache import find_candidates
    from .benchmarks.report import FULL, QUICK, format_report, plot_panels, preflight, run_bench, steps
    from .benchmarks.timing import BATCH
    from .cache import IMPLEMENTATION, IMPORT_ERROR

    if plot_path is not None:
        from .benchmarks.plot import require_pyplot

        require_pyplot()  # fail now, not after the run, if matplotlib is missing
    preflight(url, cache_only, (json_path, plot_path))
    if IMPLEMENTATION != "c":
        click.echo(f"warning: compiled cache core not loaded ({IMPORT_ERROR}); measuring the pure-Python twin", err=True)
    plan = dict(QUICK if quick else FULL)
    overrides = {"sizes": sizes, "store_ops": store_ops, "latency_samples": latency_samples, "sessions": sessions, "ops": requests,
                 "thread_hits": thread_hits, "thread_runs": thread_runs,
                 "rounds": None if probes is None else max(1, -(-probes // BATCH))}
    plan.update({name: value for name, value in overrides.items() if value is not None})
    total = steps(plan, cache_only, len(find_candidates()[0]))
    with click.progressbar(length=total, label="measuring", file=sys.stderr, show_pos=False) as bar:

        def tick(_what: str) -> None:
            if bar.pos < total - 1:
                bar.update(1)

        report = run_bench(plan, url=url, cache_only=cache_only, mode="quick" if quick else "full", progress=tick)
        bar.update(total - bar.pos)
    click.echo(format_report(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2))
        click.echo(f"\nwrote {json_path}")
    if plot_path is not None:
        from .benchmarks.plot import write_plot

        report["panels"] = plot_panels(report)
        write_plot(report, plot_path)
        click.echo(f"wrote {plot_path}")


@main.command()
@click.option("--nodes", type=click.IntRange(1, 16), default=3, show_default=True, help="Node processes to start.")
@click.option("--duration", type=click.FloatRange(min=1.0, max=3600.0), default=10.0, show_default=True, help="Seconds to run.")
@click.option("--sessions", type=click.IntRange(min=10, max=1_000_000), default=2_000, show_default=True, help="Sessions in the workload.")
@click.option("--url", envvar="REDIS_URL", help="Redis to use (default: $REDIS_URL, else a private server).")
@click.option("--no-invalidation", is_flag=True, help="Give each node its own channel, to see the stale reads fastsess prevents.")
@click.option("--drop-every", type=click.FloatRange(min=0.0), default=1.0, show_default=True,
              help="Seconds between two nodes (in turn) breaking their listener's connection, to show the missed "
                   "invalidations replayed (0: never).")
def demo(nodes: int, duration: float, sessions: int, url: str | None, no_invalidation: bool, drop_every: float) -> None:
    """Run N node processes sharing one Redis under a read-heavy workload with writes
    and deletes, with a live table per node (hit rate, invalidations, stale reads,
    sequence gaps repaired by replay, lease state).
    Exit status 1 if any stale read was observed (expected with --no-invalidation)."""
    from .benchmarks.report import redis_for_bench
    from .demo import run_demo

    with redis_for_bench(url) as target:
        click.echo(f"Redis {target['version']}: {target['source']}")
        result = run_demo(
            target["url"], nodes=nodes, duration=duration, sessions=sessions, out=click.echo, invalidation=not no_invalidation,
            drop_every=drop_every,
        )
    stale = sum(row["stale_reads"] for row in result["nodes"])
    errors = sum(row["errors"] for row in result["nodes"])
    click.echo(
        f"\n{result['reads']:,} reads, {result['writes']:,} writes, {result['deletes']:,} deletes, "
        f"{errors:,} Redis errors; listeners resynchronised by replay {result['replays']:,} times "
        f"({result['replayed_ids']:,} ids evicted), full flushes {result['full_flushes']:,}; stale reads observed: {stale}"
    )
    if stale:
        sys.exit(EXIT_ERROR)


@main.command()
@click.option("--url", envvar="REDIS_URL", help="Redis URL to check (default: $REDIS_URL).")
def doctor(url: str | None) -> None:
    """Report the cache implementation in use (and why), hiredis, and Redis reachability, version, RESP,
    cluster mode and pub/sub round trip.  Exit status 1 if a check failed."""
    from .doctor import diagnose

    failed = False
    for check in diagnose(url):
        mark = {True: "ok  ", False: "FAIL", None: "    "}[check.ok]
        click.echo(f"[{mark}] {check.name:<22} {check.value}")
        failed = failed or check.ok is False
    if failed:
        sys.exit(EXIT_ERROR)


if __name__ == "__main__":  # pragma: no cover
    main()
