"""``stats.received`` counts a message only once it has been applied to the local cache.

Tests (and the demo) wait for ``received`` to move and then expect the cached copy
to be gone; counting first left a window where the count had moved but the old
copy was still served.  No Redis needed: messages go straight to ``handle_message``.
"""

from __future__ import annotations

from typing import Any

import pytest

from fastsess import ClusterConfig
from fastsess.cluster import CLEARED, DELETED, INVALIDATED, TOUCHED, CoherentCache, CoordinatorBase, encode_message
from fastsess.stores.base import new_session_id


class RecordingCache(CoherentCache):
    """A real ``CoherentCache`` that notes the coordinator's ``received`` count whenever it is changed."""

    coordinator: CoordinatorBase

    def __init__(self) -> None:
        super().__init__(100, 60.0)
        self.counts_seen: list[int] = []

    def invalidate(self, session_id: str) -> None:
        self.counts_seen.append(self.coordinator.stats.received)
        super().invalidate(session_id)

    def flush(self) -> None:
        self.counts_seen.append(self.coordinator.stats.received)
        super().flush()


@pytest.mark.parametrize("kind", [INVALIDATED, DELETED, TOUCHED, CLEARED])
def test_received_is_counted_after_the_message_is_applied(kind: str) -> None:
    cache = RecordingCache()
    coordinator = CoordinatorBase(ClusterConfig(node_id="me"), cache)
    cache.coordinator = coordinator
    sid = new_session_id()
    cache.put_if(sid, {"v": 1}, cache.fill_token(sid), 60.0)
    extra: dict[str, Any] = {"expires_in": 10_000} if kind == TOUCHED else {}
    coordinator.handle_message(encode_message(kind, None if kind == CLEARED else sid, "other", 2, **extra))
    assert cache.counts_seen == [0]  # applied while the count still said 0
    assert coordinator.stats.received == 1
    assert cache.get(sid) is None
