"""Redis Cluster hash slots and the shard channels built on them (no I/O).

Sharded pub/sub (``SPUBLISH``/``SSUBSCRIBE``, Redis >= 7) sends a message only to the
nodes of the shard that serves the channel's slot, instead of copying it to every node
over the cluster bus.  A write script runs on the master of its key and publishes there,
so the channel must live on that master too.  Session keys are not hash-tagged (they
spread over all 16384 slots), and one channel per slot would make every listener
subscribe 16384 channels; so there is one channel per *master*: ``{t}<channel>``, where
``t`` is the first of ``"0"``, ``"1"``, ``"2"`` ... whose slot that master owns.  Every
node computes the same names from the same slot map; a failover keeps them (the replica
takes over the same slots); moving slots may change them (the listener resubscribes).
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Sequence

SLOTS = 16384
_MASK = SLOTS - 1


def key_slot(key: bytes) -> int:
    """The hash slot of ``key`` (CRC16 of the key, or of its ``{hash tag}``), as Redis computes it."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return binascii.crc_hqx(key, 0) & _MASK


def shard_tag(owned: set[int]) -> str:
    """The hash tag of the channel of the master owning ``owned`` slots: the first decimal
    string whose slot is in ``owned``.

    Raises:
        ValueError: ``owned`` is empty.
    """
    if not owned:
        raise ValueError("a master without slots has no shard channel")
    i = 0
    while True:
        tag = str(i)
        if key_slot(tag.encode()) in owned:
            return tag
        i += 1


def shard_channel(channel: str, tag: str) -> str:
    """The sharded form of ``channel`` for hash tag ``tag``: ``{tag}channel``."""
    return "{" + tag + "}" + channel


class ShardMap:
    """The shard channel of every slot, for one slot map.

    Args:
        channel: the deployment's channel (``ClusterConfig.channel``).
        masters: for each master, the ``(first, last)`` slot ranges it serves.

    ``channels`` lists the distinct shard channels, in the order of ``masters``.
    """

    __slots__ = ("by_slot", "channels")

    def __init__(self, channel: str, masters: Sequence[Iterable[tuple[int, int]]]) -> None:
        by_slot: list[str] = [channel] * SLOTS  # a slot nobody serves: the plain channel
        self.channels: list[str] = []
        for ranges in masters:
            owned = {slot for first, last in ranges for slot in range(first, last + 1)}
            name = shard_channel(channel, shard_tag(owned))
            self.channels.append(name)
            for slot in owned:
                by_slot[slot] = name
        self.by_slot = by_slot

    def channel_for(self, key: str) -> str:
        """The shard channel serving ``key``'s slot."""
        return self.by_slot[key_slot(key.encode())]
