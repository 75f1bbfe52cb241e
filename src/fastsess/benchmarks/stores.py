"""Side-by-side session-store measurements against one Redis.

Every candidate loads and saves the same session (a typical ~300-byte login
session) under its own key prefix on the same server, in one process:

* the floor: raw redis-py ``GET`` + ``msgpack.unpackb`` and ``SET ... EX`` of
  ``msgpack.packb`` (sync and ``redis.asyncio``);
* fastsess ``RedisStore``, ``ClusteredRedisStore`` (cache hit, cache miss,
  save with its invalidation) and ``MemoryStore``, sync and asyncio;
* the pure-Python stores users would otherwise pick, when installed:
  Flask-Session's Redis interface (its own ``_retrieve_session_data`` /
  ``_upsert_session``, what ``open_session``/``save_session`` do per request
  after cookie handling), Django's cache session backend over django-redis,
  and starsessions' ``RedisStore`` with its JSON serializer.

Candidates are measured in interleaved rounds (a slice of each in turn), so
slow drift of a shared machine hits all of them alike.  Operations that cross
the network are timed one by one (p50 and p99); in-memory ones in batches of
``BATCH`` (per-operation cost = batch time / ``BATCH``, p50 over batches).
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import redis

from ..config import ClusterConfig
from ..stores.clustered import ClusteredRedisStore
from ..stores.memory import MemoryStore
from ..stores.redis import RedisStore
from .checks import check

BATCH = 1_000
TTL = 1800

SAMPLE_SESSION: dict[str, Any] = {
    "user_id": 4_211_337,
    "username": "ada.lovelace",
    "roles": ["staff", "billing"],
    "csrf_token": "9f86d081884c7d659a2feaa0c55ad015",
    "cart": [{"sku": "A-1001", "qty": 2, "price": 19.99}, {"sku": "B-2002", "qty": 1, "price": 5.5}],
    "locale": "en-GB",
    "last_seen": 1_764_000_000.25,
}


@dataclass
class Measurement:
    """One candidate operation and the samples gathered for it (nanoseconds per op)."""

    candidate: str
    op: str
    run: Callable[[int], Any] | None = None  # sync: one op (or one batch when batched)
    arun: Callable[[int], Awaitable[Any]] | None = None  # asyncio: one op
    batched: bool = False
    samples: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """p50/p99/mean in microseconds."""
        ordered = sorted(self.samples)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else float("nan")
        return {
            "candidate": self.candidate,
            "op": self.op,
            "p50_us": statistics.median(ordered) / 1e3 if ordered else float("nan"),
            "p99_us": p99 / 1e3,
            "mean_us": statistics.fmean(ordered) / 1e3 if ordered else float("nan"),
            "samples": len(ordered),
        }


def _time_sync(m: Measurement, count: int, start: int) -> None:
    run = m.run
    assert run is not None
    clock = time.perf_counter_ns
    if m.batched:  # ``count`` batches of BATCH operations
        for i in range(count):
            t0 = clock()
            run(start + i)
            m.samples.append((clock() - t0) / BATCH)
        return
    for i in range(start, start + count):
        t0 = clock()
        run(i)
        m.samples.append(clock() - t0)


async def _time_async(m: Measurement, count: int, start: int) -> None:
    arun = m.arun
    assert arun is not None
    clock = time.perf_counter_ns
    for i in range(start, start + count):
        t0 = clock()
        await arun(i)
        m.samples.append(clock() - t0)


class _Closer:
    """Collects cleanup callbacks (key deletion, client and store closing)."""

    def __init__(self) -> None:
        self.sync: list[Callable[[], Any]] = []
        self.aio: list[Callable[[], Awaitable[Any]]] = []


def _raw_sync(client: redis.Redis, prefix: str) -> list[Measurement]:
    key = prefix + "raw"
    payload = msgpack.packb(SAMPLE_SESSION)
    client.set(key, payload, ex=TTL)
    return [
        Measurement("redis-py GET + msgpack", "load", run=lambda i: msgpack.unpackb(client.get(key))),
        Measurement("redis-py SET EX + msgpack", "save", run=lambda i: client.set(key, msgpack.packb({**SAMPLE_SESSION, "n": i}), ex=TTL)),
    ]


def _fastsess_sync(url: str, prefix: str, closer: _Closer) -> list[Measurement]:
    store = RedisStore(url=url, prefix=prefix + "rs:", ttl=TTL)
    closer.sync.append(store.close)
    session = store.create(SAMPLE_SESSION)
    store.save(session)
    sid = session.id

    def save(i: int) -> None:
        session["n"] = i
        store.save(session)

    node = ClusteredRedisStore(url=url, prefix=prefix + "cl:", ttl=TTL, config=ClusterConfig(channel=prefix + "invalidate"))
    closer.sync.append(node.close)
    cached = node.create(SAMPLE_SESSION)
    node.save(cached)
    cid = cached.id
    node.load(cid)

    def cached_load(_batch: int) -> None:
        load = node.load
        for _ in range(BATCH):
            load(cid)

    def miss_load(_i: int) -> None:
        node.evict_from_cache(cid)
        node.load(cid)

    def node_save(i: int) -> None:
        cached["n"] = i
        node.save(cached)

    memory = MemoryStore(ttl=TTL)
    msession = memory.create(SAMPLE_SESSION)
    memory.save(msession)
    mid = msession.id

    def memory_load(_batch: int) -> None:
        load = memory.load
        for _ in range(BATCH):
            load(mid)

    return [
        Measurement("fastsess RedisStore", "load", run=lambda i: store.load(sid)),
        Measurement("fastsess RedisStore", "save", run=save),
        Measurement("fastsess ClusteredRedisStore", "load (cached)", run=cached_load, batched=True),
        Measurement("fastsess ClusteredRedisStore", "load (miss)", run=miss_load),
        Measurement("fastsess ClusteredRedisStore", "save (+publish)", run=node_save),
        Measurement("fastsess MemoryStore", "load", run=memory_load, batched=True),
    ]


def _flask_session(client: redis.Redis, prefix: str) -> list[Measurement]:
    from flask import Flask
    from flask_session.redis import RedisSessionInterface

    app = Flask("fastsess-bench")
    interface = RedisSessionInterface(app=app, client=client, key_prefix=prefix + "flask:")
    session = interface.session_class(dict(SAMPLE_SESSION), sid=secrets.token_urlsafe(32))
    store_id = interface._get_store_id(session.sid)
    lifetime = app.permanent_session_lifetime
    interface._upsert_session(lifetime, session, store_id)

    def save(i: int) -> None:
        session["n"] = i
        interface._upsert_session(lifetime, session, store_id)

    return [
        Measurement("Flask-Session (redis)", "load", run=lambda i: interface._retrieve_session_data(store_id)),
        Measurement("Flask-Session (redis)", "save", run=save),
    ]


def _django(url: str, prefix: str) -> list[Measurement]:
    import django
    import django_redis  # noqa: F401 - the backend measured: Django alone (the contrib extra) is skipped
    from django.conf import settings

    if settings.configured:  # another Django configuration owns this process: leave it alone
        raise RuntimeError("Django settings are already configured in this process")
    settings.configure(
        SECRET_KEY=secrets.token_hex(32),
        INSTALLED_APPS=["django.contrib.sessions"],
        SESSION_ENGINE="django.contrib.sessions.backends.cache",
        CACHES={"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": url, "KEY_PREFIX": prefix + "dj"}},
    )
    django.setup()
    from django.contrib.sessions.backends.cache import SessionStore

    session = SessionStore()
    session.update(SAMPLE_SESSION)
    session.save()
    key = session.session_key

    def save(i: int) -> None:
        session["n"] = i
        session.save()

    return [
        Measurement("Django cache backend (django-redis)", "load", run=lambda i: SessionStore(session_key=key).load()),
        Measurement("Django cache backend (django-redis)", "save", run=save),
    ]


async def _async_candidates(url: str, prefix: str, closer: _Closer) -> list[Measurement]:
    import redis.asyncio as aredis

    from ..asyncio.stores.redis import RedisStore as AsyncRedisStore

    client = aredis.Redis.from_url(url)
    closer.aio.append(client.aclose)
    key = prefix + "araw"
    await client.set(key, msgpack.packb(SAMPLE_SESSION), ex=TTL)

    async def raw_load(i: int) -> None:
        msgpack.unpackb(await client.get(key))

    async def raw_save(i: int) -> None:
        await client.set(key, msgpack.packb({**SAMPLE_SESSION, "n": i}), ex=TTL)

    store = AsyncRedisStore(url=url, prefix=prefix + "ars:", ttl=TTL)
    closer.aio.append(store.close)
    session = store.create(SAMPLE_SESSION)
    await store.save(session)
    sid = session.id

    async def save(i: int) -> None:
        session["n"] = i
        await store.save(session)

    found = [
        Measurement("redis.asyncio GET + msgpack", "load", arun=raw_load),
        Measurement("redis.asyncio SET EX + msgpack", "save", arun=raw_save),
        Measurement("fastsess.asyncio RedisStore", "load", arun=lambda i: store.load(sid)),
        Measurement("fastsess.asyncio RedisStore", "save", arun=save),
    ]
    try:
        from starsessions.serializers import JsonSerializer
        from starsessions.stores.redis import RedisStore as StarRedisStore
    except ImportError:
        return found
    star = StarRedisStore(connection=client, prefix=prefix + "star:")
    serializer = JsonSerializer()
    star_id = secrets.token_hex(16)
    await star.write(star_id, serializer.serialize(SAMPLE_SESSION), lifetime=TTL, ttl=TTL)

    async def star_load(i: int) -> None:
        serializer.deserialize(await star.read(star_id, lifetime=TTL))

    async def star_save(i: int) -> None:
        await star.write(star_id, serializer.serialize({**SAMPLE_SESSION, "n": i}), lifetime=TTL, ttl=TTL)

    found += [
        Measurement("starsessions RedisStore", "load", arun=star_load),
        Measurement("starsessions RedisStore", "save", arun=star_save),
    ]
    return found


def _optional_candidates(client: redis.Redis, url: str, prefix: str, skipped: dict[str, str]) -> list[Measurement]:
    found: list[Measurement] = []
    builders: tuple[tuple[str, Callable[[], list[Measurement]]], ...] = (
        ("Flask-Session", lambda: _flask_session(client, prefix)),
        ("Django cache backend", lambda: _django(url, prefix)),
    )
    for name, build in builders:
        try:
            found += build()
        except ImportError as exc:
            skipped[name] = f"not installed ({exc.name})"
        except RuntimeError as exc:
            skipped[name] = str(exc)
    return found


def run_store_benchmarks(url: str, ops: int = 2_000, rounds: int = 4, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every store candidate against the Redis at ``url``; returns rows, ratios and checks.

    ``ops`` network operations per candidate operation (spread over ``rounds``
    interleaved rounds).  Keys live under a random prefix and are deleted
    afterwards; nothing else on the server is touched.

    Raises:
        redis.RedisError: the server is unreachable.
    """
    prefix = f"fastsess-bench:{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(url)
    closer = _Closer()
    skipped: dict[str, str] = {}
    try:
        client.ping()
        sync = _raw_sync(client, prefix) + _fastsess_sync(url, prefix, closer) + _optional_candidates(client, url, prefix, skipped)
        per_round = max(1, ops // rounds)
        for r in range(rounds):
            for m in sync:
                # in-memory ops: a batch costs ~0.5 ms, so per_round // 20 batches take about
                # as long as per_round network ops would take in total / 10
                _time_sync(m, max(5, per_round // 20) if m.batched else per_round, r * per_round)
                if progress:
                    progress(f"{m.candidate} {m.op}")
        aio = asyncio.run(_run_async(url, prefix, rounds, per_round, closer, progress))
        if "starsessions" not in {m.candidate.split()[0] for m in aio}:
            skipped["starsessions"] = "not installed"
    finally:
        for close in closer.sync:
            close()
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    rows = [m.summary() for m in sync + aio]
    return {"rows": rows, "skipped": skipped, "checks": store_checks(rows)}


async def _run_async(
    url: str, prefix: str, rounds: int, per_round: int, closer: _Closer, progress: Callable[[str], None] | None
) -> list[Measurement]:
    measurements = await _async_candidates(url, prefix, closer)
    try:
        for r in range(rounds):
            for m in measurements:
                await _time_async(m, per_round, r * per_round)
                if progress:
                    progress(f"{m.candidate} {m.op}")
    finally:
        for aclose in closer.aio:
            await aclose()
    return measurements


def _p50(rows: list[dict[str, Any]], candidate: str, op: str) -> float | None:
    for row in rows:
        if row["candidate"] == candidate and row["op"] == op:
            return float(row["p50_us"])
    return None


def store_checks(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The project's store targets, evaluated on ``rows`` (p50 ratios; see ``checks.check``)."""
    checks: dict[str, Any] = {}

    def ratio(name: str, ours: tuple[str, str], floor: tuple[str, str], target: float) -> None:
        a, b = _p50(rows, *ours), _p50(rows, *floor)
        if a is not None and b:
            checks[name] = check(a / b, "<=", target, "x")

    raw_load, raw_save = ("redis-py GET + msgpack", "load"), ("redis-py SET EX + msgpack", "save")
    ratio("RedisStore.load / raw GET + unpackb (p50)", ("fastsess RedisStore", "load"), raw_load, 1.15)
    ratio("ClusteredRedisStore.load (miss) / raw GET + unpackb (p50)", ("fastsess ClusteredRedisStore", "load (miss)"), raw_load, 1.15)
    ratio("RedisStore.save / raw SET EX + packb (p50)", ("fastsess RedisStore", "save"), raw_save, 1.2)
    ratio("ClusteredRedisStore.save (+publish) / raw SET EX + packb (p50)", ("fastsess ClusteredRedisStore", "save (+publish)"), raw_save, 1.2)
    cached = _p50(rows, "fastsess ClusteredRedisStore", "load (cached)")
    if cached is not None:
        checks["ClusteredRedisStore.load (cached), p50"] = check(cached * 1e3, "<", 1000, "ns")
        get = _p50(rows, *raw_load)
        if get:
            checks["ClusteredRedisStore.load (cached) / raw GET + unpackb (p50)"] = check(cached / get, "<=", 1 / 80, "x")
    memory = _p50(rows, "fastsess MemoryStore", "load")
    if memory is not None:
        checks["MemoryStore.load, p50"] = check(memory * 1e3, "<", 1000, "ns")
    return checks
