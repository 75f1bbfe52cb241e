"""Helpers the framework drop-ins share: signed session-id cookies and private data copies.

No framework is imported here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from ..stores.base import is_valid_session_id

#: Purpose string mixed into the cookie-signing key, so the key signing session
#: ids is never the application's ``SECRET_KEY`` itself nor any other derived key.
COOKIE_PURPOSE = b"fastsess.contrib session-id cookie v1"

_SIG_LEN = 43  # unpadded urlsafe base64 of a 32-byte HMAC-SHA256


def plain_copy(value: Any) -> Any:
    """A copy of session data in which every dict and list is new (other values are immutable).

    Session values are plain data (str, bytes, numbers, bool, None, datetime, date,
    lists and dicts), so copying the containers is a full deep copy.  Used so that
    a request mutating a nested value in place never changes a store's cached copy.
    """
    if type(value) is dict:
        return {k: plain_copy(v) for k, v in value.items()}
    if type(value) is list:
        return [plain_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: plain_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_copy(v) for v in value]
    return value


class CookieSigner:
    """Signs session ids for a cookie with HMAC-SHA256 and checks them in constant time.

    The key is ``HMAC-SHA256(secret, purpose)``: derived from the application's
    secret with a purpose string, so it differs from every other use of that secret.
    A cookie value is ``<id>.<signature>`` (id: 43 characters, signature: 43).

    Raises:
        ValueError: an empty secret.
    """

    __slots__ = ("_key",)

    def __init__(self, secret: str | bytes, purpose: bytes = COOKIE_PURPOSE) -> None:
        if isinstance(secret, str):
            secret = secret.encode()
        if not secret:
            raise ValueError("a non-empty secret key is required to sign session cookies")
        self._key = hmac.new(secret, purpose, hashlib.sha256).digest()

    def _signature(self, session_id: str) -> str:
        mac = hmac.new(self._key, session_id.encode("ascii"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")

    def sign(self, session_id: str) -> str:
        """The cookie value for ``session_id``."""
        return f"{session_id}.{self._signature(session_id)}"

    def unsign(self, value: object) -> str | None:
        """The session id in a cookie value, or None (missing, malformed, bad signature).

        The signature comparison takes constant time (``hmac.compare_digest``).
        """
        if not isinstance(value, str) or len(value) != 43 + 1 + _SIG_LEN:
            return None
        session_id, dot, signature = value[:43], value[43], value[44:]
        if dot != "." or not is_valid_session_id(session_id):
            return None
        try:
            signature_bytes = signature.encode("ascii")
        except UnicodeEncodeError:
            return None
        if not hmac.compare_digest(self._signature(session_id).encode("ascii"), signature_bytes):
            return None
        return session_id
