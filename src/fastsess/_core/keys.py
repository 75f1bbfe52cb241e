"""Session ids and the keys they are stored under (no I/O).

A session id is ``secrets.token_urlsafe(32)``: 43 characters of ``[A-Za-z0-9_-]``.
Its key is ``prefix + id``, built in one place: ``KeySpace.key``.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from ..errors import ConfigError, InvalidSessionId
from ..session import Session

ID_LENGTH = 43
ID_GLOB = "[A-Za-z0-9_\\-]" * ID_LENGTH  # SCAN MATCH for exactly one session id after the prefix

_ID = re.compile(r"[A-Za-z0-9_-]{43}\Z")


def new_session_id() -> str:
    """A fresh 256-bit session id (``secrets.token_urlsafe(32)``, 43 characters)."""
    return secrets.token_urlsafe(32)


def is_valid_session_id(session_id: object) -> bool:
    """True if ``session_id`` has the form fastsess issues (no I/O)."""
    return type(session_id) is str and _ID.match(session_id) is not None


def check_session_id(session: Session) -> None:
    """Refuse to write ``session`` under an id fastsess could not have issued.

    Raises:
        InvalidSessionId: ``session.id`` is not a 43-character URL-safe id (e.g. None,
            or ``"../x*"``, which would dodge ``iter_ids``/``clear``).
    """
    session_id = session.id
    if not is_valid_session_id(session_id):
        shown = f"a str of length {len(session_id)}" if isinstance(session_id, str) else type(session_id).__name__
        raise InvalidSessionId(
            f"session.id is not a fastsess session id ({shown}; expected 43 URL-safe characters): "
            "take ids from store.create() or store.regenerate()"
        )


def check_prefix(prefix: Any) -> str:
    """Validate a key prefix: a non-empty str that encodes to UTF-8.

    Raises:
        ConfigError: empty, not a str, or not encodable (e.g. a lone surrogate).
    """
    if not isinstance(prefix, str):
        raise ConfigError(f"prefix must be a str, not {prefix!r}")
    if not prefix:
        raise ConfigError("prefix must not be empty: clear()/iter_ids() could not tell sessions from other keys")
    try:
        prefix.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(f"prefix must be valid Unicode (it is sent to Redis as UTF-8): {exc}") from None
    return prefix


def glob_escape(text: str) -> str:
    """``text`` with Redis glob metacharacters escaped (for SCAN MATCH)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class KeySpace:
    """The keys of one store: ``prefix + id``, and the SCAN pattern that finds them.

    Raises:
        ConfigError: an invalid prefix (see ``check_prefix``).
    """

    __slots__ = ("_start", "match", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = check_prefix(prefix)
        self.match = glob_escape(prefix) + ID_GLOB  # only the prefix followed by exactly one id
        self._start = len(prefix.encode())  # keys come back from SCAN as UTF-8 bytes

    def key(self, session_id: str) -> str:
        """The storage key of ``session_id``."""
        return self.prefix + session_id

    def id_of(self, key: bytes) -> str | None:
        """The session id of a key SCAN returned, or None if it is not one of ours."""
        session_id = key[self._start:].decode("ascii", "replace")
        return session_id if is_valid_session_id(session_id) else None
