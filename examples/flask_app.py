"""Flask on fastsess: ``python examples/flask_app.py`` (needs ``pip install 'fastsess[flask]'``).

Open http://127.0.0.1:8000/ : a session counter; /login?user=ada logs in (with a new
session id), /logout logs out.  Uses $REDIS_URL, or starts a private Redis.
"""

from __future__ import annotations

import os

from _redis import redis_url
from flask import Flask, jsonify, request, session

from fastsess.contrib.flask import FastSession

app = Flask(__name__)
app.secret_key = os.environ.get("SECRET_KEY", "change-me: a long random secret")
app.config["FASTSESS_REDIS_URL"] = redis_url()
FastSession(app)


@app.get("/")
def index():  # type: ignore[no-untyped-def]
    session["visits"] = session.get("visits", 0) + 1
    return jsonify(user=session.get("user"), visits=session["visits"])


@app.get("/login")
def login():  # type: ignore[no-untyped-def]
    app.session_interface.regenerate(session)  # new id at login: no session fixation
    session["user"] = request.args.get("user", "ada")
    return jsonify(user=session["user"])


@app.get("/logout")
def logout():  # type: ignore[no-untyped-def]
    session.clear()  # deletes the session in Redis and the cookie
    return jsonify(user=None)


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
