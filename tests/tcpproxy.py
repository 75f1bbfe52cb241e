"""A threaded TCP proxy on 127.0.0.1 for fault tests: delay, drop, reset, stall or blackhole.

``TcpProxy(target_port)`` listens on a free port of 127.0.0.1 and relays every
connection to ``127.0.0.1:target_port`` (two threads per connection).  Faults, for
every connection at once (attributes of the proxy) or for one (attributes of a
``Link``, from ``links()`` / ``find(pattern)``):

* ``hold_next(pattern, seconds)``: the next chunk a client sends that contains
  ``pattern`` is held for ``seconds``, then delivered to the server even if the
  client gave up meanwhile -- a write that times out on the client and lands later.
* ``hold_next(pattern, seconds, reply=True)``: that chunk goes through at once and
  the server's next reply on the same connection is held instead -- the command
  ran, the client does not learn it in time.
* ``blackhole_up`` / ``blackhole_down``: while True, chunks in that direction are
  dropped (no FIN, no RST: a partition).  Per connection: ``link.blackhole_up`` /
  ``link.blackhole_down``.
* ``delay_up`` / ``delay_down``: seconds added before each chunk in that direction is
  passed on (order is kept).  Per connection: ``link.delay_up`` / ``link.delay_down``.
* ``blackhole_clients(pattern)``: every connection whose client sends ``pattern``
  (``b"SUBSCRIBE"``: the listeners), the ones opened later included, loses everything
  in both directions from then on; ``blackhole_clients(None)`` ends it.
* ``link.stall_down``: while True, the proxy stops *reading* the server's side of that
  connection, so the server's output piles up in its own buffers (a client that does
  not read: what ``client-output-buffer-limit`` is for).  Nothing is lost; it flows
  again when set back to False.
* ``link.drop()``: close both sides cleanly (FIN); ``link.reset()``: abort both sides
  (RST, as a crashed peer or a middlebox would).
* ``find(pattern)``: the connections whose client sent ``pattern`` at some point
  (``b"SUBSCRIBE"``: the pub/sub connections).

``small_buffers=True`` shrinks the proxy's receive buffer on the server side of every
connection, so that a stalled connection pushes back on the server after a few KB.

Only 127.0.0.1, daemon threads, everything closed by ``close()``.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

CHUNK = 65536
STALL_POLL = 0.002


class Hold:
    """One armed fault: ``matched`` is set when a chunk matched, ``released`` once the held
    data was passed on (``released_at``: ``time.monotonic()`` just before it was sent)."""

    def __init__(self, pattern: bytes, seconds: float, reply: bool) -> None:
        self.pattern = pattern
        self.seconds = seconds
        self.reply = reply
        self.matched = threading.Event()
        self.released = threading.Event()
        self.released_at: float | None = None

    def _pass_on(self, sock: socket.socket, data: bytes) -> None:
        time.sleep(self.seconds)
        self.released_at = time.monotonic()
        try:
            sock.sendall(data)
        finally:
            self.released.set()


class Link:
    """One relayed connection: its sockets, what its client sent first, and its own faults."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.held_reply: Hold | None = None
        self.seen = b""  # the client's traffic, first 4 KB plus every chunk's first 256 bytes
        self.blackhole_up = False
        self.blackhole_down = False
        self.delay_up = 0.0
        self.delay_down = 0.0
        self.stall_down = False
        self.closed = threading.Event()

    def drop(self) -> None:
        """Close both sides cleanly: each peer reads EOF."""
        for sock in (self.client, self.server):
            _shutdown(sock, socket.SHUT_RDWR)
            _close(sock)
        self.closed.set()

    def reset(self) -> None:
        """Abort both sides: each peer gets a connection reset (RST)."""
        for sock in (self.client, self.server):
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            _close(sock)
        self.closed.set()

    def _note(self, data: bytes) -> None:
        if len(self.seen) < 4096:
            self.seen += data[:256]


class TcpProxy:
    """Relay ``127.0.0.1:<port>`` to ``127.0.0.1:target_port``; see the module doc."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", small_buffers: bool = False) -> None:
        self.target = (target_host, target_port)
        self.small_buffers = small_buffers
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self.blackhole_up = False
        self.blackhole_down = False
        self.delay_up = 0.0
        self.delay_down = 0.0
        self._blackholed_clients: bytes | None = None
        self._holds: list[Hold] = []
        self._lock = threading.Lock()
        self._links: list[Link] = []
        self._closed = False
        threading.Thread(target=self._accept, name="tcpproxy-accept", daemon=True).start()

    @property
    def url(self) -> str:
        """A redis:// URL through the proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    def hold_next(self, pattern: bytes, seconds: float, reply: bool = False) -> Hold:
        """Arm a one-shot hold (see the module doc); returns it to wait on."""
        hold = Hold(pattern, seconds, reply)
        with self._lock:
            self._holds.append(hold)
        return hold

    def blackhole_clients(self, pattern: bytes | None) -> None:
        """Drop both directions of every connection whose client sent ``pattern``, now and
        later (None: stop)."""
        self._blackholed_clients = pattern

    def _silenced(self, link: Link) -> bool:
        pattern = self._blackholed_clients
        return pattern is not None and pattern in link.seen

    def links(self) -> list[Link]:
        """The connections relayed now (closed ones are forgotten)."""
        with self._lock:
            self._links = [link for link in self._links if not link.closed.is_set()]
            return list(self._links)

    def find(self, pattern: bytes) -> list[Link]:
        """The open connections whose client sent ``pattern``."""
        return [link for link in self.links() if pattern in link.seen]

    def _take(self, data: bytes) -> Hold | None:
        with self._lock:
            for hold in self._holds:
                if hold.pattern in data:
                    self._holds.remove(hold)
                    hold.matched.set()
                    return hold
        return None

    def _connect(self) -> socket.socket:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.small_buffers:  # before connect: the window is negotiated then
            server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        server.settimeout(5)
        try:
            server.connect(self.target)
        except OSError:
            server.close()
            raise
        server.settimeout(None)
        return server

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = self._connect()
            except OSError:
                client.close()
                continue
            link = Link(client, server)
            with self._lock:
                self._links.append(link)
            threading.Thread(target=self._up, args=(link,), name="tcpproxy-up", daemon=True).start()
            threading.Thread(target=self._down, args=(link,), name="tcpproxy-down", daemon=True).start()

    def _up(self, link: Link) -> None:
        try:
            while True:
                data = link.client.recv(CHUNK)
                if not data:
                    break
                link._note(data)
                hold = self._take(data)
                if hold is not None and not hold.reply:
                    hold._pass_on(link.server, data)  # blocks this direction of this connection only
                    continue
                if hold is not None:
                    link.held_reply = hold  # before the request leaves: the reply cannot overtake it
                delay = link.delay_up or self.delay_up
                if delay:
                    time.sleep(delay)
                if not (self.blackhole_up or link.blackhole_up or self._silenced(link)):
                    link.server.sendall(data)
        except OSError:
            pass
        # The client is gone: let the server finish what it received, then see EOF.
        _shutdown(link.server, socket.SHUT_WR)

    def _down(self, link: Link) -> None:
        try:
            while True:
                while link.stall_down and not link.closed.is_set():
                    time.sleep(STALL_POLL)
                data = link.server.recv(CHUNK)
                if not data:
                    break
                hold, link.held_reply = link.held_reply, None
                if hold is not None:
                    hold._pass_on(link.client, data)
                    continue
                delay = link.delay_down or self.delay_down
                if delay:
                    time.sleep(delay)
                if not (self.blackhole_down or link.blackhole_down or self._silenced(link)):
                    link.client.sendall(data)
        except OSError:
            pass
        finally:
            # shutdown first: a plain close() sends no FIN while the other thread of this
            # link is still blocked in recv() on the same socket
            link.drop()

    def close(self) -> None:
        """Stop accepting and close every relayed connection."""
        self._closed = True
        _close(self._listener)
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.drop()


def _shutdown(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
