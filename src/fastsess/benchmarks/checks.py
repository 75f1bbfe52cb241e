"""The project's performance targets as data, and one way to print a measured value.

A check is a JSON-ready dict::

    {"value": 1.1504, "unit": "x", "op": "<=", "target": 1.15, "ok": True,
     "band": [1.09, 1.21] or None, "shown": "1.15x", "goal": "<= 1.15x"}

``value``, ``target`` and ``band`` are numbers.  ``ok`` is decided on the value
*as printed* (``display``): a value printed as ``1.15x`` against ``<= 1.15x``
is met, so the verdict never contradicts the figure next to it.  Every figure in
a report, table or check alike, goes through ``fmt``, so one quantity is never
printed two ways (ratios below 0.1 print as ``1/N``, never as ``0.00x``).
"""

from __future__ import annotations

import math
import operator
from typing import Any

OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


def display(value: float, unit: str) -> float:
    """``value`` rounded the way ``fmt`` prints it (the number a reader sees)."""
    if not math.isfinite(value):
        return value
    if unit == "x":
        if 0 < value < 0.1:
            return 1.0 / round(1.0 / value)
        return round(value, 2)
    if unit == "%":
        return round(value * 100, 1) / 100
    if unit == "ns":
        return round(value) if value >= 100 else round(value, 1)
    if unit == "us":
        return round(value, 2)
    if unit == "ms":
        return round(value, 3)
    return value


def fmt(value: float | None, unit: str) -> str:
    """One printed form per unit: ``1.15x``, ``1/313``, ``91.5%``, ``432 ns``, ``35.1 ns``, ``0.128 ms``."""
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "n/a"
    if unit == "x":
        if 0 < value < 0.1:
            return f"1/{round(1.0 / value):,}"
        return f"{value:.2f}x"
    if unit == "%":
        return f"{value * 100:.1f}%"
    if unit == "ns":
        return f"{value:,.0f} ns" if value >= 100 else f"{value:.1f} ns"
    if unit == "us":
        return f"{value:,.2f} us"
    if unit == "ms":
        return f"{value:.3f} ms"
    return f"{value:g}"


def check(value: float, op: str, target: float, unit: str, band: tuple[float, float] | None = None, note: str = "") -> dict[str, Any]:
    """A check of ``value`` against ``op target`` (see the module docstring).

    Raises:
        KeyError: ``op`` is not one of ``<=``, ``<``, ``>=``, ``>``.
    """
    ok = bool(OPS[op](display(value, unit), display(target, unit)))
    out: dict[str, Any] = {
        "value": float(value),
        "unit": unit,
        "op": op,
        "target": float(target),
        "ok": ok,
        "band": [float(band[0]), float(band[1])] if band is not None else None,
        "shown": fmt(value, unit),
        "goal": f"{op} {fmt(target, unit)}",
    }
    if note:
        out["note"] = note
    return out


def format_check(name: str, c: dict[str, Any]) -> str:
    """``[ok  ] name: 1.15x (target <= 1.15x)``, with the noise band when there is one."""
    mark = "ok  " if c["ok"] else "MISS"
    band = ""
    if c.get("band"):
        band = f", runs ranged {fmt(c['band'][0], c['unit'])} to {fmt(c['band'][1], c['unit'])}"
    note = f"; {c['note']}" if c.get("note") else ""
    return f"  [{mark}] {name}: {fmt(c['value'], c['unit'])} (target {c['op']} {fmt(c['target'], c['unit'])}{band}{note})"
