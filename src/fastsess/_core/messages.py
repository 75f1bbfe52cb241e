"""The invalidation wire format: one msgpack map per message, ``{t, id, node, v}``.

``t`` is the message type, ``id`` the session id (None for ``cleared``), ``node`` the
sender's instance id and ``v`` the session version; a ``touched`` message also carries
``x``, the new expiry in seconds.  A ``deleted_many`` message (``delete_all``: one per
batch of sessions, instead of one message per id) has ``id`` None and ``ids``, a list of
1 to ``MAX_IDS`` session ids; it may be up to ``MAX_MANY_BYTES`` long.  In update mode
an ``invalidated`` message may also carry ``p``, the value the write stored (the
serializer's envelope, as in Redis), and ``e``, the expiry in seconds it was stored
with: a node caching that session may replace its copy instead of evicting it.  The
first save of a new id publishes an ``invalidated`` with ``c`` (created) true: nodes
forget the id as absent and keep any copy they hold (nobody can hold one older than the
creation).  Encoding and decoding only: no I/O.

A ``filled`` message (``warm_peers``) is not an invalidation: a load that missed
publishes the value it read, ``{t, id, node, k, e, p}``, from inside its script (the
client sends the bytes up to the key ``e``; the script appends the expiry and the value:
``complete_fill`` builds the same bytes in Python), and nodes that do not cache the
session add it.  It is never sequenced: losing one costs a round trip, not coherence.
``k`` (also on a message carrying ``p``) names the store's key prefix (``scope_of``):
only a store of that very prefix adds the value (stores of several prefixes may share a
channel).

A **sequenced** message (a standalone or Sentinel Redis: see ``fastsess._core.sequence``)
also carries ``ep``, the dataset epoch, and ``sq``, its sequence number, both added by
the write script on the server: the client's bytes (``encode_message(sequenced=True)``)
are a map whose header counts two more pairs and which ends with the key ``ep``; the
script appends ``<epoch> "sq" <sequence>``, both as short strings (``append_sequence``
builds the same bytes in Python).  ``decode_message`` gives ``sq`` as an int.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import msgpack

from ..config import MAX_UPDATE_BYTES

INVALIDATED = "invalidated"
DELETED = "deleted"
CLEARED = "cleared"
TOUCHED = "touched"  # carries "x": the new expiry in seconds
DELETED_MANY = "deleted_many"  # carries "ids": the deleted session ids
FILLED = "filled"  # warm_peers: carries "p" and "e", the value a load read and its expiry
MESSAGE_TYPES = frozenset({INVALIDATED, DELETED, CLEARED, TOUCHED, DELETED_MANY, FILLED})
MAX_MESSAGE_BYTES = 1024  # a real message is < 120 bytes; anything bigger is not ours
MAX_IDS = 1000  # ids in one deleted_many message (delete_all's batch)
MAX_MANY_BYTES = 64 * 1024  # a deleted_many message of MAX_IDS ids is ~46 KB
# ... unless it carries a value (update mode): at most MAX_UPDATE_BYTES more.
MAX_UPDATE_MESSAGE_BYTES = MAX_MESSAGE_BYTES + MAX_UPDATE_BYTES
_LARGEST = max(MAX_MANY_BYTES, MAX_UPDATE_MESSAGE_BYTES)


def new_instance_id(label: str) -> str:
    """A fresh sender identity for one coordinator: ``<label>/<64 random bits>``.

    ``label`` (``ClusterConfig.node_id``) is only there for logs; the random part makes
    the id unique per store instance and per process, whatever the configuration says.
    """
    return f"{label}/{secrets.token_hex(8)}"


def encode_message(
    kind: str, session_id: str | None, node_id: str, version: int = 0, expires_in: int | None = None,
    ids: list[str] | None = None, payload: bytes | None = None, created: bool = False, sequenced: bool = False,
    scope: bytes | None = None,
) -> bytes:
    """The wire form of one invalidation: msgpack ``{t, id, node, v}`` (plus ``x`` for
    ``touched``, ``ids`` for ``deleted_many``; plus ``p`` and ``e`` for an ``invalidated``
    carrying ``payload``, stored for ``expires_in`` seconds; plus ``c`` for the
    ``invalidated`` of a creation).

    ``sequenced``: the bytes a sequenced write script completes (see the module doc);
    not a valid message until ``ep`` and ``sq`` are appended.  ``scope``: with a
    ``payload``, the sender store's ``scope_of(prefix)``, carried as ``k``.

    Raises:
        ValueError: unknown ``kind``, ``touched`` without ``expires_in``, ``deleted_many``
            without 1 to ``MAX_IDS`` ids, a ``payload`` on another kind than
            ``invalidated``, without ``expires_in`` or larger than ``MAX_UPDATE_BYTES``,
            or ``created`` on another kind than ``invalidated``.
    """
    if kind not in MESSAGE_TYPES or kind == FILLED:
        raise ValueError(f"unknown message type {kind!r}" if kind != FILLED else "a filled message is built by fill_prefix")
    msg: dict[str, Any] = {"t": kind, "id": session_id, "node": node_id, "v": version}
    if kind == DELETED_MANY:
        if not ids or len(ids) > MAX_IDS:
            raise ValueError(f"a deleted_many message carries 1 to {MAX_IDS} ids")
        msg["ids"] = ids
    if kind == TOUCHED:
        if expires_in is None:
            raise ValueError("a touched message needs expires_in")
        msg["x"] = expires_in
    if payload is not None:
        if kind != INVALIDATED or expires_in is None or len(payload) > MAX_UPDATE_BYTES:
            raise ValueError("a payload goes only on an invalidated message, with expires_in, within MAX_UPDATE_BYTES")
        if scope is not None:  # the store the value belongs to (see scope_of)
            msg["k"] = scope
        msg["p"] = payload
        msg["e"] = expires_in
    if created:
        if kind != INVALIDATED:
            raise ValueError("only an invalidated message marks a creation")
        msg["c"] = True
    packed: bytes = msgpack.packb(msg)
    if sequenced:  # a fixmap (fewer than 16 pairs): the header byte is 0x80 | pairs
        packed = bytes((packed[0] + 2,)) + packed[1:] + _EP_KEY
    return packed


_EP_KEY: bytes = msgpack.packb("ep")
_E_KEY: bytes = msgpack.packb("e")
_P_KEY: bytes = msgpack.packb("p")


def scope_of(key_prefix: str) -> bytes:
    """What a message that carries a value says of the store it came from (its ``k``): 8
    bytes of a hash of the store's key prefix.  Stores of different prefixes may share a
    channel (the default one): a value read or written under another prefix is not a
    session of this store, and must never be added to its cache."""
    return hashlib.blake2b(key_prefix.encode(), digest_size=8, person=b"fastsess-scope").digest()


def fill_prefix(session_id: str, node_id: str, scope: bytes | None = None) -> bytes:
    """The client's part of a ``filled`` message: a map that ends with the key ``e`` (two
    pairs short); the load script appends the expiry and the value (``complete_fill``).
    ``scope``: the store's ``scope_of(prefix)``, carried as ``k`` (a fill without it, or
    with another, is added by no store)."""
    fields: dict[str, Any] = {"t": FILLED, "id": session_id, "node": node_id}
    if scope is not None:
        fields["k"] = scope
    packed: bytes = msgpack.packb(fields)
    return bytes((packed[0] + 2,)) + packed[1:] + _E_KEY


def complete_fill(prefix: bytes, expires_in: int, payload: bytes) -> bytes:
    """What the load script publishes: ``prefix`` (``fill_prefix``) completed with the
    expiry (uint 32) and the value (bin 32), as the Lua step does."""
    return prefix + b"\xce" + expires_in.to_bytes(4, "big") + _P_KEY + b"\xc6" + len(payload).to_bytes(4, "big") + payload
_SQ_KEY: bytes = msgpack.packb("sq")


def append_sequence(message: bytes, epoch: str, seq: int) -> bytes:
    """What the write script publishes: ``message`` (``encode_message(sequenced=True)``)
    completed with the epoch and the sequence number (as the Lua publish step does)."""
    tail: bytes = msgpack.packb(epoch) + _SQ_KEY + msgpack.packb(str(seq))
    return message + tail


def decode_message(data: Any) -> dict[str, Any] | None:
    """The message map, or None if ``data`` is not a well-formed fastsess message. Never raises."""
    if not isinstance(data, bytes) or len(data) > _LARGEST:
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
    if "sq" in msg:
        if kind == FILLED:  # never numbered: it must not move a listener's sequence
            return None
        seq, epoch = msg["sq"], msg.get("ep")
        if not isinstance(seq, str) or not seq.isdigit() or not seq.isascii() or len(seq) > 20 or not isinstance(epoch, str):
            return None
        msg["sq"] = int(seq)
    if kind == DELETED_MANY:
        ids = msg.get("ids")
        if type(ids) is not list or not 0 < len(ids) <= MAX_IDS or not all(isinstance(i, str) for i in ids):
            return None
        return msg
    if "p" in msg:  # update mode: the value and its expiry, on an invalidated or filled message only
        payload, expires_in = msg["p"], msg.get("e")
        if kind not in (INVALIDATED, FILLED) or not isinstance(payload, bytes) or type(expires_in) is not int or expires_in < 1:
            return None
        if len(data) > MAX_MESSAGE_BYTES + len(payload):  # the rest is as small as a plain message
            return None
    elif len(data) > MAX_MESSAGE_BYTES or kind == FILLED:  # only deleted_many and updates may be longer
        return None
    if msg["t"] != CLEARED and not isinstance(session_id, str):
        return None
    if "c" in msg and (msg["c"] is not True or kind != INVALIDATED):
        return None
    if "k" in msg and type(msg["k"]) is not bytes:
        return None
    return msg
