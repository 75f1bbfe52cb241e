"""The redis-py side of the listener: its own connection, and reading it fast.

Everything here knows redis-py's internals (connection classes and their keyword
arguments, ``read_response``'s signature across versions); nothing else does.
"""

from __future__ import annotations

import inspect
import logging
import select
import socket
import time
from collections.abc import Callable
from typing import Any

import redis

from .resp import MORE, SocketReader, plain_socket

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
    """True for a redis-py asyncio client (``redis.asyncio.Redis``, its ``RedisCluster``),
    also when it is an instance of the application's own subclass of one."""
    return any(klass.__module__.startswith("redis.asyncio") for klass in type(client).__mro__)


def is_cluster_client(client: Any) -> bool:
    """True for a sync or asyncio ``RedisCluster`` client."""
    return hasattr(client, "nodes_manager")


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


def listener_client(client: Any, own: bool = False) -> tuple[Any, Any]:
    """A sync client whose ``pubsub()`` the listener reads, and the client to close
    after (None when it is ``client`` itself).

    A standalone ``redis.Redis`` (sync or asyncio) gets a private one-connection
    client with the same address, credentials and TLS settings, speaking RESP2 (its
    pub/sub replies are plain lists: ``raw_reader``) and without redis-py retries
    (a drop must reach the listener, never be hidden by a silent reconnect).
    An asyncio ``RedisCluster`` or Sentinel-managed client gets a sync twin of it;
    a sync ``RedisCluster`` or Sentinel-managed client is used as it is, unless ``own``
    (the listener needs a RESP2 connection of its own: a sync Sentinel-managed client
    gets a twin too, a custom connection class is refused).

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
        if not is_async and not own:
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
        if is_async or own:
            raise redis.RedisError(f"cannot listen through a {pool.connection_class.__qualname__} connection")
        return client, None  # a custom sync connection class: use the client's own pool
    sync_class = pool.connection_class if not is_async else getattr(redis.connection, name)
    kwargs = _listener_kwargs(dict(pool.connection_kwargs), sync_class)
    single = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=sync_class, **kwargs))
    return single, single


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
    """The listener's connection, and how to read and wake it.

    When ``listener_client`` made a private client (a standalone or Sentinel-managed
    server: RESP2, no retries), the connection is one of its pool's, used raw: SUBSCRIBE
    is sent on it and every reply is read off its socket by a ``SocketReader`` (TLS:
    redis-py's ``read_response``), so redis-py's pub/sub bookkeeping costs nothing per
    message.  Otherwise (the application's own client: a sync ``RedisCluster``, a sync
    Sentinel-managed client, a custom connection class, possibly RESP3) it is a
    ``PubSub``, read through ``get_message`` until the subscription is confirmed, then
    straight off the connection when ``raw_reader`` can (RESP2).

    ``fds`` holds the socket to wait on with ``select`` (empty: none exposed, read with a
    blocking timeout instead).  The listener thread reads a ``socket_reader`` itself
    (``ThreadedCoordinator._next_read``).  ``source`` is always 0.
    """

    __slots__ = ("commands", "connection", "fds", "made", "pubsub", "read", "socket_reader")
    source = 0
    shard = None

    def __init__(self, client: Any) -> None:
        """Raises:
            redis.RedisError: the listener's client could not be built (see ``listener_client``).
        """
        listener, self.made = listener_client(client)
        self.commands: Any = listener  # for commands on another connection than the subscribed one (replays)
        self.connection: Any = None  # raw mode: the subscribed connection
        self.pubsub: Any = None
        pool = getattr(listener, "connection_pool", None)
        if self.made is None or pool is None or is_cluster_client(listener):
            self.pubsub = listener.pubsub()
        self.read: Callable[[float], Any] | None = None
        self.socket_reader: SocketReader | None = None
        self.fds: list[int] = []

    def subscribe(self, channel: str) -> None:
        """Connect and send SUBSCRIBE (the confirmation arrives as an event).

        Raises:
            redis.RedisError / OSError: the connection failed.
        """
        if self.pubsub is not None:
            self.pubsub.subscribe(channel)
            return
        connection = self.connection = _pool_connection(self.commands.connection_pool)
        connection.connect()
        sock = getattr(connection, "_sock", None)
        if sock is not None and plain_socket(sock):
            self.socket_reader = SocketReader(sock)
        else:
            self.read = _reader(connection)
        connection.send_command("SUBSCRIBE", channel)
        if sock is not None:
            self.fds = [sock.fileno()]

    def listening(self) -> None:
        """The subscription is confirmed: a ``PubSub`` is read raw from now on, if possible."""
        if self.pubsub is None:
            return
        self.read = raw_reader(self.pubsub)
        sock = getattr(getattr(self.pubsub, "connection", None), "_sock", None)
        self.fds = [sock.fileno()] if sock is not None else []

    def next_event(self, timeout: float) -> tuple[str, Any] | None:
        """The next reply as (type, payload), or None if nothing came within ``timeout``
        seconds (with a ``SocketReader`` and ``timeout`` 0: nothing read yet, see ``receive``).

        Raises:
            redis.RedisError / OSError: the connection failed.
        """
        reader = self.socket_reader
        if reader is not None:
            reply = reader.reply()
            if reply is MORE:
                if timeout <= 0 or not select.select(self.fds, [], [], timeout)[0]:
                    return None
                reader.receive()
                reply = reader.reply()
                if reply is MORE:
                    return None
            return link_event(reply)
        read = self.read
        if read is not None:
            reply = read(timeout)
            if reply is None:
                return None
            if self.pubsub is None:
                return link_event(reply)
            return (reply[0].decode("ascii", "replace"), reply[-1])
        message = self.pubsub.get_message(timeout=timeout)
        return None if message is None else (message["type"], message["data"])

    def receive(self, ready: list[int]) -> None:
        """Nothing: ``next_event`` reads (a ``socket_reader`` is read by the listener thread)."""

    def ping(self, message: str | None = None) -> None:
        """Send a PING (its PONG, carrying ``message``, arrives as an event).

        Raises:
            redis.RedisError / OSError: the connection failed.
        """
        if self.pubsub is not None:
            self.pubsub.ping(message)
        elif message is None:
            self.connection.send_command("PING")
        else:
            self.connection.send_command("PING", message)

    def shutdown(self) -> None:
        """Shut the socket down (not close: the fd stays valid for a thread still reading
        it), so a blocking read returns at once."""
        connection = self.connection if self.pubsub is None else getattr(self.pubsub, "connection", None)
        sock = getattr(connection, "_sock", None)
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already closed
            pass

    def close(self) -> None:
        """Close the subscribed connection and the client made for it; never raises."""
        if self.pubsub is not None:
            close_quietly(self.pubsub)
        elif self.connection is not None:
            close_quietly(_Disconnect(self.connection))
        if self.made is not None:
            close_quietly(self.made)


def link_event(reply: Any) -> tuple[str, Any]:
    """A raw RESP2 reply of a subscribed connection as ``Link.next_event``'s (type, payload).

    Raises:
        redis.ResponseError: an error reply.
    """
    if type(reply) is not list or not reply:
        if isinstance(reply, redis.ResponseError):
            raise reply
        return ("reply", None)
    kind = reply[0]
    if kind == b"message" and len(reply) == 3:
        return ("message", reply[2])
    if kind == b"pong":
        return ("pong", reply[-1])
    if kind == b"subscribe":
        return ("subscribe", None)
    if kind == b"unsubscribe":
        return ("unsubscribe", None)
    return ("reply", None)


# -- NodeLink: raw RESP2 connections, one per master ------------------------------------------

TRACKING_CHANNEL = "__redis__:invalidate"
SHARDED_PUBSUB_VERSION = (7, 0)
TRACKING_VERSION = (6, 0)


def _version(info: Any) -> tuple[int, ...]:
    """``redis_version`` of an ``INFO server`` reply (RESP2 bulk string), as a tuple of ints."""
    text = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("redis_version:"):
            parts = line.split(":", 1)[1].strip().split(".")
            return tuple(int(p) for p in parts if p.isdigit())
    return (0,)


def _reader(connection: Any) -> Callable[[float], Any]:
    """Read one raw RESP2 reply off ``connection`` within ``timeout`` seconds (None: nothing)."""
    read_response = connection.read_response
    params = inspect.signature(read_response).parameters
    keep: dict[str, Any] = {"disconnect_on_error": False} if "disconnect_on_error" in params else {}
    if "timeout" in params:
        def read(timeout: float) -> Any:
            try:
                return read_response(timeout=timeout, **keep)
            except redis.TimeoutError:
                return None
        return read
    can_read = connection.can_read

    def read_old(timeout: float) -> Any:
        if not can_read(timeout=timeout):
            return None
        return read_response(**keep)
    return read_old


def _pool_connection(pool: Any) -> Any:
    """A connection of ``pool`` (redis-py 5 wants a command name, 8 warns about one)."""
    try:
        name = inspect.signature(pool.get_connection).parameters.get("command_name")
    except (TypeError, ValueError):
        name = None
    if name is not None and name.default is inspect.Parameter.empty:
        return pool.get_connection("SUBSCRIBE")
    return pool.get_connection()


def _cluster_settings(client: Any) -> tuple[list[tuple[str, int]], type, dict[str, Any]]:
    """The known node addresses of a (sync or asyncio) ``RedisCluster``, and the connection
    class and keyword arguments (RESP2, no retries) for the listener's own connections."""
    manager = client.nodes_manager
    nodes = {**getattr(manager, "startup_nodes", {}), **getattr(manager, "nodes_cache", {})}
    primaries = [n for n in nodes.values() if getattr(n, "server_type", None) == "primary"]
    others = [n for n in nodes.values() if getattr(n, "server_type", None) != "primary"]
    addresses = list(dict.fromkeys((n.host, int(n.port)) for n in primaries + others))
    raw = dict(client.connection_kwargs if is_asyncio_client(client) else manager.connection_kwargs)
    cls = raw.pop("connection_class", None)
    name = getattr(cls, "__name__", "Connection")
    sync_class = getattr(redis.connection, name if name in _CONNECTION_CLASSES else "Connection")
    if raw.get("ssl") and name == "Connection":
        sync_class = redis.connection.SSLConnection
    kwargs = _listener_kwargs(raw, sync_class)
    for key in ("host", "port"):
        kwargs.pop(key, None)
    return addresses, sync_class, kwargs


class NodeLink:
    """The listener's connections when it tracks changes or uses sharded pub/sub: one raw
    RESP2 connection per master (one in all for a standalone or Sentinel-managed server).

    On each connection, before subscribing: with ``tracking``, ``CLIENT TRACKING on
    REDIRECT <its own id> BCAST PREFIX <prefix>`` (the server tells this very connection
    about every change of a key under the prefix, on ``__redis__:invalidate``).  Then:
    on a Redis Cluster whose masters all run Redis >= 7 (and ``sharded``), ``SSUBSCRIBE``
    to that master's shard channel; the plain channel is subscribed on the first
    connection only (``cleared`` messages, writers that fell back to ``PUBLISH``, nodes
    configured without sharding).

    Events (``next_event``): ``("subscribe", None)`` once every subscription is
    confirmed, ``("message", payload)``, ``("tracked", keys or None)``,
    ``("unsubscribe", None)``, ``("reply", None)``; ``source`` is the index of the
    connection the last event came from.  A connection silent for ``idle_timeout``
    seconds is PINGed on its own; one that then stays silent as long again fails the link.
    On a cluster, every ``idle_timeout`` seconds a connection of its own asks for the
    slot map again: if the masters or their slots changed (slots moved, a failover), the
    link fails, and the listener resubscribes with the new map.

    Raises (constructor and ``subscribe``):
        redis.RedisError / OSError: a connection failed, or the server cannot do what is asked.
    """

    def __init__(self, client: Any, channel: str, *, prefix: str, tracking: bool, sharded: bool, idle_timeout: float) -> None:
        self.client = client
        self.channel = channel
        self.prefix = prefix
        self.tracking = tracking
        self.want_sharded = sharded
        self.idle_timeout = idle_timeout
        self.connections: list[Any] = []
        self.readers: list[Callable[[float], Any]] = []
        # Plain sockets are read by a SocketReader (by descriptor): their reader above only
        # hands out what was read; next_event reads the sockets select finds readable.
        self.socket_readers: dict[int, SocketReader] = {}
        self.fds: list[int] = []
        self.source = 0
        self.shard: str | None = None  # the shard channel of the last message (None: the plain channel)
        self.shards: Any = None  # a ShardMap when sharded pub/sub is used
        # The configuration epoch of every master (CLUSTER NODES) when the slot map was read:
        # a master that takes slots over raises its own (None: not a cluster).
        self.master_epochs: dict[str, int] | None = None
        self._replayers: dict[int, Any] = {}  # per master: a second connection, for replays
        self._connect_args: tuple[Any, dict[str, Any]] | None = None
        self.sharded = False
        self.versions: list[tuple[int, ...]] = []
        self._made: Any = None
        self._pending = 0  # subscription confirmations still to come
        self._last: list[float] = []
        self._pinged: list[float | None] = []
        self._pongs: dict[bytes, int] = {}  # numbered PINGs: how many connections answered
        self._next = 0
        self._topology: dict[tuple[str, int], list[tuple[int, int]]] | None = None
        self._probe: Any = None  # a plain connection asking for the slot map
        self._next_check = 0.0

    # -- connecting -------------------------------------------------------------------

    def _command(self, connection: Any, *args: Any) -> Any:
        connection.send_command(*args)
        return connection.read_response()

    @staticmethod
    def _masters(slots_reply: Any, asked: str) -> dict[tuple[str, int], list[tuple[int, int]]]:
        """``{(host, port): sorted slot ranges}`` of the masters in a CLUSTER SLOTS reply
        from the node at ``asked`` (an empty or unknown endpoint means that node's host)."""
        masters: dict[tuple[str, int], list[tuple[int, int]]] = {}
        for entry in slots_reply:
            first, last, master = int(entry[0]), int(entry[1]), entry[2]
            host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
            if host in ("", "?"):
                host = asked
            masters.setdefault((host, int(master[1])), []).append((first, last))
        for ranges in masters.values():
            ranges.sort()
        return masters

    def _open_cluster(self) -> list[Any]:
        """Connections to every master of the cluster, from a fresh CLUSTER SLOTS."""
        from .._core.slots import ShardMap

        addresses, cls, kwargs = _cluster_settings(self.client)
        for key in ("socket_timeout", "socket_connect_timeout"):  # never block the listener for good
            kwargs[key] = kwargs.get(key) or self.idle_timeout
        slots_reply, last_error = None, None
        for host, port in addresses:
            probe = cls(host=host, port=port, **kwargs)
            try:
                slots_reply = self._command(probe, "CLUSTER", "SLOTS")
                nodes = self._command(probe, "CLUSTER", "NODES")
            except (redis.RedisError, OSError) as exc:
                last_error = exc
                probe.disconnect()
                continue
            self._probe = probe  # kept: it asks again every idle_timeout (_check_topology)
            self.master_epochs = _master_epochs(nodes)
            break
        if not slots_reply:
            raise redis.ConnectionError(f"no cluster node answered CLUSTER SLOTS: {last_error}")
        self._topology = masters = self._masters(slots_reply, self._probe.host)
        self._next_check = time.monotonic() + self.idle_timeout
        order = sorted(masters)
        self._connect_args = (cls, kwargs)
        connections = []
        for host, port in order:
            connection = cls(host=host, port=port, **kwargs)
            connections.append(connection)
        self.connections = connections
        for connection in connections:
            connection.connect()
            self.versions.append(_version(self._command(connection, "INFO", "server")))
        self.sharded = self.want_sharded and all(v >= SHARDED_PUBSUB_VERSION for v in self.versions)
        if self.tracking and not self.sharded:
            raise redis.RedisError(
                "track_external_changes on Redis Cluster needs sharded pub/sub (Redis >= 7 on every master, "
                "sharded_pubsub=True)"
            )
        self.shards = ShardMap(self.channel, [masters[a] for a in order]) if self.sharded else None
        return connections

    @property
    def commands(self) -> Any:
        """A client for commands on other connections than these (replays): the one made
        for a standalone or Sentinel-managed server (None on a cluster: never needed)."""
        return self._made

    def _open_single(self) -> list[Any]:
        listener, self._made = listener_client(self.client, own=True)
        connection = _pool_connection(listener.connection_pool)
        self.connections = [connection]
        return [connection]

    def subscribe(self, channel: str) -> None:
        """Connect to every master, register tracking, send the subscriptions (their
        confirmations arrive as events).

        Raises:
            redis.RedisError / OSError: a connection or a command failed.
        """
        is_cluster = hasattr(self.client, "nodes_manager")
        connections = self._open_cluster() if is_cluster else self._open_single()
        now = time.monotonic()
        for i, connection in enumerate(connections):
            if not is_cluster:
                connection.connect()
            if self.tracking:
                client_id = self._command(connection, "CLIENT", "ID")
                try:
                    self._command(connection, "CLIENT", "TRACKING", "on", "REDIRECT", client_id, "BCAST", "PREFIX", self.prefix)
                except redis.ResponseError as exc:
                    raise redis.ResponseError(f"track_external_changes needs CLIENT TRACKING (Redis >= 6): {exc}") from exc
            plain = [channel] if i == 0 else []
            if self.tracking:
                plain.append(TRACKING_CHANNEL)
            if plain:
                connection.send_command("SUBSCRIBE", *plain)
                self._pending += len(plain)
            if self.sharded:
                connection.send_command("SSUBSCRIBE", self.shards.channels[i])
                self._pending += 1
            sock = getattr(connection, "_sock", None)
            if sock is not None and plain_socket(sock):
                reader = SocketReader(sock)
                self.socket_readers[sock.fileno()] = reader
                self.readers.append(_buffered(reader))
            else:
                self.readers.append(_reader(connection))
            if sock is not None:
                self.fds.append(sock.fileno())
            self._last.append(now)
            self._pinged.append(None)

    def listening(self) -> None:
        """Nothing to switch: replies are read raw from the start."""

    # -- reading ----------------------------------------------------------------------

    def _check_topology(self, now: float) -> None:
        """On a cluster, every ``idle_timeout`` seconds: fail if the slot map changed.

        Raises:
            redis.ConnectionError: it changed (or the probe connection failed).
        """
        if self._probe is None or now < self._next_check:
            return
        self._next_check = now + self.idle_timeout
        if self._masters(self._command(self._probe, "CLUSTER", "SLOTS"), self._probe.host) != self._topology:
            raise redis.ConnectionError("the cluster's slot map changed; subscribing again with the new one")

    def _check_alive(self, now: float) -> None:
        for i, connection in enumerate(self.connections):
            pinged = self._pinged[i]
            if pinged is not None:
                if now - pinged >= self.idle_timeout:
                    raise redis.ConnectionError(f"no PONG within {self.idle_timeout:g} s from {connection.host}:{connection.port}")
            elif now - self._last[i] >= self.idle_timeout:
                connection.send_command("PING")
                self._pinged[i] = now

    def next_event(self, timeout: float) -> tuple[str, Any] | None:
        """The next reply of any connection as (type, payload), or None if nothing came
        within ``timeout`` seconds; ``source`` says which connection it came from.  With
        ``timeout`` 0, a plain socket is not read: after ``select`` found it readable,
        ``receive`` reads it.

        Raises:
            redis.RedisError / OSError: a connection failed (or stayed silent after a PING).
        """
        readers = self.readers
        count = len(readers)
        now = time.monotonic()
        self._check_alive(now)
        self._check_topology(now)
        deadline = now + timeout
        while True:
            start = self._next
            for step in range(count):
                i = (start + step) % count
                reply = readers[i](0)
                if reply is not None:
                    self._next = (i + 1) % count
                    self.source = i
                    self._last[i], self._pinged[i] = time.monotonic(), None
                    return self._event(reply)
            left = deadline - time.monotonic()
            if left <= 0 or not self.fds:
                return None
            ready = select.select(self.fds, [], [], left)[0]
            if not ready:
                return None
            self.receive(ready)

    def receive(self, ready: list[int]) -> None:
        """Read the plain sockets among ``ready`` (descriptors ``select`` found readable)
        into their ``SocketReader``s; ``next_event`` hands out what they read (the others,
        TLS, are read by ``next_event`` itself).

        Raises:
            redis.ConnectionError / OSError: a connection failed.
        """
        readers = self.socket_readers
        for fd in ready:
            reader = readers.get(fd)
            if reader is not None:
                reader.receive()

    def _side(self, shard: str) -> Any:
        """The second connection to the master serving ``shard`` (made on first use)."""
        index = self.shards.channels.index(shard)
        connection = self._replayers.get(index)
        if connection is None:
            assert self._connect_args is not None
            cls, kwargs = self._connect_args
            master = self.connections[index]
            connection = self._replayers[index] = cls(host=master.host, port=master.port, **kwargs)
        return connection

    def _drop_side(self, connection: Any) -> None:
        for index, kept in list(self._replayers.items()):
            if kept is connection:
                del self._replayers[index]
        close_quietly(_Disconnect(connection))

    def pipeline(self, shard: str, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one round trip on the second connection to the master serving
        ``shard``; their replies, in order.

        Raises:
            redis.RedisError / OSError: a command failed (an error reply, ``MOVED`` included);
                the connection is dropped (the next use makes a new one).
        """
        connection = self._side(shard)
        try:
            connection.send_packed_command(connection.pack_commands(commands))
            replies = []
            failed: Exception | None = None
            for _ in commands:
                try:
                    replies.append(connection.read_response())
                except redis.ResponseError as exc:  # read on: the other replies still come
                    failed = failed or exc
            if failed is not None:
                raise failed
            return replies
        except (redis.RedisError, OSError):
            self._drop_side(connection)
            raise

    def replay(self, shard: str, args: tuple[Any, ...], text: str) -> Any:
        """Run a replay command (``EVALSHA`` ``args``; ``EVAL`` of ``text`` if the server
        lacks the script) on the master serving ``shard``, on a second connection to it
        (made on first use, kept until ``close``).

        Raises:
            redis.RedisError / OSError: the command failed (a ``MOVED`` reply included:
                the slot map changed).
        """
        connection = self._side(shard)
        try:
            return self._command(connection, *args)
        except redis.exceptions.NoScriptError:
            return self._command(connection, "EVAL", text, *args[2:])
        except (redis.RedisError, OSError):
            self._drop_side(connection)
            raise

    def _event(self, reply: Any) -> tuple[str, Any]:
        kind = reply[0]
        if kind == b"smessage":
            self.shard = self.shards.channels[self.source]
            return ("message", reply[2])
        if kind == b"message":
            if reply[1] == b"__redis__:invalidate":
                return ("tracked", reply[2])
            self.shard = None
            return ("message", reply[2])
        if kind in (b"subscribe", b"ssubscribe"):
            self._pending -= 1
            return ("subscribe", None) if self._pending == 0 else ("reply", None)
        if kind in (b"unsubscribe", b"sunsubscribe"):
            return ("unsubscribe", None)
        if kind == b"pong" and reply[-1] in self._pongs:
            answered = self._pongs[reply[-1]] + 1
            if answered < len(self.connections):
                self._pongs[reply[-1]] = answered
                return ("reply", None)
            del self._pongs[reply[-1]]
            return ("pong", reply[-1])
        return ("reply", None)

    def ping(self, message: str | None = None) -> None:
        """PING every connection that has no PING outstanding (the PONGs arrive as events);
        with ``message`` (the lease's numbered PINGs), every connection: its PONG comes out
        as ``("pong", message)`` once every connection answered it.

        Raises:
            redis.RedisError / OSError: a connection failed.
        """
        now = time.monotonic()
        for i, connection in enumerate(self.connections):
            if message is not None:
                connection.send_command("PING", message)
            elif self._pinged[i] is None:
                connection.send_command("PING")
            else:
                continue
            if self._pinged[i] is None:
                self._pinged[i] = now
        if message is not None:
            self._pongs[message.encode()] = 0

    def shutdown(self) -> None:
        """Shut every socket down, so a blocking read returns at once."""
        for connection in self.connections:
            sock = getattr(connection, "_sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        """Close every connection (never returned to a pool) and the client made for them; never raises."""
        for connection in self.connections:
            close_quietly(_Disconnect(connection))
        for connection in self._replayers.values():
            close_quietly(_Disconnect(connection))
        if self._probe is not None:
            close_quietly(_Disconnect(self._probe))
        if self._made is not None:
            close_quietly(self._made)


def _master_epochs(nodes: Any) -> dict[str, int]:
    """``{node id: config epoch}`` of the masters in a ``CLUSTER NODES`` reply (RESP2 bulk
    string: one line per node, the epoch is its 7th field)."""
    text = nodes.decode("ascii", "replace") if isinstance(nodes, bytes) else str(nodes)
    epochs: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 8 and "master" in fields[2].split(",") and fields[6].isdigit():
            epochs[fields[0]] = int(fields[6])
    return epochs


def _buffered(reader: SocketReader) -> Callable[[float], Any]:
    """``NodeLink``'s reader of a plain socket: the next reply its ``SocketReader`` has read
    (None: none yet; the timeout is ignored: ``next_event`` reads the socket itself).

    Raises:
        redis.ResponseError: the reply is an error reply.
        ProtocolError: the bytes read are not RESP2.
    """
    def read(timeout: float) -> Any:
        reply = reader.reply()
        if reply is MORE:
            return None
        if isinstance(reply, redis.ResponseError):
            raise reply  # as redis-py's read_response does
        return reply
    return read


class _Disconnect:
    __slots__ = ("connection",)

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def close(self) -> None:
        self.connection.disconnect()
