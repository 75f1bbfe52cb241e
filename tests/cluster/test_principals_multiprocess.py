"""Log out everywhere between OS processes: one node's ``delete_all`` empties the other
processes' caches of those sessions (``tests/cluster/node.py`` nodes, one private Redis)."""

from __future__ import annotations

import time

from .test_multiprocess import BOUND, Node, cache_on, nodes, server, watch  # noqa: F401 - fixtures


def test_delete_all_empties_the_other_processes_caches(nodes: tuple[Node, Node, Node]) -> None:  # noqa: F811
    A, B, C = nodes
    ids = [A.call("create", data={"v": i})["id"] for i in range(3)]
    for sid in ids:
        assert A.call("bind", sid=sid, principal="user-1") is True
    for reader in (B, C):
        for i, sid in enumerate(ids):
            cache_on(reader, sid, i)  # a cache hit on the second load
    watch(B, ids[1], 1, None)  # B and C poll a session until it is gone
    watch(C, ids[2], 2, None)
    t0 = time.monotonic()
    assert A.call("delete_all", principal="user-1", except_id=ids[0]) == 2
    for reader in (B, C):
        seen = reader.recv(10)
        assert seen["t_seen"] - t0 < BOUND and seen["received"] >= 1
    for reader in (B, C):
        assert [reader.call("load", sid=sid) is None for sid in ids] == [False, True, True]
        cache_on(reader, ids[0], 0)  # the kept session is still served from the cache
