"""fastsess: fast sessions for multi-node web apps.

The cache core (``LRUCache``, ``TTLCache``, ``LocalCache``) is imported eagerly;
everything that needs Redis is imported on first attribute access so that
``import fastsess`` stays cheap for cache-only users.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .cache import CacheStats, LocalCache, LRUCache, TTLCache

__version__ = "0.1.0"

# public name -> module that defines it (relative to this package)
_LAZY = {
    "Session": ".session",
    "MemoryStore": ".stores.memory",
    "RedisStore": ".stores.redis",
    "ClusteredRedisStore": ".stores.clustered",
    "ClusterConfig": ".config",
    "ClusterCoordinator": ".cluster",
    "FastsessError": ".errors",
    "StoreUnavailable": ".errors",
    "SessionCorrupt": ".errors",
    "InvalidSessionId": ".errors",
    "ConfigError": ".errors",
    "PoolExhausted": ".errors",
    "CircuitOpen": ".errors",
    "SessionTooLarge": ".errors",
    "ConcurrentModification": ".errors",
    "MISSING": ".session",
    "MsgpackSerializer": ".serializers",
    "JSONSerializer": ".serializers",
    "Encryption": ".crypto",
}

__all__ = ["CacheStats", "LRUCache", "LocalCache", "TTLCache", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fastsess' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .cluster import ClusterCoordinator
    from .config import ClusterConfig
    from .crypto import Encryption
    from .errors import (
        CircuitOpen,
        ConcurrentModification,
        ConfigError,
        FastsessError,
        InvalidSessionId,
        PoolExhausted,
        SessionCorrupt,
        SessionTooLarge,
        StoreUnavailable,
    )
    from .serializers import JSONSerializer, MsgpackSerializer
    from .session import MISSING, Session
    from .stores.clustered import ClusteredRedisStore
    from .stores.memory import MemoryStore
    from .stores.redis import RedisStore
