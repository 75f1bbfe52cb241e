"""Sessions by principal ("log out everywhere"), written once, with no I/O.

``bind(session, principal)`` records a session under a principal (a user id);
``sessions_of(principal)`` lists its live sessions; ``delete_all(principal)`` deletes
them and invalidates every node's cached copy.  The operations are generators of
commands, run by the stores' drivers like those of ``ops``.

**The index.**  One sorted set per principal, ``<prefix>principal:<sha256(principal)>``:
members are session ids, scores the time (store clock, seconds) until which the entry
covers its session.  The key name is a digest: fixed length, no user id in key names,
and never mistaken for a session key (``iter_ids``/``clear`` match exactly one
43-character id after the prefix).  The index key expires no earlier than its latest
entry (``PEXPIRE`` only ever lengthens it), so a principal nobody binds again leaves
nothing behind.

**Entries expire with their sessions.**  A bound session carries ``PRINCIPAL_KEY`` in its
data: ``[principal, indexed id, covered until]``.  An entry covers its session for twice
the session's TTL from when it was written; a save (or a regenerate) of a bound
session re-indexes it first whenever the write could make it outlive that cover, or when
its id is not the indexed one (a regenerate, a first save that changed a colliding id).
So with saves every ``ttl`` seconds at most one write in two costs one more round trip
(a small script on the index key), and usually far fewer.  Every ``bind`` trims up to
``BATCH`` entries past their cover: it asks for their keys' TTL (one pipeline) and drops
the entries whose session is gone, and covers the others until their key's expiry.
``touch`` reads the value it extends in the same step: a bound session's entry is
renewed to cover the new expiry (one more round trip), so a session kept alive by
``touch`` alone stays listed.  Entries of sessions deleted or
moved meanwhile are dropped lazily: ``sessions_of`` checks that each listed session
exists (and removes those that do not); ``delete_all`` deletes whatever is listed.

**Bounded batches.**  ``sessions_of`` walks the index with ``ZSCAN`` and checks each
batch with one pipeline of ``EXISTS``; ``delete_all`` takes ``BATCH`` ids at a time.  On
one Redis (standalone, Sentinel) a batch is one script: it unlinks the sessions, removes
them from the index, publishes their invalidation (clustered stores) and returns the next
batch, atomically.  On Redis Cluster the sessions' keys span slots: one pipeline of
``UNLINK`` (one command per key, which redis-py routes to its slot's node), then one
script on the index key for the rest; every script there touches only the index key,
one slot.  A failure between the two leaves the batch in the index: ``delete_all`` raises
and a second call finishes it (other nodes may serve their cached copies until then, at
most ``local_cache_ttl``).  (Hash-tagging
session keys by principal would put them in the index's slot, but a session's key is
fixed before anyone binds it, and one slot for all of a principal's sessions is a hot spot.)

**One message per batch.**  A clustered store publishes one ``deleted_many`` message per
batch (up to 1,000 ids, ~46 KB), on the store's plain channel, which reaches every node
(on Redis Cluster with sharded pub/sub: one per shard holding ids of the batch, on that
shard channel, numbered and logged there, ``fastsess._core.sequence``).  Measured against one ``deleted`` message per id (bench/principals.py):
for 10,000 sessions the other node's listener spent about a quarter of the CPU time, and
the sender's own listener skips 10 echoes instead of 10,000.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from ..errors import FastsessError
from ..session import Session
from .keys import KeySpace, check_session_id, is_valid_session_id
from .messages import DELETED_MANY, MAX_IDS
from .ops import CLEAR_PUBLISH, Command, Flow, Messages, Script, publish_script, run_script, script
from .policy import CachePolicy
from .sequence import log_keys

PRINCIPAL_KEY = "_fastsess_principal"  # reserved session key: [principal, indexed id, covered until]
MAX_PRINCIPAL_LENGTH = 1024  # characters; a user id, an email address, a UUID all fit
BATCH = MAX_IDS  # ids per round trip of sessions_of / delete_all, and per deleted_many message
COVER = 2  # an index entry covers its session for this many TTLs from when it was written

# A driver sends ``PIPELINE`` commands as one non-transactional pipeline (``args`` is the
# tuple of commands) and replies with the list of their replies.  Each command names one
# key, so a Redis Cluster pipeline splits it by node.
PIPELINE = Script("-- a pipeline, not a script", "pipeline")

# KEYS[1]=index  ARGV: id, covered until, now, index ttl (ms), limit.  Adds or moves the
# entry and lengthens (never shortens) the index key's life; returns up to ``limit`` ids
# whose cover ended (candidates for a trim: their sessions may be gone, or kept alive by
# touch()).
INDEX_ADD = script("""
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
if ARGV[5] == '0' then
  return {}
end
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3], 'LIMIT', 0, ARGV[5])
""")

# KEYS[1]=index  ARGV: id, covered until, index ttl (ms).  ``touch``'s renewal: the entry's
# cover only ever grows (a missing entry is added), and so does the index key's life.
INDEX_RENEW = script("""
redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
""")

# KEYS[1]=index  ARGV: now, n, n dead ids, then (id, ms left) pairs of live ones.  Drops the
# dead entries; the live ones get a cover until their key's expiry, and the index key
# lives at least as long.
INDEX_TRIM = script("""
local now, n = tonumber(ARGV[1]), tonumber(ARGV[2])
if n > 0 then
  redis.call('ZREM', KEYS[1], unpack(ARGV, 3, n + 2))
end
for i = n + 3, #ARGV, 2 do
  local left = tonumber(ARGV[i + 1])
  redis.call('ZADD', KEYS[1], now + left / 1000, ARGV[i])
  if redis.call('PTTL', KEYS[1]) < left then
    redis.call('PEXPIRE', KEYS[1], left)
  end
end
return n
""")

# KEYS[1]=index  ARGV: n, n ids, batch[, channel, message...].  Removes the ids (their
# sessions were just deleted), publishes the message(s), returns the next batch of ids.
# The channel is the store's plain one (not a shard channel): the ids live on every
# master, and every listener subscribes the plain channel.  Only when the writer has no
# shard channels (no sharded pub/sub, or a changed slot map waits): else the message is
# numbered and logged on each shard instead, one per shard (``CLEAR_PUBLISH``).
INDEX_REMOVE = publish_script("""
local n = tonumber(ARGV[1])
if n > 0 then
  redis.call('ZREM', KEYS[1], unpack(ARGV, 2, n + 1))
end
local channel = ARGV[n + 3]
if channel then
  for i = n + 4, #ARGV do
    publish(channel, ARGV[i])
  end
end
return redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[n + 2]) - 1)
""")

# KEYS[1]=index, KEYS[2..n+1]=the batch's session keys[, the channel's sequence hash and
# log]  ARGV: batch, n ids[, channel, message[, the log's cap]].  delete_all's batch on one
# Redis (not a cluster: the keys span slots), atomically: UNLINK the sessions, drop them
# from the index, publish; returns {deleted, the next batch of ids}.  Sequenced (the log's
# keys given, so that #ARGV == #KEYS + 1; ``fastsess._core.sequence``): the batch is
# logged as one entry, its ids joined by commas.
DELETE_BATCH = publish_script("""
local logged = #ARGV == #KEYS + 1
local n = #KEYS - (logged and 3 or 1)
local deleted = redis.call('UNLINK', unpack(KEYS, 2, n + 1))
redis.call('ZREM', KEYS[1], unpack(ARGV, 2, n + 1))
if ARGV[n + 2] then
  if logged then
    publish(ARGV[n + 2], ARGV[n + 3], KEYS[n + 2], KEYS[n + 3], ARGV[n + 4], table.concat(ARGV, ',', 2, n + 1))
  else
    publish(ARGV[n + 2], ARGV[n + 3])
  end
end
return {deleted, redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)}
""")

# KEYS[1]=index  ARGV: ids.  Drops entries whose session is gone (seen by sessions_of).
INDEX_PRUNE = script("""
return redis.call('ZREM', KEYS[1], unpack(ARGV))
""")

SCRIPTS = (INDEX_ADD, INDEX_RENEW, INDEX_TRIM, INDEX_REMOVE, DELETE_BATCH, INDEX_PRUNE)


def check_principal(principal: Any) -> str:
    """Validate a principal: a non-empty str of at most ``MAX_PRINCIPAL_LENGTH`` characters
    that encodes to UTF-8 (pass a user id as ``str(user.pk)``).

    Raises:
        TypeError: not a str (an int user id must be converted: 42 and "42" would differ).
        ValueError: empty, too long, or not encodable (a lone surrogate).
    """
    if not isinstance(principal, str):
        raise TypeError(f"principal must be a str (e.g. str(user.pk)), not {type(principal).__name__}")
    if not principal:
        raise ValueError("principal must not be empty")
    if len(principal) > MAX_PRINCIPAL_LENGTH:
        raise ValueError(f"principal is {len(principal)} characters long; at most {MAX_PRINCIPAL_LENGTH} are allowed")
    try:
        principal.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"principal must be valid Unicode: {exc}") from None
    return principal


def principal_mark(principal: str) -> list[Any]:
    """The value to store under ``PRINCIPAL_KEY`` in a session's data so that its next save
    indexes it under ``principal`` (whatever id it is then written under).  For framework
    sessions, whose fastsess ``Session`` is built at response time.

    Raises:
        TypeError, ValueError: an invalid principal (see ``check_principal``).
    """
    return [check_principal(principal), "", 0]


def index_key(keys: KeySpace, principal: str) -> str:
    """The Redis key of ``principal``'s index (``principal`` already checked)."""
    return keys.prefix + "principal:" + hashlib.sha256(principal.encode()).hexdigest()


def bound_principal(session: Session) -> str | None:
    """The principal ``session`` is bound to, or None."""
    entry = session.data.get(PRINCIPAL_KEY)
    if type(entry) is list and len(entry) == 3 and isinstance(entry[0], str):
        return entry[0]
    return None


def mark_bound(session: Session, principal: str, now: float) -> float:
    """Record in ``session`` that it is indexed under ``principal`` from ``now``; returns
    the time the entry covers it until.  Marks the session modified (the next save writes it)."""
    until = now + COVER * session.ttl
    session[PRINCIPAL_KEY] = [principal, session.id, until]
    return until


def needs_index(session: Session, now: float) -> str | None:
    """The principal to re-index ``session`` under before writing it at ``now``, or None:
    bound, and either its id is not the indexed one or the write would let it outlive
    its entry's cover."""
    entry = session.data.get(PRINCIPAL_KEY)
    if entry is None:
        return None
    if type(entry) is not list or len(entry) != 3 or not isinstance(entry[0], str):
        return None  # not ours (a caller wrote the reserved key): nothing to keep
    principal: str = entry[0]
    indexed_id, until = entry[1], entry[2]
    if indexed_id != session.id or not isinstance(until, (int, float)) or now + session.ttl > until:
        return principal
    return None


def _split(members: Any) -> tuple[list[str], list[bytes]]:
    """An index's ``members`` as (the session ids, the members that are not session ids).
    fastsess writes only session ids; anything else (not ASCII, another key's name, too
    long) was planted by another Redis client: it names no session, and is dropped
    rather than turned into a key or put in a message."""
    ids: list[str] = []
    junk: list[bytes] = []
    for member in members:
        session_id = member.decode("ascii", "replace")
        if is_valid_session_id(session_id):
            ids.append(session_id)
        else:
            junk.append(member)
    return ids, junk


def indexed_entry(session: Session) -> tuple[str, float] | None:
    """(principal, covered until) of a bound ``session`` indexed under its current id, else None."""
    entry = session.data.get(PRINCIPAL_KEY)
    if type(entry) is list and len(entry) == 3 and isinstance(entry[0], str) and entry[1] == session.id:
        until = entry[2]
        if isinstance(until, (int, float)) and not isinstance(until, bool):
            return entry[0], float(until)
    return None


def rebound_from(session: Session, principal: str) -> str | None:
    """The other principal ``session`` is indexed under with its current id (bound to
    someone else before), whose index must forget it; else None."""
    entry = indexed_entry(session)
    return None if entry is None or entry[0] == principal else entry[0]


class PrincipalCore:
    """The principal operations of one Redis-backed store, as generators of commands.

    Args:
        keys: the store's key space (session keys and index keys share its prefix).
        clock: the store's wall clock (seconds): index scores are on it.
        is_cluster: the client is a Redis Cluster (a batch's keys span slots).
        policy: the clustered store's local-cache policy, else None.
        messages: the clustered store's invalidation messages, else None.
    """

    __slots__ = ("clock", "is_cluster", "keys", "messages", "policy")

    def __init__(
        self, keys: KeySpace, clock: Callable[[], float], is_cluster: bool,
        policy: CachePolicy | None = None, messages: Messages | None = None,
    ) -> None:
        self.keys = keys
        self.clock = clock
        self.is_cluster = is_cluster
        self.policy = policy
        self.messages = messages

    def _index(self, session: Session, principal: str, now: float, trim: int = 0) -> Command:
        until = mark_bound(session, principal, now)
        ttl_ms = int(COVER * session.ttl * 1000)
        return run_script("bind", INDEX_ADD, (index_key(self.keys, principal),), session.id, until, now, ttl_ms, trim)

    def bind(self, session: Session, principal: str) -> Flow:
        """Index ``session`` under ``principal`` and record the principal in its data; then trim
        up to ``BATCH`` entries whose cover ended: those whose session is gone are dropped,
        the others (kept alive by ``touch``) covered until their key's expiry.  A session
        bound to another principal before is removed from that one's index.  One round
        trip, up to four when there is something to trim or to unbind.

        Raises:
            TypeError, ValueError: ``principal`` is not a valid principal (see ``check_principal``).
            InvalidSessionId: ``session.id`` is not a fastsess id.
        """
        principal = check_principal(principal)
        check_session_id(session)
        now = self.clock()
        previous = rebound_from(session, principal)
        ended, junk = _split((yield self._index(session, principal, now, BATCH)))
        if previous is not None:  # bound to someone else before: their index forgets it
            yield run_script("bind", INDEX_PRUNE, (index_key(self.keys, previous),), session.id)
        if ended or junk:
            left = (yield ("PTTL", PIPELINE, tuple(("PTTL", self.keys.key(i)) for i in ended))) if ended else []
            dead: list[Any] = [*junk, *(i for i, ms in zip(ended, left) if ms == -2)]
            alive = [x for i, ms in zip(ended, left) if ms != -2 for x in (i, ms if ms > 0 else COVER * session.ttl * 1000)]
            key = index_key(self.keys, principal)
            yield run_script("bind", INDEX_TRIM, (key,), now, len(dead), *dead, *alive)

    def before_write(self, session: Session, now: float) -> Flow:
        """Run by ``save``/``regenerate`` before writing ``session`` (already under the id it
        is written to): re-index it if ``needs_index`` says so.  One round trip, or none."""
        principal = needs_index(session, now)
        if principal is not None:
            yield self._index(session, principal, now)

    def after_touch(self, session: Session, seconds: int) -> Flow:
        """Run by ``touch`` with the session it just gave ``seconds`` more (decoded from the
        value read in the same step): if it is bound and indexed under its id, its entry is
        made to cover it for ``COVER`` times ``seconds`` from now (never less than it did)
        and the index key to live as long, so a session kept alive by ``touch`` alone stays
        listed.  One round trip, or none (not bound).

        Raises:
            StoreUnavailable: Redis failed (the expiry was set; touching again renews the entry).
        """
        entry = indexed_entry(session)
        if entry is None:
            return
        ttl_ms = int(COVER * seconds * 1000)
        yield run_script("touch", INDEX_RENEW, (index_key(self.keys, entry[0]),), session.id, self.clock() + COVER * seconds, ttl_ms)

    def after_new_key(self, session: Session) -> Flow:
        """Run by ``save`` after the first write of ``session`` and by ``regenerate`` after the
        move: index it once more if it is bound.  A ``delete_all`` that ran between
        ``before_write`` and the write removed its entry and found no session to delete;
        without this the new key would stay out of the index until its next renewal.  A
        failure here is ignored: the entry written by ``before_write`` stands, and the
        session is saved."""
        entry = indexed_entry(session)
        if entry is None:
            return
        key = index_key(self.keys, entry[0])
        try:
            yield run_script("bind", INDEX_ADD, (key,), session.id, entry[1], 0, int(COVER * session.ttl * 1000), 0)
        except FastsessError:
            pass

    def sessions_of(self, principal: str) -> Flow:
        """The ids of ``principal``'s live sessions, in no particular order; entries of
        sessions that no longer exist are dropped from the index on the way.

        Raises:
            TypeError, ValueError: an invalid principal.
        """
        key = index_key(self.keys, check_principal(principal))
        live: list[str] = []
        seen: set[str] = set()
        cursor: Any = 0
        while True:
            cursor, pairs = yield ("ZSCAN", None, ("ZSCAN", key, cursor, "COUNT", BATCH))
            ids, junk = _split(pair[0] for pair in pairs)  # redis-py parses the reply as (member, score) pairs
            ids = [i for i in ids if i not in seen]  # ZSCAN may return an id twice
            seen.update(ids)
            gone: list[Any] = list(junk)
            if ids:
                found = yield ("EXISTS", PIPELINE, tuple(("EXISTS", self.keys.key(i)) for i in ids))
                live.extend(i for i, n in zip(ids, found) if n)
                gone.extend(i for i, n in zip(ids, found) if not n)
            if gone:
                yield run_script("ZREM", INDEX_PRUNE, (key,), *gone)
            if int(cursor) == 0:
                return live

    def _shards(self, ids: list[str]) -> dict[str, list[str]]:
        """Redis Cluster with numbered messages and a slot map: ``ids`` grouped by the shard
        channel of their key; else empty (one message on the plain channel)."""
        messages = self.messages
        if not self.is_cluster or messages is None or not messages.sequenced or not messages.shard_channels():
            return {}
        groups: dict[str, list[str]] = {}
        for session_id in ids:
            groups.setdefault(messages.channel_for(self.keys.key(session_id)), []).append(session_id)
        return groups

    def delete_all(self, principal: str, except_id: str | None = None) -> Flow:
        """Delete every session indexed under ``principal`` (but ``except_id``) and drop their
        index entries, ``BATCH`` at a time; clustered: every node drops its cached copies.
        Returns how many sessions existed and were deleted.

        Raises:
            TypeError, ValueError: an invalid principal.
        """
        key = index_key(self.keys, check_principal(principal))
        messages, policy = self.messages, self.policy
        keep = except_id if is_valid_session_id(except_id) else None
        deleted = 0
        members = yield ("ZRANGE", None, ("ZRANGE", key, 0, BATCH - 1))
        while True:
            ids, junk = _split(members)
            victims = [i for i in ids if i != keep]
            if junk:  # not session ids: dropped, never deleted as keys nor sent in a message
                yield run_script("delete_all", INDEX_PRUNE, (key,), *junk)
                if not victims:  # the batch held nothing else: read on
                    members = yield ("ZRANGE", None, ("ZRANGE", key, 0, BATCH - 1))
                    continue
            if not victims:
                break
            publish: tuple[Any, ...] = ()
            shards = self._shards(victims)
            if messages is not None and not shards:  # one message for the batch (see the module doc)
                publish = (messages.channel, messages.message(DELETED_MANY, None, ids=victims, sequenced=False if self.is_cluster else None))
            try:
                if self.is_cluster:  # the keys live in many slots: a pipeline, then the index's script
                    n = sum((yield ("UNLINK", PIPELINE, tuple(("UNLINK", self.keys.key(i)) for i in victims))))
                    reply = yield run_script("delete_all", INDEX_REMOVE, (key,), len(victims), *victims, BATCH, *publish)
                    for channel, group in shards.items():  # sequenced: one numbered, logged message per shard
                        yield run_script(
                            "delete_all", CLEAR_PUBLISH, log_keys(channel), channel,
                            messages.message(DELETED_MANY, None, ids=group), messages.log_size, ",".join(group),  # type: ignore[union-attr]
                        )
                else:  # one atomic script: deleted, dropped from the index and announced together
                    keys = (key, *(self.keys.key(i) for i in victims))
                    if messages is not None and messages.sequenced:  # numbered and logged (fastsess._core.sequence)
                        keys, publish = (*keys, *log_keys(messages.channel)), (*publish, messages.log_size)
                    n, reply = yield run_script("delete_all", DELETE_BATCH, keys, BATCH, *victims, *publish)
            except BaseException:
                if policy is not None:
                    policy.uncertain(*victims)  # some deletions may have landed
                raise
            deleted += n
            if policy is not None:
                for session_id in victims:
                    policy.invalidate(session_id)
            if messages is not None:
                messages.note_published()
            members = reply
        return deleted


class MemoryIndex:
    """``MemoryStore``'s principal index: principal -> {session id: covered until}, with the
    same rules as the Redis index (covers, trims, lazy removal).  Not thread-safe: the
    store calls it under its write lock.

    Args:
        exists: whether a session id is live in the store.
    """

    __slots__ = ("_binds", "_entries", "_trim_at", "exists")

    SWEEP_EVERY = 1024  # binds between sweeps of every principal (drops ended entries)
    MIN_TRIM = 64  # a principal's entries are trimmed when they double, from this many

    def __init__(self, exists: Callable[[str], bool]) -> None:
        self.exists = exists
        self._entries: dict[str, dict[str, float]] = {}
        self._trim_at: dict[str, int] = {}  # principal -> size at which its entries are trimmed
        self._binds = 0

    def index(self, session: Session, principal: str, now: float) -> None:
        """Add or move ``session``'s entry under ``principal``; trim ended entries (amortized
        O(1): a principal's entries are trimmed when they doubled since the last trim)."""
        entries = self._entries.setdefault(principal, {})
        entries[session.id] = mark_bound(session, principal, now)
        if len(entries) >= self._trim_at.get(principal, self.MIN_TRIM):
            self._trim_at[principal] = max(self.MIN_TRIM, 2 * _trim(entries, now, self.exists))
        self._binds += 1
        if self._binds % self.SWEEP_EVERY == 0:  # principals nobody binds again
            for name in [p for p, e in self._entries.items() if not _trim(e, now, self.exists)]:
                self._forget(name)

    def _forget(self, principal: str) -> None:
        del self._entries[principal]
        self._trim_at.pop(principal, None)

    def bind(self, session: Session, principal: str, now: float) -> None:
        """See ``PrincipalCore.bind``.

        Raises:
            TypeError, ValueError: an invalid principal.
            InvalidSessionId: ``session.id`` is not a fastsess id.
        """
        principal = check_principal(principal)
        check_session_id(session)
        previous = rebound_from(session, principal)
        if previous is not None and previous in self._entries:  # bound to someone else before
            self._entries[previous].pop(session.id, None)
        self.index(session, principal, now)

    def before_write(self, session: Session, now: float) -> None:
        """See ``PrincipalCore.before_write``."""
        principal = needs_index(session, now)
        if principal is not None:
            self.index(session, principal, now)

    def after_new_key(self, session: Session) -> None:
        """See ``PrincipalCore.after_new_key`` (the entry again, without touching the session)."""
        entry = indexed_entry(session)
        if entry is not None:
            self._entries.setdefault(entry[0], {})[session.id] = entry[1]

    def sessions_of(self, principal: str) -> list[str]:
        """See ``PrincipalCore.sessions_of``.

        Raises:
            TypeError, ValueError: an invalid principal.
        """
        entries = self._entries.get(check_principal(principal))
        if entries is None:
            return []
        for session_id in [i for i in entries if not self.exists(i)]:
            del entries[session_id]
        if not entries:
            self._forget(principal)
        return list(entries)

    def take(self, principal: str, except_id: str | None) -> list[str]:
        """Remove and return ``principal``'s indexed ids but ``except_id`` (for ``delete_all``).

        Raises:
            TypeError, ValueError: an invalid principal.
        """
        entries = self._entries.get(check_principal(principal))
        if entries is None:
            return []
        taken = [i for i in entries if i != except_id]
        for session_id in taken:
            del entries[session_id]
        if not entries:
            self._forget(principal)
        return taken


def _trim(entries: dict[str, float], now: float, exists: Callable[[str], bool]) -> int:
    """Drop the entries past their cover whose session is gone (one bound but not saved
    yet is in its cover; one kept alive by ``touch`` exists); returns how many remain."""
    for session_id in [i for i, until in entries.items() if until < now and not exists(i)]:
        del entries[session_id]
    return len(entries)
