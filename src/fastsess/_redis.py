"""redis-py glue shared by the sync and asyncio stores: error mapping, client settings,
script fallback, and the constructors of the Redis-backed stores (no I/O here).

The stores' logic lives in ``_core.ops`` (generators of commands); the sync
(``stores/``) and asyncio (``asyncio/stores/``) trees only run those generators.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import NoScriptError, ResponseError
from redis.retry import Retry

from ._core.breaker import DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_THRESHOLD, CircuitBreaker
from ._core.conflict import OnConflict, check_on_conflict
from ._core.keys import KeySpace, is_valid_session_id
from ._core.ops import PAUSE, STAGE, Command, Flow, Script, StoreCore
from ._core.policy import CachePolicy
from ._core.principals import PIPELINE, PrincipalCore
from ._core.store import DEFAULT_PREFIX, DEFAULT_REFRESH_FRACTION, DEFAULT_TTL, StoreBase
from .cache import CacheStats
from .cluster import HITS_PER_CHECK, CoherentCache, release_unclosed
from .config import ClusterConfig
from .crypto import Encryption, check_encryption
from .errors import CircuitOpen, ConfigError, FastsessError, PoolExhausted, SessionCorrupt, StoreUnavailable
from .serializers import Serializer, resolve_serializer
from .session import Session

DEFAULT_SOCKET_TIMEOUT = 1.0  # seconds; a hung Redis delays a request by at most this much
DEFAULT_RETRIES = 1  # reconnect once on a dropped connection (e.g. after a Redis restart)
DEFAULT_POOL_SIZE = 100  # connections per store built from a URL (redis-py's own default size)
DEFAULT_POOL_TIMEOUT = 10.0  # seconds an operation waits for a free pooled connection (then PoolExhausted)
SCAN_BATCH = 1000

REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError)

_MAX_CONNECTIONS_ERROR: tuple[type[BaseException], ...] = tuple(
    t for t in (getattr(redis.exceptions, "MaxConnectionsError", None),) if t is not None
)

# hits answered before the next one hands the GIL to a starved listener (see after_lookup)
LAST_UNCHECKED_HIT = HITS_PER_CHECK - 1


def _check_next_hit(store_ref: Callable[[], Any]) -> Callable[[], None]:
    """For the listener thread (``ThreadedCoordinator.on_input``): make the next cache hit of
    the store ``store_ref`` refers to (a weak reference: the listener keeps no store alive)
    call ``yield_to_listener``, instead of up to ``HITS_PER_CHECK`` hits later."""
    def check_next_hit() -> None:
        store = store_ref()
        if store is not None:
            store._hits_unchecked = LAST_UNCHECKED_HIT
    return check_next_hit


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
    """The fastsess error for a redis-py (or socket) exception raised by ``op``, with
    ``exc`` as its ``__cause__``.

    ``PoolExhausted`` when the store's connection pool had no free connection
    (Redis itself is fine), ``SessionCorrupt`` for WRONGTYPE, else ``StoreUnavailable``.
    """
    error: FastsessError
    if isinstance(exc, redis.ResponseError) and str(exc).startswith("WRONGTYPE"):
        error = SessionCorrupt(f"{op}: a non-string value is stored under the session key")
    elif is_pool_exhausted(exc):
        error = PoolExhausted(
            f"redis {op}: no free connection in the pool in time (every pooled connection stayed busy; "
            f"raise pool_size / pool_timeout or lower the concurrency): {type(exc).__name__}: {exc}",
            exc,
        )
    else:
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
    flavour: Any, retry_class: Any, url: str, socket_timeout: float, retries: int, pool_size: int, pool_timeout: float,
) -> Any:
    """A client for ``url`` with fastsess's timeout and retry defaults: ``flavour`` is the
    ``redis`` or ``redis.asyncio`` module, ``retry_class`` its ``Retry``.

    Its pool is a ``BlockingConnectionPool`` of ``pool_size`` connections: an operation
    that finds them all busy waits up to ``pool_timeout`` seconds for one (then
    ``PoolExhausted``), instead of failing at once.  Closing the client closes the pool.

    Raises:
        ConfigError: the URL or a pool setting is malformed.
    """
    pool_size, pool_timeout = check_pool(pool_size, pool_timeout)
    try:
        pool = flavour.BlockingConnectionPool.from_url(
            url,
            max_connections=pool_size,
            timeout=pool_timeout,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=default_retry(retries, retry_class),
            health_check_interval=30,
            retry_on_error=[redis.ConnectionError],  # redis-py < 6 retries only the errors listed here
        )
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL: {exc}") from exc
    client = flavour.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True
    return client


def check_binary_client(client: Any) -> None:
    """Reject a client that decodes responses: session payloads are bytes.

    Raises:
        ConfigError: ``decode_responses=True``.
    """
    kwargs_of = getattr(client, "get_connection_kwargs", None)
    kwargs = kwargs_of() if callable(kwargs_of) else {}
    if kwargs.get("decode_responses"):
        raise ConfigError("the Redis client must not use decode_responses=True: sessions are stored as bytes")


def is_connection_failure(exc: BaseException) -> bool:
    """True if ``exc`` says Redis could not be reached or did not answer in time (refused,
    reset, timed out, still loading): what the circuit breaker counts.  An error reply
    (WRONGTYPE, OOM, READONLY) is an answer, and an exhausted pool is this process's
    contention, not Redis's failure."""
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError, OSError)) and not is_pool_exhausted(exc)


class Run:
    """One operation in progress, for a driver: it sends ``command`` and reports the
    outcome with ``reply`` or ``failed`` until ``done``; then ``value`` is the result.

    The store's ``CircuitBreaker`` is asked before each command: while it is open, the
    command is not handed to the driver; ``CircuitOpen`` is thrown into the operation
    instead (which may answer from the cache with ``stale_if_error``, or raise it).
    """

    __slots__ = ("breaker", "command", "done", "flow", "probe", "value")

    def __init__(self, flow: Flow, breaker: CircuitBreaker) -> None:
        self.flow = flow
        self.breaker = breaker
        self.done = False
        self.value: Any = None
        self.command: Any = None  # the command to send next
        self.probe = False  # this command is the breaker's half-open probe
        try:
            command = flow.send(None)
        except StopIteration as stop:
            self.done, self.value = True, stop.value
            return
        if breaker.closed:
            self.command = command
        else:
            self._admit(command)

    def _admit(self, command: Command) -> None:
        """The breaker is not closed: admit ``command`` (maybe as the probe), or throw
        ``CircuitOpen`` into the flow and try its next command, until one goes or it ends."""
        while True:
            if command[1] is PAUSE:  # not a Redis call: no admission, never the probe
                self.command = command
                return
            try:
                self.probe = self.breaker.admit()
            except CircuitOpen as exc:
                try:
                    command = self.flow.throw(exc)
                except StopIteration as stop:
                    self.done, self.value = True, stop.value
                    return
                continue
            self.command = command
            return

    def reply(self, reply: Any) -> None:
        """The command succeeded with ``reply``."""
        breaker = self.breaker
        if (breaker.failures or self.probe) and self.command[1] is not PAUSE:  # a pause proves nothing
            breaker.succeeded(self.probe)
            self.probe = False
        try:
            command = self.flow.send(reply)
        except StopIteration as stop:
            self.done, self.value = True, stop.value
            return
        if breaker.closed:
            self.command = command
        else:
            self._admit(command)

    def failed(self, exc: BaseException) -> None:
        """The command raised ``exc``: a redis-py error reaches the operation mapped
        (``map_redis_error``), anything else (a cancellation) as it is."""
        breaker, probe, self.probe = self.breaker, self.probe, False
        if isinstance(exc, REDIS_ERRORS):
            if is_connection_failure(exc):
                breaker.failed(exc, probe)
            elif is_pool_exhausted(exc):
                breaker.released(probe)
            else:
                breaker.succeeded(probe)  # an error reply: Redis answered
            exc = map_redis_error(self.command[0], exc)
        else:
            breaker.released(probe)
        try:
            command = self.flow.throw(exc)
        except StopIteration as stop:
            self.done, self.value = True, stop.value
            return
        if breaker.closed:
            self.command = command
        else:
            self._admit(command)


def breaker_failed(breaker: CircuitBreaker, exc: BaseException) -> None:
    """Count ``exc`` (raised outside a ``Run``: SCAN, UNLINK pipelines) if it is a connection failure."""
    if is_connection_failure(exc):
        breaker.failed(exc)


# Commands a store sends on its hot paths (load, save, touch) whose raw reply is what the
# store expects (redis-py's response callbacks for them only turn SET's OK into True,
# and the store takes bool() of it): ``execute`` sends these straight on a pooled
# connection.  redis-py's ``execute_command`` costs ~25 us of Python per command on
# redis-py 8 (observability hooks, option parsing, the callback lookup), a quarter of a
# loopback round trip.
DIRECT = frozenset({"GET", "GETRANGE", "GETEX", "SET", "EVALSHA", "EVAL"})


def _direct_pool(client: Any) -> Any:
    """The connection pool to send ``DIRECT`` commands on for ``client``, or None: only a
    plain ``redis.Redis``/``redis.asyncio.Redis`` on a pool (not a single-connection
    client, not a cluster, not redis-py's own client-side cache, which its
    ``execute_command`` serves)."""
    if client.connection is not None or getattr(client, "single_connection_client", False):
        return None
    pool = client.connection_pool
    if getattr(pool, "cache", None) is not None or getattr(pool, "_cache", None) is not None:
        return None
    return pool


def _fail_callback(client: Any, connection: Any) -> Callable[[Exception], Any]:
    """What ``connection.retry`` does after a failed attempt, as the client's own
    ``execute_command`` does: redis-py 5.x disconnects and re-raises an error its
    ``retry_on_error`` does not name; later ones leave that to the ``Retry`` and disconnect."""
    disconnect_raise = getattr(client, "_disconnect_raise", None)
    if disconnect_raise is not None:
        return lambda error: disconnect_raise(connection, error)
    return lambda _error: connection.disconnect()


def _send(connection: Any, args: tuple[Any, ...]) -> Any:
    try:
        connection.send_packed_command(connection.pack_command(*args))
        return connection.read_response()
    except ResponseError:  # an error reply: read whole, the connection is in step
        raise
    except BaseException:
        # anything else (a timeout, an interrupt between the write and the read) may leave
        # a reply unread: the connection is dropped and reconnects on its next command
        connection.disconnect()
        raise


class IdleConnections:
    """Pooled connections a store keeps between its hot commands (``DIRECT``: load, save,
    touch), last in first out, instead of handing each back to the pool: on redis-py 8 a
    pool round (``get_connection`` + ``release``: locks, a queue, a readiness poll,
    metrics hooks) costs about as much as a loopback round trip.

    Only for a client the store built from its URL.  A connection is kept only while
    nobody waits for the pool: ``take`` looks here first and registers as a waiter
    before it blocks on the pool, and ``give`` hands a connection to the pool instead
    while a waiter is registered (both under one lock, so no waiter misses a kept
    connection).  At most ``max_idle`` (half the pool) are kept, so anything else drawing
    on the pool always finds half of it; a command of another kind (``execute_command``,
    a pipeline, SCAN) first hands every kept one back (``drain``).  A forked child drops
    its parent's (never used, never closed: ``take`` checks the pid).  A failed command
    that may have left a reply unread disconnects its connection before it is kept
    (``_send``).  The asyncio twin is ``AsyncIdleConnections``.
    """

    __slots__ = ("_idle", "_lock", "_pid", "_waiting", "max_idle", "pool")

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.max_idle = max(0, int(getattr(pool, "max_connections", 2) or 2) // 2)
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._waiting = 0
        self._pid = os.getpid()

    def _forked(self) -> None:
        self._idle, self._lock, self._waiting, self._pid = [], threading.Lock(), 0, os.getpid()

    def take(self) -> Any:
        """A kept connection, else one from the pool (waiting for it as the pool does).

        Raises:
            redis.ConnectionError: the pool had no free connection in time.
        """
        if self._pid != os.getpid():
            self._forked()
        with self._lock:
            if self._idle:
                return self._idle.pop()
            self._waiting += 1
        try:
            return self.pool.get_connection(*_POOL_ARGS)
        finally:
            with self._lock:
                self._waiting -= 1

    def give(self, connection: Any) -> None:
        """Keep ``connection`` for the next command, or hand it to the pool (a waiter, or full)."""
        with self._lock:
            if self._pid == os.getpid() and not self._waiting and len(self._idle) < self.max_idle:
                self._idle.append(connection)
                return
        self.pool.release(connection)

    def drain(self) -> None:
        """Hand every kept connection back to the pool (before anything else uses it)."""
        if not self._idle or self._pid != os.getpid():
            return
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            self.pool.release(connection)


class AsyncIdleConnections:
    """``IdleConnections`` for a ``redis.asyncio`` pool: no lock (nothing awaits between a
    check and its action).  Connections belong to the event loop that made them: kept
    ones are dropped (not reused, not handed back) when the store is next used from
    another loop (``asyncio.run`` twice, a forked child's loop)."""

    __slots__ = ("_idle", "_loop", "_pid", "_waiting", "max_idle", "pool")

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.max_idle = max(0, int(getattr(pool, "max_connections", 2) or 2) // 2)
        self._idle: list[Any] = []
        self._waiting = 0
        self._pid = os.getpid()
        self._loop: Any = None

    def _current(self) -> None:
        """Drop what another loop or process kept (never reused, never handed back)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._pid != os.getpid():
            self._idle, self._waiting, self._pid, self._loop = [], 0, os.getpid(), loop

    async def take(self) -> Any:
        """A kept connection, else one from the pool.

        Raises:
            redis.ConnectionError: the pool had no free connection in time.
        """
        self._current()
        if self._idle:
            return self._idle.pop()
        self._waiting += 1
        try:
            return await self.pool.get_connection(*_POOL_ARGS)
        finally:
            self._waiting -= 1

    async def give(self, connection: Any) -> None:
        """Keep ``connection`` for the next command, or hand it to the pool."""
        if (
            self._loop is asyncio.get_running_loop() and self._pid == os.getpid()
            and not self._waiting and len(self._idle) < self.max_idle
        ):
            self._idle.append(connection)
            return
        await _release_async(self.pool, connection)

    async def drain(self) -> None:
        """Hand every kept connection back to the pool."""
        self._current()
        idle, self._idle = self._idle, []
        for connection in idle:
            await _release_async(self.pool, connection)


async def _release_async(pool: Any, connection: Any) -> None:
    """``pool.release(connection)``; a connection the pool forgot (``pool.reset()``) is dropped."""
    try:
        await pool.release(connection)
    except (KeyError, ValueError):
        pass


def _call(client: Any, connection: Any, args: tuple[Any, ...]) -> Any:
    """``args`` on ``connection`` under the client's retry policy (``_send``, ``_fail_callback``)."""
    return connection.retry.call_with_retry(lambda: _send(connection, args), _fail_callback(client, connection))


def _direct(client: Any, pool: Any, args: tuple[Any, ...]) -> Any:
    """``client.execute_command(*args)`` for a ``DIRECT`` command, without its overhead:
    one pooled connection, the client's retry policy, the raw reply.

    Raises:
        redis.RedisError, OSError: the command failed.
    """
    connection = pool.get_connection(*_POOL_ARGS)
    try:
        return _call(client, connection, args)
    finally:
        pool.release(connection)


def _kept(client: Any, idle: IdleConnections, args: tuple[Any, ...]) -> Any:
    """``_direct`` on a connection of ``idle`` (``IdleConnections``), kept again afterwards.

    Raises:
        redis.RedisError, OSError: the command failed.
    """
    connection = idle.take()
    try:
        return _call(client, connection, args)
    finally:
        idle.give(connection)


def _sender(client: Any, name: str, idle: IdleConnections | None) -> Callable[[tuple[Any, ...]], Any]:
    """How ``execute`` sends a command named ``name``: a ``DIRECT`` one on a plain client
    on a kept connection (``idle``) or a pooled one, anything else through
    ``execute_command``, after handing the kept connections back to the pool."""
    if name in DIRECT and isinstance(client, redis.Redis):  # (not a wrapper put in its place)
        if idle is not None:
            return lambda args: _kept(client, idle, args)
        pool = _direct_pool(client)
        if pool is not None:
            return lambda args: _direct(client, pool, args)
    elif idle is not None:
        idle.drain()
    return lambda args: client.execute_command(*args)


def execute(client: Any, command: Command, idle: IdleConnections | None = None) -> Any:
    """Send one command with a sync client (an unknown script is sent whole with EVAL; a
    ``PIPELINE`` command's commands go as one non-transactional pipeline; a ``DIRECT``
    command on a plain client straight on a pooled connection: with ``idle``, a kept
    one, which any other command hands back to the pool first).

    Raises:
        redis.RedisError, OSError: the command failed.
    """
    script, args = command[1], command[2]
    if script is PAUSE:
        time.sleep(args[0])
        return None
    if script is STAGE:
        write, lua, call = args
        return stage(client, write, lua, call, idle if isinstance(client, redis.Redis) else None)
    if script is PIPELINE:
        if idle is not None:
            idle.drain()
        return pipeline(client, args).execute()
    send = _sender(client, args[0], idle)
    try:
        return send(args)
    except NoScriptError:
        if script is None:
            raise
        return send(("EVAL", script.text, *args[2:]))


async def _send_async(connection: Any, args: tuple[Any, ...]) -> Any:
    try:
        await connection.send_packed_command(connection.pack_command(*args))
        return await connection.read_response()
    except ResponseError:  # an error reply: read whole, the connection is in step
        raise
    except BaseException:  # a timeout, a cancellation: maybe a reply unread (see ``_send``)
        await connection.disconnect(nowait=True)
        raise


async def _call_async(client: Any, connection: Any, args: tuple[Any, ...]) -> Any:
    """``_call`` for asyncio."""
    return await connection.retry.call_with_retry(lambda: _send_async(connection, args), _fail_callback(client, connection))


async def _kept_async(client: Any, idle: AsyncIdleConnections, args: tuple[Any, ...]) -> Any:
    """``_kept`` for asyncio.

    Raises:
        redis.RedisError, OSError: the command failed.
    """
    connection = await idle.take()
    try:
        return await _call_async(client, connection, args)
    finally:
        await idle.give(connection)


async def _direct_async(client: Any, pool: Any, args: tuple[Any, ...]) -> Any:
    """``_direct`` with a ``redis.asyncio`` client (its connection disconnects itself if
    the exchange is interrupted, a cancellation included: no reply is left unread).

    Raises:
        redis.RedisError, OSError: the command failed.
    """
    connection = await pool.get_connection(*_POOL_ARGS)
    try:
        return await _call_async(client, connection, args)
    finally:
        await pool.release(connection)


async def _sender_async(client: Any, name: str, idle: AsyncIdleConnections | None) -> Callable[[tuple[Any, ...]], Any]:
    """``_sender`` for a ``redis.asyncio`` client (the sender returns an awaitable)."""
    if name in DIRECT and isinstance(client, redis.asyncio.Redis):  # (not a wrapper put in its place)
        if idle is not None:
            return lambda args: _kept_async(client, idle, args)
        pool = _direct_pool(client)
        if pool is not None:
            return lambda args: _direct_async(client, pool, args)
    elif idle is not None:
        await idle.drain()
    return lambda args: client.execute_command(*args)


async def execute_async(client: Any, command: Command, idle: AsyncIdleConnections | None = None) -> Any:
    """``execute`` with a ``redis.asyncio`` client.

    Raises:
        redis.RedisError, OSError: the command failed.
    """
    script, args = command[1], command[2]
    if script is PAUSE:
        await asyncio.sleep(args[0])
        return None
    if script is STAGE:
        write, lua, call = args
        return await stage_async(client, write, lua, call, idle if isinstance(client, redis.asyncio.Redis) else None)
    if script is PIPELINE:
        if idle is not None:
            await idle.drain()
        return await pipeline(client, args).execute()
    send = await _sender_async(client, args[0], idle)
    try:
        return await send(args)
    except NoScriptError:
        if script is None:
            raise
        return await send(("EVAL", script.text, *args[2:]))


# redis-py < 5.3 wants a command name for ``ConnectionPool.get_connection``; later ones
# warn when given one.
_POOL_ARGS: tuple[str, ...] = (
    () if getattr(inspect.signature(redis.ConnectionPool.get_connection).parameters.get("command_name"), "default", None) is None
    else ("SET",)
)


def _exchange(connection: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` in one write on ``connection`` and read every reply (an error reply
    as its ``ResponseError``, so that the connection stays in step).

    One buffer, even for a large value (redis-py would send it apart from the short
    command after it): Redis then reads both commands together and writes both replies
    together, where two writes cost a second wake-up on each side (the two commands
    alone, 2026-11-30, load 3.3: 8 KB 1.36x a bare SET instead of 1.66x)."""
    connection.send_packed_command([b"".join(connection.pack_commands(commands))])
    replies: list[Any] = []
    for _ in commands:
        try:
            replies.append(connection.read_response())
        except ResponseError as exc:
            replies.append(exc)
    return replies


def _exchange_guarded(connection: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    """``_exchange``, but anything other than an error reply (those stay in the list)
    drops the connection, which may hold unread replies: a kept connection is not
    readiness-checked by a pool before its next use."""
    try:
        return _exchange(connection, commands)
    except BaseException:
        connection.disconnect()
        raise


def _staged_reply(replies: list[Any]) -> Any:
    """The script's reply of a ``STAGE`` exchange; raises the first error reply."""
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise reply
    return replies[-1]


def _stage_sync(client: Any, commands: list[tuple[Any, ...]], idle: IdleConnections | None = None) -> list[Any]:
    # one connection (a kept one, else one from the pool), redis-py's retry (as
    # execute_command): no pipeline object, whose bookkeeping costs more than the second command
    if idle is not None:
        take, give = idle.take, idle.give
    elif isinstance(client, redis.Redis) and client.connection is None:
        pool = client.connection_pool
        take, give = (lambda: pool.get_connection(*_POOL_ARGS)), pool.release
    else:
        return pipeline(client, tuple(commands)).execute(raise_on_error=False)  # type: ignore[no-any-return]
    connection = take()
    try:
        replies: list[Any] = connection.retry.call_with_retry(
            lambda: _exchange_guarded(connection, commands), lambda _error: connection.disconnect(),
        )
        return replies
    finally:
        give(connection)


def stage(
    client: Any, write: tuple[Any, ...], lua: Script, call: tuple[Any, ...], idle: IdleConnections | None = None,
) -> Any:
    """A ``STAGE`` command (``fastsess._core.ops.STAGE``) with a sync client: ``write`` then
    the ``EVALSHA`` ``call`` of ``lua``, in one round trip on one connection (``idle``:
    a kept one); the script's reply.  NOSCRIPT: both again, the script sent whole (``EVAL``).

    Raises:
        redis.RedisError, OSError: either command failed.
    """
    replies = _stage_sync(client, [write, call], idle)
    if isinstance(replies[-1], NoScriptError):
        replies = _stage_sync(client, [write, ("EVAL", lua.text, *call[2:])], idle)
    return _staged_reply(replies)


async def _exchange_async(connection: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    """``_exchange`` on a ``redis.asyncio`` connection (which disconnects itself if the
    exchange is interrupted, a cancellation included: no reply is left unread)."""
    await connection.send_packed_command([b"".join(connection.pack_commands(commands))])
    replies: list[Any] = []
    for _ in commands:
        try:
            replies.append(await connection.read_response())
        except ResponseError as exc:
            replies.append(exc)
    return replies


async def _stage_async(client: Any, commands: list[tuple[Any, ...]], idle: AsyncIdleConnections | None = None) -> list[Any]:
    if idle is not None:
        take, give = idle.take, idle.give
    elif isinstance(client, redis.asyncio.Redis) and client.connection is None and not client.single_connection_client:
        pool: Any = client.connection_pool
        take, give = (lambda: pool.get_connection(*_POOL_ARGS)), pool.release
    else:
        return await pipeline(client, tuple(commands)).execute(raise_on_error=False)  # type: ignore[no-any-return]
    connection = await take()
    try:
        replies: list[Any] = await connection.retry.call_with_retry(
            lambda: _exchange_async(connection, commands), lambda _error: connection.disconnect(),
        )
        return replies
    finally:
        await give(connection)


async def stage_async(
    client: Any, write: tuple[Any, ...], lua: Script, call: tuple[Any, ...], idle: AsyncIdleConnections | None = None,
) -> Any:
    """``stage`` with a ``redis.asyncio`` client.

    Raises:
        redis.RedisError, OSError: either command failed.
    """
    replies = await _stage_async(client, [write, call], idle)
    if isinstance(replies[-1], NoScriptError):
        replies = await _stage_async(client, [write, ("EVAL", lua.text, *call[2:])], idle)
    return _staged_reply(replies)


def pipeline(client: Any, commands: tuple[tuple[Any, ...], ...]) -> Any:
    """A non-transactional pipeline (sync or asyncio) of ``commands``, each naming one key:
    cluster-safe (``execute_command``: see ``unlink_pipeline``)."""
    pipe = client.pipeline(transaction=False)
    for args in commands:
        pipe.execute_command(*args)
    return pipe


def unlink_pipeline(client: Any, keys: KeySpace, session_ids: list[str]) -> Any:
    """A non-transactional pipeline (sync or asyncio) of one UNLINK per id: cluster-safe.

    ``execute_command``, not ``pipe.unlink()``: on redis-py's asyncio ClusterPipeline the
    command methods return un-awaited coroutines and queue nothing.
    """
    return pipeline(client, tuple(("UNLINK", keys.key(session_id)) for session_id in session_ids))


class RedisStoreBase(StoreBase):
    """The state of a Redis-backed store, sync or asyncio: client, serializer, keys and core.

    Args: see ``fastsess.RedisStore``.

    Raises:
        ConfigError: neither or both of client/url, or an invalid setting.
    """

    _cluster_type: ClassVar[type]  # the flavour's RedisCluster class
    _client_from_url: ClassVar[Callable[[str, float, int, int, float], Any]]  # the flavour's client_from_url
    _run: Callable[[Flow], Any]  # the flavour's driver: runs one operation's flow

    def __init__(
        self,
        client: Any = None,
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
        clock: Callable[[], float] | None = None,
        encryption: Encryption | None = None,
        on_conflict: OnConflict = "merge",
        breaker_threshold: int = DEFAULT_BREAKER_THRESHOLD,
        breaker_cooldown: float = DEFAULT_BREAKER_COOLDOWN,
    ) -> None:
        super().__init__(prefix=prefix, ttl=ttl, refresh_fraction=refresh_fraction, clock=clock)
        check_pool(pool_size, pool_timeout)
        self.encryption = check_encryption(encryption)
        self.on_conflict = check_on_conflict(on_conflict)
        self.breaker = CircuitBreaker(breaker_threshold, breaker_cooldown)
        if (client is None) == (url is None):
            raise ConfigError("pass exactly one of client= or url=")
        self._owns_client = client is None
        self.client: Any = client if client is not None else type(self)._client_from_url(url, socket_timeout, retries, pool_size, pool_timeout)  # type: ignore[arg-type]
        check_binary_client(self.client)
        self.serializer: Serializer = resolve_serializer(serializer)
        # what the operations encode and decode with: the serializer, or it encrypted under each session's key
        self._codec = self.serializer if self.encryption is None else self.encryption.bind(self.serializer, self._keys)
        self.is_cluster = isinstance(self.client, self._cluster_type)
        # a client built from the URL: connections kept between hot commands (IdleConnections)
        self._idle: Any = None
        if self._owns_client and _direct_pool(self.client) is not None:
            if isinstance(self.client, redis.Redis):
                self._idle = IdleConnections(self.client.connection_pool)
            elif isinstance(self.client, redis.asyncio.Redis):
                self._idle = AsyncIdleConnections(self.client.connection_pool)
        self._core = StoreCore(
            self._keys, self._codec, self.ttl, self.refresh_fraction, self.clock, self.is_cluster,
            on_conflict=self.on_conflict,
        )
        self._core.principals = self._principals = PrincipalCore(self._keys, self.clock, self.is_cluster)



class ClusteredStoreBase(RedisStoreBase):
    """The state of a clustered store, sync or asyncio: a ``RedisStoreBase`` plus the
    local cache, its policy and the coordinator (built here, not started).

    Args: see ``fastsess.ClusteredRedisStore``.

    Raises:
        ConfigError: invalid settings.
    """

    _coordinator_type: ClassVar[type]  # the flavour's ClusterCoordinator
    _starts_in_constructor: ClassVar[bool]  # sync: the constructor starts the listener

    def __init__(
        self,
        client: Any = None,
        url: str | None = None,
        *,
        config: ClusterConfig | None = None,
        prefix: str = DEFAULT_PREFIX,
        ttl: int = DEFAULT_TTL,
        serializer: Serializer | str | None = None,
        refresh_fraction: float = DEFAULT_REFRESH_FRACTION,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        pool_size: int = DEFAULT_POOL_SIZE,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
        clock: Callable[[], float] | None = None,
        encryption: Encryption | None = None,
        on_conflict: OnConflict = "merge",
        breaker_threshold: int = DEFAULT_BREAKER_THRESHOLD,
        breaker_cooldown: float = DEFAULT_BREAKER_COOLDOWN,
    ) -> None:
        if config is not None and config.warm_peers and isinstance(client, self._cluster_type):
            # A fill and a later write of the same session could reach a node on two
            # connections (a stale slot map publishes on the plain channel): no order to rely on.
            raise ConfigError("warm_peers is not available on Redis Cluster")
        super().__init__(
            client, url, prefix=prefix, ttl=ttl, serializer=serializer, refresh_fraction=refresh_fraction,
            socket_timeout=socket_timeout, retries=retries, pool_size=pool_size, pool_timeout=pool_timeout, clock=clock,
            encryption=encryption,
            on_conflict=on_conflict,
            breaker_threshold=breaker_threshold, breaker_cooldown=breaker_cooldown,
        )
        self.config = cfg = ClusterConfig() if config is None else config
        self._cache = (
            CoherentCache(
                cfg.local_cache_max_size, cfg.local_cache_ttl, cfg.local_cache_max_bytes, cfg.local_cache_max_item_bytes,
                cfg.negative_cache_ttl, cfg.negative_cache_max_size,
            )
            if cfg.enabled and cfg.local_cache_enabled
            else None
        )
        self.coordinator: Any = self._coordinator_type(self.client, cfg, self._cache, self._keys.prefix) if cfg.enabled else None
        listener = None if self.coordinator is None else self.coordinator.machine
        if listener is not None:  # a resubscribed listener ends the breaker's cool-down early
            self.breaker.resubscribed_at = lambda: listener.subscribed_at
        policy = (
            None if self._cache is None
            else CachePolicy(cfg, self._cache, breaker=self.breaker, listener=listener, decode=self._codec.decode)
        )
        self._policy = policy
        if policy is not None and self.coordinator is not None and cfg.update_max_bytes > 0:
            # Only a node in update mode installs values carried by messages: elsewhere an
            # update message only evicts, so a publisher on the channel cannot plant data.
            self.coordinator.on_update = policy.updated
        if policy is not None and self.coordinator is not None and cfg.warm_peers:
            self.coordinator.on_fill = policy.warm  # other nodes' reads, added where not cached
        if policy is not None and self.coordinator is not None:
            self.coordinator.on_refill = policy.refill  # re-reads from Redis what a replay evicted
        self._core = StoreCore(
            self._keys, self._codec, self.ttl, self.refresh_fraction, self.clock, self.is_cluster, policy, self.coordinator,
            self.on_conflict,
        )
        self._core.principals = self._principals = PrincipalCore(self._keys, self.clock, self.is_cluster, policy, self.coordinator)
        self._hits_unchecked = 0  # cache hits since the last yield_to_listener check
        self._listener_behind = False  # the last check gave up on the listener: hits read Redis
        if self.coordinator is not None:  # input on the listener's socket: the next hit checks
            self.coordinator.on_input = _check_next_hit(weakref.ref(self))
        # A store dropped without close() still releases its listener and connections
        # (with a ResourceWarning, like an unclosed file); close() detaches this.
        self._finalizer = weakref.finalize(
            self, release_unclosed, type(self).__name__, self.coordinator, self.client if self._owns_client else None,
        )
        self._finalizer.atexit = False
        self._start_pending = False  # asyncio: the listener starts on first use
        if self.coordinator is not None:
            if not self._starts_in_constructor:
                self._start_pending = True
                return
            try:
                self.coordinator.start(timeout=0)  # never blocks: the cache is bypassed until subscribed
            except BaseException:
                self._detach()
                if self._owns_client:  # a sync client built from the URL
                    self.client.close()
                    self.client.connection_pool.disconnect()
                raise

    def cached_load(self, session_id: str) -> Any:
        """The session from the local cache (a shallow copy), else from Redis (one round trip:
        GET + PTTL in a script, then a cache fill).  On a miss this returns what the flavour's
        ``_run`` returns (asyncio: an awaitable).

        Raises:
            SessionCorrupt: the key holds something that is not a fastsess session.
            StoreUnavailable: Redis failed (also while the cache is bypassed,
                unless ``stale_if_error``).
        """
        cache = self._cache
        if cache is not None and self.coordinator.subscribed and type(session_id) is str:
            # Only valid ids are ever cached, so a hit needs no id check.
            cached: Session | None = cache.get(session_id)
            if cached is not None and self._hits_unchecked < LAST_UNCHECKED_HIT:
                self._hits_unchecked += 1
                return cached.copy()
            return self.after_lookup(session_id, cached)
        if not is_valid_session_id(session_id):
            return None
        return self._run(self._core.load(session_id, None))

    def after_lookup(self, session_id: str, cached: Session | None) -> Any:
        """The rest of ``cached_load`` once the cache was asked for ``session_id``: a hit
        that first lets a GIL-starved listener apply what it has (every
        ``HITS_PER_CHECK`` hits), or the miss (None for a malformed id, else what the
        flavour's ``_run`` returns for the read from Redis).  A hit that the cache may not
        serve (``_hit_is_current``) is read from Redis like a miss.

        Raises:
            SessionCorrupt, StoreUnavailable: as ``cached_load``.
        """
        if cached is not None:
            self._hits_unchecked = 0
            if self._hit_is_current():
                return cached.copy()
        if not is_valid_session_id(session_id):
            return None
        policy = self._policy
        if policy is None:
            return self._run(self._core.load(session_id, None))
        if policy.is_absent(session_id):  # Redis did not hold it a moment ago, and nobody created it since
            return None
        return self._shared_load(session_id, policy.token(session_id))

    def _hit_is_current(self) -> bool:
        """For a checking hit: whether the cache may serve it.  The listener gets the chance
        to apply what it has (``yield_to_listener``); if it still had input when that wait
        ran out, the cache may be missing invalidations older than the wait, so this hit
        and every hit after it (each checks, without waiting) read Redis until the
        listener has nothing left to apply; the first hit after that reads Redis too (it
        was looked up while the listener was behind).
        """
        coordinator = self.coordinator
        if self._listener_behind:
            self._listener_behind = coordinator.listener_has_input()
            if self._listener_behind:
                self._hits_unchecked = LAST_UNCHECKED_HIT
            return False
        if coordinator.yield_to_listener():
            return True
        self._listener_behind = True
        self._hits_unchecked = LAST_UNCHECKED_HIT
        return False

    def _shared_load(self, session_id: str, token: tuple[int, int]) -> Any:
        """Read ``session_id`` from Redis and fill the cache, sharing the read with the
        concurrent misses of that id (``_core.flights``): the flavour's single flight."""
        raise NotImplementedError

    def _detach(self) -> Any:
        """For ``close``: no finalizer any more, no pending start; returns the coordinator to stop."""
        self._finalizer.detach()
        self._start_pending = False
        return self.coordinator

    def cache_stats(self) -> CacheStats:
        """This node's cache counters (hits, misses, evictions, expirations, size, hit_rate)."""
        if self._cache is None:
            return CacheStats(0, 0, 0, 0, 0, self.config.local_cache_max_size, 0.0)
        return self._cache.stats()

    def reset_cache_stats(self) -> None:
        """Zero this node's cache counters."""
        if self._cache is not None:
            self._cache.cache.reset_stats()

    def evict_from_cache(self, session_id: str) -> bool:
        """Drop ``session_id`` from this node's cache only; True if it was cached."""
        return self._cache is not None and self._cache.invalidate(session_id)

    def clear_local_cache(self) -> None:
        """Empty this node's cache (other nodes and Redis are untouched)."""
        if self._cache is not None:
            self._cache.flush()

    def cache_bytes(self) -> int:
        """Serialized bytes of the sessions this node caches (an upper bound; 0 without a cache)."""
        return 0 if self._cache is None else self._cache.cached_bytes
