"""RESP2 replies read straight off a plain socket: the listener's pub/sub connection.

The listener thread reads one connection that carries only pub/sub replies (arrays of
bulk strings and integers: ``message``, ``subscribe``, ``pong``...).  Every save on
this node comes back to it as its own message (the "echo"), so what reading one reply
costs is paid once per save.  redis-py's ``read_response(timeout=...)`` sets the
socket's timeout twice per call and raises an exception for "nothing yet"; here one
``select`` waits, one ``read`` takes everything that arrived, and ``RespParser`` cuts it
into replies, however the bytes were split across reads.

``RespParser`` does no I/O; ``SocketReader`` adds the reads.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

MORE: Any = object()  # ``RespParser.gets``: no complete reply buffered yet
MAX_BULK = 512 * 1024 * 1024  # Redis's proto-max-bulk-len: a longer one is not Redis talking
MAX_ARRAY = 1024 * 1024  # elements of one array; a pub/sub reply has 2 to 4
MAX_LINE = 64 * 1024  # a header line ("*3", "$120", ":1") or a simple string/error
MAX_DEPTH = 8  # nested arrays (a pub/sub reply has none)
READ_SIZE = 256 * 1024  # bytes one read takes at most
GATHER_FROM = 16 * 1024  # a reply longer than this that spans reads is joined once, when whole
_MESSAGE = b"*3\r\n$7\r\nmessage\r\n$"  # how every pub/sub message reply starts


def _bulk(buf: bytes, p: int, after: bytes) -> tuple[int, int] | None:
    """The span of a bulk string whose length line starts at ``p`` (just after its ``$``)
    and which is followed by ``after``; None if incomplete or malformed."""
    eol = buf.find(b"\r\n", p, p + 12)
    line = buf[p:eol]
    if eol < 0 or not line.isdigit():
        return None
    start = eol + 2
    end = start + int(line)
    if buf[end:end + len(after)] != after:
        return None
    return start, end


class ProtocolError(RedisConnectionError):
    """The connection sent bytes that are not RESP2: the listener drops it and reconnects."""


class _Incomplete(Exception):
    """The buffer ends inside a reply."""


_INCOMPLETE = _Incomplete()


def _number(line: bytes) -> int:
    """The integer of a header line (``-1``, ``3``...), strictly: digits, one optional minus."""
    digits = line[1:] if line[:1] == b"-" else line
    if not digits.isdigit() or len(digits) > 20:
        raise ProtocolError(f"protocol error: not a number: {line[:40]!r}")
    return int(line)


class RespParser:
    """Cuts a byte stream into RESP2 replies.  No I/O.

    ``feed(data)`` appends bytes; ``gets()`` returns the next whole reply (bytes for a
    bulk string, int, list for an array, None for a null, the ``ResponseError`` of an
    error reply, bytes for a simple string) or ``MORE`` when the buffer ends inside one.

    Raises (``gets``):
        ProtocolError: the bytes are not RESP2 (a bad type byte, a bad length, a bulk
            string not followed by CRLF, a header line or nesting beyond the limits).
    """

    __slots__ = ("_buf", "_chunks", "_have", "_need", "_pos", "_want")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0
        # A reply known to need ``_need`` bytes, ``_have`` of them read so far in ``_chunks``:
        # joined once, when all are there (a long reply read in many pieces is copied once).
        self._chunks: list[bytes] = []
        self._have = 0
        self._need = 0
        self._want = 0  # _parse: where the bulk string that did not fit ends (0: unknown)

    @property
    def buffered(self) -> int:
        """Bytes fed and not yet returned as a reply."""
        return len(self._buf) - self._pos + self._have

    def feed(self, data: bytes) -> None:
        """Append ``data`` to what is buffered."""
        if self._need:
            self._chunks.append(data)
            self._have += len(data)
            if self._have < self._need:
                return
            self._buf, self._pos = b"".join(self._chunks), 0
            self._chunks, self._have, self._need = [], 0, 0
        elif self._pos >= len(self._buf):
            self._buf, self._pos = data, 0
        else:
            self._buf, self._pos = self._buf[self._pos:] + data, 0

    def gets(self) -> Any:
        """The next complete reply, or ``MORE`` (see the class doc).

        Raises:
            ProtocolError: the buffered bytes are not RESP2.
        """
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            return MORE
        if buf.startswith(_MESSAGE, pos):  # the usual reply, cut without the general parse
            message = self._message(buf, pos)
            if message is not None:
                return message
        self._want = 0
        try:
            value, self._pos = self._parse(buf, pos, 0)
        except _Incomplete:
            if self._want - pos > GATHER_FROM:  # a long reply: gather its pieces, join them once
                rest = buf[pos:]
                self._chunks, self._have, self._need = [rest], len(rest), self._want - pos
                self._buf, self._pos = b"", 0
            return MORE
        return value

    def _message(self, buf: bytes, pos: int) -> list[bytes] | None:
        """A whole well-formed ``message`` reply at ``pos`` (which starts with ``_MESSAGE``),
        consumed; else None (incomplete or malformed: the general parse decides)."""
        channel = _bulk(buf, pos + len(_MESSAGE), b"\r\n$")
        if channel is None:
            return None
        start, end = channel
        data = _bulk(buf, end + 3, b"\r\n")
        if data is None:
            return None
        first, last = data
        self._pos = last + 2
        return [b"message", buf[start:end], buf[first:last]]

    def _parse(self, buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            if len(buf) - pos > MAX_LINE:
                raise ProtocolError("protocol error: a header line without its end")
            raise _INCOMPLETE
        kind = buf[pos]
        if kind == 36:  # "$": bulk string
            size = _number(buf[pos + 1:eol])
            if size < 0:
                if size == -1:
                    return None, eol + 2
                raise ProtocolError(f"protocol error: bulk length {size}")
            if size > MAX_BULK:
                raise ProtocolError(f"protocol error: bulk length {size}")
            start = eol + 2
            end = start + size
            if len(buf) < end + 2:
                self._want = end + 2
                raise _INCOMPLETE
            if buf[end:end + 2] != b"\r\n":
                raise ProtocolError("protocol error: a bulk string not followed by CRLF")
            return buf[start:end], end + 2
        if kind == 42:  # "*": array
            count = _number(buf[pos + 1:eol])
            if count < 0:
                if count == -1:
                    return None, eol + 2
                raise ProtocolError(f"protocol error: array length {count}")
            if count > MAX_ARRAY or depth >= MAX_DEPTH:
                raise ProtocolError("protocol error: array too long or nested too deep")
            items = []
            pos = eol + 2
            for _ in range(count):
                item, pos = self._parse(buf, pos, depth + 1)
                items.append(item)
            return items, pos
        if kind == 58:  # ":": integer
            return _number(buf[pos + 1:eol]), eol + 2
        if kind == 43:  # "+": simple string
            return buf[pos + 1:eol], eol + 2
        if kind == 45:  # "-": error reply
            return ResponseError(buf[pos + 1:eol].decode("utf-8", "replace")), eol + 2
        raise ProtocolError(f"protocol error: unexpected byte {bytes((kind,))!r}")


def plain_socket(sock: Any) -> bool:
    """True if ``sock`` is a connected plain (not TLS) stream socket ``SocketReader`` can read."""
    import ssl

    return isinstance(sock, socket.socket) and not isinstance(sock, ssl.SSLSocket) and sock.fileno() >= 0


def new_parser(use_hiredis: bool = True) -> Any:
    """A parser with ``feed(bytes)`` and ``gets()`` (``MORE`` or False: no whole reply yet):
    hiredis's ``Reader`` when hiredis is installed (and ``use_hiredis``), else ``RespParser``.
    Both give the same replies, and both raise ``ProtocolError`` for what is not RESP2."""
    if use_hiredis:
        try:
            import hiredis
        except ImportError:
            pass
        else:
            return hiredis.Reader(protocolError=ProtocolError, replyError=ResponseError)
    return RespParser()


class SocketReader:
    """Replies of one plain socket, read by the caller when ``select`` says it is readable.

    ``reply()`` is the next reply already read (``MORE``: none), without I/O;
    ``receive()`` reads once what the socket holds (never blocks when the socket is
    readable).  On POSIX ``os.read`` on the descriptor (one system call, whatever the
    socket's timeout); elsewhere ``socket.recv``.  The replies are cut by ``new_parser()``.

    Raises (``receive``):
        redis.ConnectionError: the server closed the connection (or it was shut down).
        OSError: the read failed.
    """

    __slots__ = ("_feed", "_gets", "_read", "fd", "parser")

    def __init__(self, sock: socket.socket, use_hiredis: bool = True) -> None:
        self.fd = sock.fileno()
        self.parser = new_parser(use_hiredis)
        self._feed = self.parser.feed
        self._gets = self.parser.gets
        if os.name == "posix":
            fd = self.fd
            self._read: Any = lambda: os.read(fd, READ_SIZE)
        else:  # pragma: no cover - Windows: no os.read on sockets
            self._read = lambda: sock.recv(READ_SIZE)

    def receive(self) -> None:
        """Read what the socket holds into the parser (see the class doc)."""
        try:
            data = self._read()
        except BlockingIOError:  # a socket with a timeout is non-blocking: nothing after all
            return
        if not data:
            raise RedisConnectionError("the server closed the invalidation connection")
        self._feed(data)

    def reply(self) -> Any:
        """The next complete reply read so far, or ``MORE``.

        Raises:
            ProtocolError: the bytes are not RESP2.
        """
        reply = self._gets()
        return MORE if reply is False else reply  # hiredis: False (RESP2 has no booleans)
