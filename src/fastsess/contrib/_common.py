"""Helpers the framework drop-ins share: signed session-id cookies and private data copies.

No framework is imported here.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import re
from collections.abc import MutableMapping
from typing import Any

from ..session import Session
from ..stores.base import PRINCIPAL_KEY, principal_mark

#: Purpose string mixed into the cookie-signing key, so the key signing session
#: ids is never the application's ``SECRET_KEY`` itself nor any other derived key.
COOKIE_PURPOSE = b"fastsess.contrib session-id cookie v1"

_SIG_LEN = 43  # unpadded urlsafe base64 of a 32-byte HMAC-SHA256
#: How many verified cookie values a ``CookieSigner`` remembers (about 0.5 MB at most).
VERIFIED_MAX = 4096
# a session id (the form fastsess issues), a dot, a signature: ASCII only, so compare_digest takes str
_COOKIE = re.compile(r"[A-Za-z0-9_-]{43}\.[A-Za-z0-9_-]{43}\Z")


# values plain_copy hands back as they are (immutable); checked inline to skip a call per value
_IMMUTABLE = frozenset({str, int, float, bool, bytes, type(None), datetime.datetime, datetime.date})


def plain_copy(value: Any) -> Any:
    """A copy of session data in which every dict and list is new (other values are immutable).

    Session values are plain data (str, bytes, numbers, bool, None, datetime, date,
    lists and dicts), so copying the containers is a full deep copy.  Used so that
    a request mutating a nested value in place never changes a store's cached copy.
    """
    kind = type(value)
    if kind is dict:
        if _IMMUTABLE.issuperset(map(type, value.values())):  # flat (the usual session): all in C
            return value.copy()
        return {k: v if type(v) in _IMMUTABLE else plain_copy(v) for k, v in value.items()}
    if kind is list:
        if _IMMUTABLE.issuperset(map(type, value)):
            return value.copy()
        return [v if type(v) in _IMMUTABLE else plain_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: plain_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_copy(v) for v in value]
    return value


def copy_into(target: dict[str, Any], data: dict[str, Any]) -> None:
    """Put a ``plain_copy`` of each value of ``data`` into ``target`` (``dict`` methods, so a
    subclass that tracks changes does not count these as changes)."""
    for key, value in data.items():
        dict.__setitem__(target, key, value if type(value) in _IMMUTABLE else plain_copy(value))


class CookieSigner:
    """Signs session ids for a cookie with HMAC-SHA256 and checks them in constant time.

    The key is ``HMAC-SHA256(secret, purpose)``: derived from the application's
    secret with a purpose string, so it differs from every other use of that secret.
    A cookie value is ``<id>.<signature>`` (id: 43 characters, signature: 43).

    Raises:
        ValueError: an empty secret.
    """

    __slots__ = ("_inner", "_outer", "_signed", "_verified")

    def __init__(self, secret: str | bytes, purpose: bytes = COOKIE_PURPOSE) -> None:
        if isinstance(secret, str):
            secret = secret.encode()
        if not secret:
            raise ValueError("a non-empty secret key is required to sign session cookies")
        key = hmac.digest(secret, purpose, "sha256").ljust(64, b"\0")  # 32 bytes, padded to SHA-256's block
        # HMAC (RFC 2104) with the two padded-key hash states computed once: a signature is then
        # two copies and updates, about 3x cheaper than hmac.digest/hmac.new under OpenSSL 3,
        # which looks the algorithm up again on every call.
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
        # cookie values whose signature checked out -> their id (bounded; emptied when full)
        self._verified: dict[str, str] = {}
        self._signed: dict[str, str] = {}  # id -> cookie value (Flask re-sends the cookie on reads)

    def _signature(self, session_id: str) -> str:
        inner = self._inner.copy()
        inner.update(session_id.encode("ascii"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return base64.urlsafe_b64encode(outer.digest())[:_SIG_LEN].decode("ascii")

    def sign(self, session_id: str) -> str:
        """The cookie value for ``session_id`` (remembered like verified values, same bound)."""
        value = self._signed.get(session_id)
        if value is None:
            value = f"{session_id}.{self._signature(session_id)}"
            if len(self._signed) >= VERIFIED_MAX:
                self._signed.clear()
            self._signed[session_id] = value
        return value

    def unsign(self, value: object) -> str | None:
        """The session id in a cookie value, or None (missing, malformed, bad signature).

        The signature comparison takes constant time (``hmac.compare_digest``).  A value
        that verified before is remembered (up to ``VERIFIED_MAX`` per signer), so the
        requests of a live session cost a dict lookup instead of an HMAC; only values
        that verified are ever remembered.
        """
        if type(value) is not str:
            return None
        verified = self._verified.get(value)
        if verified is not None:
            return verified
        if _COOKIE.match(value) is None:
            return None
        session_id = value[:43]
        if not hmac.compare_digest(self._signature(session_id), value[44:]):
            return None
        if len(self._verified) >= VERIFIED_MAX:
            self._verified.clear()
        self._verified[value] = session_id
        return session_id


def mark_principal(session: MutableMapping[str, Any], principal: str) -> bool:
    """Bind a framework session (a dict saved at response time) to ``principal``: the store
    indexes it under whatever id the save writes it with.  Nothing changes (and nothing
    is written) if it is bound to ``principal`` already.  True if it was bound to another
    principal: then the caller gives it a new id (the old one stays in that principal's
    index until it is gone).

    Raises:
        TypeError, ValueError: an invalid principal (a non-empty str of at most 1024 characters).
    """
    mark = principal_mark(principal)
    current = session.get(PRINCIPAL_KEY)
    if isinstance(current, list) and current[:1] == mark[:1]:
        return False
    session[PRINCIPAL_KEY] = mark
    return isinstance(current, list) and bool(current)


def same_plain(a: Any, b: Any) -> bool:
    """Whether two plain session values are the same data, types included (``1``, ``1.0``
    and ``True`` differ: they are stored differently)."""
    if a is b:
        return True
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is dict:
        return a.keys() == b.keys() and all(same_plain(v, b[k]) for k, v in a.items())
    if kind is list:
        return len(a) == len(b) and all(same_plain(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:  # an odd value whose == fails: count it as changed
        return False


def updated(stored: Session, data: dict[str, Any], ttl: int) -> Session:
    """What to save for a request that loaded ``stored`` and ends with the framework's
    ``data``: a copy of ``stored`` with the keys this request changed set or deleted, one
    by one, so that it is saved by compare-and-set and, if another request wrote the
    session meanwhile, only these keys are re-applied over that write (``data`` must not
    share containers with ``stored``: use ``plain_copy``).  Written even if no key
    changed (``mark_for_save``), with ``ttl``."""
    record = stored.copy()
    record.ttl = ttl
    current = record.data
    for key in [k for k in current if k not in data]:
        del record[key]
    for key, value in data.items():
        if key not in current or not same_plain(current[key], value):
            record[key] = value
    record.mark_for_save()
    return record
