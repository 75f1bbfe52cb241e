"""The listener thread: the driver of both coordinators (sync and asyncio).

The thread reads a pub/sub connection of its own, made by ``listener_client`` from the
store's client settings (RESP2, no redis-py retries: every drop reaches it, and every
reconnect replays the missed invalidations, or flushes the cache, and is counted).  It
feeds the thread-safe ``CoherentCache``, so invalidations apply even while an event loop
never yields.  Replays run on a second connection of the same client, in this thread.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.backoff import EqualJitterBackoff
from redis.exceptions import NoScriptError

from .._core.coherence import CoherentCache
from .._core.listener import (
    Action,
    Bypass,
    Connect,
    CoordinatorBase,
    Dispatch,
    Evict,
    Ping,
    Reconnect,
    Replay,
    Serve,
    Tracked,
    replay_command,
)
from .._core.ops import GET_PTTL
from .._core.tracking import TrackedChanges
from ..config import ClusterConfig
from .redis_adapter import Link, NodeLink, is_asyncio_client, is_cluster_client, link_event
from .registry import register
from .resp import MORE, SocketReader

log = logging.getLogger("fastsess.cluster")

POLL_INTERVAL = 0.25  # longest blocking wait of the listener, so stop() is prompt
MAX_REFILL = 2000  # cached ids a replay evicted that the listener re-reads at most (one pipeline)
# A cache hit checks every HITS_PER_CHECK hits whether the listener thread has input to
# apply (see ThreadedCoordinator.yield_to_listener) and, if so, sleeps LISTENER_YIELD seconds...
HITS_PER_CHECK = 256
LISTENER_YIELD = 0.0002
# ... and, while the listener still has input to apply, sleeps again, at most this long.
LISTENER_CATCH_UP = 0.1
# ... after first yielding the CPU this many times (os.sched_yield, no sleep).
LISTENER_YIELDS = 16
_give_way = getattr(os, "sched_yield", None) or (lambda: time.sleep(0))  # (no sched_yield on Windows)


class ThreadedCoordinator(CoordinatorBase):
    """The listener thread of both coordinators (sync and asyncio): everything but the
    public start/stop/publish, which differ only in being coroutines or not.

    The thread drives the coordinator's ``ListenerMachine``: it reports what happens on
    its connection as events and carries out the actions it gets back.
    """

    def __init__(self, client: Any, config: ClusterConfig, cache: CoherentCache | None = None, prefix: str | None = None) -> None:
        first, cap = config.reconnect_backoff
        # With jitter: nodes that lose Redis together do not all retry (and flush) together.
        # Sequenced (see fastsess._core.sequence): on Redis Cluster per shard channel, so
        # only with sharded pub/sub (a master older than Redis 7: not numbered after all).
        cluster = is_cluster_client(client)
        super().__init__(config, cache, EqualJitterBackoff(cap=cap, base=first), prefix, sequenced=not cluster or config.sharded_pubsub)
        self.is_cluster = cluster
        self.prefix = prefix
        self.client = client
        self._pid = os.getpid()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._link: Link | NodeLink | None = None  # the listener's current connection(s), for stop() to wake it
        # The listener's sockets while it waits for input (empty: none), and whether it is
        # waiting there (False from the moment it has input until it waits again).
        self._fds: list[int] = []
        self._waiting = True
        # Called by the listener thread when input arrives on its socket (set by the store:
        # its next cache hit then calls yield_to_listener at once).
        self.on_input: Callable[[], Any] | None = None
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
        self.subscribed = False
        link = self._link
        if link is not None and os.getpid() == self._pid:  # never the parent's socket, in a forked child
            link.shutdown()
        return thread

    def drop_connection(self) -> bool:
        """Break the listener's connection as a network failure would (for the demo and
        tests): the listener notices, reconnects and replays what it missed meanwhile.
        True if there was a connection to break."""
        link = self._link
        if link is None or os.getpid() != self._pid:
            return False
        link.shutdown()
        return True

    def after_fork_in_child(self) -> None:
        """In a forked child: forget the parent's thread, connection, cache and identity;
        start a listener of our own if the parent had one running."""
        was_running = self._thread is not None and not self._stop.is_set()
        self._thread = None
        self._link = None  # the parent's socket: never read, shut or closed here
        self._pid = os.getpid()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._count_lock = threading.Lock()
        self._reset_counters()
        if self.tracking is not None:  # its lock may have been held by a parent thread
            self.tracking = TrackedChanges(self.prefix or "")
        if self.cache is not None:
            self.cache.after_fork()
        self.apply(self.machine.forked())
        reset_pool = getattr(getattr(self.client, "connection_pool", None), "reset", None)
        if is_asyncio_client(self.client) and callable(reset_pool):
            reset_pool()  # the parent's asyncio connections belong to the parent's event loop
        if was_running:
            self._launch()

    # -- listener thread -------------------------------------------------------------

    def _run(self, stop: threading.Event) -> None:
        machine = self.machine
        actions: Sequence[Action] = machine.start(time.monotonic())
        link: Link | NodeLink | None = None
        try:
            while not stop.is_set():
                try:
                    link, actions = self._carry_out(actions, link, stop)
                    if actions or stop.is_set():
                        continue
                    # Nothing to do but read; without a connection (the machine was told
                    # something by an older thread meanwhile) start over instead of spinning.
                    actions = self._next_event(link, stop) if link is not None else machine.start(time.monotonic())
                except Exception as exc:  # noqa: BLE001 - the listener must survive anything
                    if stop.is_set():
                        break  # woken by stop(): not a connection problem
                    actions = machine.error(exc, time.monotonic())
        finally:
            self._fds, self._waiting = [], True
            if self._link is link:
                self._link = None
            if link is not None:
                link.close()
            if self._thread is None or self._thread is threading.current_thread():  # not replaced by a new start()
                self.apply(machine.stop())
                self._ready.clear()

    def _new_link(self) -> Link | NodeLink:
        """The listener's connection(s): a ``NodeLink`` (raw, one connection per master) for
        tracking and for a Redis Cluster with sharded pub/sub, else a ``Link``."""
        config = self.config
        tracking = self.tracking is not None
        if tracking or (config.sharded_pubsub and hasattr(self.client, "nodes_manager")):
            if self.tracking is not None:
                self.tracking.reset()
            return NodeLink(
                self.client, self.channel, prefix=self.prefix or "", tracking=tracking,
                sharded=config.sharded_pubsub, idle_timeout=config.subscribe_timeout,
            )
        return Link(self.client)

    def _carry_out(self, actions: Sequence[Action], link: Link | NodeLink | None, stop: threading.Event) -> tuple[Link | NodeLink | None, Sequence[Action]]:
        """Do ``actions`` in order; returns the connection and the actions of the events
        they caused (empty: go and read).

        Raises:
            Exception: the connection failed (the caller reports it to the machine).
        """
        for action in actions:
            kind = type(action)
            if kind is Dispatch:
                self.apply_message(action.data)  # type: ignore[union-attr]
            elif kind is Tracked:
                self.apply_tracked(action.data)  # type: ignore[union-attr]
            elif kind is Replay:
                if link is None:  # nothing to replay on: start over
                    return None, self.machine.error(ConnectionError("no connection to replay on"), time.monotonic())
                sent = time.monotonic()
                reply = self._replay(link, action.since, action.shard)  # type: ignore[union-attr]
                return link, self.machine.replayed(reply, sent, time.monotonic())
            elif kind is Connect:
                link = self._link = self._new_link()
                if stop.is_set():
                    break
                try:
                    link.subscribe(self.channel)
                except BaseException:
                    self._link = None
                    link.close()
                    raise
            elif kind is Serve:
                self.subscribed = True
                self._ready.set()
            elif kind is Bypass:
                self.subscribed = False
                self._ready.clear()
            elif kind is Reconnect:
                if link is not None:
                    self._link = None
                    link.close()
                    link = None
                if stop.wait(action.delay):  # type: ignore[union-attr]
                    break
                return None, self.machine.retry(time.monotonic())
            elif kind is Ping:
                if link is not None:
                    link.ping(str(action.token))  # type: ignore[union-attr]
            elif kind is Evict:
                self._evict(action.ids, link, action.shard)  # type: ignore[union-attr]
            else:  # Flush, Close
                self.apply((action,))
        return link, ()

    def _evict(self, ids: tuple[str, ...], link: Link | NodeLink | None, shard: str | None = None) -> None:
        """Evict what a replay found missed; then re-read those that were cached (one
        pipeline on the listener's second connection; on Redis Cluster on its second
        connection to the master of ``shard``, which holds their keys) and cache them
        again, so the cache is warm when it is served.  A failed re-read (a slot moved
        meanwhile included) leaves them evicted (misses)."""
        cache, refill = self.cache, self.on_refill
        if cache is None:
            return
        warm = [i for i in dict.fromkeys(ids) if cache.cached(i)][:MAX_REFILL] if refill is not None else []
        for session_id in ids:
            cache.invalidate(session_id)
        sharded = shard is not None and isinstance(link, NodeLink)
        client = None if link is None else link.commands
        if not warm or (client is None and not sharded) or refill is None:
            return
        tokens = [cache.fill_token(i) for i in warm]  # before the read: a later invalidation voids the fill
        prefix = self.prefix or ""
        try:
            if sharded:
                commands = [("EVAL", GET_PTTL.text, 1, prefix + session_id) for session_id in warm]
                started = time.monotonic()
                replies = link.pipeline(shard, commands)  # type: ignore[union-attr,arg-type]
            else:
                assert client is not None
                pipe = client.pipeline(transaction=False)
                for session_id in warm:
                    pipe.execute_command("EVAL", GET_PTTL.text, 1, prefix + session_id)
                started = time.monotonic()
                replies = pipe.execute()
        except Exception:  # noqa: BLE001 - the ids stay evicted: the next loads read Redis
            log.debug("re-reading %d replayed ids failed", len(warm), exc_info=True)
            return
        for session_id, token, (raw, pttl) in zip(warm, tokens, replies):
            if raw is not None and refill(session_id, raw, token, started, pttl):
                self.refilled += 1

    def _replay(self, link: Link | NodeLink, since: int | None, shard: str | None = None) -> Any:
        """Run the replay command on the listener's client (not on the subscribed connection);
        for a ``shard`` channel, on the master serving it (``NodeLink.replay``).

        Raises:
            Exception: the command failed.
        """
        command = replay_command(self.channel if shard is None else shard, since, self.log_size)
        if shard is not None and isinstance(link, NodeLink):
            return link.replay(shard, command[2], command[1].text)  # type: ignore[union-attr]
        client = link.commands
        try:
            return client.execute_command(*command[2])
        except NoScriptError:
            script = command[1]
            assert script is not None
            return client.execute_command("EVAL", script.text, *command[2][2:])

    def _next_event(self, link: Link | NodeLink, stop: threading.Event) -> Sequence[Action]:
        """Wait for the next reply on ``link`` (at most until the machine's next timeout)
        and report it.

        Raises:
            Exception: the connection failed.
        """
        machine = self.machine
        if self._pending_shards is not None:
            self.shards_due(time.monotonic())
        if isinstance(link, Link) and link.socket_reader is not None:
            return self._next_read(link, link.socket_reader, stop)
        wait = min(POLL_INTERVAL, machine.timeout(time.monotonic()))
        fds = link.fds
        if fds:
            # Take what is already there without blocking; wait for more with select,
            # which leaves it unread in the socket: yield_to_listener sees it there.
            event = link.next_event(0)
            if event is None:
                self._fds, self._waiting = fds, True
                ready = select.select(fds, [], [], wait)[0]
                self._waiting = False
                if ready:
                    if self.on_input is not None:
                        self.on_input()
                    link.receive(ready)
                    event = link.next_event(0)
        else:
            event = link.next_event(wait)
        now = time.monotonic()
        if event is None:
            return machine.idle(now)
        return self._report(link, event, now)

    def _next_read(self, link: Link, reader: SocketReader, stop: threading.Event) -> Sequence[Action]:
        """``_next_event`` for a ``Link`` read by its ``SocketReader``: the next reply read,
        else wait for the socket with select (which leaves the bytes in the socket until
        it is read: yield_to_listener sees them there) and read it once.  This node's own
        echoes take ``own_echo``'s short way, one after another, waiting for more in
        between without returning, until something else arrives, the machine has actions,
        or its next timeout comes.

        Raises:
            Exception: the connection failed.
        """
        machine = self.machine
        fds = link.fds
        next_reply, receive, wait_for, clock, own_echo = reader.reply, reader.receive, select.select, time.monotonic, self.own_echo
        self.source = 0
        self.shard = None
        while True:
            reply = next_reply()
            if reply is MORE:
                if stop.is_set():
                    return ()
                wait = min(POLL_INTERVAL, machine.timeout(clock()))
                self._fds, self._waiting = fds, True
                ready = wait_for(fds, [], [], wait)[0]
                self._waiting = False
                if not ready:
                    return machine.idle(clock())
                if self.on_input is not None:
                    self.on_input()
                receive()
                reply = next_reply()
                if reply is MORE:  # part of a reply
                    return machine.idle(clock())
            now = clock()
            if type(reply) is not list or len(reply) != 3 or reply[0] != b"message":
                return self._report(link, link_event(reply), now)
            actions = own_echo(reply[2], now) if self._pending else None
            if actions is None:
                return machine.message(reply[2], now)
            if actions:
                return actions

    def _report(self, link: Link | NodeLink, event: tuple[str, Any], now: float) -> Sequence[Action]:
        """Tell the machine about ``event`` (a reply of ``link``, received at ``now``)."""
        machine = self.machine
        kind, data = event
        self.source = link.source
        if kind == "message":
            self.shard = link.shard
            if self._pending:
                actions = self.own_echo(data, now)
                if actions is not None:
                    return actions
            return machine.message(data, now, self.shard)
        if kind == "tracked":
            return machine.tracked(data, now)
        if kind == "pong":
            return machine.pong(data, now)
        if kind == "subscribe":
            link.listening()
            if isinstance(link, NodeLink):
                self.adopt_shards(link.shards, now, link.master_epochs)
            return machine.subscribed(now)
        if kind == "unsubscribe":
            return machine.unsubscribed(now)
        return machine.reply(now)

    def yield_to_listener(self) -> bool:
        """Let the listener thread apply the input it has before the next cache hits are
        served; cache hits call this every ``HITS_PER_CHECK`` hits, and at the next hit
        after input arrived on the listener's socket (``on_input``).  True if the listener
        has nothing left to apply (or the lease ran out: the listener is told to bypass
        the cache); False if it still had input when the wait ran out: then the cache may
        be behind, so the caller reads Redis instead, and at each hit after that until
        ``listener_has_input`` is False.

        A thread that does nothing but cache hits and short system calls (an event loop
        polling with a zero timeout, a request loop checking a pipe) can keep the listener
        from running for as long as it runs.  With the GIL: CPython forces a hand-over
        after the switch interval only if the holder did not release the GIL meanwhile,
        and every short system call counts as a release.  Without it (a free-threaded
        build): the busy threads never wait for anything, so the listener is one runnable
        thread among many and, on a machine with fewer CPUs than busy threads, gets too
        little CPU time to keep up (invalidations applied hundreds of ms late).  Either way
        invalidations would wait for the busy thread.  So: while the listener has input
        to apply (it has left its wait, or input is waiting on its socket), sleep
        ``LISTENER_YIELD`` seconds at a time, until it is back in its wait with nothing
        to read, for at most ``LISTENER_CATCH_UP`` seconds; and sleep once if the lease ran
        out (the listener must wake up to bypass the cache).  When it returns True the hit
        that called this is served as it was looked up; the ones after it see what the
        listener applied.
        """
        if time.monotonic() >= self.machine.lease_until:
            time.sleep(LISTENER_YIELD)
            return True
        deadline = 0.0
        yields = 0
        while self.listener_has_input():
            if yields < LISTENER_YIELDS:
                # First give the CPU (and the GIL) away without sleeping: a listener that
                # only has to apply a message or two (this node's own echo, typically) is
                # done within a few yields, where a sleep costs a timer tick (~0.25 ms).
                yields += 1
                _give_way()
                continue
            now = time.monotonic()
            if not deadline:
                deadline = now + LISTENER_CATCH_UP
            elif now >= deadline:
                return False
            time.sleep(LISTENER_YIELD)
        return True

    def listener_has_input(self) -> bool:
        """Whether the listener thread has input it has not applied yet: it is out of its
        wait (applying what it read), or input is waiting on its socket.  Never blocks."""
        if self._waiting:
            fds = self._fds
            if not fds:
                return False
            try:
                return bool(select.select(fds, [], [], 0)[0])
            except (OSError, ValueError):  # closed under us: the listener reconnects
                return False
        return self._thread is not None


class ClusterCoordinator(ThreadedCoordinator):
    """Publishes and listens for invalidations in one background thread.

    Args:
        client: a ``redis.Redis`` / ``RedisCluster`` / Sentinel-managed client;
            the listener takes its own connection with the same settings
            (see ``listener_client``).
        config: the cluster settings.
        cache: the cache to keep coherent (None: count and publish only).
        prefix: the store's key prefix (what ``track_external_changes`` tracks).

    ``start()`` launches the daemon thread ``fastsess-listener-<node>`` and waits up
    to ``subscribe_timeout`` for the first subscription; ``stop()`` ends it.
    """

    def start(self, timeout: float | None = None) -> bool:
        """Start listening and wait up to ``timeout`` seconds (None: ``subscribe_timeout``;
        0: not at all) for the subscription; True if subscribed.

        Not subscribing in time is not an error: the store bypasses the cache
        until the listener gets through.
        """
        if not self.running:
            self._launch()
        if self.subscribed:
            return True
        return self.wait_subscribed(self.config.subscribe_timeout if timeout is None else timeout)

    def wait_subscribed(self, timeout: float) -> bool:
        """Block until subscribed (True) or ``timeout`` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        while not self.subscribed:
            if self._stop.is_set() or time.monotonic() >= deadline:
                return False
            self._ready.wait(min(0.01, max(0.0, deadline - time.monotonic())))
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the listener and wait for its thread (at most ``timeout`` seconds).

        The listener is woken at once (its socket is shut down) rather than at its next
        poll, unless the thread is inside a connect attempt.
        """
        thread = self.request_stop()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def publish(self, kind: str, session_id: str | None = None, version: int = 0) -> None:
        """Publish one message on its own (the stores batch theirs with the write).

        Raises:
            redis.RedisError: the PUBLISH failed (the stores map it to ``StoreUnavailable``).
        """
        self.client.publish(self.channel, self.message(kind, session_id, version, sequenced=False))
        self.note_published()

