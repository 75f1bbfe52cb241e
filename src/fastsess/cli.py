"""The ``fastsess`` command line tool (also ``python -m fastsess``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__

QUICK_SIZES = (1_000, 100_000)
FULL_SIZES = (1_000, 100_000, 1_000_000)


def format_cache_table(result: dict[str, Any]) -> str:
    """Render ``run_cache_benchmarks`` output as a plain-text table (ns/op, ratio to dict.get)."""
    lines = []
    for size in result["sizes"]:
        rows = [r for r in result["rows"] if r["size"] == size]
        floor = next((r["hit"] for r in rows if r["candidate"] == "dict"), None)
        lines.append(f"\n{size:,} entries (ns per operation, loop overhead removed)")
        lines.append(f"  {'cache':<28}{'hit':>9}{'x dict':>8}{'miss':>9}{'set+evict':>11}{'90/10 mix':>11}")
        for r in rows:
            ratio = f"{r['hit'] / floor:7.2f}x" if floor else "      -"
            lines.append(
                f"  {r['candidate']:<28}{r['hit']:>9.1f}{ratio:>8}{r['miss']:>9.1f}{r['set_evict']:>11.1f}{r['mixed']:>11.1f}"
            )
    threads = result["threads"]
    lines.append(
        f"\nLocalCache.get, {threads['ops']:,} hits: 1 thread {threads['one_thread_s'] * 1e3:.1f} ms, "
        f"2 threads {threads['two_threads_s'] * 1e3:.1f} ms (ratio {threads['ratio']:.2f})"
    )
    lines.append("\nTargets (DESIGN.md section 5):")
    for name, check in result["checks"].items():
        mark = "ok  " if check["ok"] else "MISS"
        lines.append(f"  [{mark}] {name}: {check['value']} (target {check['target']})")
    return "\n".join(lines)


class _SizeList(click.ParamType):
    """A comma-separated list of positive integers, e.g. ``1000,100000``."""

    name = "sizes"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, ...]:
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fastsess")
def main() -> None:
    """fastsess: compiled in-process session cache in front of Redis."""


@main.command()
@click.option("--quick", is_flag=True, help="Smaller sizes and fewer repeats (under a minute).")
@click.option("--cache-only", is_flag=True, help="Only the in-process cache comparison (no Redis).")
@click.option("--sizes", type=SIZES, help="Cache sizes to measure, comma separated (default 1000,100000,1000000).")
@click.option("--probes", type=click.IntRange(min=100), help="Operations per measurement (default 100000).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write the results as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="Also draw the results as a PNG chart.")
def bench(
    quick: bool,
    cache_only: bool,
    sizes: tuple[int, ...] | None,
    probes: int | None,
    json_path: Path | None,
    plot_path: Path | None,
) -> None:
    """Compare fastsess against dict, cachetools, cachebox and lru-dict on this machine."""
    from .benchmarks.cache import candidates, run_cache_benchmarks
    from .cache import IMPLEMENTATION, IMPORT_ERROR

    if IMPLEMENTATION != "c":
        click.echo(f"warning: compiled cache core not loaded ({IMPORT_ERROR}); measuring the pure-Python twin", err=True)
    sizes = sizes or (QUICK_SIZES if quick else FULL_SIZES)
    repeat = 3 if quick else 5
    probes = probes or (30_000 if quick else 100_000)
    steps = len(sizes) * len(candidates())
    with click.progressbar(length=steps, label="cache", file=sys.stderr) as bar:
        result = run_cache_benchmarks(sizes, probes=probes, repeat=repeat, progress=lambda _msg: bar.update(1))
    report: dict[str, Any] = {"version": __version__, "implementation": IMPLEMENTATION, "cache": result}
    click.echo(format_cache_table(result))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2))
        click.echo(f"\nwrote {json_path}")
    if plot_path is not None:
        from .benchmarks.plot import write_plot

        write_plot(report, plot_path)
        click.echo(f"wrote {plot_path}")


@main.command()
@click.option("--url", envvar="REDIS_URL", help="Redis URL to check (default: $REDIS_URL).")
def doctor(url: str | None) -> None:
    """Report the compiled extension, hiredis, and Redis reachability, version and pub/sub latency."""
    from .doctor import diagnose

    failed = False
    for check in diagnose(url):
        mark = {True: "ok  ", False: "FAIL", None: "    "}[check.ok]
        click.echo(f"[{mark}] {check.name:<22} {check.value}")
        failed = failed or check.ok is False
    if failed:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
