"""A threaded TCP proxy on 127.0.0.1 for fault tests: it can hold up or blackhole one direction.

``TcpProxy(target_port)`` listens on a free port of 127.0.0.1 and relays every
connection to ``127.0.0.1:target_port`` (two threads per connection).  Faults:

* ``hold_next(pattern, seconds)``: the next chunk a client sends that contains
  ``pattern`` is held for ``seconds``, then delivered to the server even if the
  client gave up meanwhile -- a write that times out on the client and lands later.
* ``hold_next(pattern, seconds, reply=True)``: that chunk goes through at once and
  the server's next reply on the same connection is held instead -- the command
  ran, the client does not learn it in time.
* ``blackhole_up`` / ``blackhole_down``: while True, chunks in that direction are dropped.

Only 127.0.0.1, daemon threads, everything closed by ``close()``.
"""

from __future__ import annotations

import socket
import threading
import time

CHUNK = 65536


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


class _Link:
    __slots__ = ("client", "held_reply", "server")

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.held_reply: Hold | None = None


class TcpProxy:
    """Relay ``127.0.0.1:<port>`` to ``127.0.0.1:target_port``; see the module doc."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self.blackhole_up = False
        self.blackhole_down = False
        self._holds: list[Hold] = []
        self._lock = threading.Lock()
        self._links: list[_Link] = []
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

    def _take(self, data: bytes) -> Hold | None:
        with self._lock:
            for hold in self._holds:
                if hold.pattern in data:
                    self._holds.remove(hold)
                    hold.matched.set()
                    return hold
        return None

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            link = _Link(client, server)
            with self._lock:
                self._links.append(link)
            threading.Thread(target=self._up, args=(link,), name="tcpproxy-up", daemon=True).start()
            threading.Thread(target=self._down, args=(link,), name="tcpproxy-down", daemon=True).start()

    def _up(self, link: _Link) -> None:
        try:
            while True:
                data = link.client.recv(CHUNK)
                if not data:
                    break
                hold = self._take(data)
                if hold is not None and not hold.reply:
                    hold._pass_on(link.server, data)  # blocks this direction of this connection only
                    continue
                if hold is not None:
                    link.held_reply = hold  # before the request leaves: the reply cannot overtake it
                if not self.blackhole_up:
                    link.server.sendall(data)
        except OSError:
            pass
        # The client is gone: let the server finish what it received, then see EOF.
        _shutdown(link.server, socket.SHUT_WR)

    def _down(self, link: _Link) -> None:
        try:
            while True:
                data = link.server.recv(CHUNK)
                if not data:
                    break
                hold, link.held_reply = link.held_reply, None
                if hold is not None:
                    hold._pass_on(link.client, data)
                    continue
                if not self.blackhole_down:
                    link.client.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (link.client, link.server):
                _close(sock)

    def close(self) -> None:
        """Stop accepting and close every relayed connection."""
        self._closed = True
        _close(self._listener)
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            for sock in (link.client, link.server):
                _shutdown(sock, socket.SHUT_RDWR)
                _close(sock)


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
