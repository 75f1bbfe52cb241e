"""The store contract's fixtures: every store kind, in both flavours, behind one sync API.

Flavours: ``sync`` (``fastsess.MemoryStore``/``RedisStore``/``ClusteredRedisStore``) and
``asyncio`` (the ``fastsess.asyncio`` twins).  An asyncio store is driven through
``Blocking``, a small sync facade: each coroutine method runs, awaited, on ONE event
loop that lives in its own thread for the whole session (so tasks and connections the
store keeps between calls stay on one loop, and keep running between calls); an async
iterator comes back as a list iterator.  A contract test is therefore written once, in
plain sync code, and runs once per flavour.

Fixtures (ids ``<kind>-<flavour>``):

* ``backend``: memory, redis and clustered stores, both flavours (6 ids).
* ``redis_backend``: the Redis-backed kinds only (redis, clustered; 4 ids).
* ``plain_redis``: ``RedisStore`` only (2 ids); ``clustered``: the clustered kind only (2 ids).
* ``nodes``: two subscribed clustered stores ``A`` and ``B`` on one private channel,
  both flavours (2 ids), for the invalidation behaviours.

``backend.make(**store_kwargs)`` builds a store (closed after the test); the other
helpers look at the storage behind the store's back: ``raw_count``, ``write_marker``/
``wrote_since`` (did anything reach the storage), ``assert_ttl``, ``plant_foreign``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, NamedTuple

import pytest
import redis
import redis.asyncio

import fastsess
import fastsess.asyncio
from fastsess import ClusterConfig, Session
from fastsess.stores.base import new_session_id

from ..support.clients import open_connections
from ..support.waiting import barrier, wait_until

FLAVOURS = ("sync", "asyncio")
# short failure timeouts for the listener, as the cluster tests use
FAST: dict[str, Any] = {"subscribe_timeout": 0.5, "reconnect_backoff": (0.02, 0.2)}


# --- the asyncio facade -------------------------------------------------------------------


class LoopThread:
    """One event loop running forever in a daemon thread; ``run`` awaits on it and blocks."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="contract-loop", daemon=True)
        self.thread.start()

    def run(self, awaitable: Awaitable[Any], timeout: float = 30.0) -> Any:
        async def wrapped() -> Any:
            return await awaitable

        future = asyncio.run_coroutine_threadsafe(wrapped(), self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def _collect(iterator: Any) -> list[Any]:
    return [item async for item in iterator]


class Blocking:
    """A sync view of an asyncio object (a store, or its coordinator).

    Calling a method that returns an awaitable runs it on the loop thread and returns
    its result; one that returns an async iterator returns an iterator over all its
    items; anything else is passed through.  ``with`` enters with ``async with``.
    Attribute writes go to the wrapped object.
    """

    def __init__(self, target: Any, loop: LoopThread) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_loop", loop)

    @property
    def wrapped(self) -> Any:
        """The asyncio object itself."""
        return self._target

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name == "coordinator" and value is not None:
            return Blocking(value, self._loop)
        if callable(value) and not isinstance(value, type):

            @functools.wraps(value)
            def call(*args: Any, **kwargs: Any) -> Any:
                result = value(*args, **kwargs)
                if inspect.isawaitable(result):
                    return self._loop.run(result)
                if hasattr(result, "__anext__"):
                    return iter(self._loop.run(_collect(result)))
                return result

            return call
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target, name, value)

    def __enter__(self) -> Blocking:
        self._loop.run(self._target.__aenter__())
        return self

    def __exit__(self, *exc: Any) -> None:
        self._loop.run(self._target.__aexit__(*exc))

    def __repr__(self) -> str:
        return f"Blocking({self._target!r})"


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()


# --- storage inspection -------------------------------------------------------------------


class FakeClock:
    """The stores' ``clock=``: starts at the real time, moves only when told to."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def redis_calls(client: redis.Redis) -> int:
    """Commands the server has executed so far; INFO (ours) and PING (listener liveness) excluded."""
    stats = client.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_ping"))


def redis_command_calls(client: redis.Redis, *commands: str) -> int:
    stats = client.info("commandstats")
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in commands)


def sync_store(store: Any) -> Any:
    """The object behind a facade (the asyncio store), or the sync store itself."""
    return store.wrapped if isinstance(store, Blocking) else store


class Backend:
    """One store kind in one flavour; ``make`` builds stores, the rest inspects the storage."""

    kind: str = ""

    def __init__(self, flavour: str, loop: LoopThread) -> None:
        self.flavour = flavour
        self.loop = loop
        self.stores: list[Any] = []
        self.api: Any = fastsess if flavour == "sync" else fastsess.asyncio
        self.clock = FakeClock()  # every store this backend makes runs on it (``clock=``)

    @property
    def is_async(self) -> bool:
        return self.flavour == "asyncio"

    def wrap(self, store: Any) -> Any:
        wrapped = Blocking(store, self.loop) if self.is_async else store
        self.stores.append(wrapped)
        return wrapped

    def make(self, **kwargs: Any) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        errors = []
        for store in self.stores:
            try:
                store.close()
            except Exception as exc:  # noqa: BLE001 - close them all, report the first
                errors.append(exc)
        if errors:
            raise errors[0]

    def save_all(self, store: Any, sessions: list[Session]) -> list[bool]:
        """``store.save`` each session; for an asyncio store, all in one coroutine (fewer loop hops)."""
        if not isinstance(store, Blocking):
            return [store.save(s) for s in sessions]
        target = store.wrapped

        async def save_all() -> list[bool]:
            return [await target.save(s) for s in sessions]

        return list(self.loop.run(save_all()))

    def now(self) -> float:
        """The stores' clock."""
        return self.clock.now

    def age(self, session: Session, seconds: float) -> None:
        """Let ``seconds`` pass on the stores' clock (refresh decisions, MemoryStore expiry)."""
        self.clock.advance(seconds)

    def clock_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``kwargs`` with ``clock=`` this backend's fake clock, unless ``real_clock=True`` asks for time.time."""
        if not kwargs.pop("real_clock", False):
            kwargs.setdefault("clock", self.clock)
        return kwargs

    def __repr__(self) -> str:
        return f"{self.kind}-{self.flavour}"


class MemoryBackend(Backend):
    """``MemoryStore``: expiry runs on the backend's clock (``clock=``).  ``raw_count`` and
    the write markers read the store's ``LocalCache`` directly, read-only: it is the
    storage, as DBSIZE and INFO are for Redis, and no public API exposes it."""

    kind = "memory"

    @staticmethod
    def _sync(store: Any) -> Any:
        inner = sync_store(store)
        return inner if isinstance(inner, fastsess.MemoryStore) else inner._store

    def make(self, **kwargs: Any) -> Any:
        return self.wrap(self.api.MemoryStore(**self.clock_kwargs(kwargs)))

    def raw_count(self, store: Any) -> int:
        return len(self._sync(store)._sessions)

    def write_marker(self, store: Any, sid: str) -> Any:
        return self._sync(store)._sessions.get(sid)

    def wrote_since(self, store: Any, sid: str, marker: Any) -> bool:
        return self._sync(store)._sessions.get(sid) is not marker

    def assert_ttl(self, store: Any, sid: str, seconds: int) -> None:
        assert store.exists(sid)
        self.clock.advance(seconds - 1.0)
        assert store.exists(sid), f"expired before {seconds - 1} s"
        self.clock.advance(1.5)
        assert not store.exists(sid), f"still alive after {seconds + 0.5} s"

    def plant_foreign(self) -> Callable[[], bool]:
        other = fastsess.MemoryStore()
        s = other.create({"foreign": True})
        other.save(s)
        return lambda: other.exists(s.id) and other.count() == 1


class RedisBackend(Backend):
    kind = "redis"

    def __init__(self, flavour: str, loop: LoopThread, url: str, client: redis.Redis, prefix: str) -> None:
        super().__init__(flavour, loop)
        self.url, self.client, self.prefix = url, client, prefix

    def make(self, **kwargs: Any) -> Any:
        kwargs.setdefault("prefix", self.prefix)
        if "client" not in kwargs:
            kwargs.setdefault("url", self.url)
        return self.wrap(self.api.RedisStore(**self.clock_kwargs(kwargs)))

    @property
    def store_class(self) -> Any:
        return self.api.RedisStore

    def new_client(self, url: str | None = None, **kwargs: Any) -> Any:
        """A redis-py client of this flavour (sync or ``redis.asyncio``); ``close_client`` it."""
        cls = redis.Redis if self.flavour == "sync" else redis.asyncio.Redis
        return cls.from_url(url or self.url, **kwargs)

    def close_client(self, client: Any) -> None:
        if self.flavour == "sync":
            client.close()
        else:
            self.loop.run(client.aclose())

    def ping(self, client: Any) -> bool:
        result = client.ping()
        return bool(self.loop.run(result) if inspect.isawaitable(result) else result)

    def connections(self, client: Any) -> list[bool]:
        """For each connection ``client``'s pool created: is it open?"""
        return open_connections(client)

    def wait_down(self, store: Any) -> None:
        """After the server went away: until the store can notice (the clustered one: unsubscribed)."""

    def raw_count(self, store: Any) -> int:
        """The string keys in Redis: sessions (a clustered store's sequence hash and
        invalidation log, a hash and a stream, are not counted)."""
        return sum(1 for _ in self.client.scan_iter(_type="string"))

    def write_marker(self, store: Any, sid: str) -> Any:
        return redis_calls(self.client)

    def wrote_since(self, store: Any, sid: str, marker: Any) -> bool:
        return redis_calls(self.client) != marker

    def assert_ttl(self, store: Any, sid: str, seconds: int) -> None:
        ttl = self.client.ttl(store.prefix + sid)
        assert seconds - 2 <= ttl <= seconds, f"TTL in Redis is {ttl}, expected ~{seconds}"

    def plant_foreign(self) -> Callable[[], bool]:
        foreign = {
            "other:" + new_session_id(): b"x",  # another prefix
            self.prefix + "sub:" + new_session_id(): b"y",  # a longer prefix starting with ours
            self.prefix + "meta": b"z",  # not a session id under our prefix
            "unrelated": b"w",
            new_session_id(): b"v",  # a bare id, no prefix
        }
        for k, v in foreign.items():
            self.client.set(k, v)
        return lambda: all(self.client.get(k) == v for k, v in foreign.items())

    def behind_the_back(self, store: Any, sid: str, data: dict[str, Any]) -> None:
        """Overwrite the session in Redis without any invalidation (as a lost message would)."""
        ghost = Session(sid, data, ttl=store.ttl, new=False, version=99)
        self.client.set(store.prefix + sid, store.serializer.encode(ghost), ex=store.ttl)


class ClusteredBackend(RedisBackend):
    kind = "clustered"

    def __init__(self, flavour: str, loop: LoopThread, url: str, client: redis.Redis, prefix: str) -> None:
        super().__init__(flavour, loop, url, client, prefix)
        self.channel = f"contract:{uuid.uuid4().hex[:10]}:invalidate"

    def make(self, *, name: str = "n", cluster: dict[str, Any] | None = None, subscribe: bool = True, **kwargs: Any) -> Any:
        """A ``ClusteredRedisStore`` on this test's channel; ``cluster`` overrides ``ClusterConfig``
        fields; with ``subscribe`` the listener is started and subscribed before it is returned."""
        settings: dict[str, Any] = {"node_id": f"{name}-{uuid.uuid4().hex[:8]}", "channel": self.channel, **FAST}
        settings.update(cluster or {})
        kwargs.setdefault("prefix", self.prefix)
        if "client" not in kwargs:
            kwargs.setdefault("url", self.url)
        store = self.wrap(self.store_class(config=ClusterConfig(**settings), **self.clock_kwargs(kwargs)))
        if subscribe and store.coordinator is not None:
            if self.is_async:
                store.start()
            assert store.coordinator.wait_subscribed(5.0), "the listener did not subscribe"
        return store

    @property
    def store_class(self) -> Any:
        return self.api.ClusteredRedisStore

    def wait_down(self, store: Any) -> None:
        wait_until(lambda: not store.coordinator.subscribed, 5, what="the listener to notice the drop")

    def close(self) -> None:
        # close concurrently: each close may wait for its listener's poll interval
        sync = [s for s in self.stores if not isinstance(s, Blocking)]
        threads = [threading.Thread(target=s.close) for s in sync]
        for t in threads:
            t.start()
        asyncs = [s.wrapped for s in self.stores if isinstance(s, Blocking)]
        if asyncs:

            async def close_all() -> None:
                await asyncio.gather(*(s.close() for s in asyncs))

            self.loop.run(close_all())
        for t in threads:
            t.join(10)


def make_backend(request: pytest.FixtureRequest, kind: str, flavour: str) -> Backend:
    loop = request.getfixturevalue("loop_thread")
    if kind == "memory":
        return MemoryBackend(flavour, loop)
    args = (request.getfixturevalue("redis_url"), request.getfixturevalue("redis_client"), request.getfixturevalue("prefix"))
    return (RedisBackend if kind == "redis" else ClusteredBackend)(flavour, loop, *args)


def _params(kinds: tuple[str, ...]) -> list[Any]:
    return [pytest.param((k, f), id=f"{k}-{f}") for k in kinds for f in FLAVOURS]


@pytest.fixture(params=_params(("memory", "redis", "clustered")))
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    b = make_backend(request, *request.param)
    yield b
    b.close()


@pytest.fixture(params=_params(("redis", "clustered")))
def redis_backend(request: pytest.FixtureRequest) -> Iterator[RedisBackend]:
    b = make_backend(request, *request.param)
    assert isinstance(b, RedisBackend)
    yield b
    b.close()


@pytest.fixture(params=_params(("redis",)))
def plain_redis(request: pytest.FixtureRequest) -> Iterator[RedisBackend]:
    b = make_backend(request, *request.param)
    assert isinstance(b, RedisBackend)
    yield b
    b.close()


@pytest.fixture(params=_params(("clustered",)))
def clustered(request: pytest.FixtureRequest) -> Iterator[ClusteredBackend]:
    b = make_backend(request, *request.param)
    assert isinstance(b, ClusteredBackend)
    yield b
    b.close()


# --- two nodes ----------------------------------------------------------------------------


class Nodes(NamedTuple):
    A: Any
    B: Any
    raw: redis.Redis
    channel: str
    backend: ClusteredBackend


@pytest.fixture
def nodes(clustered: ClusteredBackend) -> Nodes:
    return Nodes(clustered.make(name="A"), clustered.make(name="B"), clustered.client, clustered.channel, clustered)


class _HeldClient:
    """Stands in for a store's client (``store.client``: the store sends every command
    through its ``execute_command``): after the first run of ``script`` has returned,
    calls ``hold(reply)`` before the store sees the reply."""

    def __init__(self, client: Any, script: Any, hold: Callable[[Any], Any]) -> None:
        self._client, self._names, self._hold = client, (script.sha, script.text), hold

    def _matches(self, args: tuple[Any, ...]) -> bool:
        return self._hold is not None and args[0] in ("EVALSHA", "EVAL") and args[1] in self._names

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class _HeldSync(_HeldClient):
    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        reply = self._client.execute_command(*args, **kwargs)
        if self._matches(args):
            hold, self._hold = self._hold, None
            hold(reply)
        return reply


class _HeldAsync(_HeldClient):
    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        reply = await self._client.execute_command(*args, **kwargs)
        if self._matches(args):
            hold, self._hold = self._hold, None
            await hold(reply)
        return reply


def hold_after(store: Any, script: Any, during: Callable[[], None]) -> list[Any]:
    """Make the first run of ``script`` (a ``fastsess._core.ops.Script``: the store's Redis
    round trip) by ``store`` run ``during()`` after Redis answered and before the store
    acts on the reply, by wrapping ``store.client``, where the store sends its commands.

    This forces the interleavings of the no-stale-refill tests.  For an asyncio store
    ``during`` runs in a worker thread while the call awaits it, so it may use other
    stores' sync facades.  Returns the replies seen.
    """
    target = sync_store(store)
    replies: list[Any] = []
    if isinstance(store, Blocking):

        async def held_async(reply: Any) -> None:
            replies.append(reply)
            await asyncio.to_thread(during)

        target.client = _HeldAsync(target.client, script, held_async)
    else:

        def held(reply: Any) -> None:
            replies.append(reply)
            during()

        target.client = _HeldSync(target.client, script, held)
    return replies


def listener_threads() -> list[threading.Thread]:
    """The live listener threads (both flavours listen in a thread)."""
    return [t for t in threading.enumerate() if t.name.startswith("fastsess-listener") and t.is_alive()]


def received(store: Any) -> int:
    """Messages from other nodes ``store`` applied, creation messages (first saves, which
    evict nothing) left out: a first save's message arriving late never passes for the
    invalidation a test waits for."""
    stats = store.coordinator.stats
    return int(stats.received - stats.created)


def wait_received(store: Any, before: int, timeout: float = 5.0) -> int:
    """Wait until ``store`` applied a message from another node after ``before`` (``received``)."""
    wait_until(lambda: received(store) > before, timeout, what=f"an invalidation (received > {before})")
    return received(store)


def created(store: Any) -> int:
    """Creation messages (first saves on other nodes) ``store`` applied."""
    return int(store.coordinator.stats.created)


def wait_created(store: Any, before: int, timeout: float = 5.0) -> int:
    """Wait until ``store`` applied a creation message from another node after ``before``."""
    wait_until(lambda: created(store) > before, timeout, what=f"a creation message (created > {before})")
    return created(store)


__all__ = [
    "FAST", "Backend", "Blocking", "ClusteredBackend", "LoopThread", "MemoryBackend", "Nodes", "RedisBackend",
    "barrier", "created", "received", "redis_command_calls", "sync_store", "wait_created", "wait_received", "wait_until",
]
