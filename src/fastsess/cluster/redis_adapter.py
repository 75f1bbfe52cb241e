"""The redis-py side of the listener: its own connection, and reading it fast.

Everything here knows redis-py's internals (connection classes and their keyword
arguments, ``read_response``'s signature across versions); nothing else does.
"""

from __future__ import annotations

import inspect
import logging
import socket
from collections.abc import Callable
from typing import Any

import redis

log = logging.getLogger("fastsess.cluster")

# Settings that are redis-py objects of the sync *or* asyncio flavour, or that the
# listener sets itself: not copied from the store's client.
_NOT_COPIED = frozenset({
    "retry", "retry_on_error", "retry_on_timeout", "parser_class", "redis_connect_func", "event_dispatcher",
    "encoder_class", "health_check_interval", "protocol", "decode_responses", "connection_pool",
    "single_connection_client", "maint_notifications_config", "maint_notifications_pool_handler",
    "oss_cluster_maint_notifications_handler", "cache", "cache_config",
})
_CONNECTION_CLASSES = ("Connection", "SSLConnection", "UnixDomainSocketConnection")


def is_asyncio_client(client: Any) -> bool:
    return type(client).__module__.startswith("redis.asyncio")


def _accepted(cls: type) -> set[str]:
    """Keyword arguments ``cls`` (a redis-py connection or client class) takes, along its MRO."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            names.update(p.name for p in inspect.signature(init).parameters.values() if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD)
        except (TypeError, ValueError):
            continue
    names.discard("self")
    return names


def _listener_kwargs(kwargs: dict[str, Any], cls: type) -> dict[str, Any]:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    accepted = _accepted(cls)
    out = {k: v for k, v in kwargs.items() if k in accepted and k not in _NOT_COPIED}
    out.update(protocol=2, retry=Retry(NoBackoff(), 0))
    return out


def listener_client(client: Any) -> tuple[Any, Any]:
    """A sync client whose ``pubsub()`` the listener reads, and the client to close
    after (None when it is ``client`` itself).

    A standalone ``redis.Redis`` (sync or asyncio) gets a private one-connection
    client with the same address, credentials and TLS settings, speaking RESP2 (its
    pub/sub replies are plain lists: ``raw_reader``) and without redis-py retries
    (a drop must reach the listener, never be hidden by a silent reconnect).
    An asyncio ``RedisCluster`` or Sentinel-managed client gets a sync twin of it;
    a sync ``RedisCluster`` or Sentinel-managed client is used as it is.

    Raises:
        redis.RedisError: the twin could not be built (e.g. the cluster is down):
            the listener retries with backoff.
    """
    is_async = is_asyncio_client(client)
    if is_async and hasattr(client, "nodes_manager"):  # redis.asyncio.cluster.RedisCluster
        from redis.cluster import ClusterNode, RedisCluster

        manager = client.nodes_manager
        nodes = {**getattr(manager, "startup_nodes", {}), **getattr(manager, "nodes_cache", {})}
        startup = [ClusterNode(node.host, node.port) for node in nodes.values()]  # type: ignore[no-untyped-call]
        kwargs = _listener_kwargs(dict(client.connection_kwargs), redis.connection.Connection)
        for key in ("host", "port"):
            kwargs.pop(key, None)
        if getattr(client.connection_kwargs.get("connection_class"), "__name__", "") == "SSLConnection":
            kwargs["ssl"] = True
        twin = RedisCluster(startup_nodes=startup, **kwargs)
        return twin, twin
    pool = getattr(client, "connection_pool", None)
    if pool is None:  # a sync RedisCluster: its ClusterPubSub picks a node
        return client, None
    manager = getattr(pool, "sentinel_manager", None)
    if manager is not None:
        if not is_async:
            return client, None
        from redis.sentinel import Sentinel

        addresses = [s.connection_pool.connection_kwargs for s in manager.sentinels]
        sentinels = [(a["host"], a["port"]) for a in addresses]
        sentinel_kwargs = _listener_kwargs(dict(addresses[0]), redis.Redis) if addresses else {}
        for key in ("host", "port"):
            sentinel_kwargs.pop(key, None)
        kwargs = _listener_kwargs(dict(pool.connection_kwargs), redis.connection.Connection)
        sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, **kwargs)  # type: ignore[no-untyped-call]
        twin = sentinel.master_for(pool.service_name, redis_class=redis.Redis)  # type: ignore[no-untyped-call]
        return twin, twin
    name = pool.connection_class.__name__
    if name not in _CONNECTION_CLASSES:
        if is_async:
            raise redis.RedisError(f"cannot listen through a {pool.connection_class.__qualname__} connection")
        return client, None  # a custom sync connection class: use the client's own pool
    sync_class = pool.connection_class if not is_async else getattr(redis.connection, name)
    kwargs = _listener_kwargs(dict(pool.connection_kwargs), sync_class)
    own = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=sync_class, **kwargs))
    return own, own


def raw_reader(pubsub: Any) -> Callable[[float], Any] | None:
    """A function reading one reply off the subscribed connection (None: no reply within
    the timeout), when replies are plain RESP2 lists; else None (use ``get_message``).

    Reading replies straight off the connection skips ``PubSub.get_message``'s
    per-message select, timeout juggling and dict building, which this thread would
    otherwise pay for every save on this node too (its own messages echo back here).
    RESP3 connections deliver messages as push frames, so they keep ``get_message``.

    redis-py 8 reads with a timeout in one call (``read_response(timeout=...)``);
    5.x-7.x wait with ``can_read(timeout)`` first (what their ``get_message`` does).
    """
    connection = getattr(pubsub, "connection", None)
    if connection is None or str(getattr(connection, "protocol", 2)) not in ("2", "None"):
        return None
    read_response = connection.read_response
    try:
        params = inspect.signature(read_response).parameters
    except (TypeError, ValueError):
        return None
    if "disconnect_on_error" not in params:
        return None
    if "timeout" in params:
        def read(timeout: float) -> Any:
            try:
                return read_response(timeout=timeout, disconnect_on_error=False)
            except redis.TimeoutError:
                return None
    else:
        can_read = connection.can_read

        def read(timeout: float) -> Any:
            if not can_read(timeout=timeout):
                return None
            return read_response(disconnect_on_error=False)
    return read


def close_quietly(thing: Any) -> None:
    """``thing.close()``, logging instead of raising (a dead connection may fail to close)."""
    try:
        thing.close()
    except Exception:  # noqa: BLE001 - closing a dead connection may fail; nothing to do
        log.debug("closing the pub/sub connection failed", exc_info=True)


async def aclose_quietly(client: Any) -> None:
    """Close an asyncio client and its pool; never raises (for finalizers)."""
    try:
        await client.aclose()
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            await pool.disconnect()  # redis-py 5.0's aclose() leaves the pool connected
    except Exception:  # noqa: BLE001 - best effort, from a finalizer
        log.debug("closing an unclosed store's client failed", exc_info=True)


class Link:
    """The listener's connection: a ``PubSub`` of its own, and how to read and wake it.

    Until the subscription is confirmed it is read through ``get_message`` (which keeps
    redis-py's own subscription state); from ``listening()`` on, straight off the socket
    when ``raw_reader`` can (RESP2), and ``fd`` is the socket to wait on with ``select``
    (-1: none exposed, read with a blocking timeout instead).
    """

    __slots__ = ("fd", "made", "pubsub", "read")

    def __init__(self, client: Any) -> None:
        """Raises:
            redis.RedisError: the listener's client could not be built (see ``listener_client``).
        """
        listener, self.made = listener_client(client)
        self.pubsub: Any = listener.pubsub()
        self.read: Callable[[float], Any] | None = None
        self.fd = -1

    def subscribe(self, channel: str) -> None:
        """Connect and send SUBSCRIBE (the confirmation arrives as an event).

        Raises:
            redis.RedisError / OSError: the connection failed.
        """
        self.pubsub.subscribe(channel)

    def listening(self) -> None:
        """The subscription is confirmed: read raw RESP from now on, if possible."""
        self.read = raw_reader(self.pubsub)
        sock = getattr(getattr(self.pubsub, "connection", None), "_sock", None)
        self.fd = sock.fileno() if sock is not None else -1

    def next_event(self, timeout: float) -> tuple[str, Any] | None:
        """The next reply as (type, payload), or None if nothing came within ``timeout`` seconds.

        Raises:
            redis.RedisError / OSError: the connection failed.
        """
        read = self.read
        if read is not None:
            reply = read(timeout)
            return None if reply is None else (reply[0].decode("ascii", "replace"), reply[-1])
        message = self.pubsub.get_message(timeout=timeout)
        return None if message is None else (message["type"], message["data"])

    def ping(self) -> None:
        """Send a PING (its PONG arrives as an event).

        Raises:
            redis.RedisError / OSError: the connection failed.
        """
        self.pubsub.ping()

    def shutdown(self) -> None:
        """Shut the socket down (not close: the fd stays valid for a thread still reading
        it), so a blocking read returns at once."""
        sock = getattr(getattr(self.pubsub, "connection", None), "_sock", None)
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already closed
            pass

    def close(self) -> None:
        """Close the pub/sub connection and the client made for it; never raises."""
        close_quietly(self.pubsub)
        if self.made is not None:
            close_quietly(self.made)
