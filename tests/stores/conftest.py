"""Fixtures for the store tests: one ``backend`` parameter per store kind.

``backend.make(**kwargs)`` builds a store of that kind (closed after the test);
the other helpers look at the storage behind the store's back, so tests can
check what was (not) written without mocks:

* ``raw_count(store)``: entries physically stored (Redis: DBSIZE).
* ``write_marker(store, sid)`` / ``wrote_since(store, sid, marker)``: did anything
  hit the storage (Redis: any command at all, from INFO commandstats; memory:
  the stored snapshot object was replaced).
* ``assert_ttl(store, sid, seconds)``: the entry expires after about ``seconds``
  (Redis: TTL of the key; memory: a fake clock is advanced, so the entry is
  gone afterwards).
* ``plant_foreign()``: something stored beside this store (another prefix, another
  store) that ``clear``/``iter_ids`` must leave alone; returns a checker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from fastsess import MemoryStore, RedisStore
from fastsess.cache import LocalCache
from fastsess.stores.base import SessionStore, new_session_id


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def pool_connections(pool: Any) -> list[Any]:
    """Every connection a redis-py pool created (plain or blocking, sync or asyncio)."""
    if hasattr(pool, "_available_connections"):
        return list(pool._available_connections) + list(pool._in_use_connections)
    return list(pool._connections)  # sync BlockingConnectionPool


def redis_calls(client: redis.Redis) -> int:
    """Commands the server has executed so far, INFO itself excluded."""
    stats = client.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_info",))


def redis_command_calls(client: redis.Redis, *commands: str) -> int:
    stats = client.info("commandstats")
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in commands)


class Backend:
    kind: str

    def __init__(self) -> None:
        self.stores: list[SessionStore] = []

    def make(self, **kwargs: Any) -> SessionStore:
        raise NotImplementedError

    def close(self) -> None:
        for store in self.stores:
            store.close()


class MemoryBackend(Backend):
    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.others: list[tuple[MemoryStore, str]] = []

    def make(self, **kwargs: Any) -> MemoryStore:
        store = MemoryStore(**kwargs)
        # same cache, driven by a fake clock so expiry can be observed without sleeping
        store._sessions = LocalCache(max_size=store._sessions.max_size, ttl=store._sessions.ttl, timer=self.clock)
        self.stores.append(store)
        return store

    def raw_count(self, store: MemoryStore) -> int:
        return len(store._sessions)

    def write_marker(self, store: MemoryStore, sid: str) -> Any:
        return store._sessions.get(sid)

    def wrote_since(self, store: MemoryStore, sid: str, marker: Any) -> bool:
        return store._sessions.get(sid) is not marker

    def assert_ttl(self, store: MemoryStore, sid: str, seconds: int) -> None:
        assert store.exists(sid)
        self.clock.advance(seconds - 1.0)
        assert store.exists(sid), f"expired before {seconds - 1} s"
        self.clock.advance(1.5)
        assert not store.exists(sid), f"still alive after {seconds + 0.5} s"

    def plant_foreign(self) -> Callable[[], bool]:
        other = MemoryStore()
        s = other.create({"foreign": True})
        other.save(s)
        return lambda: other.exists(s.id) and other.count() == 1


class RedisInspection:
    """Looks at the private Redis directly; shared by the sync and asyncio Redis backends."""

    client: redis.Redis

    def raw_count(self, store: Any) -> int:
        return int(self.client.dbsize())

    def write_marker(self, store: Any, sid: str) -> Any:
        return redis_calls(self.client)

    def wrote_since(self, store: Any, sid: str, marker: Any) -> bool:
        return redis_calls(self.client) != marker


class RedisBackend(RedisInspection, Backend):
    kind = "redis"

    def __init__(self, url: str, client: redis.Redis, prefix: str) -> None:
        super().__init__()
        self.url = url
        self.client = client
        self.prefix = prefix

    def make(self, **kwargs: Any) -> RedisStore:
        kwargs.setdefault("prefix", self.prefix)
        store = RedisStore(url=self.url, **kwargs)
        self.stores.append(store)
        return store

    def assert_ttl(self, store: RedisStore, sid: str, seconds: int) -> None:
        ttl = self.client.ttl(store.prefix + sid)
        assert seconds - 2 <= ttl <= seconds, f"TTL in Redis is {ttl}, expected ~{seconds}"

    def plant_foreign(self) -> Callable[[], bool]:
        foreign = {
            "other:" + new_session_id(): b"x",  # another prefix
            self.prefix + "sub:" + new_session_id(): b"y",  # a longer prefix starting with ours
            self.prefix + "meta": b"z",  # not a session id under our prefix
            "unrelated": b"w",
            new_session_id(): b"v",  # a bare id, no prefix
        }
        for k, v in foreign.items():
            self.client.set(k, v)
        return lambda: all(self.client.get(k) == v for k, v in foreign.items())


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        b: Backend = MemoryBackend()
    else:
        b = RedisBackend(
            request.getfixturevalue("redis_url"),
            request.getfixturevalue("redis_client"),
            request.getfixturevalue("prefix"),
        )
    yield b
    b.close()
