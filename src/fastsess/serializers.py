"""Turning sessions into bytes and back: msgpack (default) or JSON, in a versioned envelope.

Wire format of a stored session::

    b"FS" | envelope version (1 byte) | codec id (1 byte) | flags (1 byte) | body

``body`` is the codec's encoding of ``[created_at, refreshed_at, ttl, version,
data]``, zlib-compressed when flag ``0x01`` is set (bodies at least
``compress_threshold`` bytes long; off by default).  Anything else under a
session key (another tool's msgpack or JSON, garbage, an unknown envelope
version) is rejected with ``SessionCorrupt``.  Either serializer reads the
other's sessions, so switching codecs needs no migration.

No pickle anywhere: decoding bytes from Redis can only produce plain data
(dict, list, str, bytes, int, float, bool, None, datetime, date).  Datetimes
keep their tzinfo as a fixed UTC offset (aware stays aware, naive stays naive;
a ``zoneinfo`` zone comes back as its offset at that instant).  Tuples come
back as lists.  JSON additionally turns non-str dict keys into str.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import zlib
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import msgpack

from .errors import SessionCorrupt
from .session import Session

MAGIC = b"FS"
ENVELOPE_VERSION = 1
FLAG_ZLIB = 0x01
HEADER_SIZE = 5
MAX_DECODED_SIZE = 16 * 1024 * 1024  # a decompression bomb stops here

_EXT_DATETIME = 1
_EXT_DATE = 2


class Serializer(ABC):
    """Envelope, compression and validation; subclasses supply ``dumps``/``loads``.

    Args:
        compress_threshold: zlib-compress bodies of at least this many bytes
            (None: never).
        max_size: the largest decompressed body accepted when decoding.

    Raises:
        ConfigError: a negative threshold or size.
    """

    codec_id: ClassVar[int]
    name: ClassVar[str]

    def __init__(self, compress_threshold: int | None = None, max_size: int = MAX_DECODED_SIZE) -> None:
        from .errors import ConfigError

        if compress_threshold is not None and compress_threshold < 0:
            raise ConfigError("compress_threshold must be >= 0 or None")
        if max_size < 1:
            raise ConfigError("max_size must be positive")
        self.compress_threshold = compress_threshold
        self.max_size = max_size

    @abstractmethod
    def dumps(self, obj: Any) -> bytes:
        """Encode plain data.

        Raises:
            TypeError: a value the codec cannot represent (e.g. a set or an object).
        """

    @abstractmethod
    def loads(self, data: bytes) -> Any:
        """Decode plain data; any exception means the bytes are not valid for this codec."""

    def encode(self, session: Session) -> bytes:
        """The stored form of ``session`` (its current data and metadata). Cost: one ``dumps``.

        Raises:
            TypeError: the session holds a value that cannot be stored.
        """
        body = self.dumps([session.created_at, session.refreshed_at, session.ttl, session.version, session._data])
        flags = 0
        if self.compress_threshold is not None and len(body) >= self.compress_threshold:
            body = zlib.compress(body)
            flags |= FLAG_ZLIB
        return MAGIC + bytes((ENVELOPE_VERSION, self.codec_id, flags)) + body

    def decode(self, session_id: str, raw: bytes) -> Session:
        """Rebuild the session stored as ``raw`` under ``session_id``. Cost: one ``loads``.

        Raises:
            SessionCorrupt: ``raw`` is not a fastsess session this version can read.
        """
        if not isinstance(raw, (bytes, bytearray)) or len(raw) < HEADER_SIZE or raw[:2] != MAGIC:
            raise SessionCorrupt("not a fastsess session envelope")
        version, codec_id, flags = raw[2], raw[3], raw[4]
        if version != ENVELOPE_VERSION:
            raise SessionCorrupt(f"unknown session envelope version {version}")
        codec = self if codec_id == self.codec_id else _codec_for(codec_id)
        body = bytes(raw[HEADER_SIZE:])
        try:
            if flags & FLAG_ZLIB:
                body = _inflate(body, self.max_size)
            elif flags:
                raise SessionCorrupt(f"unknown envelope flags {flags:#x}")
            fields = codec.loads(body)
        except SessionCorrupt:
            raise
        except Exception as exc:  # any decoding failure of untrusted bytes
            raise SessionCorrupt(f"undecodable {codec.name} session body") from exc
        try:
            created_at, refreshed_at, ttl, ver, data = fields
            valid = (
                isinstance(data, dict)
                and type(ttl) is int
                and ttl >= 1
                and type(ver) is int
                and ver >= 0
                and isinstance(created_at, (int, float))
                and isinstance(refreshed_at, (int, float))
            )
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise SessionCorrupt("malformed fastsess session fields")
        return Session._restore(session_id, data, ttl, created_at, refreshed_at, ver)


def _inflate(body: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj()
    out = inflater.decompress(body, limit)
    if inflater.unconsumed_tail or not inflater.eof:
        raise SessionCorrupt("compressed session body too large or truncated")
    return out


class MsgpackSerializer(Serializer):
    """msgpack with ``bytes`` kept as bytes and datetimes/dates as extension types."""

    codec_id = 1
    name = "msgpack"

    def dumps(self, obj: Any) -> bytes:
        """msgpack-encode ``obj``. Raises TypeError for values msgpack cannot carry."""
        try:
            return msgpack.packb(obj, use_bin_type=True, default=_msgpack_default)
        except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from os.fsdecode
            raise TypeError(f"a session cannot store a str that is not valid Unicode: {exc}") from exc

    def loads(self, data: bytes) -> Any:
        """msgpack-decode ``data`` into plain data; unknown extension types are an error."""
        return msgpack.unpackb(data, raw=False, ext_hook=_msgpack_ext, strict_map_key=False, timestamp=3)


def _msgpack_default(obj: Any) -> Any:
    if isinstance(obj, _dt.datetime):
        return msgpack.ExtType(_EXT_DATETIME, obj.isoformat().encode())
    if isinstance(obj, _dt.date):
        return msgpack.ExtType(_EXT_DATE, obj.isoformat().encode())
    raise TypeError(f"a session cannot store a value of type {type(obj).__name__}")


def _msgpack_ext(code: int, data: bytes) -> Any:
    if code == _EXT_DATETIME:
        return _dt.datetime.fromisoformat(data.decode())
    if code == _EXT_DATE:
        return _dt.date.fromisoformat(data.decode())
    raise ValueError(f"unknown msgpack extension type {code}")


class JSONSerializer(Serializer):
    """Compact UTF-8 JSON; datetimes, dates and bytes are tagged objects (``{"$dt": ...}``)."""

    codec_id = 2
    name = "json"

    def dumps(self, obj: Any) -> bytes:
        """JSON-encode ``obj``. Raises TypeError for values JSON cannot carry.

        Cost: one extra walk over the data, to escape user keys that start with ``$``
        (``{"$dt": ...}`` is stored as ``{"$$dt": ...}`` so it can't pass for a tag).
        """
        try:
            return json.dumps(_escape_keys(obj), separators=(",", ":"), ensure_ascii=False, default=_json_default).encode()
        except UnicodeEncodeError as exc:
            raise TypeError(f"a session cannot store a str that is not valid Unicode: {exc}") from exc

    def loads(self, data: bytes) -> Any:
        """JSON-decode ``data``, turning tagged objects back into datetimes, dates and bytes."""
        return json.loads(data, object_hook=_json_object)


def _escape_keys(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {("$" + k if isinstance(k, str) and k[:1] == "$" else k): _escape_keys(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_escape_keys(v) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, _dt.datetime):
        return {"$dt": obj.isoformat()}
    if isinstance(obj, _dt.date):
        return {"$date": obj.isoformat()}
    if isinstance(obj, (bytes, bytearray)):
        return {"$b64": base64.b64encode(obj).decode()}
    raise TypeError(f"a session cannot store a value of type {type(obj).__name__}")


def _json_object(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        if "$dt" in obj:
            return _dt.datetime.fromisoformat(obj["$dt"])
        if "$date" in obj:
            return _dt.date.fromisoformat(obj["$date"])
        if "$b64" in obj:
            return base64.b64decode(obj["$b64"], validate=True)
    if any(k[:1] == "$" for k in obj):  # user keys escaped by _escape_keys
        return {(k[1:] if k[:2] == "$$" else k): v for k, v in obj.items()}
    return obj


_CODECS: dict[int, Serializer] = {}


def _codec_for(codec_id: int) -> Serializer:
    if not _CODECS:
        _CODECS.update({cls.codec_id: cls() for cls in (MsgpackSerializer, JSONSerializer)})
    try:
        return _CODECS[codec_id]
    except KeyError:
        raise SessionCorrupt(f"unknown session codec {codec_id}") from None


def resolve_serializer(serializer: Serializer | str | None) -> Serializer:
    """``serializer`` itself, or a new one by name (``"msgpack"``, ``"json"``; None: msgpack).

    Raises:
        ConfigError: an unknown name or type.
    """
    from .errors import ConfigError

    if serializer is None or serializer == "msgpack":
        return MsgpackSerializer()
    if serializer == "json":
        return JSONSerializer()
    if isinstance(serializer, Serializer):
        return serializer
    raise ConfigError(f"serializer must be 'msgpack', 'json' or a Serializer, not {serializer!r}")
