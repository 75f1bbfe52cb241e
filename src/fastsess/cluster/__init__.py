"""Keeping every node's local cache honest: ``ClusterCoordinator`` and ``CoherentCache``.

Each node caches decoded sessions in a ``CoherentCache``.  A write, delete, touch or
clear on one node publishes a small msgpack message on the cluster channel, in the
same round trip as the write (see ``stores.clustered``); every other node's
coordinator evicts that id.

Pub/sub is at-most-once: a message published while a node is disconnected is lost
for that node.  So on one Redis (standalone, Sentinel) every message is numbered and
logged by its write script, and on every (re)subscribe, or a gap in the numbers, the
coordinator replays the missed ids from the log and evicts them
(``fastsess._core.sequence``); on Redis Cluster it flushes the whole local cache.  It
reports ``subscribed=False`` from the moment it sees the connection drop until it has
resubscribed and replayed (or flushed), and whenever its lease runs out (no proof,
younger than ``ClusterConfig.lease``, that every invalidation arrived); the store
bypasses the cache meanwhile.

Where things live:

* ``fastsess._core.messages``: the wire format (encode/decode);
* ``fastsess._core.sequence``: the numbering, the capped log and its replay;
* ``fastsess._core.coherence``: ``CoherentCache`` (epoch and generations, uncertain ids);
* ``fastsess._core.listener``: the listener's state and message handling;
* ``thread``: the listener thread (the driver of the sync and asyncio coordinators);
* ``redis_adapter``: the listener's own connection and its raw RESP reader;
* ``registry``: every live coordinator of the process, the fork hook, unclosed stores.
"""

from __future__ import annotations

from .._core.coherence import EXPIRY_MARGIN, GENERATION_SLOTS, MAX_UNCERTAIN, UNCERTAIN_WINDOW, CoherentCache
from .._core.listener import CoordinatorBase, CoordinatorStats
from .._core.messages import (
    CLEARED,
    DELETED,
    DELETED_MANY,
    INVALIDATED,
    MAX_IDS,
    MAX_MANY_BYTES,
    MAX_MESSAGE_BYTES,
    MESSAGE_TYPES,
    TOUCHED,
    decode_message,
    encode_message,
    new_instance_id,
)
from .redis_adapter import listener_client
from .registry import release_unclosed
from .thread import HITS_PER_CHECK, LISTENER_CATCH_UP, LISTENER_YIELD, POLL_INTERVAL, ClusterCoordinator, ThreadedCoordinator

__all__ = [
    "CLEARED", "DELETED", "DELETED_MANY", "EXPIRY_MARGIN", "GENERATION_SLOTS", "HITS_PER_CHECK", "INVALIDATED", "LISTENER_CATCH_UP", "LISTENER_YIELD",
    "MAX_IDS", "MAX_MANY_BYTES", "MAX_MESSAGE_BYTES", "MAX_UNCERTAIN", "MESSAGE_TYPES", "POLL_INTERVAL", "TOUCHED", "UNCERTAIN_WINDOW",
    "ClusterCoordinator", "CoherentCache", "CoordinatorBase", "CoordinatorStats", "ThreadedCoordinator",
    "decode_message", "encode_message", "listener_client", "new_instance_id", "release_unclosed",
]
