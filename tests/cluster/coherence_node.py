"""One fastsess node in its own OS process, sync or asyncio, for the coherence tests.

Run as ``python -m tests.cluster.coherence_node`` from the repository root.  One JSON
command per line on stdin, one JSON line per answer on stdout: ``{"ok": result}`` or
``{"error": "ExceptionType", "message": ...}``.

``init(cluster=True)`` takes ``url`` as a node of a Redis Cluster.  ``init(mode="async")`` runs an asyncio ``ClusteredRedisStore`` on an event loop that
runs all the time in a thread of its own (so its listener task is scheduled between
commands too); ``mode="sync"`` the threaded store.  ``init(skew=-20)`` makes
``time.time()`` in this process run 20 s behind the real clock (a reader with a skewed
wall clock).  Time stamps in answers are ``time.monotonic()``, system-wide on Linux, so
the parent compares them with its own.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from fastsess import ClusterConfig, Session
from fastsess import ClusteredRedisStore as SyncStore
from fastsess.asyncio import ClusteredRedisStore as AsyncStore

store: Any = None
loop: asyncio.AbstractEventLoop | None = None
sessions: dict[str, Session] = {}


def run(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn``; in asyncio mode, await its result on the store's loop."""
    if loop is None:
        return fn(*args)

    async def call() -> Any:
        result = fn(*args)
        return await result if inspect.isawaitable(result) else result

    return asyncio.run_coroutine_threadsafe(call(), loop).result()


def snapshot(s: Session | None) -> Any:
    return None if s is None else {"id": s.id, "data": dict(s), "version": s.version}


def op_init(
    url: str, node_id: str, channel: str, prefix: str, mode: str = "sync", ttl: int = 3600,
    socket_timeout: float = 1.0, skew: float = 0.0, config: dict[str, Any] | None = None, cluster: bool = False,
) -> Any:
    global store, loop
    if skew:
        real_time = time.time
        time.time = lambda: real_time() + skew  # type: ignore[assignment]
    settings: dict[str, Any] = {"subscribe_timeout": 0.5, "reconnect_backoff": (0.02, 0.2), **(config or {})}
    settings["reconnect_backoff"] = tuple(settings["reconnect_backoff"])  # a JSON list
    cfg = ClusterConfig(node_id=node_id, channel=channel, **settings)
    if mode == "sync":
        if cluster:  # url: one node of a Redis Cluster
            from redis.cluster import RedisCluster

            client = RedisCluster.from_url(url, socket_timeout=socket_timeout)
            store = SyncStore(client=client, config=cfg, prefix=prefix, ttl=ttl)
            return store.coordinator.wait_subscribed(5.0)
        store = SyncStore(url=url, config=cfg, prefix=prefix, ttl=ttl, socket_timeout=socket_timeout)
        return store.coordinator.wait_subscribed(5.0)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="node-loop", daemon=True).start()

    async def start() -> bool:
        global store
        if cluster:
            from redis.asyncio.cluster import RedisCluster as AsyncCluster

            store = AsyncStore(client=AsyncCluster.from_url(url, socket_timeout=socket_timeout), config=cfg, prefix=prefix, ttl=ttl)
        else:
            store = AsyncStore(url=url, config=cfg, prefix=prefix, ttl=ttl, socket_timeout=socket_timeout)
        await store.start()
        deadline = time.monotonic() + 5.0
        while not store.coordinator.subscribed:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    return asyncio.run_coroutine_threadsafe(start(), loop).result()


def op_clock() -> Any:
    return {"time": time.time(), "monotonic": time.monotonic()}


def op_create(data: dict[str, Any]) -> Any:
    s = store.create(data)
    assert run(store.save, s)
    sessions[s.id] = s
    return {"id": s.id, "version": s.version}


def op_update(sid: str, key: str, value: Any) -> Any:
    """Set one key of a session and save it (the session this node holds, else a load)."""
    s = sessions.get(sid) or run(store.load, sid)
    assert s is not None, "no such session"
    s[key] = value
    wrote = run(store.save, s)
    sessions[sid] = s
    return {"wrote": wrote, "version": s.version}


def op_load(sid: str) -> Any:
    return snapshot(run(store.load, sid))


def op_reload(sid: str) -> Any:
    """What an application does after a failed write: forget its copy and load again."""
    sessions.pop(sid, None)
    s = run(store.load, sid)
    if s is not None:
        sessions[sid] = s
    return snapshot(s)


def op_delete(sid: str) -> Any:
    return run(store.delete, sid)


def op_touch(sid: str, ttl: int) -> Any:
    return run(store.touch, sid, ttl)


def op_observe(sid: str, key: str, seconds: float) -> Any:
    """Load ``sid`` every 2 ms for ``seconds``; returns ``[t_start, value]`` per load (value
    None when the session is gone) and the cache hits counted meanwhile."""
    hits0 = store.cache_stats().hits
    out: list[list[Any]] = []

    def record(t: float, s: Session | None) -> None:
        out.append([t, None if s is None else s.get(key)])

    if loop is None:
        deadline = time.monotonic() + seconds
        while (t := time.monotonic()) < deadline:
            record(t, store.load(sid))
            time.sleep(0.002)
    else:

        async def observe() -> None:
            deadline = time.monotonic() + seconds
            while (t := time.monotonic()) < deadline:
                record(t, await store.load(sid))
                await asyncio.sleep(0.002)

        asyncio.run_coroutine_threadsafe(observe(), loop).result()
    return {"reads": out, "hits": store.cache_stats().hits - hits0}


def op_stats() -> Any:
    return {
        "coordinator": store.coordinator.stats._asdict(),
        "cache": store.cache_stats()._asdict(),
        "uncertain": getattr(store._cache, "uncertain_ids", lambda: -1)(),  # -1: not tracked
    }


def op_close() -> Any:
    if store is not None:
        run(store.close)
    if loop is not None:
        loop.call_soon_threadsafe(loop.stop)
    return True


def main() -> None:
    handlers = {name[3:]: fn for name, fn in globals().items() if name.startswith("op_")}
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        op = cmd.pop("op")
        try:
            reply: dict[str, Any] = {"ok": handlers[op](**cmd)}
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which asserts on it
            reply = {"error": type(exc).__name__, "message": str(exc)}
        sys.stdout.write(json.dumps(reply, default=repr) + "\n")
        sys.stdout.flush()
        if op == "close":
            return


if __name__ == "__main__":
    main()
