"""The fault suite's rig: a private Redis, a TCP proxy in front of it for node B, two nodes.

* ``rig``: a ``Rig`` with its own ``redis-server`` (debug command enabled, append-only
  file fsynced on every write, so a ``kill -9`` loses no acknowledged write), a raw
  client, a ``TcpProxy`` through which node B reaches Redis (so one of B's
  connections can be blackholed or stalled), a channel and key prefix of its own.
  ``rig.start(b="sync" | "asyncio" | "process")`` starts node A (sync, direct) and node
  B, both subscribed.
* ``Ledger``: what every write told its caller, to check after recovery that no
  acknowledged write was lost and that both nodes read what Redis holds.
* ``report(...)``: one line per scenario (what callers saw, how long reads were stale,
  recovery time), printed at the end of the run: measurements, not assertions.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from ..support import RedisServer
from ..support.waiting import wait_until
from ..tcpproxy import TcpProxy
from .nodes import Node, caught, make_node

RESULTS: list[dict[str, Any]] = []


def report(scenario: str, flavour: str, **figures: Any) -> None:
    """Record one scenario's observations for the summary printed after the run."""
    RESULTS.append({"scenario": scenario, "flavour": flavour, **figures})


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    terminalreporter.section("fault suite: what callers saw and how long recovery took")
    for row in RESULTS:
        rest = ", ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k not in ("scenario", "flavour"))
        terminalreporter.write_line(f"{row['scenario']:<28} B={row['flavour']:<8} {rest}")


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


class Ledger:
    """Every write's outcome as its caller saw it.

    ``acked[sid]``: the last value whose save returned True; ``unknown[sid]``: values
    written after it whose save raised (they may or may not have landed).
    """

    def __init__(self) -> None:
        self.acked: dict[str, Any] = {}
        self.unknown: dict[str, list[Any]] = {}

    def create(self, node: Node, value: Any) -> str:
        sid = node.create({"v": value})
        self.acked[sid], self.unknown[sid] = value, []
        return sid

    def write(self, node: Node, sid: str, value: Any) -> str | None:
        """Save ``v = value`` on ``node``; the exception type name it raised, or None."""
        result: list[bool] = []
        error = caught(lambda: result.append(node.write(sid, "v", value)))
        if error is None:
            assert result == [True], f"save of a live session returned {result}"
            self.acked[sid], self.unknown[sid] = value, []
        else:
            self.unknown[sid].append(value)
        return error

    def check(self, raw: redis.Redis, prefix: str, nodes: list[Node]) -> None:
        """No acknowledged write lost, and every node reads what Redis holds (no stale copy)."""
        for sid, acked in self.acked.items():
            stored = raw.get(prefix + sid)
            assert stored is not None, f"session {sid} is gone from Redis"
            # Every node reads Redis's value; which one it is, the node's own load tells.
            values = {node.name: (node.read(sid) or {}).get("v") for node in nodes}
            current = values[nodes[0].name]
            assert current == acked or current in self.unknown[sid], (
                f"acknowledged write lost: Redis serves {current!r}, the last acknowledged value is {acked!r} "
                f"(unacknowledged since: {self.unknown[sid]})"
            )
            assert len(set(map(repr, values.values()))) == 1, f"nodes disagree after recovery: {values}"


class Rig:
    def __init__(self) -> None:
        self.server = RedisServer(extra_args=("--enable-debug-command", "yes", "--appendonly", "yes", "--appendfsync", "always"))
        self.server.start()
        self.raw = redis.Redis.from_url(self.server.url)
        self.proxy = TcpProxy(self.server.port, small_buffers=True)
        self.channel = f"faults:{uuid.uuid4().hex[:8]}"
        self.prefix = f"f{uuid.uuid4().hex[:6]}:"
        self.nodes: list[Node] = []
        self.ledger = Ledger()

    def start(self, b: str = "sync", **config: Any) -> tuple[Node, Node]:
        """Node A (sync, straight to Redis) and node B (``b``, through the proxy), subscribed."""
        a = make_node("sync", self.server.url, self.channel, self.prefix, f"A-{uuid.uuid4().hex[:6]}", **config)
        self.nodes.append(a)
        node_b = make_node(b, self.proxy.url, self.channel, self.prefix, f"B-{uuid.uuid4().hex[:6]}", **config)
        self.nodes.append(node_b)
        for node in (a, node_b):
            assert node.wait_subscribed(5.0), f"{node.name} did not subscribe"
        return a, node_b

    def subscriber_link(self) -> Any:
        """B's pub/sub connection through the proxy (the only one that sent SUBSCRIBE)."""
        links = wait_until(lambda: self.proxy.find(b"SUBSCRIBE"), 5, what="B's subscriber connection")
        assert len(links) == 1, f"{len(links)} subscriber connections through the proxy"
        return links[0]

    def recovery(self, a: Node, b: Node, since: float) -> float:
        """Seconds from ``since`` until B is subscribed and reads a fresh write of A's."""
        probe = self.ledger.create(a, 0)
        wait_until(lambda: b.state()["subscribed"], 10, what="B to resubscribe")
        assert (b.read(probe) or {}).get("v") == 0
        b.read(probe)  # cached now, if B caches
        value = 1
        while True:
            assert self.ledger.write(a, probe, value) is None
            if wait_for_value(b, probe, value, 0.5):
                return time.monotonic() - since
            value += 1  # a write before B resubscribed may have been missed: its cache was flushed since

    def close(self) -> None:
        for node in self.nodes:
            try:
                node.close()
            except Exception:  # noqa: BLE001 - a node broken by its fault must not hide the others
                pass
        self.proxy.close()
        self.raw.close()
        self.server.close()


def wait_for_value(node: Node, sid: str, value: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if (node.read(sid) or {}).get("v") == value:
                return True
        except Exception:  # noqa: BLE001 - still recovering
            pass
        time.sleep(0.005)
    return False


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    try:
        yield r
    finally:
        r.close()
