"""Sequenced invalidations: the server-side sequence, the capped log and the replay. No I/O.

Every write script of a clustered store publishes through the same step, ``SEQUENCE_LUA``
then ``PUBLISH``/``SPUBLISH`` (``ops.PUBLISH_LUA``): it advances the channel's sequence
(``HINCRBY <channel>:seq s 1``), appends ``(sequence, session id)`` to a capped Redis
Stream (``XADD <channel>:log MAXLEN ~ <cap> <sequence>-0 i <id>``) and publishes the
message with the dataset epoch and the sequence appended (``messages.append_sequence``
shows the bytes).  All in the write's own script: one round trip, and the sequence
order is the order in which the writes ran.

The **epoch** is a value made from the server's ``TIME`` when the sequence hash is
created: a flushed (or brand-new) dataset gets a new one.  A listener also compares the
server's identity (``run_id`` and ``master_replid``), read by the ``REPLAY`` script: a
restart or a failover changes it, and then nothing it remembers of the old history is
trusted (a full flush).

**Standalone Redis, Sentinel:** one sequence, on the store's channel; the scripts
declare ``<channel>:seq`` and ``<channel>:log`` as keys.

**Redis Cluster** (sharded pub/sub: every master Redis >= 7): one sequence per shard
channel ``{t}<channel>`` (``fastsess._core.slots``), kept in ``{t}<channel>:seq`` and
``{t}<channel>:log``, which live in the tag's slot on the master serving that channel.
A write script runs on its key's master and numbers its message on that master's shard
channel: the log's keys are in another slot of the same node, which a script without
flags (no ``#!lua`` line) may touch; they are not declared (redis-py's cluster client
refuses a command whose keys span slots), the script derives them from the channel.  If
the key's master does not serve the channel's slot (the writer's slot map is out of
date) the script cannot number the message: it publishes it whole, unnumbered, with
PUBLISH on the plain channel.  A listener replays each shard's log on its master; a
master that failed over answers with another identity (its ``master_replid`` changes),
which evicts the sessions of that shard's slots (``listener.Flush(shard)``).  ``clear`` logs its message on every shard; ``delete_all`` logs one entry
per shard, naming that shard's ids.  Messages on the plain channel (that fallback,
writers whose changed slot map still waits, nodes with ``sharded_pubsub=False``) are in
no log: a listener whose slot map changed, or one of whose masters took slots over
(its configuration epoch went up), flushes at its next subscriptions
(``CoordinatorBase.adopt_shards``).  Masters older than Redis 7, or
``sharded_pubsub=False``: not numbered, and every resubscription flushes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

META_SUFFIX = ":seq"  # hash: s (the last sequence number), e (the dataset epoch)
LOG_SUFFIX = ":log"  # stream: one entry "<sequence>-0" {i: session id ("" for a clear)} per write
CLEARED_ID = ""  # the log's session id for a clear: replaying it flushes everything


def log_keys(channel: str) -> tuple[str, str]:
    """The sequence hash and the capped log of ``channel``: ``(<channel>:seq, <channel>:log)``."""
    return channel + META_SUFFIX, channel + LOG_SUFFIX


# Part of every write script's publish step (``ops.PUBLISH_LUA``): sequence(message, meta,
# log, cap, id) numbers one message and returns it completed.  The message is the client's
# bytes, which end just before the value of "ep" (``messages.encode_message(sequenced=True)``);
# the epoch and "sq" are appended.  An XADD refused because the log is ahead of the
# sequence (someone deleted the hash alone) drops the log: listeners then find that it
# does not reach back, and flush.
SEQUENCE_LUA = """local function sequence(message, meta, log, cap, id)
  local s = redis.call('HINCRBY', meta, 's', 1)
  local e = redis.call('HGET', meta, 'e')
  if not e then
    local t = redis.call('TIME')
    e = t[1] .. string.format('%06d', tonumber(t[2]))
    redis.call('HSET', meta, 'e', e)
  end
  local entry = string.format('%d-0', s)
  local added = redis.pcall('XADD', log, 'MAXLEN', '~', cap, entry, 'i', id)
  if type(added) == 'table' and added.err then
    redis.call('DEL', log)
    redis.call('XADD', log, 'MAXLEN', '~', cap, entry, 'i', id)
  end
  local q = string.format('%d', s)
  return message .. string.char(160 + #e) .. e .. '\\162sq' .. string.char(160 + #q) .. q
end
"""

# KEYS: meta, log.  ARGV: since (the first sequence number wanted), count (0: none).
# Read-only: the server's identity, the epoch ("" while no write made one), the last
# sequence number, and up to ``count`` log entries from ``since`` on.
REPLAY_LUA = """
local server = redis.call('INFO', 'server')
local replication = redis.call('INFO', 'replication')
local identity = (string.match(server, 'run_id:(%w+)') or '') .. ':' .. (string.match(replication, 'master_replid:(%w+)') or '')
local e = redis.call('HGET', KEYS[1], 'e') or ''
local s = tonumber(redis.call('HGET', KEYS[1], 's') or '0')
local entries = {}
if tonumber(ARGV[2]) > 0 and s >= tonumber(ARGV[1]) then
  entries = redis.call('XRANGE', KEYS[2], ARGV[1] .. '-0', '+', 'COUNT', ARGV[2])
end
return {identity, e, s, entries}
"""

class ReplayResult(NamedTuple):
    """What the ``REPLAY`` script found."""

    identity: str  # "<run_id>:<master_replid>" of the server that answered
    epoch: str | None  # the dataset epoch (None: no write made one yet)
    seq: int  # the last sequence number handed out (0: none yet)
    entries: list[tuple[int, str]]  # (sequence, session id) from the requested one on


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii")
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string, got {type(value).__name__}")


def parse_replay(reply: Any) -> ReplayResult:
    """The ``REPLAY`` script's reply as a ``ReplayResult``.

    An entry without a usable session id (planted by another Redis client) reads as a
    clear: the replay that reaches it flushes.

    Raises:
        ValueError: the reply does not have the script's shape.
    """
    try:
        identity, epoch, seq, raw_entries = reply
        entries = []
        for entry_id, fields in raw_entries:
            number = int(_text(entry_id).partition("-")[0])
            values = dict(zip(fields[::2], fields[1::2]))
            try:
                logged = _text(values.get(b"i", values.get("i")))
            except ValueError:  # no id, or not ASCII: not logged by fastsess, so it tells nothing
                logged = CLEARED_ID  # replaying it flushes, instead of failing every replay
            entries.append((number, logged))
        return ReplayResult(_text(identity), _text(epoch) or None, int(seq), entries)
    except (TypeError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed replay reply: {exc}") from exc
