"""Looking inside redis-py clients (their pools), for tests about connection ownership."""

from __future__ import annotations

from typing import Any


def pool_connections(pool: Any) -> list[Any]:
    """Every connection a redis-py pool created (plain or blocking, sync or asyncio)."""
    if hasattr(pool, "_available_connections"):
        return list(pool._available_connections) + list(pool._in_use_connections)
    return list(pool._connections)  # sync BlockingConnectionPool


def open_connections(client: Any) -> list[bool]:
    """For each connection ``client``'s pool created: is it open?"""
    return [c.is_connected if hasattr(c, "is_connected") else c._sock is not None for c in pool_connections(client.connection_pool)]
