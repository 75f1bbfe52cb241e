"""The local-cache policy of a clustered store: what to cache, for how long, and when not to.

The store's operations (``ops``) call it around their Redis commands: a fill token
before a read or write, ``filled``/``written`` after it, ``uncertain`` after a write of
unknown outcome, ``stale`` when a read failed.  No I/O.

Expiry comes from Redis, not from clocks: a miss caches a session until the key's
remaining TTL (``PTTL``, read with the value) runs out, timed on ``clock`` (monotonic)
from before the request, less ``EXPIRY_MARGIN``; a local write caches it for the TTL it
just set.  Entries are charged their serialized size; one larger than the cache's
``max_item_bytes`` is not cached.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config import ClusterConfig
from ..session import Session
from .conflict import stamp

if TYPE_CHECKING:
    from ..cluster import CoherentCache

# A cached copy stops being served this long before its key expires in Redis: it covers
# the round trip or message delivery between the EXPIRE and our clock reading, and the
# cache's coarse clock (CLOCK_MONOTONIC_COARSE ticks every 1-4 ms).
EXPIRY_MARGIN = 0.05

Token = tuple[int, int]


def cache_snapshot(session: Session) -> Session:
    """The copy the cache keeps of a session just written (saved, unmodified)."""
    snapshot = session.copy()
    snapshot.new = False
    snapshot._saved()
    snapshot._base = stamp(snapshot._base)  # a digest, not a second copy of the bytes
    return snapshot


class CachePolicy:
    """Decisions about one node's ``CoherentCache``.

    Args:
        config: ``local_cache_ttl`` caps every entry's local lifetime; ``stale_if_error``
            lets a cached copy answer a failed read.
        cache: the coherent cache.
        clock: monotonic seconds (``time.monotonic``); the local TTLs are measured on it.
    """

    __slots__ = ("_local_ttl", "_stale_if_error", "cache", "clock")

    def __init__(self, config: ClusterConfig, cache: CoherentCache, clock: Callable[[], float] = time.monotonic) -> None:
        self.cache = cache
        self.clock = clock
        self._local_ttl = config.local_cache_ttl
        self._stale_if_error = config.stale_if_error

    def local_ttl(self, started: float, key_ttl: float) -> float:
        """Seconds this node may cache what a request sent at ``started`` (on ``clock``)
        learned about a key that then had ``key_ttl`` seconds to live.  The key expires no
        earlier than ``started + key_ttl``, since the server ran the command after it was sent."""
        return min(self._local_ttl, started + key_ttl - EXPIRY_MARGIN - self.clock())

    def fill_ttl(self, started: float, pttl: int) -> float:
        """``local_ttl`` for a ``PTTL`` reply (milliseconds; -1: no expiry, -2: no key)."""
        if pttl == -1:
            return self._local_ttl
        return self.local_ttl(started, pttl / 1000.0) if pttl >= 0 else 0.0

    def token(self, session_id: str) -> Token:
        """Take before a read or write of ``session_id``: what ``filled``/``written`` check."""
        return self.cache.fill_token(session_id)

    def filled(self, session: Session, size: int, token: Token, started: float, pttl: int) -> None:
        """Cache a copy of ``session`` read from Redis (``size`` serialized bytes, ``pttl`` ms
        left, request sent at ``started``), unless an invalidation came in since ``token``."""
        ttl = self.fill_ttl(started, pttl)
        if ttl > 0 and size <= self.cache.max_item_bytes:
            cached = session.copy()
            cached._base = stamp(cached._base)  # a digest, not a second copy of the bytes
            self.cache.fill(session.id, cached, token, ttl, size)

    def written(self, session: Session, written: bool, token: Token, started: float, size: int) -> None:
        """After a write of ``session`` (``size`` bytes, sent at ``started``): cache what was
        written, unless another node's invalidation arrived meanwhile (its write may be newer);
        else drop what may be stale."""
        cache = self.cache
        if written and size <= cache.max_item_bytes:
            cache.put_if(session.id, cache_snapshot(session), token, self.local_ttl(started, session.ttl), size)
        else:
            cache.invalidate(session.id)

    def invalidate(self, session_id: str) -> None:
        """Drop ``session_id`` and void fills in flight for it."""
        self.cache.invalidate(session_id)

    def flush(self) -> None:
        """Drop everything and void every fill in flight."""
        self.cache.flush()

    def uncertain(self, *session_ids: str) -> None:
        """After a write with an unknown outcome: evict these ids now, and let this node's own
        echo of them count as an invalidation should the write land later."""
        for session_id in session_ids:
            self.cache.mark_uncertain(session_id)

    def stale(self, session_id: str) -> Session | None:
        """The cached copy a failed read may answer with (``stale_if_error``), else None."""
        if not self._stale_if_error:
            return None
        cached: Any = self.cache.get(session_id)
        return None if cached is None else cached.copy()
