"""``RedisStore``: sessions in Redis (standalone, Sentinel-managed or Redis Cluster).

Each session is one string key ``<prefix><id>`` holding the serializer's
envelope, with the session's TTL as the key's expiry.  Every method is one
round trip except ``regenerate`` on Redis Cluster (see there) and the SCAN
walks of ``iter_ids``/``clear``.

Protected hooks, for ``ClusteredRedisStore`` (which adds a PUBLISH to every
write in the same round trip):

* ``_write(session, payload, nx) -> bool``: the SET of ``save``.
* ``_move(old_id, session, payload) -> bool``: the atomic write-new,
  delete-old of ``regenerate``.
* ``_delete_key(session_id) -> bool``: the DEL of ``delete``.
* ``_decode(session_id, raw)``: bytes to ``Session`` (``SessionCorrupt`` on foreign data).
* ``map_redis_error(op, exc)``: the one place Redis exceptions become fastsess errors.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Callable, Iterator
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from ..errors import ConfigError, FastsessError, PoolExhausted, SessionCorrupt, StoreUnavailable
from ..serializers import Serializer, resolve_serializer
from ..session import Session
from .base import (
    DEFAULT_PREFIX,
    DEFAULT_REFRESH_FRACTION,
    DEFAULT_TTL,
    SessionStore,
    check_session_id,
    check_ttl,
    is_valid_session_id,
    new_session_id,
    now,
)

DEFAULT_SOCKET_TIMEOUT = 1.0  # seconds; a hung Redis delays a request by at most this much
DEFAULT_RETRIES = 1  # reconnect once on a dropped connection (e.g. after a Redis restart)
DEFAULT_POOL_SIZE = 100  # connections per store built from a URL (redis-py's own default size)
DEFAULT_POOL_TIMEOUT = 10.0  # seconds an operation waits for a free pooled connection (then PoolExhausted)
SCAN_BATCH = 1000
MAX_ID_ATTEMPTS = 3

REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError)

# SET new NX, and only if that succeeded DEL old: a collision never loses the old session.
# Idempotent: if the new key already holds exactly this payload, this very move already
# ran (a retry after an unknown outcome, or the first attempt landing late): 2, no effect.
MOVE_SCRIPT = """
if redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2], 'NX') then
  redis.call('DEL', KEYS[1])
  return 1
end
if redis.pcall('GET', KEYS[2]) == ARGV[1] then
  return 2
end
return 0
"""


_MAX_CONNECTIONS_ERROR: tuple[type[BaseException], ...] = tuple(
    t for t in (getattr(redis.exceptions, "MaxConnectionsError", None),) if t is not None
)


def is_pool_exhausted(exc: BaseException) -> bool:
    """True if ``exc`` is redis-py saying its connection pool had no free connection.

    That is a ``BlockingConnectionPool`` timing out (sync: raised while handling
    ``queue.Empty``; asyncio: from an ``asyncio.TimeoutError``, both with the message
    "No connection available."), or a plain pool at ``max_connections``
    (``MaxConnectionsError``, or "Too many connections" in older redis-py).
    """
    if _MAX_CONNECTIONS_ERROR and isinstance(exc, _MAX_CONNECTIONS_ERROR):
        return True
    if not isinstance(exc, redis.ConnectionError):
        return False
    message = str(exc)
    if message == "Too many connections":
        return True
    return message == "No connection available." and isinstance(
        exc.__cause__ or exc.__context__, (queue.Empty, asyncio.QueueEmpty, asyncio.TimeoutError, TimeoutError)
    )


def map_redis_error(op: str, exc: BaseException) -> FastsessError:
    """The fastsess error for a redis-py (or socket) exception raised by ``op``.

    ``PoolExhausted`` when the store's connection pool had no free connection
    (Redis itself is fine), ``SessionCorrupt`` for WRONGTYPE, else ``StoreUnavailable``.
    """
    if isinstance(exc, redis.ResponseError) and str(exc).startswith("WRONGTYPE"):
        return SessionCorrupt(f"{op}: a non-string value is stored under the session key")
    if is_pool_exhausted(exc):
        error: FastsessError = PoolExhausted(
            f"redis {op}: no free connection in the pool in time (every pooled connection stayed busy; "
            f"raise pool_size / pool_timeout or lower the concurrency): {type(exc).__name__}: {exc}",
            exc,
        )
        error.__cause__ = exc
        return error
    error = StoreUnavailable(f"redis {op} failed: {type(exc).__name__}: {exc}", exc)
    error.__cause__ = exc
    return error


def default_retry(retries: int = DEFAULT_RETRIES, retry_class: Any = Retry) -> Any:
    """redis-py retry policy: reconnect on dropped connections only, never re-wait a timeout.

    ``retry_class`` is ``redis.retry.Retry`` or ``redis.asyncio.retry.Retry`` (same signature).
    """
    return retry_class(ExponentialBackoff(cap=0.05, base=0.005), retries, supported_errors=(redis.ConnectionError,))


def check_pool(pool_size: Any, pool_timeout: Any) -> tuple[int, float]:
    """Validate the pool settings of a store built from a URL.

    Raises:
        ConfigError: ``pool_size`` not a positive int, or ``pool_timeout`` not a positive number.
    """
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
        raise ConfigError(f"pool_size must be a positive int, not {pool_size!r}")
    if isinstance(pool_timeout, bool) or not isinstance(pool_timeout, (int, float)) or not 0 < pool_timeout < float("inf"):
        raise ConfigError(f"pool_timeout must be a positive number of seconds, not {pool_timeout!r}")
    return pool_size, float(pool_timeout)


def client_from_url(
    url: str,
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    pool_size: int = DEFAULT_POOL_SIZE,
    pool_timeout: float = DEFAULT_POOL_TIMEOUT,
) -> redis.Redis:
    """A ``redis.Redis`` for ``url`` with fastsess's timeout and retry defaults.

    Its pool is a ``BlockingConnectionPool`` of ``pool_size`` connections: an
    operation that finds them all busy waits up to ``pool_timeout`` seconds for
    one (then ``PoolExhausted``), instead of failing at once.

    Raises:
        ConfigError: the URL or a pool setting is malformed.
    """
    pool_size, pool_timeout = check_pool(pool_size, pool_timeout)
    try:
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=pool_size,
            timeout=pool_timeout,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=default_retry(retries),
            health_check_interval=30,
            retry_on_error=[redis.ConnectionError],  # redis-py < 6 retries only the errors listed here
        )
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL: {exc}") from exc
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # close() of the client also closes the pool it owns
    return client


ID_GLOB = "[A-Za-z0-9_\\-]" * 43  # SCAN MATCH for exactly one session id after the prefix


def glob_escape(text: str) -> str:
    """``text`` with Redis glob metacharacters escaped (for SCAN MATCH)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def check_binary_client(client: Any) -> None:
    """Reject a client that decodes responses: session payloads are bytes.

    Raises:
        ConfigError: ``decode_responses=True``.
    """
    kwargs_of = getattr(client, "get_connection_kwargs", None)
    kwargs = kwargs_of() if callable(kwargs_of) else {}
    if kwargs.get("decode_responses"):
        raise ConfigError("the Redis client must not use decode_responses=True: sessions are stored as bytes")


def attach_client(
    store: Any, client: Any, url: str | None, serializer: Serializer | str | None,
    make_client: Callable[[str], Any], cluster_type: type,
) -> None:
    """Set up the Redis side of a store (sync or asyncio): client, serializer, scripts.

    Raises:
        ConfigError: neither or both of client/url, a malformed URL, or a client that
            decodes responses.
    """
    if (client is None) == (url is None):
        raise ConfigError("pass exactly one of client= or url=")
    store._owns_client = client is None
    store.client = make_client(url) if client is None else client  # type: ignore[arg-type]
    check_binary_client(store.client)
    store.serializer = resolve_serializer(serializer)
    store.is_cluster = isinstance(store.client, cluster_type)
    store._move_script = None if store.is_cluster else store.client.register_script(MOVE_SCRIPT)
    store._match = glob_escape(store.prefix) + ID_GLOB


class RedisStore(SessionStore):
    """Sessions in Redis.

    Args:
        client: an existing ``redis.Redis`` (also Sentinel's ``master_for(...)``)
            or ``redis.cluster.RedisCluster``; not closed by ``close()``.
        url: a ``redis://`` / ``rediss://`` / ``unix://`` URL instead of a client;
            the store owns that client.
        prefix, ttl, refresh_fraction: see ``stores.base``.
        serializer: ``"msgpack"`` (default), ``"json"`` or a ``Serializer``.
        socket_timeout, retries: used only for the client built from ``url``.
        pool_size, pool_timeout: the client built from ``url`` uses a blocking pool
            of ``pool_size`` connections (default 100); an operation that finds them
            all busy waits up to ``pool_timeout`` seconds (default 10) for one, then
            raises ``PoolExhausted``.  Size it to the threads (or asyncio tasks) that
            use the store at once.

    Raises:
        ConfigError: neither or both of client/url, or an invalid setting.
    """

    def __init__(
        self,
        client: redis.Redis | RedisCluster | None = None,
        url: str | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        ttl: int = DEFAULT_TTL,
        serializer: Serializer | str | None = None,
        refresh_fraction: float = DEFAULT_REFRESH_FRACTION,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        pool_size: int = DEFAULT_POOL_SIZE,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
    ) -> None:
        super().__init__(prefix=prefix, ttl=ttl, refresh_fraction=refresh_fraction)
        self.client: Any
        self.serializer: Serializer
        self.is_cluster: bool
        self._owns_client: bool
        self._move_script: Any  # a registered Lua script; None on Redis Cluster
        self._match: str
        check_pool(pool_size, pool_timeout)
        attach_client(
            self, client, url, serializer,
            lambda u: client_from_url(u, socket_timeout, retries, pool_size, pool_timeout), RedisCluster,
        )

    # -- hooks ----------------------------------------------------------------------

    def _decode(self, session_id: str, raw: bytes) -> Session:
        return self.serializer.decode(session_id, raw)

    def _write(self, session: Session, payload: bytes, nx: bool) -> bool:
        return bool(self.client.set(self.prefix + session.id, payload, ex=session.ttl, nx=nx, xx=not nx))

    def _move(self, old_id: str, session: Session, payload: bytes) -> bool:
        if self._move_script is not None:
            return bool(self._move_script(keys=[self.prefix + old_id, self.prefix + session.id], args=[payload, session.ttl]))
        # Redis Cluster: the two keys live in different slots, so no transaction can
        # span them.  Write the new key first: if the DEL then fails, the old id
        # still dies with its TTL and the caller sees StoreUnavailable.  Idempotent
        # like MOVE_SCRIPT: a new key that already holds this payload counts as moved.
        new_key = self.prefix + session.id
        if not self.client.set(new_key, payload, ex=session.ttl, nx=True) and self.client.get(new_key) != payload:
            return False
        self.client.delete(self.prefix + old_id)
        return True

    def _delete_key(self, session_id: str) -> bool:
        return bool(self.client.delete(self.prefix + session_id) == 1)

    # -- API --------------------------------------------------------------------------

    def load(self, session_id: str) -> Session | None:
        """The stored session, or None (absent, expired, malformed id: no Redis call). One GET.

        Raises:
            SessionCorrupt: the key holds something that is not a fastsess session.
            StoreUnavailable: Redis failed or timed out.
        """
        if not is_valid_session_id(session_id):
            return None
        try:
            raw = self.client.get(self.prefix + session_id)
        except REDIS_ERRORS as exc:
            raise map_redis_error("GET", exc) from exc
        if raw is None:
            return None
        return self._decode(session_id, raw)

    def save(self, session: Session) -> bool:
        """Write ``session`` if modified or its TTL refresh is due; True if it wrote. One SET.

        A new session is written with SET NX (a collision takes a fresh id);
        an existing one with SET XX, so a session deleted meanwhile is not
        resurrected (returns False).

        Raises:
            StoreUnavailable: Redis failed; the session's state is unchanged.
            PoolExhausted: no pooled connection freed up in time (a StoreUnavailable).
            TypeError: the session holds a value that cannot be stored or read back.
            SessionTooLarge: the session is over the serializer's limits (nothing written).
            InvalidSessionId: ``session.id`` is not a fastsess id (nothing written).
        """
        check_session_id(session)
        t = now()
        if not self.needs_write(session, t):
            return False
        for _ in range(MAX_ID_ATTEMPTS):
            old = self.prepare_write(session, t)
            try:
                written = self._write(session, self.serializer.encode(session), session.new)
            except REDIS_ERRORS as exc:
                self.roll_back(session, old)
                raise map_redis_error("SET", exc) from exc
            except BaseException:
                self.roll_back(session, old)
                raise
            if written:
                self.mark_saved(session, t)
                return True
            self.roll_back(session, old)
            if not session.new:
                return False
            session.id = new_session_id()
        raise StoreUnavailable("could not allocate an unused session id")

    def delete(self, session_id: str) -> bool:
        """Remove the session; True if it existed. Malformed ids: False without a Redis call.

        Raises:
            StoreUnavailable: Redis failed.
        """
        if not is_valid_session_id(session_id):
            return False
        try:
            return self._delete_key(session_id)
        except REDIS_ERRORS as exc:
            raise map_redis_error("DEL", exc) from exc

    def touch(self, session_id: str, ttl: int | None = None) -> bool:
        """Set the session's expiry to ``ttl`` seconds (default: the store's). One EXPIRE.

        Raises:
            ConfigError: ``ttl`` is not an int from 1 to ``MAX_TTL``.
            StoreUnavailable: Redis failed.
        """
        if not is_valid_session_id(session_id):
            return False  # a malformed id is answered before anything else, bad ttl included
        seconds = self.ttl if ttl is None else check_ttl(ttl)
        try:
            return bool(self.client.expire(self.prefix + session_id, seconds))
        except REDIS_ERRORS as exc:
            raise map_redis_error("EXPIRE", exc) from exc

    def exists(self, session_id: str) -> bool:
        """True if the session is stored. One EXISTS; malformed ids: False without a call.

        Raises:
            StoreUnavailable: Redis failed.
        """
        if not is_valid_session_id(session_id):
            return False
        try:
            return bool(self.client.exists(self.prefix + session_id) == 1)
        except REDIS_ERRORS as exc:
            raise map_redis_error("EXISTS", exc) from exc

    def regenerate(self, session: Session) -> Session:
        """Move ``session`` to a new id and delete the old key; returns ``session``.

        Atomic on a single Redis (one Lua script: SET NX new, then DEL old).  On
        Redis Cluster the keys sit in different slots: the new key is written
        first, then the old one deleted (two round trips).  A session never
        saved just gets a new id.

        A move whose outcome is unknown (a timeout: it may have run, or may still
        run) is run once more: the move is idempotent (same new id, same payload),
        so the second run either moves the session or finds it already moved, and
        ``session.id`` ends up naming the key that holds the data.

        Raises:
            StoreUnavailable: Redis failed twice; ``session`` keeps its old id and state.
            InvalidSessionId: a saved session whose ``id`` is not a fastsess id.
            TypeError, SessionTooLarge: as ``save`` (nothing written).
        """
        old_id, was_saved = session.id, not session.new
        if was_saved:
            check_session_id(session)
        t = now()
        for _ in range(MAX_ID_ATTEMPTS):
            session.id = new_session_id()
            if not was_saved:
                return session
            old = self.prepare_write(session, t)
            try:
                payload = self.serializer.encode(session)
                try:
                    moved = self._move(old_id, session, payload)
                except REDIS_ERRORS as exc:
                    if is_pool_exhausted(exc):
                        raise  # never sent: the outcome is known, and a second wait would double it
                    moved = self._move(old_id, session, payload)  # settle the unknown outcome
            except BaseException as exc:
                self.roll_back(session, old)
                session.id = old_id
                if isinstance(exc, REDIS_ERRORS):
                    raise map_redis_error("regenerate", exc) from exc
                raise
            if moved:
                self.mark_saved(session, t)
                return session
            self.roll_back(session, old)
        session.id = old_id
        raise StoreUnavailable("could not allocate an unused session id")

    def iter_ids(self) -> Iterator[str]:
        """Every session id under this prefix, by SCAN (never KEYS); on a cluster, every node.

        Only keys that are the prefix followed by exactly one 43-character session
        id match (the prefix is glob-escaped): other keys under the prefix, or
        longer prefixes starting with it, are never returned (nor cleared, nor counted).

        Raises:
            StoreUnavailable: Redis failed mid-scan.
        """
        start = len(self.prefix.encode())  # keys come back as UTF-8 bytes
        try:
            for key in self.client.scan_iter(match=self._match, count=SCAN_BATCH):
                session_id = key[start:].decode("ascii", "replace")
                if is_valid_session_id(session_id):
                    yield session_id
        except REDIS_ERRORS as exc:
            raise map_redis_error("SCAN", exc) from exc

    def clear(self) -> int:
        """Delete every session under this prefix (SCAN + batched UNLINK); returns how many.

        Raises:
            StoreUnavailable: Redis failed (some sessions may already be gone).
        """
        deleted = 0
        batch: list[str] = []
        for session_id in self.iter_ids():
            batch.append(self.prefix + session_id)
            if len(batch) >= SCAN_BATCH:
                deleted += self._unlink(batch)
                batch = []
        if batch:
            deleted += self._unlink(batch)
        return deleted

    def _unlink(self, keys: list[str]) -> int:
        try:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.unlink(key)  # one key per command: cluster-safe
            return sum(pipe.execute())
        except REDIS_ERRORS as exc:
            raise map_redis_error("UNLINK", exc) from exc

    def close(self) -> None:
        """Close the client and its pool if this store created them (from ``url``)."""
        if self._owns_client:
            self.client.close()
            self.client.connection_pool.disconnect()  # also where Redis.close() leaves the pool open
