"""The exceptions fastsess raises.  Redis exceptions never escape bare.

    FastsessError
    ├── StoreUnavailable   Redis down, timed out or refusing commands (cause kept)
    ├── SessionCorrupt     bytes under a session key that are not a fastsess session
    ├── InvalidSessionId   (also ValueError) an id not of the form fastsess issues
    └── ConfigError        (also ValueError) bad settings or a missing optional extra
"""

from __future__ import annotations


class FastsessError(Exception):
    """Base class of every fastsess error."""


class StoreUnavailable(FastsessError):
    """The session backend could not be reached or failed to answer in time.

    ``cause`` is the underlying exception (also chained as ``__cause__``).  A
    request that meets this error should fail (HTTP 503), not treat the user as
    logged out.
    """

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class SessionCorrupt(FastsessError):
    """The data stored under a session key is not a valid fastsess session.

    Raised for foreign data (another tool's msgpack or JSON, a Redis hash,
    garbage), a failed decryption, or an envelope from an unknown format
    version.  The session id is deliberately not part of the message.
    """


class InvalidSessionId(FastsessError, ValueError):
    """A session id that fastsess could not have issued (wrong length or alphabet)."""


class ConfigError(FastsessError, ValueError):
    """Invalid configuration, or an optional dependency that is not installed."""
