"""Turning sessions into bytes and back: msgpack (default) or JSON, in a versioned envelope.

Wire format of a stored session::

    b"FS" | envelope version (1 byte) | codec id (1 byte) | flags (1 byte) | body

``body`` is the codec's encoding of ``[created_at, refreshed_at, ttl, version,
data]``, zlib-compressed when flag ``0x01`` is set (bodies at least
``compress_threshold`` bytes long; off by default).  Anything else under a
session key (another tool's msgpack or JSON, garbage, an unknown envelope
version) is rejected with ``SessionCorrupt``.  Either serializer reads the
other's sessions, so switching codecs needs no migration.  A store with
``encryption=`` stores this envelope encrypted, as envelope version 2
(``fastsess.crypto``).

No pickle anywhere: decoding bytes from Redis can only produce plain data
(dict, list, str, bytes, int, float, bool, None, datetime, date).  Datetimes
keep their tzinfo as a fixed UTC offset (aware stays aware, naive stays naive;
a ``zoneinfo`` zone comes back as its offset at that instant).  Tuples come
back as lists.  JSON additionally turns non-str dict keys into str.

Limits, enforced identically when encoding and decoding (so ``encode`` refuses
exactly what ``decode`` would refuse, and a session that was saved can always be
loaded by a reader with the same limits):

* ``max_size`` (16 MiB): the body before compression.  Larger: ``SessionTooLarge``
  at encode, ``SessionCorrupt`` at decode (a decompression bomb stops inflating here).
* ``max_items`` (1,000,000): values in the whole session, counted as the lengths of
  all lists and dicts plus the containers themselves (JSON: its commas and opening
  brackets outside strings).  Bounds decode memory and time whatever the bytes.
  Larger: ``SessionTooLarge`` / ``SessionCorrupt``.
* ``max_depth`` (100): lists/dicts nested in a session value
  (``session["v"] = [[...]]`` with 100 levels of lists is the deepest allowed).
  Deeper: ``TypeError`` / ``SessionCorrupt``.

``encode`` checks a session by decoding the body it produced with the same code
and limits as ``decode`` (cost: one extra decode per write): a value that could
never be read back (a tuple or other unhashable dict key, a raw
``msgpack.ExtType``, an int JSON cannot read back) raises ``TypeError``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import re
import zlib
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import msgpack

from .errors import SessionCorrupt, SessionTooLarge
from .session import MAX_TTL, Session

MAGIC = b"FS"
ENVELOPE_VERSION = 1
ENCRYPTED_ENVELOPE_VERSION = 2  # b"FS\x02...": an encrypted envelope (``fastsess.crypto``)
FLAG_ZLIB = 0x01
HEADER_SIZE = 5
MAX_DECODED_SIZE = 16 * 1024 * 1024  # the largest body (before compression); a decompression bomb stops here
MAX_ITEMS = 1_000_000  # values per session (see the module doc): bounds decode memory and time
MAX_DEPTH = 100  # lists/dicts nested in one session value
_MAX_EXT_LEN = 64  # our datetime/date extensions are ISO strings of at most 32 bytes

# every byte that cannot start a msgpack array or map (fixmap, fixarray, array16/32, map16/32)
_NOT_CONTAINER_HEADERS = bytes(b for b in range(256) if not (0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF))

_EXT_DATETIME = 1
_EXT_DATE = 2


class _TooLarge(Exception):
    """A size or item limit was exceeded (``SessionTooLarge`` at encode)."""


class _TooDeep(Exception):
    """The depth limit was exceeded (``TypeError`` at encode)."""


class Serializer(ABC):
    """Envelope, compression, limits and validation; subclasses supply ``dumps``/``loads``.

    Args:
        compress_threshold: zlib-compress bodies of at least this many bytes
            (None: never).
        max_size: the largest body (before compression) written or read.
        max_items: the most values a session may hold (see the module doc).
        max_depth: the deepest nesting of lists/dicts in a session value.

    Every node reading a session must allow at least the limits its writers used
    (the defaults everywhere, unless you change them everywhere).

    Raises:
        ConfigError: a negative threshold or a limit below 1.
    """

    codec_id: ClassVar[int]
    name: ClassVar[str]

    def __init__(
        self,
        compress_threshold: int | None = None,
        max_size: int = MAX_DECODED_SIZE,
        max_items: int = MAX_ITEMS,
        max_depth: int = MAX_DEPTH,
    ) -> None:
        from .errors import ConfigError

        if compress_threshold is not None and compress_threshold < 0:
            raise ConfigError("compress_threshold must be >= 0 or None")
        for name, value in (("max_size", max_size), ("max_items", max_items), ("max_depth", max_depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, not {value!r}")
        self.compress_threshold = compress_threshold
        self.max_size = max_size
        self.max_items = max_items
        self.max_depth = max_depth

    @abstractmethod
    def dumps(self, obj: Any) -> bytes:
        """Encode plain data.

        Raises:
            TypeError: a value the codec cannot represent (e.g. a set or an object).
        """

    @abstractmethod
    def loads(self, data: bytes) -> Any:
        """Decode plain data; any exception means the bytes are not valid for this codec."""

    def loads_limited(self, data: bytes, max_items: int, max_depth: int) -> Any:
        """``loads`` with bounded work: at most ``max_items`` values, ``max_depth`` nesting.

        The built-in codecs enforce the item bound while decoding (memory and time
        stay bounded); this default for custom codecs checks after ``loads``.

        Raises:
            Exception: anything ``loads`` raises for bytes that are not valid, or an
                internal error for a limit exceeded (``decode`` maps all of them).
        """
        obj = self.loads(data)
        if _count_items(obj, max_items) > max_items:
            raise _TooLarge(f"more than {max_items} values")
        _check_depth(obj, max_depth)
        return obj

    def encode(self, session: Session) -> bytes:
        """The stored form of ``session`` (its current data and metadata).

        Cost: one ``dumps`` and one limited ``loads`` (the check described in the
        module doc), plus zlib above ``compress_threshold``.

        Raises:
            TypeError: the session holds a value that cannot be stored, or that
                could not be read back (tuple dict keys, a raw msgpack ExtType,
                nesting deeper than ``max_depth``).
            SessionTooLarge: the body exceeds ``max_size`` or ``max_items``.
        """
        return self.encode_checked(session)[0]

    def encode_checked(self, session: Session) -> tuple[bytes, dict[str, Any]]:
        """``encode``, also returning the session data as ``decode`` will rebuild it
        (a detached copy: lists for tuples, and so on).

        Raises:
            TypeError, SessionTooLarge: as ``encode``.
        """
        if not isinstance(session._data, dict):
            raise TypeError(f"session data must be a dict, not {type(session._data).__name__}")
        fields = [session.created_at, session.refreshed_at, session.ttl, session.version, session._data]
        try:
            body, produced = self._dumps_counted(fields)
        except TypeError:
            raise
        except (ValueError, RecursionError, OverflowError) as exc:  # too deep, int too long for str
            raise TypeError(f"a session cannot store this value: {type(exc).__name__}: {exc}") from exc
        if len(body) > self.max_size:
            raise SessionTooLarge(
                f"the session encodes to {len(body)} bytes, more than the {self.max_size}-byte limit (max_size)"
            )
        try:
            back = self._loads_counted(body, produced)
        except _TooLarge as exc:
            raise SessionTooLarge(f"the session is too large to be loaded back: {exc} (max_items)") from None
        except _TooDeep as exc:
            raise TypeError(f"session values nest too deeply: {exc} (max_depth)") from None
        except (ValueError, TypeError) as exc:
            if "exceeds max_" in str(exc):  # msgpack's per-container limits (max_items)
                raise SessionTooLarge(f"the session is too large to be loaded back: {exc} (max_items)") from None
            raise TypeError(f"a session value could not be read back after saving: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            raise TypeError(f"a session value could not be read back after saving: {type(exc).__name__}: {exc}") from exc
        flags = 0
        if self.compress_threshold is not None and len(body) >= self.compress_threshold:
            body = zlib.compress(body)
            flags |= FLAG_ZLIB
        data = back[4] if isinstance(back, list) and len(back) == 5 else None
        if not isinstance(data, dict):  # a custom codec that does not round-trip
            raise TypeError("the session data did not survive an encode/decode round trip")
        return MAGIC + bytes((ENVELOPE_VERSION, self.codec_id, flags)) + body, data

    def _dumps_counted(self, fields: list[Any]) -> tuple[bytes, int]:
        """``dumps`` for ``encode_checked``, with a codec-specific count for the read-back check."""
        return self.dumps(fields), 0

    def _loads_counted(self, body: bytes, produced: int) -> Any:
        """The read-back check of ``encode_checked`` (``produced`` from ``_dumps_counted``)."""
        return self.loads_limited(body, self.max_items, self.max_depth)

    def decode(self, session_id: str, raw: bytes) -> Session:
        """Rebuild the session stored as ``raw`` under ``session_id``. Cost: one limited ``loads``.

        Raises:
            SessionCorrupt: ``raw`` is not a fastsess session this version can read,
                or exceeds this serializer's limits.
        """
        if not isinstance(raw, (bytes, bytearray)) or len(raw) < HEADER_SIZE or raw[:2] != MAGIC:
            raise SessionCorrupt("not a fastsess session envelope")
        version, codec_id, flags = raw[2], raw[3], raw[4]
        if version == ENCRYPTED_ENVELOPE_VERSION:
            raise SessionCorrupt("an encrypted session, but this store has no encryption keys (encryption=)")
        if version != ENVELOPE_VERSION:
            raise SessionCorrupt(f"unknown session envelope version {version}")
        codec = self if codec_id == self.codec_id else _codec_for(codec_id)
        body = bytes(raw[HEADER_SIZE:])
        try:
            if flags & FLAG_ZLIB:
                body = _inflate(body, self.max_size)
            elif flags:
                raise SessionCorrupt(f"unknown envelope flags {flags:#x}")
            elif len(body) > self.max_size:
                raise SessionCorrupt("session body too large")
            fields = codec.loads_limited(body, self.max_items, self.max_depth)
        except SessionCorrupt:
            raise
        except (_TooLarge, _TooDeep) as exc:
            raise SessionCorrupt(f"{codec.name} session body over the limits: {exc}") from None
        except Exception as exc:  # any decoding failure of untrusted bytes
            raise SessionCorrupt(f"undecodable {codec.name} session body") from exc
        try:
            created_at, refreshed_at, ttl, ver, data = fields
            valid = (
                isinstance(data, dict)
                and type(ttl) is int
                and 1 <= ttl <= MAX_TTL
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


def _count_items(obj: Any, limit: int) -> int:
    """Values in ``obj`` as the codecs count them (container lengths + containers); stops past ``limit``."""
    n = 0
    stack = [obj]
    while stack and n <= limit:
        o = stack.pop()
        if isinstance(o, (dict, list)):
            n += len(o) + 1
            stack.extend(o.values() if isinstance(o, dict) else o)
    return n


def _check_depth(fields: Any, limit: int) -> None:
    """Raise ``_TooDeep`` if lists/dicts nest more than ``limit`` levels inside a session value.

    ``fields`` (the envelope list) is level -1 and the session mapping level 0, so
    ``session["v"] = []`` is level 1.
    """
    stack = [(fields, -1)]
    while stack:
        o, depth = stack.pop()
        if depth > limit:
            raise _TooDeep(f"nested more than {limit} levels deep")
        children = o.values() if type(o) is dict else o
        stack.extend((c, depth + 1) for c in children if type(c) is dict or type(c) is list)


class MsgpackSerializer(Serializer):
    """msgpack with ``bytes`` kept as bytes and datetimes/dates as extension types."""

    codec_id = 1
    name = "msgpack"

    def dumps(self, obj: Any) -> bytes:
        """msgpack-encode ``obj``. Raises TypeError for values msgpack cannot carry."""
        try:
            packed: bytes = msgpack.packb(obj, use_bin_type=True, default=_msgpack_default)
            return packed
        except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from os.fsdecode
            raise TypeError(f"a session cannot store a str that is not valid Unicode: {exc}") from exc

    def loads(self, data: bytes) -> Any:
        """msgpack-decode ``data`` into plain data; unknown extension types are an error."""
        return msgpack.unpackb(data, raw=False, ext_hook=_msgpack_ext, strict_map_key=False, timestamp=3)

    def loads_limited(self, data: bytes, max_items: int, max_depth: int) -> Any:
        """``loads`` that stops as soon as ``max_items`` values were built (see ``Serializer``).

        Each list/dict is counted (its length plus one) by a hook as it is completed,
        and msgpack refuses any container announcing more than ``max_items`` entries
        before allocating it, so memory stays bounded by the limit.  Depth is checked
        only when there are more containers than ``max_depth``.
        """
        return self._unpack(data, max_items, max_depth, _msgpack_ext)

    def _unpack(self, data: bytes, max_items: int, max_depth: int, ext_hook: Any) -> Any:
        # str/bin/ext lengths are bounded by len(data) (unpackb's default), lists and maps
        # by max_items, checked on their headers before anything is allocated.
        # Fast path, no Python hooks (most sessions): every value takes at least one byte
        # and every list/dict starts with a header byte in 0x80-0x9f or 0xdc-0xdf, so a
        # body this short cannot hold more values, nor nest deeper, than the limits.
        if len(data) <= max_items and len(data.translate(None, _NOT_CONTAINER_HEADERS)) <= max_depth:
            return msgpack.unpackb(
                data, raw=False, ext_hook=ext_hook, strict_map_key=False, timestamp=3,
                max_array_len=max_items, max_map_len=max_items, max_ext_len=_MAX_EXT_LEN,
            )
        budget = [max_items, 0]  # values left, containers seen

        def count(container: Any) -> Any:
            budget[0] -= len(container) + 1
            budget[1] += 1
            if budget[0] < 0:
                raise _TooLarge(f"more than {max_items} values")
            return container

        fields = msgpack.unpackb(
            data, raw=False, ext_hook=ext_hook, strict_map_key=False, timestamp=3,
            max_array_len=max_items, max_map_len=max_items, max_ext_len=_MAX_EXT_LEN,
            list_hook=count, object_hook=count,
        )
        if budget[1] > max_depth:  # fewer containers than that cannot nest deeper
            _check_depth(fields, max_depth)
        return fields

    def _dumps_counted(self, fields: list[Any]) -> tuple[bytes, int]:
        """``dumps``, counting the datetime/date extensions it produced."""
        produced = [0]

        def default(obj: Any) -> Any:
            produced[0] += 1
            return _msgpack_default(obj)

        try:
            body = msgpack.packb(fields, use_bin_type=True, default=default)
        except UnicodeEncodeError as exc:
            raise TypeError(f"a session cannot store a str that is not valid Unicode: {exc}") from exc
        return body, produced[0]

    def _loads_counted(self, body: bytes, produced: int) -> Any:
        """The read-back check; more extensions than ``dumps`` produced means a raw ``ExtType``."""
        seen = [0]

        def ext_hook(code: int, data: bytes) -> Any:
            seen[0] += 1
            return _msgpack_ext(code, data)

        fields = self._unpack(body, self.max_items, self.max_depth, ext_hook)
        if seen[0] != produced:
            raise TypeError("a session cannot store a msgpack.ExtType value")
        return fields


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


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


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
        except RecursionError as exc:
            raise TypeError("session values nest too deeply") from exc

    def loads(self, data: bytes) -> Any:
        """JSON-decode ``data``, turning tagged objects back into datetimes, dates and bytes."""
        return json.loads(data, object_hook=_json_object)

    def loads_limited(self, data: bytes, max_items: int, max_depth: int) -> Any:
        """``loads`` after counting the values by their separators (see ``Serializer``).

        Commas plus opening brackets bound the values JSON can build; they are
        counted on the raw bytes first (fast) and, only if that rough count is over
        the limit, again outside string literals.  Depth is checked after decoding,
        only when there are more brackets than ``max_depth``.
        """
        containers = data.count(b"[") + data.count(b"{")
        if data.count(b",") + containers > max_items:
            structure = _JSON_STRING.sub(b'""', data)
            containers = structure.count(b"[") + structure.count(b"{")
            if structure.count(b",") + containers > max_items:
                raise _TooLarge(f"more than {max_items} values")
        fields = self.loads(data)
        if containers > max_depth:
            _check_depth(fields, max_depth)
        return fields
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
