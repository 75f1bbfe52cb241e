"""The listener's own RESP2 reading (``fastsess.cluster.resp``): replies cut right however
the bytes arrive, garbage refused, and the listener reading a real server with it."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from fastsess import ClusterConfig, ClusteredRedisStore
from fastsess.cluster.redis_adapter import Link, link_event
from fastsess.cluster.resp import MORE, ProtocolError, RespParser, SocketReader
from fastsess.server import free_port

from ..support.waiting import wait_until


def encode(value: Any) -> bytes:
    """RESP2 bytes of ``value``: bytes -> bulk, int -> integer, list -> array, None -> null bulk."""
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if isinstance(value, int):
        return b":%d\r\n" % value
    return b"*%d\r\n" % len(value) + b"".join(encode(v) for v in value)


def all_replies(parser: RespParser) -> list[Any]:
    out = []
    while (reply := parser.gets()) is not MORE:
        out.append(reply)
    return out


MESSAGE = [b"message", b"ch", b"\x86\xa1t\xabinvalidated\r\n$3\r\n*3\r\n"]  # CRLFs and RESP inside the payload
REPLIES = [
    [b"subscribe", b"ch", 1],
    MESSAGE,
    [b"pong", b"17"],
    [b"message", b"ch", b""],
    [b"unsubscribe", b"ch", 0],
    [b"message", b"other", b"x" * 70_000],
    [b"pong", b""],
]
STREAM = b"".join(encode(r) for r in REPLIES)


def test_every_reply_of_a_subscribed_connection() -> None:
    p = RespParser()
    p.feed(STREAM)
    assert all_replies(p) == REPLIES and p.buffered == 0


def test_split_at_every_byte_gives_the_same_replies() -> None:
    stream = b"".join(encode(r) for r in REPLIES[:5])
    for cut in range(len(stream) + 1):
        p = RespParser()
        p.feed(stream[:cut])
        got = all_replies(p)
        p.feed(stream[cut:])
        assert got + all_replies(p) == REPLIES[:5], cut


def test_one_byte_at_a_time() -> None:
    p = RespParser()
    got = []
    for i in range(len(STREAM)):
        p.feed(STREAM[i:i + 1])
        got += all_replies(p)
    assert got == REPLIES


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_into_reads(cuts: list[int]) -> None:
    p = RespParser()
    got: list[Any] = []
    edges = [0, *sorted(cuts), len(STREAM)]
    for a, b in zip(edges, edges[1:]):
        p.feed(STREAM[a:b])
        got += all_replies(p)
    assert got == REPLIES


def test_other_reply_types() -> None:
    p = RespParser()
    p.feed(b"+OK\r\n:-3\r\n$-1\r\n*-1\r\n*0\r\n*2\r\n*1\r\n:1\r\n$0\r\n\r\n-ERR wrong\r\n")
    ok, number, null, null_array, empty, nested, error = all_replies(p)
    assert (ok, number, null, null_array, empty, nested) == (b"OK", -3, None, None, [], [[1], b""])
    assert isinstance(error, redis.ResponseError) and str(error) == "ERR wrong"


@pytest.mark.parametrize("garbage", [
    b"?what\r\n",  # no such type
    b"$abc\r\n",  # not a length
    b"$-5\r\n",  # a negative length other than -1
    b"*-2\r\n",
    b"$ 3\r\nabc\r\n",  # int() would take it; RESP does not
    b"$3\r\nabcd\r\n",  # the bulk string is longer than it says
    b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$3\r\nabcd\r\n",  # the same inside a message
    b"*3\r\n$7\r\nmessage\r\n$x\r\nch\r\n",
    b"$99999999999999999999999\r\n",
    b"*9\r\n" + b"*1\r\n" * 9 + b":1\r\n",  # nested too deep
    b"+" + b"a" * 70_000,  # a line that never ends
    b":1_000\r\n",
])
def test_garbage_is_a_protocol_error(garbage: bytes) -> None:
    p = RespParser()
    p.feed(garbage)
    with pytest.raises(ProtocolError):
        p.gets()
    assert issubclass(ProtocolError, redis.ConnectionError)  # the listener reconnects, as for a drop


def test_an_incomplete_message_waits_for_the_rest() -> None:
    frame = encode(MESSAGE)
    p = RespParser()
    p.feed(frame[:-1])  # all but the final LF
    assert p.gets() is MORE and p.buffered == len(frame) - 1
    p.feed(frame[-1:] + frame[:3])
    assert p.gets() == MESSAGE and p.gets() is MORE
    p.feed(frame[3:])
    assert p.gets() == MESSAGE


def test_events_of_raw_replies() -> None:
    assert link_event([b"message", b"ch", b"data"]) == ("message", b"data")
    assert link_event([b"subscribe", b"ch", 1]) == ("subscribe", None)
    assert link_event([b"unsubscribe", b"ch", 0]) == ("unsubscribe", None)
    assert link_event([b"pong", b"3"]) == ("pong", b"3")
    assert link_event([b"psubscribe", b"x", 1]) == link_event(b"OK") == link_event([]) == ("reply", None)
    with pytest.raises(redis.ResponseError):
        link_event(redis.ResponseError("ERR no"))


def test_a_long_reply_in_many_small_reads_is_joined_once() -> None:
    big = [b"message", b"ch", bytes(range(256)) * 8192]  # 2 MB
    frame = encode(big)
    p = RespParser()
    started = time.perf_counter()
    for i in range(0, len(frame), 1024):
        p.feed(frame[i:i + 1024])
        if i + 1024 < len(frame):
            assert p.gets() is MORE
    assert p.gets() == big and p.buffered == 0
    assert time.perf_counter() - started < 2.0  # not quadratic: 2048 reads of 1 KB


@pytest.mark.parametrize("use_hiredis", [True, False], ids=["hiredis-if-installed", "RespParser"])
def test_socket_reader_reads_what_arrived_and_reports_the_end(use_hiredis: bool) -> None:
    ours, theirs = socket.socketpair()
    try:
        reader = SocketReader(ours, use_hiredis)
        assert reader.reply() is MORE
        frame = encode(MESSAGE)
        theirs.sendall(frame[:10])
        reader.receive()
        assert reader.reply() is MORE
        theirs.sendall(frame[10:] + encode([b"pong", b"1"]))
        reader.receive()
        assert reader.reply() == MESSAGE and reader.reply() == [b"pong", b"1"] and reader.reply() is MORE
        theirs.sendall(b"?garbage\r\n")
        reader.receive()
        with pytest.raises(ProtocolError):
            reader.reply()
        theirs.shutdown(socket.SHUT_WR)
        with pytest.raises(redis.ConnectionError):
            reader.receive()
    finally:
        ours.close()
        theirs.close()


def test_socket_reader_on_a_socket_with_a_timeout_and_nothing_to_read() -> None:
    ours, theirs = socket.socketpair()
    try:
        ours.settimeout(5.0)  # non-blocking underneath: a read with nothing there is no failure
        reader = SocketReader(ours)
        reader.receive()
        assert reader.reply() is MORE
    finally:
        ours.close()
        theirs.close()


# -- the listener reading a real server this way --------------------------------------------


def test_the_listener_reads_its_socket_itself(redis_url: str) -> None:
    store = ClusteredRedisStore(url=redis_url, prefix="resp:", config=ClusterConfig(channel="resp:ch"))
    try:
        c = store.coordinator
        assert c is not None and c.wait_subscribed(5.0)
        link = c._link  # type: ignore[attr-defined]
        assert isinstance(link, Link) and link.socket_reader is not None and link.pubsub is None
        s = store.create({"n": 0})
        store.save(s)
        for n in range(1, 30):
            s["n"] = n
            assert store.save(s)
        wait_until(lambda: c.stats.ignored_own == 30, 5, what="the 30 echoes")
        assert c.stats.sequence >= 30 and c.stats.gaps == 0
        # Every echo but the first went the short way (the first write on a fresh server
        # begins the epoch: the general way, which leaves its bytes remembered, harmlessly).
        assert len(c._pending) <= 1
    finally:
        store.close()


def test_garbage_and_huge_messages_on_the_channel_are_dropped_not_fatal(redis_url: str) -> None:
    store = ClusteredRedisStore(url=redis_url, prefix="resp2:", config=ClusterConfig(channel="resp2:ch"))
    other = redis.Redis.from_url(redis_url)
    try:
        c = store.coordinator
        assert c is not None and c.wait_subscribed(5.0)
        s = store.create({"n": 0})
        store.save(s)
        before = c.stats
        for data in (b"\r\n*3\r\n$7\r\nmessage\r\n", b"x" * 3_000_000, b"", b"$-1\r\n"):
            other.publish("resp2:ch", data)
        wait_until(lambda: c.stats.malformed == before.malformed + 4, 5, what="4 malformed messages")
        time.sleep(0.05)
        assert c.subscribed and c.stats.reconnects == before.reconnects
        loaded = store.load(s.id)
        assert loaded is not None and loaded["n"] == 0
    finally:
        other.close()
        store.close()


def _self_signed(directory: Path) -> tuple[str, str]:
    """A self-signed certificate and its key for 127.0.0.1, as PEM files in ``directory``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def _two_nodes_agree(client_a: Any, client_b: Any, channel: str) -> tuple[ClusteredRedisStore, ClusteredRedisStore]:
    """Stores A and B on these clients: B's cached copy is evicted by A's save, and each
    store's own echo is counted as its own."""
    a = ClusteredRedisStore(client=client_a, prefix="t:", config=ClusterConfig(channel=channel, node_id="A"))
    b = ClusteredRedisStore(client=client_b, prefix="t:", config=ClusterConfig(channel=channel, node_id="B"))
    for store in (a, b):
        assert store.coordinator is not None and store.coordinator.wait_subscribed(5.0)
    s = a.create({"n": 0})
    assert a.save(s)
    wait_until(lambda: b.load(s.id) is not None and b._cache is not None and b._cache.get(s.id) is not None, 5, what="B caching")
    s["n"] = 1
    assert a.save(s)
    wait_until(lambda: b._cache is not None and b._cache.get(s.id) is None, 5, what="B's copy evicted")
    loaded = b.load(s.id)
    assert loaded is not None and loaded["n"] == 1
    assert a.coordinator is not None and b.coordinator is not None
    wait_until(lambda: a.coordinator.stats.ignored_own == 2, 5, what="A's two echoes")  # type: ignore[union-attr]
    assert a.coordinator.stats.foreign_own_id == b.coordinator.stats.foreign_own_id == 0
    return a, b


def test_over_a_unix_socket_the_listener_reads_it_itself(redis_server_factory: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "redis.sock")
    redis_server_factory(extra_args=("--unixsocket", path, "--unixsocketperm", "700"))
    clients = [redis.Redis(unix_socket_path=path) for _ in range(2)]
    a, b = _two_nodes_agree(*clients, "unix:ch")
    try:
        link = b.coordinator._link  # type: ignore[union-attr]
        assert isinstance(link, Link) and link.socket_reader is not None
    finally:
        a.close()
        b.close()
        for client in clients:
            client.close()


def test_over_tls_the_listener_reads_through_redis_py(redis_server_factory: Any, tmp_path: Path) -> None:
    """A TLS socket is not read raw (the bytes are encrypted): redis-py's reader on the
    listener's own connection, as before."""
    cert, key = _self_signed(tmp_path)
    port = free_port()
    redis_server_factory(extra_args=(
        "--tls-port", str(port), "--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", cert,
        "--tls-auth-clients", "no",
    ))
    clients = [redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=cert) for _ in range(2)]
    a, b = _two_nodes_agree(*clients, "tls:ch")
    try:
        link = b.coordinator._link  # type: ignore[union-attr]
        assert isinstance(link, Link) and link.socket_reader is None and link.read is not None and link.pubsub is None
    finally:
        a.close()
        b.close()
        for client in clients:
            client.close()
