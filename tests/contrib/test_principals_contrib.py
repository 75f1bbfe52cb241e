"""Log out everywhere in the framework drop-ins: bind at login, end the user's other
sessions after a password change (Django, Flask, Starlette, against the private Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from flask import Flask, jsonify, session
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from fastsess.contrib import starlette as fs_starlette
from fastsess.contrib._common import CookieSigner
from fastsess.contrib.flask import FastSession
from fastsess.errors import ConfigError
from fastsess.stores.base import PRINCIPAL_KEY

SECRET = "principal-tests-secret"


# --- Django ------------------------------------------------------------------------------------


@pytest.fixture
def bind_on_login(django_settings: object) -> Iterator[Any]:
    from django.contrib.auth.signals import user_logged_in

    from fastsess.contrib.django import bind_on_login

    user_logged_in.connect(bind_on_login)
    yield user_logged_in
    user_logged_in.disconnect(bind_on_login)


def django_login(signal: Any, user: Any) -> Any:
    """What ``django.contrib.auth.login`` does to the session: cycle the key, then the signal."""
    from fastsess.contrib.django import SessionStore

    s = SessionStore()
    s["n"] = 1
    s.save()
    s.cycle_key()
    s["_auth_user_id"] = str(user.pk)
    request = SimpleNamespace(session=s)
    signal.send(sender=type(user), request=request, user=user)
    s.save()  # SessionMiddleware, at the end of the request
    return request


def test_django_bind_on_login_and_log_out_everywhere(bind_on_login: Any, redis_client: redis.Redis) -> None:
    from fastsess.contrib.django import SessionStore, get_store, log_out_everywhere

    alice, bob = SimpleNamespace(pk=42), SimpleNamespace(pk=7)
    here, there, elsewhere = (django_login(bind_on_login, alice) for _ in range(3))
    other = django_login(bind_on_login, bob)
    keys = sorted(r.session.session_key for r in (here, there, elsewhere))
    assert sorted(get_store().sessions_of("42")) == keys
    there.session.cycle_key()  # a later key change keeps it bound
    assert there.session.session_key in get_store().sessions_of("42")
    assert log_out_everywhere(alice, here) == 2
    assert get_store().sessions_of("42") == [here.session.session_key]
    assert SessionStore(there.session.session_key).get("_auth_user_id") is None  # logged out
    assert SessionStore(here.session.session_key)["_auth_user_id"] == "42"
    assert SessionStore(other.session.session_key)["_auth_user_id"] == "7"
    assert log_out_everywhere(alice) == 1  # no request: every session of the user


def test_django_async_log_out_everywhere(bind_on_login: Any) -> None:
    from fastsess.contrib.django import aclose_async_store, alog_out_everywhere, get_store

    alice = SimpleNamespace(pk="alice")
    here, there = (django_login(bind_on_login, alice) for _ in range(2))

    async def run() -> int:
        try:
            return await alog_out_everywhere(alice, here)
        finally:
            await aclose_async_store()

    assert asyncio.run(run()) == 1
    assert get_store().sessions_of("alice") == [here.session.session_key]


def test_django_bind_needs_the_fastsess_engine(bind_on_login: Any) -> None:
    from django.contrib.sessions.backends.signed_cookies import SessionStore as CookieStore

    request = SimpleNamespace(session=CookieStore())
    with pytest.raises(ConfigError, match="SESSION_ENGINE"):
        bind_on_login.send(sender=None, request=request, user=SimpleNamespace(pk=1))


def test_django_session_bind_validates_and_rebinding_writes_nothing_new(django_settings: object) -> None:
    from fastsess.contrib.django import SessionStore

    s = SessionStore()
    with pytest.raises(TypeError, match="must be a str"):
        s.bind(42)  # type: ignore[arg-type]
    s.bind("42")
    s.save()
    again = SessionStore(s.session_key)
    again.bind("42")  # bound already: unchanged, nothing to write
    assert again.modified is False
    again.bind("43")  # another user: bound anew, under a new key
    assert again.modified is True and again[PRINCIPAL_KEY][0] == "43"
    assert again.session_key != s.session_key


# --- Flask -------------------------------------------------------------------------------------


def flask_app(redis_url: str, prefix: str) -> Flask:
    app = Flask(__name__)
    app.secret_key = SECRET
    app.config.update(FASTSESS_REDIS_URL=redis_url, SESSION_KEY_PREFIX=prefix)

    @app.get("/login/<user>")
    def login(user: str) -> Any:
        app.session_interface.regenerate(session)  # type: ignore[attr-defined]
        session["user"] = user
        app.session_interface.bind(session, user)  # type: ignore[attr-defined]
        return jsonify(user=user)

    @app.get("/password")
    def password() -> Any:
        ended = app.session_interface.log_out_everywhere(session["user"], keep=session)  # type: ignore[attr-defined]
        return jsonify(ended=ended)

    @app.get("/read")
    def read() -> Any:
        return jsonify(user=session.get("user"))

    @app.get("/switch/<user>")
    def switch(user: str) -> Any:  # bind only: another user on the same session
        session["user"] = user
        app.session_interface.bind(session, user)  # type: ignore[attr-defined]
        return jsonify(user=user)

    FastSession(app)
    return app


def test_flask_bind_and_log_out_everywhere(redis_url: str, prefix: str) -> None:
    app = flask_app(redis_url, prefix)
    try:
        alice = [app.test_client() for _ in range(3)]
        bob = app.test_client()
        for c in alice:
            assert c.get("/login/alice").json == {"user": "alice"}
        bob.get("/login/bob")
        store = app.session_interface.store  # type: ignore[attr-defined]
        assert len(store.sessions_of("alice")) == 3
        assert alice[0].get("/password").json == {"ended": 2}
        assert [c.get("/read").json["user"] for c in alice] == ["alice", None, None]
        assert bob.get("/read").json == {"user": "bob"}
        assert len(store.sessions_of("alice")) == 1
        alice[0].get("/switch/bob")  # bound to bob now: a new id, out of alice's sessions
        assert store.sessions_of("alice") == [] and len(store.sessions_of("bob")) == 2
        assert app.session_interface.log_out_everywhere("alice") == 0  # type: ignore[attr-defined]
        assert alice[0].get("/read").json == {"user": "bob"}
    finally:
        app.session_interface.store.close()  # type: ignore[attr-defined]


# --- Starlette ---------------------------------------------------------------------------------


async def s_login(request: Request) -> JSONResponse:
    user = request.path_params["user"]
    fs_starlette.regenerate(request)
    request.session["user"] = user
    fs_starlette.bind(request, user)
    return JSONResponse({"user": user})


async def s_password(request: Request) -> JSONResponse:
    keep = request.query_params.get("keep") != "no"
    ended = await fs_starlette.log_out_everywhere(request, request.session["user"], keep_current=keep)
    return JSONResponse({"ended": ended})


async def s_read(request: Request) -> JSONResponse:
    return JSONResponse({"user": request.session.get("user")})


async def s_switch(request: Request) -> JSONResponse:
    request.session["user"] = request.path_params["user"]
    fs_starlette.bind(request, request.path_params["user"])
    return JSONResponse({"user": request.path_params["user"]})


async def s_bad(request: Request) -> JSONResponse:
    fs_starlette.bind(request, "")
    return JSONResponse({})


def test_starlette_bind_and_log_out_everywhere(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    routes = [
        Route("/login/{user}", s_login), Route("/password", s_password), Route("/read", s_read), Route("/bad", s_bad),
        Route("/switch/{user}", s_switch),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(fs_starlette.SessionMiddleware, secret_key=SECRET)])
    with TestClient(app) as client:
        cookies = []
        for _ in range(3):  # three browsers of the same user
            client.cookies.clear()
            client.get("/login/ada")
            cookies.append(client.cookies.get("session"))
        assert len(set(cookies)) == 3

        def as_browser(i: int) -> TestClient:
            client.cookies.clear()
            client.cookies.set("session", cookies[i])
            return client

        assert as_browser(0).get("/password").json() == {"ended": 2}
        assert [as_browser(i).get("/read").json()["user"] for i in range(3)] == ["ada", None, None]
        assert as_browser(0).get("/password", params={"keep": "no"}).json() == {"ended": 1}
        assert as_browser(0).get("/read").json() == {"user": None}
        client.cookies.clear()
        client.get("/login/ada")
        before = client.cookies.get("session")
        client.get("/switch/bob")  # bound to bob now: a new id, out of ada's sessions
        assert client.cookies.get("session") != before
        assert client.get("/password").json() == {"ended": 0}  # bob has no other session
        client.cookies.clear()
        client.cookies.set("session", before)
        assert client.get("/read").json() == {"user": None}  # the old id is gone
        with pytest.raises(ValueError, match="must not be empty"):
            client.get("/bad")
    assert CookieSigner(SECRET).unsign(cookies[0]) is not None


def test_starlette_helpers_need_the_middleware() -> None:
    request = Request({"type": "http", "headers": []})
    with pytest.raises(RuntimeError, match="SessionMiddleware"):
        fs_starlette.bind(request, "ada")
    with pytest.raises(RuntimeError, match="SessionMiddleware"):
        asyncio.run(fs_starlette.log_out_everywhere(request, "ada"))
