"""The contract every store fulfils, and the defaults they share (defined here, once).

Decisions, identical for every store:

* ``create()`` returns a new, unsaved session and writes nothing; the first
  ``save()`` writes it with SET NX (an id collision gets a fresh id, never an
  overwrite of someone else's session).
* Session ids are ``secrets.token_urlsafe(32)``: 43 characters of
  ``[A-Za-z0-9_-]``.  Anything else given to ``load``/``exists``/``delete``/
  ``touch`` returns None/False before any I/O; a session whose ``id`` is not
  such an id (set by hand, or None) makes ``save``/``regenerate`` raise
  ``InvalidSessionId`` before any I/O.
* TTLs are whole seconds from 1 to ``MAX_TTL`` (about 68 years), checked where
  they are set (store ``ttl``, ``create(ttl=)``, ``session.ttl = ...``,
  ``touch(ttl=)``): ``ConfigError``, a ``ValueError``.
* The key prefix must be a non-empty str that encodes to UTF-8 (``ConfigError``):
  an empty prefix would make every 43-character key look like a session.
* ``save()`` writes only when the session was modified (a new session
  created with data counts as modified) or its TTL refresh is due (``refresh_fraction`` of its TTL has passed since the last
  write), in one round trip.  It never resurrects a session that was deleted
  or expired meanwhile (SET XX): it returns False instead.
* ``regenerate(session)`` gives the session a new id, writes it under the new
  id and deletes the old one; the same ``Session`` object is returned.
"""

from __future__ import annotations

import re
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, InvalidSessionId
from ..session import MAX_TTL, Session, check_ttl

__all__ = [
    "DEFAULT_PREFIX", "DEFAULT_REFRESH_FRACTION", "DEFAULT_TTL", "MAX_TTL", "SessionStore", "StoreBase",
    "check_prefix", "check_refresh_fraction", "check_session_id", "check_ttl", "is_valid_session_id",
    "new_session_id", "now",
]

if TYPE_CHECKING:  # typing.Self needs Python 3.11; type checkers know typing_extensions
    from typing_extensions import Self

DEFAULT_TTL = 1800  # seconds: 30 minutes, like most frameworks' session defaults
DEFAULT_PREFIX = "fastsess:"
DEFAULT_REFRESH_FRACTION = 0.5  # an unmodified session is rewritten once half its TTL has passed

_ID = re.compile(r"[A-Za-z0-9_-]{43}\Z")


def new_session_id() -> str:
    """A fresh 256-bit session id (``secrets.token_urlsafe(32)``, 43 characters)."""
    return secrets.token_urlsafe(32)


def is_valid_session_id(session_id: object) -> bool:
    """True if ``session_id`` has the form fastsess issues (no I/O, ~100 ns)."""
    return type(session_id) is str and _ID.match(session_id) is not None


def check_session_id(session: Session) -> None:
    """Refuse to write ``session`` under an id fastsess could not have issued.

    Raises:
        InvalidSessionId: ``session.id`` is not a 43-character URL-safe id (e.g. None,
            or ``"../x*"``, which would dodge ``iter_ids``/``clear``).
    """
    session_id = session.id
    if not is_valid_session_id(session_id):
        shown = f"a str of length {len(session_id)}" if isinstance(session_id, str) else type(session_id).__name__
        raise InvalidSessionId(
            f"session.id is not a fastsess session id ({shown}; expected 43 URL-safe characters): "
            "take ids from store.create() or store.regenerate()"
        )


def check_prefix(prefix: Any) -> str:
    """Validate a key prefix: a non-empty str that encodes to UTF-8.

    Raises:
        ConfigError: empty, not a str, or not encodable (e.g. a lone surrogate).
    """
    if not isinstance(prefix, str):
        raise ConfigError(f"prefix must be a str, not {prefix!r}")
    if not prefix:
        raise ConfigError("prefix must not be empty: clear()/iter_ids() could not tell sessions from other keys")
    try:
        prefix.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(f"prefix must be valid Unicode (it is sent to Redis as UTF-8): {exc}") from None
    return prefix


def check_refresh_fraction(fraction: Any) -> float:
    """Validate ``refresh_fraction`` (0 < f <= 1).

    Raises:
        ConfigError: out of range or not a number.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ConfigError(f"refresh_fraction must be in (0, 1], not {fraction!r}")
    return float(fraction)


class StoreBase:
    """State and helpers shared by the sync and asyncio stores (no I/O here)."""

    def __init__(self, *, prefix: str, ttl: int, refresh_fraction: float) -> None:
        self.prefix = check_prefix(prefix)
        self.ttl = check_ttl(ttl)
        self.refresh_fraction = check_refresh_fraction(refresh_fraction)

    def create(self, data: Mapping[str, Any] | None = None, ttl: int | None = None) -> Session:
        """A new, unsaved session (``new=True``); nothing is written until ``save``.

        Raises:
            ConfigError: ``ttl`` is not an int from 1 to ``MAX_TTL``.
        """
        session = Session(new_session_id(), data, ttl=self.ttl if ttl is None else check_ttl(ttl))
        session.modified = bool(data)
        return session

    def key(self, session_id: str) -> str:
        """The storage key of ``session_id`` (``prefix + id``)."""
        return self.prefix + session_id

    def needs_write(self, session: Session, now: float) -> bool:
        """Whether ``save`` must write: modified, or saved before and its TTL refresh is due.

        A new session nobody wrote to is not written: anonymous traffic costs no write.
        """
        if session.modified:
            return True
        return not session.new and now - session.refreshed_at >= session.ttl * self.refresh_fraction

    @staticmethod
    def mark_saved(session: Session, now: float) -> None:
        """Update ``session``'s bookkeeping after a successful write."""
        session.new = False
        session.modified = False
        session.refreshed_at = now

    @staticmethod
    def prepare_write(session: Session, now: float) -> tuple[int, float]:
        """Bump version and refresh time before encoding; returns the old values to roll back."""
        old = (session.version, session.refreshed_at)
        session.version += 1
        session.refreshed_at = now
        return old

    @staticmethod
    def roll_back(session: Session, old: tuple[int, float]) -> None:
        """Undo ``prepare_write`` after a failed or refused write."""
        session.version, session.refreshed_at = old


class SessionStore(StoreBase, ABC):
    """The synchronous store API; every store implements these with the same behaviour."""

    @abstractmethod
    def load(self, session_id: str) -> Session | None:
        """The stored session, or None if absent, expired or ``session_id`` is malformed.

        Raises:
            SessionCorrupt: the stored bytes are not a fastsess session.
            StoreUnavailable: the backend failed.
        """

    @abstractmethod
    def save(self, session: Session) -> bool:
        """Write ``session`` if needed (see module doc); True if it wrote.

        Raises:
            StoreUnavailable: the backend failed (the session is left unsaved).
            TypeError: the session holds a value that cannot be stored or read back.
            SessionTooLarge: the session exceeds the serializer's size limits.
            InvalidSessionId: ``session.id`` is not a fastsess id.
        """

    @abstractmethod
    def delete(self, session_id: str) -> bool:
        """Remove the session; True if it existed. Malformed ids: False, no I/O."""

    @abstractmethod
    def touch(self, session_id: str, ttl: int | None = None) -> bool:
        """Reset the session's expiry to ``ttl`` (default: the store's); True if it exists.

        Raises:
            ConfigError: ``ttl`` is not an int from 1 to ``MAX_TTL``.
        """

    @abstractmethod
    def exists(self, session_id: str) -> bool:
        """True if a session is stored under ``session_id``. Malformed ids: False, no I/O."""

    @abstractmethod
    def regenerate(self, session: Session) -> Session:
        """Move ``session`` to a new id (same data), deleting the old one; returns ``session``.

        Call it after login (session-fixation defence).

        Raises:
            InvalidSessionId: a saved session whose ``id`` is not a fastsess id.
            TypeError, SessionTooLarge: as ``save``.
        """

    @abstractmethod
    def iter_ids(self) -> Iterator[str]:
        """Every stored session id (incremental, never blocks the backend)."""

    def count(self) -> int:
        """How many sessions are stored. O(n): it walks ``iter_ids``."""
        return sum(1 for _ in self.iter_ids())

    @abstractmethod
    def clear(self) -> int:
        """Delete every session of this store (this prefix only); returns how many."""

    def close(self) -> None:
        """Release resources the store owns (a client it created from a URL)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def now() -> float:
    """Wall-clock seconds (sessions outlive processes, so not a monotonic clock)."""
    return time.time()
