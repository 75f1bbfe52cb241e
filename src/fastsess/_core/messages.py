"""The invalidation wire format: one msgpack map per message, ``{t, id, node, v}``.

``t`` is the message type, ``id`` the session id (None for ``cleared``), ``node`` the
sender's instance id and ``v`` the session version; a ``touched`` message also carries
``x``, the new expiry in seconds.  Encoding and decoding only: no I/O.
"""

from __future__ import annotations

import secrets
from typing import Any

import msgpack

INVALIDATED = "invalidated"
DELETED = "deleted"
CLEARED = "cleared"
TOUCHED = "touched"  # carries "x": the new expiry in seconds
MESSAGE_TYPES = frozenset({INVALIDATED, DELETED, CLEARED, TOUCHED})
MAX_MESSAGE_BYTES = 1024  # a real message is < 120 bytes; anything bigger is not ours


def new_instance_id(label: str) -> str:
    """A fresh sender identity for one coordinator: ``<label>/<64 random bits>``.

    ``label`` (``ClusterConfig.node_id``) is only there for logs; the random part makes
    the id unique per store instance and per process, whatever the configuration says.
    """
    return f"{label}/{secrets.token_hex(8)}"


def encode_message(kind: str, session_id: str | None, node_id: str, version: int = 0, expires_in: int | None = None) -> bytes:
    """The wire form of one invalidation: msgpack ``{t, id, node, v}`` (plus ``x`` for ``touched``).

    Raises:
        ValueError: unknown ``kind``, or ``touched`` without ``expires_in``.
    """
    if kind not in MESSAGE_TYPES:
        raise ValueError(f"unknown message type {kind!r}")
    msg: dict[str, Any] = {"t": kind, "id": session_id, "node": node_id, "v": version}
    if kind == TOUCHED:
        if expires_in is None:
            raise ValueError("a touched message needs expires_in")
        msg["x"] = expires_in
    packed: bytes = msgpack.packb(msg)
    return packed


def decode_message(data: Any) -> dict[str, Any] | None:
    """The message map, or None if ``data`` is not a well-formed fastsess message. Never raises."""
    if not isinstance(data, bytes) or len(data) > MAX_MESSAGE_BYTES:
        return None
    try:
        msg = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception:  # any decoding failure is just "malformed"
        return None
    if not isinstance(msg, dict):
        return None
    kind = msg.get("t")
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:  # an unhashable t must not raise
        return None
    if kind == TOUCHED:
        expires_in = msg.get("x")
        if type(expires_in) is not int or expires_in < 0:
            return None
    node, session_id, version = msg.get("node"), msg.get("id"), msg.get("v", 0)
    if not isinstance(node, str) or not isinstance(version, int) or isinstance(version, bool):
        return None
    if msg["t"] != CLEARED and not isinstance(session_id, str):
        return None
    return msg
