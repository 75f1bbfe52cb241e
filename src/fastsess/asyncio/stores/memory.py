"""asyncio facade over ``fastsess.stores.memory.MemoryStore`` (no I/O, so no awaiting inside)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ...session import Session
from ...stores.memory import MemoryStore as SyncMemoryStore
from .base import AsyncSessionStore


class MemoryStore(AsyncSessionStore):
    """An in-process session store with the asyncio API; arguments as the sync ``MemoryStore``."""

    def __init__(self, **kwargs: Any) -> None:
        self._store = SyncMemoryStore(**kwargs)
        self.encryption = self._store.encryption  # checked, changes nothing (see the sync store)
        super().__init__(prefix=self._store.prefix, ttl=self._store.ttl, refresh_fraction=self._store.refresh_fraction, clock=self._store.clock)

    async def load(self, session_id: str) -> Session | None:
        """A copy of the stored session, or None."""
        return self._store.load(session_id)

    async def save(self, session: Session) -> bool:
        """Store a snapshot of ``session`` if it needs writing."""
        return self._store.save(session)

    async def delete(self, session_id: str) -> bool:
        """Remove the session; True if it existed."""
        return self._store.delete(session_id)

    async def touch(self, session_id: str, ttl: int | None = None) -> bool:
        """Restart the session's lifetime."""
        return self._store.touch(session_id, ttl)

    async def exists(self, session_id: str) -> bool:
        """True if the session is stored."""
        return self._store.exists(session_id)

    async def regenerate(self, session: Session) -> Session:
        """Move ``session`` to a new id."""
        return self._store.regenerate(session)

    async def bind(self, session: Session, principal: str) -> None:
        """Record ``session`` under ``principal``."""
        self._store.bind(session, principal)

    async def sessions_of(self, principal: str) -> list[str]:
        """The ids of ``principal``'s live sessions."""
        return self._store.sessions_of(principal)

    async def delete_all(self, principal: str, except_id: str | None = None) -> int:
        """Delete ``principal``'s sessions but ``except_id``."""
        return self._store.delete_all(principal, except_id)

    async def iter_ids(self) -> AsyncIterator[str]:
        """The live session ids."""
        for session_id in self._store.iter_ids():
            yield session_id

    async def count(self) -> int:
        """How many live sessions are stored."""
        return self._store.count()

    async def clear(self) -> int:
        """Drop every session."""
        return self._store.clear()
