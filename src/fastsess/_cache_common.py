"""Pieces shared by the compiled cache core and its pure-Python twin.

Both ``_lru.pyx`` and ``_lru_py.py`` import from here so that argument checking,
error messages and the ``CacheStats`` type are defined once.
"""

from __future__ import annotations

import math
import operator
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
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
    """Validate a time-to-live in seconds (or a ``timedelta``) and return it as a float.

    ``0`` is allowed (entries expire at once) and so is ``math.inf`` (never).

    Raises:
        ValueError: not a real number or ``timedelta``, NaN, or negative.
    """
    if type(ttl) is float and ttl >= 0.0:  # the per-entry ``set(..., ttl=)`` fast path; NaN fails >=
        return ttl
    if isinstance(ttl, timedelta):
        ttl = ttl.total_seconds()
    if not _is_real(ttl) or math.isnan(ttl):
        raise ValueError(f"{name} must be a number of seconds, not {ttl!r}")
    if ttl < 0:
        raise ValueError(f"{name} must be >= 0, got {ttl!r}")
    return float(ttl)


def check_item_size(size: Any, maxsize: float) -> int | float:
    """Validate what a ``getsizeof`` callable returned for one value.

    Integers (anything with ``__index__``) come back as an exact ``int``, other
    real numbers as a ``float``, so that the caches' size arithmetic never runs
    user code and never overflows.

    Raises:
        TypeError: the size is not a real number.
        ValueError: the size is NaN, negative or larger than ``maxsize`` ("value too large").
    """
    if type(size) is not int:
        try:
            size = int(operator.index(size))
        except TypeError:
            if not _is_real(size):
                raise TypeError(f"getsizeof must return a number, not {size!r}") from None
            size = float(size)
            if math.isnan(size):
                raise ValueError("value size must be a number, not NaN") from None
    if size < 0:
        raise ValueError("value size must be non-negative")
    if size > maxsize:
        raise ValueError("value too large")
    return size  # type: ignore[no-any-return]


def timer_seconds(value: Any) -> float:
    """Convert what a cache's timer returned to seconds: numbers as they are, datetimes by ``timestamp()``.

    Raises:
        TypeError: the timer returned something else.
    """
    if type(value) is float:
        return value
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, Real):
        return float(value)
    raise TypeError(f"timer must return a number or a datetime, not {type(value).__name__}")


# Hooks a cachetools subclass may override; the caches take their fast paths only
# while none of the relevant ones is overridden (decided once per class).
HOOK_GETITEM = 1
HOOK_CONTAINS = 2
HOOK_DELITEM = 4
HOOK_POPITEM = 8
HOOK_EXPIRE = 16
_HOOKS = (
    ("__getitem__", HOOK_GETITEM),
    ("__contains__", HOOK_CONTAINS),
    ("__delitem__", HOOK_DELITEM),
    ("popitem", HOOK_POPITEM),
    ("expire", HOOK_EXPIRE),
)


def overridden_hooks(cls: type, bases: tuple[type, ...]) -> int:
    """Bit set of the ``HOOK_*`` methods ``cls`` overrides relative to the first of ``bases`` it derives from."""
    base = next(klass for klass in cls.__mro__ if klass in bases)
    flags = 0
    for name, bit in _HOOKS:
        ours = getattr(base, name, None)
        if ours is not None and getattr(cls, name, None) is not ours:  # (LRUCache has no expire to override)
            flags |= bit
    return flags


_repr_running: set[tuple[int, int]] = set()


def mapping_repr(cache: Any, items: Callable[[], dict[Any, Any]]) -> str:
    """``Name({key: value, ...}, maxsize=..., currsize=...)``, exactly as cachetools prints it.

    A cache met again inside its own repr prints its items as ``{...}`` (cachetools
    gets that from its dict's own recursion guard; ours builds a new dict each time).
    """
    key = (id(cache), threading.get_ident())
    if key in _repr_running:
        shown = "{...}"
    else:
        _repr_running.add(key)
        try:
            shown = repr(items())
        finally:
            _repr_running.discard(key)
    return f"{type(cache).__name__}({shown}, maxsize={cache.maxsize!r}, currsize={cache.currsize!r})"
