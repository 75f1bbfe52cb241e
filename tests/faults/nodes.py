"""Nodes for the fault suite: one ``ClusteredRedisStore`` each, driven through one small API.

* ``LocalNode(url, channel, prefix, flavour="sync" | "asyncio")``: a store in this process;
  an asyncio store runs on an event loop of its own thread.
* ``ProcessNode(...)``: the same in a child process (``python -m tests.faults.node_proc``),
  one JSON command per line; an error comes back as ``NodeError`` carrying the
  exception's type name.

Every node answers ``create``, ``write``, ``read``, ``delete``, ``bind``, ``delete_all``,
``state``, ``holds``, ``timed_reads`` and ``wait_subscribed``; ``caught(fn)`` gives the type name of what a call raised, for
both kinds alike.  Everything the suite reads of a store's internals is in ``state()``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from fastsess import ClusterConfig, Session
from fastsess import ClusteredRedisStore as SyncStore
from fastsess.asyncio import ClusteredRedisStore as AsyncStore

ROOT = Path(__file__).resolve().parents[2]

# Short failure timeouts keep every scenario to a second or two.
SOCKET_TIMEOUT = 0.25
CLUSTER = {"subscribe_timeout": 0.25, "reconnect_backoff": (0.02, 0.1)}
STORE_ARGS = ("socket_timeout", "breaker_threshold", "breaker_cooldown")


class NodeError(Exception):
    """An exception raised inside a child process node: ``kind`` is its type name."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def caught(fn: Callable[[], Any]) -> str | None:
    """The type name of the exception ``fn()`` raised, or None if it returned."""
    try:
        fn()
    except NodeError as exc:
        return exc.kind
    except Exception as exc:  # noqa: BLE001 - the name is the result
        return type(exc).__name__
    return None


class LocalNode:
    """A clustered store in this process (sync, or asyncio on a loop thread of its own)."""

    def __init__(self, url: str, channel: str, prefix: str, name: str, flavour: str = "sync", **config: Any) -> None:
        self.name = name
        self.flavour = flavour
        self.sessions: dict[str, Session] = {}
        # store arguments that are not ClusterConfig fields
        store_args = {"socket_timeout": SOCKET_TIMEOUT, **{k: config.pop(k) for k in STORE_ARGS if k in config}}
        settings = {"node_id": name, "channel": channel, **CLUSTER, **config}
        cfg = ClusterConfig(**settings)
        self._loop: asyncio.AbstractEventLoop | None = None
        if flavour == "sync":
            self.store: Any = SyncStore(url=url, config=cfg, prefix=prefix, **store_args)
            return
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name=f"faults-loop-{name}", daemon=True).start()

        async def make() -> Any:
            store = AsyncStore(url=url, config=cfg, prefix=prefix, **store_args)
            await store.start()
            return store

        self.store = self._run(make())

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def _call(self, name: str, *args: Any) -> Any:
        return self._call_on(self.store, name, *args)

    def create(self, data: dict[str, Any]) -> str:
        """Create and save a session; its id."""
        s = self._call("create", data)
        assert self._call("save", s) is True
        self.sessions[s.id] = s
        return str(s.id)

    def write(self, sid: str, key: str, value: Any) -> bool:
        """Set ``key`` in the session this node holds (loaded if need be) and save it."""
        s = self.sessions.get(sid) or self._call("load", sid)
        assert s is not None, f"no session {sid}"
        self.sessions[sid] = s
        s[key] = value
        return bool(self._call("save", s))

    def read(self, sid: str) -> dict[str, Any] | None:
        """``load(sid)`` as a plain dict (None: no such session)."""
        s = self._call("load", sid)
        return None if s is None else dict(s)

    def regenerate(self, sid: str) -> str:
        """Move the session to a new id; the new id."""
        s = self.sessions.get(sid) or self._call("load", sid)
        assert s is not None, f"no session {sid}"
        self.sessions[sid] = s
        self._call("regenerate", s)
        self.sessions[s.id] = self.sessions.pop(sid)
        return str(s.id)

    def delete(self, sid: str) -> bool:
        self.sessions.pop(sid, None)
        return bool(self._call("delete", sid))

    def bind(self, sid: str, principal: str) -> None:
        """Bind the session to ``principal`` (log out everywhere) and save it."""
        s = self.sessions.get(sid) or self._call("load", sid)
        assert s is not None, f"no session {sid}"
        self.sessions[sid] = s
        self._call("bind", s, principal)
        assert self._call("save", s) is True

    def delete_all(self, principal: str) -> int:
        """``delete_all(principal)``: how many sessions it deleted."""
        return int(self._call("delete_all", principal))

    def state(self) -> dict[str, Any]:
        """Listener, cache and breaker state: subscribed, reconnects, received, malformed,
        cached, and ``breaker``: the store's ``BreakerStats`` as a dict."""
        coordinator = self.store.coordinator
        stats = coordinator.stats
        return {
            "subscribed": bool(coordinator.subscribed), "reconnects": stats.reconnects, "received": stats.received,
            "malformed": stats.malformed, "cached": self.store.cache_stats().size,
            "breaker": self.store.breaker.stats._asdict(),
        }

    def holds(self, sids: list[str]) -> list[bool]:
        """For each id: does this node's local cache hold a copy (no read, no counters)?"""
        cache = self.store._cache
        return [cache is not None and sid in cache.cache for sid in sids]

    def timed_reads(self, sids: list[str]) -> list[tuple[str | None, float]]:
        """``read`` each id in turn, in this process (so a child's figures carry no pipe
        round trip): per read, the exception type name (None: it returned) and its seconds."""
        if self._loop is None:
            out: list[tuple[str | None, float]] = []
            for sid in sids:
                t0 = time.perf_counter()
                error = caught(lambda sid=sid: self.store.load(sid))  # type: ignore[misc]
                out.append((error, time.perf_counter() - t0))
            return out

        async def reads() -> list[tuple[str | None, float]]:  # timed on the loop: no thread hop
            out: list[tuple[str | None, float]] = []
            for sid in sids:
                t0 = time.perf_counter()
                try:
                    await self.store.load(sid)
                    error = None
                except Exception as exc:  # noqa: BLE001 - the name is the result
                    error = type(exc).__name__
                out.append((error, time.perf_counter() - t0))
            return out

        result: list[tuple[str | None, float]] = self._run(reads())
        return result

    def wait_subscribed(self, timeout: float) -> bool:
        return bool(self._call_on(self.store.coordinator, "wait_subscribed", timeout))

    def _call_on(self, obj: Any, name: str, *args: Any) -> Any:
        result = getattr(obj, name)(*args)
        if inspect.isawaitable(result):

            async def wait() -> Any:
                return await result

            return self._run(wait())
        return result

    def close(self) -> None:
        if self._loop is None:
            self.store.close()
            return
        try:
            self._call("close")
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)


class ProcessNode:
    """A ``LocalNode`` in a child process (``tests/faults/node_proc.py``)."""

    def __init__(self, url: str, channel: str, prefix: str, name: str, flavour: str = "sync", **config: Any) -> None:
        self.name = name
        self.flavour = f"process-{flavour}"
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.node_proc"], cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        self._buf = b""
        self._send("init", url=url, channel=channel, prefix=prefix, name=name, flavour=flavour, config=config)

    def _send(self, op: str, **args: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps({"op": op, **args}) + "\n").encode())
        self.proc.stdin.flush()
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + 30
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"node {self.name} did not answer {op}")
            if select.select([fd], [], [], remaining)[0]:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise EOFError(f"node {self.name} exited with {self.proc.wait(5)}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        reply = json.loads(line)
        if "error" in reply:
            raise NodeError(reply["error"], reply["message"])
        return reply["ok"]

    def create(self, data: dict[str, Any]) -> str:
        return str(self._send("create", data=data))

    def write(self, sid: str, key: str, value: Any) -> bool:
        return bool(self._send("write", sid=sid, key=key, value=value))

    def read(self, sid: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self._send("read", sid=sid)
        return result

    def regenerate(self, sid: str) -> str:
        return str(self._send("regenerate", sid=sid))

    def delete(self, sid: str) -> bool:
        return bool(self._send("delete", sid=sid))

    def bind(self, sid: str, principal: str) -> None:
        self._send("bind", sid=sid, principal=principal)

    def delete_all(self, principal: str) -> int:
        return int(self._send("delete_all", principal=principal))

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self._send("state")
        return result

    def wait_subscribed(self, timeout: float) -> bool:
        return bool(self._send("wait_subscribed", timeout=timeout))

    def timed_reads(self, sids: list[str]) -> list[tuple[str | None, float]]:
        return [(error, seconds) for error, seconds in self._send("timed_reads", sids=sids)]

    def holds(self, sids: list[str]) -> list[bool]:
        return [bool(held) for held in self._send("holds", sids=sids)]

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self._send("close")
        except Exception:  # noqa: BLE001 - fall through to the kill
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(5)
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()


Node = LocalNode | ProcessNode


def make_node(kind: str, url: str, channel: str, prefix: str, name: str, **config: Any) -> Node:
    """``kind``: ``sync``, ``asyncio`` (in this process) or ``process`` (a sync store in a child)."""
    if kind == "process":
        return ProcessNode(url, channel, prefix, name, "sync", **config)
    return LocalNode(url, channel, prefix, name, kind, **config)
