"""Changes made outside fastsess: server-assisted tracking notifications, and telling
this node's own writes apart from the rest (no I/O).

With ``ClusterConfig(track_external_changes=True)`` each listener connection registers
``CLIENT TRACKING on REDIRECT <itself> BCAST PREFIX <prefix>``: the server then sends it,
on ``__redis__:invalidate``, the name of every key under the prefix that changed (one
message per event-loop iteration, listing that iteration's keys; ``None`` after
``FLUSHDB``/``FLUSHALL``), whoever changed it: another tool, an expiry, an eviction,
another node, or this node.

This node's own write must not evict the fresh copy it just cached.  A tracking
notification does not say who wrote, but its order does: a write script publishes its
``invalidated`` message while it runs, and the server sends the tracking notifications
of an event-loop iteration only when the iteration ends, on the same connection (the
shard's, on Redis Cluster).  So an own echo seen on a connection marks the id, and the
next notification from that connection spares the marked ids and clears the marks.  A
first save publishes its creation message, which marks its id the same way; the new id
of a regenerate (``SET NX``, whose message names the old id) is marked by the writer
before the command is sent (``expect``), until a notification names it.

What cannot be told apart: another client changing the same key in the same server
event-loop iteration, right after this node's own write of it (the server names the
key once).  That copy stays until its next invalidation or ``local_cache_ttl``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .keys import is_valid_session_id

FRESH_WINDOW = 60.0  # a first save's mark lasts at most this long (seconds)
MAX_FRESH = 10_000  # marks kept; beyond that the oldest are dropped (a later miss, never a stale hit)


class TrackedChanges:
    """What the tracking notifications mean for one node's cache.

    Args:
        prefix: the store's key prefix (the tracked one).

    ``notified(source, keys)`` returns the ids to evict (None: flush everything).
    Counters: ``notifications``, ``evicted`` (ids named by a notification that were not
    this node's own writes), ``own`` (own writes recognised), ``flushes``.
    """

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix.encode()
        self._start = len(self._prefix)
        self._echoed: dict[int, set[str]] = {}  # source -> ids of own echoes since its last notification
        self._fresh: dict[str, float] = {}  # first saves in flight: id -> deadline (monotonic)
        self._lock = threading.Lock()
        self.notifications = self.evicted = self.own = self.flushes = 0

    def echoed(self, source: int, session_id: str) -> None:
        """This node's own ``invalidated`` message for ``session_id`` arrived on connection ``source``."""
        marks = self._echoed.get(source)
        if marks is None:
            self._echoed[source] = {session_id}
        else:
            marks.add(session_id)

    def expect(self, session_id: str) -> None:
        """This node is about to create ``session_id`` (the new id of a regenerate): its
        notification is this node's own write."""
        now = time.monotonic()
        fresh = self._fresh
        with self._lock:
            if len(fresh) >= MAX_FRESH:
                for key in [k for k, until in fresh.items() if until <= now]:
                    del fresh[key]
                while len(fresh) >= MAX_FRESH:
                    del fresh[next(iter(fresh))]
            fresh[session_id] = now + FRESH_WINDOW

    def notified(self, source: int, keys: Any) -> list[str] | None:
        """A tracking notification arrived on connection ``source``: the ids to evict, or
        None to flush everything (``keys`` is None: the database was flushed)."""
        self.notifications += 1
        if keys is None:
            self.flushes += 1
            self.reset()
            return None
        if isinstance(keys, bytes):
            keys = [keys]
        echoed = self._echoed.pop(source, None)
        fresh = self._fresh
        prefix, start = self._prefix, self._start
        evict = []
        for key in keys:
            if not isinstance(key, bytes) or not key.startswith(prefix):
                continue
            session_id = key[start:].decode("ascii", "replace")
            if not is_valid_session_id(session_id):
                continue
            if echoed is not None and session_id in echoed:
                self.own += 1
                continue
            if fresh:
                until = fresh.pop(session_id, None)
                if until is not None and until > time.monotonic():
                    self.own += 1
                    continue
            evict.append(session_id)
        self.evicted += len(evict)
        return evict

    def reset(self) -> None:
        """Forget every mark (a new connection, a flush)."""
        self._echoed.clear()
        with self._lock:
            self._fresh.clear()
