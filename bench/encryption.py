"""What encryption at rest costs per save and per load (on demand, not a test).

    python bench/encryption.py                 # 41 rounds of 500 operations per figure
    python bench/encryption.py --rounds 5 --ops 200

Starts its own private ``redis-server`` (``fastsess.server.RedisServer``) on a free
loopback port.  For each session size, side by side in this process, the plain store and
the same store with ``encryption=Encryption([key])``, alternating which goes first in each
round; a figure is the median over the rounds of (round time / operations), in µs, for
two clocks: this thread's CPU time (``time.thread_time_ns``: what the operation costs the
application, unaffected by waiting for the CPU or for Redis) and wall time
(``perf_counter_ns``: what a caller waits, Redis round trip and scheduling included; on a
loaded machine mostly noise for the store operations):

* ``encode`` / ``decode``: the codec alone (no Redis): ``serializer.encode`` against the
  encrypting one, ``decode`` of the bytes each wrote;
* ``save``: ``RedisStore.save`` of a modified session (one SET), the store's whole path;
* ``load``: ``RedisStore.load`` (one GET, then decode / decrypt and decode);
* ``hit``: ``ClusteredRedisStore.load`` answered from the local cache, which holds decoded
  sessions: nothing is decrypted.

Sizes: the ``fastsess bench`` sample session (~250 bytes encoded), and ~4 KB and ~64 KB
sessions of incompressible strings.  The load average (``uptime``) is printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import time
from collections.abc import Callable
from typing import Any

from fastsess import ClusterConfig, ClusteredRedisStore, Encryption, RedisStore, Session
from fastsess.benchmarks.stores import SAMPLE_SESSION
from fastsess.server import RedisServer


def sizes() -> dict[str, dict[str, Any]]:
    return {
        "sample (~250 B)": dict(SAMPLE_SESSION),
        "~4 KB": {**SAMPLE_SESSION, "items": [secrets.token_hex(16) for _ in range(110)]},
        "~64 KB": {**SAMPLE_SESSION, "items": [secrets.token_hex(16) for _ in range(1800)]},
    }


def per_op(fn: Callable[[], None], ops: int) -> tuple[float, float]:
    """(CPU µs, wall µs) per call of ``fn`` over ``ops`` calls."""
    c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
    for _ in range(ops):
        fn()
    return (time.thread_time_ns() - c0) / ops / 1000, (time.perf_counter_ns() - t0) / ops / 1000


Figure = tuple[float, float, float, float]  # CPU plain, CPU encrypted, wall plain, wall encrypted


def side_by_side(plain: Callable[[], None], encrypted: Callable[[], None], rounds: int, ops: int) -> Figure:
    """Medians (µs per op) of ``plain`` and ``encrypted``, alternating which runs first."""
    a: list[tuple[float, float]] = []
    b: list[tuple[float, float]] = []
    for r in range(rounds):
        if r % 2 == 0:
            a.append(per_op(plain, ops))
            b.append(per_op(encrypted, ops))
        else:
            b.append(per_op(encrypted, ops))
            a.append(per_op(plain, ops))
    med = statistics.median
    return med(x[0] for x in a), med(x[0] for x in b), med(x[1] for x in a), med(x[1] for x in b)


def measure(data: dict[str, Any], plain: RedisStore, crypt: RedisStore, cplain: ClusteredRedisStore, ccrypt: ClusteredRedisStore,
            rounds: int, ops: int) -> list[tuple[str, Figure, tuple[int, int]]]:
    """Every operation, plain against encrypted, for one session ``data``."""
    sp, se = plain.create(data), crypt.create(data)
    plain.save(sp)
    crypt.save(se)
    codec_p, codec_e = plain._codec, crypt._codec
    raw_p, raw_e = codec_p.encode(sp), codec_e.encode(se)

    def touch(store: RedisStore, s: Session) -> Callable[[], None]:
        def save() -> None:
            s.modified = True
            store.save(s)

        return save

    cp, ce = cplain.create(data), ccrypt.create(data)
    cplain.save(cp)
    ccrypt.save(ce)
    assert cplain.load(cp.id) is not None and ccrypt.load(ce.id) is not None  # cached now
    figures = {
        "encode": side_by_side(lambda: codec_p.encode(sp), lambda: codec_e.encode(se), rounds, ops),
        "decode": side_by_side(lambda: codec_p.decode(sp.id, raw_p), lambda: codec_e.decode(se.id, raw_e), rounds, ops),
        "save": side_by_side(touch(plain, sp), touch(crypt, se), rounds, ops),
        "load": side_by_side(lambda: plain.load(sp.id), lambda: crypt.load(se.id), rounds, ops),
        "hit": side_by_side(lambda: cplain.load(cp.id), lambda: ccrypt.load(ce.id), rounds, ops * 10),
    }
    return [(op, figure, (len(raw_p), len(raw_e))) for op, figure in figures.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--ops", type=int, default=500)
    args = parser.parse_args()
    enc = Encryption([Encryption.generate_key(), Encryption.generate_key()])
    server = RedisServer()
    server.start()
    rows: list[tuple[str, str, Figure, int, int]] = []
    try:
        plain = RedisStore(url=server.url, prefix="bench:plain:")
        crypt = RedisStore(url=server.url, prefix="bench:enc:", encryption=enc)
        cfg = {"channel": "bench:enc:invalidate"}
        cplain = ClusteredRedisStore(url=server.url, prefix="bench:cplain:", config=ClusterConfig(node_id="p", **cfg))
        ccrypt = ClusteredRedisStore(url=server.url, prefix="bench:cenc:", config=ClusterConfig(node_id="e", **cfg), encryption=enc)
        for s in (cplain, ccrypt):
            assert s.coordinator is not None and s.coordinator.wait_subscribed(5.0)
        for label, data in sizes().items():
            for op, figure, sizes_ in measure(data, plain, crypt, cplain, ccrypt, args.rounds, args.ops):
                rows.append((label, op, figure, *sizes_))
        for s in (plain, crypt, cplain, ccrypt):
            s.close()
    finally:
        server.close()
    print(f"load average at the end {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}, "
          f"{args.rounds} rounds of {args.ops} ops (hits: {args.ops * 10}), medians, µs per operation")
    print("| session (stored bytes plain → encrypted) | operation | CPU plain | CPU encrypted | CPU difference | wall plain | wall encrypted | wall difference |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for label, op, (cp_, ce_, wp, we), np_, ne in rows:
        print(f"| {label} ({np_} → {ne}) | {op} | {cp_:.2f} | {ce_:.2f} | {ce_ - cp_:+.2f} | {wp:.2f} | {we:.2f} | {we - wp:+.2f} |")


if __name__ == "__main__":
    main()
