"""Starlette app of the HTTP benchmark (served by uvicorn; see bench/http_bench.py).

``BENCH_SESSION``: ``fastsess`` (fastsess.contrib.starlette.SessionMiddleware),
``usual`` (starsessions' SessionMiddleware + autoload on its RedisStore) or ``none``
(no session middleware).  FastAPI runs the same ASGI middleware.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

MODE = os.environ.get("BENCH_SESSION", "fastsess")
REDIS_URL = os.environ["REDIS_URL"]
SECRET = "bench-only secret, not for production"

middleware: list[Middleware] = []
if MODE == "fastsess":
    from fastsess.contrib.starlette import SessionMiddleware

    middleware = [Middleware(SessionMiddleware, secret_key=SECRET)]  # store from $REDIS_URL
elif MODE == "usual":
    from starsessions import SessionAutoloadMiddleware
    from starsessions import SessionMiddleware as StarSessionMiddleware
    from starsessions.stores.redis import RedisStore

    middleware = [
        Middleware(StarSessionMiddleware, store=RedisStore(REDIS_URL), lifetime=14 * 24 * 3600),
        Middleware(SessionAutoloadMiddleware),
    ]


async def login(request: Request) -> JSONResponse:
    """Create the session the load generator then sends back."""
    if MODE != "none":
        request.session["user"] = "ada"
        request.session["n"] = 0
    return JSONResponse({"user": "ada"})


async def read(request: Request) -> JSONResponse:
    """Read the session, change nothing."""
    return JSONResponse({"user": request.session.get("user") if MODE != "none" else "ada"})


async def write(request: Request) -> JSONResponse:
    """Read and change the session: the store writes it back."""
    n = 0
    if MODE != "none":
        n = request.session["n"] = request.session.get("n", 0) + 1
    return JSONResponse({"n": n})


app = Starlette(routes=[Route("/login", login), Route("/read", read), Route("/write", write)], middleware=middleware)
