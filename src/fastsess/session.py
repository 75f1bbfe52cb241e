"""``Session``: the mapping a request reads and writes.

A ``Session`` is a ``MutableMapping[str, Any]`` plus bookkeeping the stores
use: ``id``, ``created_at``, ``ttl``, ``new`` (never saved), ``modified`` (a
save must write), ``accessed`` (something was read) and ``version`` (how many
saves wrote it).

Any mutation through the mapping API sets ``modified``, including replacing a
nested container (``session["cart"] = [...]``).  Mutating a nested container
in place (``session["cart"].append(x)``) cannot be seen: set
``session.modified = True`` yourself, as with Django and Flask sessions.

``ttl`` is validated wherever it is set (constructor or ``session.ttl = ...``):
a whole number of seconds from 1 to ``MAX_TTL`` (2**31 - 1, about 68 years),
else ``ConfigError`` (a ``ValueError``) -- never a Redis error at ``save``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from .errors import ConfigError

_MISSING: Any = object()

MAX_TTL = 2**31 - 1  # seconds (about 68 years); far below what Redis EXPIRE accepts


def check_ttl(ttl: Any, name: str = "ttl") -> int:
    """A session TTL in whole seconds (Redis EXPIRE granularity), 1 to ``MAX_TTL``.

    Raises:
        ConfigError: not an int (bools and floats included) or out of range.
    """
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL:
        raise ConfigError(f"{name} must be a whole number of seconds from 1 to {MAX_TTL}, not {ttl!r}")
    return int(ttl)


class Session(MutableMapping[str, Any]):
    """One user's session data and its metadata.

    Construct sessions through a store (``store.create()``/``store.load()``);
    the constructor is public for tests and custom stores.  Copying is cheap
    and shallow (``copy()``).

    Raises:
        ConfigError: ``ttl`` is not an int from 1 to ``MAX_TTL`` (also on ``session.ttl = ...``).
    """

    __slots__ = ("_data", "_ttl", "accessed", "created_at", "id", "modified", "new", "refreshed_at", "version")

    def __init__(
        self,
        id: str,
        data: Mapping[str, Any] | None = None,
        *,
        ttl: int,
        created_at: float | None = None,
        new: bool = True,
        version: int = 0,
        refreshed_at: float | None = None,
    ) -> None:
        now = time.time()
        self.id = id
        self._data: dict[str, Any] = dict(data) if data else {}
        self.ttl = ttl
        self.created_at = now if created_at is None else created_at
        self.refreshed_at = self.created_at if refreshed_at is None else refreshed_at
        self.new = new
        self.version = version
        self.modified = False
        self.accessed = False

    @classmethod
    def _restore(
        cls, id: str, data: dict[str, Any], ttl: int, created_at: float, refreshed_at: float, version: int
    ) -> Session:
        """Build a loaded (not new, unmodified) session that takes ownership of ``data``. No checks."""
        self = object.__new__(cls)
        self.id = id
        self._data = data
        self._ttl = ttl
        self.created_at = created_at
        self.refreshed_at = refreshed_at
        self.version = version
        self.new = self.modified = self.accessed = False
        return self

    def copy(self) -> Session:
        """A shallow copy with the same id and metadata (nested values are shared)."""
        other = object.__new__(Session)
        other.id = self.id
        other._data = self._data.copy()
        other._ttl = self._ttl
        other.created_at = self.created_at
        other.refreshed_at = self.refreshed_at
        other.version = self.version
        other.new = self.new
        other.modified = self.modified
        other.accessed = False
        return other

    @property
    def ttl(self) -> int:
        """Lifetime in seconds, applied at the next write (and by ``touch``)."""
        return self._ttl

    @ttl.setter
    def ttl(self, value: int) -> None:
        """Set the lifetime. Raises ConfigError (a ValueError) unless 1 <= value <= MAX_TTL (an int)."""
        self._ttl = check_ttl(value)

    @property
    def data(self) -> dict[str, Any]:
        """The underlying dict (read it freely; mutate it only with ``modified = True``)."""
        return self._data

    # -- mapping API: reads mark accessed, writes mark modified ------------------

    def __getitem__(self, key: str) -> Any:
        self.accessed = True
        return self._data[key]

    def get(self, key: str, default: Any = None) -> Any:
        """``session[key]`` or ``default``."""
        self.accessed = True
        return self._data.get(key, default)

    def __contains__(self, key: object) -> bool:
        self.accessed = True
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        self.accessed = True
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise TypeError(f"session keys must be str, not {type(key).__name__}")
        self._data[key] = value
        self.modified = True

    def __delitem__(self, key: str) -> None:
        del self._data[key]
        self.modified = True

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value (or ``default``); marks modified if removed."""
        if key in self._data:
            self.modified = True
            return self._data.pop(key)
        if default is _MISSING:
            raise KeyError(key)
        return default

    def setdefault(self, key: str, default: Any = None) -> Any:
        """``session[key]``, storing ``default`` first if absent (which marks modified)."""
        if key not in self._data:
            self[key] = default
        return self._data[key]

    def clear(self) -> None:
        """Remove every key (marks modified when there was anything to remove)."""
        if self._data:
            self._data.clear()
            self.modified = True

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Session):
            return self.id == other.id and self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        # never print the data or the full id: both are secrets in a log
        shown = self.id[:6] if isinstance(self.id, str) else repr(self.id)
        return f"<Session {shown}... keys={len(self._data)} new={self.new} modified={self.modified} v{self.version}>"
