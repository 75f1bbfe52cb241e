"""Synthetic request traces for cache hit-ratio studies: session-shaped traffic and Zipf with scans.

A trace is a list of integer ids, one per request, in arrival order; a cache
replaying it looks each id up and stores it on a miss (``bench/hit_ratio.py``).
Every trace is a pure function of its parameters and ``seed``: the same
arguments give the same list on every run and every Python version that keeps
``random.Random``'s documented algorithm (Mersenne Twister, ``random()``,
``expovariate``, ``choices`` with ``cum_weights``).

**Session-shaped** (``session_trace``, parameters in ``SessionParams``):

* A population of ``users`` whose popularity is Zipf-like: user k (from 0) is
  picked with weight ``1 / (k + 1) ** user_alpha``.
* Visits arrive as a Poisson process of ``visit_rate`` per second; each picks a
  user. A visit is ``pages`` page views (geometric, mean ``pages_mean``); a page
  view is a burst of requests (geometric, mean ``burst_mean``) spaced by
  exponential gaps of mean ``burst_gap_mean`` seconds; page views are separated
  by exponential think times of mean ``think_mean`` seconds.
* A visit keeps the user's session id when it starts at most ``idle_timeout``
  seconds after the end of that user's previous visit; otherwise the user gets a
  new id and the old one is abandoned (never requested again). So frequent
  users hold one id for the whole trace and occasional ones leave a string of
  short-lived ids behind. Visits start ``4 * pages_mean * think_mean`` seconds
  before time 0 and only requests from time 0 on are kept, so the trace opens
  in steady state (sessions already in progress), not with an empty site.
* Bots (``bot_fraction`` > 0): bursts arrive as a Poisson process, each one
  sending ``bot_burst_mean`` ids on average (geometric) at ``bot_rate`` per
  second, every one a fresh random cookie (a new id). With probability
  ``bot_repeat`` a bot id is sent once more, ``bot_repeat_gap`` seconds later,
  so a bot id is seen once or twice, never more. The burst rate is set so that
  bots make about ``bot_fraction`` of the requests.
* Requests of all visits and bursts are merged by time and the first
  ``requests`` are kept.

**Zipf with scans** (``zipf_trace``, parameters in ``ZipfParams``): ``requests``
draws from ``items`` ids with weight ``1 / (k + 1) ** alpha`` (ranks are shuffled
over the ids), plus ``scans`` scan windows placed at random, one in each equal
slice of the trace. Inside a window each request is, with probability
``scan_mix``, the next key of a sequential pass of ``scan_length`` fresh ids,
each requested exactly once; the other requests keep following the Zipf law
(regular traffic continues while, say, a batch job walks every session once).

Run ``python bench/traces.py --help`` to write a trace to a file or print its summary.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from fastsess.benchmarks.cluster import zipf_sequence

__all__ = ["SessionParams", "Trace", "ZipfParams", "session_trace", "standard_traces", "summarize", "zipf_trace"]


@dataclass(frozen=True)
class Trace:
    """A request trace: ``keys`` in arrival order, with what generated it.

    ``bot_ids`` and ``scan_ids`` are the ids that only bots or only scans
    requested (empty when the trace has none); ``params`` are the generator's
    parameters, seed included.
    """

    name: str
    keys: list[int]
    params: dict[str, Any]
    bot_ids: frozenset[int] = field(default=frozenset())
    scan_ids: frozenset[int] = field(default=frozenset())

    @property
    def distinct(self) -> int:
        """How many different ids the trace requests."""
        return len(set(self.keys))


@dataclass(frozen=True)
class SessionParams:
    """Parameters of ``session_trace`` (times in seconds; see the module docstring)."""

    requests: int = 1_000_000
    users: int = 100_000
    user_alpha: float = 0.9
    visit_rate: float = 10.0
    pages_mean: float = 5.0
    burst_mean: float = 3.0
    burst_gap_mean: float = 0.05
    think_mean: float = 30.0
    idle_timeout: float = 1800.0
    bot_fraction: float = 0.0
    bot_burst_mean: float = 2000.0
    bot_rate: float = 100.0
    bot_repeat: float = 0.2
    bot_repeat_gap: float = 0.5


@dataclass(frozen=True)
class ZipfParams:
    """Parameters of ``zipf_trace`` (see the module docstring)."""

    requests: int = 1_000_000
    items: int = 100_000
    alpha: float = 1.0
    scans: int = 2
    scan_length: int = 50_000
    scan_mix: float = 0.5


def _geometric(rng: random.Random, mean: float) -> int:
    """A count >= 1 with the given mean (geometric: success probability 1/mean)."""
    if mean <= 1.0:
        return 1
    # inverse transform; 1 - random() is in (0, 1]
    return 1 + int(math.log(1.0 - rng.random()) / math.log(1.0 - 1.0 / mean))


def session_trace(params: SessionParams = SessionParams(), seed: int = 0, name: str = "session") -> Trace:  # noqa: B008  (frozen: safe default)
    """Generate session-shaped traffic (visits in bursts, abandoned ids, optional bot bursts).

    Raises:
        ValueError: ``requests`` < 1, ``users`` < 1, a rate or mean <= 0, or
            ``bot_fraction`` / ``bot_repeat`` outside [0, 1).
    """
    p = params
    if p.requests < 1 or p.users < 1:
        raise ValueError("requests and users must be >= 1")
    if min(p.visit_rate, p.pages_mean, p.burst_mean, p.think_mean, p.bot_burst_mean, p.bot_rate) <= 0 or p.burst_gap_mean < 0:
        raise ValueError("rates and means must be > 0")
    if not (0.0 <= p.bot_fraction < 1.0 and 0.0 <= p.bot_repeat < 1.0):
        raise ValueError("bot_fraction and bot_repeat must be in [0, 1)")
    human_rate = p.visit_rate * p.pages_mean * p.burst_mean  # requests per second, in steady state
    total_rate = human_rate / (1.0 - p.bot_fraction)
    horizon = 1.25 * p.requests / total_rate + 60.0
    while True:  # a horizon too short for `requests` (bursty bots) is retried longer, from the same seed
        events, bot_ids = _session_events(p, random.Random(seed), horizon, human_rate, total_rate)
        if len(events) >= p.requests:
            break
        horizon *= 1.5
    events.sort()
    keys = [sid for _, sid in events[: p.requests]]
    kept_bots = frozenset(bot_ids.intersection(keys))
    return Trace(name, keys, {"generator": "session", "seed": seed, **asdict(p)}, bot_ids=kept_bots)


def _session_events(
    p: SessionParams, rng: random.Random, horizon: float, human_rate: float, total_rate: float
) -> tuple[list[tuple[float, int]], set[int]]:
    """Every request in [0, horizon] as (time, id), and the bot ids among them."""
    events: list[tuple[float, int]] = []
    next_id = 0
    warmup = 4 * p.pages_mean * p.think_mean  # visits start this early so the trace opens in steady state
    chunk = int((horizon + warmup) * p.visit_rate * 1.1) + 100
    users = iter(zipf_sequence(p.users, chunk, rng, p.user_alpha))
    last_end: dict[int, float] = {}
    session_of: dict[int, int] = {}
    t = -warmup
    while True:
        t += rng.expovariate(p.visit_rate)
        if t > horizon:
            break
        user = next(users, None)
        if user is None:  # more visits than expected: draw more users
            users = iter(zipf_sequence(p.users, chunk, rng, p.user_alpha))
            user = next(users)
        if user not in session_of or t - last_end[user] > p.idle_timeout:
            session_of[user] = next_id  # the old id (if any) is abandoned
            next_id += 1
        sid = session_of[user]
        now = t
        for page in range(_geometric(rng, p.pages_mean)):
            if page:
                now += rng.expovariate(1.0 / p.think_mean)
            for req in range(_geometric(rng, p.burst_mean)):
                if req and p.burst_gap_mean:
                    now += rng.expovariate(1.0 / p.burst_gap_mean)
                if 0.0 <= now <= horizon:
                    events.append((now, sid))
        last_end[user] = max(last_end.get(user, 0.0), now)

    bot_ids: set[int] = set()
    if p.bot_fraction:
        burst_rate = (total_rate - human_rate) / (p.bot_burst_mean * (1.0 + p.bot_repeat))
        t = 0.0
        while True:
            t += rng.expovariate(burst_rate)
            if t > horizon:
                break
            now = t
            for _ in range(_geometric(rng, p.bot_burst_mean)):
                now += rng.expovariate(p.bot_rate)
                if now <= horizon:
                    events.append((now, next_id))
                    bot_ids.add(next_id)
                if rng.random() < p.bot_repeat and now + p.bot_repeat_gap <= horizon:
                    events.append((now + p.bot_repeat_gap, next_id))
                    bot_ids.add(next_id)
                next_id += 1
    return events, bot_ids


def zipf_trace(params: ZipfParams = ZipfParams(), seed: int = 0, name: str | None = None) -> Trace:  # noqa: B008  (frozen: safe default)
    """Generate Zipf-distributed requests with sequential scans of one-time keys mixed in.

    Raises:
        ValueError: ``requests`` or ``items`` < 1, ``alpha`` < 0, ``scans`` or
            ``scan_length`` < 0, ``scan_mix`` outside (0, 1], or scan windows
            that do not fit in the trace.
    """
    p = params
    if p.requests < 1 or p.items < 1 or p.alpha < 0 or p.scans < 0 or p.scan_length < 0:
        raise ValueError("requests and items must be >= 1; alpha, scans and scan_length >= 0")
    if not 0.0 < p.scan_mix <= 1.0:
        raise ValueError("scan_mix must be in (0, 1]")
    rng = random.Random(seed)
    ids = list(range(p.items))
    rng.shuffle(ids)  # rank -> id: popularity is not ordered by id
    window = math.ceil(p.scan_length / p.scan_mix) if p.scans and p.scan_length else 0
    slice_len = p.requests // p.scans if p.scans else p.requests
    if window > slice_len:
        raise ValueError(f"a scan window ({window} requests) does not fit in a slice of {slice_len}")
    scan_at: set[int] = set()  # positions of scan requests: scan_length of them in each window
    for i in range(p.scans if window else 0):
        start = i * slice_len + rng.randrange(slice_len - window + 1)
        scan_at.update(start + off for off in rng.sample(range(window), p.scan_length))
    draws = iter(zipf_sequence(p.items, p.requests - len(scan_at), rng, p.alpha))
    keys: list[int] = []
    scan_key = p.items  # scan ids follow the Zipf ids: fresh, sequential, each requested once
    for i in range(p.requests):
        if i in scan_at:
            keys.append(scan_key)
            scan_key += 1
        else:
            keys.append(ids[next(draws)])
    label = name or f"zipf-{p.alpha:g}+scans"
    return Trace(label, keys, {"generator": "zipf", "seed": seed, **asdict(p)}, scan_ids=frozenset(range(p.items, scan_key)))


def standard_traces(requests: int, seed: int = 0, alphas: tuple[float, ...] = (0.6, 0.8, 1.0, 1.2)) -> list[Trace]:
    """The traces of the hit-ratio report, each ``requests`` long.

    ``session`` (the headline trace): session-shaped with 30% of requests from
    bot bursts. Two variants change one thing each: ``session-nobots`` (no
    bots) and ``session-1req`` (one request per page view instead of bursts of
    3 on average, so a new session's second request comes a think time after
    its first). Then one Zipf-with-scans trace per alpha, over ``requests // 10``
    items with two scans of ``requests // 20`` one-time keys each (10% of the requests).
    """
    base = SessionParams(requests=requests, users=max(100, requests // 10), bot_fraction=0.3)
    traces = [
        session_trace(base, seed, "session"),
        session_trace(replace(base, bot_fraction=0.0), seed, "session-nobots"),
        session_trace(replace(base, burst_mean=1.0), seed, "session-1req"),
    ]
    for alpha in alphas:
        zp = ZipfParams(requests=requests, items=max(10, requests // 10), alpha=alpha, scans=2, scan_length=requests // 20)
        traces.append(zipf_trace(zp, seed))
    return traces


def summarize(trace: Trace) -> dict[str, Any]:
    """Counts that describe a trace: requests, distinct ids, one-time ids, bot and scan shares, top-1% share."""
    counts = Counter(trace.keys)
    n = len(trace.keys)
    ranked = sorted(counts.values(), reverse=True)
    top = max(1, len(ranked) // 100)
    return {
        "name": trace.name,
        "requests": n,
        "distinct": len(counts),
        "one_time_ids": sum(1 for c in ranked if c == 1),
        "bot_requests": sum(counts[k] for k in trace.bot_ids) / n,
        "scan_requests": sum(counts[k] for k in trace.scan_ids) / n,
        "top_1pct_share": sum(ranked[:top]) / n,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: print a trace's summary, or write its ids one per line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("kind", choices=["session", "zipf"], help="which generator")
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bots", type=float, default=0.0, help="session: share of requests from bot bursts (0..1)")
    parser.add_argument("--alpha", type=float, default=1.0, help="zipf: exponent")
    parser.add_argument("--scans", type=int, default=2, help="zipf: number of scans")
    parser.add_argument("--scan-length", type=int, default=None, help="zipf: one-time keys per scan (default requests/20)")
    parser.add_argument("--output", "-o", default=None, help="write the ids here, one per line ('-': stdout)")
    args = parser.parse_args(argv)
    if args.kind == "session":
        trace = session_trace(SessionParams(requests=args.requests, users=max(100, args.requests // 10), bot_fraction=args.bots), args.seed)
    else:
        scan_length = args.scan_length if args.scan_length is not None else args.requests // 20
        zp = ZipfParams(requests=args.requests, items=max(10, args.requests // 10), alpha=args.alpha, scans=args.scans, scan_length=scan_length)
        trace = zipf_trace(zp, args.seed)
    if args.output:
        out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="ascii")  # noqa: SIM115
        try:
            out.write("".join(f"{k}\n" for k in trace.keys))
        finally:
            if out is not sys.stdout:
                out.close()
    print(json.dumps({**summarize(trace), "params": trace.params}), file=sys.stderr if args.output == "-" else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
