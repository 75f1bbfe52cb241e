"""``fastsess.contrib.starlette.SessionMiddleware`` with Starlette's TestClient against the private Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from fastsess import StoreUnavailable
from fastsess.asyncio import ClusteredRedisStore, MemoryStore
from fastsess.contrib._common import CookieSigner
from fastsess.contrib.starlette import SessionMiddleware, regenerate
from fastsess.errors import ConfigError
from fastsess.stores.base import is_valid_session_id, new_session_id

from .conftest import redis_writes, session_keys

SECRET = "starlette-tests-secret"


async def anon(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def read(request: Request) -> JSONResponse:
    return JSONResponse({"user": request.session.get("user"), "count": request.session.get("count", 0)})


async def incr(request: Request) -> JSONResponse:
    request.session["count"] = request.session.get("count", 0) + 1
    return JSONResponse({"count": request.session["count"]})


async def login(request: Request) -> JSONResponse:
    if request.query_params.get("style") == "await":
        await regenerate(request)
    else:
        regenerate(request)
    request.session["user"] = request.path_params["user"]
    return JSONResponse({"user": request.path_params["user"]})


async def logout(request: Request) -> PlainTextResponse:
    request.session.clear()
    return PlainTextResponse("bye")


async def append(request: Request) -> JSONResponse:
    items = request.session.setdefault("items", [])
    items.append(request.path_params["item"])
    request.session.modified = True  # type: ignore[attr-defined]
    return JSONResponse({"items": items})


ROUTES = [
    Route("/anon", anon), Route("/read", read), Route("/incr", incr), Route("/login/{user}", login),
    Route("/logout", logout), Route("/append/{item}", append),
]


def make_app(**options: Any) -> Starlette:
    options.setdefault("secret_key", SECRET)
    return Starlette(routes=ROUTES, middleware=[Middleware(SessionMiddleware, **options)])


@pytest.fixture
def client(redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """An app on the default store (a ClusteredRedisStore from REDIS_URL), closed at lifespan shutdown."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    with TestClient(make_app()) as test_client:
        yield test_client


def sid_of(client: TestClient, name: str = "session") -> str:
    sid = CookieSigner(SECRET).unsign(client.cookies.get(name))
    assert sid is not None
    return sid


PREFIX = "fastsess:"  # the default store's prefix


def test_anonymous_requests_write_nothing_and_set_no_cookie(client: TestClient, redis_client: redis.Redis) -> None:
    before = redis_writes(redis_client)
    for url in ("/anon", "/read"):
        response = client.get(url)
        assert response.status_code == 200 and "set-cookie" not in response.headers
    assert redis_writes(redis_client) == before
    assert session_keys(redis_client, PREFIX) == []


@pytest.mark.parametrize("style", ["call", "await"])
def test_login_regenerates_and_logout_deletes(style: str, client: TestClient, redis_client: redis.Redis) -> None:
    assert client.get("/incr").json() == {"count": 1}
    anon = sid_of(client)
    response = client.get("/login/ada", params={"style": style})
    header = response.headers["set-cookie"]
    assert "httponly" in header and "samesite=lax" in header and "Max-Age=1209600" in header
    assert "secure" not in header
    user_sid = sid_of(client)
    assert user_sid != anon and is_valid_session_id(user_sid)
    assert session_keys(redis_client, PREFIX) == [(PREFIX + user_sid).encode()]
    assert client.get("/read").json() == {"user": "ada", "count": 1}
    response = client.get("/logout")
    assert "Max-Age=0" in response.headers["set-cookie"]
    assert session_keys(redis_client, PREFIX) == []
    assert client.get("/read").json() == {"user": None, "count": 0}


def test_default_store_is_clustered_with_max_age_ttl(redis_url: str, monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    app = make_app(max_age=300)
    with TestClient(app) as test_client:
        middleware = app.middleware_stack
        while not isinstance(middleware, SessionMiddleware):
            middleware = middleware.app  # type: ignore[attr-defined]
        assert isinstance(middleware.store, ClusteredRedisStore) and middleware.store.coordinator is not None
        test_client.get("/incr")
        assert 290 <= redis_client.ttl(PREFIX + sid_of(test_client)) <= 300


def test_read_only_requests_write_nothing(client: TestClient, redis_client: redis.Redis) -> None:
    client.get("/login/ada")
    before = redis_writes(redis_client)
    for _ in range(3):
        response = client.get("/read")
        assert response.json()["user"] == "ada" and "set-cookie" not in response.headers
    assert redis_writes(redis_client) == before


def test_cookie_options(redis_url: str, prefix: str) -> None:
    from starlette.datastructures import Secret

    app = make_app(store=ClusteredRedisStore(url=redis_url, prefix=prefix), session_cookie="sid", max_age=None,
                   path="/app", same_site="strict", https_only=True, domain="example.test", partitioned=True,
                   secret_key=Secret(SECRET))
    with TestClient(app, base_url="https://example.test") as test_client:
        header = test_client.get("/incr").headers["set-cookie"]
        test_client.portal.call(app.user_middleware[0].kwargs["store"].close)  # type: ignore[union-attr]
    assert header.startswith("sid=")
    for part in ("path=/app", "httponly", "samesite=strict", "secure", "domain=example.test", "partitioned"):
        assert part in header
    assert "Max-Age" not in header
    assert CookieSigner(SECRET).unsign(header.split(";")[0].removeprefix("sid=")) is not None  # Secret(...) is its str


def _bad_cookies() -> list[str]:
    live = new_session_id()
    return [
        "garbage", live, live + "." + "A" * 43, CookieSigner("another secret").sign(live),
        CookieSigner(SECRET).sign(new_session_id()), "\u00e9" * 87,
    ]


@pytest.mark.parametrize("index", range(6))
def test_bad_cookie_starts_a_fresh_session(index: int, client: TestClient, redis_client: redis.Redis) -> None:
    bad = _bad_cookies()[index]
    raw = [(b"cookie", b"session=" + bad.encode())]  # raw bytes: also non-ASCII garbage
    response = client.get("/read", headers=raw)
    assert response.status_code == 200 and response.json() == {"user": None, "count": 0}
    response = client.get("/login/mallory", headers=raw)
    assert response.status_code == 200
    value = response.headers["set-cookie"].split(";")[0].removeprefix("session=")
    sid = CookieSigner(SECRET).unsign(value)
    assert sid is not None and sid != bad[:43]
    assert session_keys(redis_client, PREFIX) == [(PREFIX + sid).encode()]
    # a plain write (no login) with the bad cookie: a fresh id too
    response = client.get("/incr", headers=raw)
    assert response.json() == {"count": 1}
    written = CookieSigner(SECRET).unsign(response.headers["set-cookie"].split(";")[0].removeprefix("session="))
    assert written not in (None, sid, bad[:43])
    assert sorted(session_keys(redis_client, PREFIX)) == sorted([(PREFIX + sid).encode(), (PREFIX + str(written)).encode()])


def test_a_live_id_without_signature_is_not_adopted(client: TestClient, redis_url: str) -> None:
    client.get("/login/ada")
    victim_sid = sid_of(client)
    victim_cookie = client.cookies.get("session")
    client.cookies.clear()
    client.cookies.set("session", victim_sid, domain="testserver.local")
    assert client.get("/read").json() == {"user": None, "count": 0}
    client.get("/incr")
    assert sid_of(client) != victim_sid
    client.cookies.clear()
    client.cookies.set("session", victim_cookie, domain="testserver.local")
    assert client.get("/read").json() == {"user": "ada", "count": 0}


def test_session_deleted_elsewhere_is_not_resurrected(client: TestClient, redis_client: redis.Redis) -> None:
    client.get("/login/ada")
    sid = sid_of(client)
    redis_client.delete(PREFIX + sid)  # behind the local cache's back: this node may still serve its copy
    response = client.get("/incr")
    assert response.status_code == 200
    assert redis_client.exists(PREFIX + sid) == 0
    assert "Max-Age=0" in response.headers["set-cookie"]  # the dead id's cookie is dropped


def test_nested_in_place_change_with_modified_is_saved(client: TestClient) -> None:
    client.get("/append/a")
    assert client.get("/append/b").json() == {"items": ["a", "b"]}
    assert client.get("/append/c").json() == {"items": ["a", "b", "c"]}


def test_sync_store_is_refused() -> None:
    from fastsess import MemoryStore as SyncMemoryStore

    with pytest.raises(ConfigError):
        SessionMiddleware(make_app(), secret_key=SECRET, store=SyncMemoryStore())  # type: ignore[arg-type]


def test_no_store_and_no_redis_url_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(ConfigError):
        SessionMiddleware(make_app(), secret_key=SECRET)


def test_any_asyncio_store_works() -> None:
    with TestClient(make_app(store=MemoryStore())) as test_client:
        test_client.get("/incr")
        assert test_client.get("/incr").json() == {"count": 2}


def test_redis_down_with_a_valid_cookie_is_a_server_error(redis_server_factory: Any, prefix: str) -> None:
    server = redis_server_factory()
    store = ClusteredRedisStore(url=server.url, prefix=prefix)
    app = make_app(store=store)
    with TestClient(app) as test_client:
        test_client.get("/login/ada")
        assert test_client.get("/read").json()["user"] == "ada"
        server.stop()
        # once the listener has seen the drop the local cache is bypassed (until then a
        # cached copy may still answer, by the store's design)
        deadline = time.monotonic() + 10
        while store.coordinator.stats.subscribed:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(StoreUnavailable):
            test_client.get("/read")
    with TestClient(app, raise_server_exceptions=False, cookies=dict(test_client.cookies)) as quiet:
        assert quiet.get("/read").status_code == 500


def test_a_read_refreshes_the_ttl_once_the_refresh_is_due(redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    with TestClient(make_app(max_age=4)) as test_client:
        test_client.get("/login/ada")
        before = redis_writes(redis_client)
        assert "set-cookie" not in test_client.get("/read").headers
        assert redis_writes(redis_client) == before  # not due yet
        time.sleep(2.1)  # past refresh_fraction (0.5) of the 4 s lifetime
        response = test_client.get("/read")
        assert response.json()["user"] == "ada"
        assert "Max-Age=4" in response.headers["set-cookie"]  # the cookie slides with the TTL
        assert redis_writes(redis_client) > before
        assert redis_client.ttl(PREFIX + sid_of(test_client)) >= 3


async def mutate_nested_quietly(request: Request) -> JSONResponse:
    items = request.session.get("items", [])
    items.append("leak")  # in place, without modified = True: must not reach any other request
    return JSONResponse({"items": items})


def test_in_place_change_without_modified_stays_in_its_request(client: TestClient) -> None:
    client.app.router.routes.append(Route("/mutate", mutate_nested_quietly))  # type: ignore[attr-defined]
    client.get("/append/a")
    assert client.get("/mutate").json() == {"items": ["a", "leak"]}
    assert client.get("/mutate").json() == {"items": ["a", "leak"]}  # the cached copy is untouched
    assert client.get("/append/b").json() == {"items": ["a", "b"]}


@pytest.mark.parametrize(
    "header",
    [
        "session=abc", "a=1; session=abc; b=2", "session=abc; session=def", " session = abc ",
        "xsession=abc", "session", "session=", 'session="quoted\\"x"', "a=1;;session=abc=def", "s=1",
        "session=abc; xsession=zzz", "=session=abc",
    ],
)
def test_session_cookie_is_read_as_starlette_reads_cookies(header: str) -> None:
    from starlette.requests import HTTPConnection

    middleware = SessionMiddleware(make_app(), secret_key=SECRET, store=MemoryStore())
    scope: dict[str, Any] = {"type": "http", "headers": [(b"host", b"x"), (b"cookie", header.encode("latin-1"))]}
    assert middleware._read_cookie(scope) == HTTPConnection(scope).cookies.get("session")
    # several cookie headers (HTTP/2 may split them): read in order, the last pair named "session" wins
    scope["headers"].append((b"cookie", b"other=1"))
    assert middleware._read_cookie(scope) == HTTPConnection({"type": "http", "headers": scope["headers"][:2]}).cookies.get("session")
    scope["headers"].append((b"cookie", b"session=last"))
    assert middleware._read_cookie(scope) == "last"


def test_signature_is_starlettes_own_plus_store_and_migrate_prefix() -> None:
    import inspect

    from starlette.middleware.sessions import SessionMiddleware as StarletteSessionMiddleware

    ours = inspect.signature(SessionMiddleware).parameters
    theirs = inspect.signature(StarletteSessionMiddleware).parameters
    for name, parameter in theirs.items():
        assert name in ours, name
        assert ours[name].default == parameter.default, name
    assert {"store", "migrate_prefix"} <= set(ours) - set(theirs) <= {"store", "migrate_prefix", "partitioned"}  # partitioned: newer Starlettes only
