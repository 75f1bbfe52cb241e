"""Session stores against Redis: fastsess's overhead over a raw client, and the stores users would otherwise use.

Every Redis benchmark runs on the same private server (see conftest) and one
session payload (``SESSION_DATA``, 232 bytes as msgpack), and times a
batch of ``REDIS_BATCH`` = 100 sequential operations per round, one network
round trip each (except Django's save: see below).  A loopback round trip
costs 35 us (client and server on one CPU) to 130 us (on two) on the 2-vCPU
development machine, so 100 per round keeps rounds short enough for
pytest-benchmark to collect dozens per candidate: the ratios below are
differences of a few percent and need them.  Run this module pinned to one
CPU (``taskset -c 0``; bench/README.md explains why).

* ``redis-load``: read a session that is in Redis (fastsess's miss path: no
  local cache in ``RedisStore``).
  - ``raw``: ``redis.Redis.get`` + ``msgpack.unpackb``: the floor, and the
    baseline of DESIGN.md's "load within 1.15x" target.
  - ``fastsess``: ``RedisStore(url=...).load(id)`` (id check, GET, envelope
    decode, ``Session``).
  - ``raw-async`` / ``fastsess-async``: the same on ``redis.asyncio`` and
    ``fastsess.asyncio.RedisStore``, awaited one after another inside one
    ``run_until_complete`` per round (one event loop for the module).
  - ``flask-session``: Flask-Session's ``RedisSessionInterface`` the way its
    ``open_session`` does it once the cookie is parsed:
    ``_retrieve_session_data`` (GET + msgspec decode) and ``RedisSession(...)``.
  - ``starsessions``: starsessions' ``RedisStore.read`` + its default
    ``JsonSerializer.deserialize`` (what its middleware does), asyncio.
  - ``django``: ``django.contrib.sessions.backends.cache.SessionStore(key).load()``
    over ``django_redis.cache.RedisCache`` with its defaults (pickle serializer).
* ``redis-save``: write a modified session, the same candidates:
  ``raw`` is ``SET key msgpack.packb(data) EX ttl`` (the "save within 1.2x"
  baseline); fastsess is ``session["n"] = i; store.save(session)`` (one
  ``SET ... EX ... XX``); Flask-Session ``_upsert_session`` (msgspec + SET EX);
  starsessions ``serialize`` + ``write``; Django ``session["n"] = i;
  session.save()``, which Django implements as GET (does it still exist?) then
  SET: two round trips.
* ``memory-load``: ``MemoryStore.load(id)`` over 1,000 stored sessions
  (DESIGN.md: under 1 us), next to its floor, ``dict.get(id).copy()``.

A candidate is skipped only when its package is not installed (``fastsess.asyncio``'s
Redis store included).  Every candidate's setup writes its session and checks
that a load returns the same data, so a smoke run (``--benchmark-disable``)
proves each driver really reads and writes.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import msgpack
import pytest
import redis
import redis.asyncio as aredis

from fastsess.stores.base import new_session_id
from fastsess.stores.memory import MemoryStore
from fastsess.stores.redis import RedisStore

from .support import BATCH, record_per_op

TTL = 1800  # seconds, every store's session lifetime
REDIS_BATCH = 100  # round trips per round
MEMORY_SESSIONS = BATCH  # in-process loads per round

# A logged-in user's session: ids, names, a CSRF token, a small cart.
SESSION_DATA: dict[str, Any] = {
    "user_id": 18_204,
    "username": "alice@example.com",
    "roles": ["customer", "beta"],
    "csrf_token": "kq0Xc1dUu4y8iC0m4F9Jk2m5eQ3zW7rT1aB6nY8pL0s",
    "locale": "en-GB",
    "cart": {"items": [{"sku": "A-1001", "qty": 2, "price": 19.99}, {"sku": "B-2002", "qty": 1, "price": 5.0}]},
    "last_seen": 1_717_171_717.25,
    "flash": [],
}


@dataclass
class StoreCase:
    """One candidate's load and save, each timed as a round of ``REDIS_BATCH`` operations."""

    load_round: Callable[[], None]
    save_round: Callable[[], None]
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            close()


Builder = Callable[[str, str, asyncio.AbstractEventLoop], StoreCase]


def check_loaded(loaded: Any, name: str) -> None:
    """A load must return the stored data (a driver that reads nothing would look fast)."""
    assert loaded is not None and dict(loaded) == SESSION_DATA, f"{name}: load did not return the stored session"


def counter() -> Callable[[], int]:
    """A fresh value for every save, so each one is a real modification."""
    return itertools.count().__next__


# -- one builder per candidate: (url, key prefix, event loop) -> StoreCase ------------------


def build_raw(url: str, prefix: str, loop: asyncio.AbstractEventLoop) -> StoreCase:
    client = redis.Redis.from_url(url)
    key = f"{prefix}raw:{new_session_id()}"
    data = dict(SESSION_DATA)
    client.set(key, msgpack.packb(data), ex=TTL)
    check_loaded(msgpack.unpackb(client.get(key)), "raw")
    get, set_, packb, unpackb, n = client.get, client.set, msgpack.packb, msgpack.unpackb, counter()

    def load_round() -> None:
        for _ in range(REDIS_BATCH):
            unpackb(get(key))

    def save_round() -> None:
        for _ in range(REDIS_BATCH):
            data["n"] = n()
            set_(key, packb(data), ex=TTL)

    return StoreCase(load_round, save_round, [client.close])


def build_fastsess(url: str, prefix: str, loop: asyncio.AbstractEventLoop) -> StoreCase:
    store = RedisStore(url=url, prefix=f"{prefix}fastsess:", ttl=TTL)
    session = store.create(SESSION_DATA)
    assert store.save(session)
    check_loaded(store.load(session.id), "fastsess")
    load, save, sid, n = store.load, store.save, session.id, counter()

    def load_round() -> None:
        for _ in range(REDIS_BATCH):
            load(sid)

    def save_round() -> None:
        for _ in range(REDIS_BATCH):
            session["n"] = n()
            save(session)

    session["n"] = -1
    assert store.save(session) and store.load(sid)["n"] == -1, "fastsess: save did not write"  # type: ignore[index]
    return StoreCase(load_round, save_round, [store.close])


def build_raw_async(url: str, prefix: str, loop: asyncio.AbstractEventLoop) -> StoreCase:
    client = aredis.Redis.from_url(url)
    key = f"{prefix}raw-async:{new_session_id()}"
    data = dict(SESSION_DATA)
    loop.run_until_complete(client.set(key, msgpack.packb(data), ex=TTL))
    check_loaded(msgpack.unpackb(loop.run_until_complete(client.get(key))), "raw-async")
    packb, unpackb, n = msgpack.packb, msgpack.unpackb, counter()

    async def loads() -> None:
        for _ in range(REDIS_BATCH):
            unpackb(await client.get(key))

    async def saves() -> None:
        for _ in range(REDIS_BATCH):
            data["n"] = n()
            await client.set(key, packb(data), ex=TTL)

    return StoreCase(
        lambda: loop.run_until_complete(loads()),
        lambda: loop.run_until_complete(saves()),
        [lambda: loop.run_until_complete(client.aclose())],
    )


def build_fastsess_async(url: str, prefix: str, loop: asyncio.AbstractEventLoop) -> StoreCase:
    module = pytest.importorskip("fastsess.asyncio.stores.redis", reason="fastsess.asyncio has no RedisStore yet")
    store = module.RedisStore(url=url, prefix=f"{prefix}fastsess-async:", ttl=TTL)
    session = store.create(SESSION_DATA)
    assert loop.run_until_complete(store.save(session))
    check_loaded(loop.run_until_complete(store.load(session.id)), "fastsess-async")
    sid, n = session.id, counter()
    session["n"] = -1
    assert loop.run_until_complete(store.save(session)), "fastsess-async: save did not write"

    async def loads() -> None:
        for _ in range(REDIS_BATCH):
            await store.load(sid)

    async def saves() -> None:
        for _ in range(REDIS_BATCH):
            session["n"] = n()
            await store.save(session)

    return StoreCase(
        lambda: loop.run_until_complete(loads()),
        lambda: loop.run_until_complete(saves()),
        [lambda: loop.run_until_complete(store.close())],
    )


def build_flask_session(url: str, prefix: str, loop: asyncio.AbstractEventLoop) -> StoreCase:
    flask = pytest.importorskip("flask")
    flask_session_redis = pytest.importorskip("flask_session.redis")
    app = flask.Flask("fastsess_bench")
    app.permanent_session_lifetime = timedelta(seconds=TTL)
    client = redis.Redis.from_url(url)
    interface = flask_session_redis.RedisSessionInterface(app=app, client=client, key_prefix=f"{prefix}flask:")
    session_class = interface.session_class
    sid = interface._generate_sid(interface.sid_length)
    store_id = interface._get_store_id(sid)
    session = session_class(dict(SESSION_DATA), sid=sid)
    lifetime = app.permanent_session_lifetime
    interface._upsert_session(lifetime, session, store_id)
    check_loaded(interface._retrieve_session_data(store_id), "flask-session")
    retrieve, upsert, n = interface._retrieve_session_data, interface._upsert_session, counter()

    def load_round() -> None:
        # open_session, minus cookie parsing: fetch + decode, then wrap in the session class
        for _ in range(REDIS_BATCH):
            session_class(retrieve(store_id), sid=sid)

    def save_round() -> None:
        for _ in range(REDIS_BATCH):
            session["n"] = n()
            upsert(lifetime, session, store_id)

    return StoreCase(load_round, save_round, [client.close])


def build_starsessions(url: str, prefix: str, loop: asyncio.AbstractEventLoop) -> StoreCase:
    stores = pytest.importorskip("starsessions.stores.redis")
    serializers = pytest.importorskip("starsessions.serializers")
    client = aredis.Redis.from_url(url)
    store = stores.RedisStore(connection=client, prefix=f"{prefix}starsessions:")
    serializer = serializers.JsonSerializer()
    sid = new_session_id()
    data = dict(SESSION_DATA)
    loop.run_until_complete(store.write(sid, serializer.serialize(data), lifetime=TTL, ttl=TTL))
    check_loaded(serializer.deserialize(loop.run_until_complete(store.read(sid, lifetime=TTL))), "starsessions")
    n = counter()

    async def loads() -> None:
        for _ in range(REDIS_BATCH):
            serializer.deserialize(await store.read(sid, lifetime=TTL))

    async def saves() -> None:
        for _ in range(REDIS_BATCH):
            data["n"] = n()
            await store.write(sid, serializer.serialize(data), lifetime=TTL, ttl=TTL)

    return StoreCase(
        lambda: loop.run_until_complete(loads()),
        lambda: loop.run_until_complete(saves()),
        [lambda: loop.run_until_complete(client.aclose())],
    )


def configure_django(url: str, prefix: str) -> None:
    """Point Django's default cache at ``url`` (django-redis) once per process; skip if it points elsewhere."""
    django = pytest.importorskip("django")
    pytest.importorskip("django_redis")
    from django.conf import settings

    if settings.configured:
        location = settings.CACHES.get("default", {}).get("LOCATION")
        if location != url:
            pytest.skip(f"Django is already configured for another cache ({location!r})")
        return
    settings.configure(
        SECRET_KEY="fastsess-bench-not-secret",
        INSTALLED_APPS=["django.contrib.sessions"],
        SESSION_ENGINE="django.contrib.sessions.backends.cache",
        CACHES={
            "default": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": url,
                "KEY_PREFIX": f"{prefix}django",  # keys: <prefix>django:1:django.contrib.sessions.cache<id>
                "TIMEOUT": TTL,
            }
        },
        SESSION_COOKIE_AGE=TTL,
        USE_TZ=True,
    )
    django.setup()


def build_django(url: str, prefix: str, loop: asyncio.AbstractEventLoop) -> StoreCase:
    configure_django(url, prefix)
    from django.contrib.sessions.backends.cache import SessionStore

    session = SessionStore()
    session.update(SESSION_DATA)
    session.save()  # no key yet: create() with cache.add
    sid = session.session_key
    check_loaded(SessionStore(session_key=sid).load(), "django")
    n = counter()

    def load_round() -> None:
        # what the first session access in a request does
        for _ in range(REDIS_BATCH):
            SessionStore(session_key=sid).load()

    def save_round() -> None:
        for _ in range(REDIS_BATCH):
            session["n"] = n()
            session.save()

    return StoreCase(load_round, save_round)


BUILDERS: dict[str, Builder] = {
    "raw": build_raw,
    "fastsess": build_fastsess,
    "raw-async": build_raw_async,
    "fastsess-async": build_fastsess_async,
    "flask-session": build_flask_session,
    "starsessions": build_starsessions,
    "django": build_django,
}


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def event_loop_for_bench() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for every asyncio candidate: ``asyncio.run`` per round would time loop creation."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module", params=list(BUILDERS))
def store_case(
    request: pytest.FixtureRequest, redis_url: str, redis_prefix: str, event_loop_for_bench: asyncio.AbstractEventLoop
) -> Iterator[StoreCase]:
    """One candidate, set up with its session stored; load and save of that candidate run together."""
    case = BUILDERS[request.param](redis_url, redis_prefix, event_loop_for_bench)
    yield case
    case.close()


# -- benchmarks -----------------------------------------------------------------------------


def test_redis_load(benchmark: Any, store_case: StoreCase, request: pytest.FixtureRequest) -> None:
    benchmark.group = "redis-load"
    benchmark(store_case.load_round)
    record_per_op(benchmark, REDIS_BATCH, candidate=request.node.callspec.id, workload="redis-load")


def test_redis_save(benchmark: Any, store_case: StoreCase, request: pytest.FixtureRequest) -> None:
    benchmark.group = "redis-save"
    benchmark(store_case.save_round)
    record_per_op(benchmark, REDIS_BATCH, candidate=request.node.callspec.id, workload="redis-save")


def test_memory_store_load(benchmark: Any) -> None:
    store = MemoryStore(ttl=TTL)
    ids = []
    for i in range(MEMORY_SESSIONS):
        session = store.create({**SESSION_DATA, "n": i})
        assert store.save(session)
        ids.append(session.id)
    check_loaded({k: v for k, v in store.load(ids[0]).items() if k != "n"}, "MemoryStore")  # type: ignore[union-attr]
    load = store.load

    def load_round() -> None:
        for sid in ids:
            load(sid)

    benchmark.group = "memory-load"
    benchmark(load_round)
    record_per_op(benchmark, MEMORY_SESSIONS, candidate="MemoryStore.load", workload="memory-load")


def test_memory_floor_dict_copy(benchmark: Any) -> None:
    """The least any in-process store can do: find the mapping, hand back a shallow copy."""
    sessions = {new_session_id(): {**SESSION_DATA, "n": i} for i in range(MEMORY_SESSIONS)}
    ids = list(sessions)
    get = sessions.get

    def load_round() -> None:
        for sid in ids:
            get(sid).copy()  # type: ignore[union-attr]

    benchmark.group = "memory-load"
    benchmark(load_round)
    record_per_op(benchmark, MEMORY_SESSIONS, candidate="dict.get + copy", workload="memory-load")
