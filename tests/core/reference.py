"""Reference models of the caches' semantics: obviously correct, obviously slow.

``Model`` keeps the entries in an ``OrderedDict`` holding ``(value, expires)``:
in recency order for exact LRU (``LRUCache``/``TTLCache``), in insertion order
for SIEVE (``LocalCache``), where a hit only marks the key visited and eviction
moves a hand from the oldest key towards the newest, clearing marks, and
evicts the first unmarked key (Zhang et al., NSDI '24).  It also counts the
statistics ``LocalCache.stats`` reports and remembers insertion order (what
``TTLCache``, like cachetools, iterates in).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class Model:
    """Reference semantics shared by TTLCache (``sieve=False``) and LocalCache (``sieve=True``)."""

    def __init__(self, clock: Callable[[], float], maxsize: int, sieve: bool) -> None:
        self.clock = clock
        self.maxsize = maxsize
        self.sieve = sieve
        self.data: OrderedDict[Any, tuple[Any, float]] = OrderedDict()
        self.inserted: dict[Any, None] = {}  # may hold removed keys; see inserted_live_keys
        self.visited: set[Any] = set()
        self.hand: Any = None  # SIEVE: the key the hand examines next; None: start at the oldest
        self.hits = self.misses = self.evictions = self.expirations = 0

    def remove(self, key: Any) -> None:
        """Drop ``key``; a hand pointing at it moves on to the next newer key."""
        if self.hand == key:
            keys = list(self.data)
            i = keys.index(key) + 1
            self.hand = keys[i] if i < len(keys) else None
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
        """The key the next eviction removes (SIEVE clears the marks it passes)."""
        if not self.sieve:
            return next(iter(self.data))
        keys = list(self.data)
        i = 0 if self.hand is None else keys.index(self.hand)
        while True:
            if i == len(keys):
                i = 0
            if keys[i] in self.visited:
                self.visited.discard(keys[i])
                i += 1
                continue
            self.hand = keys[i + 1] if i + 1 < len(keys) else None
            return keys[i]

    def hit(self, key: Any) -> None:
        if self.sieve:
            self.visited.add(key)
        else:
            self.data.move_to_end(key)

    def set(self, key: Any, value: Any, ttl: float) -> list[Any]:
        """Store like the caches do; returns the keys evicted."""
        self.purge()
        evicted = []
        if key in self.data:
            self.hit(key)  # an overwrite: LRU refreshes it, SIEVE marks it
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
