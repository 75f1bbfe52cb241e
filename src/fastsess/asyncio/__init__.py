"""asyncio twins of the stores, on ``redis.asyncio``: ``from fastsess.asyncio import RedisStore``.

The module tree mirrors the sync one file for file (``stores/redis.py``,
``stores/memory.py``, ``stores/clustered.py``, ``cluster.py``); every method
of the sync API is a coroutine here with the same behaviour.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "MemoryStore": ".stores.memory",
    "RedisStore": ".stores.redis",
    "ClusteredRedisStore": ".stores.clustered",
    "ClusterCoordinator": ".cluster",
    "AsyncSessionStore": ".stores.base",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fastsess.asyncio' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
