"""Absent ids (the negative cache) across OS processes: an id one process remembers as
absent shows up there as soon as another process creates it (``tests/cluster/node.py``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from fastsess.stores.base import new_session_id

from .test_multiprocess import BOUND, Node, watch


@pytest.fixture
def two_nodes(redis_server_factory: Any) -> Iterator[tuple[Node, Node]]:
    server = redis_server_factory()
    channel, prefix = f"mp:{uuid.uuid4().hex[:8]}", f"mp{uuid.uuid4().hex[:6]}:"
    started = [Node(name) for name in "AB"]
    try:
        for node in started:
            # a long negative TTL: if the create did not clear B's entry, B would answer
            # "absent" until the watch times out, not just for a moment
            node.send("init", url=server.url, node_id=f"proc-{node.name}-{uuid.uuid4().hex[:6]}", channel=channel,
                      prefix=prefix, negative_cache_ttl=60.0)
        for node in started:
            assert node.recv(20) is True, f"node {node.name} did not subscribe"
        yield started[0], started[1]
    finally:
        for node in started:
            node.close()


def test_an_id_remembered_as_absent_appears_once_created_elsewhere(two_nodes: tuple[Node, Node]) -> None:
    A, B = two_nodes
    for _ in range(3):
        sid = new_session_id()
        assert B.call("load", sid=sid) is None and B.call("load", sid=sid) is None  # remembered as absent
        # B polls (answered by its negative cache); once B has received A's message, a load
        # that returns "absent" fails the watch
        watch(B, sid, None, 1)
        created = A.call("create_as", sid=sid, data={"v": 1})
        seen = B.recv(10)
        assert seen["received"] >= 1  # it was the create's message that cleared it
        assert seen["t_seen"] - created["t_start"] < BOUND
        assert A.call("load", sid=sid)["data"] == {"v": 1}
    for node in (A, B):
        assert node.call("stats")["coordinator"]["malformed"] == 0
