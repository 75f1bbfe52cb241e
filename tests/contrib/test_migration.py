"""Zero-logout migration: sessions written by the real legacy backend are served, moved into
fastsess under a new id, and deleted from the old backend; pickles only through the allow-list."""

from __future__ import annotations

import datetime as dt
import decimal
import pickle
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from fastsess.contrib._legacy import LegacyDataError, decode_legacy, safe_unpickle
from fastsess.stores.base import is_valid_session_id

from .conftest import redis_writes, session_keys

# -- the allow-list unpickler ---------------------------------------------------------------------

EXECUTED: list[str] = []


class Gadget:
    def __reduce__(self) -> Any:
        return (EXECUTED.append, ("pwned",))


def test_allow_list_unpickler_reads_plain_types() -> None:
    value = {
        "s": "x", "b": b"y", "i": 1, "f": 1.5, "t": (1, 2), "set": {3}, "none": None, "ok": True,
        "dt": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), "d": dt.date(2024, 1, 2),
        "time": dt.time(3, 4), "td": dt.timedelta(seconds=90), "dec": decimal.Decimal("1.10"),
        "u": uuid.UUID(int=7),
    }
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        assert safe_unpickle(pickle.dumps(value, protocol=protocol)) == value


@pytest.mark.parametrize("evil", [Gadget(), Path("/etc"), print])
def test_allow_list_unpickler_refuses_everything_else(evil: object) -> None:
    with pytest.raises(LegacyDataError):
        safe_unpickle(pickle.dumps({"x": evil}))
    assert EXECUTED == []


def test_pickle_only_when_opted_in_and_stored_as_plain_data() -> None:
    raw = pickle.dumps({"cart": (1, 2), "price": decimal.Decimal("9.99"), "id": uuid.UUID(int=1), "ttl": dt.timedelta(minutes=1)})
    with pytest.raises(LegacyDataError):
        decode_legacy(raw)
    assert decode_legacy(raw, allow_pickle=True) == {
        "cart": [1, 2], "price": "9.99", "id": str(uuid.UUID(int=1)), "ttl": 60.0,
    }
    with pytest.raises(LegacyDataError):
        decode_legacy(pickle.dumps({"x": Gadget()}), allow_pickle=True)
    assert EXECUTED == []


def test_msgpack_and_json_need_no_opt_in() -> None:
    import msgpack

    assert decode_legacy(msgpack.packb({"a": [1, "b"]})) == {"a": [1, "b"]}
    assert decode_legacy(b'{"a": {"b": null}}') == {"a": {"b": None}}
    for garbage in (b"", b"\x00\x01", b"[1, 2]", b"not json"):
        with pytest.raises(LegacyDataError):
            decode_legacy(garbage)


# -- Django: from the cache, file, db and cached_db backends ------------------------------------------


@pytest.fixture
def legacy_cache(django_settings: Any, redis_url: str) -> Any:
    from django.test.utils import override_settings

    caches = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": redis_url, "KEY_PREFIX": "legacy"}}
    with override_settings(CACHES=caches):
        yield


@pytest.fixture
def legacy_db(legacy_cache: Any) -> Any:
    """Django's session table in the suite's sqlite database (created by the real ORM), emptied after."""
    from django.contrib.sessions.models import Session
    from django.db import connection

    if Session._meta.db_table not in connection.introspection.table_names():
        with connection.schema_editor() as editor:
            editor.create_model(Session)
    yield Session
    Session.objects.all().delete()


class PickleSerializer:
    """Django 4.2's ``PickleSerializer`` (removed in 5.0): what pickled Django sessions were written with."""

    def dumps(self, obj: Any) -> bytes:
        return pickle.dumps(obj)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)  # noqa: S301 - only ever given what dumps() wrote above


def _legacy_django_session(engine: str, serializer: Any = None, **data: Any) -> str:
    from importlib import import_module

    old = import_module(engine).SessionStore()
    if serializer is not None:
        old.serializer = serializer
    for key, value in data.items():
        old[key] = value
    old.save()
    return str(old.session_key)


def _cache_key(engine: str, session_key: str) -> str:
    """The Redis key under which Django's RedisCache keeps ``engine``'s copy of a session."""
    from importlib import import_module

    from django.core.cache import caches

    prefix = import_module(engine).KEY_PREFIX
    return str(caches["default"].make_and_validate_key(prefix + session_key))


def store_listening() -> None:
    """Wait until the Django store's listener has subscribed: its constructor does not wait,
    and until then the local cache is bypassed (reads go to Redis)."""
    from fastsess.contrib.django import get_store

    coordinator = get_store().coordinator
    assert coordinator is not None and coordinator.wait_subscribed(5.0)


CACHE = "django.contrib.sessions.backends.cache"
CACHED_DB = "django.contrib.sessions.backends.cached_db"
DB = "django.contrib.sessions.backends.db"
FILE = "django.contrib.sessions.backends.file"


@pytest.mark.parametrize(
    ("engine", "allow_pickle"),
    # Django's cache framework pickles what it stores: the cache engine needs the pickle opt-in;
    # cached_db without it reads its database copy (signed JSON), with it the cached copy
    [(CACHE, True), (FILE, False), (DB, False), (CACHED_DB, False), (CACHED_DB, True)],
)
def test_django_session_from_the_old_engine_is_moved(engine: str, allow_pickle: bool, legacy_db: Any, tmp_path: Path,
                                                     redis_client: redis.Redis, prefix: str) -> None:
    from importlib import import_module

    from django.test import Client
    from django.test.utils import override_settings

    with override_settings(SESSION_FILE_PATH=str(tmp_path)):
        old_key = _legacy_django_session(engine, user="ada", count=3)  # written by the real old backend
        assert import_module(engine).SessionStore().exists(old_key)
        if engine in (CACHE, CACHED_DB):
            assert redis_client.exists(_cache_key(engine, old_key))
        with override_settings(FASTSESS_MIGRATE_FROM=engine, FASTSESS_MIGRATE_PICKLE=allow_pickle):
            store_listening()
            client = Client()
            client.cookies["sessionid"] = old_key
            response = client.get("/read")
            assert response.json() == {"user": "ada", "count": 3}  # still logged in
            new_key = response.cookies["sessionid"].value
            assert is_valid_session_id(new_key) and new_key != old_key
            assert session_keys(redis_client, prefix) == [(prefix + new_key).encode()]
            assert not import_module(engine).SessionStore().exists(old_key)  # deleted from the old backend
            if engine in (DB, CACHED_DB):
                assert not legacy_db.objects.filter(session_key=old_key).exists()  # the row is gone
            if engine in (CACHE, CACHED_DB):
                assert not redis_client.exists(_cache_key(engine, old_key))  # and the cached copy
            before = redis_writes(redis_client)
            assert client.get("/read").json() == {"user": "ada", "count": 3}
            assert redis_writes(redis_client) == before  # from now on a plain fastsess session
            # an old key the old backend does not know: a fresh session, as without migration
            client = Client()
            client.cookies["sessionid"] = old_key
            assert client.get("/read").json() == {"user": None, "count": 0}


@pytest.mark.parametrize(
    "options",
    [{}, {"COMPRESSOR": "django_redis.compressors.zlib.ZlibCompressor"}, {"SERIALIZER": "django_redis.serializers.json.JSONSerializer"}],
)
def test_django_session_cached_by_django_redis_is_moved(options: dict[str, str], django_settings: Any, redis_url: str,
                                                        redis_client: redis.Redis, prefix: str) -> None:
    from django.test import Client
    from django.test.utils import override_settings

    caches = {"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": redis_url, "KEY_PREFIX": "legacy", "OPTIONS": options}}
    with override_settings(CACHES=caches):
        old_key = _legacy_django_session(CACHE, user="ada", count=2, pad="x" * 2000)  # long enough to be compressed
        assert len(session_keys(redis_client, "legacy:")) == 1
        pickled = "SERIALIZER" not in options
        with override_settings(FASTSESS_MIGRATE_FROM=CACHE, FASTSESS_MIGRATE_PICKLE=pickled):
            store_listening()
            client = Client()
            client.cookies["sessionid"] = old_key
            assert client.get("/read").json() == {"user": "ada", "count": 2}
        assert session_keys(redis_client, "legacy:") == []
        assert len(session_keys(redis_client, prefix)) == 1
        if pickled:  # without the opt-in a pickled copy is left alone
            old_key = _legacy_django_session(CACHE, user="bob")
            with override_settings(FASTSESS_MIGRATE_FROM=CACHE):
                client = Client()
                client.cookies["sessionid"] = old_key
                assert client.get("/read").json() == {"user": None, "count": 0}
            assert len(session_keys(redis_client, "legacy:")) == 1


def test_django_without_the_setting_nobody_is_migrated(legacy_cache: Any) -> None:
    from django.test import Client

    old_key = _legacy_django_session(CACHE, user="ada")
    client = Client()
    client.cookies["sessionid"] = old_key
    assert client.get("/read").json() == {"user": None, "count": 0}


def test_django_cache_engine_pickles_need_the_opt_in(legacy_cache: Any, redis_client: redis.Redis, prefix: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    from django.test import Client
    from django.test.utils import override_settings

    old_key = _legacy_django_session(CACHE, user="ada")
    with override_settings(FASTSESS_MIGRATE_FROM=CACHE):
        client = Client()
        client.cookies["sessionid"] = old_key
        response = client.get("/read")
    assert response.status_code == 200 and response.json() == {"user": None, "count": 0}
    assert "pickle" in caplog.text
    assert session_keys(redis_client, prefix) == []
    assert redis_client.exists(_cache_key(CACHE, old_key))  # not moved, so not deleted


@pytest.mark.parametrize("payload", [pickle.dumps({"user": Gadget()}), pickle.dumps({"p": Path("/etc")}), b"\x80\x04garbage", b"{not json"])
@pytest.mark.parametrize("engine", [CACHE, CACHED_DB])
def test_django_forbidden_or_garbage_cached_data_is_refused(engine: str, payload: bytes, legacy_db: Any,
                                                            redis_client: redis.Redis, prefix: str) -> None:
    from django.test import Client
    from django.test.utils import override_settings

    old_key = _legacy_django_session(engine, user="ada")
    redis_client.set(_cache_key(engine, old_key), payload)  # what the cache holds is replaced
    with override_settings(FASTSESS_MIGRATE_FROM=engine, FASTSESS_MIGRATE_PICKLE=True):
        client = Client()
        client.cookies["sessionid"] = old_key
        response = client.get("/read")
    assert response.status_code == 200
    assert EXECUTED == []
    if engine == CACHE:  # nothing else to read: a fresh anonymous session, nothing written
        assert response.json() == {"user": None, "count": 0}
        assert session_keys(redis_client, prefix) == []
    else:  # cached_db falls back to its database row (signed JSON) and moves that
        assert response.json() == {"user": "ada", "count": 0}
        assert not legacy_db.objects.filter(session_key=old_key).exists()


def test_django_pickled_db_sessions_only_through_the_allow_list(legacy_db: Any, redis_client: redis.Redis, prefix: str) -> None:
    """Rows written by the db engine with Django 4.2's PickleSerializer (signed, as Django signs them)."""
    from django.test import Client
    from django.test.utils import override_settings

    allowed = _legacy_django_session(DB, PickleSerializer, user="ada", cart=(1, 2), price=decimal.Decimal("9.99"))
    forbidden = _legacy_django_session(DB, PickleSerializer, user="eve", gadget=Gadget())
    for allow_pickle, key, expected in ((False, allowed, None), (True, forbidden, None), (True, allowed, "ada")):
        with override_settings(FASTSESS_MIGRATE_FROM=DB, FASTSESS_MIGRATE_PICKLE=allow_pickle):
            client = Client()
            client.cookies["sessionid"] = key
            assert client.get("/read").json()["user"] == expected
    assert EXECUTED == []
    assert legacy_db.objects.filter(session_key=forbidden).exists()  # refused: left where it was
    assert not legacy_db.objects.filter(session_key=allowed).exists()  # moved
    (key,) = session_keys(redis_client, prefix)
    from fastsess import RedisStore

    with RedisStore(client=redis_client, prefix=prefix) as store:
        moved = store.load(key.decode()[len(prefix):])
    assert moved is not None and moved.data == {"user": "ada", "cart": [1, 2], "price": "9.99"}


@pytest.mark.parametrize(("engine", "allow_pickle"), [(CACHE, True), (DB, False), (CACHED_DB, False)])
async def test_django_async_migration(engine: str, allow_pickle: bool, legacy_db: Any, redis_client: redis.Redis, prefix: str) -> None:
    from asgiref.sync import sync_to_async
    from django.test import AsyncClient
    from django.test.utils import override_settings

    from fastsess.contrib import django as engine_module

    old_key = await sync_to_async(_legacy_django_session)(engine, user="ada", count=1)
    try:
        with override_settings(FASTSESS_MIGRATE_FROM=engine, FASTSESS_MIGRATE_PICKLE=allow_pickle):
            client = AsyncClient()
            client.cookies["sessionid"] = old_key
            response = await client.get("/aincr")
            assert response.json() == {"count": 2}
            new_key = response.cookies["sessionid"].value
            assert is_valid_session_id(new_key)
            assert session_keys(redis_client, prefix) == [(prefix + new_key).encode()]
            assert (await client.get("/aread")).json() == {"user": "ada", "count": 2}
            if engine != CACHE:
                assert not await legacy_db.objects.filter(session_key=old_key).aexists()
    finally:
        await engine_module.aclose_async_store()


# -- Flask: from Flask-Session's Redis backend ---------------------------------------------------


def _flask_session_app(client: redis.Redis, **config: Any) -> Any:
    from flask import Flask, session
    from flask_session import Session

    app = Flask("legacy")
    app.secret_key = "flask-tests-secret"
    app.config.update(SESSION_TYPE="redis", SESSION_REDIS=client, **config)

    @app.get("/login/<user>")
    def login(user: str) -> str:
        session["user"] = user
        session["count"] = 5
        return "ok"

    Session(app)
    return app


@pytest.mark.parametrize("signed", [False, True])
def test_flask_session_sessions_are_moved(signed: bool, redis_url: str, redis_client: redis.Redis, prefix: str) -> None:
    from .test_flask import make_app, sid_of

    legacy = _flask_session_app(redis_client, SESSION_USE_SIGNER=signed)
    old_client = legacy.test_client()
    old_client.get("/login/ada")  # written by the real Flask-Session
    old_cookie = old_client.get_cookie("session").value
    old_keys = session_keys(redis_client, "session:")
    assert len(old_keys) == 1

    app = make_app(FASTSESS_REDIS_URL=redis_url, SESSION_KEY_PREFIX=prefix, FASTSESS_MIGRATE_PREFIX="session:")
    try:
        client = app.test_client()
        client.set_cookie("session", old_cookie)
        assert client.get("/read").json == {"user": "ada", "count": 5}  # still logged in
        new_sid = sid_of(client)
        assert session_keys(redis_client, prefix) == [(prefix + new_sid).encode()]
        assert session_keys(redis_client, "session:") == []  # the old key is gone
        assert client.get("/incr").json == {"count": 6}
    finally:
        app.session_interface.store.close()


def test_flask_pickled_sessions_need_the_opt_in(redis_url: str, redis_client: redis.Redis, prefix: str) -> None:
    from .test_flask import make_app

    redis_client.set("session:old-pickled-id", pickle.dumps({"user": "ada", "since": dt.date(2024, 1, 1)}))
    for opt_in, expected in ((False, None), (True, "ada")):
        app = make_app(FASTSESS_REDIS_URL=redis_url, SESSION_KEY_PREFIX=prefix, FASTSESS_MIGRATE_PREFIX="session:",
                       FASTSESS_MIGRATE_PICKLE=opt_in)
        try:
            client = app.test_client()
            client.set_cookie("session", "old-pickled-id")
            assert client.get("/read").json["user"] == expected
        finally:
            app.session_interface.store.close()
    assert redis_client.exists("session:old-pickled-id") == 0  # moved by the opted-in app


# -- Starlette: from starsessions' RedisStore -------------------------------------------------------


def test_starsessions_sessions_are_moved(redis_url: str, redis_client: redis.Redis, prefix: str) -> None:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient
    from starsessions import SessionAutoloadMiddleware
    from starsessions import SessionMiddleware as StarsessionsMiddleware
    from starsessions.stores.redis import RedisStore

    from fastsess.asyncio import ClusteredRedisStore

    from .test_starlette import make_app, sid_of

    async def login(request: Request) -> JSONResponse:
        request.session["user"] = "ada"
        request.session["count"] = 4
        return JSONResponse({})

    legacy = Starlette(routes=[Route("/login", login)], middleware=[
        Middleware(StarsessionsMiddleware, store=RedisStore(url=redis_url), cookie_https_only=False),
        Middleware(SessionAutoloadMiddleware),
    ])
    with TestClient(legacy) as old_client:
        old_client.get("/login")  # written by the real starsessions
        old_cookie = old_client.cookies.get("session")
    assert old_cookie and session_keys(redis_client, "starsessions.") == [f"starsessions.{old_cookie}".encode()]

    store = ClusteredRedisStore(url=redis_url, prefix=prefix)
    app = make_app(store=store, migrate_prefix="starsessions.")
    with TestClient(app) as client:
        raw = [(b"cookie", f"session={old_cookie}".encode())]
        response = client.get("/read", headers=raw)
        assert response.json() == {"user": "ada", "count": 4}  # still logged in
        client.cookies.set("session", response.headers["set-cookie"].split(";")[0].removeprefix("session="), domain="testserver.local")
        sid = sid_of(client)
        assert session_keys(redis_client, prefix) == [(prefix + sid).encode()]
        assert session_keys(redis_client, "starsessions.") == []  # the old key is gone
        assert client.get("/incr").json() == {"count": 5}
        client.portal.call(store.close)
