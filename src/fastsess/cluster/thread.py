"""The listener thread: the driver of both coordinators (sync and asyncio).

The thread reads a pub/sub connection of its own, made by ``listener_client`` from the
store's client settings (RESP2, no redis-py retries: every drop reaches it, so every
reconnect flushes the cache and is counted).  It feeds the thread-safe
``CoherentCache``, so invalidations apply even while an event loop never yields.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from typing import Any

from .._core.coherence import CoherentCache
from .._core.listener import CoordinatorBase, Liveness
from ..config import ClusterConfig
from .redis_adapter import close_quietly, is_asyncio_client, listener_client, raw_reader
from .registry import register

POLL_INTERVAL = 0.25  # longest blocking wait of the listener, so stop() is prompt
# A cache hit checks every HITS_PER_CHECK hits whether the listener thread needs the GIL
# (see ThreadedCoordinator.yield_to_listener) and, if so, sleeps LISTENER_YIELD seconds.
HITS_PER_CHECK = 256
LISTENER_YIELD = 0.0002


class ThreadedCoordinator(CoordinatorBase):
    """The listener thread of both coordinators (sync and asyncio): everything but the
    public start/stop/publish, which differ only in being coroutines or not.

    The thread reads a pub/sub connection of its own, made by ``listener_client`` from
    the store's client settings (RESP2, no redis-py retries: every drop reaches us, so
    every reconnect flushes the cache and is counted).  It feeds the thread-safe
    ``CoherentCache``, so invalidations apply even while an event loop is busy.
    """

    def __init__(self, client: Any, config: ClusterConfig, cache: CoherentCache | None = None) -> None:
        super().__init__(config, cache)
        self.client = client
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._pubsub: Any = None  # the listener's current PubSub, for stop() to wake it
        # The listener's socket while it waits for input (-1: none), and whether it is
        # waiting there (False from the moment it has input until it waits again).
        self._fd = -1
        self._waiting = True
        register(self)

    @property
    def running(self) -> bool:
        """True while the listener thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _launch(self) -> None:
        """Start the listener thread (no wait); nothing if it already runs."""
        if self.running:
            return
        self._stop = threading.Event()
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, args=(self._stop,), name=f"fastsess-listener-{self.node_id[:12]}", daemon=True)
        self._thread.start()

    def request_stop(self) -> threading.Thread | None:
        """Tell the listener to end and wake it from its blocking read; returns its thread."""
        self._stop.set()
        thread, self._thread = self._thread, None
        self._subscribed = False
        self._wake()
        return thread

    def _wake(self) -> None:
        # Shut the listener's socket down (not close: the fd stays valid for the thread
        # still reading it): its blocking read returns at once instead of after its poll.
        # Only in the process that opened it: a forked child must not touch the parent's.
        pubsub = self._pubsub
        connection = getattr(pubsub, "connection", None)
        sock = getattr(connection, "_sock", None)
        if sock is None or os.getpid() != self._pid:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already closed
            pass

    def after_fork_in_child(self) -> None:
        """In a forked child: forget the parent's thread, connection, cache and identity;
        start a listener of our own if the parent had one running."""
        was_running = self._thread is not None and not self._stop.is_set()
        self._thread = None
        self._pubsub = None  # the parent's socket: never read, shut or closed here
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._count_lock = threading.Lock()
        self._reset_state()
        cache = self.cache
        if cache is not None:
            cache.after_fork()
        reset_pool = getattr(getattr(self.client, "connection_pool", None), "reset", None)
        if is_asyncio_client(self.client) and callable(reset_pool):
            reset_pool()  # the parent's asyncio connections belong to the parent's event loop
        if was_running:
            self._launch()

    # -- listener thread -------------------------------------------------------------

    def _run(self, stop: threading.Event) -> None:
        delay = self.config.reconnect_backoff[0]
        while not stop.is_set():
            pubsub = made = None
            try:
                listener, made = listener_client(self.client)
                pubsub = self._pubsub = listener.pubsub()
                if stop.is_set():
                    break
                self._subscribe(pubsub, stop)
                delay = self.config.reconnect_backoff[0]
                self._listen(pubsub, stop)
            except Exception as exc:  # noqa: BLE001 - the listener must survive anything
                if stop.is_set():
                    break  # woken by stop(): not a connection problem
                self._ready.clear()
                self._on_dropped(exc)
                stop.wait(delay)
                delay = self._backoff(delay)
            finally:
                if self._pubsub is pubsub:
                    self._pubsub = None
                if pubsub is not None:
                    close_quietly(pubsub)
                if made is not None:
                    close_quietly(made)
        if self._thread is None or self._thread is threading.current_thread():
            self._subscribed = False
            self._ready.clear()

    def _subscribe(self, pubsub: Any, stop: threading.Event) -> None:
        pubsub.subscribe(self.channel)
        deadline = time.monotonic() + self.config.subscribe_timeout
        while True:
            event = pubsub.get_message(timeout=self._until(deadline))
            if event is not None and self._dispatch(event["type"], event["data"], subscribing=True):
                break
        if stop.is_set():
            return
        self._on_subscribed()
        self._ready.set()

    def _listen(self, pubsub: Any, stop: threading.Event) -> None:
        liveness = Liveness(self.config.subscribe_timeout)
        poll = min(POLL_INTERVAL, self.config.subscribe_timeout)
        read = raw_reader(pubsub)
        sock = getattr(getattr(pubsub, "connection", None), "_sock", None)
        fd = sock.fileno() if sock is not None else -1
        def next_event(timeout: float) -> tuple[str, Any] | None:
            if read is not None:
                reply = read(timeout)
                return None if reply is None else (reply[0].decode("ascii", "replace"), reply[-1])
            message = pubsub.get_message(timeout=timeout)
            return None if message is None else (message["type"], message["data"])

        try:
            while not stop.is_set():
                if fd >= 0:
                    # Take what is already there without blocking; wait for more with select,
                    # which leaves it unread in the socket: yield_to_listener sees it there.
                    event = next_event(0)
                    if event is None:
                        self._fd, self._waiting = fd, True
                        ready = select.select([fd], [], [], poll)[0]
                        self._waiting = False
                        if ready:
                            continue
                else:
                    event = next_event(poll)
                if event is None:
                    if liveness.due():
                        pubsub.ping()
                    continue
                liveness.seen()
                self._dispatch(*event, subscribing=False)
        finally:
            self._fd, self._waiting = -1, True

    def yield_to_listener(self) -> None:
        """Let the listener thread run if it has input to apply; cache hits call this
        every ``HITS_PER_CHECK`` hits.

        A thread that does nothing but cache hits and short system calls (an event loop
        polling with a zero timeout, a request loop checking a pipe) can keep the GIL
        from the listener for as long as it runs: CPython forces a hand-over after the
        switch interval only if the holder did not release the GIL meanwhile, and every
        short system call counts as a release.  Invalidations would then wait for
        the busy thread.  So: if the listener has left its wait (it has input and needs
        the GIL) or input is waiting on its socket, sleep ``LISTENER_YIELD`` seconds.
        """
        if self._waiting:
            fd = self._fd
            if fd < 0:
                return
            try:
                if not select.select([fd], [], [], 0)[0]:
                    return
            except (OSError, ValueError):  # closed under us: the listener reconnects
                return
        elif self._thread is None:
            return
        time.sleep(LISTENER_YIELD)


class ClusterCoordinator(ThreadedCoordinator):
    """Publishes and listens for invalidations in one background thread.

    Args:
        client: a ``redis.Redis`` / ``RedisCluster`` / Sentinel-managed client;
            the listener takes its own connection with the same settings
            (see ``listener_client``).
        config: the cluster settings.
        cache: the cache to keep coherent (None: count and publish only).

    ``start()`` launches the daemon thread ``fastsess-listener-<node>`` and waits up
    to ``subscribe_timeout`` for the first subscription; ``stop()`` ends it.
    """

    def start(self) -> bool:
        """Start listening; True if subscribed within ``subscribe_timeout``.

        Not subscribing in time is not an error: the store bypasses the cache
        until the listener gets through.
        """
        if self.running:
            return self._subscribed
        self._launch()
        return self._ready.wait(self.config.subscribe_timeout)

    def wait_subscribed(self, timeout: float) -> bool:
        """Block until subscribed (True) or ``timeout`` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        while not self._subscribed:
            if self._stop.is_set() or time.monotonic() >= deadline:
                return False
            self._ready.wait(min(0.01, max(0.0, deadline - time.monotonic())))
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the listener and wait for its thread (at most ``timeout`` seconds).

        The listener is woken at once (its socket is shut down), so this returns in
        about a millisecond unless the thread is inside a connect attempt.
        """
        thread = self.request_stop()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def publish(self, kind: str, session_id: str | None = None, version: int = 0) -> None:
        """Publish one message on its own (the stores batch theirs with the write).

        Raises:
            redis.RedisError: the PUBLISH failed (the stores map it to ``StoreUnavailable``).
        """
        self.client.publish(self.channel, self.message(kind, session_id, version))
        self.note_published()

