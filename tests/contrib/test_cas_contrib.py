"""Lost updates through the framework drop-ins: two requests of one session that change
different keys at the same time both keep their change; a key both change keeps the
last writer's value; a session logged out meanwhile stays logged out."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, jsonify, session
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from fastsess.contrib.flask import FastSession
from fastsess.contrib.starlette import SessionMiddleware

SECRET = "cas-contrib-secret"


# --- Django: two SessionStore objects of one key, as two requests ---------------------------


@pytest.mark.usefixtures("django_settings")
def test_django_disjoint_keys_both_kept() -> None:
    from fastsess.contrib.django import SessionStore

    first = SessionStore()
    first["shared"] = 0
    first["gone"] = 1
    first.save()
    key = first.session_key
    a, b = SessionStore(key), SessionStore(key)
    a["a"] = 1
    a["shared"] = "a"
    del a["gone"]
    b["b"] = [1, 2]
    b["shared"] = "b"
    a.save()
    b.save()  # conflict: re-applies b's keys on a's write
    assert dict(SessionStore(key).load()) == {"a": 1, "b": [1, 2], "shared": "b"}


@pytest.mark.usefixtures("django_settings")
def test_django_logout_meanwhile_is_not_undone() -> None:
    from django.contrib.sessions.backends.base import UpdateError

    from fastsess.contrib.django import SessionStore

    first = SessionStore()
    first["user"] = 1
    first.save()
    key = first.session_key
    late = SessionStore(key)
    assert late["user"] == 1  # loaded (this request's copy) before the logout
    SessionStore(key).delete()
    late["x"] = 1
    with pytest.raises(UpdateError):
        late.save()
    assert not SessionStore().exists(key)


# --- Flask: two requests in flight at once ---------------------------------------------------


def flask_app(gate: threading.Barrier) -> Flask:
    app = Flask(__name__)
    app.secret_key = SECRET

    @app.get("/start")
    def start() -> Any:
        session["shared"] = 0
        return "ok"

    @app.get("/set/<key>")
    def set_key(key: str) -> Any:
        session[key] = 1
        session["shared"] = key
        gate.wait(10)  # both requests loaded the session before either saves
        return "ok"

    @app.get("/read")
    def read() -> Any:
        return jsonify(dict(session))

    return app


@pytest.fixture
def flask_pair(redis_url: str, prefix: str) -> Iterator[tuple[Any, Any, threading.Barrier]]:
    gate = threading.Barrier(2)
    app = flask_app(gate)
    app.config.update(FASTSESS_REDIS_URL=redis_url, FASTSESS_KEY_PREFIX=prefix)
    FastSession(app)
    one, two = app.test_client(), app.test_client()
    yield one, two, gate
    app.session_interface.store.close()  # type: ignore[attr-defined]


def test_flask_concurrent_requests_keep_both_keys(flask_pair: tuple[Any, Any, threading.Barrier]) -> None:
    one, two, _ = flask_pair
    assert one.get("/start").status_code == 200
    cookie = one.get_cookie("session")
    two.set_cookie(cookie.key, cookie.value)
    results: dict[str, int] = {}

    def call(client: Any, key: str) -> None:
        results[key] = client.get(f"/set/{key}").status_code

    threads = [threading.Thread(target=call, args=(c, k)) for c, k in ((one, "a"), (two, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {"a": 200, "b": 200}
    data = one.get("/read").get_json()
    assert data["a"] == 1 and data["b"] == 1 and data["shared"] in ("a", "b")


# --- Starlette: two requests in flight at once on one event loop -----------------------------


class Gate:
    """Releases the requests once ``n`` of them arrived (on the app's event loop)."""

    def __init__(self, n: int) -> None:
        self.n, self.arrived = n, 0
        self.event: asyncio.Event | None = None

    async def wait(self) -> None:
        if self.event is None:
            self.event = asyncio.Event()
        self.arrived += 1
        if self.arrived >= self.n:
            self.event.set()
        await asyncio.wait_for(self.event.wait(), 10)


def starlette_app(gate: Gate) -> Starlette:
    async def start(request: Request) -> JSONResponse:
        request.session["shared"] = 0
        return JSONResponse({})

    async def set_key(request: Request) -> JSONResponse:
        key = request.path_params["key"]
        request.session[key] = 1
        request.session["shared"] = key
        await gate.wait()
        return JSONResponse({})

    async def read(request: Request) -> JSONResponse:
        return JSONResponse(dict(request.session))

    routes = [Route("/start", start), Route("/set/{key}", set_key), Route("/read", read)]
    return Starlette(routes=routes, middleware=[Middleware(SessionMiddleware, secret_key=SECRET)])


def test_starlette_concurrent_requests_keep_both_keys(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    with TestClient(starlette_app(Gate(2))) as client:
        assert client.get("/start").status_code == 200  # the client keeps the cookie
        results: dict[str, int] = {}

        def call(key: str) -> None:
            results[key] = client.get(f"/set/{key}").status_code

        threads = [threading.Thread(target=call, args=(k,)) for k in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == {"a": 200, "b": 200}
        data = client.get("/read").json()
    assert data["a"] == 1 and data["b"] == 1 and data["shared"] in ("a", "b")
