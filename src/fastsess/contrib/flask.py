"""Flask sessions on fastsess: ``FastSession(app)`` installs a ``SessionInterface``.

Config (``app.config``):

* ``FASTSESS_REDIS_URL`` (a URL) or ``SESSION_REDIS`` (an existing binary
  ``redis.Redis``/``RedisCluster`` client, as with Flask-Session); or pass
  ``store=`` (any sync fastsess store) to ``FastSession``.
* ``FASTSESS_CLUSTER``: optional dict of ``ClusterConfig`` fields.
* ``FASTSESS_BREAKER_THRESHOLD`` / ``FASTSESS_BREAKER_COOLDOWN``: optional, the store's
  circuit breaker (``breaker_threshold``/``breaker_cooldown``; defaults 5 and 1.0 s).
* ``FASTSESS_ENCRYPTION_KEYS``: optional list of 32-byte keys, as base64 texts (or a
  ``fastsess.Encryption``): sessions are stored encrypted (first key encrypts, all
  decrypt; see docs/encryption.md).  Not ``SECRET_KEY``, nor derived from it.
* ``SESSION_KEY_PREFIX`` (default ``"fastsess:"``), ``SESSION_PERMANENT`` (default
  True), ``PERMANENT_SESSION_LIFETIME`` (the Redis TTL, and the cookie's lifetime
  when permanent), ``SESSION_REFRESH_EACH_REQUEST`` and Flask's ``SESSION_COOKIE_*``
  keys (name ``session`` by default).  The cookie is always HttpOnly.

The cookie holds the session id signed with HMAC-SHA256 under a key derived from
``SECRET_KEY`` (see ``_common.CookieSigner``).  A missing, forged or unknown id
gives a fresh anonymous session; a client-chosen id is never adopted.  When
Redis fails, the request fails with ``fastsess.StoreUnavailable``.

``app.session_interface.regenerate(flask.session)`` moves the session to a new id
(call it at login); the response carries the new cookie.
``app.session_interface.bind(flask.session, str(user.id))`` at login and
``app.session_interface.log_out_everywhere(str(user.id), keep=flask.session)`` after a
password change: see the store's ``bind``/``delete_all``.

Zero-logout migration from Flask-Session's Redis backend: set
``FASTSESS_MIGRATE_PREFIX`` to the prefix Flask-Session used (its default is
``"session:"``; same Redis as the store).  A cookie fastsess did not sign is then
read as a Flask-Session id (bare, or signed by Flask-Session's ``SESSION_USE_SIGNER``).
Its session moves to fastsess under an id derived from it (``_legacy.migrated_session_id``):
a request with it reads Flask-Session's key, decodes it (msgpack or JSON; pickle only
with ``FASTSESS_MIGRATE_PICKLE = True``, through an allow-list unpickler), writes it
under the derived id if nothing is there yet (so concurrent requests carrying the old
cookie end with one session) and deletes the old key; once that key is gone, the
session under the derived id is served.  Each such response sets the signed cookie of
the derived id.  An old cookie
Flask-Session does not hold (and never held) gets a fresh session, as any unknown cookie.
"""

from __future__ import annotations

import logging
import warnings
from datetime import datetime, timedelta
from typing import Any

from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin
from werkzeug.datastructures import CallbackDict
from werkzeug.http import dump_cookie
from werkzeug.sansio.response import Response as SansIOResponse

from ..config import ClusterConfig
from ..crypto import encryption_from_setting
from ..errors import ConfigError, SessionCorrupt
from ..session import Session
from ..stores.base import DEFAULT_PREFIX, SessionStore, new_session_id
from ..stores.clustered import ClusteredRedisStore
from ..stores.redis import REDIS_ERRORS, map_redis_error
from ._common import CookieSigner, mark_principal, plain_copy, updated
from ._legacy import LegacyDataError, decode_legacy, migrated_session_id

logger = logging.getLogger(__name__)

__all__ = ["FastSession", "FastSessionInterface", "FlaskSession"]


class FlaskSession(CallbackDict, SessionMixin):  # type: ignore[type-arg]
    """``flask.session`` for a fastsess-backed app: a dict that tracks reads and writes.

    ``sid`` is the session id (None until first stored); ``stored`` the fastsess
    ``Session`` loaded for this request (None for a new session).
    """

    def __init__(self, initial: dict[str, Any] | None = None, sid: str | None = None,
                 stored: Session | None = None, permanent: bool | None = None) -> None:
        def on_update(self: FlaskSession) -> None:
            self.modified = True
            self.accessed = True

        super().__init__(initial, on_update)
        self.sid = sid
        self.stored = stored
        self.rotated = False  # the response must set the cookie (a new id, or one moved from Flask-Session)
        if permanent:
            self.permanent = permanent
        self.modified = False
        self.accessed = False

    def __getitem__(self, key: str) -> Any:
        self.accessed = True
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        """``session[key]`` or ``default`` (marks the session accessed)."""
        self.accessed = True
        return super().get(key, default)

    def setdefault(self, key: str, default: Any = None) -> Any:
        """``session[key]``, storing ``default`` first if absent."""
        self.accessed = True
        return super().setdefault(key, default)

    def __contains__(self, key: object) -> bool:
        self.accessed = True
        return super().__contains__(key)


def _seconds(lifetime: Any) -> int:
    if isinstance(lifetime, timedelta):
        return int(lifetime.total_seconds())
    return int(lifetime)


def _payload(session: FlaskSession) -> dict[str, Any]:
    return {k: plain_copy(v) for k, v in session.items()}


def _has_data(session: FlaskSession) -> bool:
    """Whether the session holds anything besides Flask's ``_permanent`` flag."""
    return any(key != "_permanent" for key in dict.keys(session))


# werkzeug's Response.set_cookie: the fast path below builds exactly its header
_WERKZEUG_SET_COOKIE = SansIOResponse.set_cookie
_PLACEHOLDER = "x"  # a cookie-value character werkzeug never quotes (signed values use [A-Za-z0-9_.-])


class _CookieTemplate:
    """The Set-Cookie header werkzeug's ``dump_cookie`` writes for one set of arguments
    (expiry to the second, attributes, size limit) and any value of one length, split
    around the value: ``head + value + tail``.

    Made by ``dump_cookie`` itself with a placeholder value of that length, so the header
    is byte for byte werkzeug's.  No template (``head`` None) when that header is over
    ``max_size`` (werkzeug warns on each such cookie: those keep calling it) or the
    value is not where werkzeug puts it (a different werkzeug): then ``set_cookie`` is called.
    """

    __slots__ = ("head", "key", "tail")

    def __init__(self, key: tuple[Any, ...], name: str, length: int, arguments: dict[str, Any]) -> None:
        self.key = key
        self.head: str | None = None
        self.tail = ""
        placeholder = _PLACEHOLDER * length
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an oversized cookie: no template, werkzeug warns per request
            header = dump_cookie(name, placeholder, **arguments)
        max_size = arguments["max_size"]
        head = f"{name.encode().decode('latin1')}="
        if (max_size and len(header) > max_size) or header[len(head):len(head) + length] != placeholder:
            return
        if not header.startswith(head):
            return
        self.head, self.tail = head, header[len(head) + length:]


class FastSessionInterface(SessionInterface):
    """The ``SessionInterface`` ``FastSession`` installs (see the module doc).

    Raises:
        ConfigError: neither ``FASTSESS_REDIS_URL`` nor ``SESSION_REDIS`` (nor a store).
    """

    def __init__(self, app: Flask, store: SessionStore | None = None) -> None:
        config = app.config
        self.owns_store = store is None
        if store is not None and config.get("FASTSESS_ENCRYPTION_KEYS") is not None and getattr(store, "encryption", None) is None:
            raise ConfigError("FASTSESS_ENCRYPTION_KEYS is set, but the store= given does not encrypt: pass encryption= to that store")
        if store is None:
            url = config.get("FASTSESS_REDIS_URL")
            client = config.get("SESSION_REDIS")
            if (url is None) == (client is None):
                raise ConfigError("FastSession needs exactly one of FASTSESS_REDIS_URL or SESSION_REDIS (or store=)")
            cluster = config.get("FASTSESS_CLUSTER") or {}
            try:
                encryption = encryption_from_setting(config.get("FASTSESS_ENCRYPTION_KEYS"))
            except ConfigError as exc:
                raise ConfigError(f"FASTSESS_ENCRYPTION_KEYS: {exc}") from None
            breaker = {
                argument: config[name]
                for name, argument in (("FASTSESS_BREAKER_THRESHOLD", "breaker_threshold"), ("FASTSESS_BREAKER_COOLDOWN", "breaker_cooldown"))
                if name in config
            }
            store = ClusteredRedisStore(
                client, url, config=ClusterConfig(**cluster),
                prefix=config.get("SESSION_KEY_PREFIX", DEFAULT_PREFIX),
                ttl=_seconds(config["PERMANENT_SESSION_LIFETIME"]),
                encryption=encryption,
                **breaker,
            )
        self.store = store
        self._signer: CookieSigner | None = None
        self._signer_secret: Any = None
        self._cookie_template: _CookieTemplate | None = None  # the last Set-Cookie template (see _set_cookie)

    def _sign(self, app: Flask) -> CookieSigner:
        secret = app.secret_key
        if not secret:
            raise RuntimeError("fastsess.contrib.flask needs app.secret_key to sign session cookies")
        if self._signer is None or self._signer_secret != secret:
            self._signer = CookieSigner(secret)
            self._signer_secret = secret
        return self._signer

    def _ttl(self, app: Flask) -> int:
        return _seconds(app.permanent_session_lifetime)

    def open_session(self, app: Flask, request: Request) -> FlaskSession:
        """The request's session: the stored one if the cookie is valid and live, else a new one.

        Raises:
            StoreUnavailable: Redis failed while loading a validly signed id.
            RuntimeError: no ``app.secret_key``.
        """
        signer = self._sign(app)
        cookie = request.cookies.get(self.get_cookie_name(app))
        sid = signer.unsign(cookie) if cookie else None
        if sid is not None:
            try:
                stored = self.store.load(sid)
            except SessionCorrupt:
                stored = None
            if stored is not None:
                return FlaskSession(plain_copy(stored.data), sid=sid, stored=stored)
        elif cookie and app.config.get("FASTSESS_MIGRATE_PREFIX"):
            migrated = self._from_flask_session(app, cookie)
            if migrated is not None:
                return migrated
        return FlaskSession(sid=None, permanent=app.config.get("SESSION_PERMANENT", True))

    def _from_flask_session(self, app: Flask, cookie: str) -> FlaskSession | None:
        """The session of the Flask-Session id in ``cookie``: moved now from Flask-Session's key to
        the id derived from it, or moved there before (see ``_move``); None if neither holds one.

        Raises:
            StoreUnavailable: Redis failed.
        """
        legacy_id = cookie
        if "." in cookie:  # Flask-Session's SESSION_USE_SIGNER: itsdangerous, its own salt
            from itsdangerous import BadSignature, Signer

            try:
                legacy_id = Signer(app.secret_key or "", salt="flask-session", key_derivation="hmac").unsign(cookie).decode()
            except (BadSignature, UnicodeDecodeError):
                return None
        if not legacy_id or len(legacy_id) > 256:
            return None
        session_id = migrated_session_id(legacy_id)
        stored = self._move(app, app.config["FASTSESS_MIGRATE_PREFIX"] + legacy_id, session_id)
        if stored is None:
            return None
        session = FlaskSession(plain_copy(stored.data), sid=session_id, stored=stored)
        session.rotated = True  # the response sets the signed cookie in place of the old one
        return session

    def _load_fresh(self, session_id: str) -> Session | None:
        """``store.load(session_id)`` from Redis, not this node's cached copy or absent mark (None
        for data that is not a session): another node may have just moved the session there.

        Raises:
            StoreUnavailable: Redis failed.
        """
        evict = getattr(self.store, "evict_from_cache", None)
        if evict is not None:
            evict(session_id)
        try:
            return self.store.load(session_id)
        except SessionCorrupt:
            return None

    def _move(self, app: Flask, key: str, session_id: str) -> Session | None:
        """Move Flask-Session's session under ``key`` to ``session_id``, or read what an earlier or
        concurrent request moved there; None if there is nothing (or it cannot be read).

        The old key is read first (an old cookie comes back rarely once moved: the response
        replaces it, while unknown cookies cost one round trip less).  Written only if nothing
        is stored under ``session_id`` yet (SET NX), then the old key is deleted.  If that key
        was gone by then, another request had moved it and the session was ended since
        (logout, ``regenerate``): the write is undone, never resurrected.

        Raises:
            StoreUnavailable: Redis failed.
        """
        client = self.store.client  # type: ignore[attr-defined]
        try:
            raw = client.get(key)
        except REDIS_ERRORS as exc:
            raise map_redis_error("GET", exc) from exc
        if raw is None:  # nothing (more) there: moved before (or meanwhile)?
            return self._load_fresh(session_id)
        try:
            data = decode_legacy(raw, allow_pickle=bool(app.config.get("FASTSESS_MIGRATE_PICKLE", False)))
        except LegacyDataError as exc:
            logger.warning("Flask-Session session not migrated: %s", exc)
            return None
        record = None
        if any(name != "_permanent" for name in data):
            record = Session(session_id, data, ttl=self._ttl(app), new=True)
            record.modified = True
            self.store.save(record)  # SET NX: if taken, the store puts it under a fresh id
            if record.id != session_id:  # another request moved it first: read that
                self.store.delete(record.id)
                return self._load_fresh(session_id)
        try:
            deleted = client.delete(key)
        except REDIS_ERRORS as exc:
            raise map_redis_error("DEL", exc) from exc
        if record is not None and not deleted:  # moved and ended meanwhile: undo
            self.store.delete(session_id)
            return None
        return record

    def regenerate(self, session: FlaskSession) -> None:
        """Give ``session`` a new id now (same data, old id deleted); the response sets the cookie.

        Raises:
            StoreUnavailable: Redis failed; the session keeps its old id.
        """
        if session.sid is None or session.stored is None:
            return  # never stored: its first save takes a fresh id anyway
        moved = self._record(session, session.stored.ttl)
        self.store.regenerate(moved)
        session.sid = moved.id
        session.stored = moved
        session.rotated = True
        session.modified = False

    def bind(self, session: FlaskSession, principal: str) -> None:
        """Bind ``session`` (``flask.session``) to ``principal`` (e.g. ``str(user.id)``), so that
        ``log_out_everywhere(principal)`` ends it: recorded when the response saves it.

        A session bound to another principal before also gets a new id (``regenerate``),
        so the other principal's ``log_out_everywhere`` cannot end it.

        Raises:
            TypeError, ValueError: an invalid principal (a non-empty str of at most 1024 characters).
            StoreUnavailable: Redis failed (only when it gets a new id).
        """
        if mark_principal(session, principal):
            self.regenerate(session)

    def log_out_everywhere(self, principal: str, keep: FlaskSession | None = None) -> int:
        """Delete every session bound to ``principal`` but ``keep``'s (e.g. ``flask.session``,
        after a password change), on every node; returns how many were deleted.

        Raises:
            TypeError, ValueError: an invalid principal.
            StoreUnavailable: Redis failed (call again).
        """
        return self.store.delete_all(principal, except_id=None if keep is None else keep.sid)

    def _record(self, session: FlaskSession, ttl: int) -> Session:
        """A fastsess ``Session`` holding ``session``'s current data, ready for ``save``: for a
        stored session, a copy of it with the keys this request changed (``updated``)."""
        prev = session.stored
        if prev is not None:
            return updated(prev, _payload(session), ttl)
        record = Session(session.sid or new_session_id(), _payload(session), ttl=ttl, new=True)
        record.modified = True
        return record

    def _set_cookie(self, app: Flask, session: FlaskSession, response: Response) -> None:
        kwargs: dict[str, Any] = {}
        partitioned = getattr(self, "get_cookie_partitioned", None)
        if partitioned is not None:
            kwargs["partitioned"] = partitioned(app)
        assert session.sid is not None
        name = self.get_cookie_name(app)
        value = self._sign(app).sign(session.sid)
        expires = self.get_expiration_time(app, session)
        domain = self.get_cookie_domain(app)
        path = self.get_cookie_path(app)
        secure = self.get_cookie_secure(app)
        samesite = self.get_cookie_samesite(app)
        if type(response).set_cookie is _WERKZEUG_SET_COOKIE:
            # The header werkzeug's set_cookie would add, from a template werkzeug made for
            # the same arguments but the value (see _CookieTemplate): no per-request
            # formatting of the date and attributes, on the read that refreshes the cookie.
            max_size = response.max_cookie_size
            when = expires.replace(microsecond=0) if isinstance(expires, datetime) else expires
            key = (name, len(value), when, domain, path, secure, samesite, max_size, tuple(kwargs.items()))
            template = self._cookie_template
            if template is None or template.key != key:
                template = self._cookie_template = _CookieTemplate(key, name, len(value), dict(
                    expires=expires, path=path, domain=domain, secure=secure, httponly=True,
                    samesite=samesite, max_size=max_size, **kwargs,
                ))
            if template.head is not None:
                response.headers.add("Set-Cookie", f"{template.head}{value}{template.tail}")
                return
        response.set_cookie(
            name, value, expires=expires, httponly=True, domain=domain, path=path, secure=secure, samesite=samesite,
            **kwargs,
        )

    def _delete_cookie(self, app: Flask, response: Response) -> None:
        response.delete_cookie(
            self.get_cookie_name(app),
            domain=self.get_cookie_domain(app),
            path=self.get_cookie_path(app),
            secure=self.get_cookie_secure(app),
            samesite=self.get_cookie_samesite(app),
            httponly=True,
        )

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        """Write what changed and set or delete the cookie.

        Untouched new sessions and emptied ones store nothing; a read-only request
        writes only when the TTL refresh is due (``refresh_fraction`` of the lifetime).

        Raises:
            StoreUnavailable: Redis failed.
        """
        if not isinstance(session, FlaskSession):
            return  # Flask's null session after open_session failed: nothing to save
        if session.accessed:
            response.vary.add("Cookie")
        if session.sid is None:
            if session.modified and _has_data(session):
                record = self._record(session, self._ttl(app))
                self.store.save(record)  # SET NX; a (never expected) collision takes another id
                session.sid, session.stored = record.id, record
                self._set_cookie(app, session, response)
            return
        if session.modified:
            if not _has_data(session):
                self.store.delete(session.sid)
                self._delete_cookie(app, response)
                return
            record = self._record(session, self._ttl(app))
            if not self.store.save(record):
                # deleted meanwhile (logged out elsewhere): never resurrect it
                self._delete_cookie(app, response)
                return
            session.stored = record
            self._set_cookie(app, session, response)
            return
        if session.stored is not None and self.store.save_due(session.stored):
            self.store.save(session.stored)  # only when the TTL refresh is due
        if session.rotated or self.should_set_cookie(app, session):
            self._set_cookie(app, session, response)


class FastSession:
    """Install fastsess sessions on a Flask app: ``FastSession(app)`` or ``FastSession().init_app(app)``.

    Args:
        app: the Flask app (or call ``init_app`` later).
        store: a sync fastsess store to use instead of one built from the config.

    Raises:
        ConfigError: missing or invalid configuration (see the module doc).
    """

    def __init__(self, app: Flask | None = None, store: SessionStore | None = None) -> None:
        self.store = store
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> FastSessionInterface:
        """Set ``app.session_interface``; returns it.

        Raises:
            ConfigError: missing or invalid configuration.
        """
        interface = FastSessionInterface(app, self.store)
        app.session_interface = interface
        return interface
