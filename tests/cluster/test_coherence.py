"""Stale reads across OS processes (``tests/cluster/coherence_node.py``), sync and asyncio.

Every case runs real nodes in their own processes against a private Redis.  The test
process knows when a version was committed (it watches Redis itself, so its time is an
upper bound on the commit) and counts the reads, on every node, that started more than
``COMMITTED_AGO`` after that commit and still returned something older: there must be none.

* own write of unknown outcome: a save/delete that times out on the writer (a TCP proxy
  holds it up) and lands later must not leave the writer serving the old copy;
* ``touch`` shortening: honoured by a node started after the touch, and by a node whose
  messages were flooded by forged ``touched`` messages;
* clock skew: a reader whose wall clock runs 20 s behind stops serving at the real expiry.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from fastsess import RedisStore
from fastsess.cluster import TOUCHED, encode_message
from fastsess.stores.base import new_session_id

from ..tcpproxy import TcpProxy

ROOT = Path(__file__).resolve().parents[2]
COMMITTED_AGO = 0.1  # a read that starts this long after a commit must see it
MODES = ["sync", "async"]


class NodeError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class CNode:
    """A child process running ``python -m tests.cluster.coherence_node``."""

    def __init__(self, name: str) -> None:
        self.name = name
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cluster.coherence_node"], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        self._buf = b""

    def send(self, op: str, **args: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"op": op, **args}) + "\n").encode())
        self.proc.stdin.flush()

    def recv(self, timeout: float = 20.0) -> Any:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"node {self.name} did not answer within {timeout} s")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise EOFError(f"node {self.name} exited with {self.proc.wait(5)}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        reply = json.loads(line)
        if "error" in reply:
            raise NodeError(reply["error"], reply["message"])
        return reply["ok"]

    def call(self, op: str, _wait: float = 20.0, **args: Any) -> Any:
        self.send(op, **args)
        return self.recv(_wait)

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.call("close", _wait=5)
        except Exception:  # noqa: BLE001 - fall through to the kill
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(5)
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()


class Cluster:
    """Starts nodes on one channel and prefix; closes them at the end of the test."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.channel = f"coh:{uuid.uuid4().hex[:8]}"
        self.prefix = f"coh{uuid.uuid4().hex[:6]}:"
        self.nodes: list[CNode] = []

    def start(self, name: str, mode: str, url: str | None = None, **init: Any) -> CNode:
        node = CNode(name)
        self.nodes.append(node)
        node_id = f"{name}-{uuid.uuid4().hex[:6]}"
        subscribed = node.call("init", url=url or self.url, node_id=node_id, channel=self.channel, prefix=self.prefix, mode=mode, **init)
        assert subscribed is True, f"node {name} did not subscribe"
        return node

    def close(self) -> None:
        for node in self.nodes:
            node.close()


@pytest.fixture
def cluster(redis_url: str) -> Iterator[Cluster]:
    c = Cluster(redis_url)
    yield c
    c.close()


@pytest.fixture
def proxy(redis_server: Any) -> Iterator[TcpProxy]:
    p = TcpProxy(redis_server.port)
    yield p
    p.close()


def value_in_redis(url: str, prefix: str, sid: str, key: str) -> Callable[[], Any]:
    """A probe of what Redis holds now (no cache): the value of ``key``, or None if gone."""
    store = RedisStore(url=url, prefix=prefix)

    def probe() -> Any:
        s = store.load(sid)
        return None if s is None else s.get(key)

    return probe


def commit_time(probe: Callable[[], Any], expected: Any, timeout: float = 10.0) -> float:
    """Poll Redis until ``probe()`` returns ``expected``; the time of that (an upper bound on the commit)."""
    deadline = time.monotonic() + timeout
    while probe() != expected:
        if time.monotonic() > deadline:
            pytest.fail(f"Redis never reached {expected!r}")
        time.sleep(0.002)
    return time.monotonic()


def stale(observed: dict[str, Any], committed_at: float, new: Any) -> list[list[Any]]:
    """The reads that started ``COMMITTED_AGO`` after ``committed_at`` yet did not return ``new``."""
    return [r for r in observed["reads"] if r[0] > committed_at + COMMITTED_AGO and r[1] != new]


def after(observed: dict[str, Any], committed_at: float) -> int:
    return sum(1 for r in observed["reads"] if r[0] > committed_at + COMMITTED_AGO)


# --- 1. an own write of unknown outcome ------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("action", ["save", "delete"])
def test_own_write_that_times_out_and_lands_later_is_not_served_stale(
    cluster: Cluster, proxy: TcpProxy, mode: str, action: str,
) -> None:
    # W reaches Redis through the proxy with a 0.5 s socket timeout; R directly.
    W = cluster.start("W", mode, url=proxy.url, socket_timeout=0.5)
    R = cluster.start("R", mode)
    sid = W.call("create", data={"v": 0})["id"]
    assert W.call("update", sid=sid, key="v", value=1)["wrote"] is True  # loads the SET script ...
    assert W.call("delete", sid=new_session_id()) is False  # ... and the DEL script into Redis
    assert R.call("load", sid=sid)["data"]["v"] == 1
    new = 2 if action == "save" else None

    hold = proxy.hold_next(b"EVALSHA", seconds=2.5)  # the next script call lands 2.5 s late
    with pytest.raises(NodeError) as info:
        if action == "save":
            W.call("update", sid=sid, key="v", value=2)
        else:
            W.call("delete", sid=sid)
    assert info.value.kind == "StoreUnavailable" and hold.matched.is_set() and not hold.released.is_set()

    # The application reloads: Redis still holds v1, which W caches and serves.
    assert W.call("reload", sid=sid)["data"]["v"] == 1
    hits = W.call("stats")["cache"]["hits"]
    assert W.call("load", sid=sid)["data"]["v"] == 1
    assert W.call("stats")["cache"]["hits"] == hits + 1
    assert not hold.released.is_set(), "the held write landed too early for this test"

    for node in (W, R):
        node.send("observe", sid=sid, key="v", seconds=3.5)
    committed = commit_time(value_in_redis(cluster.url, cluster.prefix, sid, "v"), new)
    assert hold.released.wait(5)  # it was the held write that landed
    for node in (W, R):
        seen = node.recv(30)
        assert after(seen, committed) > 0, f"{node.name} did not read after the commit"
        late = stale(seen, committed, new)
        assert late == [], (
            f"{node.name} served a value older than the commit {len(late)} times, "
            f"from {late[0][0] - committed:.3f} to {late[-1][0] - committed:.3f} s after it"
        )
    assert W.call("stats")["uncertain"] >= 1


# --- 4. touch shortening ------------------------------------------------------------------


def watch_expiry(cluster: Cluster, reader: CNode, sid: str) -> None:
    """``reader`` loads ``sid`` until past its expiry in Redis; no read that starts after
    the key is gone may return it, and before that the copy really came from the cache."""
    reader.send("observe", sid=sid, key="v", seconds=3.0)
    client = redis.Redis.from_url(cluster.url)
    try:
        deadline = time.monotonic() + 10
        while client.exists(cluster.prefix + sid):
            assert time.monotonic() < deadline, "the key never expired"
            time.sleep(0.002)
        gone = time.monotonic()  # the key's real expiry is at or before this
    finally:
        client.close()
    seen = reader.recv(30)
    late = [r for r in seen["reads"] if r[0] > gone and r[1] is not None]
    assert sum(1 for r in seen["reads"] if r[0] > gone) > 0
    assert late == [], f"{len(late)} reads served the session after its key expired"
    assert seen["hits"] > 0  # the copy was served from the cache until then


@pytest.mark.parametrize("mode", MODES)
def test_touch_shortening_is_honoured_by_a_node_started_after_it(cluster: Cluster, mode: str) -> None:
    A = cluster.start("A", mode)
    sid = A.call("create", data={"v": 0})["id"]  # the store's TTL: an hour
    assert A.call("touch", sid=sid, ttl=2) is True
    B = cluster.start("B", mode)  # never saw the touched message
    assert B.call("load", sid=sid)["data"]["v"] == 0
    watch_expiry(cluster, B, sid)


@pytest.mark.parametrize("mode", MODES)
def test_touch_shortening_survives_a_flood_of_forged_touched_messages(cluster: Cluster, mode: str) -> None:
    B = cluster.start("B", mode, config={"local_cache_max_size": 100})
    A = cluster.start("A", mode)
    sid = A.call("create", data={"v": 0})["id"]
    assert A.call("touch", sid=sid, ttl=2) is True
    client = redis.Redis.from_url(cluster.url)
    try:
        for _ in range(150):  # more than B's cache holds entries
            client.publish(cluster.channel, encode_message(TOUCHED, new_session_id(), "forger", expires_in=3600))
        deadline = time.monotonic() + 10
        while B.call("stats")["coordinator"]["received"] < 151:
            assert time.monotonic() < deadline, "B did not receive the flood"
            time.sleep(0.01)
    finally:
        client.close()
    assert B.call("load", sid=sid)["data"]["v"] == 0
    watch_expiry(cluster, B, sid)


# --- 5. clock skew --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_reader_whose_wall_clock_runs_20_s_behind_stops_at_the_real_expiry(cluster: Cluster, mode: str) -> None:
    A = cluster.start("A", mode, ttl=2)  # sessions live 2 s
    B = cluster.start("B", mode, skew=-20.0)
    clock = B.call("clock")
    assert 19 < time.time() - clock["time"] < 21  # B's wall clock really is 20 s behind
    sid = A.call("create", data={"v": 0})["id"]
    assert B.call("load", sid=sid)["data"]["v"] == 0
    watch_expiry(cluster, B, sid)
