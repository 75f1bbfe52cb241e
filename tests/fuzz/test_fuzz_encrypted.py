"""Property tests of the encrypted envelope decoder (a store with ``encryption=``): any bytes
read from Redis give a ``Session`` only if they are an authentic encryption for that very
key, else ``SessionCorrupt``; never another exception, and with memory bounded by the limits.

Inputs: random bytes; the encrypted header (with this store's key id, another one, or none)
in front of random bytes; real encrypted sessions with bytes changed, truncated, extended,
or read under another id; plain envelopes with ``accept_plaintext`` on and off; and
authentic encryptions of random plaintext (what only a key holder can make: the decoder
behind the authentication still answers ``Session`` or ``SessionCorrupt``).  Example counts
as ``test_fuzz.py`` (``FASTSESS_FUZZ_EXAMPLES``); ``atheris_targets.py encrypted`` runs the
same contract coverage-guided.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fastsess import Encryption, Session
from fastsess._core.keys import KeySpace
from fastsess.crypto import HEADER_SIZE, NONCE_SIZE, OVERHEAD, PREFIX, key_id
from fastsess.errors import SessionCorrupt
from fastsess.serializers import JSONSerializer, MsgpackSerializer
from fastsess.stores.base import new_session_id

from .targets import SID
from .test_fuzz import FUZZ_EXAMPLES, decode_or_corrupt, flip, fuzz, fuzz_structured, plain

K1, K2 = bytes(range(1, 33)), bytes(range(201, 233))
ENC = Encryption([K1])
KEYS = KeySpace("fz:")
CODECS = {
    "msgpack": ENC.bind(MsgpackSerializer(), KEYS),
    "json": ENC.bind(JSONSerializer(), KEYS),
    "plaintext-ok": Encryption([K1], accept_plaintext=True).bind(MsgpackSerializer(compress_threshold=0), KEYS),
}
ID1 = bytes.fromhex(key_id(K1))
HEADERS = [b"", PREFIX, PREFIX + ID1, PREFIX + bytes.fromhex(key_id(K2)), PREFIX + b"\x00\x00\x00\x00", b"FS\x01\x01\x00", b"FS\x01\x02\x01"]


def only_corrupt(codec: Any, raw: bytes, sid: str = SID) -> None:
    with pytest.raises(SessionCorrupt):
        codec.decode(sid, raw)


@pytest.mark.parametrize("name", sorted(CODECS))
@fuzz
@given(raw=st.binary(max_size=512))
@example(raw=b"")
@example(raw=PREFIX)
@example(raw=PREFIX + ID1 + b"\x00" * (NONCE_SIZE + 16))
def test_any_bytes_are_a_session_or_session_corrupt(name: str, raw: bytes) -> None:
    session = decode_or_corrupt(CODECS[name], raw)
    if session is not None:  # only a plain envelope, read because accept_plaintext is on
        assert name == "plaintext-ok" and raw[:3] == b"FS\x01"


@pytest.mark.parametrize("name", ["msgpack", "json"])
@fuzz
@given(header=st.sampled_from(HEADERS), body=st.binary(max_size=512))
def test_an_encrypted_header_before_any_body_is_corrupt(name: str, header: bytes, body: bytes) -> None:
    only_corrupt(CODECS[name], header + body)


@pytest.mark.parametrize("name", ["msgpack", "json"])
@fuzz_structured
@given(data=st.dictionaries(st.text(max_size=8), plain, max_size=5), positions=st.lists(st.integers(0, 10**6), min_size=1, max_size=4),
       values=st.lists(st.integers(0, 255), min_size=4, max_size=4), extra=st.binary(min_size=1, max_size=8))
def test_a_real_encrypted_session_with_bytes_changed(name: str, data: dict[str, Any], positions: list[int], values: list[int], extra: bytes) -> None:
    codec = CODECS[name]
    raw = codec.encode(Session(SID, data, ttl=3600))
    assert len(raw) >= OVERHEAD and raw[:HEADER_SIZE] == PREFIX + ID1
    back = decode_or_corrupt(codec, raw)
    assert back is not None and dict(back) == dict(codec.decode(SID, raw))  # unchanged bytes decode
    changed = flip(raw, positions, values)
    if changed != raw:
        only_corrupt(codec, changed)
    only_corrupt(codec, raw[: positions[0] % len(raw)])  # truncated
    only_corrupt(codec, raw + extra)  # extended
    only_corrupt(codec, raw, new_session_id())  # under another id


@fuzz
@given(plaintext=st.binary(max_size=512) | st.sampled_from([b"FS\x01\x01\x00", b"FS\x01\x02\x01", b"FS\x02"]).flatmap(lambda h: st.binary(max_size=256).map(lambda b: h + b)))
def test_behind_the_authentication_the_decoder_still_holds(plaintext: bytes) -> None:
    """An authentic encryption of any bytes (only a key holder can make one) decodes to a
    ``Session`` or ``SessionCorrupt``: a nested encrypted envelope included."""
    raw = ENC.seal(plaintext, KEYS.key(SID).encode())
    for name in ("msgpack", "json"):
        decode_or_corrupt(CODECS[name], raw)


@settings(max_examples=max(1, FUZZ_EXAMPLES // 10), deadline=None)
@given(fill=st.binary(min_size=1, max_size=16), key=st.sampled_from([ID1, b"\x00" * 4]))
def test_memory_is_bounded_by_the_limits(fill: bytes, key: bytes) -> None:
    """With a 64 KiB body limit, a 4 MB value is refused before anything is decrypted, and
    one just under the limit costs about its own size."""
    codec = Encryption([K1]).bind(MsgpackSerializer(max_size=64 * 1024, max_items=1000, max_depth=20), KEYS)
    huge = PREFIX + key + (fill * (4 * 1024 * 1024 // len(fill) + 1))
    fits = PREFIX + key + (fill * (60 * 1024 // len(fill) + 1))
    for raw, bound in ((huge, 64 * 1024), (fits, 512 * 1024)):
        tracemalloc.start()
        try:
            only_corrupt(codec, raw)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < bound, f"decoding {len(raw)} bytes took {peak} bytes at peak"
