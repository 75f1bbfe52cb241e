"""The asyncio store contract: ``fastsess.stores.base.SessionStore`` with coroutines."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING

from ..._core.store import StoreBase
from ...session import Session

if TYPE_CHECKING:  # typing.Self needs Python 3.11; type checkers know typing_extensions
    from typing_extensions import Self


class AsyncSessionStore(StoreBase, ABC):
    """Same methods and behaviour as ``SessionStore``; I/O methods are awaitable.

    ``create`` stays synchronous: it does no I/O.
    """

    @abstractmethod
    async def load(self, session_id: str) -> Session | None:
        """See ``SessionStore.load``."""

    @abstractmethod
    async def save(self, session: Session) -> bool:
        """See ``SessionStore.save``."""

    @abstractmethod
    async def delete(self, session_id: str) -> bool:
        """See ``SessionStore.delete``."""

    @abstractmethod
    async def touch(self, session_id: str, ttl: int | None = None) -> bool:
        """See ``SessionStore.touch``."""

    @abstractmethod
    async def exists(self, session_id: str) -> bool:
        """See ``SessionStore.exists``."""

    @abstractmethod
    async def regenerate(self, session: Session) -> Session:
        """See ``SessionStore.regenerate``."""

    @abstractmethod
    async def bind(self, session: Session, principal: str) -> None:
        """See ``SessionStore.bind``."""

    @abstractmethod
    async def sessions_of(self, principal: str) -> list[str]:
        """See ``SessionStore.sessions_of``."""

    @abstractmethod
    async def delete_all(self, principal: str, except_id: str | None = None) -> int:
        """See ``SessionStore.delete_all``."""

    @abstractmethod
    def iter_ids(self) -> AsyncIterator[str]:
        """See ``SessionStore.iter_ids`` (an async iterator)."""

    async def count(self) -> int:
        """How many sessions are stored. O(n): it walks ``iter_ids``."""
        n = 0
        async for _ in self.iter_ids():
            n += 1
        return n

    @abstractmethod
    async def clear(self) -> int:
        """See ``SessionStore.clear``."""

    async def close(self) -> None:
        """Release resources the store owns."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
