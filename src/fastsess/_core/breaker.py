"""``CircuitBreaker``: stop sending commands to a Redis that keeps failing. No I/O.

A store asks its breaker before each command and tells it how the command went::

    closed ──(threshold connection failures in a row)──> open
    open ──(cooldown passed, or the listener resubscribed)──> half-open: ONE call probes
    half-open ──probe answered──> closed        half-open ──probe failed──> open again

While open (and while a probe is out), ``admit`` raises ``CircuitOpen`` at once: the
caller gets a ``StoreUnavailable`` in microseconds instead of waiting a socket timeout.
Only a *connection* failure counts (refused, reset, timed out): a reply from Redis,
even an error reply (WRONGTYPE, OOM), proves the server answers and resets the count;
an exhausted connection pool or a cancelled call counts neither way.  Any answer, the
probe's or a late one from a call sent before the breaker opened, closes it.

The breaker also remembers when the current run of failures began
(``outage_started``): the clock of ``stale_if_error``.

Thread-safe (one small lock, taken only while the breaker is not closed or failures
are being counted); the closed fast path reads two attributes.  ``admit`` never
blocks, so asyncio tasks share it with threads.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

from ..errors import CircuitOpen, ConfigError

log = logging.getLogger("fastsess.breaker")

DEFAULT_BREAKER_THRESHOLD = 5  # connection failures in a row that open the breaker
DEFAULT_BREAKER_COOLDOWN = 1.0  # seconds between probes while open

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


class BreakerStats(NamedTuple):
    """A snapshot of a ``CircuitBreaker``."""

    state: str  # "closed", "open" or "half-open" (a probe is out)
    failures: int  # connection failures in a row, now
    opened: int  # times the breaker opened (a failed probe re-opening it is not counted)
    rejected: int  # calls failed fast (``CircuitOpen``) without a Redis call
    probes: int  # half-open probes let through
    outage_for: float | None  # seconds since the first failure of the current run (None: no failure)
    last_error: str | None  # "Type: message" of the last connection failure


def check_breaker(threshold: Any, cooldown: Any) -> tuple[int, float]:
    """Validate the breaker settings: ``threshold`` an int >= 0 (0: never open),
    ``cooldown`` a positive, finite number of seconds.

    Raises:
        ConfigError: either is out of range or of the wrong type.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
        raise ConfigError(
            f"breaker_threshold must be an int >= 0 (connection failures in a row; 0 turns the breaker off), not {threshold!r}"
        )
    try:
        ok = not isinstance(cooldown, bool) and isinstance(cooldown, (int, float)) and math.isfinite(cooldown) and cooldown > 0
    except OverflowError:
        ok = False
    if not ok:
        raise ConfigError(f"breaker_cooldown must be a positive, finite number of seconds, not {cooldown!r}")
    return threshold, float(cooldown)


class CircuitBreaker:
    """Fail fast while Redis keeps failing; probe it once at a time (see the module doc).

    Args:
        threshold: connection failures in a row that open the breaker (0: it never
            opens, but still tracks ``outage_started``).
        cooldown: seconds the breaker stays open before a call may probe, and again
            after each failed probe.
        clock: monotonic seconds (``time.monotonic``); tests pass a fake one.
        resubscribed_at: optional, the ``clock`` time of the listener's latest
            subscription: a subscription after the breaker opened ends the cool-down
            early (Redis answered the listener, so the next call probes).

    Raises:
        ConfigError: an invalid threshold or cooldown.
    """

    __slots__ = (
        "_clock", "_last_cause", "_lock", "_opened", "_opened_at", "_probes", "_rejected",
        "_retry_at", "_state", "__weakref__", "closed", "cooldown", "failures", "outage_started", "resubscribed_at",
        "threshold",
    )

    def __init__(
        self, threshold: int = DEFAULT_BREAKER_THRESHOLD, cooldown: float = DEFAULT_BREAKER_COOLDOWN,
        clock: Callable[[], float] = time.monotonic, resubscribed_at: Callable[[], float] | None = None,
    ) -> None:
        self.threshold, self.cooldown = check_breaker(threshold, cooldown)
        self._clock = clock
        self.resubscribed_at = resubscribed_at
        self._lock = threading.Lock()
        self._state = CLOSED
        self.closed = True  # the drivers' fast path: state == CLOSED
        self.failures = 0  # connection failures in a row
        self.outage_started: float | None = None  # clock time of the first of them
        self._opened_at = 0.0  # when it (re)opened: a later subscription ends the cool-down
        self._retry_at = 0.0  # when a call may probe
        self._last_cause: BaseException | None = None
        self._opened = self._rejected = self._probes = 0
        _live.add(self)

    def after_fork_in_child(self) -> None:
        """In a child made by ``os.fork()``: a new lock (a parent thread may have held the
        old one at the fork), and a probe that was in flight in a parent thread, which
        does not exist here, is given up (the child's next call probes)."""
        self._lock = threading.Lock()
        if self._state == HALF_OPEN:
            self._state = OPEN

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"``."""
        return self._state

    @property
    def stats(self) -> BreakerStats:
        """A snapshot of the state and counters (see ``BreakerStats``)."""
        with self._lock:
            started, cause = self.outage_started, self._last_cause
            return BreakerStats(
                self._state, self.failures, self._opened, self._rejected, self._probes,
                None if started is None else self._clock() - started,
                None if cause is None else f"{type(cause).__name__}: {cause}",
            )

    def admit(self) -> bool:
        """Before a command: True if this call is the half-open probe (it must then report
        with ``succeeded``, ``failed`` or ``released``), False if it may simply go.

        Raises:
            CircuitOpen: the breaker is open, or another call is probing.
        """
        if self.closed:
            return False
        with self._lock:
            state = self._state
            if state == CLOSED:
                return False
            if state == OPEN:
                now = self._clock()
                hint = self.resubscribed_at
                if now >= self._retry_at or (hint is not None and hint() > self._opened_at):
                    self._state = HALF_OPEN
                    self._probes += 1
                    return True
                wait = f"next probe in {self._retry_at - now:.3f} s"
            else:
                wait = "a probe is in flight"
            self._rejected += 1
            error = self._open_error(wait)
        raise error

    def check(self) -> None:
        """For calls that never probe (``iter_ids``, ``clear``): they go only while closed.

        Raises:
            CircuitOpen: the breaker is open or half-open.
        """
        if self.closed:
            return
        with self._lock:
            if self._state == CLOSED:
                return
            self._rejected += 1
            error = self._open_error("only single calls probe it")
        raise error

    def _open_error(self, wait: str) -> CircuitOpen:
        cause = self._last_cause
        error = CircuitOpen(
            f"redis circuit breaker open after {self.failures} connection failures in a row ({wait}); "
            f"last: {type(cause).__name__}: {cause}",
            cause,
        )
        error.__cause__ = cause
        return error

    def succeeded(self, probe: bool = False) -> None:
        """Redis answered a command (any reply, error replies included): closes the breaker."""
        if not self.failures and self.closed:
            return
        with self._lock:
            was = self._state
            outage = 0.0 if self.outage_started is None else self._clock() - self.outage_started
            self._state, self.closed = CLOSED, True
            self.failures = 0
            self.outage_started = None
            rejected = self._rejected
        if was != CLOSED:
            log.info("redis circuit breaker closed: Redis answered again after %.3f s of failures (%d calls failed fast so far)",
                     outage, rejected)

    def failed(self, cause: BaseException, probe: bool = False) -> None:
        """A command failed to reach Redis or to get an answer in time (``cause``)."""
        opened = False
        with self._lock:
            now = self._clock()
            if not self.failures:
                self.outage_started = now
            self.failures += 1
            self._last_cause = cause
            state = self._state
            if state == HALF_OPEN and probe:
                self._state, self._opened_at, self._retry_at = OPEN, now, now + self.cooldown
            elif state == CLOSED and self.threshold and self.failures >= self.threshold:
                self._state, self.closed = OPEN, False
                self._opened_at, self._retry_at = now, now + self.cooldown
                self._opened += 1
                opened = True
            failures = self.failures
        if opened:
            log.warning(
                "redis circuit breaker open after %d connection failures in a row (last: %s: %s); "
                "calls fail fast with CircuitOpen, one probe every %g s", failures, type(cause).__name__, cause, self.cooldown,
            )
        elif probe:
            log.debug("redis circuit breaker probe failed: %s: %s; next probe in %g s", type(cause).__name__, cause, self.cooldown)

    def released(self, probe: bool) -> None:
        """The call ended without an answer or a connection failure (cancelled, pool
        exhausted): if it was the probe, the next call probes instead."""
        if not probe:
            return
        with self._lock:
            if self._state == HALF_OPEN:
                self._state = OPEN  # _retry_at has passed: the next admit probes


# Every breaker of this process (weakly), for the fork hook.
_live: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for breaker in list(_live):
        breaker.after_fork_in_child()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)
