"""What the compare-and-set costs an unconflicted save (on demand).

    python bench/cas_save.py                  # 5,000 saves each way and size
    python bench/cas_save.py --saves 2000 --sizes 200 4000 60000

Starts its own private ``redis-server`` (``fastsess.server.RedisServer``) on a free
loopback port.  One sync store of each kind in this process; per payload size the two
ways run interleaved, save by save (alternating which goes first), each timed alone, and
the medians (and interquartile ranges) are printed:

* ``cas``: ``store.save`` as shipped: the session remembers the bytes it was stored as,
  hashes them (SHA-1) and runs the ``SAVE`` script, which GETs the value, compares its
  SHA-1 and SETs (clustered: and PUBLISHes);
* ``before``: the same ``store.save`` with the write step without its compare part
  (``StoreCore._write`` swapped for ``before_write`` below for these rounds), as it was
  before the compare-and-set: ``RedisStore`` sends a plain ``SET ... EX ttl XX``, the
  clustered store runs ``SET XX`` and the publish step as shipped (same message,
  sequencing, update mode), so only the compare differs.

Every save rewrites a modified session (one key changed), one at a time: a round trip
each, on loopback.

Then Redis's own time per call (``INFO commandstats``) of a bare ``SET XX``, an empty
script given the same arguments, and ``SAVE`` comparing by first bytes and by SHA-1.

Then the lost updates themselves (``--pairs``, default 300): for each of that many
sessions, two threads each load it, wait for each other, set a key of their own and save;
counted are the sessions that end up missing one of the two keys, with the write step as
before and as shipped (``RedisStore``).  Not a test: the figures depend on the machine and its load
(``uptime`` printed with them).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import threading
import time
from typing import Any

import redis

from fastsess import ClusterConfig, ClusteredRedisStore, RedisStore
from fastsess._core import ops
from fastsess.server import RedisServer

# The save script without its compare part: SET XX, then the publish step as shipped
# (KEYS[1]=key  ARGV: payload, ttl, channel, message, then the sequencing arguments).
SET_PUBLISH = ops.publish_script("""
if redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2], 'XX') then
  publish(ARGV[3], ARGV[4], KEYS[2], KEYS[3], ARGV[5], ARGV[6])
  return 1
end
return 0
""")
CAS = ops.SAVE
CAS_WRITE = ops.StoreCore._write


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def before_write(self: Any, session: Any, payload: bytes) -> ops.Flow:
    """``StoreCore._write`` for an existing session without the compare-and-set: a bare
    ``SET XX`` (``RedisStore``) or ``SET XX`` + the publish step as shipped (clustered:
    the same message, sequencing and update mode as ``_write``)."""
    key = self.keys.key(session.id)
    messages, policy = self.messages, self.policy
    if messages is None:
        return bool((yield ("SET", None, ("SET", key, payload, "EX", session.ttl, "XX"))))
    token = started = None
    if policy is not None:
        token, started = policy.token(session.id), policy.clock()
    try:
        update = payload if len(payload) <= messages.update_max_bytes else None
        message = messages.message(ops.INVALIDATED, session.id, session.version, session.ttl if update else None, payload=update)
        written = bool((yield self._announce(
            "SET", SET_PUBLISH, (key,), session.id, payload, session.ttl, messages.channel_for(key), message,
        )))
        if written:
            messages.note_published()
    except BaseException:
        if policy is not None:
            policy.uncertain(session.id)
        raise
    if policy is not None:
        policy.written(session, written, token, started, len(payload))
    return written


def run(store: Any, sids: tuple[str, str], saves: int) -> dict[bool, list[float]]:
    """Per-save seconds of ``saves`` modified saves each way, the two ways interleaved save
    by save (alternating which goes first), each way on a session of its own (``sids``,
    same data): a load spike hits both alike."""
    sessions = {True: store.load(sids[0]), False: store.load(sids[1])}
    times: dict[bool, list[float]] = {True: [], False: []}
    clock = time.perf_counter
    try:
        for i in range(saves):
            for checked in ((True, False) if i % 2 == 0 else (False, True)):
                ops.StoreCore._write = CAS_WRITE if checked else before_write  # type: ignore[method-assign]
                s = sessions[checked]
                s["n"] = i
                started = clock()
                written = store.save(s)
                times[checked].append(clock() - started)
                if not written:
                    raise AssertionError("a save did not write")
    finally:
        ops.StoreCore._write = CAS_WRITE  # type: ignore[method-assign]
    return times


def lost(store: Any, pairs: int, checked: bool) -> int:
    """Of ``pairs`` concurrent load-modify-save pairs (two threads), how many lost a key."""
    ids = []
    for _ in range(pairs):
        s = store.create({"n": 0})
        assert store.save(s)
        ids.append(s.id)
    ops.StoreCore._write = CAS_WRITE if checked else before_write  # type: ignore[method-assign]
    try:
        gate = threading.Barrier(2)

        def request(key: str) -> None:
            for sid in ids:
                s = store.load(sid)
                gate.wait()  # both loaded before either saves
                s[key] = 1
                store.save(s)

        threads = [threading.Thread(target=request, args=(k,)) for k in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(1 for sid in ids if not {"a", "b"} <= set(store.load(sid).data))
    finally:
        ops.StoreCore._write = CAS_WRITE  # type: ignore[method-assign]


EMPTY = ops.script("return 1")


def server_times(url: str, size: int, calls: int = 5000) -> str:
    """Redis's own time per call (``INFO commandstats`` usec_per_call) for a bare ``SET XX``,
    an empty script given the same arguments, ``SAVE`` by first bytes and ``SAVE`` by
    SHA-1, each rewriting a ``size``-byte value."""
    client = redis.Redis.from_url(url)
    try:
        value = b"FS\x01\x01\x00" + b"x" * max(0, size - 5)  # an uncompressed msgpack envelope's header
        client.set("bench:server", value)
        prefix_token = ("p", value[:128], len(value))
        sha_token = ("h", hashlib.sha1(value).hexdigest(), "")  # noqa: S324 - what Redis compares with
        ways = {
            "SET XX": ("set", ("SET", "bench:server", value, "EX", 1800, "XX")),
            "empty script": ("evalsha", ("EVALSHA", EMPTY.sha, 1, "bench:server", value, 1800, *prefix_token)),
            "SAVE, first bytes": ("evalsha", ("EVALSHA", CAS.sha, 1, "bench:server", value, 1800, *prefix_token)),
            "SAVE, SHA-1": ("evalsha", ("EVALSHA", CAS.sha, 1, "bench:server", value, 1800, *sha_token)),
        }
        for script in (EMPTY, CAS):
            client.script_load(script.text)
        out = []
        for name, (stat, command) in ways.items():
            client.config_resetstat()
            for _ in range(calls):
                client.execute_command(*command)
            out.append(f"{name} {client.info('commandstats')[f'cmdstat_{stat}']['usec_per_call']:.2f} us")
        return ", ".join(out)
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saves", type=int, default=5000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 4000, 60000], help="payload bytes (about)")
    parser.add_argument("--pairs", type=int, default=300, help="concurrent load-modify-save pairs for the lost-update count")
    args = parser.parse_args()
    print(f"load before: {load()}")
    with RedisServer() as server:
        stores = {
            "RedisStore": RedisStore(url=server.url, prefix="bench:"),
            "ClusteredRedisStore": ClusteredRedisStore(
                url=server.url, prefix="bench:", config=ClusterConfig(channel="bench:cas"),
            ),
        }
        clustered = stores["ClusteredRedisStore"]
        assert clustered.coordinator is not None and clustered.coordinator.wait_subscribed(5.0)
        for size in args.sizes:
            for name, store in stores.items():
                pair = store.create({"blob": "x" * size, "n": 0}), store.create({"blob": "x" * size, "n": 0})
                assert all(store.save(s) for s in pair)
                sids = (pair[0].id, pair[1].id)
                run(store, sids, 200)  # warm up
                times = run(store, sids, args.saves)
                cas, before = statistics.median(times[True]), statistics.median(times[False])
                q = {k: statistics.quantiles(v, n=4) for k, v in times.items()}
                print(
                    f"{name:20s} {size:>6d} B  cas {cas * 1e6:7.1f} us (IQR {q[True][0] * 1e6:.1f}-{q[True][2] * 1e6:.1f})  "
                    f"before {before * 1e6:7.1f} us (IQR {q[False][0] * 1e6:.1f}-{q[False][2] * 1e6:.1f})  "
                    f"ratio {cas / before:.3f}  ({args.saves} saves each, load {load()})",
                    flush=True,
                )
        for size in args.sizes:
            print(f"server time per call, {size} B: {server_times(server.url, size)} (load {load()})")
        plain = stores["RedisStore"]
        for checked in (False, True):
            n = lost(plain, args.pairs, checked)
            print(f"lost updates, {'cas' if checked else 'before'}: {n} of {args.pairs} concurrent pairs lost a key (load {load()})")
        for store in stores.values():
            store.close()
    print(f"load after: {load()}")


if __name__ == "__main__":
    main()
