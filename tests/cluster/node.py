"""One fastsess node in its own OS process, driven by the multiprocess tests.

Run as ``python -m tests.cluster.node`` from the repository root.  It reads one JSON
command per line on stdin and answers one JSON line on stdout:
``{"ok": result}`` or ``{"error": "ExceptionType", "message": ...}``.
Time stamps are ``time.monotonic()``, which is system-wide on Linux, so the parent
can compare them across processes.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from fastsess import ClusterConfig, ClusteredRedisStore, Session

store: ClusteredRedisStore | None = None
sessions: dict[str, Session] = {}


def received() -> int:
    assert store is not None and store.coordinator is not None
    return store.coordinator.stats.received


def snapshot(s: Session | None) -> Any:
    return None if s is None else {"id": s.id, "data": dict(s), "version": s.version}


def op_init(url: str, node_id: str, channel: str, prefix: str, **cluster: Any) -> Any:
    """Build this node's store (``cluster``: more ``ClusterConfig`` fields) and wait for its subscription."""
    global store
    config = ClusterConfig(node_id=node_id, channel=channel, subscribe_timeout=0.5, reconnect_backoff=(0.02, 0.2), **cluster)
    store = ClusteredRedisStore(url=url, config=config, prefix=prefix)
    assert store.coordinator is not None
    return store.coordinator.wait_subscribed(5.0)


def op_init_env(url: str, channel: str, prefix: str) -> Any:
    """Like ``init``, with the node id from ``FASTSESS_NODE_ID`` (``ClusterConfig.from_env``)."""
    global store
    config = ClusterConfig.from_env(channel=channel, subscribe_timeout=0.5, reconnect_backoff=(0.02, 0.2))
    store = ClusteredRedisStore(url=url, config=config, prefix=prefix)
    assert store.coordinator is not None
    return {"subscribed": store.coordinator.wait_subscribed(5.0), "node_id": store.coordinator.node_id, "instance_id": store.coordinator.instance_id}


def op_write_series(sid: str, key: str, count: int, interval: float) -> Any:
    """Save ``sid`` ``count`` times, ``key`` = 1, 2, ..., one save every ``interval`` seconds.

    Returns ``[[value, t_committed], ...]``: ``t_committed`` is when the save returned
    (the write is in Redis by then), in ``time.monotonic()`` (system-wide on Linux)."""
    assert store is not None
    s = sessions.get(sid) or store.load(sid)
    assert s is not None, "no such session"
    committed = []
    next_at = time.monotonic()
    for value in range(1, count + 1):
        time.sleep(max(0.0, next_at - time.monotonic()))
        s[key] = value
        assert store.save(s)
        committed.append([value, time.monotonic()])
        next_at += interval
    sessions[sid] = s
    return committed


def op_create(data: dict[str, Any]) -> Any:
    assert store is not None
    s = store.create(data)
    assert store.save(s)
    sessions[s.id] = s
    return {"id": s.id, "version": s.version}


def op_create_as(sid: str, data: dict[str, Any]) -> Any:
    """Create a session under an id the caller chose (as an application may); returns when saved."""
    assert store is not None
    s = store.create(data)
    s.id = sid
    t0 = time.monotonic()
    assert store.save(s)
    sessions[s.id] = s
    return {"t_start": t0, "t_done": time.monotonic()}


def op_update(sid: str, key: str, value: Any) -> Any:
    """Change one key of a session this node holds and save it; returns when the save returned."""
    assert store is not None
    s = sessions.get(sid) or store.load(sid)
    assert s is not None, "no such session"
    s[key] = value
    t0 = time.monotonic()
    wrote = store.save(s)
    sessions[sid] = s
    return {"wrote": wrote, "t_start": t0, "t_done": time.monotonic(), "version": s.version}


def op_bind(sid: str, principal: str) -> Any:
    """Bind a session this node holds to ``principal`` and save it (log out everywhere)."""
    assert store is not None
    s = sessions.get(sid) or store.load(sid)
    assert s is not None, "no such session"
    store.bind(s, principal)
    sessions[sid] = s
    return store.save(s)


def op_delete_all(principal: str, except_id: str | None = None) -> Any:
    assert store is not None
    return store.delete_all(principal, except_id=except_id)


def op_load(sid: str) -> Any:
    assert store is not None
    return snapshot(store.load(sid))


def op_delete(sid: str) -> Any:
    assert store is not None
    sessions.pop(sid, None)
    return store.delete(sid)


def op_clear() -> Any:
    assert store is not None
    sessions.clear()
    return store.clear()


def op_watch(sid: str, key: str, old: Any, new: Any, timeout: float) -> Any:
    """Load ``sid`` in a loop until ``key`` has the value ``new``; every value seen must be
    ``old`` or ``new``, and no load that starts after an invalidation arrived may return ``old``.

    Answers twice: ``"armed"`` once the first load returned ``old`` (so the parent writes
    only after that), then the result."""
    assert store is not None
    start_received = received()
    hits0 = store.cache_stats().hits
    first = store.load(sid)
    if (None if first is None else first.get(key)) != old:
        raise AssertionError(f"the watch started on {snapshot(first)!r}, not on {old!r}")
    sys.stdout.write(json.dumps({"ok": "armed"}) + "\n")
    sys.stdout.flush()
    deadline = time.monotonic() + timeout
    loads = 0
    while True:
        before = received()
        s = store.load(sid)
        loads += 1
        value = None if s is None else s.get(key)
        if value == new or (new is None and s is None):
            return {"t_seen": time.monotonic(), "loads": loads, "hits": store.cache_stats().hits - hits0, "received": received() - start_received}
        if value != old:
            raise AssertionError(f"unexpected value {value!r}")
        if before > start_received:
            raise AssertionError(f"served the old value after an invalidation arrived ({before - start_received} received)")
        if time.monotonic() > deadline:
            raise TimeoutError(f"still {value!r} after {timeout} s ({loads} loads)")
        time.sleep(0.0002)


def op_wait_subscribed(value: bool, timeout: float) -> Any:
    assert store is not None and store.coordinator is not None
    deadline = time.monotonic() + timeout
    while store.coordinator.subscribed != value:
        if time.monotonic() > deadline:
            raise TimeoutError(f"subscribed is still {store.coordinator.subscribed}")
        time.sleep(0.01)
    return True


def op_stats() -> Any:
    assert store is not None and store.coordinator is not None
    return {"coordinator": store.coordinator.stats._asdict(), "cache": store.cache_stats()._asdict()}


def op_close() -> Any:
    if store is not None:
        store.close()
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
