"""Single-flight reads: concurrent misses of one id in one process share one Redis read. No I/O.

The first miss of an id registers a ``Flight`` and reads Redis (the leader); a miss of
the same id while that read is in flight waits for it (a follower) and gets a copy of its
result, instead of sending a read of its own.  A follower joins only a flight whose fill
token (``CoherentCache.fill_token``) equals its own: a flight that started before an
invalidation of the id (or a flush) may carry the value that invalidation replaced, and a
read that starts after the invalidation must not get it, so it starts a new flight.

How a follower waits is the driver's business: it makes the flight's ``signal`` (a
``threading.Event``, an ``asyncio.Future``) when it joins, and the leader fires the
signal ``land`` hands back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

Token = tuple[int, int]

# ``Flight.outcome`` when the leader did not finish its read (it was cancelled or
# interrupted): the follower reads on its own.
RETRY: Any = object()


class Flight:
    """One Redis read of one id in progress, and what it returned."""

    __slots__ = ("done", "error", "followers", "result", "signal", "token")

    def __init__(self, token: Token) -> None:
        self.token = token
        self.followers = 0  # loads waiting for this read
        self.signal: Any = None  # made by the first follower
        self.done = False
        self.result: Any = None  # a private copy of the session (or None) for followers
        self.error: BaseException | None = None

    def outcome(self) -> Any:
        """For a follower, once the signal fired: a copy of the session read (or None), or
        ``RETRY`` if the leader did not finish.

        Raises:
            Exception: the error the leader's read failed with (``StoreUnavailable``, ...).
        """
        error = self.error
        if error is not None:
            if isinstance(error, Exception):
                raise error
            return RETRY
        if not self.done:
            return RETRY
        result = self.result
        return None if result is None else result.copy()


class Flights:
    """The reads in flight of one store, by id (see the module doc)."""

    __slots__ = ("_by_id", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, Flight] = {}

    def take(self, session_id: str, token: Token, make_signal: Callable[[], Any]) -> tuple[Flight, bool]:
        """The flight to follow, with its signal (made by ``make_signal`` if it has none
        yet) and False; or a new flight this caller leads, and True."""
        with self._lock:
            flight = self._by_id.get(session_id)
            if flight is not None and flight.token == token:
                if flight.signal is None:
                    flight.signal = make_signal()
                flight.followers += 1
                return flight, False
            flight = self._by_id[session_id] = Flight(token)
            return flight, True

    def land(self, session_id: str, flight: Flight, result: Any = None, error: BaseException | None = None) -> Any:
        """The leader's read ended with ``result`` (a session or None) or ``error``; returns
        the signal to fire (None: nobody followed)."""
        with self._lock:
            if self._by_id.get(session_id) is flight:
                del self._by_id[session_id]
            signal = flight.signal
            if signal is not None:  # the leader's caller may change its session: keep a pristine copy
                flight.result = None if result is None else result.copy()
            flight.error = error
            flight.done = True
            return signal

    def get(self, session_id: str) -> Flight | None:
        """The read of ``session_id`` in flight, if any (for stats and tests)."""
        return self._by_id.get(session_id)

    def __len__(self) -> int:
        return len(self._by_id)
