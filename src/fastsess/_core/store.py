"""``StoreBase``: the settings every store has, sync or asyncio, and ``create`` (no I/O)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigError
from ..session import Session, check_ttl
from .keys import KeySpace, new_session_id
from .ops import needs_write

DEFAULT_TTL = 1800  # seconds: 30 minutes, like most frameworks' session defaults
DEFAULT_PREFIX = "fastsess:"
DEFAULT_REFRESH_FRACTION = 0.5  # an unmodified session is rewritten once half its TTL has passed


def check_refresh_fraction(fraction: Any) -> float:
    """Validate ``refresh_fraction`` (0 < f <= 1).

    Raises:
        ConfigError: out of range or not a number.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ConfigError(f"refresh_fraction must be in (0, 1], not {fraction!r}")
    return float(fraction)


class StoreBase:
    """Prefix, TTL, refresh fraction and clock of a store (sync or asyncio).

    ``clock`` gives wall-clock seconds (sessions outlive processes, so not a monotonic
    clock): ``created_at``, ``refreshed_at`` and the refresh decision of ``save`` use it.
    Default ``time.time``; tests pass a fake one to move time without sleeping.

    Raises:
        ConfigError: an invalid prefix, ttl or refresh_fraction.
    """

    def __init__(self, *, prefix: str, ttl: int, refresh_fraction: float, clock: Callable[[], float] | None = None) -> None:
        self._keys = KeySpace(prefix)
        self.prefix = self._keys.prefix
        self.ttl = check_ttl(ttl)
        self.refresh_fraction = check_refresh_fraction(refresh_fraction)
        self.clock: Callable[[], float] = time.time if clock is None else clock

    def save_due(self, session: Session) -> bool:
        """Whether ``save(session)`` would write now (no I/O): ``session`` is modified, or
        was saved before and its TTL refresh is due (``refresh_fraction`` of its TTL has
        passed since it was last written).  False: ``save`` would return False without
        a Redis call, so a caller may skip it (the framework drop-ins do, on reads)."""
        return needs_write(session, self.clock(), self.refresh_fraction)

    def create(self, data: Mapping[str, Any] | None = None, ttl: int | None = None) -> Session:
        """A new, unsaved session (``new=True``); nothing is written until ``save``.

        Raises:
            ConfigError: ``ttl`` is not an int from 1 to ``MAX_TTL``.
        """
        session = Session(new_session_id(), data, ttl=self.ttl if ttl is None else check_ttl(ttl), created_at=self.clock())
        session._modified = bool(data)
        return session
