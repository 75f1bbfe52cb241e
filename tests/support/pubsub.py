"""A plain redis-py subscriber, to see exactly what the stores publish on a channel."""

from __future__ import annotations

import time
import uuid

import redis

from .waiting import wait_until


class RawSubscriber:
    """Subscribed to ``channel`` on the server at ``url`` once constructed."""

    def __init__(self, url: str, channel: str) -> None:
        self.channel = channel
        self.client = redis.Redis.from_url(url)
        self.pubsub = self.client.pubsub()
        self.pubsub.subscribe(channel)
        wait_until(lambda: (m := self.pubsub.get_message(timeout=0.1)) is not None and m["type"] == "subscribe", 5.0, what="raw subscription")

    def until_barrier(self, timeout: float = 5.0) -> list[bytes]:
        """Every message published before this call (and not read yet), in order.

        Publishes a marker on the channel and reads up to it: Redis delivers a channel's
        messages in the order it executed the PUBLISH commands, so whatever a finished
        call published comes before the marker.  No quiet period is waited for.
        """
        marker = b"barrier:" + uuid.uuid4().hex.encode()
        self.client.publish(self.channel, marker)
        out = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if msg is None or msg["type"] != "message":
                continue
            if msg["data"] == marker:
                return out
            out.append(msg["data"])
        raise AssertionError(f"the barrier marker never arrived on {self.channel}")

    def next(self, timeout: float = 2.0) -> bytes | None:
        """The next message, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if msg is not None and msg["type"] == "message":
                return msg["data"]
        return None

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()
