"""FastAPI takes the Starlette middleware as is: ``app.add_middleware(SessionMiddleware, ...)``."""

from __future__ import annotations

import pytest
import redis
from fastapi import FastAPI, Request
from starlette.testclient import TestClient

from fastsess.contrib._common import CookieSigner
from fastsess.contrib.starlette import SessionMiddleware, regenerate

from .conftest import redis_writes, session_keys

SECRET = "fastapi-tests-secret"


def make_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(SessionMiddleware, secret_key=SECRET)

    @app.get("/anon")
    async def anon() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/read")
    async def read(request: Request) -> dict[str, object]:
        return {"user": request.session.get("user")}

    @app.get("/login/{user}")
    async def login(user: str, request: Request) -> dict[str, str]:
        await regenerate(request)
        request.session["user"] = user
        return {"user": user}

    @app.get("/logout")
    async def logout(request: Request) -> dict[str, None]:
        request.session.clear()
        return {"user": None}

    return app


def test_fastapi_login_read_logout(redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    with TestClient(make_app()) as client:
        before = redis_writes(redis_client)
        response = client.get("/anon")
        assert response.status_code == 200 and "set-cookie" not in response.headers
        assert redis_writes(redis_client) == before
        response = client.get("/login/ada")
        assert "httponly" in response.headers["set-cookie"]
        sid = CookieSigner(SECRET).unsign(client.cookies.get("session"))
        assert sid is not None
        assert session_keys(redis_client, "fastsess:") == [f"fastsess:{sid}".encode()]
        assert client.get("/read").json() == {"user": "ada"}
        client.get("/logout")
        assert session_keys(redis_client, "fastsess:") == []
        assert client.get("/read").json() == {"user": None}
