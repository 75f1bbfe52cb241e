"""``ClusterConfig``: the settings of a clustered store, defined once, loadable from the environment.

Environment variables (``ClusterConfig.from_env()``), all optional:

=================================== =============================== ==================
variable                            field                           example
=================================== =============================== ==================
``FASTSESS_CLUSTER_ENABLED``        ``enabled``                     ``1`` / ``0``
``FASTSESS_NODE_ID``                ``node_id``                     ``web-3``
``FASTSESS_CHANNEL``                ``channel``                     ``myapp:invalidate``
``FASTSESS_LOCAL_CACHE_ENABLED``    ``local_cache_enabled``         ``true``
``FASTSESS_LOCAL_CACHE_TTL``        ``local_cache_ttl``             ``30``
``FASTSESS_LOCAL_CACHE_MAX_SIZE``   ``local_cache_max_size``        ``10000``
``FASTSESS_SUBSCRIBE_TIMEOUT``      ``subscribe_timeout``           ``1.0``
``FASTSESS_RECONNECT_BACKOFF``      ``reconnect_backoff``           ``0.05,5``
``FASTSESS_STALE_IF_ERROR``         ``stale_if_error``              ``10`` (seconds)
``FASTSESS_TRACK_EXTERNAL_CHANGES`` ``track_external_changes``      ``true``
``FASTSESS_SHARDED_PUBSUB``         ``sharded_pubsub``              ``true``
``FASTSESS_NEGATIVE_CACHE_TTL``     ``negative_cache_ttl``          ``2``
``FASTSESS_UPDATE_MAX_BYTES``       ``update_max_bytes``            ``4096``
``FASTSESS_WARM_PEERS``             ``warm_peers``                  ``true``
``FASTSESS_LEASE``                  ``lease``                       ``1.0``
``FASTSESS_REPLAY_LOG_SIZE``        ``replay_log_size``             ``10000``
=================================== =============================== ==================

and ``FASTSESS_LOCAL_CACHE_MAX_BYTES`` / ``FASTSESS_LOCAL_CACHE_MAX_ITEM_BYTES``
(``local_cache_max_bytes`` / ``local_cache_max_item_bytes``, e.g. ``67108864`` / ``262144``),
``FASTSESS_NEGATIVE_CACHE_MAX_SIZE`` (``negative_cache_max_size``, e.g. ``10000``).

``FASTSESS_STALE_IF_ERROR`` takes seconds (``0``: off) or a word: ``true``/``yes``/``on``
(``local_cache_ttl`` seconds, as ``stale_if_error=True``), ``false``/``no``/``off`` (off).
A bare ``1`` is one second, not "on".
"""

from __future__ import annotations

import dataclasses
import math
import os
import uuid
from collections.abc import Mapping
from typing import Any

from .errors import ConfigError

ENV_PREFIX = "FASTSESS_"
DEFAULT_LOCAL_CACHE_MAX_BYTES = 64 * 1024 * 1024  # serialized bytes of all cached sessions of a process
DEFAULT_LOCAL_CACHE_MAX_ITEM_BYTES = 256 * 1024  # larger sessions are not cached locally
# The largest session value an update-mode message may carry: every node accepts messages up
# to this much bigger than a plain one, whatever its own update_max_bytes.
MAX_UPDATE_BYTES = 64 * 1024

_BOOLS = ("enabled", "local_cache_enabled", "track_external_changes", "sharded_pubsub", "warm_peers")  # stale_if_error: a bool or seconds
_TRUE = {"1", "true", "yes", "on"}
# What a field needs beside it to be valid on its own (``from_env`` checks each variable alone).
_ALONE: dict[str, dict[str, Any]] = {"warm_peers": {"update_max_bytes": 1}}
_FALSE = {"0", "false", "no", "off"}


def _new_node_id() -> str:
    return uuid.uuid4().hex


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """How a ``ClusteredRedisStore`` keeps its local cache coherent with the other nodes.

    Attributes:
        enabled: publish and listen for invalidations.  Off, the store is a plain
            ``RedisStore`` without a local cache (never a silently incoherent cache).
        node_id: this node's identity in messages; its own messages are ignored.
            Unique per store instance (two live stores in one process may not share it).
        channel: the pub/sub channel every node of the deployment uses.
        local_cache_enabled: keep decoded sessions in this process.  Off, the store
            still publishes, so the other nodes' caches stay coherent.
        local_cache_ttl: seconds a cached session may be served without asking Redis,
            an upper bound on staleness even if every invalidation were lost.
        local_cache_max_size: sessions kept per process (CLOCK eviction beyond that).
        local_cache_max_bytes: serialized bytes of all sessions cached per process
            (64 MiB; the oldest writes are dropped first to stay under it).
        local_cache_max_item_bytes: a session larger than this, serialized, is not
            cached locally (256 KiB; capped at ``local_cache_max_bytes``).
        subscribe_timeout: seconds to wait for the subscription to be confirmed,
            and the idle time after which the listener checks the connection with a PING.
        reconnect_backoff: (first, max) delay in seconds between reconnection attempts.
        stale_if_error: seconds into an outage during which a read that Redis failed
            may be answered from this node's cache instead of raising
            ``StoreUnavailable`` (default ``False``: 0, fail closed).  ``True`` means
            ``local_cache_ttl`` seconds (a cached copy outlives no outage longer than
            that anyway); ``stale_window`` gives the seconds either way.  Writes
            always fail, and a session deleted before the outage is never served.
        track_external_changes: also evict cached sessions changed by anything else
            than fastsess (another tool's ``DEL``, expiry, eviction, ``FLUSHDB``): the
            listener registers ``CLIENT TRACKING ... BCAST PREFIX <prefix>`` (Redis >= 6;
            on Redis Cluster, Redis >= 7 with ``sharded_pubsub``).  Off by default: it
            costs every listener one more message per write (see the README).
        sharded_pubsub: on a Redis Cluster whose masters all run Redis >= 7, publish
            invalidations with ``SPUBLISH`` on one shard channel per master
            (``{t}<channel>``), so they are not copied to every cluster node; older
            servers get ``PUBLISH``.  Every node of a deployment must use the same setting
            (a node with it off misses the others' sharded messages).
        negative_cache_ttl: seconds an id that Redis does not hold is remembered as
            absent, so repeated loads of unknown ids (random cookies) cost no round trip
            (default 2; 0 turns it off).  A save that creates the id, on any node, clears it.
        negative_cache_max_size: absent ids remembered per process (CLOCK eviction beyond).
        update_max_bytes: 0 (default): a save tells the other nodes to evict their copy.
            Above 0: a save whose stored value is at most this many bytes sends the value
            itself, and nodes that cache the session replace their copy with it (only by
            a newer version) instead of evicting it.  At most ``MAX_UPDATE_BYTES``.
        warm_peers: False (default).  True (needs ``update_max_bytes`` above 0; not on
            Redis Cluster): every node keeps every session up to ``update_max_bytes`` that
            any node reads or writes, not only those it read itself: a load that misses
            publishes the value it read (in the same script, no extra round trip), and an
            update-mode message installs its value where the session is not cached.  For
            nodes behind a load balancer without sticky sessions, where every node sees
            every session: each session is fetched from Redis once, not once per node.
        lease: the staleness bound, in seconds: the local cache is served only while the
            listener has proof, younger than this, that every invalidation published
            before it was applied (a PONG on the subscribed connection, or a replay);
            otherwise reads go to Redis until proven again.
        replay_log_size: invalidations kept in Redis (a capped stream per channel, trimmed
            approximately) for a listener that missed some to replay; missing more than
            this flushes its cache.  Not used on Redis Cluster.

    Raises:
        ConfigError: a field out of range or of the wrong type.
    """

    enabled: bool = True
    node_id: str = dataclasses.field(default_factory=_new_node_id)
    channel: str = "fastsess:invalidate"
    local_cache_enabled: bool = True
    local_cache_ttl: float = 30.0
    local_cache_max_size: int = 10_000
    local_cache_max_bytes: int = DEFAULT_LOCAL_CACHE_MAX_BYTES
    local_cache_max_item_bytes: int = DEFAULT_LOCAL_CACHE_MAX_ITEM_BYTES
    subscribe_timeout: float = 1.0
    reconnect_backoff: tuple[float, float] = (0.05, 5.0)
    stale_if_error: bool | float = False
    track_external_changes: bool = False
    sharded_pubsub: bool = True
    negative_cache_ttl: float = 2.0
    negative_cache_max_size: int = 10_000
    update_max_bytes: int = 0
    warm_peers: bool = False
    lease: float = 1.0
    replay_log_size: int = 10_000

    def __post_init__(self) -> None:
        for name in _BOOLS:
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be a bool, not {getattr(self, name)!r}")
        stale = self.stale_if_error
        if not isinstance(stale, bool):
            try:
                ok = isinstance(stale, (int, float)) and math.isfinite(stale) and stale >= 0
            except OverflowError:
                ok = False
            if not ok:
                raise ConfigError(f"stale_if_error must be a bool or a finite number of seconds >= 0, not {stale!r}")
        for name in ("node_id", "channel"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or len(value) > 200:
                raise ConfigError(f"{name} must be a non-empty str of at most 200 characters, not {value!r}")
        if self.channel.startswith("{"):
            raise ConfigError(f"channel must not start with '{{' (reserved for shard channels), not {self.channel!r}")
        _positive("local_cache_ttl", self.local_cache_ttl)
        _positive("subscribe_timeout", self.subscribe_timeout)
        _positive("lease", self.lease)
        for name in ("local_cache_max_size", "local_cache_max_bytes", "local_cache_max_item_bytes", "negative_cache_max_size",
                     "replay_log_size"):
            size = getattr(self, name)
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ConfigError(f"{name} must be a positive int, not {size!r}")
        if isinstance(self.negative_cache_ttl, bool) or self.negative_cache_ttl != 0:  # 0: off
            _positive("negative_cache_ttl", self.negative_cache_ttl)
        update = self.update_max_bytes
        if isinstance(update, bool) or not isinstance(update, int) or not 0 <= update <= MAX_UPDATE_BYTES:
            raise ConfigError(f"update_max_bytes must be an int from 0 to {MAX_UPDATE_BYTES}, not {update!r}")
        if self.warm_peers and not update:
            raise ConfigError("warm_peers needs update mode (update_max_bytes above 0): the messages carry the values")
        backoff = self.reconnect_backoff
        if not isinstance(backoff, tuple) or len(backoff) != 2:
            raise ConfigError(f"reconnect_backoff must be a (first, max) tuple, not {backoff!r}")
        _positive("reconnect_backoff[0]", backoff[0])
        _positive("reconnect_backoff[1]", backoff[1])
        if backoff[0] > backoff[1]:
            raise ConfigError(f"reconnect_backoff: first delay {backoff[0]} exceeds the max {backoff[1]}")

    @property
    def stale_window(self) -> float:
        """``stale_if_error`` in seconds: 0.0 (off), ``local_cache_ttl`` for True, else the number."""
        stale = self.stale_if_error
        if stale is True:
            return float(self.local_cache_ttl)
        return float(stale)

    def replace(self, **changes: Any) -> ClusterConfig:
        """A copy with ``changes`` applied (validated like the constructor)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ClusterConfig:
        """A config from ``FASTSESS_*`` variables (see the module doc); ``overrides`` win.

        Raises:
            ConfigError: a variable that does not parse, or an invalid value.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name in overrides:  # an override wins: its variable is not even parsed
                continue
            name = env_variable(field.name)
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                continue
            value = _parse(name, field.name, raw.strip())
            try:
                # validate alone (with what a cross-field rule needs), so the error can name the variable
                cls(**{**_ALONE.get(field.name, {}), field.name: value})
            except ConfigError as exc:
                raise ConfigError(f"{name}={raw.strip()!r}: {exc}") from exc
            values[field.name] = value
        values.update(overrides)
        return cls(**values)


def env_variable(field: str) -> str:
    """The environment variable of a ``ClusterConfig`` field (``node_id`` -> ``FASTSESS_NODE_ID``)."""
    return ENV_PREFIX + ("CLUSTER_ENABLED" if field == "enabled" else field.upper())


def _positive(name: str, value: Any) -> None:
    try:
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0
    except OverflowError:  # an int too large for a float
        ok = False
    if not ok:
        raise ConfigError(f"{name} must be a positive, finite number, not {value!r}")


def _parse(variable: str, field: str, raw: str) -> Any:
    try:
        if field == "stale_if_error":
            lowered = raw.lower()
            if lowered in _TRUE - {"1"}:
                return True
            if lowered in _FALSE - {"0"}:
                return False
            try:
                return float(raw)
            except ValueError:
                raise ValueError("expected seconds (0: off) or one of true/false, yes/no, on/off") from None
        if field in _BOOLS:
            lowered = raw.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError("expected one of 1/0, true/false, yes/no, on/off")
        if field in ("local_cache_max_size", "local_cache_max_bytes", "local_cache_max_item_bytes", "negative_cache_max_size",
                     "update_max_bytes", "replay_log_size"):
            return int(raw.replace("_", ""))
        if field in ("local_cache_ttl", "subscribe_timeout", "negative_cache_ttl", "lease"):
            return float(raw)
        if field == "reconnect_backoff":
            first, _, last = raw.partition(",")
            return (float(first), float(last))
        return raw
    except ValueError as exc:
        raise ConfigError(f"{variable}={raw!r}: {exc}") from exc
