"""Reading sessions written by the backend an app used before fastsess (zero-logout migration).

No framework is imported here.  ``decode_legacy`` turns the bytes another session
library stored into plain data fastsess can store: msgpack and JSON always, pickle
only when the caller opts in, and then only through ``SafeUnpickler``, which
rebuilds plain containers, str, bytes, numbers, bool, None, datetime/date/time/
timedelta/timezone, Decimal and UUID and refuses every other global.

``migrated_session_id`` names the fastsess id a migrated session is stored under: derived
from the old id, so every request still carrying the old cookie finds the same session.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import io
import json
import pickle
import uuid
from typing import Any

import msgpack

__all__ = ["LegacyDataError", "SafeUnpickler", "decode_legacy", "migrated_session_id", "safe_unpickle", "to_storable"]

#: Mixed into every derived id, so it never equals a hash of the old id taken for another purpose.
MIGRATED_PURPOSE = b"fastsess-migrated:"


def migrated_session_id(legacy_id: str) -> str:
    """The fastsess id a session moved from the old backend under ``legacy_id`` is stored under.

    ``base64url(sha256(b"fastsess-migrated:" + legacy_id))`` without padding: 43 characters
    of ``[A-Za-z0-9_-]``, the form of the ids fastsess issues, so the stores accept it and
    ``iter_ids``/``count``/``clear`` see it.  Deterministic: concurrent requests carrying
    the same old cookie all name the same session, and only a holder of the old id (the
    old bearer secret) can name it.  No I/O; never raises for a str.
    """
    digest = hashlib.sha256(MIGRATED_PURPOSE + legacy_id.encode("utf-8", "surrogatepass")).digest()
    return base64.urlsafe_b64encode(digest)[:43].decode("ascii")



class LegacyDataError(ValueError):
    """Legacy session bytes that cannot be read safely (unknown format or a forbidden type)."""


_ALLOWED_GLOBALS = {
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "str"), ("builtins", "bytes"), ("builtins", "bytearray"),
    ("builtins", "int"), ("builtins", "float"), ("builtins", "bool"),
    ("datetime", "datetime"), ("datetime", "date"), ("datetime", "time"), ("datetime", "timedelta"),
    ("datetime", "timezone"),
    ("decimal", "Decimal"),
    ("uuid", "UUID"),
    # protocol 2 pickles bytes as _codecs.encode(str, "latin1"): a pure data transform
    ("_codecs", "encode"),
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that can only rebuild the allow-listed plain types (see the module doc).

    Raises:
        pickle.UnpicklingError: the pickle names any other global.
    """

    def find_class(self, module: str, name: str) -> Any:
        """The allow-listed class ``module.name``.

        Raises:
            pickle.UnpicklingError: anything not on the allow-list.
        """
        if module == "__builtin__":  # Python 2 names, written by protocols <= 2
            module = "builtins"
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"legacy session data may not load {module}.{name}")


def safe_unpickle(data: bytes) -> Any:
    """Unpickle ``data`` through ``SafeUnpickler``.

    Raises:
        LegacyDataError: not a pickle, or a pickle of a forbidden type.
    """
    try:
        return SafeUnpickler(io.BytesIO(data)).load()
    except Exception as exc:  # any failure of untrusted input: one clear error
        raise LegacyDataError(f"legacy pickle refused: {exc}") from exc


def to_storable(value: Any) -> Any:
    """``value`` with every type fastsess cannot store turned into one it can.

    tuple/set/frozenset become lists, Decimal and UUID strings, time its ISO form,
    timedelta its seconds (float), bytearray bytes; timezone-aware datetimes stay.

    Raises:
        LegacyDataError: a dict key that is not a string, or any other type.
    """
    if value is None or isinstance(value, (str, bytes, bool, int, float, dt.datetime, dt.date)):
        return value
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise LegacyDataError(f"legacy session key {key!r} is not a str")
            out[key] = to_storable(item)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_storable(item) for item in value]
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytearray):
        return bytes(value)
    raise LegacyDataError(f"legacy session value of type {type(value).__name__} cannot be stored")


def decode_legacy(raw: bytes, allow_pickle: bool = False) -> dict[str, Any]:
    """The session dict in ``raw``: msgpack, else JSON, else (only if ``allow_pickle``) a safe pickle.

    The result holds only types fastsess stores (see ``to_storable``).

    Raises:
        LegacyDataError: no allowed format decodes it to a dict.
    """
    data: Any = None
    decoded = False
    if raw[:1] in (b"{", b"[") or raw[:1].isspace():
        try:
            data, decoded = json.loads(raw), True
        except ValueError:
            pass
    if not decoded and raw[:1] != b"\x80":  # 0x80: the PROTO opcode every pickle since protocol 2 starts with
        try:
            data, decoded = msgpack.unpackb(raw, raw=False, strict_map_key=True, timestamp=3), True
        except Exception:  # msgpack raises several types for foreign bytes
            pass
    if not decoded and allow_pickle:
        data, decoded = safe_unpickle(raw), True
    if not decoded and raw[:1] == b"\x80":
        raise LegacyDataError("legacy session data is a pickle, read only with the pickle opt-in")
    if not decoded or not isinstance(data, dict):
        raise LegacyDataError("legacy session data is not a msgpack, JSON" + (" or pickle" if allow_pickle else "") + " dict")
    result = to_storable(data)
    assert isinstance(result, dict)
    return result
