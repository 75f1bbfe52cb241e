"""Validation on save, size and decode limits, prefixes, ids, TTLs and pools, for every store.

Each test runs against the six stores (``MemoryStore``, ``RedisStore`` and
``ClusteredRedisStore``, sync and asyncio) unless it only makes sense with Redis.
A test body is written once: ``call(x)`` awaits ``x`` when an asyncio store
returned a coroutine.  Redis is the private server of the test session.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import sys
import textwrap
import threading
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import pytest
import redis

import fastsess.asyncio as fa
from fastsess import ClusterConfig, ClusteredRedisStore, MemoryStore, RedisStore, Session
from fastsess._core.sequence import log_keys
from fastsess.errors import ConfigError, InvalidSessionId, PoolExhausted, SessionCorrupt, SessionTooLarge, StoreUnavailable
from fastsess.serializers import MAX_DECODED_SIZE, MAX_DEPTH, MsgpackSerializer
from fastsess.server import RedisServer
from fastsess.session import MAX_TTL
from fastsess.stores.base import new_session_id

KINDS = ["memory", "redis", "clustered", "amemory", "aredis", "aclustered"]
REDIS_KINDS = ["redis", "clustered", "aredis", "aclustered"]


async def call(value: Any) -> Any:
    """The result of a store method, sync or asyncio."""
    return await value if inspect.isawaitable(value) else value


def cluster_config() -> ClusterConfig:
    return ClusterConfig(
        node_id=f"lim-{uuid.uuid4().hex[:8]}", channel=f"test:{uuid.uuid4().hex[:10]}:invalidate",
        subscribe_timeout=0.5, reconnect_backoff=(0.02, 0.2),
    )


def build(kind: str, url: str | None, **kwargs: Any) -> Any:
    """A store of ``kind``; ``url`` only for the Redis kinds."""
    if kind in ("memory", "amemory"):
        for redis_only in ("serializer", "pool_size", "pool_timeout", "socket_timeout"):
            kwargs.pop(redis_only, None)
        return MemoryStore(**kwargs) if kind == "memory" else fa.MemoryStore(**kwargs)
    cls = {"redis": RedisStore, "clustered": ClusteredRedisStore, "aredis": fa.RedisStore, "aclustered": fa.ClusteredRedisStore}[kind]
    if kind in ("clustered", "aclustered"):
        kwargs.setdefault("config", cluster_config())
    return cls(url=url, **kwargs)


class Maker:
    """``make(**kwargs)`` builds a store of one kind (closed after the test) and looks behind it."""

    def __init__(self, kind: str, url: str | None, client: redis.Redis | None, prefix: str) -> None:
        self.kind, self.url, self.client, self.prefix = kind, url, client, prefix
        self.stores: list[Any] = []

    @property
    def is_redis(self) -> bool:
        return self.kind in REDIS_KINDS

    def __call__(self, **kwargs: Any) -> Any:
        kwargs.setdefault("prefix", self.prefix)
        store = build(self.kind, self.url, **kwargs)
        self.stores.append(store)
        return store

    def raw_count(self, store: Any) -> int:
        """Entries physically stored (string keys: a clustered store's invalidation log, a
        hash and a stream, is not counted)."""
        if self.client is not None:
            return sum(1 for _ in self.client.scan_iter(_type="string"))
        inner = store._store if self.kind == "amemory" else store
        return len(inner._sessions)

    async def aclose(self) -> None:
        for store in self.stores:
            await call(store.close())


@pytest.fixture(params=KINDS)
async def make(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Maker]:
    kind = request.param
    if kind in REDIS_KINDS:
        maker = Maker(kind, request.getfixturevalue("redis_url"), request.getfixturevalue("redis_client"), prefix)
    else:
        maker = Maker(kind, None, None, prefix)
    yield maker
    await maker.aclose()


@pytest.fixture(params=REDIS_KINDS)
async def rmake(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Maker]:
    maker = Maker(request.param, request.getfixturevalue("redis_url"), request.getfixturevalue("redis_client"), prefix)
    yield maker
    await maker.aclose()


async def saved(store: Any, data: dict[str, Any]) -> Session:
    s = store.create(dict(data))
    assert await call(store.save(s)) is True
    return s


def nested(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = [value]
    return value


# --- #8: save refuses what load could never decode --------------------------------------------

UNLOADABLE: dict[str, Any] = {
    "tuple-key": {(1, 2): "x"},
    "nested-tuple-key": [{"a": [{(1,): 2}]}],
    "frozenset-key": {frozenset({1}): 1},
    "ext-unknown-code": msgpack.ExtType(42, b"boom"),
    "ext-datetime-garbage": msgpack.ExtType(1, b"not a date"),
    "ext-posing-as-datetime": msgpack.ExtType(1, b"2024-01-01T00:00:00"),
    "ext-nested": {"a": [1, {"b": msgpack.ExtType(2, b"2024-01-01")}]},
}


@pytest.mark.parametrize("value", list(UNLOADABLE.values()), ids=list(UNLOADABLE))
async def test_save_refuses_values_that_load_could_never_decode(make: Maker, value: Any) -> None:
    """A value ``save`` accepted but ``load`` rejected would lose the whole session (cart included).

    Today's main: ``RedisStore.save`` returns True, then every ``load`` raises SessionCorrupt;
    ``MemoryStore`` raises ValueError for an unknown ExtType.
    """
    store = make()
    fresh = store.create()
    fresh["v"] = value
    with pytest.raises(TypeError):
        await call(store.save(fresh))
    assert fresh.new and fresh.version == 0 and make.raw_count(store) == 0
    good = await saved(store, {"cart": [1, 2]})
    good["v"] = value
    with pytest.raises(TypeError):
        await call(store.save(good))
    assert good.version == 1 and good.modified
    assert (await call(store.load(good.id))).data == {"cart": [1, 2]}
    with pytest.raises(TypeError):
        await call(store.regenerate(good))
    assert (await call(store.load(good.id))).data == {"cart": [1, 2]}


async def test_non_str_keys_that_round_trip_are_stored(make: Maker) -> None:
    store = make()
    s = await saved(store, {"m": {1: "a", 2.5: "b", b"k": "c"}, "d": msgpack.Timestamp(0).to_datetime()})
    back = await call(make(prefix=store.prefix).load(s.id)) if make.is_redis else await call(store.load(s.id))
    assert back.data == {"m": {1: "a", 2.5: "b", b"k": "c"}, "d": msgpack.Timestamp(0).to_datetime()}


# --- #9: the size limit is checked at save, compressed or not ------------------------------------


async def test_a_session_over_the_size_limit_is_refused_at_save_even_compressed(make: Maker) -> None:
    """17 MB compresses to ~34 KB and was stored, but no node could ever load it (inflation cap).

    The writer must not cache it either: the clustered store keeps answering with what Redis holds.
    """
    store = make(serializer=MsgpackSerializer(compress_threshold=1024))
    good = await saved(store, {"cart": [1]})
    assert await call(store.load(good.id)) is not None  # cached now on the clustered kinds
    good["blob"] = "x" * 17_000_000
    with pytest.raises(SessionTooLarge) as info:
        await call(store.save(good))
    assert isinstance(info.value, ValueError) and "max_size" in str(info.value)
    assert good.version == 1 and good.modified
    assert (await call(store.load(good.id))).data == {"cart": [1]}
    big = store.create({"blob": "y" * (MAX_DECODED_SIZE + 1)})
    with pytest.raises(SessionTooLarge):
        await call(store.save(big))
    assert make.raw_count(store) == 1


async def test_a_session_just_under_the_size_limit_saves_and_loads_elsewhere(make: Maker) -> None:
    store = make(serializer=MsgpackSerializer(compress_threshold=1024))
    s = await saved(store, {"blob": "z" * (MAX_DECODED_SIZE - 200)})
    reader = make(prefix=store.prefix) if make.is_redis else store
    assert len((await call(reader.load(s.id)))["blob"]) == MAX_DECODED_SIZE - 200


async def test_too_many_values_are_refused_at_save(make: Maker) -> None:
    """The item budget that bounds decode memory (``max_items``) is enforced at save too."""
    store = make()
    ok = await saved(store, {"v": list(range(999_000))})
    ok["v"] = list(range(1_000_000))
    with pytest.raises(SessionTooLarge) as info:
        await call(store.save(ok))
    assert "max_items" in str(info.value)
    assert len((await call(store.load(ok.id)))["v"]) == 999_000


# --- #11: prefixes --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "fs\udcff:", b"fs:", None], ids=["empty", "lone-surrogate", "bytes", "none"])
async def test_bad_prefixes_are_refused_at_construction(make: Maker, bad: Any) -> None:
    """An empty prefix let ``clear()`` delete any 43-character URL-safe key of another application;
    a lone surrogate failed later, with UnicodeEncodeError, on the first Redis command."""
    with pytest.raises(ConfigError):
        make(prefix=bad)


async def test_iter_ids_count_clear_touch_only_session_keys(rmake: Maker) -> None:
    prefix = f"a*[b]?\\{uuid.uuid4().hex[:4]}:"
    store = rmake(prefix=prefix)
    ids = {(await saved(store, {"n": i})).id for i in range(3)}
    client = rmake.client
    assert client is not None
    sid = new_session_id()
    foreign = {
        prefix + "sub:" + sid: b"1",  # a longer prefix starting with ours
        prefix + sid + "x": b"2",  # 44 characters after the prefix
        prefix + sid[:42]: b"3",  # 42
        prefix + sid[:42] + ".": b"4",  # 43, not URL-safe
        prefix + "meta": b"5",
        "aX[b]?\\" + prefix[7:] + sid: b"6",  # what the unescaped glob would match
        "a" + prefix + sid: b"7",
        sid: b"8",  # a bare id, no prefix
    }
    for key, value in foreign.items():
        client.set(key, value)
    assert {i async for i in _aiter(store.iter_ids())} == ids
    assert await call(store.count()) == 3
    assert await call(store.clear()) == 3
    assert all(client.get(k) == v for k, v in foreign.items())
    # Besides them, at most a clustered store's invalidation log (its channel's sequence
    # hash and stream: a clear is logged too).
    channel = getattr(getattr(store, "config", None), "channel", None)
    extra = {k.decode() for k in client.scan_iter()} - set(foreign)
    assert extra <= (set(log_keys(channel)) if channel else set()), extra


async def _aiter(it: Any) -> AsyncIterator[Any]:
    if hasattr(it, "__aiter__"):
        async for x in it:
            yield x
    else:
        for x in it:
            yield x


# --- #12: ids are validated on save ----------------------------------------------------------------


@pytest.mark.parametrize("bad_id", ["../x*", None, "*" * 43, new_session_id() + "=", 42], ids=["path-glob", "none", "stars-43", "44", "int"])
async def test_save_refuses_a_session_whose_id_fastsess_did_not_issue(make: Maker, bad_id: Any) -> None:
    store = make()
    s = Session(bad_id, {"a": 1}, ttl=60)
    s.modified = True
    with pytest.raises(InvalidSessionId) as info:
        await call(store.save(s))
    assert isinstance(info.value, ValueError) and "session.id" in str(info.value)
    assert make.raw_count(store) == 0
    good = await saved(store, {"a": 1})
    old_id = good.id
    good.id = bad_id
    good["b"] = 2
    with pytest.raises(InvalidSessionId):
        await call(store.save(good))
    with pytest.raises(InvalidSessionId):
        await call(store.regenerate(good))
    assert make.raw_count(store) == 1 and (await call(store.load(old_id))).data == {"a": 1}


# --- clear errors: TTLs ----------------------------------------------------------------------------


async def test_ttls_are_validated_where_they_are_set(make: Maker) -> None:
    """``create(ttl=2**63)`` was accepted and ``save`` then raised StoreUnavailable (Redis is fine)."""
    store = make()
    for bad in (2**63, MAX_TTL + 1, 0, -1, 1.5, True, "60", None):
        if bad is not None:
            with pytest.raises(ConfigError):
                store.create(ttl=bad)
        with pytest.raises(ValueError):
            Session(new_session_id(), ttl=bad)  # type: ignore[arg-type]
    s = await saved(store, {"a": 1})
    for bad in (0, 1.5, True, 2**63, "60"):
        with pytest.raises(ConfigError):
            s.ttl = bad  # type: ignore[assignment]
        with pytest.raises(ConfigError):
            await call(store.touch(s.id, bad))
    assert s.ttl == store.ttl
    s.ttl = MAX_TTL
    s["b"] = 2
    assert await call(store.save(s)) is True
    if make.client is not None:
        assert make.client.ttl(store.prefix + s.id) > MAX_TTL - 10
    assert await call(store.touch(s.id, MAX_TTL)) is True


# --- clear errors: depth --------------------------------------------------------------------------


async def test_deep_nesting_is_a_type_error_at_save(make: Maker) -> None:
    """JSON raised RecursionError at depth 511 and msgpack ValueError at 10,000; the README promises TypeError."""
    for codec in ["msgpack", "json"] if make.is_redis else ["msgpack"]:  # MemoryStore always checks with msgpack
        store = make(serializer=codec, prefix=f"{make.prefix}{codec}:")
        ok = await saved(store, {"v": nested(MAX_DEPTH), "w": {"k": nested(MAX_DEPTH - 1)}})
        assert (await call(store.load(ok.id)))["v"] == nested(MAX_DEPTH)
        for levels in (MAX_DEPTH + 1, 511, 10_000):
            s = store.create()
            s["v"] = nested(levels)
            with pytest.raises(TypeError):
                await call(store.save(s))
        assert await call(store.count()) == 1


# --- #13: decode work and memory are bounded ------------------------------------------------------

FIELDS_HEAD = b"\x95" + b"".join(msgpack.packb(v) for v in (1_700_000_000.0, 1_700_000_000.0, 60, 1))
BOMB_ARRAYS = 16 * 1024 * 1024 - 64  # empty msgpack arrays: just under the 16 MiB inflation cap
BOMB_JSON_ARRAYS = 5_500_000  # "[]," each: just under the cap


def bomb(kind: str) -> bytes:
    """A ~16 KB zlib envelope that inflates (under the cap) to millions of empty containers."""
    if kind == "msgpack-empty-arrays":
        body = FIELDS_HEAD + b"\x81\xa1x\xdd" + BOMB_ARRAYS.to_bytes(4, "big") + b"\x90" * BOMB_ARRAYS
        codec = 1
    elif kind == "msgpack-chunked-arrays":  # each list within max_array_len, 16M values in all
        chunk = b"\xdd" + (1_000_000).to_bytes(4, "big") + b"\x90" * 1_000_000
        body = FIELDS_HEAD + b"\x81\xa1x\xdc\x00\x10" + chunk * 16
        codec = 1
    elif kind == "msgpack-nested-headers":  # each level announces a million entries
        body = FIELDS_HEAD + b"\x81\xa1x" + (b"\xdd" + (1_000_000).to_bytes(4, "big")) * 3_000_000
        codec = 1
    else:
        body = b'[1.0,1.0,60,1,{"x":[' + b"[]," * (BOMB_JSON_ARRAYS - 1) + b"[]]}]"
        codec = 2
    assert len(body) <= MAX_DECODED_SIZE
    packed = zlib.compress(body, 9)
    assert len(packed) < 100_000
    return b"FS" + bytes((1, codec, 1)) + packed


LOAD_BOMB = textwrap.dedent(
    """
    import asyncio, resource, sys, zlib
    import redis
    import fastsess.asyncio as fa
    from fastsess import ClusterConfig, ClusteredRedisStore, RedisStore
    from fastsess.errors import SessionCorrupt

    url, kind, prefix, sid, channel = sys.argv[1:6]
    cfg = lambda: ClusterConfig(channel=channel, subscribe_timeout=0.5)
    cls = {"redis": RedisStore, "clustered": ClusteredRedisStore, "aredis": fa.RedisStore, "aclustered": fa.ClusteredRedisStore}[kind]
    kwargs = {"config": cfg()} if "clustered" in kind else {}

    def rss_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    async def main():
        store = cls(url=url, prefix=prefix, **kwargs)
        base = rss_mb()
        for _ in range(2):  # twice: a bomb must not end up cached either
            try:
                result = store.load(sid)
                if asyncio.iscoroutine(result):
                    result = await result
                outcome = "loaded"
            except SessionCorrupt:
                outcome = "SessionCorrupt"
            except BaseException as exc:
                outcome = type(exc).__name__
            print(outcome, flush=True)
        print(int(rss_mb() - base), flush=True)
        closing = store.close()
        if asyncio.iscoroutine(closing):
            await asyncio.wait_for(closing, 10)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("payload", ["msgpack-empty-arrays", "msgpack-chunked-arrays", "msgpack-nested-headers", "json-empty-arrays"])
def test_a_decompression_bomb_is_session_corrupt_with_bounded_memory(
    redis_url: str, redis_client: redis.Redis, prefix: str, payload: str
) -> None:
    """16 KB planted in Redis inflated to 16M empty arrays: 1.2 GB and 5.8 s per load (and cached).

    Each load runs in a child process whose peak RSS growth is read from getrusage.
    The bound (250 MB) is generous: the limits keep it near the 16 MiB inflated body
    plus at most ``max_items`` small objects.
    """
    sid = new_session_id()
    redis_client.set(prefix + sid, bomb(payload))
    for kind in REDIS_KINDS:
        channel = f"test:{uuid.uuid4().hex[:10]}:invalidate"
        proc = subprocess.run(
            [sys.executable, "-c", LOAD_BOMB, redis_url, kind, prefix, sid, channel],
            capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        *outcomes, grown = proc.stdout.split()
        assert outcomes == ["SessionCorrupt", "SessionCorrupt"], (kind, proc.stdout, proc.stderr[-2000:])
        assert int(grown) < 250, f"{kind}: peak RSS grew by {grown} MB decoding a {payload} bomb"


# --- #14: pools -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["redis", "clustered"])
def test_150_threads_share_a_100_connection_pool_without_errors(redis_url: str, prefix: str, kind: str) -> None:
    """The default non-blocking pool failed 16,270 of 30,000 operations at 150 threads
    (MaxConnectionsError reported as StoreUnavailable).  The default pool (100 connections,
    10 s wait) is checked; the wait (60 s) and the socket timeout (10 s) are raised so that
    a loaded test machine cannot turn a slow turn into a failure."""
    default = build(kind, redis_url, prefix=prefix)
    try:
        assert (default.client.connection_pool.max_connections, default.client.connection_pool.timeout) == (100, 10.0)
    finally:
        default.close()
    store = build(kind, redis_url, prefix=prefix, pool_timeout=60, socket_timeout=10)
    threads, per_thread = 150, 20
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def work() -> None:
        try:
            barrier.wait(60)
            s = store.create({"n": 0})
            store.save(s)
            for i in range(per_thread - 1):
                if i % 2:
                    s["n"] = i
                    store.save(s)
                else:
                    assert store.load(s.id) is not None
        except BaseException as exc:  # noqa: BLE001 - every failure is counted
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    try:
        for t in workers:
            t.start()
        for t in workers:
            t.join(120)
        assert not any(t.is_alive() for t in workers)
        assert [repr(e) for e in errors[:3]] == [] and len(errors) == 0
        assert store.count() == threads
        assert 0 < len(store.client.connection_pool._connections) <= 100
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["aredis", "aclustered"])
async def test_500_tasks_share_a_100_connection_pool_without_errors(redis_url: str, prefix: str, kind: str) -> None:
    """asyncio: 20,000 of 25,000 operations failed with 500 tasks on the default pool.

    Timeouts are raised as in the threads test: under CPU contention the event loop can
    take longer than the 1 s connect timeout to finish 100 simultaneous connects."""
    default = build(kind, redis_url, prefix=prefix)
    try:
        assert (default.client.connection_pool.max_connections, default.client.connection_pool.timeout) == (100, 10.0)
    finally:
        await default.close()
    store = build(kind, redis_url, prefix=prefix, pool_timeout=60, socket_timeout=10)
    tasks, per_task = 500, 10
    start = asyncio.Event()

    async def work() -> None:
        await start.wait()
        s = store.create({"n": 0})
        await store.save(s)
        for i in range(per_task - 1):
            if i % 2:
                s["n"] = i
                await store.save(s)
            else:
                assert await store.load(s.id) is not None

    try:
        running = [asyncio.ensure_future(work()) for _ in range(tasks)]
        await asyncio.sleep(0)
        start.set()
        results = await asyncio.wait_for(asyncio.gather(*running, return_exceptions=True), 120)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert [repr(e) for e in errors[:3]] == [] and len(errors) == 0
        assert await store.count() == tasks
        pool = store.client.connection_pool
        assert 0 < len(pool._available_connections) + len(pool._in_use_connections) <= 100
    finally:
        await store.close()


def _checkout(pool: Any) -> Any:
    """``pool.get_connection()``; redis-py < 5.3 requires a command name there."""
    import inspect

    name = inspect.signature(pool.get_connection).parameters.get("command_name")
    return pool.get_connection() if name is None or name.default is not inspect.Parameter.empty else pool.get_connection("GET")


def _take_every_connection(pool: Any) -> list[Any]:
    """Check out connections until the (blocking) pool has none left to give."""
    held = []
    while True:
        try:
            held.append(_checkout(pool))
        except redis.ConnectionError:
            return held


async def _atake_every_connection(pool: Any) -> list[Any]:
    held = []
    while True:
        try:
            held.append(await _checkout(pool))
        except redis.ConnectionError:
            return held


async def test_pool_exhaustion_is_pool_exhausted_not_redis_unavailable(rmake: Maker) -> None:
    """When every pooled connection stays busy past ``pool_timeout``, the error says so.

    ``PoolExhausted`` is a ``StoreUnavailable`` (the request still fails with 503), but it
    names the pool, not Redis; a stopped Redis is still plain ``StoreUnavailable``.
    """
    store = rmake(pool_size=3, pool_timeout=0.2)
    s = await saved(store, {"a": 1})
    pool = store.client.connection_pool
    assert pool.max_connections == 3
    if store._idle is not None:
        await call(store._idle.drain())  # the connections the store keeps between commands: back to the pool
    if rmake.kind.startswith("a"):
        held = await _atake_every_connection(pool)
    else:
        held = _take_every_connection(pool)
    assert 1 <= len(held) <= 3
    s["a"] = 2
    for op in (lambda: store.save(s), lambda: store.exists(s.id), lambda: store.delete(s.id)):
        with pytest.raises(PoolExhausted) as info:
            await call(op())
        assert isinstance(info.value, StoreUnavailable) and "pool" in str(info.value)
        assert "pool_size" in str(info.value)
    old_id = s.id
    with pytest.raises(PoolExhausted):
        await call(store.regenerate(s))
    assert s.id == old_id
    for conn in held:
        await call(pool.release(conn))
    assert await call(store.save(s)) is True
    assert (await call(store.load(s.id))).data == {"a": 2}


@pytest.mark.parametrize("kind", REDIS_KINDS)
async def test_a_stopped_redis_is_store_unavailable_not_pool_exhausted(redis_server_factory: Callable[..., RedisServer], kind: str) -> None:
    server = redis_server_factory()
    store = build(kind, server.url, socket_timeout=0.5, pool_size=2, pool_timeout=0.5)
    try:
        sid = new_session_id()
        assert await call(store.exists(sid)) is False
        server.stop()
        for _ in range(4):  # more attempts than connections: none may leak as "pool exhausted"
            with pytest.raises(StoreUnavailable) as info:
                await call(store.exists(sid))
            assert not isinstance(info.value, PoolExhausted)
    finally:
        await call(store.close())


async def test_pool_settings_are_validated(rmake: Maker) -> None:
    make = rmake
    for bad in ({"pool_size": 0}, {"pool_size": 1.5}, {"pool_timeout": 0}, {"pool_timeout": -1}, {"pool_timeout": float("inf")}):
        with pytest.raises(ConfigError):
            make(**bad)


def test_a_passed_in_client_reports_its_pool_exhaustion_as_pool_exhausted(redis_url: str, prefix: str) -> None:
    for pool in (
        redis.BlockingConnectionPool.from_url(redis_url, max_connections=1, timeout=0.1),
        redis.ConnectionPool.from_url(redis_url, max_connections=1),
    ):
        client = redis.Redis(connection_pool=pool)
        store = RedisStore(client=client, prefix=prefix)
        try:
            held = _checkout(pool)
            with pytest.raises(PoolExhausted):
                store.exists(new_session_id())
            pool.release(held)
            assert store.exists(new_session_id()) is False
        finally:
            store.close()
            client.close()
            pool.disconnect()


async def test_a_passed_in_asyncio_client_reports_its_pool_exhaustion_as_pool_exhausted(redis_url: str, prefix: str) -> None:
    import redis.asyncio as aredis

    for pool in (
        aredis.BlockingConnectionPool.from_url(redis_url, max_connections=1, timeout=0.1),
        aredis.ConnectionPool.from_url(redis_url, max_connections=1),
    ):
        client = aredis.Redis(connection_pool=pool)
        store = fa.RedisStore(client=client, prefix=prefix)
        try:
            held = await _checkout(pool)
            with pytest.raises(PoolExhausted):
                await store.exists(new_session_id())
            await pool.release(held)
            assert await store.exists(new_session_id()) is False
        finally:
            await store.close()
            await client.aclose()
            await pool.disconnect()


def _envelope(fields: Any, codec: str) -> bytes:
    body = msgpack.packb(fields, use_bin_type=True) if codec == "msgpack" else json.dumps(fields).encode()
    return b"FS" + bytes((1, 1 if codec == "msgpack" else 2, 0)) + body


@pytest.mark.parametrize("codec", ["msgpack", "json"])
async def test_planted_values_over_the_limits_are_session_corrupt_on_load(rmake: Maker, codec: str) -> None:
    """What ``save`` refuses, ``load`` refuses too: a planted body nested deeper than
    ``max_depth`` or holding more than ``max_items`` values is not a fastsess session."""
    store = rmake(serializer=codec)
    client = rmake.client
    assert client is not None
    head = [1_700_000_000.0, 1_700_000_000.0, 60, 1]
    ok, deep, many = new_session_id(), new_session_id(), new_session_id()
    client.set(store.prefix + ok, _envelope([*head, {"v": nested(MAX_DEPTH)}], codec))
    client.set(store.prefix + deep, _envelope([*head, {"v": nested(MAX_DEPTH + 1)}], codec))
    client.set(store.prefix + many, _envelope([*head, {"v": [0] * 1_000_000}], codec))
    assert (await call(store.load(ok)))["v"] == nested(MAX_DEPTH)
    for sid in (deep, many):
        with pytest.raises(SessionCorrupt):
            await call(store.load(sid))


async def test_json_separators_inside_strings_do_not_count_as_values(rmake: Maker) -> None:
    """JSON counts values by commas and brackets; those inside strings are not values."""
    store = rmake(serializer="json")
    s = await saved(store, {"csv": ",[{" * 600_000, "n": list(range(1000))})
    reader = rmake(prefix=store.prefix, serializer="json")
    assert (await call(reader.load(s.id)))["csv"] == ",[{" * 600_000


def test_serializer_limits_are_validated_and_documented_defaults() -> None:
    from fastsess.serializers import MAX_ITEMS

    assert (MAX_DECODED_SIZE, MAX_ITEMS, MAX_DEPTH) == (16 * 1024 * 1024, 1_000_000, 100)
    for bad in ({"max_size": 0}, {"max_items": 0}, {"max_depth": 0}, {"max_items": 1.5}, {"max_depth": True}):
        with pytest.raises(ConfigError):
            MsgpackSerializer(**bad)
    small = MsgpackSerializer(max_items=50, max_depth=3, max_size=1000)
    ok = Session(new_session_id(), {"v": [[["x"]]], "n": list(range(30))}, ttl=60)
    assert small.decode(ok.id, small.encode(ok)).data == ok.data
    for data, error in (
        ({"v": [[[["x"]]]]}, TypeError),
        ({"n": list(range(60))}, SessionTooLarge),
        ({"s": "x" * 1000}, SessionTooLarge),
    ):
        with pytest.raises(error):
            small.encode(Session(new_session_id(), data, ttl=60))


async def test_a_planted_ttl_fastsess_never_writes_is_session_corrupt(rmake: Maker) -> None:
    """A TTL over ``MAX_TTL`` loaded fine and made the next save fail inside Redis
    (reported as StoreUnavailable); fastsess never writes one, so it is not a session."""
    store = rmake()
    client = rmake.client
    assert client is not None
    sid = new_session_id()
    client.set(store.prefix + sid, _envelope([1_700_000_000.0, 1_700_000_000.0, 2**62, 1, {"a": 1}], "msgpack"))
    with pytest.raises(SessionCorrupt):
        await call(store.load(sid))
