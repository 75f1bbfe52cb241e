"""Property tests: every decoder of untrusted bytes answers with its documented result.

* the session envelope and payload decoder (``Serializer.decode``, msgpack and JSON):
  a ``Session`` or ``SessionCorrupt``, nothing else, with memory bounded by the limits;
* the cluster message decoder (``decode_message``): a valid message map or None;
* the signed session-id cookie (``CookieSigner.unsign``): the id that was signed, or None;
* the legacy readers of the migration path (``decode_legacy``, ``safe_unpickle``): a
  dict of storable values or ``LegacyDataError``, and the unpickler never loads a
  global outside its allow-list;
* the framework drop-ins given any cookie value: a fresh, empty session, never an error.

Inputs are random bytes and, to get past the first checks, structured ones: a valid
header in front of random bytes, valid sessions with bytes flipped, zlib-compressed
random bodies, msgpack maps with the message fields.  Example counts are bounded
(``FUZZ_EXAMPLES``) so the whole file runs in seconds; ``tests/fuzz/atheris_targets.py``
runs the same targets coverage-guided, on demand.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import tracemalloc
import zlib
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fastsess import Session
from fastsess.contrib._common import CookieSigner
from fastsess.contrib._legacy import _ALLOWED_GLOBALS, LegacyDataError, SafeUnpickler, decode_legacy, safe_unpickle
from fastsess.errors import SessionCorrupt
from fastsess.serializers import JSONSerializer, MsgpackSerializer
from fastsess.stores.base import is_valid_session_id

from .targets import MESSAGE_TYPES, SID, check_message, decode_message

# FASTSESS_FUZZ_EXAMPLES=20000 pytest tests/fuzz: a longer run (the default keeps the file to seconds)
FUZZ_EXAMPLES = int(os.environ.get("FASTSESS_FUZZ_EXAMPLES", "100"))
fuzz = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# structured inputs cost more to generate than they do to decode
fuzz_structured = settings(max_examples=max(1, FUZZ_EXAMPLES // 2), deadline=None, suppress_health_check=[HealthCheck.too_slow])

SERIALIZERS = {"msgpack": MsgpackSerializer(), "json": JSONSerializer()}
HEADERS = [b"FS\x01\x01\x00", b"FS\x01\x02\x00", b"FS\x01\x01\x01", b"FS\x01\x02\x01", b"FS\x01\x07\x00", b"FS\x02\x01\x00"]

plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=8,
)


def decode_or_corrupt(serializer: Any, raw: bytes) -> Session | None:
    """The decoder's contract: a ``Session`` whose fields are sane, or ``SessionCorrupt``."""
    try:
        session = serializer.decode(SID, raw)
    except SessionCorrupt:
        return None
    assert isinstance(session, Session) and session.id == SID
    assert isinstance(dict(session), dict)
    assert type(session.ttl) is int and session.ttl >= 1 and type(session.version) is int and session.version >= 0
    return session


def flip(data: bytes, positions: list[int], values: list[int]) -> bytes:
    out = bytearray(data)
    for p, v in zip(positions, values):
        if out:
            out[p % len(out)] = v
    return bytes(out)


# --- the session envelope and payload ------------------------------------------------


@pytest.mark.parametrize("codec", ["msgpack", "json"])
@fuzz
@given(raw=st.binary(max_size=512))
@example(raw=b"")
@example(raw=b"FS")
@example(raw=b"FS\x01\x01\x00")
@example(raw=b"FS\x01\x02\x00[]")
def test_any_bytes_decode_to_a_session_or_session_corrupt(codec: str, raw: bytes) -> None:
    decode_or_corrupt(SERIALIZERS[codec], raw)


@pytest.mark.parametrize("codec", ["msgpack", "json"])
@fuzz
@given(header=st.sampled_from(HEADERS), body=st.binary(max_size=512))
def test_a_valid_header_before_any_body(codec: str, header: bytes, body: bytes) -> None:
    serializer = SERIALIZERS[codec]
    decode_or_corrupt(serializer, header + body)
    if header[4] & 1:  # the zlib flag: the body itself may be valid zlib of garbage too
        decode_or_corrupt(serializer, header + zlib.compress(body))


@pytest.mark.parametrize("codec", ["msgpack", "json"])
@fuzz_structured
@given(data=st.dictionaries(st.text(max_size=8), plain, max_size=5), positions=st.lists(st.integers(0, 10**6), min_size=1, max_size=4),
       values=st.lists(st.integers(0, 255), min_size=4, max_size=4), compress=st.booleans())
def test_a_real_session_with_bytes_changed(codec: str, data: dict[str, Any], positions: list[int], values: list[int], compress: bool) -> None:
    serializer = type(SERIALIZERS[codec])(compress_threshold=0 if compress else None)
    session = Session(SID, data, ttl=3600)
    raw = serializer.encode(session)
    back = decode_or_corrupt(serializer, raw)
    assert back is not None and back.version == session.version  # unchanged bytes decode
    decode_or_corrupt(serializer, flip(raw, positions, values))
    decode_or_corrupt(serializer, raw[: positions[0] % (len(raw) + 1)])  # truncated


@pytest.mark.parametrize("codec", ["msgpack", "json"])
@settings(max_examples=max(1, FUZZ_EXAMPLES // 4), deadline=None)
@given(body=st.binary(min_size=1, max_size=64).map(lambda b: b * 64), header_at=st.sampled_from([0, 1]))
def test_decoding_memory_is_bounded_by_the_limits(codec: str, body: bytes, header_at: int) -> None:
    """With small limits, whatever the bytes (here: repetitive ones that zlib shrinks a
    lot), decoding allocates a bounded amount: the inflated body stops at ``max_size``."""
    serializer = type(SERIALIZERS[codec])(max_size=64 * 1024, max_items=1000, max_depth=20)
    codec_id = b"\x01" if codec == "msgpack" else b"\x02"
    raw = b"FS\x01" + codec_id + b"\x01" + zlib.compress(body * 4096)  # up to 16 MB inflated
    tracemalloc.start()
    try:
        decode_or_corrupt(serializer, raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024, f"decoding {len(raw)} bytes took {peak} bytes at peak"


# --- the cluster message decoder ------------------------------------------------------

message_fields = st.fixed_dictionaries(
    {},
    optional={
        "t": st.sampled_from(sorted(MESSAGE_TYPES)) | plain,
        "id": st.just(SID) | plain,
        "node": st.text(max_size=30) | plain,
        "v": st.integers(-(2**63), 2**64 - 1) | plain,
        "x": st.integers(-(2**63), 2**64 - 1) | plain,
        "ids": st.lists(st.just(SID) | plain, max_size=3) | plain,
    },
)


@fuzz_structured
@given(raw=st.binary(max_size=2048) | st.builds(msgpack.packb, message_fields) | st.builds(msgpack.packb, plain))
def test_any_bytes_decode_to_a_message_or_none(raw: bytes) -> None:
    check_message(raw, decode_message(raw))


@fuzz
@given(data=st.one_of(st.none(), st.integers(), st.text(max_size=50), st.lists(st.binary(max_size=5), max_size=3), st.builds(bytearray, st.binary(max_size=50))))
def test_a_non_bytes_payload_is_none(data: Any) -> None:
    assert decode_message(data) is None


# --- the signed session-id cookie -----------------------------------------------------

signer = CookieSigner("fuzz secret")
SIGNED = signer.sign(SID)


@fuzz
@given(value=st.text(max_size=120) | st.binary(max_size=100) | st.none() | st.integers())
@example(value=SIGNED)
@example(value=SIGNED[:-1] + ("A" if SIGNED[-1] != "A" else "B"))
@example(value=SID + "." + "\udcff" * 43)
def test_any_cookie_value_unsigns_to_the_signed_id_or_none(value: Any) -> None:
    got = signer.unsign(value)
    assert got is None or (got == value[:43] and is_valid_session_id(got) and value == signer.sign(got))


@fuzz
@given(position=st.integers(0, len(SIGNED) - 1), char=st.characters(codec="utf-8"))
def test_a_signed_cookie_with_one_character_changed_is_refused(position: int, char: str) -> None:
    forged = SIGNED[:position] + char + SIGNED[position + 1 :]
    assert signer.unsign(forged) == (SID if forged == SIGNED else None)
    assert CookieSigner("another secret").unsign(SIGNED) is None


ID_FORM = re.compile(r"[A-Za-z0-9_-]{43}")


@fuzz
@given(value=st.text(max_size=60) | st.text("AZaz09_-=+/.\u00e9\x00", min_size=42, max_size=44) | st.binary(max_size=50) | st.none() | st.integers())
@example(value=SID)
@example(value=SID + "\n")
def test_an_id_is_valid_exactly_when_it_has_the_form_fastsess_issues(value: Any) -> None:
    """The check every store, and the Django drop-in's session-key check, runs on ids from clients."""
    assert is_valid_session_id(value) == (type(value) is str and ID_FORM.fullmatch(value) is not None)


# --- the legacy readers (migration only) ---------------------------------------------


def storable(value: Any) -> bool:
    if value is None or isinstance(value, (str, bytes, bool, int, float)):
        return True
    if isinstance(value, dict):
        return all(isinstance(k, str) and storable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(storable(v) for v in value)
    import datetime as dt

    return isinstance(value, (dt.datetime, dt.date))


@fuzz_structured
@given(raw=st.binary(max_size=512) | st.builds(msgpack.packb, plain) | st.builds(lambda v: pickle.dumps(v, protocol=2), plain), allow_pickle=st.booleans())
@example(raw=b"\x80\x04c__builtin__\neval\n.", allow_pickle=True)
def test_legacy_bytes_decode_to_storable_data_or_legacy_data_error(raw: bytes, allow_pickle: bool) -> None:
    try:
        data = decode_legacy(raw, allow_pickle=allow_pickle)
    except LegacyDataError:
        return
    assert isinstance(data, dict) and storable(data)


@fuzz
@given(raw=st.binary(max_size=256).map(lambda b: b"\x80\x02" + b), module=st.sampled_from(["os", "subprocess", "builtins", "posix", "fastsess"]),
       name=st.sampled_from(["system", "eval", "exec", "getattr", "__import__", "Popen"]))
def test_the_unpickler_loads_no_global_outside_its_allow_list(raw: bytes, module: str, name: str) -> None:
    returned: list[tuple[str, str]] = []

    class Watching(SafeUnpickler):
        def find_class(self, mod: str, nm: str) -> Any:
            found = super().find_class(mod, nm)  # raises for anything not allowed
            returned.append(("builtins" if mod == "__builtin__" else mod, nm))
            return found

    forged = b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n)R."
    for data in (raw, forged):
        try:
            Watching(io.BytesIO(data)).load()
        except Exception:  # noqa: BLE001 - refusing is fine; what it loaded is checked below
            pass
        try:
            safe_unpickle(data)
        except LegacyDataError:
            pass
        else:
            assert data is not forged
    assert set(returned) <= _ALLOWED_GLOBALS
