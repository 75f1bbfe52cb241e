"""Reference models of the caches' semantics: obviously correct, obviously slow.

``Model`` keeps the entries in an ``OrderedDict`` holding ``(value, expires)``:
in recency order for exact LRU (``LRUCache``/``TTLCache``), in queue order for
CLOCK (``LocalCache``), where a new key goes in unmarked at the newest end, a
hit only marks the key visited, and eviction takes the oldest key unless it is
marked, in which case it moves to the newest end unmarked (second chance, FIFO
with reinsertion) and the next oldest is examined.  It also counts the
statistics ``LocalCache.stats`` reports and remembers insertion order (what
``TTLCache``, like cachetools, iterates in).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class Model:
    """Reference semantics shared by TTLCache (``second_chance=False``) and LocalCache (``second_chance=True``)."""

    def __init__(self, clock: Callable[[], float], maxsize: int, second_chance: bool) -> None:
        self.clock = clock
        self.maxsize = maxsize
        self.second_chance = second_chance
        self.data: OrderedDict[Any, tuple[Any, float]] = OrderedDict()
        self.inserted: dict[Any, None] = {}  # may hold removed keys; see inserted_live_keys
        self.visited: set[Any] = set()
        self.hits = self.misses = self.evictions = self.expirations = 0

    def remove(self, key: Any) -> None:
        """Drop ``key``."""
        del self.data[key]
        self.visited.discard(key)

    def purge(self) -> list[tuple[Any, Any]]:
        now = self.clock()
        gone = [(k, v) for k, (v, exp) in self.data.items() if not now < exp]
        for k, _ in gone:
            self.remove(k)
        self.expirations += len(gone)
        return gone

    def victim(self) -> Any:
        """The key the next eviction removes (CLOCK moves the marked keys it passes to the newest end, unmarked)."""
        while True:
            key = next(iter(self.data))
            if not self.second_chance or key not in self.visited:
                return key
            self.visited.discard(key)
            self.data.move_to_end(key)

    def hit(self, key: Any) -> None:
        if self.second_chance:
            self.visited.add(key)
        else:
            self.data.move_to_end(key)

    def set(self, key: Any, value: Any, ttl: float) -> list[Any]:
        """Store like the caches do; returns the keys evicted."""
        self.purge()
        evicted = []
        if key in self.data:
            self.hit(key)  # an overwrite: LRU refreshes it, CLOCK marks it
        else:
            if len(self.data) >= self.maxsize:
                evicted.append(self.victim())
                self.remove(evicted[-1])
                self.evictions += 1
            self.inserted.pop(key, None)  # (re-)inserted: goes last
            self.inserted[key] = None
        self.data[key] = (value, self.clock() + ttl)
        return evicted

    def get(self, key: Any) -> Any:
        if key not in self.data:
            self.misses += 1
            return None
        value, exp = self.data[key]
        if not self.clock() < exp:
            self.remove(key)
            self.expirations += 1
            self.misses += 1
            return None
        self.hit(key)
        self.hits += 1
        return value

    def delete(self, key: Any) -> bool:
        if key not in self.data:
            return False
        _, exp = self.data[key]
        self.remove(key)
        return self.clock() < exp

    def live_keys(self) -> list[Any]:
        now = self.clock()
        return [k for k, (_, exp) in self.data.items() if now < exp]

    def inserted_live_keys(self) -> list[Any]:
        now = self.clock()
        return [k for k in self.inserted if k in self.data and now < self.data[k][1]]
