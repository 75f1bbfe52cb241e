"""The contract every store fulfils (the sync API), and the defaults they share.

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
  or expired meanwhile (SET XX, or the compare-and-set script): it returns False instead; a loaded session is
  saved by compare-and-set and re-applies its changes if another request wrote first.
* ``regenerate(session)`` gives the session a new id, writes it under the new
  id and deletes the old one; the same ``Session`` object is returned.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING

from .._core.keys import check_prefix, check_session_id, is_valid_session_id, new_session_id
from .._core.principals import PRINCIPAL_KEY, principal_mark
from .._core.store import DEFAULT_PREFIX, DEFAULT_REFRESH_FRACTION, DEFAULT_TTL, StoreBase, check_refresh_fraction
from ..session import MAX_TTL, Session, check_ttl

__all__ = [
    "DEFAULT_PREFIX", "DEFAULT_REFRESH_FRACTION", "DEFAULT_TTL", "MAX_TTL", "PRINCIPAL_KEY", "SessionStore", "StoreBase",
    "check_prefix", "check_refresh_fraction", "check_session_id", "check_ttl", "is_valid_session_id",
    "new_session_id", "principal_mark",
]

if TYPE_CHECKING:  # typing.Self needs Python 3.11; type checkers know typing_extensions
    from typing_extensions import Self


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
    def bind(self, session: Session, principal: str) -> None:
        """Record ``session`` under ``principal`` (a user id, as a str) for ``sessions_of`` and
        ``delete_all``.  Also stores the principal in the session's data (under
        ``PRINCIPAL_KEY``), so the next ``save`` writes it and later saves and
        ``regenerate`` keep the index right: bind, then save.

        Raises:
            TypeError: ``principal`` is not a str.
            ValueError: ``principal`` is empty, longer than 1024 characters or not valid Unicode.
            InvalidSessionId: ``session.id`` is not a fastsess id.
            StoreUnavailable: the backend failed.
        """

    @abstractmethod
    def sessions_of(self, principal: str) -> list[str]:
        """The ids of ``principal``'s live sessions (bound, not deleted or expired), in no order.

        Raises:
            TypeError, ValueError: an invalid principal (as ``bind``).
            StoreUnavailable: the backend failed.
        """

    @abstractmethod
    def delete_all(self, principal: str, except_id: str | None = None) -> int:
        """Delete every session bound to ``principal`` but ``except_id`` ("log out everywhere",
        e.g. after a password change, keeping the current session); clustered stores drop
        every node's cached copies.  Returns how many sessions were deleted.

        Raises:
            TypeError, ValueError: an invalid principal (as ``bind``).
            StoreUnavailable: the backend failed (some sessions may already be gone; call again).
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

