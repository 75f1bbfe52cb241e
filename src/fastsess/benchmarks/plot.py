"""Render a ``fastsess bench`` report as a PNG chart (needs matplotlib: ``fastsess[plot]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def require_pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend.

    Raises:
        ConfigError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a window
        import matplotlib.pyplot as plt
    except ImportError as exc:
        from ..errors import ConfigError

        raise ConfigError("--plot needs matplotlib: pip install 'fastsess[plot]'") from exc
    return plt


def _plain_log_ticks(ax: Any) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator

    fmt = FuncFormatter(lambda v, _pos: f"{v:g}")
    ax.xaxis.set_major_formatter(fmt)
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))  # labelled 2s and 5s only: no clutter
    ax.xaxis.set_minor_formatter(fmt)
    ax.tick_params(axis="x", which="minor", labelsize="x-small")


def _cache_panel(ax: Any, cache: dict[str, Any]) -> None:
    rows = cache["rows"]
    sizes = cache["sizes"]
    names = list(dict.fromkeys(r["candidate"] for r in rows))
    height = 0.8 / len(sizes)
    for i, size in enumerate(sizes):
        by_name = {r["candidate"]: r["hit_get"]["median"] for r in rows if r["size"] == size}
        ys = [n + i * height for n in range(len(names))]
        values = [max(by_name.get(name, 0.0), 0.1) for name in names]
        ax.barh(ys, values, height=height, label=f"{size:,} entries")
    ax.set_yticks([n + 0.4 - height / 2 for n in range(len(names))], names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    _plain_log_ticks(ax)
    ax.set_xlabel("ns per c.get(k) hit, median, loop included (log scale, lower is better)")
    ax.set_title("Cache hit cost")
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")


def _bars_panel(ax: Any, title: str, labels: list[str], values: list[float], xlabel: str, log: bool) -> None:
    colors = ["tab:orange" if "fastsess" in label else "tab:blue" for label in labels]  # ours stand out
    ax.barh(range(len(labels)), values, color=colors)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
        _plain_log_ticks(ax)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", which="both", alpha=0.3)
    for y, v in enumerate(values):
        ax.annotate(f"{v:,.1f}", (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize="small")


def write_plot(report: dict[str, Any], path: str | Path) -> Path:
    """Draw every section present in ``report`` into one PNG at ``path`` and return it.

    Raises:
        ConfigError: matplotlib is not installed.
    """
    plt = require_pyplot()
    panels: list[tuple[str, Any]] = []
    if "cache" in report:
        panels.append(("cache", report["cache"]))
    for name, section in report.get("panels", {}).items():
        panels.append((name, section))
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 4.5 * len(panels) + 1), squeeze=False)
    for ax, (name, section) in zip(axes[:, 0], panels, strict=True):
        if name == "cache":
            _cache_panel(ax, section)
        else:
            _bars_panel(ax, section["title"], section["labels"], section["values"], section["xlabel"], section.get("log", False))
    fig.suptitle(f"fastsess {report.get('version', '')} benchmark ({report.get('implementation', '?')} core)")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
