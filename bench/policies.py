"""Small pure-Python reference eviction policies for the hit-ratio report.

They exist to cross-check the compiled cache on the same traces and to try
ideas cheaply (an admission filter) before anyone puts them in the core. Each
one counts only whether a key is present; values are not stored.

Every policy has the same four operations (``access`` is what a replay calls):

* ``lookup(key)``: True on a hit, and records the hit as the policy does
  (LRU: move to the most-recent end; SIEVE and CLOCK: set the visited bit).
* ``victim()``: the key the next eviction removes. It may advance a hand and
  clear visited bits on the way, exactly as the eviction itself would; calling
  it twice without an eviction in between returns the same key.
* ``insert(key)``: add a missing key, evicting ``victim()`` first when full.
* ``access(key)``: ``lookup``, and ``insert`` on a miss; returns whether it hit.

SIEVE follows Zhang et al., "SIEVE is Simpler than LRU" (NSDI '24), Figure 2:
new keys enter at the head of a FIFO queue unvisited; a hit sets the visited
bit; eviction starts at the hand (at first the tail, the oldest key), clears and
passes visited keys moving towards the head (wrapping from the head back to the
tail), evicts the first unvisited key and leaves the hand at its newer neighbour.
Survivors are never moved, unlike CLOCK, whose hand replaces the victim in its
slot (FIFO with reinsertion).

``TinyLFU`` wraps one of them with an admission filter (Einziger, Friedman and
Manes, "TinyLFU: A Highly Efficient Cache Admission Policy", ACM ToS 2017);
``WindowTinyLFU`` puts a small LRU window in front of the filter, as W-TinyLFU
(Caffeine) does, so that a new key is cached at once and only has to win
admission when it leaves the window.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

__all__ = ["Clock", "ExactLRU", "Sieve", "TinyLFU", "WindowTinyLFU"]


class ExactLRU:
    """Exact least-recently-used order (an ``OrderedDict``)."""

    name = "LRU"

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._order: OrderedDict[Hashable, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._order

    def lookup(self, key: Hashable) -> bool:
        """True if ``key`` is cached (it becomes the most recently used)."""
        if key in self._order:
            self._order.move_to_end(key)
            return True
        return False

    def victim(self) -> Hashable:
        """The least recently used key. Raises ``KeyError`` when empty."""
        for key in self._order:
            return key
        raise KeyError("empty cache")

    def insert(self, key: Hashable) -> None:
        """Add ``key`` (absent) as the most recently used, evicting the least recently used when full."""
        if len(self._order) >= self.capacity:
            self._order.popitem(last=False)
        self._order[key] = None

    def access(self, key: Hashable) -> bool:
        """A request: True on a hit, else insert ``key``."""
        order = self._order
        if key in order:
            order.move_to_end(key)
            return True
        if len(order) >= self.capacity:
            order.popitem(last=False)
        order[key] = None
        return False

    def keys(self) -> list[Hashable]:
        """Cached keys, least recently used first."""
        return list(self._order)


# SIEVE node: [key, visited, newer, older]; a list is the cheapest mutable record in CPython.
_KEY, _VISITED, _NEWER, _OLDER = 0, 1, 2, 3


class Sieve:
    """SIEVE (NSDI '24): a FIFO queue, a visited bit per key, a hand that sweeps from the tail."""

    name = "SIEVE"

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._map: dict[Hashable, list[Any]] = {}
        self._head: list[Any] | None = None  # newest
        self._tail: list[Any] | None = None  # oldest
        self._hand: list[Any] | None = None

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._map

    def lookup(self, key: Hashable) -> bool:
        """True if ``key`` is cached (its visited bit is set; nothing moves)."""
        node = self._map.get(key)
        if node is None:
            return False
        node[_VISITED] = True
        return True

    def victim(self) -> Hashable:
        """Move the hand to the next unvisited key (clearing visited bits it passes) and return it."""
        node = self._hand or self._tail
        if node is None:
            raise KeyError("empty cache")
        while node[_VISITED]:
            node[_VISITED] = False
            node = node[_NEWER] or self._tail
        self._hand = node
        return node[_KEY]

    def _evict(self) -> None:
        self.victim()
        node = self._hand
        assert node is not None
        self._hand = node[_NEWER]  # None past the head: the next sweep starts at the tail
        newer, older = node[_NEWER], node[_OLDER]
        if newer is None:
            self._head = older
        else:
            newer[_OLDER] = older
        if older is None:
            self._tail = newer
        else:
            older[_NEWER] = newer
        del self._map[node[_KEY]]

    def insert(self, key: Hashable) -> None:
        """Add ``key`` (absent) unvisited at the head, evicting first when full."""
        if len(self._map) >= self.capacity:
            self._evict()
        node = [key, False, None, self._head]
        if self._head is None:
            self._tail = node
        else:
            self._head[_NEWER] = node
        self._head = node
        self._map[key] = node

    def access(self, key: Hashable) -> bool:
        """A request: True on a hit, else insert ``key``."""
        node = self._map.get(key)
        if node is not None:
            node[_VISITED] = True
            return True
        self.insert(key)
        return False

    def keys(self) -> list[Hashable]:
        """Cached keys from the tail (oldest) to the head (newest)."""
        out = []
        node = self._tail
        while node is not None:
            out.append(node[_KEY])
            node = node[_NEWER]
        return out

    def visited(self, key: Hashable) -> bool:
        """The visited bit of a cached ``key``. Raises ``KeyError`` if absent."""
        return bool(self._map[key][_VISITED])


class Clock:
    """CLOCK (second chance): slots in a ring, a reference bit each, a hand that replaces in place."""

    name = "CLOCK"

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._slot: dict[Hashable, int] = {}
        self._keys: list[Hashable] = []
        self._ref: list[bool] = []
        self._hand = 0

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._slot

    def lookup(self, key: Hashable) -> bool:
        """True if ``key`` is cached (its reference bit is set)."""
        i = self._slot.get(key)
        if i is None:
            return False
        self._ref[i] = True
        return True

    def victim(self) -> Hashable:
        """Advance the hand past referenced slots (clearing them) and return the key it stops at."""
        if not self._keys:
            raise KeyError("empty cache")
        ref, hand, n = self._ref, self._hand, len(self._keys)
        while ref[hand]:
            ref[hand] = False
            hand = (hand + 1) % n
        self._hand = hand
        return self._keys[hand]

    def insert(self, key: Hashable) -> None:
        """Add ``key`` (absent) unreferenced: in a free slot, or in the victim's slot when full."""
        if len(self._keys) < self.capacity:
            self._slot[key] = len(self._keys)
            self._keys.append(key)
            self._ref.append(False)
            return
        old = self.victim()
        i = self._hand
        del self._slot[old]
        self._keys[i] = key
        self._slot[key] = i
        self._hand = (i + 1) % len(self._keys)

    def access(self, key: Hashable) -> bool:
        """A request: True on a hit, else insert ``key``."""
        i = self._slot.get(key)
        if i is not None:
            self._ref[i] = True
            return True
        self.insert(key)
        return False

    def keys(self) -> list[Hashable]:
        """Cached keys in slot order."""
        return list(self._keys)


_HALVE = bytes(v >> 1 for v in range(256))  # translate table: every counter halved in one C call


class TinyLFU:
    """An admission filter in front of ``inner``: a miss replaces the victim only if it is more frequent.

    Frequencies: a count-min sketch of 4 rows of 4-bit counters (saturating at
    15), ``width`` = the power of two >= 2 x capacity, in front of a doorkeeper
    (the set of keys seen once since the last reset: a key's first access
    goes to the doorkeeper, later ones to the sketch; its estimate is the
    sketch's minimum plus 1 if the doorkeeper holds it). Every request is
    recorded. After ``sample = 10 x capacity`` recorded requests every counter
    is halved and the doorkeeper emptied, so old popularity fades.

    On a miss with the cache full the candidate is admitted, evicting the
    victim, only if its estimate is strictly greater than the victim's;
    otherwise it is not cached (the victim stays, and a SIEVE or CLOCK hand
    stays on it). The doorkeeper here is an exact set; a real implementation
    uses a Bloom filter, whose false positives would admit slightly more.
    """

    def __init__(self, inner: ExactLRU | Sieve | Clock, sample_factor: int = 10) -> None:
        self.inner = inner
        self.name = f"TinyLFU+{inner.name}"
        capacity = inner.capacity
        self._width = 1 << max(4, (2 * capacity - 1).bit_length())
        self._mask = self._width - 1
        self._rows = [bytearray(self._width) for _ in range(4)]
        self._door: set[Hashable] = set()
        self._sample = sample_factor * capacity
        self._recorded = 0
        self.rejected = 0

    def _indexes(self, key: Hashable) -> tuple[int, int, int, int]:
        h = (hash(key) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        h1, h2 = h & 0xFFFFFFFF, (h >> 32) | 1
        m = self._mask
        return h1 & m, (h1 + h2) & m, (h1 + 2 * h2) & m, (h1 + 3 * h2) & m

    def estimate(self, key: Hashable) -> int:
        """The estimated number of recent requests for ``key`` (an overestimate, never under)."""
        a, b, c, d = self._indexes(key)
        r = self._rows
        return min(r[0][a], r[1][b], r[2][c], r[3][d]) + (key in self._door)

    def record(self, key: Hashable) -> None:
        """Count one request for ``key`` (doorkeeper first, then the sketch); age every ``sample`` requests."""
        if key not in self._door:
            self._door.add(key)
        else:
            for row, i in zip(self._rows, self._indexes(key)):
                if row[i] < 15:
                    row[i] += 1
        self._recorded += 1
        if self._recorded >= self._sample:
            self._recorded = 0
            self._door.clear()
            for row in self._rows:
                row[:] = row.translate(_HALVE)

    def access(self, key: Hashable) -> bool:
        """A request: record it; True on a hit; on a miss insert ``key`` if there is room or it wins admission."""
        self.record(key)
        inner = self.inner
        if inner.lookup(key):
            return True
        if len(inner) < inner.capacity or self.estimate(key) > self.estimate(inner.victim()):
            inner.insert(key)
        else:
            self.rejected += 1
        return False


class WindowTinyLFU(TinyLFU):
    """W-TinyLFU: every miss enters a small LRU window; what the window evicts must win admission into ``inner``.

    The window holds ``window_fraction`` of the capacity (at least 1 entry)
    and ``inner`` the rest, so the total stays ``inner.capacity`` as given.
    Frequencies, aging and the admission rule are ``TinyLFU``'s, sized for the
    whole cache. (Caffeine also splits the main part into probation and
    protected segments and tunes the window size as it runs; neither is done here.)
    """

    def __init__(self, inner: ExactLRU | Sieve | Clock, window_fraction: float = 0.01, sample_factor: int = 10) -> None:
        total = inner.capacity
        if total < 2:
            raise ValueError("capacity must be >= 2 (one window entry, one main entry)")
        super().__init__(inner, sample_factor)
        self.name = f"W-TinyLFU+{inner.name}"
        self._window_cap = max(1, min(total - 1, round(window_fraction * total)))
        inner.capacity = total - self._window_cap
        self._window: OrderedDict[Hashable, None] = OrderedDict()

    def access(self, key: Hashable) -> bool:
        """A request: record it; True on a hit; on a miss put ``key`` in the window, and move its LRU out through admission."""
        self.record(key)
        window = self._window
        if key in window:
            window.move_to_end(key)
            return True
        inner = self.inner
        if inner.lookup(key):
            return True
        window[key] = None
        if len(window) > self._window_cap:
            candidate, _ = window.popitem(last=False)
            if len(inner) < inner.capacity or self.estimate(candidate) > self.estimate(inner.victim()):
                inner.insert(candidate)
            else:
                self.rejected += 1
        return False
