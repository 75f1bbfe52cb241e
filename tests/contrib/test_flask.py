"""``fastsess.contrib.flask.FastSession`` with Flask's test client against the private Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from flask import Flask, jsonify, session

from fastsess import StoreUnavailable
from fastsess.contrib._common import CookieSigner
from fastsess.contrib.flask import FastSession
from fastsess.errors import ConfigError
from fastsess.stores.base import is_valid_session_id, new_session_id

from .conftest import redis_writes, session_keys

SECRET = "flask-tests-secret"


def make_app(**config: Any) -> Flask:
    app = Flask(__name__)
    app.secret_key = SECRET
    app.config.update(config)

    @app.get("/anon")
    def anon() -> str:
        return "ok"

    @app.get("/read")
    def read() -> Any:
        return jsonify(user=session.get("user"), count=session.get("count", 0))

    @app.get("/incr")
    def incr() -> Any:
        session["count"] = session.get("count", 0) + 1
        return jsonify(count=session["count"])

    @app.get("/login/<user>")
    def login(user: str) -> Any:
        app.session_interface.regenerate(session)  # type: ignore[attr-defined]
        session["user"] = user
        return jsonify(user=user)

    @app.get("/logout")
    def logout() -> str:
        session.clear()
        return "bye"

    @app.get("/append/<item>")
    def append(item: str) -> Any:
        items = session.setdefault("items", [])
        items.append(item)
        session.modified = True
        return jsonify(items=items)

    FastSession(app)
    return app


@pytest.fixture
def apps() -> Iterator[list[Flask]]:
    made: list[Flask] = []
    yield made
    for app in made:
        app.session_interface.store.close()  # type: ignore[attr-defined]


def listening(app: Flask) -> Flask:
    """``app`` once its store's listener has subscribed (the store's constructor does not
    wait for it; until then the local cache is bypassed and reads go to Redis)."""
    assert app.session_interface.store.coordinator.wait_subscribed(5.0)  # type: ignore[attr-defined]
    return app


@pytest.fixture
def app(apps: list[Flask], redis_url: str, prefix: str) -> Flask:
    made = make_app(FASTSESS_REDIS_URL=redis_url, SESSION_KEY_PREFIX=prefix)
    apps.append(made)
    return listening(made)


def cookie_of(client: Any, name: str = "session") -> str | None:
    cookie = client.get_cookie(name)
    return None if cookie is None else cookie.value


def sid_of(client: Any) -> str:
    value = cookie_of(client)
    sid = CookieSigner(SECRET).unsign(value)
    assert sid is not None
    return sid


def test_anonymous_requests_write_nothing_and_set_no_cookie(app: Flask, redis_client: redis.Redis, prefix: str) -> None:
    client = app.test_client()
    before = redis_writes(redis_client)
    for url in ("/anon", "/read"):
        response = client.get(url)
        assert response.status_code == 200
        assert "Set-Cookie" not in response.headers
    assert redis_writes(redis_client) == before
    assert session_keys(redis_client, prefix) == []


def test_login_regenerates_and_logout_deletes(app: Flask, redis_client: redis.Redis, prefix: str) -> None:
    client = app.test_client()
    assert client.get("/incr").json == {"count": 1}
    anon = sid_of(client)
    response = client.get("/login/ada")
    header = response.headers["Set-Cookie"]
    assert "HttpOnly" in header
    user_sid = sid_of(client)
    assert user_sid != anon and is_valid_session_id(user_sid)
    assert session_keys(redis_client, prefix) == [(prefix + user_sid).encode()]  # old id deleted
    assert client.get("/read").json == {"user": "ada", "count": 1}
    response = client.get("/logout")
    assert cookie_of(client) is None  # the cookie was deleted
    assert session_keys(redis_client, prefix) == []
    assert client.get("/read").json == {"user": None, "count": 0}


def test_login_on_a_new_session_stores_once_under_a_fresh_id(app: Flask, redis_client: redis.Redis, prefix: str) -> None:
    client = app.test_client()
    client.get("/login/ada")
    assert session_keys(redis_client, prefix) == [(prefix + sid_of(client)).encode()]


def test_cookie_is_the_signed_id(app: Flask) -> None:
    client = app.test_client()
    client.get("/incr")
    value = cookie_of(client)
    assert value is not None and len(value) == 87 and value[43] == "."
    assert CookieSigner(SECRET).unsign(value) == value[:43]
    assert CookieSigner("another secret").unsign(value) is None


def test_read_only_requests_write_nothing(app: Flask, redis_client: redis.Redis) -> None:
    client = app.test_client()
    client.get("/login/ada")
    before = redis_writes(redis_client)
    for _ in range(3):
        assert client.get("/read").json["user"] == "ada"
    assert redis_writes(redis_client) == before


def test_refresh_each_request_off_sets_no_cookie_on_reads(apps: list[Flask], redis_url: str, prefix: str) -> None:
    app = make_app(FASTSESS_REDIS_URL=redis_url, SESSION_KEY_PREFIX=prefix, SESSION_REFRESH_EACH_REQUEST=False)
    apps.append(app)
    client = app.test_client()
    client.get("/incr")
    assert "Set-Cookie" not in client.get("/read").headers
    on = make_app(FASTSESS_REDIS_URL=redis_url, SESSION_KEY_PREFIX=prefix)
    apps.append(on)
    client = on.test_client()
    client.get("/incr")
    assert "Set-Cookie" in client.get("/read").headers  # permanent + refresh: Flask's default


def test_lifetime_is_the_redis_ttl_and_cookie_expiry(apps: list[Flask], redis_url: str, redis_client: redis.Redis, prefix: str) -> None:
    app = make_app(FASTSESS_REDIS_URL=redis_url, SESSION_KEY_PREFIX=prefix, PERMANENT_SESSION_LIFETIME=timedelta(minutes=5))
    apps.append(app)
    client = app.test_client()
    header = client.get("/incr").headers["Set-Cookie"]
    assert "Expires=" in header
    assert 290 <= redis_client.ttl(prefix + sid_of(client)) <= 300


def test_non_permanent_session_cookie_has_no_expiry(apps: list[Flask], redis_url: str, prefix: str) -> None:
    app = make_app(FASTSESS_REDIS_URL=redis_url, SESSION_KEY_PREFIX=prefix, SESSION_PERMANENT=False)
    apps.append(app)
    client = app.test_client()
    header = client.get("/incr").headers["Set-Cookie"]
    assert "Expires=" not in header and "HttpOnly" in header


def test_cookie_flags_from_config_and_httponly_always(apps: list[Flask], redis_url: str, prefix: str) -> None:
    app = make_app(
        FASTSESS_REDIS_URL=redis_url, SESSION_KEY_PREFIX=prefix, SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_SAMESITE="Strict", SESSION_COOKIE_HTTPONLY=False, SESSION_COOKIE_NAME="sid",
        SESSION_COOKIE_PATH="/app", SESSION_COOKIE_DOMAIN="example.test",
    )
    apps.append(app)
    header = app.test_client().get("/incr", base_url="https://example.test").headers["Set-Cookie"]
    assert header.startswith("sid=")
    for part in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/app", "Domain=example.test"):
        assert part in header


def _bad_cookies(redis_client: redis.Redis, prefix: str) -> list[str]:
    live = new_session_id()
    return [
        "garbage",
        live,  # a bare id
        live + "." + "A" * 43,  # a bad signature
        CookieSigner("another secret").sign(live),  # signed with another key
        CookieSigner(SECRET).sign(new_session_id()),  # well formed, validly signed, not stored
        "\u00e9" * 87,
    ]


@pytest.mark.parametrize("index", range(6))
def test_bad_cookie_starts_a_fresh_session(index: int, app: Flask, redis_client: redis.Redis, prefix: str) -> None:
    bad = _bad_cookies(redis_client, prefix)[index]
    client = app.test_client()
    client.set_cookie("session", bad)
    response = client.get("/read")
    assert response.status_code == 200 and response.json == {"user": None, "count": 0}
    response = client.get("/login/mallory")
    assert response.status_code == 200
    sid = sid_of(client)
    assert bad[:43] != sid
    assert session_keys(redis_client, prefix) == [(prefix + sid).encode()]
    # a plain write (no login) with the bad cookie: a fresh id too
    other = app.test_client()
    other.set_cookie("session", bad)
    assert other.get("/incr").json == {"count": 1}
    assert sid_of(other) not in (sid, bad[:43])
    assert sorted(session_keys(redis_client, prefix)) == sorted([(prefix + sid).encode(), (prefix + sid_of(other)).encode()])


def test_a_live_id_without_signature_is_not_adopted(app: Flask, redis_client: redis.Redis, prefix: str) -> None:
    victim = app.test_client()
    victim.get("/login/ada")
    victim_sid = sid_of(victim)
    attacker = app.test_client()
    attacker.set_cookie("session", victim_sid)
    assert attacker.get("/read").json == {"user": None, "count": 0}
    attacker.get("/incr")
    assert sid_of(attacker) != victim_sid
    assert victim.get("/read").json == {"user": "ada", "count": 0}


def test_session_deleted_elsewhere_is_not_resurrected(app: Flask, redis_client: redis.Redis, prefix: str) -> None:
    client = app.test_client()
    client.get("/login/ada")
    sid = sid_of(client)
    store = app.session_interface.store  # type: ignore[attr-defined]
    assert store.load(sid) is not None  # now in this node's cache
    redis_client.delete(prefix + sid)  # gone behind the cache's back
    response = client.get("/incr")
    assert response.status_code == 200
    assert redis_client.exists(prefix + sid) == 0
    assert cookie_of(client) is None  # the dead id's cookie is dropped


def test_nested_in_place_change_with_modified_is_saved_and_isolated(app: Flask) -> None:
    client = app.test_client()
    client.get("/append/a")
    assert client.get("/append/b").json == {"items": ["a", "b"]}
    store = app.session_interface.store  # type: ignore[attr-defined]
    assert store.load(sid_of(client))["items"] == ["a", "b"]


def test_flask_session_style_config_switches_with_one_line(apps: list[Flask], redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        app = make_app(SESSION_TYPE="redis", SESSION_REDIS=client, SESSION_KEY_PREFIX=prefix, SESSION_PERMANENT=True)
        apps.append(app)
        test_client = app.test_client()
        test_client.get("/login/ada")
        assert test_client.get("/read").json == {"user": "ada", "count": 0}
        assert client.exists(prefix + sid_of(test_client)) == 1
    finally:
        app.session_interface.store.close()  # type: ignore[attr-defined]
        client.close()


def test_missing_redis_config_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        make_app()


def test_missing_secret_key_fails_loudly(apps: list[Flask], redis_url: str, prefix: str) -> None:
    app = make_app(FASTSESS_REDIS_URL=redis_url, SESSION_KEY_PREFIX=prefix)
    apps.append(app)
    app.secret_key = None
    app.testing = True
    with pytest.raises(RuntimeError):
        app.test_client().get("/read")


def test_redis_down_with_a_valid_cookie_is_a_server_error(apps: list[Flask], redis_server_factory: Any, prefix: str) -> None:
    server = redis_server_factory()
    app = make_app(FASTSESS_REDIS_URL=server.url, SESSION_KEY_PREFIX=prefix)
    apps.append(app)
    client = app.test_client()
    client.get("/login/ada")
    assert client.get("/read").json["user"] == "ada"
    server.stop()
    # once the listener has seen the drop the local cache is bypassed (until then a
    # cached copy may still answer, by the store's design)
    store = app.session_interface.store  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while store.coordinator.stats.subscribed:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    app.testing = True
    with pytest.raises(StoreUnavailable):
        client.get("/read")
    app.testing = False
    app.config["PROPAGATE_EXCEPTIONS"] = False
    assert client.get("/read").status_code == 500


def test_a_read_refreshes_the_ttl_once_the_refresh_is_due(apps: list[Flask], redis_url: str, redis_client: redis.Redis, prefix: str) -> None:
    app = make_app(FASTSESS_REDIS_URL=redis_url, SESSION_KEY_PREFIX=prefix, PERMANENT_SESSION_LIFETIME=4)
    apps.append(listening(app))
    client = app.test_client()
    client.get("/login/ada")
    before = redis_writes(redis_client)
    client.get("/read")
    assert redis_writes(redis_client) == before  # not due yet
    time.sleep(2.1)  # past refresh_fraction (0.5) of the 4 s lifetime
    assert client.get("/read").json["user"] == "ada"
    assert redis_writes(redis_client) > before
    assert redis_client.ttl(prefix + sid_of(client)) >= 3


def test_init_app_and_a_custom_store() -> None:
    from fastsess import MemoryStore

    store = MemoryStore()
    app = Flask(__name__)
    app.secret_key = SECRET

    @app.get("/incr")
    def incr() -> Any:
        session["count"] = session.get("count", 0) + 1
        return jsonify(count=session["count"])

    interface = FastSession(store=store).init_app(app)
    assert app.session_interface is interface and interface.store is store
    client = app.test_client()
    client.get("/incr")
    assert client.get("/incr").json == {"count": 2}
    assert store.count() == 1


def test_cluster_config_setting(apps: list[Flask], redis_url: str, prefix: str) -> None:
    plain = make_app(FASTSESS_REDIS_URL=redis_url, SESSION_KEY_PREFIX=prefix, FASTSESS_CLUSTER={"enabled": False})
    apps.append(plain)
    assert plain.session_interface.store.coordinator is None  # type: ignore[attr-defined]
    named = make_app(FASTSESS_REDIS_URL=redis_url, SESSION_KEY_PREFIX=prefix, FASTSESS_CLUSTER={"channel": "flask:inv"})
    apps.append(named)
    assert named.session_interface.store.config.channel == "flask:inv"  # type: ignore[attr-defined]
    client = plain.test_client()
    client.get("/incr")
    assert client.get("/incr").json == {"count": 2}


@pytest.mark.parametrize("config", [
    {},
    {"SESSION_PERMANENT": False},
    {"SESSION_COOKIE_SECURE": True, "SESSION_COOKIE_SAMESITE": "Strict", "SESSION_COOKIE_NAME": "sid",
     "SESSION_COOKIE_PATH": "/a b;c", "SESSION_COOKIE_DOMAIN": ".example.test:8000"},
    {"SESSION_COOKIE_PARTITIONED": True, "SESSION_COOKIE_SAMESITE": None, "SESSION_COOKIE_NAME": "s\u00e9ssion"},
    {"PERMANENT_SESSION_LIFETIME": timedelta(seconds=5)},
])
def test_set_cookie_header_is_werkzeugs_byte_for_byte(config: dict[str, Any]) -> None:
    """The read path's Set-Cookie comes from a per-second template: it is exactly the header
    ``response.set_cookie`` writes for the same arguments, second after second."""
    from flask.sessions import SessionMixin

    from fastsess import MemoryStore
    from fastsess.contrib.flask import FlaskSession

    app = Flask(__name__)
    app.secret_key = SECRET
    app.config.update(config)
    interface = FastSession(app, store=MemoryStore()).init_app(app)
    sessions = [FlaskSession({"user": "ada"}, sid=new_session_id(), permanent=app.config.get("SESSION_PERMANENT", True)) for _ in range(3)]

    class Plain(app.response_class):  # type: ignore[name-defined,misc]
        def set_cookie(self, *args: Any, **kwargs: Any) -> None:  # an override: the drop-in calls it as before
            super().set_cookie(*args, **kwargs)

    def werkzeugs(session: SessionMixin) -> str:
        response = Plain()
        interface._set_cookie(app, session, response)  # type: ignore[arg-type]
        return response.headers["Set-Cookie"]  # type: ignore[no-any-return]

    lifetime = app.permanent_session_lifetime
    with app.test_request_context():
        for step in range(3):  # the expiry moves by whole seconds, as it does over time
            app.permanent_session_lifetime = lifetime + timedelta(seconds=step)
            for session in sessions:
                response = app.response_class()
                interface._set_cookie(app, session, response)  # type: ignore[arg-type]
                assert interface._cookie_template is not None and interface._cookie_template.head is not None
                assert response.headers.getlist("Set-Cookie") == [werkzeugs(session)]


def test_oversized_cookie_warns_on_every_response(apps: list[Flask], redis_url: str, prefix: str) -> None:
    """As werkzeug's set_cookie: a cookie over MAX_COOKIE_SIZE warns each time it is set."""
    app = make_app(FASTSESS_REDIS_URL=redis_url, SESSION_KEY_PREFIX=prefix, MAX_COOKIE_SIZE=60)
    apps.append(app)
    client = app.test_client()
    for path in ("/incr", "/read", "/read"):
        with pytest.warns(UserWarning, match="cookie is too large"):
            assert "Set-Cookie" in client.get(path).headers
