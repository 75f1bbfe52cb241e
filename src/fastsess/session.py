"""``Session``: the mapping a request reads and writes.

A ``Session`` is a ``MutableMapping[str, Any]`` plus bookkeeping the stores
use: ``id``, ``created_at``, ``ttl``, ``new`` (never saved), ``modified`` (a
save must write), ``accessed`` (something was read) and ``version`` (how many
saves wrote it).

Any mutation through the mapping API sets ``modified``, including replacing a
nested container (``session["cart"] = [...]``).  Mutating a nested container
in place (``session["cart"].append(x)``) cannot be seen: set
``session.modified = True`` yourself, as with Django and Flask sessions.

For concurrent requests a session also records which top-level keys this request
set or deleted (and what each held before its first change here): when ``save``
finds that another request wrote the session since it was loaded, it reloads it
and re-applies exactly these changes (``changes``).  ``modified = True`` set by
hand means "changed in a way the mapping could not see": on a conflict every key
this session holds then counts as set by this request.

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


class _Missing:
    """The type of ``MISSING``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
"""A key that is absent (in ``Session.changes`` and in ``on_conflict`` merge functions)."""

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

    __slots__ = (
        "_base", "_changes", "_data", "_modified", "_ttl", "_untracked", "accessed", "created_at", "id", "new",
        "refreshed_at", "version",
    )

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
        self._modified = self._untracked = False
        self._changes: dict[str, Any] | None = None
        self._base: Any = None
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
        self.new = self._modified = self._untracked = self.accessed = False
        self._changes = self._base = None
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
        other._base = self._base
        other.accessed = False
        # An unmodified session has no changes: its copy (the cache's hand-outs) leaves
        # ``_changes``/``_untracked`` unset, read only through ``_tracking``/``_modified``.
        if self._modified:
            other._modified = True
            changes, other._untracked = self._tracking()
            other._changes = None if changes is None else changes.copy()
        else:
            other._modified = False
        return other

    def _tracking(self) -> tuple[dict[str, Any] | None, bool]:
        """The recorded changes and whether ``modified`` was set by hand (None, False for
        an unmodified session, whose copy may not hold them at all)."""
        if not self._modified:
            return None, False
        return self._changes, self._untracked

    @property
    def modified(self) -> bool:
        """True if ``save`` must write (a mutation, or set by hand); cleared by a save."""
        return self._modified

    @modified.setter
    def modified(self, value: bool) -> None:
        """Set by hand (``True``): changed in a way the mapping could not see (a nested value
        mutated in place); on a conflict every key this session holds counts as set here.
        ``False`` also forgets the recorded changes."""
        if not value or not self._modified:
            self._changes = None
        self._modified = self._untracked = bool(value)

    def mark_for_save(self) -> None:
        """Make the next ``save`` write although no key changed (to rewrite the session, e.g.
        with a new ``ttl``).  Unlike ``modified = True`` it claims no change of its own: if
        another request wrote the session meanwhile, this save re-applies nothing over it."""
        if not self._modified:
            self._changes, self._untracked = None, False
            self._modified = True

    @property
    def changes(self) -> dict[str, Any]:
        """The top-level keys this request set or deleted since the session was loaded or
        last saved, each mapped to the value it held before its first change here
        (``MISSING``: it did not exist).  A copy; the current values are the session's."""
        changes = self._tracking()[0]
        return {} if changes is None else dict(changes)

    def _record(self, key: str) -> None:
        """Note a change of ``key`` (its value before this request's first change of it)."""
        if not self._modified:  # the first change (``_changes``/``_untracked`` may be unset)
            self._changes = {key: self._data.get(key, MISSING)}
            self._untracked = False
            self._modified = True
            return
        changes = self._changes
        if changes is None:
            self._changes = {key: self._data.get(key, MISSING)}
        elif key not in changes:
            changes[key] = self._data.get(key, MISSING)

    def _saved(self) -> None:
        """Forget the changes (they are stored now)."""
        self._modified = self._untracked = False
        self._changes = None

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
        self._record(key)
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        if key not in self._data:
            raise KeyError(key)
        self._record(key)
        del self._data[key]

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value (or ``default``); marks modified if removed."""
        if key in self._data:
            self._record(key)
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
            for key in self._data:
                self._record(key)
            self._data.clear()

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
