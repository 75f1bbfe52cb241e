"""``SESSION_ENGINE = "fastsess.contrib.django"`` against the private Redis: Django's own
session-backend expectations (SessionTestsMixin's essentials), the async twins, and the
middleware through Django's test client."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import redis

from fastsess import StoreUnavailable
from fastsess.stores.base import is_valid_session_id

from .conftest import redis_writes, session_keys

pytestmark = pytest.mark.usefixtures("django_settings")


def backend(key: str | None = None) -> Any:
    from fastsess.contrib.django import SessionStore

    return SessionStore(key)


# -- SessionTestsMixin essentials --------------------------------------------------------------


def test_new_session_is_clean_and_empty() -> None:
    s = backend()
    assert s.modified is False and s.accessed is False
    assert s.get("cat") is None
    assert s.is_empty()


def test_mapping_api_flags() -> None:
    s = backend()
    s["cat"] = "dog"
    assert s.modified
    assert s.pop("cat") == "dog"
    assert s.pop("some key", "does not exist") == "does not exist"
    assert s.setdefault("foo", "bar") == "bar" and s.setdefault("foo", "baz") == "bar"
    s.update({"update key": 1})
    assert s.get("update key") == 1
    s.clear()
    assert list(s.items()) == [] and s.modified and s.accessed


def test_save_then_load_in_a_new_instance(redis_client: redis.Redis, prefix: str) -> None:
    s = backend()
    s["a"] = "b"
    s["when"] = {"n": [1, 2, 3]}
    s.save()
    assert s["a"] == "b"  # save does not clear the data
    assert is_valid_session_id(s.session_key)
    assert s.exists(s.session_key)
    assert session_keys(redis_client, prefix) == [(prefix + s.session_key).encode()]
    again = backend(s.session_key)
    assert again["a"] == "b" and again["when"] == {"n": [1, 2, 3]}
    assert again.session_key == s.session_key


def test_default_ttl_is_session_cookie_age(redis_client: redis.Redis, prefix: str) -> None:
    s = backend()
    s["x"] = 1
    s.save()
    assert s.get_expiry_age() == 600
    assert 590 <= redis_client.ttl(prefix + s.session_key) <= 600


def test_custom_expiry_sets_the_redis_ttl(redis_client: redis.Redis, prefix: str) -> None:
    s = backend()
    s["x"] = 1
    s.set_expiry(30)
    s.save()
    assert 20 <= redis_client.ttl(prefix + s.session_key) <= 30
    s.set_expiry(timedelta(seconds=90))
    s.save()
    assert 80 <= redis_client.ttl(prefix + s.session_key) <= 90
    assert backend(s.session_key).get_expiry_age() in range(80, 91)


def test_expiry_helpers_follow_django() -> None:
    from django.conf import settings as dj
    from django.test.utils import override_settings
    from django.utils import timezone

    s = backend()
    assert s.get_expiry_age() == dj.SESSION_COOKIE_AGE
    s.set_expiry(0)
    assert s.get_expiry_age() == dj.SESSION_COOKIE_AGE
    assert s.get_expire_at_browser_close() is True
    s.set_expiry(None)
    with override_settings(SESSION_EXPIRE_AT_BROWSER_CLOSE=True):
        assert s.get_expire_at_browser_close() is True
    assert s.get_expire_at_browser_close() is False
    modification = timezone.now()
    s.set_expiry(modification + timedelta(seconds=10))
    assert s.get_expiry_date(modification=modification) == modification + timedelta(seconds=10)
    assert s.get_expiry_age(modification=modification) == 10


def test_expiry_in_the_past_stores_nothing(redis_client: redis.Redis, prefix: str) -> None:
    s = backend()
    s["foo"] = "bar"
    s.set_expiry(-timedelta(seconds=10))
    s.save()
    key = s.session_key
    assert "foo" not in backend(key)
    assert session_keys(redis_client, prefix) == []


def test_must_create_on_a_taken_key_raises_create_error(redis_client: redis.Redis, prefix: str) -> None:
    from django.contrib.sessions.backends.base import CreateError

    s = backend()
    s["owner"] = "first"
    s.save()
    intruder = backend(s.session_key)
    intruder._session_cache = {"owner": "second"}
    with pytest.raises(CreateError):
        intruder.save(must_create=True)
    assert backend(s.session_key)["owner"] == "first"
    assert session_keys(redis_client, prefix) == [(prefix + s.session_key).encode()]  # nothing left behind


def test_update_of_a_session_deleted_meanwhile_raises_update_error(redis_client: redis.Redis, prefix: str) -> None:
    from django.contrib.sessions.backends.base import UpdateError

    s1 = backend()
    s1["test_data"] = "value1"
    s1.save(must_create=True)
    backend(s1.session_key).delete()  # logged out in another context
    s1["test_data"] = "value2"
    with pytest.raises(UpdateError):
        s1.save()
    assert session_keys(redis_client, prefix) == []  # not resurrected


def test_delete_and_exists() -> None:
    s = backend()
    s["x"] = 1
    s.save()
    key = s.session_key
    s.delete(key)
    assert not s.exists(key)
    assert not s.exists(None) and not s.exists("")


def test_flush_deletes_and_forgets_the_key() -> None:
    s = backend()
    s["foo"] = "bar"
    s.save()
    prev = s.session_key
    s.flush()
    assert not s.exists(prev)
    assert s.session_key != prev
    assert s.modified and s.accessed


def test_cycle_key_keeps_data_and_drops_old_key(redis_client: redis.Redis, prefix: str) -> None:
    s = backend()
    s["a"], s["b"] = "c", "d"
    s.save()
    prev_key, prev_data = s.session_key, list(s.items())
    s.cycle_key()
    assert s.session_key != prev_key and is_valid_session_id(s.session_key)
    assert list(s.items()) == prev_data
    assert not s.exists(prev_key)
    assert backend(s.session_key)["a"] == "c"  # stored under the new key already
    assert session_keys(redis_client, prefix) == [(prefix + s.session_key).encode()]


def test_cycle_key_without_session_cache() -> None:
    s = backend()
    s["a"], s["b"] = "c", "d"
    s.save()
    prev_key, prev_data = s.session_key, sorted(s.items())
    s = backend(prev_key)
    assert not hasattr(s, "_session_cache")
    s.cycle_key()
    assert sorted(s.items()) == prev_data
    assert s.session_key != prev_key and not s.exists(prev_key)


def test_cycle_key_of_an_unsaved_session_creates_it() -> None:
    s = backend()
    s["a"] = 1
    s.cycle_key()
    assert s.exists(s.session_key)
    assert backend(s.session_key)["a"] == 1


def test_invalid_key_is_replaced() -> None:
    s = backend("1")
    assert s.session_key is None
    s.save()
    assert s.session_key != "1" and is_valid_session_id(s.session_key)


def test_unknown_wellformed_key_is_never_adopted() -> None:
    from fastsess.stores.base import new_session_id

    chosen = new_session_id()
    s = backend(chosen)
    assert s.load() == {}
    assert s.session_key is None
    s["x"] = 1
    s.save()
    assert s.session_key != chosen and not s.exists(chosen)


def test_foreign_key_format_is_rejected() -> None:
    # a key written by Django's own backends (32 lowercase characters) is not a fastsess id
    s = backend("abcdefghijklmnopqrstuvwxyz012345")
    assert s.session_key is None


def test_corrupt_data_is_logged_and_treated_as_no_session(redis_client: redis.Redis, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    from fastsess.stores.base import new_session_id

    key = new_session_id()
    redis_client.set(prefix + key, b'{"not": "a fastsess session"}')
    s = backend(key)
    with caplog.at_level("WARNING", logger="django.security.SuspiciousSession"):
        assert s.load() == {}
    assert s.session_key is None
    assert "corrupted" in caplog.text


def test_clear_expired_is_a_noop() -> None:
    from fastsess.contrib.django import SessionStore

    s = backend()
    s["x"] = 1
    s.save()
    SessionStore.clear_expired()
    assert s.exists(s.session_key)


def test_in_place_mutation_without_save_does_not_leak_into_the_cache() -> None:
    s = backend()
    s["items"] = ["a"]
    s.save()
    reader = backend(s.session_key)
    reader["items"].append("b")  # in place, never saved
    assert backend(s.session_key)["items"] == ["a"]


def test_json_serializer_setting(redis_client: redis.Redis, prefix: str) -> None:
    from django.test.utils import override_settings

    with override_settings(FASTSESS_SERIALIZER="json"):
        s = backend()
        s["x"] = [1, "two"]
        s.save()
        raw = redis_client.get(prefix + s.session_key)
        assert raw is not None and raw[:2] == b"FS" and b'"two"' in raw
        assert backend(s.session_key)["x"] == [1, "two"]


def test_cluster_setting_disabled_gives_a_plain_store() -> None:
    from django.test.utils import override_settings

    from fastsess.contrib.django import get_store

    with override_settings(FASTSESS_CLUSTER={"enabled": False}):
        assert get_store().coordinator is None
        s = backend()
        s["x"] = 1
        s.save()
        assert backend(s.session_key)["x"] == 1
    assert get_store().coordinator is not None


def test_client_setting(redis_url: str) -> None:
    from django.test.utils import override_settings

    client = redis.Redis.from_url(redis_url)
    try:
        with override_settings(FASTSESS_REDIS_URL=None, FASTSESS_REDIS_CLIENT=client):
            s = backend()
            s["x"] = 1
            s.save()
            assert backend(s.session_key)["x"] == 1
    finally:
        client.close()


def test_missing_settings_are_improperly_configured() -> None:
    from django.core.exceptions import ImproperlyConfigured
    from django.test.utils import override_settings

    with override_settings(FASTSESS_REDIS_URL=None), pytest.raises(ImproperlyConfigured):
        backend().save()


# -- async twins, on the asyncio store ---------------------------------------------------------


@pytest.fixture
async def async_engine(django_settings: Any) -> Any:
    from fastsess.contrib import django as engine

    yield engine
    await engine.aclose_async_store()


async def test_async_roundtrip_uses_the_asyncio_store(async_engine: Any) -> None:
    from fastsess.asyncio import ClusteredRedisStore

    s = backend()
    await s.aset("cat", "dog")
    await s.asave()
    assert await s.aexists(s.session_key)
    again = backend(s.session_key)
    assert await again.aget("cat") == "dog"
    assert isinstance(async_engine.get_async_store(), ClusteredRedisStore)
    assert async_engine._sync_stores == {}  # the sync store was never built: no thread hop
    await again.adelete()
    assert not await s.aexists(s.session_key)


async def test_async_create_error_and_update_error(async_engine: Any) -> None:
    from django.contrib.sessions.backends.base import CreateError, UpdateError

    s = backend()
    await s.aset("owner", "first")
    await s.asave()
    intruder = backend(s.session_key)
    intruder._session_cache = {"owner": "second"}
    with pytest.raises(CreateError):
        await intruder.asave(must_create=True)
    assert await backend(s.session_key).aget("owner") == "first"
    await backend(s.session_key).adelete()
    await s.aset("owner", "changed")
    with pytest.raises(UpdateError):
        await s.asave()
    assert not await s.aexists(s.session_key)


async def test_async_cycle_key_and_flush(async_engine: Any) -> None:
    s = backend()
    await s.aset("a", 1)
    await s.asave()
    prev = s.session_key
    s = backend(prev)
    await s.acycle_key()
    assert s.session_key != prev
    assert not await s.aexists(prev)
    assert await backend(s.session_key).aget("a") == 1
    key = s.session_key
    await s.aflush()
    assert s.session_key is None and not await s.aexists(key)


async def test_async_and_sync_see_each_other(async_engine: Any) -> None:
    s = backend()
    await s.aset("n", 1)
    await s.asave()
    synced = backend(s.session_key)
    assert synced["n"] == 1
    synced["n"] = 2
    synced.save()
    # the sync store's write publishes an invalidation that the asyncio store (another node
    # id in this process) applies to its cache
    import asyncio

    for _ in range(200):
        if await backend(s.session_key).aget("n") == 2:
            break
        await asyncio.sleep(0.01)
    assert await backend(s.session_key).aget("n") == 2


async def test_async_methods_need_a_url(async_engine: Any, redis_url: str) -> None:
    from django.core.exceptions import ImproperlyConfigured
    from django.test.utils import override_settings

    client = redis.Redis.from_url(redis_url)
    try:
        with override_settings(FASTSESS_REDIS_URL=None, FASTSESS_REDIS_CLIENT=client):
            with pytest.raises(ImproperlyConfigured):
                await backend().asave()
    finally:
        client.close()


# -- through Django's middleware and test client -----------------------------------------------


def test_anonymous_requests_write_nothing_and_set_no_cookie(redis_client: redis.Redis, prefix: str) -> None:
    from django.test import Client

    client = Client()
    before = redis_writes(redis_client)
    for url in ("/anon", "/read"):
        response = client.get(url)
        assert response.status_code == 200
        assert "sessionid" not in response.cookies
    assert redis_writes(redis_client) == before
    assert session_keys(redis_client, prefix) == []


def test_login_read_change_logout(redis_client: redis.Redis, prefix: str) -> None:
    from django.test import Client

    client = Client()
    assert client.get("/incr").json() == {"count": 1}
    anon_key = client.cookies["sessionid"].value
    response = client.get("/login", {"user": "ada"})
    cookie = response.cookies["sessionid"]
    assert cookie["httponly"] is True
    assert cookie.value != anon_key and is_valid_session_id(cookie.value)
    assert session_keys(redis_client, prefix) == [(prefix + cookie.value).encode()]  # old key dropped
    assert client.get("/read").json() == {"user": "ada", "count": 1}
    assert client.get("/incr").json() == {"count": 2}
    response = client.get("/logout")
    assert response.cookies["sessionid"].value == ""
    assert session_keys(redis_client, prefix) == []
    assert client.get("/read").json() == {"user": None, "count": 0}


def test_read_only_requests_of_a_live_session_write_nothing(redis_client: redis.Redis) -> None:
    from django.test import Client

    from fastsess.contrib.django import get_store

    coordinator = get_store().coordinator
    assert coordinator is not None and coordinator.wait_subscribed(5.0)  # the store's constructor does not wait
    client = Client()
    client.get("/login", {"user": "ada"})
    before = redis_writes(redis_client)
    for _ in range(3):
        response = client.get("/read")
        assert response.json()["user"] == "ada"
        assert "sessionid" not in response.cookies
    assert redis_writes(redis_client) == before


def test_nested_in_place_change_with_modified_is_saved() -> None:
    from django.test import Client

    client = Client()
    client.get("/append", {"item": "a"})
    assert client.get("/append", {"item": "b"}).json() == {"items": ["a", "b"]}
    assert client.get("/append", {"item": "c"}).json() == {"items": ["a", "b", "c"]}


@pytest.mark.parametrize("cookie", ["garbage", "x" * 43, "\u00e9t\u00e9", "abcdefghijklmnopqrstuvwxyz012345"])
def test_bad_cookie_starts_a_fresh_session(cookie: str, redis_client: redis.Redis, prefix: str) -> None:
    from django.test import Client

    client = Client()
    client.cookies["sessionid"] = cookie
    response = client.get("/read")
    assert response.status_code == 200 and response.json() == {"user": None, "count": 0}
    response = client.get("/incr")
    assert response.status_code == 200
    new = response.cookies["sessionid"].value
    assert new != cookie and is_valid_session_id(new)
    assert session_keys(redis_client, prefix) == [(prefix + new).encode()]


def test_unknown_wellformed_cookie_is_not_adopted(redis_client: redis.Redis, prefix: str) -> None:
    from django.test import Client

    from fastsess.stores.base import new_session_id

    chosen = new_session_id()
    client = Client()
    client.cookies["sessionid"] = chosen
    response = client.get("/login", {"user": "ada"})
    assert response.status_code == 200
    assert response.cookies["sessionid"].value != chosen
    assert redis_client.exists(prefix + chosen) == 0


def test_secure_and_samesite_come_from_django_settings() -> None:
    from django.test import Client
    from django.test.utils import override_settings

    with override_settings(SESSION_COOKIE_SECURE=True, SESSION_COOKIE_SAMESITE="Strict"):
        cookie = Client().get("/incr").cookies["sessionid"]
    assert cookie["secure"] is True and cookie["samesite"] == "Strict" and cookie["httponly"] is True


def test_session_deleted_elsewhere_gives_a_fresh_session(redis_client: redis.Redis, prefix: str) -> None:
    from django.test import Client

    client = Client()
    client.get("/incr")
    key = client.cookies["sessionid"].value
    # another node logs the user out; this node's cache is told, so the next write finds no key
    backend(key).delete()
    response = client.get("/incr")
    assert response.status_code == 200 and response.json() == {"count": 1}  # a fresh session
    new = response.cookies["sessionid"].value
    assert new != key
    assert session_keys(redis_client, prefix) == [(prefix + new).encode()]  # the old key never resurrected


def test_update_error_in_the_middleware_is_a_400(redis_client: redis.Redis, prefix: str) -> None:
    from django.test import Client

    client = Client(raise_request_exception=False)
    client.get("/login", {"user": "ada"})
    key = client.cookies["sessionid"].value
    from fastsess.contrib.django import get_store

    store = get_store()
    assert store.coordinator is not None and store.coordinator.wait_subscribed(5.0)  # the cache is served from here on
    stored = store.load(key)
    assert stored is not None
    # the key vanishes between this request's load and its save: load it into the cache
    # first, then delete the key behind the store's back (no invalidation is sent)
    redis_client.delete(prefix + key)
    response = client.get("/incr")
    assert response.status_code == 400  # SessionInterrupted, like Django's own backends
    assert redis_client.exists(prefix + key) == 0


def test_redis_down_with_a_valid_cookie_is_a_server_error(redis_server_factory: Any, prefix: str) -> None:
    from django.test import Client
    from django.test.utils import override_settings

    server = redis_server_factory()
    with override_settings(FASTSESS_REDIS_URL=server.url, FASTSESS_CLUSTER={"enabled": False}):
        client = Client()
        client.get("/login", {"user": "ada"})
        assert client.get("/read").json()["user"] == "ada"
        server.stop()
        with pytest.raises(StoreUnavailable):
            client.get("/read")
        response = Client(raise_request_exception=False, HTTP_COOKIE=f"sessionid={client.cookies['sessionid'].value}").get("/read")
        assert response.status_code == 500


async def test_async_views_through_the_async_client(async_engine: Any, redis_client: redis.Redis, prefix: str) -> None:
    from django.test import AsyncClient

    client = AsyncClient()
    assert (await client.get("/aincr")).json() == {"count": 1}
    assert (await client.get("/aincr")).json() == {"count": 2}
    first = client.cookies["sessionid"].value
    response = await client.get("/alogin", {"user": "ada"})
    assert response.cookies["sessionid"].value != first
    assert (await client.get("/aread")).json() == {"user": "ada", "count": 2}
    assert session_keys(redis_client, prefix) == [(prefix + client.cookies["sessionid"].value).encode()]


def test_construction_sets_what_sessionbase_sets() -> None:
    """SessionStore does not call SessionBase.__init__ (which imports SESSION_SERIALIZER on
    every construction): it sets the same attributes, ``serializer`` on first access."""
    from django.contrib.sessions.backends.base import SessionBase

    from fastsess.stores.base import new_session_id

    for key in (None, "short", new_session_id()):
        theirs = SessionBase(key)
        ours = backend(key)
        assert ours.session_key == (key if key is not None and is_valid_session_id(key) else None)
        assert (ours.accessed, ours.modified) == (theirs.accessed, theirs.modified) == (False, False)
        assert ours.serializer is theirs.serializer
        assert set(vars(theirs)) <= set(vars(ours))


def test_the_read_path_overrides_keep_sessionbase_semantics() -> None:
    """SessionStore's own key properties, _get_session, get, [], in and is_empty (faster
    than SessionBase's) answer and set the flags as SessionBase's do."""
    stored = backend()
    stored["user"] = "ada"
    stored["cart"] = [1]
    stored.save()
    key = stored.session_key
    for read in (lambda s: s.get("user"), lambda s: s["user"], lambda s: "user" in s, lambda s: s._session["user"]):
        s = backend(key)
        assert not hasattr(s, "_session_cache") and not s.is_empty() and not s.accessed
        assert read(s) in ("ada", True)
        assert s.accessed and not s.modified and s._session_cache == {"user": "ada", "cart": [1]}
        s._session_cache["cart"].append(2)  # the data is the request's own: the cache keeps [1]
        assert backend(key)["cart"] == [1]
    with pytest.raises(KeyError):
        backend(key)["missing"]
    s = backend(key)
    with pytest.raises(AttributeError):
        s.session_key = "x" * 43  # read-only, as SessionBase's
    s._session_key = "short"  # the validating setter
    assert s.session_key is None and s._session_key is None and s.is_empty()
    unknown = backend("y" * 43)  # well-formed, never stored
    assert unknown.session_key == "y" * 43 and not unknown.is_empty()
    assert unknown.get("user") is None and unknown.session_key is None and unknown.is_empty()
    cleared = backend(key)
    cleared.clear()  # SessionBase's, on the data not yet loaded: nothing is loaded over it
    assert cleared.get("user") is None and cleared.modified


def test_remembered_valid_keys_stay_bounded() -> None:
    from fastsess.contrib import django as engine
    from fastsess.stores.base import new_session_id

    for _ in range(engine._KNOWN_IDS_MAX + 10):
        key = new_session_id()
        assert backend(key).session_key == key and key in engine._known_ids
    assert 0 < len(engine._known_ids) <= engine._KNOWN_IDS_MAX
    for bad in ("short", "x" * 42 + "!", "é" * 43):
        assert backend(bad).session_key is None and bad not in engine._known_ids


async def test_a_write_through_either_store_is_read_at_once_through_the_other(async_engine: Any) -> None:
    """Django's SessionMiddleware saves through the sync store even after an async view, and
    the sync and async methods have a cache each: the next read through the other store
    sees the write at once, not the copy it cached before (pub/sub would tell it a moment later)."""
    from asgiref.sync import sync_to_async

    from fastsess.contrib.django import get_async_store, get_store

    astore = get_async_store()
    assert await astore.start()
    assert await sync_to_async(lambda: get_store().coordinator.wait_subscribed(5))()
    for i in range(1, 21):
        first = backend()
        await first.aset("n", 0)
        await first.asave()
        key = first.session_key
        hits = astore.cache_stats().hits
        assert await backend(key).aget("n") == 0 and await backend(key).aget("n") == 0
        assert astore.cache_stats().hits > hits  # served from the async store's cache

        def sync_write(key: str = key, value: int = i) -> None:
            session = backend(key)
            session["n"] = value
            session.save()
            assert backend(key)["n"] == value  # now cached in the sync store too

        await sync_to_async(sync_write)()
        assert await backend(key).aget("n") == i  # the async store's copy was evicted

        later = backend(key)
        await later.aset("n", -i)
        await later.asave()
        assert await sync_to_async(lambda key=key: backend(key)["n"])() == -i  # and the other way round
        await later.acycle_key()
        await later.asave()
        assert await sync_to_async(lambda key=key: backend(key).load())() == {}  # the old key: gone on both
