"""A Django session engine that stores nothing: ``BENCH_SESSION=null`` in ``django_app.py``.

Every request sees the same session ``{"user": "ada", "n": 0}``; saving does nothing.
What it costs over no session at all is Django's own session machinery
(``SessionMiddleware`` and ``SessionBase``), which every backend pays: the floor
under any backend's cost.
"""

from __future__ import annotations

from typing import Any

from django.contrib.sessions.backends.base import SessionBase


class SessionStore(SessionBase):  # type: ignore[misc]
    """A session backend without storage (see the module doc)."""

    def load(self) -> dict[str, Any]:
        """The fixed session."""
        return {"user": "ada", "n": 0}

    def exists(self, session_key: str | None) -> bool:
        """Every key exists."""
        return True

    def create(self) -> None:
        """A fixed key, nothing stored."""
        self._session_key = "nullsessionkey0123456789abcdefgh"
        self.modified = True

    def save(self, must_create: bool = False) -> None:
        """Nothing to store."""
        if self.session_key is None:
            self.create()

    def delete(self, session_key: str | None = None) -> None:
        """Nothing to delete."""

    @classmethod
    def clear_expired(cls) -> None:
        """Nothing expires."""
