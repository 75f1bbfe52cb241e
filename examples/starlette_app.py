"""Starlette on fastsess (FastAPI is the same middleware): ``python examples/starlette_app.py``
(needs ``pip install 'fastsess[starlette]' uvicorn``).

Open http://127.0.0.1:8000/ : a session counter; /login?user=ada logs in (with a new
session id), /logout logs out.  Uses $REDIS_URL, or starts a private Redis.
"""

from __future__ import annotations

import os

import uvicorn
from _redis import redis_url
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fastsess.contrib.starlette import SessionMiddleware, regenerate


async def index(request: Request) -> JSONResponse:
    request.session["visits"] = request.session.get("visits", 0) + 1
    return JSONResponse({"user": request.session.get("user"), "visits": request.session["visits"]})


async def login(request: Request) -> JSONResponse:
    regenerate(request)  # new id at login: no session fixation
    request.session["user"] = request.query_params.get("user", "ada")
    return JSONResponse({"user": request.session["user"]})


async def logout(request: Request) -> JSONResponse:
    request.session.clear()  # deletes the session in Redis and expires the cookie
    return JSONResponse({"user": None})


redis_url()  # SessionMiddleware's default store reads $REDIS_URL
app = Starlette(
    routes=[Route("/", index), Route("/login", login), Route("/logout", logout)],
    middleware=[Middleware(SessionMiddleware, secret_key=os.environ.get("SECRET_KEY", "change-me: a long random secret"))],
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")), log_level="warning")
