"""Pieces shared by the compiled cache core and its pure-Python twin.

Both ``_lru.pyx`` and ``_lru_py.py`` import from here so that argument checking,
error messages and the ``CacheStats`` type are defined once.
"""

from __future__ import annotations

import math
import operator
import sys
from numbers import Real
from typing import Any, NamedTuple


class CacheStats(NamedTuple):
    """A point-in-time snapshot of a ``LocalCache``'s counters.

    ``hit_rate`` is ``hits / (hits + misses)``, or ``0.0`` before any lookup.
    """

    hits: int
    misses: int
    evictions: int
    expirations: int
    size: int
    max_size: int
    hit_rate: float


def make_stats(hits: int, misses: int, evictions: int, expirations: int, size: int, max_size: int) -> CacheStats:
    """Build a ``CacheStats``, deriving ``hit_rate`` from ``hits`` and ``misses``."""
    lookups = hits + misses
    return CacheStats(hits, misses, evictions, expirations, size, max_size, hits / lookups if lookups else 0.0)


def _is_real(value: Any) -> bool:
    # bool is an int subclass, but ``ttl=True`` is always a mistake.
    return isinstance(value, Real) and not isinstance(value, bool)


def check_capacity(maxsize: Any, name: str = "maxsize", minimum: int = 0) -> int:
    """Validate a cache capacity and return it as a C-sized int.

    ``math.inf`` means unbounded (``sys.maxsize``).

    Raises:
        ValueError: not a real number, NaN, or below ``minimum``.
    """
    if not _is_real(maxsize) or math.isnan(maxsize):
        raise ValueError(f"{name} must be a number, not {maxsize!r}")
    if maxsize < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {maxsize!r}")
    if math.isinf(maxsize):
        return sys.maxsize
    return min(int(maxsize), sys.maxsize)


def check_ttl(ttl: Any, name: str = "ttl") -> float:
    """Validate a time-to-live in seconds and return it as a float.

    ``0`` is allowed (entries expire at once) and so is ``math.inf`` (never).

    Raises:
        ValueError: not a real number, NaN, or negative.
    """
    if type(ttl) is float and ttl >= 0.0:  # the per-entry ``set(..., ttl=)`` fast path; NaN fails >=
        return ttl
    if not _is_real(ttl) or math.isnan(ttl):
        raise ValueError(f"{name} must be a number of seconds, not {ttl!r}")
    if ttl < 0:
        raise ValueError(f"{name} must be >= 0, got {ttl!r}")
    return float(ttl)


def check_item_size(size: Any, maxsize: int) -> int:
    """Validate what a ``getsizeof`` callable returned for one value.

    Raises:
        TypeError: the size is not an integer.
        ValueError: the size is negative or larger than ``maxsize`` ("value too large").
    """
    size = operator.index(size)
    if size < 0:
        raise ValueError("value size must be non-negative")
    if size > maxsize:
        raise ValueError("value too large")
    return size
