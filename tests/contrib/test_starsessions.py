"""``StarsessionsStore``: starsessions' own middleware on a fastsess asyncio store."""

from __future__ import annotations

import redis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from starsessions import SessionAutoloadMiddleware, SessionMiddleware
from starsessions.stores.base import SessionStore

from fastsess.asyncio import ClusteredRedisStore
from fastsess.contrib.starlette import StarsessionsStore
from fastsess.stores.base import is_valid_session_id, new_session_id

from .conftest import session_keys


async def read(request: Request) -> JSONResponse:
    return JSONResponse({"user": request.session.get("user")})


async def login(request: Request) -> JSONResponse:
    request.session["user"] = request.path_params["user"]
    return JSONResponse({"user": request.session["user"]})


async def logout(request: Request) -> JSONResponse:
    request.session.clear()
    return JSONResponse({"user": None})


def make_app(store: ClusteredRedisStore) -> Starlette:
    return Starlette(
        routes=[Route("/read", read), Route("/login/{user}", login), Route("/logout", logout)],
        middleware=[
            Middleware(SessionMiddleware, store=StarsessionsStore(store), lifetime=600, cookie_https_only=False),
            Middleware(SessionAutoloadMiddleware),
        ],
    )


def test_starsessions_on_fastsess(redis_url: str, redis_client: redis.Redis, prefix: str) -> None:
    store = ClusteredRedisStore(url=redis_url, prefix=prefix)
    assert isinstance(StarsessionsStore(store), SessionStore)
    app = make_app(store)
    with TestClient(app) as client:
        assert client.get("/login/ada").json() == {"user": "ada"}
        sid = client.cookies.get("session")
        assert sid is not None and is_valid_session_id(sid)
        assert session_keys(redis_client, prefix) == [(prefix + sid).encode()]
        assert 590 <= redis_client.ttl(prefix + sid) <= 600
        assert client.get("/read").json() == {"user": "ada"}
        assert client.portal.call(StarsessionsStore(store).exists, sid) is True
        client.get("/logout")
        assert session_keys(redis_client, prefix) == []
        assert client.get("/read").json() == {"user": None}
        # a client-chosen id is never adopted: the write goes to a fresh fastsess id
        chosen = new_session_id()
        client.cookies.clear()
        client.cookies.set("session", chosen)
        response = client.get("/login/mallory")
        new = response.headers["set-cookie"].split(";")[0].removeprefix("session=")
        assert new != chosen and is_valid_session_id(new)
        assert redis_client.exists(prefix + chosen) == 0
        client.portal.call(store.close)
