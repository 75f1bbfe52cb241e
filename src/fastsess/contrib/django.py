"""Django session engine on fastsess: ``SESSION_ENGINE = "fastsess.contrib.django"``.

Settings (``django.conf.settings``):

* ``FASTSESS_REDIS_URL``: ``redis://...`` URL of the session Redis, or
  ``FASTSESS_REDIS_CLIENT``: an existing binary ``redis.Redis`` /
  ``RedisCluster`` client (sync methods only; the async methods need the URL).
* ``FASTSESS_CLUSTER``: optional dict of ``ClusterConfig`` fields
  (``{"enabled": False}`` for a plain Redis store without local cache).
* ``FASTSESS_KEY_PREFIX`` (default ``"fastsess:"``), ``FASTSESS_SERIALIZER``
  (``"msgpack"`` default, or ``"json"``; Django's ``SESSION_SERIALIZER`` is not used).
* ``FASTSESS_ENCRYPTION_KEYS``: optional list of 32-byte keys, as base64 texts (or a
  ``fastsess.Encryption``): sessions are stored encrypted (first key encrypts, all
  decrypt; see docs/encryption.md).  Not ``SECRET_KEY``, nor derived from it.
* ``FASTSESS_BREAKER_THRESHOLD`` / ``FASTSESS_BREAKER_COOLDOWN``: optional, the store's
  circuit breaker (``breaker_threshold``/``breaker_cooldown``; defaults 5 and 1.0 s).
* ``SESSION_COOKIE_AGE``, ``SESSION_EXPIRE_AT_BROWSER_CLOSE``,
  ``SESSION_SAVE_EVERY_REQUEST`` and the ``SESSION_COOKIE_*`` keys work as with
  Django's other backends: Django's ``SessionMiddleware`` sets the cookie, which
  holds the session key.

Session keys are fastsess ids (43 characters, 256 bits); any other key, e.g. one
written by Django's own backends, is treated as unknown and gets a new session --
unless ``FASTSESS_MIGRATE_FROM`` names the engine the app used before (e.g.
``"django.contrib.sessions.backends.db"``): then such a key keeps working as the same
session.  It is stored in fastsess under an id derived from it
(``_legacy.migrated_session_id``); the first request that finds nothing there looks
the key up in the old engine (by that engine's own code and settings), writes the
session found under the derived id if nothing is there yet (so concurrent first
requests end with one session) and deletes it from the old backend.  The key the app
and the cookie see stays the old one (no new cookie); ``cycle_key`` (login) moves the
session to a fresh fastsess key as usual.  Nobody is logged out by the switch.  The
old data is decoded by fastsess's legacy reader, never the app's deserializer: JSON or
msgpack, and pickles (what Django's cache framework stores) only with
``FASTSESS_MIGRATE_PICKLE = True``, through the allow-list unpickler.
Each session is stored with a Redis TTL of ``get_expiry_age()``, so expired
sessions vanish by themselves (``clear_expired`` does nothing).

Log out everywhere: ``user_logged_in.connect(bind_on_login)`` binds each login's session
to ``str(user.pk)`` (or call ``request.session.bind(principal)``), and
``log_out_everywhere(user, request)`` (``alog_out_everywhere``) deletes the user's other
sessions, on every node, e.g. after a password change.

The sync methods use one ``fastsess.ClusteredRedisStore`` per process; the async
methods (``aload``, ``asave``, ``acreate``, ``aexists``, ``adelete``,
``acycle_key``, ...) use one ``fastsess.asyncio.ClusteredRedisStore`` per event
loop, with its own node id, never the sync store in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import operator
import threading
import uuid
import weakref
from importlib import import_module
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.sessions.backends.base import CreateError, SessionBase, UpdateError
from django.core.exceptions import ImproperlyConfigured, SuspiciousOperation
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from .._core.keys import _ID
from ..asyncio.stores.clustered import ClusteredRedisStore as AsyncClusteredRedisStore
from ..config import ClusterConfig
from ..crypto import encryption_from_setting
from ..errors import ConfigError, SessionCorrupt
from ..session import Session
from ..stores.base import DEFAULT_PREFIX, is_valid_session_id, new_session_id
from ..stores.clustered import ClusteredRedisStore
from ._common import mark_principal, plain_copy, updated
from ._legacy import LegacyDataError, decode_legacy, migrated_session_id, to_storable

__all__ = [
    "SessionStore", "aclose_async_store", "alog_out_everywhere", "bind_on_login", "close_stores", "get_async_store",
    "get_store", "log_out_everywhere",
]

logger = logging.getLogger("django.security.SuspiciousSession")

_lock = threading.Lock()
_sync_stores: dict[tuple[Any, ...], ClusteredRedisStore] = {}
_async_stores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], AsyncClusteredRedisStore]] = (
    weakref.WeakKeyDictionary()
)
_async_count = 0
_CREATE_ATTEMPTS = 10
_UNLOADED: Any = object()  # ``_session_cache`` not set: the data is not loaded yet
_key_of = operator.attrgetter("_SessionBase__session_key")  # SessionBase's private key attribute
_match_id = _ID.match
#: Session keys that passed ``is_valid_session_id`` lately (bounded: emptied when full): a
#: request's key is checked by a dict lookup instead of the regular expression (a tenth of
#: the cost, and the key's hash is then ready for the cache lookup).
_known_ids: dict[str, None] = {}
_KNOWN_IDS_MAX = 4096


def _valid_id(key: str) -> bool:
    """``is_valid_session_id`` for a str, remembering the valid ones in ``_known_ids``."""
    if _match_id(key) is None:
        return False
    if len(_known_ids) >= _KNOWN_IDS_MAX:
        _known_ids.clear()
    _known_ids[key] = None
    return True


#: Settings this module reads; a change of any (``override_settings``) drops the resolved copy.
_SETTINGS = frozenset({
    "FASTSESS_REDIS_URL", "FASTSESS_REDIS_CLIENT", "FASTSESS_CLUSTER", "FASTSESS_KEY_PREFIX",
    "FASTSESS_SERIALIZER", "FASTSESS_MIGRATE_FROM", "FASTSESS_MIGRATE_PICKLE", "SESSION_COOKIE_AGE",
    "FASTSESS_ENCRYPTION_KEYS", "FASTSESS_BREAKER_THRESHOLD", "FASTSESS_BREAKER_COOLDOWN",
})
# (store options, migrate engine, migrate pickle, sync store or None): resolved once, since
# django.conf.settings answers each attribute through a lazy object (a missing one raises
# AttributeError inside getattr), which cost more than the whole cached session read.
_resolved: tuple[tuple[Any, ...], str | None, bool] | None = None
_sync_store: ClusteredRedisStore | None = None


def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    """``setting_changed`` receiver: forget the resolved settings (and which store they chose)."""
    global _resolved, _sync_store
    if setting in _SETTINGS:
        _resolved = None
        _sync_store = None


setting_changed.connect(_settings_changed, dispatch_uid="fastsess.contrib.django")


# settings -> store constructor arguments of the circuit breaker
BREAKER_SETTINGS = (("FASTSESS_BREAKER_THRESHOLD", "breaker_threshold"), ("FASTSESS_BREAKER_COOLDOWN", "breaker_cooldown"))


def _resolve() -> tuple[tuple[Any, ...], str | None, bool]:
    """The store options, ``FASTSESS_MIGRATE_FROM`` and ``FASTSESS_MIGRATE_PICKLE``, resolved once.

    Raises:
        ImproperlyConfigured: missing, contradictory or malformed settings.
    """
    global _resolved
    resolved = _resolved
    if resolved is None:
        url = getattr(settings, "FASTSESS_REDIS_URL", None)
        client = getattr(settings, "FASTSESS_REDIS_CLIENT", None)
        if (url is None) == (client is None):
            raise ImproperlyConfigured("fastsess.contrib.django needs exactly one of FASTSESS_REDIS_URL or FASTSESS_REDIS_CLIENT")
        cluster = getattr(settings, "FASTSESS_CLUSTER", None) or {}
        if not isinstance(cluster, dict):
            raise ImproperlyConfigured("FASTSESS_CLUSTER must be a dict of ClusterConfig fields")
        prefix = getattr(settings, "FASTSESS_KEY_PREFIX", DEFAULT_PREFIX)
        serializer = getattr(settings, "FASTSESS_SERIALIZER", "msgpack")
        try:
            encryption = encryption_from_setting(getattr(settings, "FASTSESS_ENCRYPTION_KEYS", None))
        except ConfigError as exc:
            raise ImproperlyConfigured(f"FASTSESS_ENCRYPTION_KEYS: {exc}") from None
        breaker = tuple(
            (argument, getattr(settings, name)) for name, argument in BREAKER_SETTINGS if hasattr(settings, name)
        )
        options = (
            url, id(client), prefix, serializer, tuple(sorted(cluster.items())), int(settings.SESSION_COOKIE_AGE), encryption,
            breaker,
        )
        engine = getattr(settings, "FASTSESS_MIGRATE_FROM", None)
        if engine is not None and (not isinstance(engine, str) or engine == __name__):
            raise ImproperlyConfigured("FASTSESS_MIGRATE_FROM must name another session engine module")
        if engine == "django.contrib.sessions.backends.signed_cookies":
            # no server copy: it could not be deleted once moved, so a copy of an old cookie would
            # bring the session back after every logout (and a move is undone when the copy is gone)
            raise ImproperlyConfigured("FASTSESS_MIGRATE_FROM cannot be signed_cookies: its sessions have no server copy to move")
        resolved = _resolved = (options, engine, bool(getattr(settings, "FASTSESS_MIGRATE_PICKLE", False)))
    return resolved


def _options() -> tuple[Any, ...]:
    """The store-relevant settings, as a hashable key."""
    return _resolve()[0]


def _config(cluster: tuple[tuple[str, Any], ...], node_suffix: str | None) -> ClusterConfig:
    fields = dict(cluster)
    if node_suffix is not None:
        # every store in the process needs its own node id (a running pair sharing one is refused)
        fields["node_id"] = f"{fields['node_id']}.{node_suffix}" if "node_id" in fields else uuid.uuid4().hex
    try:
        return ClusterConfig(**fields)
    except TypeError as exc:
        raise ImproperlyConfigured(f"FASTSESS_CLUSTER: {exc}") from exc


def _legacy_engine() -> str | None:
    """``FASTSESS_MIGRATE_FROM``: the session engine to read unknown keys from, or None."""
    return _resolve()[1]


def _store_id(session_key: Any) -> Any:
    """The fastsess id ``session_key`` is stored under: the key itself, or, for a key of the
    old engine while migrating (``FASTSESS_MIGRATE_FROM``), the id derived from it."""
    if type(session_key) is str and not is_valid_session_id(session_key) and _legacy_engine():
        return migrated_session_id(session_key)
    return session_key


def _legacy_session(session_key: Any) -> Any:
    """The old engine's session for ``session_key`` when migrating and the key is not a fastsess
    id, else None.

    It is the engine's own ``SessionStore`` with two parts replaced, so that no
    deserializer but fastsess's legacy reader ever sees the old data: its serializer
    (``_LegacySerializer``) and, for the cache-based engines, its cache (``_LegacyCache``).
    """
    _, engine, allow_pickle = _resolve()
    if not engine or type(session_key) is not str or is_valid_session_id(session_key):
        return None
    legacy = import_module(engine).SessionStore(session_key)
    legacy.serializer = _LegacyPickleSerializer if allow_pickle else _LegacySerializer
    cache = getattr(legacy, "_cache", None)
    if cache is not None:
        legacy._cache = _LegacyCache(cache, allow_pickle)
    return legacy


def _reload(store: ClusteredRedisStore, session_id: str) -> Session | None:
    """``store.load(session_id)`` from Redis (this node's cached copy or absent mark dropped first):
    after the old engine had nothing, a concurrent request may have just moved the session there."""
    store.evict_from_cache(session_id)
    found: Session | None = store.load(session_id)
    return found


def get_store() -> ClusteredRedisStore:
    """The process's sync store for the current settings (created on first use).

    Raises:
        ImproperlyConfigured: missing or contradictory ``FASTSESS_*`` settings.
        ConfigError: an invalid store or cluster setting.
    """
    global _sync_store
    store = _sync_store
    if store is not None:
        return store
    key = _options()
    with _lock:
        store = _sync_stores.get(key)
        if store is None:
            url, _, prefix, serializer, cluster, age, encryption, breaker = key
            client = None if url is not None else settings.FASTSESS_REDIS_CLIENT
            store = ClusteredRedisStore(
                client, url, config=_config(cluster, None), prefix=prefix, ttl=age, serializer=serializer, encryption=encryption,
                **dict(breaker),
            )
            _sync_stores[key] = store
        _sync_store = store
    return store


def get_async_store() -> AsyncClusteredRedisStore:
    """This event loop's asyncio store for the current settings (created on first use).

    Must be called from a coroutine.  Each event loop gets its own store (asyncio
    Redis connections belong to one loop), with a node id of its own.

    Raises:
        ImproperlyConfigured: missing settings, or only ``FASTSESS_REDIS_CLIENT``
            (a sync client) is set: the async methods need ``FASTSESS_REDIS_URL``.
        RuntimeError: no running event loop.
    """
    global _async_count
    key = _options()
    loop = asyncio.get_running_loop()
    stores = _async_stores.get(loop)
    if stores is None:
        stores = _async_stores[loop] = {}
    store = stores.get(key)
    if store is None:
        url, _, prefix, serializer, cluster, age, encryption, breaker = key
        if url is None:
            raise ImproperlyConfigured("the async session methods need FASTSESS_REDIS_URL (FASTSESS_REDIS_CLIENT is a sync client)")
        with _lock:
            _async_count += 1
            suffix = f"aio{_async_count}"
        store = AsyncClusteredRedisStore(
            url=url, config=_config(cluster, suffix), prefix=prefix, ttl=age, serializer=serializer, encryption=encryption,
            **dict(breaker),
        )
        stores[key] = store
    return store


def _written(store: Any, *session_ids: str) -> None:
    """After ``store`` wrote or deleted ``session_ids``: evict them from this process's other stores.

    The sync and the async methods use different stores (Django's ``SessionMiddleware``
    saves through the sync one even after an async view), each with its own cache, and a
    cache hears of another store's writes through Redis pub/sub only a moment later.
    Evicting here, before the response goes out, keeps the next request of this process
    from reading the copy from before the last one's write.
    """
    others: list[Any] = [s for s in list(_sync_stores.values()) if s is not store]
    for loop_stores in list(_async_stores.values()):
        others.extend(s for s in list(loop_stores.values()) if s is not store)
    for other in others:
        for session_id in session_ids:
            other.evict_from_cache(session_id)


def close_stores() -> None:
    """Close every sync store this module created (tests, or a clean shutdown)."""
    global _sync_store
    with _lock:
        stores = list(_sync_stores.values())
        _sync_stores.clear()
        _sync_store = None
    for store in stores:
        store.close()


async def aclose_async_store() -> None:
    """Close the asyncio stores of the running event loop (call before the loop closes)."""
    stores = _async_stores.pop(asyncio.get_running_loop(), {})
    for store in stores.values():
        await store.close()


class _LegacySerializer:
    """The serializer the old engine decodes session data with while migrating (never the
    app's ``SESSION_SERIALIZER``): JSON (what Django's default serializer writes) and msgpack;
    pickle only with ``FASTSESS_MIGRATE_PICKLE``, through the allow-list unpickler."""

    allow_pickle = False

    def dumps(self, obj: Any) -> bytes:
        """JSON, as Django's ``JSONSerializer`` writes it (the old engine is only read, never written)."""
        return json.dumps(obj, separators=(",", ":")).encode("latin-1")

    def loads(self, data: bytes) -> dict[str, Any]:
        """The session dict in ``data``.

        Raises:
            LegacyDataError: not JSON or msgpack, or (opted in) a pickle of a forbidden type.
        """
        try:
            return decode_legacy(data, allow_pickle=self.allow_pickle)
        except LegacyDataError as exc:
            logger.warning("Legacy session not migrated: %s", exc)
            raise


class _LegacyPickleSerializer(_LegacySerializer):
    """``_LegacySerializer`` that also reads pickles through the allow-list (``FASTSESS_MIGRATE_PICKLE``)."""

    allow_pickle = True


class _LegacyCache:
    """The old engine's cache, read without the cache's own unpickler while migrating.

    Django's cache backends unpickle whatever a key holds.  This wrapper reads the raw
    bytes instead (Django's ``RedisCache``, and django-redis's default client with any
    of its compressors) and decodes them with ``decode_legacy``: pickles only when
    opted in, through the allow-list.  Any other cache backend is not read at all (a
    warning; ``cached_db`` then falls back to its database).  ``set`` does nothing (a
    session being moved out is not cached again); ``delete`` is the cache's own.
    """

    def __init__(self, cache: Any, allow_pickle: bool) -> None:
        self._cache = cache
        self._allow_pickle = allow_pickle

    def _raw(self, key: str, version: int | None) -> bytes | None:
        cache = self._cache
        module = type(cache).__module__
        if module == "django.core.cache.backends.redis":
            full = cache.make_and_validate_key(key, version=version)
            raw = cache._cache.get_client(full).get(full)
        elif module == "django_redis.cache" and type(cache.client).__name__ == "DefaultClient":
            from django_redis.exceptions import CompressorError

            client = cache.client
            raw = client.get_client(write=False).get(client.make_key(key, version=version))
            if raw is not None:
                with contextlib.suppress(CompressorError):  # django-redis leaves small values uncompressed
                    raw = client._compressor.decompress(raw)
        else:
            logger.warning("Legacy session not migrated: cannot read %s without its unpickler", type(cache).__name__)
            return None
        return raw if isinstance(raw, bytes) else None

    def get(self, key: str, default: Any = None, version: int | None = None) -> Any:
        """The session dict cached under ``key``, or ``default`` (absent or unreadable)."""
        raw = self._raw(key, version)
        if raw is None:
            return default
        try:
            return decode_legacy(raw, allow_pickle=self._allow_pickle)
        except LegacyDataError as exc:
            logger.warning("Legacy session not migrated: %s", exc)
            return default

    async def aget(self, key: str, default: Any = None, version: int | None = None) -> Any:
        """Async ``get`` (in a thread, as Django's cache backends do it)."""
        return await sync_to_async(self.get)(key, default, version)

    def set(self, *args: Any, **kwargs: Any) -> None:
        """Nothing: the session is being moved out of this backend."""

    async def aset(self, *args: Any, **kwargs: Any) -> None:
        """Nothing: the session is being moved out of this backend."""

    def delete(self, key: str, version: int | None = None) -> Any:
        """The cache's own ``delete``."""
        return self._cache.delete(key, version=version)

    async def adelete(self, key: str, version: int | None = None) -> Any:
        """The cache's own ``adelete``."""
        return await self._cache.adelete(key, version=version)

    def __contains__(self, key: str) -> bool:
        return key in self._cache

    def has_key(self, key: str, version: int | None = None) -> bool:
        """The cache's own ``has_key``."""
        return bool(self._cache.has_key(key, version=version))

    async def ahas_key(self, key: str, version: int | None = None) -> bool:
        """The cache's own ``ahas_key``."""
        return bool(await self._cache.ahas_key(key, version=version))


class SessionStore(SessionBase):  # type: ignore[misc]  # Django ships no type information
    """A Django session backed by a fastsess ``ClusteredRedisStore`` (see the module doc).

    Semantics as Django's own backends: ``save(must_create=True)`` raises
    ``CreateError`` when the key is taken; ``save()`` of a session deleted
    meanwhile raises ``UpdateError`` (the middleware turns it into
    ``SessionInterrupted``); ``cycle_key`` keeps the data under a new key and
    deletes the old one; an unknown key is dropped on load, never adopted.
    Redis failures raise ``fastsess.StoreUnavailable``; data under a key that is
    not a fastsess session is logged and treated as no session.
    """

    _session_cache: dict[str, Any]

    def __init__(self, session_key: str | None = None) -> None:
        self._stored: Session | None = None  # what load() found / save() wrote, for its metadata
        # SessionBase.__init__ sets these three and ``serializer``, which it imports by name
        # on every construction (a third of a cached read's cost here); this backend never
        # uses it (FASTSESS_SERIALIZER), so ``serializer`` is imported on first access.
        if type(session_key) is str and (session_key in _known_ids or _valid_id(session_key)):
            # a fastsess id: what the validating setter (_validate_session_key) keeps, set
            # without its two Python calls; anything else goes through it
            self._SessionBase__session_key = session_key
        else:
            self._session_key = session_key
        self.accessed = False
        self.modified = False

    # SessionBase's ``session_key`` / ``_session_key`` properties (the latter validating on
    # assignment), with a C getter instead of a Python method: the middleware and load() read
    # the key several times per request.
    session_key = property(_key_of, doc="The session key, or None (no session yet, or the cookie held no valid key).")
    _session_key = property(_key_of, SessionBase._set_session_key)

    def _get_session(self, no_load: bool = False) -> dict[str, Any]:
        """``SessionBase._get_session``: the data, loaded on first access (``accessed`` set),
        found absent by ``getattr`` with a default instead of a raised AttributeError."""
        self.accessed = True
        data = getattr(self, "_session_cache", _UNLOADED)
        if data is _UNLOADED:
            data = self._session_cache = {} if no_load or self._SessionBase__session_key is None else self.load()
        return data  # type: ignore[no-any-return]

    _session = property(_get_session)

    # get and [] with _get_session inline: a view's first read loads the session

    def __getitem__(self, key: str) -> Any:
        self.accessed = True
        data = getattr(self, "_session_cache", _UNLOADED)
        if data is _UNLOADED:
            data = self._session_cache = {} if self._SessionBase__session_key is None else self.load()
        return data[key]

    def __contains__(self, key: object) -> bool:
        return key in self._get_session()

    def get(self, key: str, default: Any = None) -> Any:
        """``session[key]``, or ``default``."""
        self.accessed = True
        data = getattr(self, "_session_cache", _UNLOADED)
        if data is _UNLOADED:
            data = self._session_cache = {} if self._SessionBase__session_key is None else self.load()
        return data.get(key, default)

    def is_empty(self) -> bool:
        """True when there is no session key and no data (``SessionBase.is_empty``)."""
        return not self._SessionBase__session_key and not getattr(self, "_session_cache", None)

    @functools.cached_property
    def serializer(self) -> Any:
        """``SESSION_SERIALIZER``, imported on first access (fastsess itself does not use it)."""
        return import_string(settings.SESSION_SERIALIZER)

    # -- keys ----------------------------------------------------------------------------

    def _validate_session_key(self, key: Any) -> bool:
        """Only ids of the form fastsess issues are kept (with ``FASTSESS_MIGRATE_FROM``, also
        keys Django's rule accepts, to be looked up in the old backend); anything else becomes None."""
        if is_valid_session_id(key):
            return True
        return bool(_legacy_engine() and isinstance(key, str) and len(key) >= 8)

    def _get_new_session_key(self) -> str:
        """A fresh 256-bit id (no existence check: the write is SET NX, a collision raises CreateError)."""
        return new_session_id()

    async def _aget_new_session_key(self) -> str:
        """Async twin of ``_get_new_session_key`` (no I/O)."""
        return new_session_id()

    # -- helpers ---------------------------------------------------------------------------

    def _expiry_ttl(self) -> int:
        return int(self.get_expiry_age())

    async def _aexpiry_ttl(self) -> int:
        return int(await self.aget_expiry_age())

    def _loaded(self, found: Session | None) -> dict[str, Any]:
        if found is None:
            self._session_key = None
            self._stored = None
            return {}
        self._stored = found
        return plain_copy(found.data)  # type: ignore[no-any-return]

    def _legacy_record(self, session_id: str, data: dict[str, Any]) -> Session | None:
        """A new fastsess session (``session_id``) holding ``data`` found in the old engine, or
        None: nothing in it, a value fastsess cannot store, or an expiry already past."""
        try:
            storable = to_storable(data)
        except LegacyDataError as exc:
            logger.warning("Legacy session not migrated: %s", exc)
            return None
        if not storable:
            return None
        ttl = int(self.get_expiry_age(expiry=storable.get("_session_expiry")))  # no load: the data is given
        if ttl <= 0:
            return None
        session = Session(session_id, storable, ttl=ttl, new=True)
        session.modified = True
        return session

    def _from_legacy(self) -> Session | None:
        """For a key of the old engine while migrating (else None): the session stored under the
        id derived from it, else the old engine's session moved there now.

        The move writes only if nothing is stored under that id yet (SET NX) and then deletes
        the old copy, so concurrent first requests end with one session (the loser reads the
        winner's), and a request that finds the old copy gone reads what its mover wrote.  A
        move whose old copy is gone once it has written (another request moved it, and the
        session was ended since: logout, ``cycle_key``) is undone: never resurrected.

        Raises:
            StoreUnavailable: Redis failed.
        """
        key = self.session_key
        legacy = _legacy_session(key)
        if legacy is None:
            return None
        session_id = migrated_session_id(key)
        store = get_store()
        try:
            found: Session | None = store.load(session_id)
            if found is not None:
                return found
            record = self._legacy_record(session_id, legacy.load())
            if record is None:  # nothing (more) in the old engine: moved meanwhile?
                return _reload(store, session_id)
            store.save(record)
            if record.id != session_id:  # another request moved it first: the store put ours under a fresh id
                store.delete(record.id)
                _written(store, record.id)
                return _reload(store, session_id)
        except SessionCorrupt as exc:
            self._corrupt(exc)
            return None
        _written(store, session_id)
        if not legacy.exists(key):  # moved and ended meanwhile: undo
            store.delete(session_id)
            _written(store, session_id)
            return None
        legacy.delete(key)  # moved: the old backend forgets it
        return record

    async def _afrom_legacy(self) -> Session | None:
        """Async ``_from_legacy``."""
        key = self.session_key
        legacy = _legacy_session(key)
        if legacy is None:
            return None
        session_id = migrated_session_id(key)
        store = get_async_store()
        try:
            found = await store.load(session_id)
            if found is not None:
                return found
            record = self._legacy_record(session_id, await legacy.aload())
            if record is None:
                store.evict_from_cache(session_id)
                return await store.load(session_id)
            await store.save(record)
            if record.id != session_id:
                await store.delete(record.id)
                _written(store, record.id)
                store.evict_from_cache(session_id)
                return await store.load(session_id)
        except SessionCorrupt as exc:
            self._corrupt(exc)
            return None
        _written(store, session_id)
        if not await legacy.aexists(key):
            await store.delete(session_id)
            _written(store, session_id)
            return None
        await legacy.adelete(key)
        return record

    def _to_write(self, data: dict[str, Any], ttl: int, must_create: bool) -> Session:
        key = _store_id(self.session_key)
        assert key is not None
        prev = self._stored if self._stored is not None and self._stored.id == key else None
        if prev is not None and not must_create:  # a copy of it with the keys this request changed
            return updated(prev, plain_copy(data), ttl)
        session = Session(
            key,
            plain_copy(data),
            ttl=ttl,
            new=must_create,
            created_at=None if prev is None or must_create else prev.created_at,
            version=0 if prev is None or must_create else prev.version,
        )
        session.modified = True
        return session

    @staticmethod
    def _corrupt(exc: SessionCorrupt) -> None:
        logger.warning("Session data corrupted: %s", exc)

    # -- sync API ----------------------------------------------------------------------------

    def load(self) -> dict[str, Any]:
        """The session's data from Redis (or this node's cache); ``{}`` and no key if absent.

        Raises:
            StoreUnavailable: Redis failed.
        """
        key = self._SessionBase__session_key
        try:
            # a cache hit is the cached session itself: only read here (its data is copied
            # out by _loaded, and saves write copies of it: _to_write)
            found = (_sync_store or get_store()).load_shared(key) if key else None
        except SessionCorrupt as exc:
            self._corrupt(exc)
            found = None
        if found is None:  # an old engine's key while migrating: its derived id, or moved now
            found = self._from_legacy()
        return self._loaded(found)

    def exists(self, session_key: str | None) -> bool:
        """True if a session is stored under ``session_key`` (False for None or a malformed key;
        for an old engine's key while migrating: under its derived id, or in the old engine).

        Raises:
            StoreUnavailable: Redis failed.
        """
        if not session_key:
            return False
        if get_store().exists(_store_id(session_key)):
            return True
        legacy = _legacy_session(session_key)
        with contextlib.suppress(SuspiciousOperation):  # a key the old engine refuses (file)
            return legacy is not None and bool(legacy.exists(session_key))
        return False

    def create(self) -> None:
        """Store the current data under a new key (SET NX) and mark the session modified.

        Raises:
            StoreUnavailable: Redis failed.
            RuntimeError: no unused key after several attempts (never expected).
        """
        for _ in range(_CREATE_ATTEMPTS):
            self._session_key = self._get_new_session_key()
            try:
                self.save(must_create=True)
            except CreateError:
                continue
            self.modified = True
            return
        raise RuntimeError("could not create a session with an unused key")

    def save(self, must_create: bool = False) -> None:
        """Write the session with a Redis TTL of ``get_expiry_age()``.

        ``must_create``: only if the key is unused (SET NX), else ``CreateError``.
        Otherwise only if it still exists (SET XX), else ``UpdateError``.  A
        session whose expiry is already past is deleted instead of written.

        Raises:
            CreateError, UpdateError: see above.
            StoreUnavailable: Redis failed.
            TypeError: a value fastsess cannot store (see the serializer).
        """
        if self.session_key is None:
            return self.create()
        data = self._get_session(no_load=must_create)
        ttl = self._expiry_ttl()
        store = get_store()
        if ttl <= 0:
            if not must_create:
                self.delete()
            self._stored = None
            return None
        session = self._to_write(data, ttl, must_create)
        if must_create:
            store.save(session)
            if session.id != _store_id(self.session_key):  # the store moved a colliding new id: undo, report
                store.delete(session.id)
                raise CreateError
        elif not store.save(session):
            raise UpdateError
        _written(store, session.id)
        self._stored = session
        return None

    def delete(self, session_key: str | None = None) -> None:
        """Delete ``session_key`` (default: this session's key) from Redis and every node's cache
        (an old engine's key while migrating: its derived id, and its copy in the old engine).

        Raises:
            StoreUnavailable: Redis failed.
        """
        if session_key is None:
            if self.session_key is None:
                return
            session_key = self.session_key
        session_id = _store_id(session_key)
        store = get_store()
        store.delete(session_id)
        _written(store, session_id)
        if self._stored is not None and self._stored.id == session_id:
            self._stored = None
        legacy = _legacy_session(session_key)
        if legacy is not None:  # not moved yet (or moved by a request that failed before deleting it)
            with contextlib.suppress(SuspiciousOperation):  # a key the old engine refuses (file)
                legacy.delete(session_key)

    def cycle_key(self) -> None:
        """Move the data to a new key and delete the old one (one atomic script on one Redis).

        Raises:
            StoreUnavailable: Redis failed; the session keeps its old key.
        """
        data = self._session
        key = _store_id(self.session_key)
        if key is None or self._stored is None or self._stored.id != key:
            super().cycle_key()  # nothing stored under this key: create() + delete
            return
        ttl = self._expiry_ttl()
        if ttl <= 0:
            super().cycle_key()
            return
        session = self._to_write(data, ttl, must_create=False)
        store = get_store()
        store.regenerate(session)
        _written(store, key, session.id)
        self._session_key = session.id
        self._session_cache = data
        self._stored = session
        self.modified = True
        return None

    def bind(self, principal: str) -> None:
        """Bind this session to ``principal`` (e.g. ``str(user.pk)``), so that
        ``log_out_everywhere`` ends it: recorded when the response saves it.

        A session bound to another principal before also gets a new key (``cycle_key``), so
        the other principal's ``log_out_everywhere`` cannot end it (Django's ``login``
        already flushes a session of another user).

        Raises:
            TypeError, ValueError: an invalid principal (a non-empty str of at most 1024 characters).
            StoreUnavailable: Redis failed (only when it gets a new key).
        """
        if mark_principal(self, principal):
            self.cycle_key()

    @classmethod
    def clear_expired(cls) -> None:
        """Nothing to do: Redis expires sessions by their TTL."""

    # -- async API (on the asyncio store, never the sync one in a thread) ---------------------

    async def aload(self) -> dict[str, Any]:
        """Async ``load``."""
        try:
            found = await get_async_store().load(self.session_key) if self.session_key else None
        except SessionCorrupt as exc:
            self._corrupt(exc)
            found = None
        if found is None:
            found = await self._afrom_legacy()
        return self._loaded(found)

    async def aexists(self, session_key: str | None) -> bool:
        """Async ``exists``."""
        if not session_key:
            return False
        if await get_async_store().exists(_store_id(session_key)):
            return True
        legacy = _legacy_session(session_key)
        with contextlib.suppress(SuspiciousOperation):
            return legacy is not None and bool(await legacy.aexists(session_key))
        return False

    async def acreate(self) -> None:
        """Async ``create``."""
        for _ in range(_CREATE_ATTEMPTS):
            self._session_key = await self._aget_new_session_key()
            try:
                await self.asave(must_create=True)
            except CreateError:
                continue
            self.modified = True
            return
        raise RuntimeError("could not create a session with an unused key")

    async def asave(self, must_create: bool = False) -> None:
        """Async ``save`` (same CreateError/UpdateError semantics)."""
        if self.session_key is None:
            return await self.acreate()
        data = await self._aget_session(no_load=must_create)
        ttl = await self._aexpiry_ttl()
        store = get_async_store()
        if ttl <= 0:
            if not must_create:
                await self.adelete()
            self._stored = None
            return None
        session = self._to_write(data, ttl, must_create)
        if must_create:
            await store.save(session)
            if session.id != _store_id(self.session_key):
                await store.delete(session.id)
                raise CreateError
        elif not await store.save(session):
            raise UpdateError
        _written(store, session.id)
        self._stored = session
        return None

    async def adelete(self, session_key: str | None = None) -> None:
        """Async ``delete``."""
        if session_key is None:
            if self.session_key is None:
                return
            session_key = self.session_key
        session_id = _store_id(session_key)
        store = get_async_store()
        await store.delete(session_id)
        _written(store, session_id)
        if self._stored is not None and self._stored.id == session_id:
            self._stored = None
        legacy = _legacy_session(session_key)
        if legacy is not None:
            with contextlib.suppress(SuspiciousOperation):
                await legacy.adelete(session_key)

    async def acycle_key(self) -> None:
        """Async ``cycle_key``."""
        data = await self._aget_session()
        key = _store_id(self.session_key)
        if key is None or self._stored is None or self._stored.id != key:
            await super().acycle_key()
            return
        ttl = await self._aexpiry_ttl()
        if ttl <= 0:
            await super().acycle_key()
            return
        session = self._to_write(data, ttl, must_create=False)
        store = get_async_store()
        await store.regenerate(session)
        _written(store, key, session.id)
        self._session_key = session.id
        self._session_cache = data
        self._stored = session
        self.modified = True
        return None

    @classmethod
    async def aclear_expired(cls) -> None:
        """Nothing to do: Redis expires sessions by their TTL."""


# -- log out everywhere -------------------------------------------------------------------------


def bind_on_login(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """A ``user_logged_in`` receiver binding the new login's session to ``str(user.pk)``;
    opt in with ``user_logged_in.connect(bind_on_login)`` (e.g. in ``AppConfig.ready``).

    Raises:
        ConfigError: the request's session is not a fastsess session (``SESSION_ENGINE``).
    """
    session = getattr(request, "session", None)
    if not isinstance(session, SessionStore):
        raise ConfigError('bind_on_login needs SESSION_ENGINE = "fastsess.contrib.django"')
    session.bind(str(user.pk))


def log_out_everywhere(user: Any, request: Any = None) -> int:
    """Delete every session bound to ``str(user.pk)``, on every node, but ``request``'s own
    (pass the request after a password change; None ends them all); returns how many.

    Raises:
        StoreUnavailable: Redis failed (call again).
    """
    keep = None if request is None else _store_id(request.session.session_key)
    return get_store().delete_all(str(user.pk), except_id=keep)


async def alog_out_everywhere(user: Any, request: Any = None) -> int:
    """``log_out_everywhere`` on the asyncio store.

    Raises:
        StoreUnavailable: Redis failed (call again).
    """
    keep = None if request is None else _store_id(request.session.session_key)
    return await get_async_store().delete_all(str(user.pk), except_id=keep)
