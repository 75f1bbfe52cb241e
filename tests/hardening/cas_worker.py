"""One OS process of the lost-update proof: concurrent load-modify-save rounds on ONE session.

Run as ``python -m tests.hardening.cas_worker '<json list>'`` from the repository root:
runs each run described in the list, one after the other, and prints one JSON line, the
list of what happened in each.  Settings of a run (JSON keys):

* ``url``, ``prefix``, ``sid``: the shared private Redis and the session.
* ``kind``: ``redis`` or ``clustered``; ``flavour``: ``sync`` or ``asyncio``.
* ``me``: this process's number; ``rounds``; ``tasks``: rounds in flight at once in this
  process (asyncio tasks; sync: threads).
* ``policy``: ``merge`` (the default), ``raise``, or ``counter`` (a merge function that
  adds both sides' increments of ``hits`` and lets the last writer win elsewhere).
* ``start``: a Redis key used as a start barrier (every process waits for ``procs``).
* ``mode``: ``rounds`` (the proof) or ``logout`` (run rounds until the session is gone,
  then save the copies loaded before, late: each must return False).

Every round: load, set this round's own key ``p<me>-<i>``, set the shared ``last`` to
``[me, i]``, add 1 to the shared ``hits``, save.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from typing import Any

import redis

import fastsess
import fastsess.asyncio
from fastsess import ConcurrentModification, Session


def counter(key: str, base: Any, mine: Any, theirs: Any) -> Any:
    """The ``counter`` policy: increments of ``hits`` add up; last writer wins elsewhere."""
    if key == "hits":
        return (0 if theirs is fastsess.MISSING else theirs) + mine - (0 if base is fastsess.MISSING else base)
    return mine


class Tally:
    def __init__(self) -> None:
        self.saved: list[int] = []  # rounds whose save returned True
        self.conflicted: list[int] = []  # rounds that raised ConcurrentModification
        self.gone: list[int] = []  # rounds whose save returned False (deleted meanwhile)
        self.rebased = 0  # saves that re-applied their changes on another's write
        self.older_in_cache = 0  # clustered: a load right after a save returned an older version
        self.late_saves: list[bool] = []  # logout mode: the late saves' results
        self.lock = threading.Lock()


def modify(s: Session, me: int, i: int) -> int:
    s[f"p{me}-{i}"] = i
    s["last"] = [me, i]
    s["hits"] = s.get("hits", 0) + 1
    return s.version


def record(tally: Tally, i: int, loaded_version: int, s: Session, result: bool | Exception, after: Session | None) -> None:
    with tally.lock:
        if isinstance(result, ConcurrentModification):
            tally.conflicted.append(i)
        elif result is True:
            tally.saved.append(i)
            if s.version > loaded_version + 1:
                tally.rebased += 1
            if after is not None and after.version < s.version:
                tally.older_in_cache += 1
        else:
            tally.gone.append(i)


def make_store(cfg: dict[str, Any]) -> Any:
    api = fastsess if cfg["flavour"] == "sync" else fastsess.asyncio
    kwargs: dict[str, Any] = {"url": cfg["url"], "prefix": cfg["prefix"]}
    policy = cfg["policy"]
    kwargs["on_conflict"] = counter if policy == "counter" else policy
    if cfg["kind"] == "clustered":
        config = fastsess.ClusterConfig(channel=cfg["prefix"] + "chan", subscribe_timeout=2.0)
        return api.ClusteredRedisStore(config=config, **kwargs)
    return api.RedisStore(**kwargs)


def wait_start(cfg: dict[str, Any]) -> None:
    client = redis.Redis.from_url(cfg["url"])
    try:
        client.incr(cfg["start"])
        deadline = time.monotonic() + 20.0
        while int(client.get(cfg["start"]) or 0) < cfg["procs"]:
            if time.monotonic() > deadline:
                raise TimeoutError("the other process never started")
            time.sleep(0.001)
    finally:
        client.close()


WINDOW = 20  # rounds a process may run ahead of the slowest other one (they must overlap)
EVERY = 5  # rounds between two looks at the others' progress
PACE_TIMEOUT = 20.0


class Pace:
    """Keeps the processes in step, so that their rounds really overlap even when the
    machine deschedules one of them for a while: each counts its finished rounds in
    Redis and waits (bounded) while it is more than ``WINDOW`` rounds ahead of another."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.client = redis.Redis.from_url(cfg["url"])
        self.mine = f"{cfg['start']}:done:{cfg['me']}"
        self.others = [f"{cfg['start']}:done:{n}" for n in range(cfg.get("workers", 2)) if n != cfg["me"]]
        self.lock = threading.Lock()
        self.done = 0
        self.off = False  # an other process stopped answering: stop waiting for it

    def step(self) -> None:
        """One more round finished here; wait while too far ahead."""
        with self.lock:
            self.done += 1
            done = self.done
        if done % EVERY:
            return
        self.client.set(self.mine, done)
        deadline = time.monotonic() + PACE_TIMEOUT
        while not self.off and done - min(int(v or 0) for v in self.client.mget(self.others)) > WINDOW:
            if time.monotonic() > deadline:
                self.off = True
                return
            time.sleep(0.0005)

    def finish(self) -> None:
        self.client.set(self.mine, 10**9)  # never hold the others back any more
        self.client.close()


def run_sync(cfg: dict[str, Any]) -> Tally:
    store, tally, sid, me = make_store(cfg), Tally(), cfg["sid"], cfg["me"]
    held: list[Session] = []
    if cfg["kind"] == "clustered":
        store.coordinator.wait_subscribed(5.0)
    next_round = iter(range(cfg["rounds"]))
    next_lock = threading.Lock()
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            with next_lock:
                i = next(next_round, None)
            if i is None:
                return
            s = store.load(sid)
            if s is None:
                stop.set()
                return
            if cfg["mode"] == "logout" and len(held) < 20:
                held.append(s.copy())
            loaded = modify(s, me, i)
            try:
                result: bool | Exception = store.save(s)
            except ConcurrentModification as exc:
                result = exc
            after = store.load(sid) if result is True and cfg["kind"] == "clustered" else None
            record(tally, i, loaded, s, result, after)
            pace.step()

    pace = Pace(cfg)
    wait_start(cfg)
    threads = [threading.Thread(target=worker) for _ in range(cfg["tasks"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pace.finish()
    for s in held:
        s["late"] = True
        tally.late_saves.append(store.save(s))
    store.close()
    return tally


async def run_async(cfg: dict[str, Any]) -> Tally:
    store, tally, sid, me = make_store(cfg), Tally(), cfg["sid"], cfg["me"]
    held: list[Session] = []
    if cfg["kind"] == "clustered":
        await store.start()
        await store.coordinator.wait_subscribed(5.0)
    next_round = iter(range(cfg["rounds"]))
    stop = asyncio.Event()

    async def worker() -> None:
        while not stop.is_set():
            i = next(next_round, None)
            if i is None:
                return
            s = await store.load(sid)
            if s is None:
                stop.set()
                return
            if cfg["mode"] == "logout" and len(held) < 20:
                held.append(s.copy())
            loaded = modify(s, me, i)
            try:
                result: bool | Exception = await store.save(s)
            except ConcurrentModification as exc:
                result = exc
            after = await store.load(sid) if result is True and cfg["kind"] == "clustered" else None
            record(tally, i, loaded, s, result, after)
            await asyncio.to_thread(pace.step)

    pace = Pace(cfg)
    await asyncio.to_thread(wait_start, cfg)
    await asyncio.gather(*(worker() for _ in range(cfg["tasks"])))
    pace.finish()
    for s in held:
        s["late"] = True
        tally.late_saves.append(await store.save(s))
    await store.close()
    return tally


def main() -> None:
    results = []
    for cfg in json.loads(sys.argv[1]):
        cfg.setdefault("mode", "rounds")
        started = time.monotonic()
        tally = run_sync(cfg) if cfg["flavour"] == "sync" else asyncio.run(run_async(cfg))
        results.append({
            "saved": tally.saved, "conflicted": tally.conflicted, "gone": tally.gone, "rebased": tally.rebased,
            "older_in_cache": tally.older_in_cache, "late_saves": tally.late_saves,
            "seconds": time.monotonic() - started,
        })
    print(json.dumps(results))


if __name__ == "__main__":
    main()
