"""``MemoryStore``: sessions in this process only, on the compiled cache core.

For tests, development and single-process apps.  Sessions are kept as decoded
Python objects, each with its TTL, in a ``LocalCache``; when ``max_sessions``
is reached a session is evicted (CLOCK: the oldest one not read since it was
stored or last given a second chance), and so lost: size it for your traffic, or use Redis.  Thread-safe.

``save`` stores the data as ``RedisStore`` would load it back: it encodes the
session with the default msgpack serializer, with the same checks and limits
(``TypeError`` for a set, an object, a tuple dict key or a raw ExtType;
``SessionTooLarge`` over 16 MiB or 1,000,000 values; ``InvalidSessionId`` for a
hand-set id), and keeps the decoded copy, which shares nothing with the
caller's session.
``load`` hands back a shallow copy, as the Redis-backed stores' caches do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from .._core.conflict import OnConflict, check_on_conflict, rebase, replace
from .._core.keys import check_session_id, is_valid_session_id, new_session_id
from .._core.ops import mark_saved, needs_write, prepare_write, roll_back
from .._core.principals import MemoryIndex
from .._core.store import DEFAULT_PREFIX, DEFAULT_REFRESH_FRACTION, DEFAULT_TTL
from ..cache import LocalCache
from ..crypto import Encryption, check_encryption
from ..serializers import MsgpackSerializer
from ..session import Session, check_ttl
from .base import SessionStore

DEFAULT_MAX_SESSIONS = 100_000
# The ``_base`` of the sessions this store hands out: they were loaded (their saves are
# checked by version), unlike a ``Session`` built by hand (``_base`` None).
LOADED = ("m", b"", "")


class MemoryStore(SessionStore):
    """An in-process session store.

    ``clock`` (default ``time.time``) gives the seconds that time the sessions: their
    expiry, ``refreshed_at`` and the refresh decision of ``save``.  ``encryption`` is
    accepted and checked as by the Redis stores, so code can switch stores, but it
    changes nothing: sessions never leave this process.  ``on_conflict``
    (``"merge"``, ``"raise"`` or a callable): what ``save`` does with a key that
    another request changed too since this session was loaded (see ``RedisStore``).

    Raises:
        ConfigError: invalid ``ttl``, ``refresh_fraction``, ``prefix``, ``encryption`` or
            ``on_conflict``.
        ValueError: ``max_sessions`` < 1.
    """

    def __init__(
        self,
        *,
        ttl: int = DEFAULT_TTL,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        prefix: str = DEFAULT_PREFIX,
        refresh_fraction: float = DEFAULT_REFRESH_FRACTION,
        clock: Callable[[], float] | None = None,
        encryption: Encryption | None = None,
        on_conflict: OnConflict = "merge",
    ) -> None:
        super().__init__(prefix=prefix, ttl=ttl, refresh_fraction=refresh_fraction, clock=clock)
        # accepted and checked like the Redis stores' (code can switch stores), but nothing
        # leaves this process, so nothing is encrypted
        self.encryption = check_encryption(encryption)
        self.on_conflict = check_on_conflict(on_conflict)
        # Without a clock of its own the cache keeps its (faster) coarse monotonic one.
        timer = {} if clock is None else {"timer": clock}
        self._sessions: LocalCache[str, Any] = LocalCache(max_size=max_sessions, ttl=float(self.ttl), **timer)
        self._codec = MsgpackSerializer()
        self._write_lock = threading.Lock()  # check-then-write of save/touch/regenerate; loads take none
        self._principals = MemoryIndex(self._sessions.__contains__)  # under _write_lock

    def load(self, session_id: str) -> Session | None:
        """A copy of the stored session, or None. O(1), no serialization."""
        if type(session_id) is not str:
            return None
        # No id check first: every stored id passed one when it was saved, so a malformed
        # one is simply not found (the lookup is cheaper than the pattern match).
        stored = self._sessions.get(session_id)
        return None if stored is None else stored.copy()

    def save(self, session: Session) -> bool:
        """Store a detached copy of ``session`` if it needs writing; True if it did.

        A session saved before is written only if it still exists (False if deleted or
        expired meanwhile).  If another request saved it since this one was loaded (its
        version moved on), this request's changes are re-applied on the stored session
        (``on_conflict`` decides keys changed on both sides), under the store's lock.

        Raises:
            ConcurrentModification: ``on_conflict="raise"`` and a key changed on both sides
                (nothing written, the session unchanged).
            TypeError: the session holds a value msgpack cannot store or read back
                (the session is unchanged).
            SessionTooLarge: over the serializer's limits (the session is unchanged).
            InvalidSessionId: ``session.id`` is not a fastsess id.
        """
        check_session_id(session)
        t = self.clock()
        if not needs_write(session, t, self.refresh_fraction):
            return False
        with self._write_lock:
            return self._save_locked(session, t)

    def _save_locked(self, session: Session, t: float) -> bool:
        if session.new:
            while session.id in self._sessions:  # SET NX: never overwrite another session
                session.id = new_session_id()
        else:
            stored = self._sessions.get(session.id)
            if stored is None:
                return False  # deleted or expired meanwhile: never resurrect it
            if session._base is None:  # not loaded from a store: replaces the stored one whole
                replace(session, stored)
            elif stored.version != session.version:  # saved by another request since loaded
                rebase(session, stored.copy(), self.on_conflict)
        self._principals.before_write(session, t)  # a bound session: its index entry first
        old = prepare_write(session, t)
        try:
            data = self._codec.encode_checked(session)[1]  # validates and detaches, as Redis would
        except BaseException:
            roll_back(session, old)
            raise
        snapshot = Session._restore(session.id, data, session.ttl, session.created_at, session.refreshed_at, session.version)
        snapshot._base = session._base = LOADED  # what loads hand out: checked by version
        self._sessions.set(session.id, snapshot, ttl=float(session.ttl))
        if session.new:  # as the Redis stores do after a first write (a delete_all may have run since bind)
            self._principals.after_new_key(session)
        mark_saved(session, t)
        return True

    def delete(self, session_id: str) -> bool:
        """Remove the session; True if it existed."""
        return is_valid_session_id(session_id) and self._sessions.delete(session_id)

    def touch(self, session_id: str, ttl: int | None = None) -> bool:
        """Restart the session's lifetime with ``ttl`` (default: the store's); True if it exists.

        Raises:
            ConfigError: ``ttl`` is not an int from 1 to ``MAX_TTL``.
        """
        if not is_valid_session_id(session_id):
            return False  # a malformed id is answered before anything else, bad ttl included
        seconds = self.ttl if ttl is None else check_ttl(ttl)
        with self._write_lock:
            stored = self._sessions.get(session_id)
            if stored is None:
                return False
            self._sessions.set(session_id, stored, ttl=float(seconds))
        return True

    def exists(self, session_id: str) -> bool:
        """True if the session is stored and not expired."""
        return is_valid_session_id(session_id) and session_id in self._sessions

    def regenerate(self, session: Session) -> Session:
        """Give ``session`` a new id, store it there and drop the old id.  If another request
        saved the session since this one was loaded, this request's changes are re-applied
        on the stored session first (``on_conflict`` decides keys changed on both sides).
        A session deleted or expired meanwhile is not re-created: ``session`` is left as it
        was, old id included (its next save returns False).

        Raises:
            ConcurrentModification: ``on_conflict="raise"`` and a key changed on both sides.
            TypeError, SessionTooLarge: as ``save`` (id and state unchanged).
            InvalidSessionId: a saved session whose ``id`` is not a fastsess id.
        """
        old_id, was_saved = session.id, not session.new
        if was_saved:
            check_session_id(session)
        state = (
            session.new, session._modified, *session._tracking(), session._data, session.version,
            session.created_at, session.refreshed_at, session._base,
        )
        session.id = new_session_id()
        if not was_saved:
            return session
        try:
            with self._write_lock:
                stored = self._sessions.get(old_id)
                if stored is None:  # deleted or expired meanwhile: never re-created under a new id
                    session.id = old_id
                    return session
                if session._base is not None and stored.version != session.version:
                    # saved by another request since loaded: move what it holds plus this request's changes
                    rebase(session, stored.copy(), self.on_conflict)
                session.new = True  # written like a first save: NX under the new id
                session.mark_for_save()
                self._save_locked(session, self.clock())
                self._sessions.delete(old_id)
        except BaseException:
            session.id = old_id
            (
                session.new, session._modified, session._changes, session._untracked, session._data, session.version,
                session.created_at, session.refreshed_at, session._base,
            ) = state
            raise
        return session

    def bind(self, session: Session, principal: str) -> None:
        """Record ``session`` under ``principal`` (and the principal in its data: save it next).

        Raises:
            TypeError, ValueError: an invalid principal.
            InvalidSessionId: ``session.id`` is not a fastsess id.
        """
        with self._write_lock:
            self._principals.bind(session, principal, self.clock())

    def sessions_of(self, principal: str) -> list[str]:
        """The ids of ``principal``'s live sessions.

        Raises:
            TypeError, ValueError: an invalid principal.
        """
        with self._write_lock:
            return self._principals.sessions_of(principal)

    def delete_all(self, principal: str, except_id: str | None = None) -> int:
        """Delete ``principal``'s sessions but ``except_id``; returns how many were deleted.

        Raises:
            TypeError, ValueError: an invalid principal.
        """
        with self._write_lock:
            return sum(self._sessions.delete(i) for i in self._principals.take(principal, except_id))

    def iter_ids(self) -> Iterator[str]:
        """The ids of the live sessions (a snapshot)."""
        return iter(self._sessions.keys())

    def count(self) -> int:
        """How many live sessions are stored. O(1) amortized."""
        return len(self._sessions)

    def clear(self) -> int:
        """Drop every session; returns how many there were."""
        n = len(self._sessions)
        self._sessions.clear()
        return n
