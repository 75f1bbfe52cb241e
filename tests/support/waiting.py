"""Waiting without fixed sleeps: deadlines for positive waits, barrier messages for negative ones."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from fastsess.stores.base import new_session_id


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.005, what: str = "") -> Any:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def barrier(publisher: Any, *listeners: Any, timeout: float = 5.0) -> None:
    """Return once every store in ``listeners`` applied a marker message sent after this call.

    The marker is a ``delete`` of a fresh id through ``publisher`` (a clustered store of
    another node, or a sync facade of one), so it travels the same channel as any
    invalidation.  A listener handles messages in order: once it applied the marker, it
    has handled everything published before it, so "nothing arrived" can be asserted
    without sleeping.  Each listener's ``stats.received`` grows by one for the marker.
    """
    marker = new_session_id()
    events = []
    hooks = []
    for store in listeners:
        coordinator = store.coordinator
        seen = threading.Event()
        previous = coordinator.on_message

        def hook(msg: dict[str, Any], seen: threading.Event = seen, previous: Any = previous) -> None:
            if msg.get("id") == marker:
                seen.set()
            elif previous is not None:
                previous(msg)

        coordinator.on_message = hook
        events.append(seen)
        hooks.append((coordinator, previous))
    try:
        publisher.delete(marker)
        for store, seen in zip(listeners, events):
            if not seen.wait(timeout):
                pytest.fail(f"the barrier message did not reach {store!r} within {timeout} s")
    finally:
        for coordinator, previous in hooks:
            coordinator.on_message = previous
