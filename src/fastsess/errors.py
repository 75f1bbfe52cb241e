"""The exceptions fastsess raises.  Redis exceptions never escape bare.

    FastsessError
    ├── StoreUnavailable   Redis down, timed out or refusing commands (cause kept)
    │   ├── PoolExhausted  Redis is fine, but no pooled connection freed up within
    │   │                  ``pool_timeout`` (more concurrent requests than ``pool_size``)
    │   └── CircuitOpen    failed fast, without a Redis call: the store's circuit
    │                      breaker is open after repeated connection failures
    ├── SessionCorrupt     bytes under a session key that are not a fastsess session
    ├── ConcurrentModification  ``save`` met another request's write of the same key
    │                      (``on_conflict="raise"``), or kept meeting new writes
    ├── SessionTooLarge    (also ValueError) ``save`` refused a session over the size
    │                      limits, because no store could load it back
    ├── InvalidSessionId   (also ValueError) an id not of the form fastsess issues
    │                      (raised by ``save``/``regenerate`` for a session whose
    │                      ``id`` was set by hand; ``load`` & co. just return None/False)
    └── ConfigError        (also ValueError) bad settings, an invalid TTL, or a
                           missing optional extra
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


class PoolExhausted(StoreUnavailable):
    """Every connection of the store's pool stayed busy for ``pool_timeout`` seconds.

    Redis itself answered fine: this process ran more concurrent operations than
    its pool has connections (``pool_size``).  Still a ``StoreUnavailable`` (the
    request should fail with HTTP 503), but the fix is a larger ``pool_size`` or
    fewer concurrent requests per process, not a look at Redis.
    """


class CircuitOpen(StoreUnavailable):
    """Failed fast, without sending anything to Redis: the store's circuit breaker is open.

    After ``breaker_threshold`` connection failures in a row the store stops sending
    commands for ``breaker_cooldown`` seconds, then lets one call at a time probe Redis.
    Nothing was sent, so a write that raised this left Redis unchanged.  ``cause`` is
    the connection error that last failed (also chained as ``__cause__``).
    """


class SessionCorrupt(FastsessError):
    """The data stored under a session key is not a valid fastsess session.

    Raised for foreign data (another tool's msgpack or JSON, a Redis hash,
    garbage), a failed decryption, or an envelope from an unknown format
    version.  The session id is deliberately not part of the message.
    """


class ConcurrentModification(FastsessError):
    """``save`` found the session written by another request since it was loaded, and
    could not re-apply this request's changes on top of it.

    Raised when the store's ``on_conflict="raise"`` and a key this request set or
    deleted was also changed, differently, by the other writer (``keys`` names them),
    or, whatever the policy, when new writes kept landing between the reload and
    the retry more than ``MAX_CONFLICT_RETRIES`` times (``keys`` is empty).  Nothing
    was written; the session keeps its data and changes, and may be saved again.
    """

    def __init__(self, message: str, keys: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.keys = keys


class SessionTooLarge(FastsessError, ValueError):
    """``save`` refused a session that exceeds the serializer's limits.

    ``max_size`` (16 MiB of encoded body, before compression) or ``max_items``
    (1,000,000 values): a larger session could be written but never loaded back,
    so nothing is written and the session is left unsaved.
    """


class InvalidSessionId(FastsessError, ValueError):
    """A session id that fastsess could not have issued (wrong length or alphabet).

    Raised by ``save``/``regenerate`` when ``session.id`` is not a fastsess id
    (e.g. set by hand, or None); ``load``/``exists``/``delete``/``touch`` instead
    answer None/False for such ids without any I/O.
    """


class ConfigError(FastsessError, ValueError):
    """Invalid configuration, or an optional dependency that is not installed."""
