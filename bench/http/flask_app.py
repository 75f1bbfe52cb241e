"""Flask app of the HTTP benchmark (served by gunicorn; see bench/http_bench.py).

``BENCH_SESSION``: ``fastsess`` (fastsess.contrib.flask), ``usual`` (Flask-Session's
Redis interface, default settings) or ``none`` (Flask's session is never touched).
"""

from __future__ import annotations

import os

from flask import Flask, jsonify, session

MODE = os.environ.get("BENCH_SESSION", "fastsess")
REDIS_URL = os.environ["REDIS_URL"]

app = Flask(__name__)
app.secret_key = "bench-only secret, not for production"
if MODE == "fastsess":
    from fastsess.contrib.flask import FastSession

    app.config["FASTSESS_REDIS_URL"] = REDIS_URL
    FastSession(app)
elif MODE == "usual":
    import redis
    from flask_session import Session

    app.config["SESSION_TYPE"] = "redis"
    app.config["SESSION_REDIS"] = redis.Redis.from_url(REDIS_URL)
    Session(app)


@app.get("/login")
def login():  # type: ignore[no-untyped-def]
    """Create the session the load generator then sends back."""
    if MODE != "none":
        session["user"] = "ada"
        session["n"] = 0
    return jsonify(user="ada")


@app.get("/read")
def read():  # type: ignore[no-untyped-def]
    """Read the session, change nothing."""
    return jsonify(user=session.get("user") if MODE != "none" else "ada")


@app.get("/write")
def write():  # type: ignore[no-untyped-def]
    """Read and change the session: the store writes it back."""
    n = 0
    if MODE != "none":
        n = session["n"] = session.get("n", 0) + 1
    return jsonify(n=n)
