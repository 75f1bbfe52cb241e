"""Every store operation of the Redis-backed stores, written once, with no I/O.

Each operation is a generator: it yields ``Command`` tuples and receives their
replies, and its return value is the operation's result.  A driver runs it (the sync
stores with a blocking client, the asyncio stores with ``await``), as httpx runs its
auth flows::

    flow = core.save(session)
    command = next(flow)                      # StopIteration: done, no I/O needed
    reply = client.execute_command(*command[2])
    command = flow.send(reply)                # ... until StopIteration(value)

A command that fails reaches the generator as the mapped fastsess error
(``StoreUnavailable``, ``PoolExhausted``, ``SessionCorrupt``), thrown in at the
``yield``; a cancellation or any other exception is thrown in as it is.  So the
decisions (id checks, encode/decode, collision retry, rollback, refresh, cache tokens
and fills, stale-if-error, the re-run of a move whose outcome is unknown, marking
uncertain writes) live here, and the drivers only move bytes.

With a ``CachePolicy`` and a ``Messages`` source (a ``ClusteredRedisStore``), writes
run as Lua scripts that publish their invalidation in the same round trip (``PUBLISH``,
or ``SPUBLISH`` on the key's shard channel: ``PUBLISH_LUA``), and reads
fetch the key's remaining TTL with the value.
"""

from __future__ import annotations

import hashlib
import logging
import random
from asyncio import CancelledError
from collections.abc import Callable, Generator
from typing import Any, NamedTuple, Protocol

from ..errors import CircuitOpen, FastsessError, PoolExhausted, SessionCorrupt, StoreUnavailable
from ..serializers import Serializer
from ..session import Session, check_ttl
from .conflict import MAX_CONFLICT_RETRIES, OnConflict, conflict_pause, rebase, replace, stamp, too_many_conflicts
from .keys import KeySpace, check_session_id, is_valid_session_id, new_session_id
from .policy import CachePolicy
from .sequence import SEQUENCE_LUA, log_keys

MAX_ID_ATTEMPTS = 3

log = logging.getLogger("fastsess.store")

# Message types (the wire format's ``t``).
INVALIDATED = "invalidated"
DELETED = "deleted"
TOUCHED = "touched"
CLEARED = "cleared"


class Script(NamedTuple):
    """A Lua script: run by SHA (``EVALSHA``), sent whole (``EVAL``) when the server lacks it."""

    text: str
    sha: str


def script(text: str) -> Script:
    """A ``Script`` for ``text``."""
    return Script(text, hashlib.sha1(text.encode()).hexdigest())  # noqa: S324 - Redis names scripts by SHA-1


# One Redis command: ``(label, script, args)``; the driver calls
# ``client.execute_command(*args)``.  ``label`` names the operation in error messages;
# ``script`` is set for an ``EVALSHA`` (the driver sends the script whole with ``EVAL`` if
# the server does not know it).  A plain tuple: building one costs a fraction of a class.
Command = tuple[str, "Script | None", tuple[Any, ...]]


# Prepended to every write script: ``publish(channel, message)``.  A channel starting with
# "{" is a shard channel (sharded pub/sub on Redis Cluster, ``fastsess._core.slots``):
# SPUBLISH, which reaches only the nodes of this shard; if this node does not serve the
# channel's slot (the writer's slot map is out of date), the message goes out with PUBLISH
# on the plain channel instead (every listener also subscribes that one), so the write
# never lands without its invalidation.  Any other channel: PUBLISH.
#
# With ``meta`` (standalone Redis, Sentinel: ``StoreCore._announce``), the message is
# numbered first: ``SEQUENCE_LUA`` advances the channel's sequence, logs (sequence, id)
# in the capped stream ``log`` and completes the message (``fastsess._core.sequence``).
# With ``cap`` but no ``meta`` (Redis Cluster): the shard channel's own sequence hash and
# log, ``<channel>:seq`` and ``<channel>:log``, are in the channel's slot, on this master
# but (usually) not in the slot of the script's keys, so they are not declared (redis-py's
# cluster client refuses a command whose keys span slots; a script without flags may
# touch other slots of its node).  If the channel is not a shard channel or its slot is
# not served here (a stale slot map), the message is not numbered: its two extra pairs
# are cut off again (``messages.encode_message``: the map header counts 2 pairs fewer,
# the trailing "ep" key goes) and it goes out whole, with PUBLISH on the plain channel.
PUBLISH_LUA = SEQUENCE_LUA + """local function publish(channel, message, meta, log, cap, id)
  if meta then
    message = sequence(message, meta, log, cap, id)
  elseif cap then
    local ok, numbered = false, nil
    if string.byte(channel, 1) == 123 then
      ok, numbered = pcall(sequence, message, channel .. ':seq', channel .. ':log', cap, id)
    end
    if ok then
      message = numbered
    else
      message = string.char(string.byte(message, 1) - 2) .. string.sub(message, 2, -4)
      if string.byte(channel, 1) == 123 then
        channel = string.sub(channel, string.find(channel, '}', 1, true) + 1)
      end
      return redis.call('PUBLISH', channel, message)
    end
  end
  if string.byte(channel, 1) == 123 then
    local sent = redis.pcall('SPUBLISH', channel, message)
    if type(sent) ~= 'table' then
      return sent
    end
    channel = string.sub(channel, string.find(channel, '}', 1, true) + 1)
  end
  return redis.call('PUBLISH', channel, message)
end
"""


def publish_script(text: str) -> Script:
    """A write ``Script`` for ``text``, which may call ``publish(channel, message[, meta, log,
    cap, id])``: its calls pass ``KEYS[n + 1], KEYS[n + 2]`` (``n``: the script's own keys)
    and the two ARGV after its own, which ``StoreCore._announce`` appends when sequenced."""
    return script(PUBLISH_LUA + text)


# ``changed(key, kind, token, gone)``: nil if ``key`` still holds the value a session was
# loaded from, recognised by ``_core.conflict.stamp``'s token: "p" = its first bytes
# (``token``: one GETRANGE of that many bytes), "h" = the SHA-1 hex of the whole value,
# "" = no check (only that the key exists); ``gone`` if the key no longer exists; else
# the stored bytes (read with GETRANGE 0 -1, not GET: INFO commandstats then counts only
# the loads' GETs as reads).  One Redis call when the value is the expected one (every
# ``redis.call`` from a script costs several times a plain command).  A script returns
# whatever it answers: ``local c = changed(...) if c then return c end``.
COMPARE_LUA = """local function changed(key, kind, token, gone)
  local cur
  if kind == 'p' then
    cur = redis.call('GETRANGE', key, 0, #token - 1)
    if cur == token then
      return nil
    end
  elseif kind == 'h' then
    cur = redis.call('GETRANGE', key, 0, -1)
    if cur ~= '' and redis.sha1hex(cur) == token then
      return nil
    end
  elseif redis.call('STRLEN', key) ~= 0 then
    return nil
  else
    return gone
  end
  if cur == '' then
    return gone
  end
  if kind == 'p' then
    return redis.call('GETRANGE', key, 0, -1)
  end
  return cur
end
"""


def compare_script(text: str) -> Script:
    """A write ``Script`` (``publish_script``) that may also call ``changed(...)`` (above)."""
    return publish_script(COMPARE_LUA + text)


def run_script(label: str, lua: Script, keys: tuple[str, ...], *args: Any) -> Command:
    """An ``EVALSHA`` of ``lua`` over ``keys`` with ``args``."""
    return (label, lua, ("EVALSHA", lua.sha, len(keys), *keys, *args))


# A driver answers a ``PAUSE`` command by waiting ``args[0]`` seconds (``time.sleep`` or
# ``asyncio.sleep``) and replying None; it sends nothing to Redis.
PAUSE = Script("-- a pause, not a script", "pause")


def pause(seconds: float) -> Command:
    """A command that makes the driver wait ``seconds`` (no Redis call)."""
    return ("PAUSE", PAUSE, (seconds,))


# Sequenced (``StoreCore._announce``): two more KEYS (the channel's sequence hash and log)
# and two more ARGV (the log's cap and the session id), after the script's own.

# KEYS[1]=old key, KEYS[2]=new key  ARGV: payload, ttl, kind, token (as SAVE's
# ARGV[3..4]; kind '' = no check)[, channel, message (deleted old id)].
#   done:    if the new key already holds exactly this payload, this very move already
#     ran (a retry after an unknown outcome, or the first attempt landing late): 2.
#   gone:    the old key no longer exists (deleted, logged out, expired): -1, nothing
#     written -- a session is never re-created under a new id.
#   compare: the old key no longer holds what this session was loaded from (another
#     request saved it meanwhile): its bytes, for the caller to re-apply its changes on.
#   move:    SET new NX, and only if that succeeded DEL old (and publish, when a channel
#     is given): a collision never loses the old session.  1, or 0 if the new id is taken.
# Values are read with GETRANGE 0 -1 (not GET): INFO commandstats then counts only the
# loads' GETs as reads.
MOVE = compare_script("""
if redis.pcall('GETRANGE', KEYS[2], 0, -1) == ARGV[1] then
  return 2
end
local answer = changed(KEYS[1], ARGV[3], ARGV[4], -1)
if answer then
  return answer
end
if redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2], 'NX') then
  redis.call('DEL', KEYS[1])
  if ARGV[5] then
    publish(ARGV[5], ARGV[6], KEYS[3], KEYS[4], ARGV[7], ARGV[8])
  end
  return 1
end
return 0
""")

# The save of a session that exists (a compare-and-set), in three parts:
#   compare: the key must still exist (never resurrect a deleted or expired session: 0)
#     and still hold the value this session was loaded from, recognised by ARGV[3..4]
#     (``_core.conflict.stamp``): "p" = its first bytes (ARGV[4]), "h" = the SHA-1 hex
#     of the whole value (ARGV[4]); else the stored value is returned,
#     for the caller to re-apply its changes on and retry.
#   write:   SET with the new TTL.
#   publish: only with a channel (a clustered store): the invalidation, in the same step.
# KEYS[1]=key  ARGV: payload, ttl, kind ("p" or "h"), prefix or digest, [channel, message].  Returns 1 (written), 0 (no such key) or the stored bytes (conflict),
# read with GETRANGE 0 -1 (not GET: INFO commandstats then counts only the loads' GETs).
SAVE_BODY = """
local answer = changed(KEYS[1], ARGV[3], ARGV[4], 0)
if answer then
  return answer
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
"""
SAVE = compare_script(SAVE_BODY + """if ARGV[5] then
  publish(ARGV[5], ARGV[6], KEYS[2], KEYS[3], ARGV[7], ARGV[8])
end
return 1
""")

# ``SAVE`` without a publish step (``RedisStore``), and so without the publish and
# sequencing functions, whose definitions every run of a script re-creates.
SAVE_PLAIN = script(COMPARE_LUA + SAVE_BODY + "return 1\n")

# ``RedisStore``'s save of a session that exists, for a value of ``STAGE_FROM`` bytes or
# more, without the value passing through Lua (Redis turns every script argument into a
# Lua string, at about 1 ns a byte: an empty script given a 60 KB argument took 67 us of
# server time where a SET of it took 0.6 us, bench/README.md).  Two commands sent in
# one round trip on one connection (``stage``): a plain ``SET staged payload EX ttl``
# under a fresh name of its own (``staged_key``: the key plus a random suffix, never
# matched by the SCANs of ``iter_ids``/``clear``), then this script, which compares as
# ``SAVE`` does and either RENAMEs the staged value over the key (RENAME moves it and its
# TTL, copying nothing) or deletes it.  The compare and the write are still one atomic
# step on the server; the staged key is seen by nobody else (its name is this attempt's
# alone), and if the connection fails between the two commands it is left to expire
# with the session's TTL.  Not on Redis Cluster (the two keys are in different slots:
# ``SAVE`` there).
# KEYS[1]=key, KEYS[2]=staged key  ARGV: kind, token (as SAVE's ARGV[3..4]).
# Returns 1 (written), 0 (no such key) or the stored bytes (conflict), each time with the
# staged copy gone; the compare's error (WRONGTYPE: ``SessionCorrupt``) after deleting
# the staged copy; an error if the staged copy vanished meanwhile (deleted by hand,
# evicted: nothing written, ``StoreUnavailable``).
STAGED_SAVE = script(COMPARE_LUA + """
local ok, answer = pcall(changed, KEYS[1], ARGV[1], ARGV[2], 0)
if not ok or answer then
  redis.call('DEL', KEYS[2])
  if not ok then
    error(answer, 0)
  end
  return answer
end
redis.call('RENAME', KEYS[2], KEYS[1])
return 1
""")

# Payloads from this size on are saved by ``STAGED_SAVE`` (two commands), smaller ones by
# ``SAVE_PLAIN`` (one), whose Lua copy of them then costs less than the second command
# (bench/cas_save.py, 2026-11-30, load 3.5-5, a RedisStore save against one with a bare
# SET XX: one script 1.14x / 1.15x / 1.21x / 1.17-1.20x / 1.22x / 1.50-1.58x at 1 / 2 / 3 /
# 4 / 8 / 60 KB, staged 1.15x / 1.15x / 1.17x / 1.13-1.16x / 1.14x / 1.08-1.10x).
STAGE_FROM = 2048


def staged_key(key: str) -> str:
    """A fresh name for one staged write of ``key``: ``key`` + ``"~"`` + 16 random hex
    digits (unique among the writes of one key in flight at once; not a secret)."""
    return f"{key}~{random.getrandbits(64):016x}"  # noqa: S311 - a unique name, not a secret


# A driver answers a ``STAGE`` command, args ``(write, lua, call)``, by sending the command
# ``write`` and the ``EVALSHA`` ``call`` of ``lua`` in one round trip on one connection, in
# that order, and replying the script's reply (an error reply of either raises; NOSCRIPT:
# both again, with ``EVAL``).
STAGE = Script("-- a write and a script, not a script", "stage")

# KEYS[1]=key  ARGV: payload, ttl, channel, message.  The first save of a new id: SET NX,
# and only if that succeeded publish (marked as a creation), so that nodes remembering the
# id as absent (the negative cache) forget it.  With tracking, the own echo also tells the
# listener that the notification of this key is this node's own write.
SET_NX_PUBLISH = publish_script("""
if redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2], 'NX') then
  publish(ARGV[3], ARGV[4], KEYS[2], KEYS[3], ARGV[5], ARGV[6])
  return 1
end
return 0
""")

# KEYS[1]=key  ARGV: channel, message.  Published even if the key was gone: a node may
# still cache a copy of a session that expired in Redis.
DELETE_PUBLISH = publish_script("""
local n = redis.call('DEL', KEYS[1])
publish(ARGV[1], ARGV[2], KEYS[2], KEYS[3], ARGV[3], ARGV[4])
return n
""")

# Redis Cluster's second step of a move (the new key is written already, in another slot):
# KEYS[1]=old key  ARGV: kind, token (SAVE's ARGV[3..4]; kind '' = no check)
# [, channel, message (deleted old id)].  -1 if the old key is gone, its bytes if it no
# longer holds what the session was loaded from (the caller deletes the new key again),
# else DEL it (and publish): 1.
CHECK_DELETE = compare_script("""
local answer = changed(KEYS[1], ARGV[1], ARGV[2], -1)
if answer then
  return answer
end
redis.call('DEL', KEYS[1])
if ARGV[3] then
  publish(ARGV[3], ARGV[4], KEYS[2], KEYS[3], ARGV[5], ARGV[6])
end
return 1
""")

# KEYS[1]=key  ARGV: ttl, channel, message.  Other nodes drop their copy, whose local
# expiry was computed from the old TTL.  Returns the value (nil: no such session; 1: not
# a string), for ``touch`` to renew a bound session's index entry.
TOUCH_PUBLISH = publish_script("""
local value = redis.pcall('GET', KEYS[1])
if type(value) == 'table' then
  value = 1  -- not a string (planted by another tool): extended as it is, nothing to read
end
if value then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  publish(ARGV[2], ARGV[3], KEYS[2], KEYS[3], ARGV[4], ARGV[5])
end
return value
""")

# KEYS[1]=key.  The value and its remaining TTL in ms (-2: no key, -1: no expiry), read
# atomically in one round trip: a miss caches the session until the key's real expiry.
GET_PTTL = script("""
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
""")

# KEYS[1]=key.  ARGV: channel, the client's bytes of a ``filled`` message
# (``messages.fill_prefix``), the largest value to share.  GET_PTTL, and a value of at
# most that size with at least a second to live is also published (warm_peers), with the
# expiry in seconds (uint 32) and the value (bin 32) appended: ``messages.complete_fill``.
GET_PTTL_FILL = script("""
local v = redis.call('GET', KEYS[1])
local t = redis.call('PTTL', KEYS[1])
if v and #v <= tonumber(ARGV[3]) and t >= 1000 then
  local function u32(n)
    return string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
  end
  redis.call('PUBLISH', ARGV[1], ARGV[2] .. '\\206' .. u32(math.floor(t / 1000)) .. '\\161p\\198' .. u32(#v) .. v)
end
return {v, t}
""")

# KEYS: the channel's sequence hash and log.  ARGV: channel, message, cap[, logged ids].
# A message of its own, numbered and logged: a clear (no ids: logged as "", which a
# listener that replays it flushes), or on Redis Cluster ``delete_all``'s batch for one
# shard (its ids joined by commas).
CLEAR_PUBLISH = publish_script("""
publish(ARGV[1], ARGV[2], KEYS[1], KEYS[2], ARGV[3], ARGV[4] or '')
return 1
""")

SCRIPTS = (
    MOVE, SAVE, SAVE_PLAIN, STAGED_SAVE, SET_NX_PUBLISH, DELETE_PUBLISH, CHECK_DELETE, TOUCH_PUBLISH, CLEAR_PUBLISH, GET_PTTL,
    GET_PTTL_FILL,
)


class Messages(Protocol):
    """Where a clustered store's invalidation messages come from (its coordinator)."""

    channel: str
    update_max_bytes: int  # update mode: a value up to this size travels in the message (0: off)
    sequenced: bool  # the write scripts number the messages (see fastsess._core.sequence)
    log_size: int  # the cap of the channel's invalidation log
    warm_peers: bool  # a load that misses publishes what it read (``GET_PTTL_FILL``)

    def channel_for(self, key: str) -> str: ...

    def fill_prefix(self, session_id: str) -> bytes: ...

    def shard_channels(self) -> tuple[str, ...]: ...

    def expect_write(self, session_id: str) -> None: ...

    def message(
        self, kind: str, session_id: str | None, version: int = 0, expires_in: int | None = None, ids: list[str] | None = None,
        payload: bytes | None = None, created: bool = False, sequenced: bool | None = None,
    ) -> bytes: ...

    def note_published(self, count: int = 1) -> None: ...


class Indexing(Protocol):
    """Keeps a principal's index right when a bound session is written (``principals``)."""

    def before_write(self, session: Session, now: float) -> Generator[Command, Any, None]: ...

    def after_new_key(self, session: Session) -> Generator[Command, Any, None]: ...

    def after_touch(self, session: Session, seconds: int) -> Generator[Command, Any, None]: ...


Flow = Generator[Command, Any, Any]

# ``_move``'s answer when the old key no longer exists (nothing written).
GONE = "gone"

# Errors raised before a command left this process (the circuit breaker refused it, or no
# pooled connection was free): the outcome is known, nothing changed.  A save or touch
# that meets one keeps this node's cached copy, a stale_if_error fallback; a delete or a
# regenerate still drops it (a logout attempted during an outage stops serving the copy).
NEVER_SENT = (CircuitOpen, PoolExhausted)


# ``StoreCore._native_save``'s answer when the server refused ``SET ... IFEQ``.
NO_IFEQ = object()


def is_syntax_error(exc: BaseException | None) -> bool:
    """True if ``exc`` is Redis answering "syntax error" (what a server without an option
    of a command answers, before running anything)."""
    return exc is not None and type(exc).__name__ == "ResponseError" and str(exc).lower().startswith(("syntax error", "err syntax error"))


def check_reply(reply: Any) -> Any:
    """``SAVE``'s or ``MOVE``'s reply: True (written, or moved before), False (no such key,
    or the new id taken) or the stored bytes (conflict)."""
    if reply == 1 or reply == 2:
        return True
    if isinstance(reply, (bytes, bytearray)):
        return bytes(reply)
    return False


# -- session bookkeeping ---------------------------------------------------------------------


def needs_write(session: Session, now: float, refresh_fraction: float) -> bool:
    """Whether ``save`` must write: modified, or saved before and its TTL refresh is due.

    A new session nobody wrote to is not written: anonymous traffic costs no write.
    """
    if session.modified:
        return True
    return not session.new and now - session.refreshed_at >= session.ttl * refresh_fraction


def prepare_write(session: Session, now: float) -> tuple[int, float]:
    """Bump version and refresh time before encoding; returns the old values to roll back."""
    old = (session.version, session.refreshed_at)
    session.version += 1
    session.refreshed_at = now
    return old


def roll_back(session: Session, old: tuple[int, float]) -> None:
    """Undo ``prepare_write`` after a failed or refused write."""
    session.version, session.refreshed_at = old


def mark_saved(session: Session, now: float) -> None:
    """Update ``session``'s bookkeeping after a successful write (the write itself set
    ``session._base``, what the next save compares with)."""
    session.new = False
    session._saved()
    session.refreshed_at = now


# -- the operations ------------------------------------------------------------------------------


class StoreCore:
    """The operations of one Redis-backed store, as generators of commands (see the module doc).

    Args:
        keys: the store's key space.
        serializer: encodes and decodes sessions.
        ttl: the store's default TTL (``touch`` without one).
        refresh_fraction: an unmodified session is rewritten once this much of its TTL passed.
        clock: wall-clock seconds for the refresh decision and ``refreshed_at``.
        is_cluster: the client is a Redis Cluster (no script may span two slots).
        policy: the local-cache policy (a clustered store with a cache), else None.
        messages: the invalidation messages (a clustered store), else None.
        on_conflict: what a save does with a key changed on both sides (``_core.conflict``).
    """

    __slots__ = (
        "_log", "_shard_log", "clock", "is_cluster", "keys", "messages", "native_cas", "on_conflict", "policy", "principals", "refresh_fraction",
        "serializer", "ttl",
    )

    def __init__(
        self, keys: KeySpace, serializer: Serializer, ttl: int, refresh_fraction: float, clock: Callable[[], float],
        is_cluster: bool, policy: CachePolicy | None = None, messages: Messages | None = None,
        on_conflict: OnConflict = "merge",
    ) -> None:
        self.on_conflict = on_conflict
        self.keys = keys
        self.serializer = serializer
        self.ttl = ttl
        self.refresh_fraction = refresh_fraction
        self.clock = clock
        self.is_cluster = is_cluster
        self.policy = policy
        self.messages = messages
        self.principals: Indexing | None = None  # set by the store: re-indexes bound sessions
        # A store without messages compares-and-sets with ``SET ... IFEQ ... GET`` while the
        # server takes it (``native_save``); the first "syntax error" turns this off for good.
        self.native_cas = messages is None
        # The channel's sequence hash and log, when the write scripts number their messages.
        sequenced = messages is not None and messages.sequenced
        self._log = log_keys(messages.channel) if sequenced and not is_cluster else None  # type: ignore[union-attr]
        # Redis Cluster: each shard channel has its own sequence and log (named after the
        # channel by the script, not declared: they are in another slot of the same master).
        self._shard_log = sequenced and is_cluster

    def _announce(self, label: str, lua: Script, keys: tuple[str, ...], session_id: str, *args: Any) -> Command:
        """Run a ``publish_script``: when sequenced, with the log's keys (none on Redis
        Cluster), its cap and ``session_id`` appended (see ``fastsess._core.sequence``)."""
        if self._log is None:
            if self._shard_log:
                return run_script(label, lua, keys, *args, self.messages.log_size, session_id)  # type: ignore[union-attr]
            return run_script(label, lua, keys, *args)
        return run_script(label, lua, (*keys, *self._log), *args, self.messages.log_size, session_id)  # type: ignore[union-attr]

    def load(self, session_id: str, token: tuple[int, int] | None = None) -> Flow:
        """Read ``session_id`` (already validated) from Redis; with a fill ``token``, also its
        TTL, and cache it.  A failed read answers from the cache if ``stale_if_error`` allows."""
        key = self.keys.key(session_id)
        policy = self.policy
        started, pttl = 0.0, -2
        try:
            if token is None or policy is None:  # no cache, or it is bypassed: a plain GET
                raw = yield ("GET", None, ("GET", key))
            else:
                started = policy.clock()
                messages = self.messages
                if messages is not None and messages.warm_peers and not self.is_cluster:
                    raw, pttl = yield run_script(
                        "GET", GET_PTTL_FILL, (key,), messages.channel, messages.fill_prefix(session_id), messages.update_max_bytes,
                    )
                else:
                    raw, pttl = yield run_script("GET", GET_PTTL, (key,))
        except FastsessError:
            stale = None if policy is None else policy.stale(session_id)
            if stale is None:
                raise
            return stale
        if raw is None:
            if token is not None and policy is not None:
                policy.absent(session_id, token)
            return None
        session = self.serializer.decode(session_id, raw)
        session._base = raw  # what a save compares with (made a token only if it saves)
        if token is not None and policy is not None:
            policy.filled(session, len(raw), token, started, pttl)
        return session

    def save(self, session: Session) -> Flow:
        """Write ``session`` if modified or due for a refresh: SET NX when new (a collision
        takes a fresh id); else a compare-and-set (``SAVE``) that never resurrects (False),
        and, if another request wrote the session since it was loaded, re-applies this
        request's changes on the stored session and tries again (``_core.conflict``).

        Raises (besides the driver's errors):
            ConcurrentModification: ``on_conflict="raise"`` and a key changed on both
                sides, or more than ``MAX_CONFLICT_RETRIES`` conflicts in a row.
        """
        check_session_id(session)
        t = self.clock()
        if not needs_write(session, t, self.refresh_fraction):
            return False
        id_attempts = conflicts = 0
        if not session.new and not (self.native_cas and type(session._base) is bytes):
            session._base = stamp(session._base)  # (``native_save`` needs the bytes themselves)
        whole = not session.new and session._base is None  # not loaded from the store
        if whole:
            # No stored value to compare with: read the stored version first, then replace
            # the whole session by compare-and-set (stored versions only ever grow).
            found = yield from self._stored(session)
            if found is None:
                return False  # deleted or expired meanwhile: never resurrected
            replace(session, found)
        while True:
            if self.principals is not None:  # a bound session: its index entry first
                yield from self.principals.before_write(session, t)
            old = prepare_write(session, t)
            try:
                payload = self.serializer.encode(session)
                written = yield from self._write(session, payload)
            except BaseException:
                roll_back(session, old)
                raise
            if written is True:
                created = session.new
                mark_saved(session, t)
                if created and self.principals is not None:  # a login racing a delete_all: indexed again
                    yield from self.principals.after_new_key(session)
                return True
            roll_back(session, old)
            if written is False:
                if not session.new:
                    return False  # deleted or expired meanwhile: never resurrected
                id_attempts += 1
                if id_attempts >= MAX_ID_ATTEMPTS:
                    raise StoreUnavailable("could not allocate an unused session id")
                session.id = new_session_id()
                continue
            # Another request wrote the session since it was loaded: ``written`` is the
            # stored value.  Re-apply this request's changes on it and try again.
            conflicts += 1
            theirs = yield from self._theirs(session.id, conflicts, written)
            if theirs is None:
                return False  # deleted or expired meanwhile: never resurrected
            if whole:
                replace(session, theirs)
            else:
                rebase(session, theirs, self.on_conflict)

    def _theirs(self, session_id: str, conflicts: int, stored: bytes) -> Flow:
        """The stored session to re-apply this request's changes on after conflict number
        ``conflicts`` (``stored``: the bytes the conflict reply carried), or None if the
        session is gone.  From the second conflict in a row on it first pauses (letting
        the others land) and reads what is stored then.

        Raises:
            ConcurrentModification: more than ``MAX_CONFLICT_RETRIES`` conflicts in a row.
        """
        if conflicts > MAX_CONFLICT_RETRIES:
            raise too_many_conflicts()
        delay = conflict_pause(conflicts)
        if delay:
            yield pause(delay)
            current = yield from self._current(session_id)
            if current is None:
                return None
            stored = current
        theirs = self.serializer.decode(session_id, stored)
        theirs._base = stored
        return theirs

    def _current(self, session_id: str) -> Flow:
        """The bytes stored for ``session_id`` now, or None: read with GETRANGE 0 -1 as the
        scripts read (INFO commandstats counts only the loads' GETs as reads)."""
        raw = yield ("GETRANGE", None, ("GETRANGE", self.keys.key(session_id), 0, -1))
        return raw or None  # a missing key reads as b"", never a session

    def _stored(self, session: Session) -> Flow:
        """The stored session ``session.id`` (with its ``_base``), or None."""
        raw = yield ("GET", None, ("GET", self.keys.key(session.id)))
        if raw is None:
            return None
        found = self.serializer.decode(session.id, raw)
        found._base = raw
        return found

    def _write(self, session: Session, payload: bytes) -> Flow:
        """One write attempt: True (written), False (new: the id is taken; else: no such
        key) or the stored bytes (a conflict: the session changed since it was loaded)."""
        key = self.keys.key(session.id)
        nx = session.new
        base = None if nx else stamp(session._base)
        messages, policy = self.messages, self.policy
        if messages is None:
            if nx:
                written = bool((yield ("SET", None, ("SET", key, payload, "EX", session.ttl, "NX"))))
            elif self.native_cas and type(session._base) is bytes:
                written = yield from self._native_save(key, payload, session.ttl, session._base)
                if written is NO_IFEQ:
                    written = yield from self._write(session, payload)  # the script, from now on
                    return written
            elif len(payload) >= STAGE_FROM and not self.is_cluster:
                staged = staged_key(key)
                written = check_reply((yield ("SET", STAGE, (
                    ("SET", staged, payload, "EX", session.ttl), STAGED_SAVE, ("EVALSHA", STAGED_SAVE.sha, 2, key, staged, *base),  # type: ignore[misc]
                ))))
            else:
                written = check_reply((yield run_script("SET", SAVE_PLAIN, (key,), payload, session.ttl, *base)))  # type: ignore[misc]
            if written is True:
                session._base = payload  # what the next save compares with (made a token only then)
            return written
        token = started = None
        if policy is not None:
            token, started = policy.token(session.id), policy.clock()
        try:
            if nx:  # a new id: no node holds a copy, but some may remember it as absent
                # warm_peers: the new session travels too, and nodes add it (see ``fill_prefix``)
                share = payload if messages.warm_peers and len(payload) <= messages.update_max_bytes else None
                message = messages.message(
                    INVALIDATED, session.id, session.version, session.ttl if share else None, payload=share, created=True,
                )
                written = bool((yield self._announce(
                    "SET", SET_NX_PUBLISH, (key,), session.id, payload, session.ttl, messages.channel_for(key), message,
                )))
            else:
                update = payload if len(payload) <= messages.update_max_bytes else None  # update mode
                message = messages.message(
                    INVALIDATED, session.id, session.version, session.ttl if update else None, payload=update,
                )
                written = check_reply((yield self._announce(
                    "SET", SAVE, (key,), session.id, payload, session.ttl, *base, messages.channel_for(key), message,  # type: ignore[misc]
                )))
            if written is True:
                messages.note_published()
        except BaseException as exc:
            if policy is not None and not isinstance(exc, NEVER_SENT):
                policy.uncertain(session.id)  # the write may have landed, or may land later
            raise
        if written is True:
            session._base = payload  # what the next save compares with (made a token only then)
        if policy is not None:
            # a conflict or a missing key: drop this node's copy, which may be older
            policy.written(session, written is True, token, started, len(payload))  # type: ignore[arg-type]
        return written

    def _native_save(self, key: str, payload: bytes, ttl: int, base: bytes) -> Flow:
        """The compare-and-set as one plain command, ``SET key payload IFEQ base GET EX ttl``
        (Valkey >= 8.1, Redis >= 8.4): written only if the key holds exactly ``base``; the
        reply is the value it held.  From ``STAGE_FROM`` bytes on without ``GET`` (the
        reply would carry the big value back every time): a refused write is followed by
        a ``GETRANGE 0 -1`` that tells gone from changed.  True (written), False (no such key: never
        resurrected), the stored bytes (a conflict: nothing written), or ``NO_IFEQ`` if the
        server does not know IFEQ (a syntax error, nothing written), after which this
        store uses the script (``SAVE_PLAIN``/``STAGED_SAVE``).

        Raises:
            SessionCorrupt: the key holds a non-string value (WRONGTYPE).
            StoreUnavailable: Redis failed.
        """
        small = len(base) < STAGE_FROM  # GET: the stored value in the same reply (a big one only when needed)
        try:
            reply = yield ("SET", None, ("SET", key, payload, "IFEQ", base, *(("GET",) if small else ()), "EX", ttl))
        except StoreUnavailable as exc:
            if not is_syntax_error(exc.cause):
                raise
            self.native_cas = False
            log.info("Redis has no SET ... IFEQ (Valkey >= 8.1, Redis >= 8.4): saves compare in a Lua script")
            return NO_IFEQ
        if small:
            if reply is None:
                return False
            stored = bytes(reply)
            return True if stored == base else stored
        if reply is not None:  # OK: written
            return True
        current = yield ("GETRANGE", None, ("GETRANGE", key, 0, -1))  # not written: gone, or changed
        return bytes(current) if current else False  # a missing key reads as b""

    def _move(self, old_id: str, session: Session, payload: bytes, base: Any = None) -> Flow:
        """Write ``session`` under its new id (NX) and delete ``old_id``; idempotent: a new
        key that already holds this payload counts as moved.  True, False (the new id is
        taken), GONE (the old key no longer exists: nothing written) or, with ``base``
        (``stamp`` of what the session was loaded from), the old key's bytes if another
        request saved it meanwhile (nothing written)."""
        old_key, new_key = self.keys.key(old_id), self.keys.key(session.id)
        messages, policy = self.messages, self.policy
        message = None if messages is None else messages.message(DELETED, old_id)
        token = started = None
        if policy is not None:
            token, started = policy.token(session.id), policy.clock()
        if messages is not None:
            messages.expect_write(session.id)
        try:
            if not self.is_cluster:  # one script: atomic
                check = base or ("", "")
                if message is None:
                    reply = yield run_script("regenerate", MOVE, (old_key, new_key), payload, session.ttl, *check)
                else:
                    reply = yield self._announce(
                        "regenerate", MOVE, (old_key, new_key), old_id, payload, session.ttl, *check, messages.channel_for(old_key), message,  # type: ignore[union-attr]
                    )
                moved = GONE if reply == -1 else check_reply(reply)
            else:
                # Redis Cluster: the two keys live in different slots, so no script can span
                # them.  Write the new key first, then compare and delete the old one
                # (CHECK_DELETE); if the old key is gone, or another request saved it
                # meanwhile, delete the new key again.  If a step fails, the caller sees
                # StoreUnavailable and runs the move once more (idempotent: a new key that
                # holds this payload is this move's).
                created = bool((yield ("regenerate", None, ("SET", new_key, payload, "EX", session.ttl, "NX"))))
                ours = created or (yield ("regenerate", None, ("GETRANGE", new_key, 0, -1))) == payload
                moved = False
                if ours:
                    check = base or ("", "")
                    publish = () if message is None else (messages.channel_for(old_key), message)  # type: ignore[union-attr]
                    reply = yield self._announce("regenerate", CHECK_DELETE, (old_key,), old_id, *check, *publish)
                    if reply == 1 or (reply == -1 and not created):  # moved (now, or by the first run)
                        moved = True
                    else:  # gone, or changed meanwhile: take back what was just written
                        yield ("regenerate", None, ("DEL", new_key))
                        moved = GONE if reply == -1 else check_reply(reply)
        except BaseException:
            if policy is not None:
                policy.uncertain(old_id, session.id)
            raise
        if policy is not None:
            policy.invalidate(old_id)
        if moved is not True:
            return moved
        session._base = payload
        if messages is not None:
            messages.note_published()
            if policy is not None:
                policy.written(session, True, token, started, len(payload))  # type: ignore[arg-type]
        return moved

    def regenerate(self, session: Session) -> Flow:
        """Move ``session`` to a new id (a never-saved session just gets one).

        A move whose outcome is unknown (a failure other than an exhausted pool, or a
        cancellation after it was sent) runs once more: the move is idempotent, so the
        second run moves the session or finds it moved, and ``session.id`` ends up naming
        the key that holds the data.  A cancellation is re-raised after that.

        A session whose key no longer exists (deleted, logged out, expired meanwhile) is
        not re-created: nothing is written and ``session`` keeps its id and state (its
        next save returns False).  On a single Redis, a save by another request since
        ``session`` was loaded is re-applied first, as ``save`` does.
        """
        old_id, was_saved = session.id, not session.new
        if was_saved:
            check_session_id(session)
        t = self.clock()
        base = stamp(session._base) if was_saved else None
        id_attempts = conflicts = 0
        while id_attempts < MAX_ID_ATTEMPTS:
            session.id = new_session_id()
            if not was_saved:
                return session
            old = prepare_write(session, t)
            cancelled: CancelledError | None = None
            try:
                if self.principals is not None:  # a bound session: the new id's index entry first
                    yield from self.principals.before_write(session, t)
                payload = self.serializer.encode(session)
                try:
                    moved = yield from self._move(old_id, session, payload, base)
                except PoolExhausted:
                    raise  # never sent: the outcome is known, and a second wait would double it
                except (FastsessError, CancelledError) as exc:
                    if isinstance(exc, CancelledError):
                        cancelled = exc
                    moved = yield from self._move(old_id, session, payload, base)  # settle the unknown outcome
            except BaseException:
                roll_back(session, old)
                session.id = old_id
                if cancelled is not None:
                    raise cancelled from None
                raise
            if moved is True:
                mark_saved(session, t)
                if cancelled is not None:
                    raise cancelled
                if self.principals is not None:  # a delete_all may have run since before_write
                    yield from self.principals.after_new_key(session)
                return session
            roll_back(session, old)
            session.id = old_id
            if cancelled is not None:
                raise cancelled
            if moved is GONE:
                return session  # deleted meanwhile: never re-created, left as it was
            if moved is False:
                id_attempts += 1
                continue
            # Another request saved the session since it was loaded: re-apply this
            # request's changes on what it holds, and move that.
            conflicts += 1
            theirs = yield from self._theirs(old_id, conflicts, moved)
            if theirs is None:
                return session  # deleted meanwhile: never re-created, left as it was
            rebase(session, theirs, self.on_conflict)
            base = stamp(session._base)
        session.id = old_id
        raise StoreUnavailable("could not allocate an unused session id")

    def delete(self, session_id: str) -> Flow:
        """Remove the session; True if it existed (malformed ids: False, no command)."""
        if not is_valid_session_id(session_id):
            return False
        key = self.keys.key(session_id)
        messages = self.messages
        if messages is None:
            return (yield ("DEL", None, ("DEL", key))) == 1
        try:
            message = messages.message(DELETED, session_id)
            existed: bool = (yield self._announce("DEL", DELETE_PUBLISH, (key,), session_id, messages.channel_for(key), message)) == 1
        except BaseException:
            if self.policy is not None:
                self.policy.uncertain(session_id)  # the DEL may have landed, or may land later
            raise
        messages.note_published()
        if self.policy is not None:
            self.policy.invalidate(session_id)
        return existed

    def touch(self, session_id: str, ttl: int | None = None) -> Flow:
        """Set the session's expiry to ``ttl`` (default: the store's); True if it exists.
        Clustered: every node drops its copy (its local expiry followed the old TTL).
        The value is read in the same step (``GETEX``, or the script's ``GET``): a session
        bound to a principal gets its index entry renewed to cover the new expiry."""
        if not is_valid_session_id(session_id):
            return False  # a malformed id is answered before anything else, bad ttl included
        seconds = self.ttl if ttl is None else check_ttl(ttl)
        key = self.keys.key(session_id)
        messages = self.messages
        if messages is None:
            try:
                raw = yield ("EXPIRE", None, ("GETEX", key, "EX", seconds))
            except SessionCorrupt:  # not a string (planted by another tool): extended as it is
                return bool((yield ("EXPIRE", None, ("EXPIRE", key, seconds))))
        else:
            try:
                message = messages.message(TOUCHED, session_id, expires_in=seconds)
                raw = yield self._announce("EXPIRE", TOUCH_PUBLISH, (key,), session_id, seconds, messages.channel_for(key), message)
            except BaseException as exc:
                if self.policy is not None and not isinstance(exc, NEVER_SENT):
                    self.policy.uncertain(session_id)  # the EXPIRE may have landed, or may land later
                raise
            if self.policy is not None:
                self.policy.invalidate(session_id)  # the next fill reads the new expiry (PTTL)
            if raw is not None:
                messages.note_published()
        if raw is None:
            return False
        if self.principals is not None and type(raw) is bytes:
            try:
                session = self.serializer.decode(session_id, raw)
            except SessionCorrupt:
                return True  # not a session this store can read: it names no principal
            yield from self.principals.after_touch(session, seconds)
        return True

    def exists(self, session_id: str) -> Flow:
        """True if a session is stored under ``session_id`` (malformed ids: False, no command)."""
        if not is_valid_session_id(session_id):
            return False
        return (yield ("EXISTS", None, ("EXISTS", self.keys.key(session_id)))) == 1

    def cleared(self) -> Flow:
        """After ``clear`` (even a failed one): flush this node's cache and tell the others."""
        if self.policy is not None:
            self.policy.flush()
        messages = self.messages
        if messages is not None:
            if self._log is None:
                yield ("PUBLISH", None, ("PUBLISH", messages.channel, messages.message(CLEARED, None, sequenced=False)))
                if self._shard_log:  # and numbered on every shard: a listener that missed it replays it
                    for channel in messages.shard_channels():
                        yield run_script("PUBLISH", CLEAR_PUBLISH, log_keys(channel), channel, messages.message(CLEARED, None), messages.log_size)
            else:
                yield run_script("PUBLISH", CLEAR_PUBLISH, self._log, messages.channel, messages.message(CLEARED, None), messages.log_size)
            messages.note_published()
