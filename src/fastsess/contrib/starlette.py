"""Starlette / FastAPI sessions on a ``fastsess.asyncio`` store.

``SessionMiddleware(app, secret_key=..., store=None, session_cookie="session",
max_age=14 days, path="/", same_site="lax", https_only=False, domain=None,
partitioned=False)``: Starlette's own ``SessionMiddleware`` signature plus ``store``, any
``fastsess.asyncio`` store (default: a ``fastsess.asyncio.ClusteredRedisStore``
on ``$REDIS_URL`` with a TTL of ``max_age``, encrypting sessions with the keys in
``$FASTSESS_ENCRYPTION_KEYS`` if set: comma-separated base64, the first encrypts).  It gives ``request.session``, a
dict; every Redis call is awaited on the asyncio store, never a blocking one.

The cookie holds the session id signed with HMAC-SHA256 under a key derived from
``secret_key`` (``_common.CookieSigner``), and is always HttpOnly.  A missing,
forged or unknown id gives a fresh anonymous session; a client-chosen id is never
adopted.  When Redis fails, the request fails with ``fastsess.StoreUnavailable``.
Untouched anonymous sessions write nothing and set no cookie; read-only requests
write nothing unless the TTL refresh is due (``refresh_fraction`` of the lifetime).

``regenerate(request)`` (plain call or ``await``) gives the session a new id at
response time and deletes the old key: call it at login.  ``bind(request,
str(user.id))`` at login and ``await log_out_everywhere(request, str(user.id))`` after a
password change: see the store's ``bind``/``delete_all``.

Zero-logout migration from starsessions' ``RedisStore``: ``migrate_prefix=
"starsessions."`` (its default prefix; same Redis as ``store``).  A cookie this
middleware did not sign is then read as a starsessions id.  Its session moves to
fastsess under an id derived from it (``_legacy.migrated_session_id``): a request with
it reads starsessions' key (JSON, as starsessions writes it), writes it under the
derived id if nothing is there yet (so concurrent requests carrying the old cookie end
with one session) and deletes the old key; once that key is gone, the session under
the derived id is served.  Each such response sets the signed cookie of the derived id.

``StarsessionsStore(store)`` is starsessions' ``SessionStore`` (``read``, ``write``,
``remove``, ``exists``) on a ``fastsess.asyncio`` store, for apps that keep
starsessions' middleware and cookies.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Generator
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection, cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..asyncio.stores.base import AsyncSessionStore
from ..asyncio.stores.clustered import ClusteredRedisStore
from ..crypto import encryption_from_env
from ..errors import ConfigError, SessionCorrupt
from ..session import Session
from ..stores.base import DEFAULT_TTL, new_session_id
from ..stores.redis import REDIS_ERRORS, map_redis_error
from ._common import CookieSigner, copy_into, mark_principal, plain_copy, updated
from ._legacy import LegacyDataError, decode_legacy, migrated_session_id

__all__ = ["SessionDict", "SessionMiddleware", "StarsessionsStore", "bind", "log_out_everywhere", "regenerate"]

_MISSING: Any = object()


class SessionDict(dict):  # type: ignore[type-arg]
    """``request.session``: a dict that records whether it was changed.

    ``modified`` is set by every mutating dict method; after mutating a nested value
    in place, set it yourself.  ``regenerate`` asks for a new id at response time.
    """

    def __init__(self, data: dict[str, Any] | None = None, sid: str | None = None, store: AsyncSessionStore | None = None) -> None:
        super().__init__()
        if data:
            dict.update(self, data)
        self.modified = False
        self.regenerate = False
        self.sid = sid  # the id it was loaded under (None: new)
        self.store = store

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self.modified = True

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self.modified = True

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        """``dict.pop``; marks the session modified when a key was removed."""
        if key in self:
            self.modified = True
            return super().pop(key)
        if default is _MISSING:
            raise KeyError(key)
        return default

    def popitem(self) -> tuple[str, Any]:
        """``dict.popitem``; marks the session modified."""
        item = super().popitem()
        self.modified = True
        return item

    def setdefault(self, key: str, default: Any = None) -> Any:
        """``dict.setdefault``; marks the session modified when it inserted."""
        if key not in self:
            self[key] = default
        return super().__getitem__(key)

    def update(self, *args: Any, **kwargs: Any) -> None:
        """``dict.update``; marks the session modified."""
        super().update(*args, **kwargs)
        self.modified = True

    def clear(self) -> None:
        """``dict.clear``; marks the session modified when it held anything."""
        if self:
            self.modified = True
        super().clear()


class _Done:
    """What ``regenerate`` returns: awaiting it does nothing (so both call styles work)."""

    def __await__(self) -> Generator[Any, None, None]:
        yield from ()


def _session_of(request: HTTPConnection, what: str) -> SessionDict:
    session = request.scope.get("session")
    if not isinstance(session, SessionDict):
        raise RuntimeError(f"{what}() needs fastsess.contrib.starlette.SessionMiddleware")
    return session


def regenerate(request: HTTPConnection) -> Awaitable[None]:
    """Give the session a new id when the response starts (old key deleted, same data).

    Works as ``regenerate(request)`` and as ``await regenerate(request)``.

    Raises:
        RuntimeError: the request did not pass through ``SessionMiddleware``.
    """
    _session_of(request, "regenerate").regenerate = True
    return _Done()


def bind(request: HTTPConnection, principal: str) -> None:
    """Bind the request's session to ``principal`` (e.g. ``str(user.id)``), so that
    ``log_out_everywhere`` ends it: recorded when the response saves it (call at login).
    A session bound to another principal before also gets a new id (as ``regenerate``),
    so the other principal's ``log_out_everywhere`` cannot end it.

    Raises:
        TypeError, ValueError: an invalid principal (a non-empty str of at most 1024 characters).
        RuntimeError: the request did not pass through ``SessionMiddleware``.
    """
    session = _session_of(request, "bind")
    if mark_principal(session, principal):
        session.regenerate = True


async def log_out_everywhere(request: HTTPConnection, principal: str, keep_current: bool = True) -> int:
    """Delete every session bound to ``principal``, on every node, but the request's own
    (unless ``keep_current=False``); returns how many were deleted.

    Raises:
        TypeError, ValueError: an invalid principal.
        RuntimeError: the request did not pass through ``SessionMiddleware``.
        StoreUnavailable: Redis failed (call again).
    """
    session = _session_of(request, "log_out_everywhere")
    assert session.store is not None
    return await session.store.delete_all(principal, except_id=session.sid if keep_current else None)


class SessionMiddleware:
    """ASGI middleware giving ``request.session`` on a fastsess asyncio store (see the module doc).

    Raises:
        ConfigError: ``store`` is not a ``fastsess.asyncio`` store, or no store and
            no ``REDIS_URL``; ValueError: an empty ``secret_key``.
    """

    def __init__(
        self,
        app: ASGIApp,
        secret_key: str | bytes | Any,
        store: AsyncSessionStore | None = None,
        session_cookie: str = "session",
        max_age: int | None = 14 * 24 * 60 * 60,
        path: str = "/",
        same_site: str = "lax",
        https_only: bool = False,
        domain: str | None = None,
        partitioned: bool = False,
        migrate_prefix: str | None = None,
    ) -> None:
        self.app = app
        self.migrate_prefix = migrate_prefix
        # bytes, str, or anything str() gives the secret of (starlette.datastructures.Secret)
        self.signer = CookieSigner(secret_key if isinstance(secret_key, bytes) else str(secret_key))
        self.owns_store = store is None
        if store is None:
            url = os.environ.get("REDIS_URL")
            if not url:
                raise ConfigError("SessionMiddleware needs store= or the REDIS_URL environment variable")
            store = ClusteredRedisStore(url=url, ttl=max_age or DEFAULT_TTL, encryption=encryption_from_env())
        elif not isinstance(store, AsyncSessionStore):
            raise ConfigError("SessionMiddleware needs a fastsess.asyncio store (a sync store would block the event loop)")
        elif getattr(store, "encryption", None) is None and encryption_from_env() is not None:
            raise ConfigError("FASTSESS_ENCRYPTION_KEYS is set, but the store= given does not encrypt: pass encryption= to that store")
        if migrate_prefix is not None and not hasattr(store, "client"):
            raise ConfigError("migrate_prefix needs a Redis store (the old sessions are read from its Redis)")
        self.store = store
        self.ttl = max_age or store.ttl
        self.session_cookie = session_cookie
        self.max_age = max_age
        flags = f"path={path}; httponly; samesite={same_site}"
        if https_only:
            flags += "; secure"
        if domain:
            flags += f"; domain={domain}"
        if partitioned:
            flags += "; partitioned"
        self.flags = flags

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Load the session, run the app, then save and set the cookie as the response starts."""
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, self._lifespan_send(send) if kind == "lifespan" else send)
            return
        cookie = self._read_cookie(scope)
        sid = self.signer.unsign(cookie) if cookie else None
        stored: Session | None = None
        if sid is not None:
            try:
                stored = await self.store.load(sid)
            except SessionCorrupt:
                stored = None
        migrated = False
        if stored is None and sid is None and cookie and self.migrate_prefix is not None:
            stored = await self._from_starsessions(cookie)
            migrated = stored is not None  # the response sets the signed cookie in place of the old one
        session = SessionDict(sid=None if stored is None else stored.id, store=self.store)
        if stored is not None:
            copy_into(session, stored.data)
        scope["session"] = session

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                cookie_value = await self._commit(session, stored)
                if cookie_value is None and migrated:
                    cookie_value = self._cookie(stored.id)  # type: ignore[union-attr]
                if cookie_value is not None:
                    headers = MutableHeaders(scope=message)
                    headers.append("Set-Cookie", cookie_value)
            await send(message)

        await self.app(scope, receive, send_wrapper)

    def _read_cookie(self, scope: Scope) -> str | None:
        """The session cookie's value, as Starlette's ``HTTPConnection(scope).cookies`` gives it.

        Every ``cookie`` header is read in order (HTTP/2 may split them) and the last pair
        with our name wins.  Parsed here without building a connection and a dict of every
        cookie.
        """
        found: str | None = None
        name = self.session_cookie
        for header_name, raw in scope["headers"]:
            if header_name != b"cookie":
                continue
            header = raw.decode("latin-1")
            if name not in header:
                continue
            for chunk in header.split(";"):
                key, eq, val = chunk.partition("=")
                if eq and key.strip() == name:
                    found = val.strip()
                    if found[:1] == '"':  # a quoted value: Starlette's own unquoting
                        found = cookie_parser(chunk).get(name)
        return found

    async def _from_starsessions(self, cookie: str) -> Session | None:
        """The session of the starsessions id ``cookie``: moved now from starsessions' key to the id
        derived from it, or moved there before; None if neither holds one.

        The old key is read first (an old cookie comes back rarely once moved: the response
        replaces it, while unknown cookies cost one round trip less).  The move writes only
        if nothing is stored under the derived id yet (SET NX), then deletes the old key; if
        that key was gone by then, another request had moved it and the session was ended
        since (logout, ``regenerate``): the write is undone.

        Raises:
            StoreUnavailable: Redis failed.
        """
        if len(cookie) > 256:
            return None
        session_id = migrated_session_id(cookie)
        store = self.store
        key = f"{self.migrate_prefix}{cookie}"
        client = store.client  # type: ignore[attr-defined]
        try:
            raw = await client.get(key)
        except REDIS_ERRORS as exc:
            raise map_redis_error("GET", exc) from exc
        if raw is None:  # nothing (more) there: moved before (or meanwhile)?
            return await self._load_fresh(session_id)
        try:
            data = decode_legacy(raw)
        except LegacyDataError:
            return None
        data.pop("__metadata__", None)  # starsessions' own bookkeeping
        record = None
        if data:
            record = Session(session_id, data, ttl=self.ttl, new=True)
            record.modified = True
            await store.save(record)  # SET NX: if taken, the store puts it under a fresh id
            if record.id != session_id:  # another request moved it first: read that
                await store.delete(record.id)
                return await self._load_fresh(session_id)
        try:
            deleted = await client.delete(key)
        except REDIS_ERRORS as exc:
            raise map_redis_error("DEL", exc) from exc
        if record is not None and not deleted:  # moved and ended meanwhile: undo
            await store.delete(session_id)
            return None
        return record

    async def _load_fresh(self, session_id: str) -> Session | None:
        """``store.load(session_id)`` from Redis, not this node's cached copy or absent mark (None
        for data that is not a session): another node may have just moved the session there.

        Raises:
            StoreUnavailable: Redis failed.
        """
        evict = getattr(self.store, "evict_from_cache", None)
        if evict is not None:
            evict(session_id)
        try:
            return await self.store.load(session_id)
        except SessionCorrupt:
            return None

    def _lifespan_send(self, send: Send) -> Send:
        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete" and self.owns_store:
                await self.store.close()
            await send(message)

        return lifespan_send

    def _cookie(self, session_id: str) -> str:
        age = f"; Max-Age={self.max_age}" if self.max_age else ""
        return f"{self.session_cookie}={self.signer.sign(session_id)}{age}; {self.flags}"

    def _expired_cookie(self) -> str:
        return f"{self.session_cookie}=null; expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; {self.flags}"

    def _record(self, session: SessionDict, stored: Session | None) -> Session:
        if stored is not None:  # a copy of it with the keys this request changed
            return updated(stored, plain_copy(dict(session)), self.ttl)
        record = Session(new_session_id(), plain_copy(dict(session)), ttl=self.ttl, new=True)
        record.modified = True
        return record

    async def _commit(self, session: SessionDict, stored: Session | None) -> str | None:
        """Write what the request changed; the Set-Cookie value to send, if any."""
        store = self.store
        if not session:
            if stored is not None and (session.modified or session.regenerate):
                await store.delete(stored.id)  # emptied (logout): delete, expire the cookie
                return self._expired_cookie()
            return None
        if stored is None:
            if not session.modified:
                return None
            record = self._record(session, None)
            await store.save(record)  # SET NX (a collision, never expected, takes another id)
            return self._cookie(record.id)
        if session.regenerate:
            record = self._record(session, stored)
            await store.regenerate(record)
            return self._cookie(record.id)
        if session.modified:
            if not await store.save(self._record(session, stored)):
                return self._expired_cookie()  # deleted meanwhile (logged out elsewhere): never resurrected
            return self._cookie(stored.id)
        if store.save_due(stored) and await store.save(stored):  # only when the TTL refresh is due
            return self._cookie(stored.id)
        return None


class StarsessionsStore:
    """starsessions' ``SessionStore`` interface on a ``fastsess.asyncio`` store.

    ``starsessions.SessionMiddleware(app, store=StarsessionsStore(fastsess_store))``.
    starsessions' serialized payload is kept as bytes in a fastsess session.  A
    write under an id the store does not hold (a new session, or an id the client
    chose) creates a session under a fresh fastsess id and returns it: a client's id
    is never adopted.

    Raises:
        ConfigError: ``store`` is not a ``fastsess.asyncio`` store.
    """

    def __init__(self, store: AsyncSessionStore) -> None:
        if not isinstance(store, AsyncSessionStore):
            raise ConfigError("StarsessionsStore needs a fastsess.asyncio store")
        self.store = store

    async def read(self, session_id: str, lifetime: int) -> bytes:
        """The stored payload, or ``b""`` (starsessions' empty session) if absent.

        Raises:
            StoreUnavailable: Redis failed.
        """
        try:
            session = await self.store.load(session_id)
        except SessionCorrupt:
            return b""
        if session is None:
            return b""
        data = session.get("data", b"")
        return data if isinstance(data, bytes) else b""

    async def write(self, session_id: str, data: bytes, lifetime: int, ttl: int) -> str:
        """Store ``data`` for ``ttl`` seconds (``lifetime``, else the store's TTL, when 0); returns the id.

        Raises:
            StoreUnavailable: Redis failed.
        """
        seconds = ttl if ttl > 0 else lifetime if lifetime > 0 else self.store.ttl
        try:
            session = await self.store.load(session_id)
        except SessionCorrupt:
            session = None
        if session is not None:
            session["data"] = bytes(data)
            session.ttl = seconds
            if await self.store.save(session):
                return session.id
        fresh = self.store.create({"data": bytes(data)}, ttl=seconds)
        await self.store.save(fresh)
        return fresh.id

    async def remove(self, session_id: str) -> None:
        """Delete the session (from every node's cache too).

        Raises:
            StoreUnavailable: Redis failed.
        """
        await self.store.delete(session_id)

    async def exists(self, session_id: str) -> bool:
        """True if the store holds ``session_id``.

        Raises:
            StoreUnavailable: Redis failed.
        """
        return await self.store.exists(session_id)


try:  # a virtual subclass of starsessions' ABC when starsessions is installed
    from starsessions.stores.base import SessionStore as _StarsessionsStoreABC
except ImportError:  # pragma: no cover - starsessions is optional
    pass
else:
    _StarsessionsStoreABC.register(StarsessionsStore)
