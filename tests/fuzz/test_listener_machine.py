"""The listener's state machine under any sequence of events: the cache is served only when safe.

``ListenerMachine`` (no I/O) turns what the listener's connection did into actions for
the driver.  For any sequence of the events a driver can report (``POSSIBLE``) at
non-decreasing times, with any payloads:

* no event raises;
* the driver, following only the actions (``Serve`` on, ``Bypass`` off), serves the
  cache exactly when the machine says it may (``serving``);
* every ``Serve`` comes right after a ``Flush`` in the same answer: nothing cached before
  a (re)subscription survives it;
* without ``stale_if_error``, leaving the served state on a failure also flushes;
* ``last_heard`` (where ``stale_if_error`` starts counting an outage) is never later
  than the last input that arrived while subscribed, and equals it while subscribed;
* a connection that goes silent is given up at most ``2 x subscribe_timeout`` after the
  last input when the driver calls ``idle`` when ``timeout(now)`` says: the staleness
  window of a silent subscriber, without the driver's scheduling delays.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fastsess import ClusterConfig
from fastsess._core.listener import (
    IDLE,
    LISTENING,
    STOPPED,
    SUBSCRIBING,
    WAITING,
    Bypass,
    Connect,
    Dispatch,
    Flush,
    ListenerMachine,
    Ping,
    Reconnect,
    Serve,
)

from .test_fuzz import FUZZ_EXAMPLES


class Fixed:
    """A backoff with a constant delay (the machine only passes it through)."""

    def compute(self, failures: int) -> float:
        return 0.05


# What the driver can report in each state (it starts once, reads only from a connection it
# has, retries only after a Reconnect, stops once).  A store reports an outside error
# (``report_error``) before it starts the listener.
CONNECTED = {"subscribed", "message", "reply", "unsubscribed", "idle", "idle_when_due", "error", "forked", "stop"}
POSSIBLE = {
    IDLE: {"start", "idle", "idle_when_due", "outside_error", "forked", "stop"},
    SUBSCRIBING: CONNECTED | {"outside_error"},
    LISTENING: CONNECTED,
    WAITING: {"retry", "idle", "idle_when_due", "outside_error", "forked", "stop"},
    STOPPED: set(),
}
EVENTS = ["start", "subscribed", "message", "reply", "unsubscribed", "idle", "idle_when_due", "error", "outside_error", "retry", "forked", "stop"]
events = st.lists(st.tuples(st.sampled_from(EVENTS), st.floats(0, 3), st.binary(max_size=40)), max_size=60)


def feed(machine: ListenerMachine, kind: str, now: float, data: bytes) -> tuple[Any, ...]:
    if kind == "message":
        return machine.message(data, now)
    if kind in ("error", "outside_error"):
        exc = ConnectionError("fuzzed")
        return machine.error(exc, now) if kind == "error" else machine.outside_error(exc)
    if kind in ("forked", "stop"):
        return getattr(machine, kind)()
    return getattr(machine, kind)(now)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(script=events, stale_if_error=st.booleans(), idle=st.sampled_from([0.25, 1.0]))
def test_the_cache_is_served_only_between_a_flushed_subscription_and_the_next_failure(
    script: list[tuple[str, float, bytes]], stale_if_error: bool, idle: float,
) -> None:
    machine = ListenerMachine(ClusterConfig(channel="fuzz", subscribe_timeout=idle, stale_if_error=stale_if_error), Fixed())
    serving, now = False, 0.0
    heard = 0.0  # when input last proved the subscribed connection alive
    for kind, dt, data in script:
        if kind not in POSSIBLE[machine.state]:
            continue
        now += dt
        if kind == "idle_when_due":
            now += machine.timeout(now)
            kind = "idle"
        was, state_before = serving, machine.state
        actions = feed(machine, kind, now, data)
        if (kind == "subscribed" and machine.state == LISTENING) or (kind in ("message", "reply") and state_before == LISTENING):
            heard = now
        elif kind == "forked":
            heard = 0.0
        assert machine.last_heard <= heard, (kind, machine.last_heard, heard)
        if machine.state == LISTENING:
            assert machine.last_heard == heard
        assert isinstance(actions, tuple)
        for i, action in enumerate(actions):
            if isinstance(action, Serve):
                assert i > 0 and isinstance(actions[i - 1], Flush), actions
                serving = True
            elif isinstance(action, Bypass):
                serving = False
            elif isinstance(action, Dispatch):
                assert action.data == data and kind == "message"
            elif isinstance(action, Reconnect):
                assert action.delay == 0.05
        assert serving == machine.serving, (kind, actions)
        if was and not serving and kind in ("error", "outside_error", "unsubscribed", "idle") and not stale_if_error:
            assert any(isinstance(a, Flush) for a in actions), actions
        assert machine.timeout(now) >= 0.0


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(idle=st.floats(0.05, 5.0), inputs=st.lists(st.floats(0, 10), max_size=10), late=st.floats(0, 1))
def test_a_silent_connection_is_given_up_within_twice_the_idle_timeout(idle: float, inputs: list[float], late: float) -> None:
    """Input arrives at some times, then stops; the driver calls ``idle`` when due (or
    ``late`` of a timeout after).  The machine asks for one PING, then gives up the
    connection no later than ``2 x idle`` (+ the lateness) after the last input."""
    machine = ListenerMachine(ClusterConfig(channel="fuzz", subscribe_timeout=idle), Fixed())
    assert machine.start(0.0) == (Connect(),)
    now = 0.0
    assert Serve() in machine.subscribed(now)
    last_input = now
    for gap in inputs:  # input keeps the connection alive however long the gaps between
        if gap < idle:
            now += gap
            machine.reply(now)
            last_input = now
    pings = 0
    for _ in range(10):
        # 1 us past the deadline: a clock always moves on, and a float sum may land a hair short of it
        now += machine.timeout(now) + late * idle + 1e-6
        actions = machine.idle(now)
        pings += Ping() in actions
        if not machine.serving:
            break
    assert not machine.serving, "the silent connection was never given up"
    assert now - last_input <= 2 * idle * (1 + late) + 3e-6, "the silent connection was served too long"
    assert pings == 1
