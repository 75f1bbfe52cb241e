"""Session stores: ``MemoryStore``, ``RedisStore`` and ``ClusteredRedisStore``."""

from __future__ import annotations

from typing import Any

from .base import DEFAULT_PREFIX, DEFAULT_REFRESH_FRACTION, DEFAULT_TTL, SessionStore, is_valid_session_id, new_session_id

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_REFRESH_FRACTION",
    "DEFAULT_TTL",
    "ClusteredRedisStore",
    "MemoryStore",
    "RedisStore",
    "SessionStore",
    "is_valid_session_id",
    "new_session_id",
]


def __getattr__(name: str) -> Any:
    # imported lazily so that MemoryStore users never import redis
    if name == "MemoryStore":
        from .memory import MemoryStore

        return MemoryStore
    if name == "RedisStore":
        from .redis import RedisStore

        return RedisStore
    if name == "ClusteredRedisStore":
        from .clustered import ClusteredRedisStore

        return ClusteredRedisStore
    raise AttributeError(name)
