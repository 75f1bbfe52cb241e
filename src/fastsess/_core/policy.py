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

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..config import ClusterConfig
from ..session import Session
from .conflict import stamp

if TYPE_CHECKING:
    from ..cluster import CoherentCache
    from .breaker import CircuitBreaker

# A cached copy stops being served this long before its key expires in Redis: it covers
# the round trip or message delivery between the EXPIRE and our clock reading, and the
# cache's coarse clock (CLOCK_MONOTONIC_COARSE ticks every 1-4 ms).
EXPIRY_MARGIN = 0.05
# An update message is applied some time after its write set the key's expiry: the copy
# it installs is cached as if the write had happened this long before it arrived.
DELIVERY_ALLOWANCE = 1.0

Token = tuple[int, int]


def cache_snapshot(session: Session) -> Session:
    """The copy the cache keeps of a session just written (saved, unmodified).  Both keep
    the compare-and-set token of the bytes written (``stamp``), not a second copy of them."""
    session._base = stamp(session._base)
    snapshot = session.copy()
    snapshot.new = False
    snapshot._saved()
    return snapshot


class Heard(Protocol):
    """The listener, as ``stale`` sees it (``ListenerMachine``)."""

    @property
    def last_heard(self) -> float: ...  # noqa: D102

    # when the cache was last proven current: the send time of the last answered PING (or
    # of the replay); on a delayed link earlier than last_heard, the arrival of its PONG
    proven: float
    # every message published before this time was received (the send time of the last
    # answered PING: a replay does not count, it reads only the log)
    heard_through: float


class CachePolicy:
    """Decisions about one node's ``CoherentCache``.

    Args:
        config: ``local_cache_ttl`` caps every entry's local lifetime; ``stale_if_error``
            (``stale_window``) lets a cached copy answer a failed read for that long
            into an outage.
        cache: the coherent cache.
        clock: monotonic seconds (``time.monotonic``); the local TTLs are measured on it,
            and so must be the breaker's and the listener's times.
        breaker: the store's circuit breaker: when the current run of connection
            failures began (no stale answer without one).
        listener: when the listener last heard from Redis (an outage starts no later).
        decode: the store's codec's ``decode(id, bytes)``, for update-mode messages.
    """

    __slots__ = ("_local_ttl", "_stale_window", "_warm", "breaker", "cache", "clock", "decode", "listener")

    def __init__(
        self, config: ClusterConfig, cache: CoherentCache, clock: Callable[[], float] = time.monotonic,
        breaker: CircuitBreaker | None = None, listener: Heard | None = None,
        decode: Callable[[str, bytes], Session] | None = None,
    ) -> None:
        self.cache = cache
        self.clock = clock
        self.breaker = breaker
        self.listener = listener
        self.decode = decode  # the store's codec's decode, for update messages
        self._local_ttl = config.local_cache_ttl
        self._stale_window = config.stale_window
        self._warm = config.warm_peers  # messages add sessions not cached here (see warm)

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
            cached._base = stamp(cached._base)  # a token, not a second copy of the bytes
            self.cache.fill(session.id, cached, token, ttl, size)

    def refill(self, session_id: str, raw: bytes, token: Token, started: float, pttl: int) -> bool:
        """Cache ``raw`` (read from Redis with its ``pttl``, request sent at ``started``),
        unless an invalidation came in since ``token``: the listener re-reads what a replay
        evicted, so the cache is warm again when it is served.  Never raises (a value that
        does not decode is just not cached).  True if decoded."""
        if self.decode is None:
            return False
        try:
            session = self.decode(session_id, raw)
        except Exception:  # noqa: BLE001 - left to the next load, which reports it
            return False
        session._base = raw
        self.filled(session, len(raw), token, started, pttl)
        return True

    def absent(self, session_id: str, token: Token) -> None:
        """Redis did not hold ``session_id`` (read after ``token`` was taken): remember it
        as absent for a short while, unless an invalidation came in since."""
        self.cache.fill_absent(session_id, token)

    def is_absent(self, session_id: str) -> bool:
        """True if ``session_id`` is remembered as absent: a load answers None without Redis."""
        return self.cache.is_absent(session_id)

    def updated(self, session_id: str, payload: bytes, expires_in: int, addable: bool = True) -> bool:
        """Another node stored ``payload`` under ``session_id`` for ``expires_in`` seconds
        (an update-mode message): replace the cached copy with it if that copy is older
        (a lower version), else evict it as an invalidation does.  A session not cached
        here is added only with ``warm_peers`` and ``addable`` (the message names this
        store's key prefix), and not right after this node wrote it (see
        ``CoherentCache.wrote``).  True if installed.  Never raises (a payload that does
        not decode just evicts)."""
        cache = self.cache
        add = self._warm and addable
        if self.decode is None or not (add or cache.cached(session_id)):
            cache.invalidate(session_id)
            return False
        carried = self._carried(session_id, payload, expires_in)
        if carried is None:  # a bad payload is only an eviction
            cache.invalidate(session_id)
            return False
        return cache.replace(session_id, *carried, len(payload), add, self._heard())

    def warm(self, session_id: str, payload: bytes, expires_in: int) -> bool:
        """Another node's load read ``payload`` for ``session_id`` with ``expires_in`` seconds
        left (a ``filled`` message, ``warm_peers``): cache it unless a copy is cached here.
        True if added.  Never raises (a payload that does not decode is ignored: this message
        changes nothing in Redis, so nothing cached here needs evicting)."""
        if self.decode is None or not self._warm or self.cache.cached(session_id):
            return False
        carried = self._carried(session_id, payload, expires_in)  # None: planted or garbled, not cached
        return carried is not None and self.cache.warm(session_id, *carried, len(payload), self._heard())

    def _carried(self, session_id: str, payload: bytes, expires_in: int) -> tuple[Session, float] | None:
        """The session another node's message carries (``payload``, stored for ``expires_in``
        seconds), ready to cache with the compare-and-set token of those bytes, and the
        seconds it may stay here; None if it does not decode (or there is no ``decode``)."""
        decode = self.decode
        if decode is None:
            return None
        try:
            session = decode(session_id, payload)
        except Exception:  # noqa: BLE001 - the callers decide what a bad payload means
            return None
        session._base = stamp(payload)  # what a save of this copy compares with (compare-and-set)
        return session, self.local_ttl(self.sent_after(), expires_in)

    def sent_after(self) -> float:
        """When (on ``clock``) a message applied now left Redis at the earliest: at least
        ``DELIVERY_ALLOWANCE`` ago, and no later than the listener's ``heard_through`` (a
        listener hearing everything late must not make a copy outlive its key)."""
        lag = DELIVERY_ALLOWANCE
        listener = self.listener
        if listener is not None:
            lag = max(lag, time.monotonic() - listener.heard_through)
        return self.clock() - lag

    def _heard(self) -> float:
        """The listener has heard everything published before this time (see ``CoherentCache.wrote``)."""
        listener = self.listener
        return -math.inf if listener is None else listener.heard_through

    def _wrote(self, session_id: str | None = None) -> None:
        """Record this node's write for ``CoherentCache.wrote``: only with ``warm_peers``,
        the one setting in which a message may add an id (elsewhere it costs for nothing)."""
        if self._warm:
            if session_id is None:
                self.cache.wrote()
            else:
                self.cache.wrote(session_id, self._heard())

    def written(self, session: Session, written: bool, token: Token, started: float, size: int) -> None:
        """After a write of ``session`` (``size`` bytes, sent at ``started``): cache what was
        written, unless another node's invalidation arrived meanwhile (its write may be newer);
        else drop what may be stale."""
        cache = self.cache
        self._wrote(session.id)
        if written and size <= cache.max_item_bytes:
            cache.put_if(session.id, cache_snapshot(session), token, self.local_ttl(started, session.ttl), size)
        else:
            cache.invalidate(session.id)

    def invalidate(self, session_id: str) -> None:
        """After this node's write of ``session_id``: drop it and void fills in flight for it."""
        self._wrote(session_id)
        self.cache.invalidate(session_id)

    def flush(self) -> None:
        """After this node's ``clear``: drop everything and void every fill in flight."""
        self._wrote()
        self.cache.flush()

    def uncertain(self, *session_ids: str) -> None:
        """After a write with an unknown outcome: evict these ids now, and let this node's own
        echo of them count as an invalidation should the write land later."""
        for session_id in session_ids:
            self._wrote(session_id)
            self.cache.mark_uncertain(session_id)

    def outage_started(self) -> float | None:
        """When the current outage began (on ``clock``), or None if there is none: the first
        connection failure of the breaker's current run, or earlier, the last time the
        listener heard from Redis or was proven current (``proven``: what a PONG proves
        on a delayed link) if that was before (a session deleted since may have been
        missed; one deleted before was evicted here)."""
        breaker = self.breaker
        started = None if breaker is None else breaker.outage_started
        if started is None:
            return None
        listener = self.listener
        if listener is not None:
            started = min(started, listener.last_heard, listener.proven)
        return started

    def stale(self, session_id: str) -> Session | None:
        """The cached copy a failed read may answer with, else None: only with
        ``stale_if_error``, during an outage (``outage_started``) not older than its
        window, and while the copy is still within its own local lifetime."""
        window = self._stale_window
        if not window:
            return None
        started = self.outage_started()
        if started is None or self.clock() - started > window:
            return None
        cached: Any = self.cache.get(session_id)
        return None if cached is None else cached.copy()
