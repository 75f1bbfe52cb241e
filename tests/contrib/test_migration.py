"""Zero-logout migration: sessions written by the real legacy backend are served, moved into
fastsess under the id derived from the old one, and deleted from the old backend; the old
cookie keeps working as the same session, also for concurrent requests; pickles only through
the allow-list."""

from __future__ import annotations

import datetime as dt
import decimal
import pickle
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from fastsess.contrib._common import CookieSigner
from fastsess.contrib._legacy import LegacyDataError, decode_legacy, migrated_session_id, safe_unpickle
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


def test_migrated_session_id_is_a_fastsess_id_derived_from_the_old_one() -> None:
    import base64
    import hashlib

    for old in ("q1w2e3r4t5y6u7i8o9p0a1s2d3f4g5h6", "x" * 43, "é-∞", "a"):
        derived = migrated_session_id(old)
        assert is_valid_session_id(derived) and derived != old
        assert derived == base64.urlsafe_b64encode(hashlib.sha256(b"fastsess-migrated:" + old.encode()).digest()).decode()[:43]
        assert migrated_session_id(old) == derived  # deterministic
    assert migrated_session_id("a") != migrated_session_id("b")


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
            assert "sessionid" not in response.cookies  # the key stays the old one: no new cookie
            derived = migrated_session_id(old_key)
            assert session_keys(redis_client, prefix) == [(prefix + derived).encode()]
            assert not import_module(engine).SessionStore().exists(old_key)  # deleted from the old backend
            if engine in (DB, CACHED_DB):
                assert not legacy_db.objects.filter(session_key=old_key).exists()  # the row is gone
            if engine in (CACHE, CACHED_DB):
                assert not redis_client.exists(_cache_key(engine, old_key))  # and the cached copy
            before = redis_writes(redis_client)
            assert client.get("/read").json() == {"user": "ada", "count": 3}
            assert redis_writes(redis_client) == before  # from now on a plain fastsess session
            # another request still carrying the old cookie (a second tab, an XHR that raced
            # the first): the same session, and its response leaves the cookie alone
            other = Client()
            other.cookies["sessionid"] = old_key
            response = other.get("/read")
            assert response.json() == {"user": "ada", "count": 3} and "sessionid" not in response.cookies
            response = other.get("/incr")  # a change is saved under the derived id, the cookie keeps the old key
            assert response.json() == {"count": 4} and response.cookies["sessionid"].value == old_key
            assert client.get("/read").json() == {"user": "ada", "count": 4}
            assert session_keys(redis_client, prefix) == [(prefix + derived).encode()]
            # an old-style key nobody holds: a fresh session under a random id, as without migration
            stranger = Client()
            stranger.cookies["sessionid"] = "k" * 32
            assert stranger.get("/read").json() == {"user": None, "count": 0}
            new_key = stranger.get("/incr").cookies["sessionid"].value
            assert is_valid_session_id(new_key) and new_key not in (derived, migrated_session_id("k" * 32))
            assert not redis_client.exists(prefix + migrated_session_id("k" * 32))


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


RACE = "tests.contrib.legacy_race"  # the db engine, with a hook around its read (legacy_race.py)


@pytest.fixture
def race_hooks(legacy_db: Any) -> Any:
    from django.test.utils import override_settings

    from . import legacy_race

    with override_settings(FASTSESS_MIGRATE_FROM=RACE):
        store_listening()
        yield legacy_race.HOOKS
    legacy_race.HOOKS.clear()


def _get(path: str, session_key: str, **params: str) -> Any:
    """A request to the Django test app carrying ``session_key`` as its cookie."""
    from django.test import Client

    client = Client()
    client.cookies["sessionid"] = session_key
    return client.get(path, params)


def _assert_logged_in(response: Any, user: str = "ada") -> None:
    """The response served the session and neither changed nor deleted the old cookie."""
    assert response.json()["user"] == user
    assert "sessionid" not in response.cookies  # Django deletes it (max-age 0) for an empty session


def test_django_concurrent_first_requests_with_the_old_cookie_share_one_session(race_hooks: Any, legacy_db: Any,
                                                                                  redis_client: redis.Redis, prefix: str) -> None:
    """Page and XHRs with the old cookie race the migration (real threads): all stay logged in."""
    old_key = _legacy_django_session(DB, user="ada", count=1)
    barrier = threading.Barrier(6)
    responses: list[Any] = []
    errors: list[BaseException] = []

    def request() -> None:
        try:
            barrier.wait(5)
            responses.append(_get("/read", old_key))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=request) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == [] and len(responses) == 6
    for response in responses:
        _assert_logged_in(response)
    assert session_keys(redis_client, prefix) == [(prefix + migrated_session_id(old_key)).encode()]
    assert not legacy_db.objects.filter(session_key=old_key).exists()


def test_django_request_losing_the_move_reads_the_winners_session(race_hooks: Any, legacy_db: Any,
                                                                  redis_client: redis.Redis, prefix: str) -> None:
    """Both read the old row; the other request moves it (and changes it) before this one writes:
    this one's create-if-absent write loses, and it serves the stored session."""
    old_key = _legacy_django_session(DB, user="ada", count=1)
    race_hooks["after"] = lambda: _get("/incr", old_key)  # moved first, count 2
    response = _get("/read", old_key)
    _assert_logged_in(response)
    assert response.json()["count"] == 2
    assert session_keys(redis_client, prefix) == [(prefix + migrated_session_id(old_key)).encode()]
    assert not legacy_db.objects.filter(session_key=old_key).exists()


def test_django_request_finding_the_row_gone_reads_the_moved_session(race_hooks: Any, redis_client: redis.Redis,
                                                                     prefix: str) -> None:
    """This request missed the derived id, then the other request moved the session (row deleted)
    before this one read the row: it reads fastsess again instead of starting an empty session."""
    old_key = _legacy_django_session(DB, user="ada", count=1)
    race_hooks["before"] = lambda: _get("/read", old_key)
    _assert_logged_in(_get("/read", old_key))
    assert session_keys(redis_client, prefix) == [(prefix + migrated_session_id(old_key)).encode()]


def test_django_move_racing_a_logout_is_undone(race_hooks: Any, legacy_db: Any, redis_client: redis.Redis, prefix: str) -> None:
    """The other request moved the session and the user logged out, all after this one read the
    row: this one's write would resurrect the session, so it is undone."""
    old_key = _legacy_django_session(DB, user="ada", count=1)

    def move_and_log_out() -> None:
        _get("/read", old_key)
        assert redis_client.exists(prefix + migrated_session_id(old_key))
        assert _get("/logout", old_key).cookies["sessionid"]["max-age"] == 0

    race_hooks["after"] = move_and_log_out
    assert _get("/read", old_key).json() == {"user": None, "count": 0}
    assert session_keys(redis_client, prefix) == []
    assert not legacy_db.objects.filter(session_key=old_key).exists()


def test_django_login_and_logout_with_the_old_cookie(race_hooks: Any, legacy_db: Any, redis_client: redis.Redis,
                                                     prefix: str) -> None:
    from django.test import Client

    from fastsess.contrib.django import get_store

    old_key = _legacy_django_session(DB, user="ada", count=1)
    client = Client()
    client.cookies["sessionid"] = old_key
    _assert_logged_in(client.get("/read"))
    derived = migrated_session_id(old_key)
    store = get_store()
    assert derived in set(store.iter_ids()) and store.count() == 1  # the key space sees it
    response = client.get("/login", {"user": "bob"})  # cycle_key: a fresh random key
    new_key = response.cookies["sessionid"].value
    assert is_valid_session_id(new_key) and new_key != derived
    assert session_keys(redis_client, prefix) == [(prefix + new_key).encode()]
    assert client.get("/read").json() == {"user": "bob", "count": 1}
    assert _get("/read", old_key).json() == {"user": None, "count": 0}  # the old cookie left behind
    # logout of a session still on its old key deletes it, in fastsess and the old engine
    old_key = _legacy_django_session(DB, user="eve")
    _assert_logged_in(_get("/read", old_key), "eve")
    assert store.count() == 2
    assert _get("/logout", old_key).cookies["sessionid"]["max-age"] == 0
    assert store.count() == 1 and session_keys(redis_client, prefix) == [(prefix + new_key).encode()]
    assert _get("/read", old_key).json() == {"user": None, "count": 0}
    # flush() before anything was moved deletes the old engine's row too (a copy of the cookie is dead)
    old_key = _legacy_django_session(DB, user="mallory")
    assert _get("/logout", old_key).status_code == 200
    assert not legacy_db.objects.filter(session_key=old_key).exists()
    assert store.clear() == 1 and store.count() == 0


def test_django_session_api_maps_the_old_key(race_hooks: Any, legacy_db: Any, redis_client: redis.Redis, prefix: str) -> None:
    from fastsess.contrib.django import SessionStore, get_store, log_out_everywhere

    old_key = _legacy_django_session(DB, user="ada")
    assert SessionStore().exists(old_key)  # in the old engine
    session = SessionStore(old_key)
    assert session["user"] == "ada" and session.session_key == old_key
    assert SessionStore().exists(old_key)  # under its derived id now
    assert not legacy_db.objects.filter(session_key=old_key).exists()
    session.bind("7")
    session["count"] = 9
    session.save()
    assert session.session_key == old_key
    assert get_store().sessions_of("7") == [migrated_session_id(old_key)]
    other = SessionStore()
    other.bind("7")
    other.save()

    class Request:
        pass

    request = Request()
    request.session = SessionStore(old_key)  # type: ignore[attr-defined]
    assert log_out_everywhere(type("User", (), {"pk": 7})(), request) == 1  # the other one, not this one
    assert SessionStore(old_key)["count"] == 9
    SessionStore().delete(old_key)
    assert not SessionStore().exists(old_key) and session_keys(redis_client, prefix) == []


def test_django_without_the_setting_a_moved_session_is_not_reached(race_hooks: Any, redis_client: redis.Redis,
                                                                   prefix: str) -> None:
    """The derived id is looked up only while FASTSESS_MIGRATE_FROM is set (keep it while old
    cookies may come back); without it an old key is unknown, as any foreign key."""
    from django.test.utils import override_settings

    old_key = _legacy_django_session(DB, user="ada")
    _assert_logged_in(_get("/read", old_key))
    with override_settings(FASTSESS_MIGRATE_FROM=None):
        assert _get("/read", old_key).json() == {"user": None, "count": 0}
    assert session_keys(redis_client, prefix) == [(prefix + migrated_session_id(old_key)).encode()]


@pytest.mark.parametrize("engine", ["fastsess.contrib.django", "django.contrib.sessions.backends.signed_cookies", 7])
def test_django_migrate_from_names_an_engine_with_server_side_sessions(engine: Any, django_settings: Any) -> None:
    """signed_cookies is refused: the session lives in the cookie, so the old copy could never be
    deleted and a copy of an old cookie would come back after every logout."""
    from django.core.exceptions import ImproperlyConfigured
    from django.test.utils import override_settings

    from fastsess.contrib.django import SessionStore

    with override_settings(FASTSESS_MIGRATE_FROM=engine), pytest.raises(ImproperlyConfigured, match="FASTSESS_MIGRATE_FROM"):
        SessionStore("q1w2e3r4t5y6u7i8o9p0a1s2d3f4g5h6").load()


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
            assert response.cookies["sessionid"].value == old_key  # the key stays the old one
            assert session_keys(redis_client, prefix) == [(prefix + migrated_session_id(old_key)).encode()]
            assert (await client.get("/aread")).json() == {"user": "ada", "count": 2}
            response = await client.get("/alogin", {"user": "bob"})  # login: a fresh random key
            new_key = response.cookies["sessionid"].value
            assert is_valid_session_id(new_key) and new_key != migrated_session_id(old_key)
            assert session_keys(redis_client, prefix) == [(prefix + new_key).encode()]
            other = AsyncClient()
            other.cookies["sessionid"] = old_key  # a copy of the old cookie: the session left it
            assert (await other.get("/aread")).json() == {"user": None, "count": 0}
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

    legacy_id = old_keys[0].decode().removeprefix("session:")
    app = make_app(FASTSESS_REDIS_URL=redis_url, SESSION_KEY_PREFIX=prefix, FASTSESS_MIGRATE_PREFIX="session:")
    try:
        client = app.test_client()
        client.set_cookie("session", old_cookie)
        assert client.get("/read").json == {"user": "ada", "count": 5}  # still logged in
        derived = migrated_session_id(legacy_id)
        assert sid_of(client) == derived  # the response set the signed cookie of the derived id
        assert session_keys(redis_client, prefix) == [(prefix + derived).encode()]
        assert session_keys(redis_client, "session:") == []  # the old key is gone
        assert client.get("/incr").json == {"count": 6}
        # a request that still carried the old cookie (it raced the first): the same session
        other = app.test_client()
        other.set_cookie("session", old_cookie)
        assert other.get("/read").json == {"user": "ada", "count": 6}
        assert sid_of(other) == derived
        store = app.session_interface.store
        assert list(store.iter_ids()) == [derived] and store.count() == 1  # the key space sees it
        assert client.get("/login/bob").json == {"user": "bob"}  # regenerate: a fresh random id
        assert sid_of(client) not in (derived, legacy_id) and session_keys(redis_client, prefix) == [(prefix + sid_of(client)).encode()]
        other = app.test_client()
        other.set_cookie("session", old_cookie)  # a copy of the old cookie: the session left it
        assert other.get("/read").json == {"user": None, "count": 0}
        assert store.clear() == 1 and store.count() == 0
    finally:
        app.session_interface.store.close()


class HookedRedis(redis.Redis):
    """A Redis client that runs a hook once around its next GET of a Flask-Session key, so a test
    can place another request exactly there."""

    hooks: dict[str, Any]

    def get(self, name: Any) -> Any:
        legacy = isinstance(name, str) and name.startswith("session:")
        before = self.hooks.pop("before", None) if legacy else None
        if before is not None:
            before()
        value = super().get(name)
        after = self.hooks.pop("after", None) if legacy else None
        if after is not None:
            after()
        return value


@pytest.fixture
def hooked_flask(redis_url: str, prefix: str) -> Any:
    """(app, hooks, client): a fastsess Flask app migrating from ``session:`` on a ``HookedRedis``."""
    from .test_flask import make_app

    client = HookedRedis.from_url(redis_url)
    client.hooks = {}
    app = make_app(SESSION_REDIS=client, SESSION_KEY_PREFIX=prefix, FASTSESS_MIGRATE_PREFIX="session:")
    yield app, client.hooks
    app.session_interface.store.close()
    client.close()


def _flask_get(app: Any, path: str, cookie: str) -> Any:
    client = app.test_client()
    client.set_cookie("session", cookie)
    response = client.get(path)
    response.client = client
    return response


def test_flask_concurrent_requests_with_the_old_cookie_share_one_session(redis_url: str, redis_client: redis.Redis,
                                                                          prefix: str) -> None:
    from .test_flask import make_app, sid_of

    redis_client.set("session:old-flask-id", b'{"user": "ada", "count": 1}')
    app = make_app(FASTSESS_REDIS_URL=redis_url, SESSION_KEY_PREFIX=prefix, FASTSESS_MIGRATE_PREFIX="session:")
    barrier = threading.Barrier(6)
    sids: list[str] = []
    errors: list[BaseException] = []

    def request() -> None:
        try:
            barrier.wait(5)
            response = _flask_get(app, "/read", "old-flask-id")
            assert response.json == {"user": "ada", "count": 1}
            sids.append(sid_of(response.client))
        except BaseException as exc:  # reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=request) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == [] and sids == [migrated_session_id("old-flask-id")] * 6
        assert session_keys(redis_client, prefix) == [(prefix + sids[0]).encode()]
        assert not redis_client.exists("session:old-flask-id")
    finally:
        app.session_interface.store.close()


def test_flask_move_races(hooked_flask: Any, redis_client: redis.Redis, prefix: str) -> None:
    from .test_flask import sid_of

    app, hooks = hooked_flask
    derived = migrated_session_id("old-id")
    # the other request moved it (and changed it) after this one read the old key: this one's
    # create-if-absent write loses, it serves the stored session
    redis_client.set("session:old-id", b'{"user": "ada", "count": 1}')
    hooks["after"] = lambda: _flask_get(app, "/incr", "old-id")
    response = _flask_get(app, "/read", "old-id")
    assert response.json == {"user": "ada", "count": 2} and sid_of(response.client) == derived
    assert session_keys(redis_client, prefix) == [(prefix + derived).encode()]
    app.session_interface.store.delete(derived)  # through the store: its cache forgets it too
    # the other request moved it before this one read the old key: this one reads fastsess again
    redis_client.set("session:old-id", b'{"user": "ada", "count": 1}')
    hooks["before"] = lambda: _flask_get(app, "/read", "old-id")
    response = _flask_get(app, "/read", "old-id")
    assert response.json == {"user": "ada", "count": 1} and sid_of(response.client) == derived
    # moved and logged out after this one read the old key: this one's write is undone
    app.session_interface.store.delete(derived)  # through the store: its cache forgets it too
    redis_client.set("session:old-id", b'{"user": "ada", "count": 1}')

    def move_and_log_out() -> None:
        first = _flask_get(app, "/read", "old-id")
        assert first.client.get("/logout").status_code == 200
        assert session_keys(redis_client, prefix) == []

    hooks["after"] = move_and_log_out
    response = _flask_get(app, "/read", "old-id")
    assert response.json == {"user": None, "count": 0} and "Set-Cookie" not in response.headers
    assert session_keys(redis_client, prefix) == [] and not redis_client.exists("session:old-id")


def test_flask_unknown_old_cookie_starts_a_fresh_random_session(hooked_flask: Any, redis_client: redis.Redis, prefix: str) -> None:
    from .test_flask import sid_of

    app, _ = hooked_flask

    def gets() -> int:
        return int(redis_client.info("commandstats").get("cmdstat_get", {}).get("calls", 0))

    before = gets()
    assert _flask_get(app, "/read", "never-stored").json == {"user": None, "count": 0}
    assert gets() - before == 2  # the old key, then the derived id: two Redis reads
    for cookie in ("never-stored", migrated_session_id("x"), "x" * 300):
        response = _flask_get(app, "/incr", cookie)
        assert response.json == {"count": 1}
        sid = sid_of(response.client)
        assert is_valid_session_id(sid) and sid not in (cookie, migrated_session_id(cookie))
    assert len(session_keys(redis_client, prefix)) == 3


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

    from .test_starlette import SECRET, make_app, sid_of

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
        client.cookies.set("session", _set_cookie_value(response), domain="testserver.local")
        sid = sid_of(client)
        assert sid == migrated_session_id(old_cookie)  # the signed cookie of the derived id
        assert session_keys(redis_client, prefix) == [(prefix + sid).encode()]
        assert session_keys(redis_client, "starsessions.") == []  # the old key is gone
        assert client.get("/incr").json() == {"count": 5}
        # a request that still carried the old cookie (it raced the first): the same session
        response = client.get("/read", headers=raw)
        assert response.json() == {"user": "ada", "count": 5}
        assert _set_cookie_value(response) == CookieSigner(SECRET).sign(sid)
        assert client.portal.call(store.count) == 1 and client.portal.call(_ids, store) == [sid]
        client.portal.call(store.close)


def _set_cookie_value(response: Any) -> str:
    return str(response.headers["set-cookie"].split(";")[0].removeprefix("session="))


async def _ids(store: Any) -> list[str]:
    return [session_id async for session_id in store.iter_ids()]


class _Reply:
    """What ``_asgi_get`` got back: the JSON body and the Set-Cookie value (None if none)."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        import json

        self.status_code = status
        cookies = [value.decode() for name, value in headers if name.lower() == b"set-cookie"]
        self.cookie = cookies[0].split(";")[0].removeprefix("session=") if cookies else None
        self.body = body
        self.json = json.loads(body) if body.startswith(b"{") else None


async def _asgi_get(app: Any, path: str, cookie: str) -> _Reply:
    """One GET straight through the ASGI app, carrying ``session=<cookie>``."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"testserver"), (b"cookie", f"session={cookie}".encode())],
        "client": ("127.0.0.1", 1), "server": ("testserver", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return _Reply(start["status"], list(start.get("headers", [])), b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


async def test_starlette_concurrent_requests_with_the_old_cookie_share_one_session(redis_url: str, redis_client: redis.Redis,
                                                                                   prefix: str) -> None:
    import asyncio

    from fastsess.asyncio import ClusteredRedisStore

    from .test_starlette import SECRET, make_app

    redis_client.set("starsessions.old-star-id", b'{"user": "ada", "count": 1, "__metadata__": {}}')
    store = ClusteredRedisStore(url=redis_url, prefix=prefix)
    app = make_app(store=store, migrate_prefix="starsessions.")
    derived = migrated_session_id("old-star-id")
    signer = CookieSigner(SECRET)
    try:
        replies = await asyncio.gather(*(_asgi_get(app, "/read", "old-star-id") for _ in range(6)))
        for reply in replies:
            assert reply.json == {"user": "ada", "count": 1} and reply.cookie == signer.sign(derived)
        assert session_keys(redis_client, prefix) == [(prefix + derived).encode()]
        assert not redis_client.exists("starsessions.old-star-id")
        # moved and logged out: a copy of the old cookie gets a fresh session under a random id
        assert (await _asgi_get(app, "/logout", signer.sign(derived))).status_code == 200
        reply = await _asgi_get(app, "/incr", "old-star-id")
        assert reply.json == {"count": 1}
        fresh = signer.unsign(reply.cookie)
        assert fresh is not None and is_valid_session_id(fresh) and fresh != derived
        reply = await _asgi_get(app, "/read", "never-stored")  # unknown: fresh, nothing stored, no cookie
        assert reply.json == {"user": None, "count": 0} and reply.cookie is None
        assert session_keys(redis_client, prefix) == [(prefix + fresh).encode()]
    finally:
        await store.close()


async def test_starlette_move_races(redis_url: str, redis_client: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each race of the move, step by step: another request runs just before or just after this
    one's GET of starsessions' key (the store's own redis-py client, with a hook around that GET;
    not a subclass: the store tells asyncio clients by their module)."""
    from fastsess.asyncio import ClusteredRedisStore

    from .test_starlette import SECRET, make_app

    hooks: dict[str, Any] = {}

    store = ClusteredRedisStore(url=redis_url, prefix=prefix)
    real_get = store.client.get

    async def get(name: Any) -> Any:
        legacy = isinstance(name, str) and name.startswith("starsessions.")
        before = hooks.pop("before", None) if legacy else None
        if before is not None:
            await before()
        value = await real_get(name)
        after = hooks.pop("after", None) if legacy else None
        if after is not None:
            await after()
        return value

    monkeypatch.setattr(store.client, "get", get)
    app = make_app(store=store, migrate_prefix="starsessions.")
    derived = migrated_session_id("old-id")
    signer = CookieSigner(SECRET)
    old = b'{"user": "ada", "count": 1, "__metadata__": {}}'
    try:
        # the other request moved it (and changed it) after this one read the old key: this
        # one's create-if-absent write loses, it serves the stored session
        redis_client.set("starsessions.old-id", old)
        hooks["after"] = lambda: _asgi_get(app, "/incr", "old-id")
        reply = await _asgi_get(app, "/read", "old-id")
        assert reply.json == {"user": "ada", "count": 2} and reply.cookie == signer.sign(derived)
        assert session_keys(redis_client, prefix) == [(prefix + derived).encode()]
        await store.delete(derived)
        # the other request moved it before this one read the old key: this one reads fastsess again
        redis_client.set("starsessions.old-id", old)
        hooks["before"] = lambda: _asgi_get(app, "/read", "old-id")
        reply = await _asgi_get(app, "/read", "old-id")
        assert reply.json == {"user": "ada", "count": 1} and reply.cookie == signer.sign(derived)
        await store.delete(derived)
        # moved and logged out after this one read the old key: this one's write is undone
        redis_client.set("starsessions.old-id", old)

        async def move_and_log_out() -> None:
            first = await _asgi_get(app, "/read", "old-id")
            assert first.cookie is not None and (await _asgi_get(app, "/logout", first.cookie)).status_code == 200
            assert session_keys(redis_client, prefix) == []

        hooks["after"] = move_and_log_out
        reply = await _asgi_get(app, "/read", "old-id")
        assert reply.json == {"user": None, "count": 0} and reply.cookie is None
        assert session_keys(redis_client, prefix) == [] and not redis_client.exists("starsessions.old-id")
    finally:
        await store.close()
