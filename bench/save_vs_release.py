"""An unconflicted ``RedisStore.save`` of this checkout against another installation of
fastsess (an earlier release, or the commit before a change), side by side (on demand).

    python bench/save_vs_release.py --baseline /path/to/other/venv/bin/python
    python bench/save_vs_release.py --baseline ... --rounds 20 --saves 1000 --sizes 200 4000

One private ``redis-server`` on a free loopback port; two worker processes, one per
interpreter (this one, and ``--baseline``, whose ``import fastsess`` is the other
installation).  The workers take turns, one round each at a time, the order alternating
every round: each loads one session once, then per round saves it ``--saves`` times,
one key changed before each save, each save timed alone.  The figure is the median of
all of a worker's saves, and their ratio; the spread is the range of the per-round
medians.  Both use only the API every release has (``RedisStore(url=, prefix=)``,
``create``, ``save``, ``load``) and the same redis-py.  Not a test: the figures depend on
the machine and its load (printed with them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import json, sys, time, uuid, statistics
import fastsess
from fastsess import RedisStore
url, size = sys.argv[1], int(sys.argv[2])
store = RedisStore(url=url, prefix="svr:" + uuid.uuid4().hex[:8] + ":")
s = store.create({"user_id": 1, "blob": "x" * size})
store.save(s)
s = store.load(s.id)
clock = time.perf_counter_ns
n = 0
print(json.dumps({"ready": fastsess.__file__}), flush=True)
for line in sys.stdin:
    count = int(line)
    samples = []
    for _ in range(count):
        n += 1
        s["n"] = n
        t0 = clock()
        store.save(s)
        samples.append(clock() - t0)
    assert store.load(s.id)["n"] == n
    print(json.dumps(samples), flush=True)
"""


def main(argv: list[str]) -> None:
    """Print the comparison (see the module doc for the arguments)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="python of the other installation")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--saves", type=int, default=1000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 4000])
    args = parser.parse_args(argv)

    from fastsess.server import RedisServer

    server = RedisServer().start()
    try:
        print(f"load before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        for size in args.sizes:
            workers = {}
            for name, python in (("this checkout", sys.executable), ("baseline", args.baseline)):
                proc = subprocess.Popen(
                    [python, "-c", WORKER, server.url, str(size)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(Path("/").resolve()),
                )
                assert proc.stdout is not None
                origin = json.loads(proc.stdout.readline())["ready"]
                workers[name] = (proc, origin)
            samples: dict[str, list[int]] = {name: [] for name in workers}
            medians: dict[str, list[float]] = {name: [] for name in workers}
            names = list(workers)
            for r in range(args.rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    proc = workers[name][0]
                    assert proc.stdin is not None and proc.stdout is not None
                    proc.stdin.write(f"{args.saves}\n")
                    proc.stdin.flush()
                    got = json.loads(proc.stdout.readline())
                    samples[name] += got
                    medians[name].append(statistics.median(got))
            for proc, _ in workers.values():
                assert proc.stdin is not None
                proc.stdin.close()
                proc.wait(10)
            mine, base = (statistics.median(samples[n]) / 1000 for n in names)
            print(f"{size} B payload, {args.rounds} x {args.saves} saves each")
            for name in names:
                m = statistics.median(samples[name]) / 1000
                lo, hi = min(medians[name]) / 1000, max(medians[name]) / 1000
                print(f"  {name:14} {m:7.1f} us  (round medians {lo:.1f}-{hi:.1f})  {workers[name][1]}")
            print(f"  ratio this/baseline {mine / base:.3f}")
        print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
