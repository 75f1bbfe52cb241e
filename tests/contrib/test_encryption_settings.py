"""``FASTSESS_ENCRYPTION_KEYS`` in the Django and Flask drop-ins: sessions stored encrypted,
bad keys refused at configuration with a message that does not show them."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask

from fastsess import Encryption
from fastsess.crypto import PREFIX, key_id
from fastsess.errors import ConfigError

from .test_flask import listening, make_app, sid_of

K1, K2 = Encryption.generate_key(), Encryption.generate_key()
B64 = [base64.b64encode(K1).decode(), base64.b64encode(K2).decode()]


def stored_key_id(client: redis.Redis, key: str) -> str:
    raw = client.get(key)
    assert raw is not None and raw[:3] == PREFIX
    return raw[3:7].hex()


# --- Django -----------------------------------------------------------------------------------


@pytest.fixture
def encrypted_django(django_settings: Any) -> Iterator[Any]:
    from django.test.utils import override_settings

    from fastsess.contrib import django as engine

    with override_settings(FASTSESS_ENCRYPTION_KEYS=B64):
        yield engine


def test_django_stores_sessions_encrypted(encrypted_django: Any, redis_client: redis.Redis, prefix: str) -> None:
    from fastsess.contrib.django import SessionStore

    s = SessionStore()
    s["card"] = "4111-1111"
    s.save()
    assert stored_key_id(redis_client, prefix + s.session_key) == key_id(K1)
    assert b"4111" not in redis_client.get(prefix + s.session_key)
    assert SessionStore(s.session_key)["card"] == "4111-1111"
    assert encrypted_django.get_store().encryption.key_ids == (key_id(K1), key_id(K2))


async def test_django_async_methods_use_the_keys_too(encrypted_django: Any, redis_client: redis.Redis, prefix: str) -> None:
    from fastsess.contrib.django import SessionStore

    try:
        s = SessionStore()
        await s.aset("x", 1)
        await s.asave()
        assert stored_key_id(redis_client, prefix + s.session_key) == key_id(K1)
        assert await SessionStore(s.session_key).aget("x") == 1
    finally:
        await encrypted_django.aclose_async_store()


@pytest.mark.parametrize(("value", "message"), [([], "at least one"), (["short"], "not valid base64"), ([base64.b64encode(K1[:16]).decode()], "16 bytes long")])
def test_django_bad_keys_are_improperly_configured(django_settings: Any, value: Any, message: str) -> None:
    from django.core.exceptions import ImproperlyConfigured
    from django.test.utils import override_settings

    from fastsess.contrib.django import SessionStore

    with override_settings(FASTSESS_ENCRYPTION_KEYS=value), pytest.raises(ImproperlyConfigured, match=f"FASTSESS_ENCRYPTION_KEYS: .*{message}") as info:
        SessionStore().save()
    assert K1.hex() not in str(info.value) and B64[0] not in str(info.value)


# --- Flask ------------------------------------------------------------------------------------


def test_flask_stores_sessions_encrypted(redis_url: str, redis_client: redis.Redis, prefix: str) -> None:
    app: Flask = listening(make_app(FASTSESS_REDIS_URL=redis_url, SESSION_KEY_PREFIX=prefix, FASTSESS_ENCRYPTION_KEYS=B64[::-1]))
    try:
        client = app.test_client()
        assert client.get("/incr").json == {"count": 1}
        assert client.get("/incr").json == {"count": 2}
        assert stored_key_id(redis_client, prefix + sid_of(client)) == key_id(K2)
    finally:
        app.session_interface.store.close()  # type: ignore[attr-defined]


def test_flask_bad_keys_are_a_config_error(redis_url: str, prefix: str) -> None:
    with pytest.raises(ConfigError, match="FASTSESS_ENCRYPTION_KEYS: encryption key #1 must be bytes, not int") as info:
        make_app(FASTSESS_REDIS_URL=redis_url, SESSION_KEY_PREFIX=prefix, FASTSESS_ENCRYPTION_KEYS=[1, K1])
    assert K1.hex() not in str(info.value)


def test_flask_a_session_the_keys_cannot_open_is_a_fresh_one(redis_url: str, prefix: str) -> None:
    """What users meet if a key is removed too early (docs/encryption.md): not an error page."""
    writer = listening(make_app(FASTSESS_REDIS_URL=redis_url, SESSION_KEY_PREFIX=prefix, FASTSESS_ENCRYPTION_KEYS=B64[:1]))
    reader = listening(make_app(FASTSESS_REDIS_URL=redis_url, SESSION_KEY_PREFIX=prefix, FASTSESS_ENCRYPTION_KEYS=B64[1:]))
    try:
        client = writer.test_client()
        assert client.get("/login/ada").json == {"user": "ada"}
        cookie = client.get_cookie("session")
        assert cookie is not None
        other = reader.test_client()
        other.set_cookie("session", cookie.value)
        response = other.get("/read")
        assert response.status_code == 200 and response.json == {"user": None, "count": 0}
    finally:
        for app in (writer, reader):
            app.session_interface.store.close()  # type: ignore[attr-defined]


# --- Starlette (the default store, from the environment) ----------------------------------------


def test_starlette_default_store_takes_keys_from_the_environment(redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.testclient import TestClient

    from .test_starlette import PREFIX, make_app
    from .test_starlette import sid_of as starlette_sid

    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("FASTSESS_ENCRYPTION_KEYS", f" {B64[1]}, {B64[0]} ")
    with TestClient(make_app()) as client:
        assert client.get("/incr").json() == {"count": 1}
        assert client.get("/incr").json() == {"count": 2}
        assert stored_key_id(redis_client, PREFIX + starlette_sid(client)) == key_id(K2)


def test_starlette_bad_keys_in_the_environment(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.testclient import TestClient

    from .test_starlette import make_app

    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("FASTSESS_ENCRYPTION_KEYS", f"{B64[0]},")
    with pytest.raises(ConfigError, match="FASTSESS_ENCRYPTION_KEYS: encryption key #2 is 0 bytes long") as info, TestClient(make_app()):
        pass
    assert B64[0] not in str(info.value)
    monkeypatch.setenv("FASTSESS_ENCRYPTION_KEYS", "  ")  # blank: no encryption
    with TestClient(make_app()) as client:
        assert client.get("/incr").json() == {"count": 1}


def test_a_store_given_must_encrypt_when_keys_are_configured(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The keys setting is never silently ignored: with store= the store must have encryption=."""
    import fastsess
    import fastsess.asyncio
    from fastsess.contrib.flask import FastSession
    from fastsess.contrib.starlette import SessionMiddleware

    app = Flask(__name__)
    app.config["FASTSESS_ENCRYPTION_KEYS"] = B64
    with pytest.raises(ConfigError, match="FASTSESS_ENCRYPTION_KEYS is set, but the store= given does not encrypt"):
        FastSession(app, store=fastsess.MemoryStore())
    FastSession(app, store=fastsess.MemoryStore(encryption=Encryption([K1])))

    monkeypatch.setenv("FASTSESS_ENCRYPTION_KEYS", B64[0])
    with pytest.raises(ConfigError, match="FASTSESS_ENCRYPTION_KEYS is set, but the store= given does not encrypt"):
        SessionMiddleware(lambda *a: None, secret_key="s", store=fastsess.asyncio.MemoryStore())
    SessionMiddleware(lambda *a: None, secret_key="s", store=fastsess.asyncio.MemoryStore(encryption=Encryption([K1])))
