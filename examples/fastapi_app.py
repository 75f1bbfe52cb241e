"""FastAPI on fastsess: ``python examples/fastapi_app.py``
(needs ``pip install 'fastsess[starlette]' fastapi uvicorn``).

Open http://127.0.0.1:8000/ : a session counter; /login?user=ada logs in (with a new
session id), /logout logs out.  Uses $REDIS_URL, or starts a private Redis.
"""

from __future__ import annotations

import os

import uvicorn
from _redis import redis_url
from fastapi import FastAPI, Request

from fastsess.contrib.starlette import SessionMiddleware, regenerate

redis_url()  # SessionMiddleware's default store reads $REDIS_URL
app = FastAPI()
app.add_middleware(SessionMiddleware, secret_key=os.environ.get("SECRET_KEY", "change-me: a long random secret"))


@app.get("/")
async def index(request: Request) -> dict[str, object]:
    request.session["visits"] = request.session.get("visits", 0) + 1
    return {"user": request.session.get("user"), "visits": request.session["visits"]}


@app.get("/login")
async def login(request: Request, user: str = "ada") -> dict[str, str]:
    await regenerate(request)  # new id at login: no session fixation
    request.session["user"] = user
    return {"user": user}


@app.get("/logout")
async def logout(request: Request) -> dict[str, None]:
    request.session.clear()  # deletes the session in Redis and expires the cookie
    return {"user": None}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")), log_level="warning")
