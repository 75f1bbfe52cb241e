"""The fuzz targets' shared pieces: the message decoder (wherever it lives) and its contract."""

from __future__ import annotations

from typing import Any

try:  # the wire format's module since the cluster split
    from fastsess._core.messages import (
        CLEARED,
        DELETED_MANY,
        MAX_IDS,
        MAX_MANY_BYTES,
        MAX_MESSAGE_BYTES,
        MESSAGE_TYPES,
        TOUCHED,
        decode_message,
    )
except ImportError:  # pragma: no cover - before it
    from fastsess.cluster import CLEARED, MAX_MESSAGE_BYTES, MESSAGE_TYPES, TOUCHED, decode_message  # type: ignore[no-redef]

from fastsess.stores.base import new_session_id

__all__ = ["MESSAGE_TYPES", "SID", "check_message", "decode_message"]

SID = new_session_id()  # the id every fuzzed session is decoded under


def check_message(raw: Any, msg: Any) -> None:
    """``decode_message``'s contract: None, or a map whose fields the listener can use as they are."""
    if msg is None:
        return
    assert isinstance(msg, dict)
    if msg["t"] == DELETED_MANY:  # delete_all's batch: a list of ids, a longer message
        assert isinstance(raw, bytes) and len(raw) <= MAX_MANY_BYTES
        assert type(msg["ids"]) is list and 0 < len(msg["ids"]) <= MAX_IDS
        assert all(isinstance(i, str) for i in msg["ids"])
        return
    # a message carrying a value (update mode) may be larger by that value
    assert isinstance(raw, bytes) and len(raw) <= MAX_MESSAGE_BYTES + (len(msg["p"]) if "p" in msg else 0)
    assert msg["t"] in MESSAGE_TYPES
    assert isinstance(msg["node"], str)
    version = msg.get("v", 0)
    assert type(version) is int
    if msg["t"] != CLEARED:
        assert isinstance(msg["id"], str)
    if msg["t"] == TOUCHED:
        assert type(msg["x"]) is int and msg["x"] >= 0
