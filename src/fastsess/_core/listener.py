"""The listener, without I/O: a state machine for its connection, and message handling.

``ListenerMachine`` decides what the listener does.  A driver (today the listener
thread in ``fastsess.cluster.thread``, for the sync and the asyncio stores alike) does
the I/O, reports what happened as events and carries out the actions it gets back, in
order::

    events in                               actions out
    start(now)                              Connect
    subscribed(now)    (confirmation)       sequenced: Replay(since)   else: Flush, Serve
    replayed(reply, sent, now)              Evict(ids) | Flush, then Serve (lease permitting)
    message(data, now)                      Dispatch(msg) [, Bypass, Replay(since)] | Flush
    tracked(keys, now) (tracking notice)    Tracked(keys)
    pong(payload, now)                      Serve (the lease is proven again)
    reply(now)         (anything else)      -
    idle(now)          (nothing to read)    Ping(n) | Bypass (lease lapsed) | error's actions
    error(exc, now)    (or unsubscribed)    Bypass, [Flush,] Reconnect(delay)
    retry(now)         (the delay passed)   Connect
    forked()                                Bypass, Flush
    stop()                                  Bypass, Close

**Sequenced** (``sequenced=True``: standalone Redis or Sentinel, or Redis Cluster with
sharded pub/sub, see ``fastsess._core.sequence``): every message carries the dataset
epoch and a sequence number, of its channel (on Redis Cluster: of its shard channel;
the machine keeps one ``ShardSequence`` per channel named in ``shard_names``, and
``Replay``s them one at a time).  A message whose number skips ahead is a gap: the cache is bypassed and the
missed ids are read back from the server's capped log (``Replay``) and evicted, the rest
of the cache is kept.  A (re)subscription does the same from the last number applied.
Everything is flushed only when the log no longer reaches back, the epoch changed (the
dataset was flushed) or the server's identity changed (restarted, failed over).  An
error therefore keeps the cache (bypassed); unsequenced, it flushes (unless
``stale_if_error``: the copies stay as a fallback and are flushed on resubscribe).

**The lease.**  The cache is served only while the machine holds proof, less than
``lease`` seconds old, that it has applied every invalidation: the replay, or a PONG
on the subscribed connection (numbered PINGs go out every ``lease / 4``; a PONG means
every message published before its PING was delivered before it, and the numbers
make a lost reply count as a broken connection).  When the proof is older than
``lease``, ``idle`` returns ``Bypass``; the next PONG serves again.  A PING unanswered
for ``subscribe_timeout`` fails the connection.  ``timeout(now)`` says how long the
driver may wait for input before calling ``idle``.  Reconnection delays come from a
backoff object with redis-py's ``compute(failures)`` interface.

Identity: ``node_id`` is the configured label (``ClusterConfig.node_id``, for logs and
metrics).  Messages carry ``instance_id``, random per store instance and renewed in a
forked child, so two processes (or two stores) with the same label still receive each
other's invalidations.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from ..config import ClusterConfig
from .coherence import CoherentCache
from .messages import (
    CLEARED,
    DELETED,
    DELETED_MANY,
    FILLED,
    INVALIDATED,
    MAX_MESSAGE_BYTES,
    decode_message,
    encode_message,
    fill_prefix,
    new_instance_id,
    scope_of,
)
from .ops import Command, script
from .sequence import CLEARED_ID, REPLAY_LUA, log_keys, parse_replay
from .slots import ShardMap, key_slot
from .tracking import TrackedChanges

log = logging.getLogger("fastsess.cluster")

# After the slot map changed, writers publish on the plain channel for this many
# subscribe_timeouts before using the new shard channels (see adopt_shards).
SHARD_MAP_WAIT = 4
MAX_PENDING_ECHOES = 1024  # own messages remembered for CoordinatorBase.own_echo
MAX_BACKOFF_EXPONENT = 32  # failures beyond this give the same (capped) delay; 2**n stays a float


class Backoff(Protocol):
    """redis-py's backoff interface (``redis.backoff``): the delay after ``failures`` failures."""

    def compute(self, failures: int) -> float: ...  # noqa: D102


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a connection and subscribe; then report ``subscribed``, ``error`` or ``idle``."""


@dataclass(frozen=True, slots=True)
class Serve:
    """The subscription is confirmed and current: the local cache may be served."""


@dataclass(frozen=True, slots=True)
class Bypass:
    """Stop serving the local cache (reads go to Redis)."""


@dataclass(frozen=True, slots=True)
class Flush:
    """Empty the local cache and void every fill in flight; with ``shard`` (Redis Cluster),
    only the entries whose key is in a slot that shard channel serves (on the listener's
    slot map: ``CoordinatorBase.listening_shards``), and void every fill in flight."""

    shard: str | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    """Send ``PING <token>`` on the subscribed connection; report its PONG with ``pong``."""

    token: int = 0


@dataclass(slots=True)  # not frozen: one is made per message, and a frozen __init__ costs more
class Dispatch:
    """Apply this decoded message (``CoordinatorBase.apply_message``; None: malformed)."""

    data: Any


@dataclass(slots=True)
class Tracked:
    """Apply this tracking notification (``CoordinatorBase.apply_tracked``): the changed
    keys, or None after a flush of the database."""

    data: Any


@dataclass(frozen=True, slots=True)
class Replay:
    """Read the invalidation log from sequence ``since`` on (None: only the epoch and the
    last sequence number), on a connection that is not the subscribed one; report the
    reply with ``replayed(reply, sent_at, now)``, ``sent_at`` taken before sending.
    ``shard``: the shard channel whose log to read, on the master serving it (Redis
    Cluster); None: the channel's own log (a standalone or Sentinel Redis)."""

    since: int | None
    shard: str | None = None


@dataclass(frozen=True, slots=True)
class Evict:
    """Evict these ids (and void their fills in flight): invalidations a replay found, in
    the log of ``shard`` (None: the channel's own log; on Redis Cluster the shard channel,
    whose master holds those ids' keys)."""

    ids: tuple[str, ...]
    shard: str | None = None


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Close the connection, wait ``delay`` seconds (unless stopped), then report ``retry``."""

    delay: float


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection and end: the listener is stopped."""


Action = Connect | Serve | Bypass | Flush | Ping | Dispatch | Tracked | Replay | Evict | Reconnect | Close

CONNECT, SERVE, BYPASS, FLUSH, CLOSE = Connect(), Serve(), Bypass(), Flush(), Close()
NOTHING: tuple[Action, ...] = ()

IDLE = "idle"  # not started
SUBSCRIBING = "subscribing"  # connecting, or waiting for the subscription's confirmation
SYNCING = "syncing"  # subscribed, waiting for the replay (sequenced)
LISTENING = "listening"  # subscribed and in sync: the cache may be served while the lease holds
WAITING = "waiting"  # after a failure, until the reconnection delay has passed
STOPPED = "stopped"

LEASE_PINGS = 4  # PINGs per lease: the proof is renewed every lease / LEASE_PINGS seconds

REPLAY = script(REPLAY_LUA)


class ShardSequence:
    """What the listener knows of one numbered channel's history: the channel itself (a
    standalone or Sentinel Redis), or one shard channel (Redis Cluster)."""

    __slots__ = ("dup_top", "epoch", "epoch_bytes", "identity", "seq", "synced")

    def __init__(self) -> None:
        self.synced = False  # a replay found where the log stands, and nothing since was missed
        self.identity: str | None = None  # the server that answered the last replay
        self.epoch: str | None = None
        self.seq = 0  # the last sequence number applied
        self.dup_top = 0  # messages numbered up to this may repeat what the last replay read
        self.epoch_bytes: tuple[str | None, bytes] = (None, b"")  # next_tail's packed epoch, for this epoch


def replay_command(channel: str, since: int | None, limit: int) -> Command:
    """The command a ``Replay(since)`` runs: the log of ``channel`` from sequence ``since``
    on, at most ``limit`` entries (``since=None``: none, only the epoch and last number)."""
    meta, log_key = log_keys(channel)
    first, count = (0, 0) if since is None else (since, limit + 1)
    return ("replay", REPLAY, ("EVALSHA", REPLAY.sha, 2, meta, log_key, first, count))


class ListenerMachine:
    """The listener's connection lifecycle as a state machine (see the module doc). No I/O.

    Args:
        config: ``subscribe_timeout`` (the subscription deadline, and how long a PING may
            stay unanswered), ``lease`` (the staleness bound), ``replay_log_size`` (the
            most entries a replay reads), ``stale_if_error`` (keep the cache on errors)
            and ``channel`` (for messages).
        backoff: the reconnection delays: ``backoff.compute(n)`` after the (n+1)-th
            failure in a row (``n`` capped at ``MAX_BACKOFF_EXPONENT``).
        sequenced: messages carry sequence numbers that a replay can fill in (a standalone
            or Sentinel Redis, or a Redis Cluster with sharded pub/sub: one sequence per
            shard channel, named in ``shard_names`` by the driver before each subscription);
            False: a resubscription flushes.

    Not thread-safe: one driver feeds it, from one thread at a time.
    """

    def __init__(self, config: ClusterConfig, backoff: Backoff, sequenced: bool = False) -> None:
        self.idle_timeout = config.subscribe_timeout
        self.keep_stale = config.stale_if_error
        self.channel = config.channel
        self.lease = config.lease
        self.heartbeat = min(config.lease / LEASE_PINGS, config.subscribe_timeout)
        self.replay_limit = config.replay_log_size
        self.backoff = backoff
        self.sequenced = sequenced
        # Tracking notifications (changes made outside fastsess) are in no replay log: one
        # missed while unsubscribed cannot be replayed, so every subscription flushes.
        self.tracks_outside = config.track_external_changes
        self.reset()

    def reset(self) -> None:
        """Back to a machine that never ran: not started, nothing known, counters zeroed."""
        self.state = IDLE
        self.failures = 0  # failed connections (or drops) since the last confirmed subscription
        self.reconnects = 0  # confirmed subscriptions after the first
        self.last_error: str | None = None  # "Type: message" of the last failure
        self.last_delay = 0.0  # the last reconnection delay handed out
        self._ever_subscribed = False
        self.subscribed_at = -math.inf  # when the subscription was last confirmed (the breaker's early probe)
        self._heard_at_loss = 0.0  # last_heard while not listening: input last seen before the loss
        self._deadline = 0.0  # SUBSCRIBING: when an unconfirmed subscription fails
        self._last_seen = 0.0  # when input last arrived
        # The lease: proven = when the cache was last known current (a PING's send time,
        # or a replay's); serving = the last of Serve/Bypass handed out was Serve.
        self.proven = float("-inf")
        # Every message published before this time has been received (or never will be),
        # so every message received from now on left Redis after it: the send time of the
        # last answered PING (its PONG follows them on the subscribed connection), or the
        # start of the connection that subscribed (it hears nothing older).  Not moved by a
        # replay, which reads the log, not the messages still on their way (see
        # CoherentCache.wrote, CachePolicy.sent_after).
        self.heard_through = float("-inf")
        self._connecting_at = float("-inf")  # when the last connection attempt began
        self._serving = False
        self._pings: deque[tuple[int, float]] = deque()  # unanswered PINGs: (token, sent at)
        self._ping_token = 0
        self._next_ping = 0.0
        # LISTENING: input at or after this time also runs the idle checks (a busy channel
        # must still send its PINGs and see its lease run out).  Never later than _due.
        self._check_at = 0.0
        # Sequencing: per numbered channel (None: the channel itself; on Redis Cluster, each
        # shard channel), what the last replay found and the last sequence number applied.
        self.shard_names: tuple[str | None, ...] = (None,)  # the channels a subscription replays
        self._seqs: dict[str | None, ShardSequence] = {}
        self._queued: dict[str | None, int | None] = {}  # replays still to send this round: shard -> since
        self._replaying = False  # a Replay was handed out and not answered yet
        self._replay_shard: str | None = None  # ... for this shard
        self._round: set[str | None] = set()  # shards replayed since SYNCING began
        self._round_sent = math.inf  # the earliest send time of those replays
        # Counters.
        self.gaps = 0  # live gaps in the sequence (each repaired by a replay)
        self.replays = 0  # replays that evicted what was missed and kept the rest
        self.replayed_ids = 0  # ids evicted by those replays
        self.full_flushes = 0  # flushes because the log did not reach back, or the epoch/server changed
        self.lease_lapses = 0  # times the lease ran out while serving

    @property
    def last_heard(self) -> float:
        """When input last arrived on the subscribed connection (its confirmation, a message,
        a PONG), or, while not subscribed, the last time it did before the loss (0.0: never).
        Every message Redis published before it sent that input was received: the start
        of an outage for ``stale_if_error`` is never later than this."""
        return self._last_seen if self.state == LISTENING else self._heard_at_loss

    @property
    def synced(self) -> bool:
        """True once every numbered channel was replayed and nothing since was missed."""
        return bool(self._seqs) and all(state.synced for state in self._seqs.values())

    @property
    def seq(self) -> int:
        """The last sequence number applied (Redis Cluster: their sum over the shards)."""
        return sum(state.seq for state in self._seqs.values())

    @property
    def epoch(self) -> str | None:
        """The channel's data set epoch (None: unknown, or Redis Cluster: see ``sequence_of``)."""
        state = self._seqs.get(None)
        return None if state is None else state.epoch

    @property
    def identity(self) -> str | None:
        """The server of the last replay (None: unknown, or Redis Cluster: see ``sequence_of``)."""
        state = self._seqs.get(None)
        return None if state is None else state.identity

    def sequence_of(self, shard: str | None) -> ShardSequence | None:
        """What is known of ``shard``'s history (None: the channel's own), if anything."""
        return self._seqs.get(shard)

    def forget(self) -> None:
        """Nothing known of any numbered channel: the next replay of each flushes (the
        driver's slot map changed: an unnumbered message may have been missed); counted in
        ``full_flushes`` if anything was known."""
        if any(state.synced for state in self._seqs.values()):
            self.full_flushes += 1
            log.warning("%s: the cluster's slot map changed; local cache flushed", self.channel)
        for state in self._seqs.values():
            state.synced = False

    @property
    def serving(self) -> bool:
        """True while the local cache may be served (in sync, lease holding)."""
        return self.state == LISTENING and self._serving

    @property
    def lease_until(self) -> float:
        """When the current proof runs out (on the driver's clock)."""
        return self.proven + self.lease

    # -- events -----------------------------------------------------------------------

    def start(self, now: float) -> tuple[Action, ...]:
        """The driver starts listening (from any state)."""
        return self._connect(now)

    def subscribed(self, now: float) -> tuple[Action, ...]:
        """The server confirmed the subscription.  Messages published while we were not
        subscribed never reach us: sequenced, the log is read from the last number
        applied (``Replay``); else nothing cached may survive: flush, then serve.  With
        tracking (``track_external_changes``) a sequenced machine flushes too, after a
        replay that only reads where the log stands: outside changes are in no log."""
        if self.state == STOPPED:
            return NOTHING
        self._last_seen = now
        # What was published before the connection began never comes on it (see heard_through).
        self.heard_through = max(self.heard_through, self._connecting_at)
        self.subscribed_at = now
        self._pings.clear()
        if self._ever_subscribed:
            self.reconnects += 1
        self._ever_subscribed = True
        self.failures = 0
        if self.sequenced:
            seqs, names = self._seqs, self.shard_names
            for name in [n for n in seqs if n not in names]:  # shards of an older slot map
                del seqs[name]
            wanted: dict[str | None, int | None] = {}
            for name in names:
                state = seqs.get(name)
                if state is None:
                    state = seqs[name] = ShardSequence()
                if self.tracks_outside:
                    state.synced = False  # the replay then only finds where the log stands, and flushes
                wanted[name] = state.seq + 1 if state.synced else None
            if self.reconnects:
                log.info("resubscribed to %s; replaying the invalidation log of %d channel(s)", self.channel, len(names))
            self._queued.clear()
            self._replaying = False
            return self._sync(wanted)
        if self.reconnects:
            log.warning("resubscribed to %s; local cache flushed", self.channel)
        self.state = LISTENING
        self.proven = now
        self._next_ping = now + self.heartbeat
        self._check_at = 0.0
        return (FLUSH, *self._serve(now))

    def replayed(self, reply: Any, sent: float, now: float) -> tuple[Action, ...]:
        """The ``Replay`` answered ``reply`` (sent at ``sent``): evict what was missed, or
        flush when the log cannot tell; then the next shard's ``Replay``, or serve if the
        lease allows."""
        if self.state != SYNCING or not self._replaying:
            return NOTHING
        try:
            found = parse_replay(reply)
        except ValueError as exc:
            return self.error(exc, now)
        shard = self._replay_shard
        state = self._seqs.get(shard)
        if state is None:
            state = self._seqs[shard] = ShardSequence()
        where = self.channel if shard is None else shard
        actions: list[Action] = []
        since = state.seq + 1
        if not state.synced:
            actions.append(FLUSH)  # nothing known of what the cache holds
        elif found.identity != state.identity or found.epoch != state.epoch or found.seq < state.seq:
            self.full_flushes += 1
            log.warning("%s: the Redis server or its data changed (restart, failover or flush); local cache flushed", where)
            actions.append(FLUSH if shard is None else Flush(shard))
        elif found.seq > state.seq:
            entries = found.entries
            if not entries or entries[0][0] != since or entries[-1][0] < found.seq or len(entries) != found.seq - state.seq:
                self.full_flushes += 1
                log.warning("%s: the invalidation log no longer reaches back to %d; local cache flushed", where, since)
                actions.append(FLUSH if shard is None else Flush(shard))
            else:
                ids = tuple(i for _, logged in entries for i in logged.split(","))  # a batch: ids joined by commas
                if CLEARED_ID in ids:
                    actions.append(FLUSH)
                else:
                    actions.append(Evict(ids, shard))
                self.replays += 1
                self.replayed_ids += len(ids)
        state.identity, state.epoch = found.identity, found.epoch
        state.seq = state.dup_top = found.seq
        state.synced = True
        self._replaying = False
        self._round.add(shard)
        self._round_sent = min(self._round_sent, sent)
        if self._queued:
            actions.append(self._next_replay())
            return tuple(actions)
        self.state = LISTENING
        if self._round.issuperset(self.shard_names):  # every channel is proven current as of the earliest replay
            self.proven = max(self.proven, self._round_sent)
        self._round, self._round_sent = set(), math.inf
        self._next_ping = now + self.heartbeat if now < self.proven + self.lease else now
        self._check_at = 0.0
        actions.extend(self._serve(now))
        return tuple(actions)

    def message(self, data: Any, now: float, shard: str | None = None) -> tuple[Action, ...]:
        """A message arrived on the channel (``shard``: on that shard channel, Redis
        Cluster): decoded, checked against that channel's sequence."""
        self._last_seen = now
        msg = decode_message(data)
        if now >= self._check_at and self.state == LISTENING:
            return (*self._numbered(msg, shard), *self.idle(now))
        return self._numbered(msg, shard)

    def _numbered(self, msg: dict[str, Any] | None, shard: str | None = None) -> tuple[Action, ...]:
        """The actions for a decoded message: checked against its channel's sequence when numbered."""
        if msg is None or not self.sequenced or (self.state != LISTENING and self.state != SYNCING):
            return (Dispatch(msg),)
        seq = msg.get("sq")
        if seq is None:
            return (Dispatch(msg),)  # from a sender that does not number its messages
        state = self._seqs.get(shard)
        if state is None or shard in self._queued or (self._replaying and shard == self._replay_shard):
            return (Dispatch(msg),)  # the replay under way (or to come) covers it; or not a channel we number
        where = self.channel if shard is None else shard
        if msg["ep"] != state.epoch:
            if state.epoch is None and seq == 1 and state.seq == 0:
                state.epoch, state.seq = msg["ep"], seq  # the first write since the sync: its epoch begins
                return (Dispatch(msg),)
            # The dataset was flushed or replaced under a live connection.
            self.full_flushes += 1
            log.warning("%s: the data set's epoch changed (flushed); local cache flushed", where)
            state.epoch, state.seq, state.dup_top = msg["ep"], seq, 0
            return (Dispatch(msg), FLUSH if shard is None else Flush(shard))
        expected = state.seq + 1
        if seq == expected:
            # Repeats of what the last replay read all come before the first new message.
            state.seq, state.dup_top = seq, 0
            return (Dispatch(msg),)
        if seq < expected:
            if seq <= state.dup_top:
                return (Dispatch(msg),)  # published before the replay read the log
            # A number seen before that no replay explains: the history forked (a failover
            # under this connection).  Nothing cached can be trusted.
            self.full_flushes += 1
            state.synced = False
            log.warning("%s: sequence %d came after %d; resynchronising", where, seq, state.seq)
            return (Dispatch(msg), *self._sync({shard: None}))
        self.gaps += 1
        log.info("%s: sequence gap (%d after %d); replaying the missed invalidations", where, seq, state.seq)
        return (Dispatch(msg), *self._sync({shard: expected}))

    def next_tail(self, shard: str | None = None) -> bytes | None:
        """LISTENING and sequenced: the bytes the next message in sequence on ``shard``
        (None: the channel) ends with (the epoch and sequence number the write script
        appends, ``SEQUENCE_LUA``); else None."""
        state = self._seqs.get(shard)
        if state is None or state.epoch is None or not self.sequenced or self.state != LISTENING:
            return None
        epoch = state.epoch
        head = state.epoch_bytes
        if head[0] is not epoch:
            raw = epoch.encode()
            head = state.epoch_bytes = (epoch, bytes((160 + len(raw),)) + raw + b"\xa2sq")
        number = b"%d" % (state.seq + 1)
        return head[1] + bytes((160 + len(number),)) + number

    def own_echo(self, now: float, shard: str | None = None) -> tuple[Action, ...]:
        """A message arrived that is this node's own, well formed, and (sequenced) ends
        with ``next_tail(shard)``: what ``message`` does for it, without decoding it again."""
        self._last_seen = now
        if self.sequenced:
            state = self._seqs[shard]
            state.seq += 1
            state.dup_top = 0
        if now >= self._check_at and self.state == LISTENING:
            return self.idle(now)
        return NOTHING

    def pong(self, payload: Any, now: float) -> tuple[Action, ...]:
        """A PONG arrived: its PING's send time proves the cache current (serve again if
        the lease had run out).  A PONG that skips an earlier PING means lost input."""
        self._last_seen = now
        try:
            token = int(payload)
        except (TypeError, ValueError):
            return self._deadlines(now)  # not one of ours
        pings = self._pings
        if not pings or token < pings[0][0]:
            return self._deadlines(now)
        sent = 0.0
        skipped = -1
        while pings:
            number, sent = pings.popleft()
            skipped += 1
            if number == token:
                break
        if skipped:
            return self.error(ConnectionError(f"the replies to {skipped} PINGs went missing on the invalidation channel"), now)
        if sent > self.heard_through:
            self.heard_through = sent
        if self.state != LISTENING:
            return NOTHING
        if sent > self.proven:
            self.proven = sent
        actions = self._serve(now)
        return (*actions, *self.idle(now)) if now >= self._check_at else actions

    def tracked(self, data: Any, now: float) -> tuple[Action, ...]:
        """A tracking notification arrived (``track_external_changes``)."""
        self._last_seen = now
        if now >= self._check_at and self.state == LISTENING:
            return (Tracked(data), *self.idle(now))
        return (Tracked(data),)

    def reply(self, now: float) -> tuple[Action, ...]:
        """Anything else arrived: the connection is alive."""
        self._last_seen = now
        return self._deadlines(now)

    def _deadlines(self, now: float) -> tuple[Action, ...]:
        """What ``idle`` does if one of its deadlines (the lease's end, the next PING) has
        passed: an input that arrives late (a starved thread) must not let the cache be
        served past its lease just because it was not the proof awaited."""
        return self.idle(now) if now >= self._check_at and self.state == LISTENING else NOTHING

    def unsubscribed(self, now: float) -> tuple[Action, ...]:
        """The server ended our subscription: a failure."""
        return self.error(ConnectionError("unsubscribed from the invalidation channel"), now)

    def idle(self, now: float) -> tuple[Action, ...]:
        """Nothing arrived for ``timeout(now)`` seconds: check the deadlines."""
        state = self.state
        if state == SUBSCRIBING:
            if now >= self._deadline:
                return self.error(TimeoutError(f"subscription to {self.channel!r} not confirmed within {self.idle_timeout:g} s"), now)
        elif state == LISTENING:
            pings = self._pings
            if pings and now - pings[0][1] >= self.idle_timeout:
                return self.error(ConnectionError(f"no PONG within {self.idle_timeout:g} s on the invalidation channel"), now)
            actions: list[Action] = []
            if self._serving and now >= self.proven + self.lease:
                self._serving = False
                self.lease_lapses += 1
                log.warning("%s: no proof within the %g s lease that every invalidation arrived; bypassing the local cache",
                            self.channel, self.lease)
                actions.append(BYPASS)
            if now >= self._next_ping:
                self._ping_token += 1
                pings.append((self._ping_token, now))
                self._next_ping = now + self.heartbeat
                actions.append(Ping(self._ping_token))
            self._check_at = self._due
            return tuple(actions)
        return NOTHING

    def error(self, exc: BaseException, now: float) -> tuple[Action, ...]:
        """The connection failed (or could not be made): bypass the cache, flush it
        (unsequenced, unless ``stale_if_error``), reconnect after the next backoff delay."""
        if self.state == STOPPED:
            return NOTHING
        was_serving = self.state == LISTENING
        self.state = WAITING
        self._serving = False
        self._pings.clear()
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.failures += 1
        self.last_delay = delay = self.backoff.compute(min(self.failures - 1, MAX_BACKOFF_EXPONENT))
        if was_serving:
            self._heard_at_loss = self._last_seen
            log.warning("lost the invalidation channel (%s); bypassing the local cache until resubscribed", self.last_error)
        else:
            log.debug("connecting the listener failed: %s; next attempt in %.3f s", self.last_error, delay)
        if self.keep_stale or self.sequenced:
            return (BYPASS, Reconnect(delay))
        return (BYPASS, FLUSH, Reconnect(delay))

    def outside_error(self, exc: BaseException) -> tuple[Action, ...]:
        """A connection error the store saw on its own (e.g. loading a cluster's slot
        map): recorded and treated like a drop, without touching the listener's connection
        (the next PONG serves again)."""
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._serving = False
        log.debug("connection error outside the listener: %s", self.last_error)
        return (BYPASS,) if self.keep_stale or self.sequenced else (BYPASS, FLUSH)

    def retry(self, now: float) -> tuple[Action, ...]:
        """The reconnection delay has passed."""
        if self.state != WAITING:
            return NOTHING
        return self._connect(now)

    def forked(self) -> tuple[Action, ...]:
        """In a child made by ``os.fork()``: the parent's connection is not ours; start over."""
        self.reset()
        return (BYPASS, FLUSH)

    def stop(self) -> tuple[Action, ...]:
        """The driver stops listening."""
        self.state = STOPPED
        self._serving = False
        return (BYPASS, CLOSE)

    # -- for the driver ---------------------------------------------------------------

    def timeout(self, now: float) -> float:
        """Seconds the driver may wait for input before it must call ``idle`` (>= 0)."""
        state = self.state
        if state == SUBSCRIBING:
            left = self._deadline - now
        elif state == LISTENING:
            left = self._due - now
        else:
            left = self.idle_timeout
        return left if left > 0.0 else 0.0

    @property
    def _due(self) -> float:
        """LISTENING: when ``idle`` has something to do (a PING, the lease, a PING's deadline)."""
        until = self._next_ping
        if self._pings:
            until = min(until, self._pings[0][1] + self.idle_timeout)
        if self._serving:
            until = min(until, self.proven + self.lease)
        return until

    def _connect(self, now: float) -> tuple[Action, ...]:
        self.state = SUBSCRIBING
        self._connecting_at = now
        self._deadline = now + self.idle_timeout
        self._pings.clear()
        self._serving = False
        self._check_at = 0.0
        return (CONNECT,)

    def _sync(self, wanted: dict[str | None, int | None]) -> tuple[Action, ...]:
        """Stop serving and read the logs of ``wanted`` (shard -> from which sequence number;
        None: only where it stands), one ``Replay`` at a time."""
        if self.state != SYNCING:
            self._round, self._round_sent = set(), math.inf
        self.state = SYNCING
        queued = self._queued
        for shard, since in wanted.items():
            if shard in queued:
                before = queued[shard]
                since = None if before is None or since is None else min(before, since)
            queued[shard] = since
        actions: list[Action] = []
        if self._serving:
            self._serving = False
            actions.append(BYPASS)
        if not self._replaying:
            actions.append(self._next_replay())
        return tuple(actions)

    def _next_replay(self) -> Replay:
        """The next queued replay, handed out."""
        shard = next(iter(self._queued))
        since = self._queued.pop(shard)
        self._replaying, self._replay_shard = True, shard
        return Replay(since, shard)

    def _serve(self, now: float) -> tuple[Action, ...]:
        """``Serve`` if not serving and the proof is younger than the lease."""
        if self._serving or now >= self.proven + self.lease:
            return NOTHING
        self._serving = True
        self._check_at = 0.0  # the lease's end is a new deadline
        return (SERVE,)


class CoordinatorStats(NamedTuple):
    """A snapshot of a coordinator's counters."""

    published: int  # messages this node published
    received: int  # valid messages from other nodes, applied
    ignored_own: int  # this node's own messages, echoed back and ignored
    malformed: int  # messages that did not decode, counted and dropped
    reconnects: int  # successful resubscriptions after a drop
    subscribed: bool  # the local cache is served right now (in sync, lease holding)
    last_error: str | None  # the last connection error, "Type: message"
    foreign_own_id: int = 0  # messages with our instance id that we did not send (applied)
    sequence: int = 0  # the last sequence number applied (0: unsequenced, or none yet)
    gaps: int = 0  # gaps in the sequence seen on a live connection, each repaired by a replay
    replays: int = 0  # replays (after a gap or a resubscription) that evicted only what was missed
    replayed_ids: int = 0  # ids those replays evicted
    full_flushes: int = 0  # flushes because the log did not reach back, or the data set or server changed
    lease_lapses: int = 0  # times the cache was bypassed because the lease ran out
    lease_left: float = 0.0  # seconds the current proof still holds (<= 0: lapsed)
    created: int = 0  # of ``received``: creation messages (first saves elsewhere), which evict nothing
    refilled: int = 0  # ids a replay evicted that were cached, re-read and cached again
    fills: int = 0  # other nodes' filled messages (warm_peers: what their loads read), not in ``received``


class CoordinatorBase:
    """A coordinator's identity, counters and message handling, and its ``ListenerMachine``.

    Identity: ``node_id`` is the configured label (``ClusterConfig.node_id``, for logs
    and metrics).  Messages carry ``instance_id``, random per store instance and renewed
    in a forked child, so two processes (or two stores) with the same label still
    receive each other's invalidations.

    ``subscribed`` is a plain attribute (the stores read it on every cache hit): True
    while the local cache may be served.  A driver sets it when it carries out the
    machine's ``Serve``/``Bypass`` actions.
    """

    def __init__(
        self, config: ClusterConfig, cache: CoherentCache | None, backoff: Backoff | None = None, prefix: str | None = None,
        sequenced: bool = False,
    ) -> None:
        self.config = config
        # track_external_changes: what tracking notifications mean for the cache (None: off).
        self.tracking = TrackedChanges(prefix) if config.track_external_changes and prefix else None
        # Sharded pub/sub: the shard channel of every slot, from the listener's last slot map
        # (None: publish on the plain channel); a changed map waits in _pending_shards.
        self.shards: ShardMap | None = None
        self._pending_shards: ShardMap | None = None
        self._shards_at = 0.0
        self.is_cluster = False  # set by the driver: shard channels are numbered one by one
        self._mapped = False  # a subscription on a Redis Cluster was made (then _subscribed_map is its map)
        self._subscribed_map: list[str] | None = None  # by_slot of the last subscription's map
        self._master_epochs: dict[str, int] = {}  # node id -> the highest config epoch seen for it as a master
        self.listening_shards: ShardMap | None = None  # the slot map of the listener's last subscription
        self._map_changed_at = -math.inf  # when the listener last saw the slot map change
        self.key_prefix = prefix  # the store's key prefix (a session's key: prefix + id)
        # What this store's value-carrying messages name as their store (``scope_of``): only
        # a message naming it adds a session here (stores of other prefixes may share the channel).
        self.scope = scope_of(prefix or "")
        self.source = 0  # the listener connection the message being applied came from
        self.shard: str | None = None  # the shard channel it came on (None: the plain channel)
        self.node_id = config.node_id
        self.channel = config.channel
        self.update_max_bytes = config.update_max_bytes
        self.cache = cache
        # Caches a value the listener re-read after a replay evicted it (id, raw bytes,
        # fill token, request start, PTTL ms): set by the store.
        self.on_refill: Callable[[str, bytes, tuple[int, int], float, int], Any] | None = None
        # Applies an update-mode message (id, value, expiry seconds, whether the value may be
        # added where nothing is cached: it names this store's prefix): set by the store.
        self.on_update: Callable[[str, bytes, int, bool], Any] | None = None
        # Applies another node's ``filled`` message (warm_peers; same arguments): set by the store.
        self.on_fill: Callable[[str, bytes, int], Any] | None = None
        # warm_peers: a load that misses publishes what it read (``fill_prefix``).
        self.warm_peers = config.warm_peers
        self.sequenced = sequenced  # the write scripts number their messages (see fastsess._core.sequence)
        self.log_size = config.replay_log_size
        self.machine = ListenerMachine(config, backoff if backoff is not None else _Doubling(*config.reconnect_backoff), sequenced)
        self._count_lock = threading.Lock()
        self.subscribed = False
        self._reset_counters()
        self.on_message: Callable[[dict[str, Any]], None] | None = None  # for tests and the demo

    def _reset_counters(self) -> None:
        """A new identity and zeroed counters (construction, and a forked child)."""
        self.instance_id = new_instance_id(self.node_id)
        self._published = 0
        self._issued = 0  # messages built by message(): an upper bound on our own echoes
        # Messages built by message() whose echo has not been recognised by own_echo yet:
        # bytes -> (how many, type, session id) (see own_echo).  Bounded: cleared when full
        # (echoes of what was dropped take the general path).
        self._pending: dict[bytes, tuple[int, str, str | None]] = {}
        self._received = 0
        self._created = 0
        self._ignored_own = 0
        self._foreign_own_id = 0
        self._malformed = 0
        self.refilled = 0  # ids re-read (and cached again) after a replay evicted them
        self._fills = 0  # other nodes' filled messages applied (warm_peers)

    @property
    def stats(self) -> CoordinatorStats:
        """A snapshot of the counters (see ``CoordinatorStats``)."""
        machine = self.machine
        return CoordinatorStats(
            self._published, self._received + self._created, self._ignored_own, self._malformed,
            machine.reconnects, self.subscribed, machine.last_error, self._foreign_own_id,
            machine.seq, machine.gaps, machine.replays, machine.replayed_ids, machine.full_flushes, machine.lease_lapses,
            machine.lease_until - time.monotonic(), self._created, self.refilled, self._fills,
        )

    def message(
        self, kind: str, session_id: str | None, version: int = 0, expires_in: int | None = None, ids: list[str] | None = None,
        payload: bytes | None = None, created: bool = False, sequenced: bool | None = None,
    ) -> bytes:
        """This node's wire message of type ``kind`` (for the store's write scripts).  When
        ``sequenced`` (default: the coordinator's), the bytes a sequenced script completes;
        else a whole message, to PUBLISH as it is."""
        numbered = self.sequenced if sequenced is None else sequenced
        data = encode_message(
            kind, session_id, self.instance_id, version, expires_in, ids, payload, created, numbered,
            self.scope if payload is not None else None,
        )
        with self._count_lock:
            self._issued += 1
            if numbered == self.sequenced and kind != DELETED_MANY and len(data) <= MAX_MESSAGE_BYTES:
                pending = self._pending
                if len(pending) >= MAX_PENDING_ECHOES:
                    pending.clear()
                entry = pending.get(data)
                pending[data] = (1 if entry is None else entry[0] + 1, kind, session_id)
        return data

    def fill_prefix(self, session_id: str) -> bytes:
        """The client's bytes of this node's ``filled`` message for ``session_id`` (warm_peers:
        the load script completes them with the expiry and the value it read)."""
        return fill_prefix(session_id, self.instance_id, self.scope)

    def own_echo(self, data: Any, now: float) -> tuple[Action, ...] | None:
        """The listener's shortcut for this node's own echo: if ``data`` is, byte for byte,
        a message ``message()`` built (and, sequenced, completed with the epoch and the
        next sequence number), do what the general path (``ListenerMachine.message`` then
        ``apply_message``) does for it without decoding it: count it as ignored, advance
        the sequence, mark it for tracking (``tracking.echoed``), let the cache see it
        (``own_message``: an id with a write of unknown outcome); returns the machine's
        actions.  None: not such a message (another node's, a forged or garbled one, a gap,
        another epoch, more echoes than messages built: ``foreign_own_id``), or not
        listening: the general path decides.
        """
        if type(data) is not bytes:
            return None
        machine = self.machine
        if self.sequenced:
            tail = machine.next_tail(self.shard)
            if tail is None or not data.endswith(tail):
                return None
            data = data[:-len(tail)]
        elif machine.state != LISTENING:
            return None
        pending = self._pending
        with self._count_lock:
            if self._ignored_own >= self._issued:
                return None
            entry = pending.pop(data, None)
            if entry is None:
                return None
            count, kind, session_id = entry
            if count > 1:
                pending[data] = (count - 1, kind, session_id)
            self._ignored_own += 1
        if self.tracking is not None and kind == INVALIDATED and session_id is not None:
            self.tracking.echoed(self.source, session_id)
        cache = self.cache
        if cache is not None and cache.watching():  # an invalidation after an unknown write outcome
            cache.own_message(kind, session_id)
        return machine.own_echo(now, self.shard)

    def channel_for(self, key: str) -> str:
        """The channel a write script publishes the invalidation of ``key`` on: the shard
        channel of its master (sharded pub/sub on Redis Cluster), else ``channel``."""
        shards = self.shards
        return self.channel if shards is None else shards.by_slot[key_slot(key.encode())]

    def shard_channels(self) -> tuple[str, ...]:
        """The shard channels writers publish on now (empty: the plain channel only)."""
        shards = self.shards
        return () if shards is None else tuple(shards.channels)

    def adopt_shards(self, shards: ShardMap | None, now: float, master_epochs: dict[str, int] | None = None) -> None:
        """The listener subscribed with slot map ``shards`` (None: no sharded pub/sub), read
        when the masters' configuration epochs were ``master_epochs`` (node id -> epoch;
        None: unknown).

        The first map, or the same one again, is used at once.  A changed one (slots
        moved between masters) only after ``SHARD_MAP_WAIT * subscribe_timeout`` seconds,
        during which writers publish on the plain channel: another node's listener may
        still hold the old map (each checks every ``subscribe_timeout``, and the node it
        asks may learn the change later) and would not hear a shard channel it does not know.

        Sequenced (Redis Cluster with sharded pub/sub): the machine numbers each shard
        channel of ``shards``.  Messages on the plain channel are not numbered (nor logged):
        writers send them while a changed map waits, or when their map is out of date.  So
        a subscription whose map differs from the previous subscription's, where a master
        of an earlier subscription has a higher configuration epoch (it took slots over
        meanwhile: also when the map then changed back; a replica promoted by a failover
        is another node, and does not count), or that comes less than
        ``(SHARD_MAP_WAIT + 2) * subscribe_timeout`` after the listener saw the map change,
        trusts nothing it knew (``ListenerMachine.forget``: its replays flush).
        """
        self._number_shards(shards, now, master_epochs)
        if shards is None:
            self.shards = self._pending_shards = None
            return
        old = self.shards if self.shards is not None else self._pending_shards
        if old is None and not self._shards_at or old is not None and old.by_slot == shards.by_slot:
            self.shards, self._pending_shards = shards, None
            self._shards_at = self._shards_at or now
            return
        self.shards, self._pending_shards = None, shards
        wait = SHARD_MAP_WAIT * self.config.subscribe_timeout
        self._shards_at = now + wait
        log.info("the cluster's slot map changed: plain PUBLISH for %.1f s", wait)

    def _number_shards(self, shards: ShardMap | None, now: float, master_epochs: dict[str, int] | None) -> None:
        """Tell the machine which shard channels the subscription numbers (see ``adopt_shards``)."""
        if not self.is_cluster:
            return
        machine = self.machine
        by_slot = None if shards is None else shards.by_slot
        seen = self._master_epochs
        took_over = master_epochs is not None and any(seen.get(node, epoch) < epoch for node, epoch in master_epochs.items())
        if self._mapped and (by_slot != self._subscribed_map or took_over):
            self._map_changed_at = now
        self._mapped, self._subscribed_map = True, by_slot
        self.listening_shards = shards
        for node, epoch in (master_epochs or {}).items():
            seen[node] = max(seen.get(node, epoch), epoch)
        machine.sequenced = self.sequenced and shards is not None
        machine.shard_names = () if shards is None else tuple(shards.channels)
        if now < self._map_changed_at + (SHARD_MAP_WAIT + 2) * self.config.subscribe_timeout:
            machine.forget()

    def shards_due(self, now: float) -> None:
        """Use a changed slot map once its wait is over (see ``adopt_shards``)."""
        pending = self._pending_shards
        if pending is not None and now >= self._shards_at:
            self.shards, self._pending_shards = pending, None

    def expect_write(self, session_id: str) -> None:
        """About to create ``session_id`` (the new id of a regenerate, which publishes
        nothing of its own): with tracking, its notification is this node's own write."""
        if self.tracking is not None:
            self.tracking.expect(session_id)

    def apply_tracked(self, data: Any) -> None:
        """Apply one tracking notification from listener connection ``source``: evict the
        sessions changed by anyone but this node, or flush (``data`` None). Never raises."""
        tracking = self.tracking
        if tracking is None:
            return
        try:
            evict = tracking.notified(self.source, data)
        except Exception:  # noqa: BLE001 - a malformed notification must not kill the listener
            log.debug("dropped a malformed tracking notification", exc_info=True)
            return
        cache = self.cache
        if cache is None:
            return
        if evict is None:
            cache.flush()
            return
        for session_id in evict:
            cache.invalidate(session_id)

    def note_published(self, count: int = 1) -> None:
        """Count messages the store published on this coordinator's behalf."""
        with self._count_lock:
            self._published += count

    def handle_message(self, data: Any) -> None:
        """Apply one raw pub/sub payload: evict, flush, or count it as own/malformed. Never raises.

        (The listener goes through its machine, which checks the sequence, then
        ``apply_message``; this is the same without the sequence check.)
        """
        self.apply_message(decode_message(data))

    def apply_message(self, msg: dict[str, Any] | None) -> None:
        """Apply one decoded message (None: malformed, counted). Never raises.

        A message carrying our ``instance_id`` is our own echo, unless we already saw
        as many echoes as we built messages: then another process uses our id (a
        forged or replayed message, or a copy of this process); it is counted in
        ``foreign_own_id`` and applied like any other node's message.
        """
        if msg is None:
            self._malformed += 1
            log.debug("dropped a malformed message (%d so far)", self._malformed)
            return
        # A value this store may add where it caches nothing: only one read or written under
        # this store's own key prefix (see scope_of).
        ours = msg.get("k") == self.scope
        if msg["t"] == FILLED:  # not an invalidation: another node's read, to add if not cached
            if msg["node"] != self.instance_id and self.on_fill is not None:
                if ours:
                    self.on_fill(msg["id"], msg["p"], msg["e"])
                self._fills += 1
            return
        if msg["node"] == self.instance_id:
            if self._ignored_own < self._issued:
                self._ignored_own += 1
                if self.tracking is not None and msg["t"] == INVALIDATED:
                    self.tracking.echoed(self.source, msg["id"])
                if self.cache is not None:  # an invalidation after an unknown write outcome
                    if msg["t"] == DELETED_MANY:
                        for session_id in msg["ids"]:
                            self.cache.own_message(DELETED, session_id)
                    else:
                        self.cache.own_message(msg["t"], msg["id"])
                return
            self._foreign_own_id += 1
            log.warning("a message on %s carries this store's instance id %s but was not sent by it (%d so far)",
                        self.channel, self.instance_id, self._foreign_own_id)
        if self.cache is not None:
            if msg["t"] == CLEARED:
                self.cache.flush()
            elif msg["t"] == DELETED_MANY:
                for session_id in msg["ids"]:
                    self.cache.invalidate(session_id)
            elif "c" in msg:
                self.cache.created(msg["id"])  # forget it as absent; a copy read since stays
                # warm_peers: the new session, added here (with tracking, as for an update below)
                if "p" in msg and ours and self.on_fill is not None and self.on_fill(msg["id"], msg["p"], msg["e"]) and self.tracking is not None:
                    self.tracking.echoed(self.source, msg["id"])
            elif "p" in msg and self.on_update is not None and ("k" not in msg or ours):  # another prefix's: only evicts
                # update mode: replace a cached copy; with tracking, this write's notification
                # follows on this connection and must not evict the copy (as for an own echo)
                if self.on_update(msg["id"], msg["p"], msg["e"], ours) and self.tracking is not None:
                    self.tracking.echoed(self.source, msg["id"])
            else:
                self.cache.invalidate(msg["id"])
        # After applying it: a reader that sees the count sees the eviction.  One counter per
        # message, so ``received`` (their sum) and ``received - created`` both only grow.
        if "c" in msg:
            self._created += 1
        else:
            self._received += 1
        log.debug("applied %s from node %s", msg["t"], msg["node"])
        if self.on_message is not None:
            self.on_message(msg)

    def report_error(self, exc: BaseException) -> None:
        """Record a connection error seen outside the listener (e.g. the store could not
        load a cluster's slot map): like a dropped subscription, the cache is bypassed
        (and flushed unless ``stale_if_error``) and ``stats.last_error`` says why."""
        self.apply(self.machine.outside_error(exc))

    def apply(self, actions: Sequence[Action]) -> None:
        """Carry out the actions that need no connection: ``Serve``, ``Bypass``, ``Flush``,
        ``Evict`` and ``Dispatch`` (the others are the driver's)."""
        for action in actions:
            kind = type(action)
            if kind is Dispatch:
                self.apply_message(action.data)  # type: ignore[union-attr]
            elif kind is Tracked:
                self.apply_tracked(action.data)  # type: ignore[union-attr]
            elif kind is Evict:
                if self.cache is not None:
                    for session_id in action.ids:  # type: ignore[union-attr]
                        self.cache.invalidate(session_id)
            elif kind is Flush:
                self.flush(action.shard)  # type: ignore[union-attr]
            elif kind is Serve:
                self.subscribed = True
            elif kind is Bypass:
                self.subscribed = False

    def flush(self, shard: str | None = None) -> None:
        """Empty the cache (``Flush``); with ``shard``, only the sessions whose key is in a
        slot that shard channel serves on the listener's slot map, and every fill in flight
        voided (all of it when the map or the key prefix is unknown)."""
        cache = self.cache
        if cache is None:
            return
        shards, prefix = self.listening_shards, self.key_prefix
        if shard is None or shards is None or prefix is None or shard not in shards.channels:
            cache.flush()
            return
        by_slot = shards.by_slot
        evicted = cache.evict_where(lambda session_id: by_slot[key_slot((prefix + session_id).encode())] == shard)
        log.info("%s: evicted the %d cached sessions of its slots", shard, evicted)


class _Doubling:
    """The delay doubles from ``first`` up to ``cap``, without jitter: the backoff of a
    coordinator built without one (the listener thread gives its own, with jitter)."""

    def __init__(self, first: float, cap: float) -> None:
        self.first, self.cap = first, cap

    def compute(self, failures: int) -> float:
        return float(min(self.cap, self.first * 2**failures))
