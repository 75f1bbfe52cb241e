"""README, "Outage policy": with ``stale_if_error`` a failed ``delete`` or ``regenerate``
drops this node's copy, so a logout attempted during the outage stops the stale copy
from being served; the copies nobody tried to change are still served."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fastsess.errors import StoreUnavailable

from ..support import RedisServer, kill
from .conftest import ClusteredBackend, wait_until


def test_a_failed_delete_or_regenerate_drops_the_stale_copy(
    clustered: ClusteredBackend, redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    A = clustered.make(url=server.url, name="A")
    B = clustered.make(url=server.url, name="B", cluster={"stale_if_error": 60})
    sessions = []
    for n in range(3):
        s = A.create({"n": n})
        assert A.save(s) is True
        sessions.append(s)
    kept, logged_out, moved = (B.load(s.id) for s in sessions)  # all three cached on B
    assert kept is not None and logged_out is not None and moved is not None
    kill(server)
    wait_until(lambda: not B.coordinator.subscribed, 5, what="the drop")
    assert B.load(kept.id)["n"] == 0  # served stale, by explicit opt-in
    with pytest.raises(StoreUnavailable):
        B.delete(logged_out.id)
    with pytest.raises(StoreUnavailable):
        B.regenerate(moved)
    for gone in (logged_out.id, moved.id):
        with pytest.raises(StoreUnavailable):
            B.load(gone)  # the copy was dropped: nothing left to serve
    assert B.load(kept.id)["n"] == 0
