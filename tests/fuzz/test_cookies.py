"""The framework drop-ins given any cookie value: a fresh, empty session, never an error.

Flask and Starlette apps on a ``MemoryStore`` (the cookie handling does not depend on
the store) receive requests whose session cookie is random text, a valid cookie with a
character changed, or a valid cookie signed with another secret.  Each answers 200 with
an empty session and, when it sets a cookie, one for a new id; a real signed cookie
finds its session.  Django's cookie carries the bare id: the id checks are fuzzed in
``test_fuzz.py`` (``is_valid_session_id`` through ``CookieSigner.unsign``).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fastsess.contrib._common import CookieSigner

from .test_fuzz import FUZZ_EXAMPLES

SECRET = "fuzz-secret-0123456789"
COOKIE_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters=";")  # what a Cookie header can carry
cookie_values = st.text(COOKIE_CHARS, max_size=120)
examples = settings(max_examples=max(1, FUZZ_EXAMPLES // 4), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def forged_variants(valid: str) -> Any:
    """A valid cookie with one character replaced, truncated, or extended."""
    return st.one_of(
        st.tuples(st.integers(0, len(valid) - 1), st.sampled_from("AZaz09-_.=")).map(lambda t: valid[: t[0]] + t[1] + valid[t[0] + 1 :]),
        st.integers(0, len(valid) - 1).map(lambda n: valid[:n]),
        st.text(COOKIE_CHARS, min_size=1, max_size=5).map(lambda tail: valid + tail),
    )


# --- Flask ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flask_client() -> Any:
    flask = pytest.importorskip("flask")
    from fastsess import MemoryStore
    from fastsess.contrib.flask import FastSession

    app = flask.Flask(__name__)
    app.secret_key = SECRET
    FastSession(app, store=MemoryStore())

    @app.get("/")
    def index() -> Any:
        seen = {k: v for k, v in flask.session.items() if not k.startswith("_")}
        flask.session["n"] = seen.get("n", 0) + 1
        return {"seen": seen}

    return app.test_client(use_cookies=False)


def cookie_in(header: str) -> str:
    match = re.match(r"session=([^;]*)", header)
    assert match, f"no session cookie in {header!r}"
    return match.group(1)


def check_fresh(status: int, body: Any, set_cookie: str, sent: str) -> None:
    assert status == 200
    assert body == {"seen": {}}, f"cookie {sent!r} reached a session: {body}"
    new = cookie_in(set_cookie)
    assert new != sent and CookieSigner(SECRET).unsign(new) is not None


@examples
@given(value=cookie_values)
@example(value="")
@example(value="x" * 43 + "." + "y" * 43)
def test_flask_any_cookie_value_gets_a_fresh_session(flask_client: Any, value: str) -> None:
    response = flask_client.get("/", headers={"Cookie": f"session={value}"})
    check_fresh(response.status_code, response.get_json(), response.headers.get("Set-Cookie", ""), value)


@examples
@given(data=st.data())
def test_flask_a_tampered_cookie_gets_a_fresh_session(flask_client: Any, data: Any) -> None:
    response = flask_client.get("/", headers={"Cookie": "session="})
    valid = cookie_in(response.headers["Set-Cookie"])
    again = flask_client.get("/", headers={"Cookie": f"session={valid}"})
    assert again.get_json() == {"seen": {"n": 1}}  # the real cookie finds its session
    forged = data.draw(forged_variants(valid).filter(lambda v: v.strip(" \t") != valid))  # cookie parsers trim blanks (RFC 6265)
    response = flask_client.get("/", headers={"Cookie": f"session={forged}"})
    check_fresh(response.status_code, response.get_json(), response.headers.get("Set-Cookie", ""), forged)
    other = CookieSigner("another secret").sign(CookieSigner(SECRET).unsign(valid) or "")
    response = flask_client.get("/", headers={"Cookie": f"session={other}"})
    check_fresh(response.status_code, response.get_json(), response.headers.get("Set-Cookie", ""), other)


# --- Starlette ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def starlette_client() -> Any:
    pytest.importorskip("starlette")
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from fastsess.asyncio import MemoryStore
    from fastsess.contrib.starlette import SessionMiddleware

    async def index(request: Request) -> JSONResponse:
        seen = dict(request.session)
        request.session["n"] = seen.get("n", 0) + 1
        return JSONResponse({"seen": seen})

    app = SessionMiddleware(Starlette(routes=[Route("/", index)]), secret_key=SECRET, store=MemoryStore())
    with TestClient(app) as client:
        yield client


def starlette_get(client: Any, value: str) -> Any:
    client.cookies.clear()
    return client.get("/", headers={"Cookie": f"session={value}"})


@examples
@given(value=cookie_values)
@example(value="")
def test_starlette_any_cookie_value_gets_a_fresh_session(starlette_client: Any, value: str) -> None:
    response = starlette_get(starlette_client, value)
    check_fresh(response.status_code, response.json(), response.headers.get("set-cookie", ""), value)


@examples
@given(data=st.data())
def test_starlette_a_tampered_cookie_gets_a_fresh_session(starlette_client: Any, data: Any) -> None:
    valid = cookie_in(starlette_get(starlette_client, "").headers["set-cookie"])
    assert starlette_get(starlette_client, valid).json() == {"seen": {"n": 1}}
    forged = data.draw(forged_variants(valid).filter(lambda v: v.strip(" \t") != valid))  # cookie parsers trim blanks (RFC 6265)
    response = starlette_get(starlette_client, forged)
    check_fresh(response.status_code, response.json(), response.headers.get("set-cookie", ""), forged)
