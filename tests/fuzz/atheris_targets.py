"""Coverage-guided fuzzing of the decoders of untrusted bytes with atheris (on demand, not in CI).

    pip install atheris        # builds/installs on Linux x86_64 with CPython 3.8-3.11+
    python -m tests.fuzz.atheris_targets envelope -max_total_time=60
    python -m tests.fuzz.atheris_targets encrypted -max_total_time=60
    python -m tests.fuzz.atheris_targets message  -atheris_runs=200000
    python -m tests.fuzz.atheris_targets cookie   -max_total_time=60
    python -m tests.fuzz.atheris_targets legacy   -max_total_time=60

(run from the repository root; the arguments after the target name go to libFuzzer).
Each target checks the same contract as the hypothesis properties in ``test_fuzz.py``:
the documented result or the documented error, anything else is a crash that libFuzzer
reports with the input that caused it.  A run that stops on its own (-max_total_time,
-atheris_runs) without a report found nothing.  libFuzzer's -rss_limit_mb (2048 by
default) turns unbounded memory into a reported crash, and -timeout (seconds per
input) a hang.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

TARGETS: dict[str, Callable[[bytes], None]] = {}


def target(fn: Callable[[bytes], None]) -> Callable[[bytes], None]:
    TARGETS[fn.__name__] = fn
    return fn


@target
def envelope(data: bytes) -> None:
    """Stored session bytes: a Session or SessionCorrupt, under both codecs, compressed or not."""
    from fastsess.errors import SessionCorrupt
    from fastsess.serializers import JSONSerializer, MsgpackSerializer

    from .targets import SID

    for serializer in (MsgpackSerializer(max_size=1 << 20), JSONSerializer(max_size=1 << 20)):
        # the first byte picks a framing: raw bytes, or a valid header for either codec (zlib flag or not)
        choice = data[:1]
        body = data[1:]
        headers = [b"", b"FS\x01\x01\x00", b"FS\x01\x02\x00", b"FS\x01\x01\x01", b"FS\x01\x02\x01"]
        raw = headers[choice[0] % len(headers)] + body if choice else body
        try:
            session = serializer.decode(SID, raw)
        except SessionCorrupt:
            continue
        assert isinstance(dict(session), dict) and type(session.ttl) is int and session.ttl >= 1


_ENCRYPTED: list[object] = []


@target
def encrypted(data: bytes) -> None:
    """Stored bytes under a store with ``encryption=``: SessionCorrupt unless authentic for the key.

    The first byte picks a framing: raw bytes, the encrypted header with the store's key id
    (or another), a real encrypted session with the input XORed over it (the fuzzer flips
    bits of an authentic value), or the input sealed authentically (the decoder behind the
    authentication: a Session or SessionCorrupt).
    """
    from fastsess._core.keys import KeySpace
    from fastsess.crypto import PREFIX, Encryption, key_id
    from fastsess.errors import SessionCorrupt
    from fastsess.serializers import MsgpackSerializer
    from fastsess.session import Session

    from .targets import SID

    if not _ENCRYPTED:
        keys = KeySpace("fz:")
        enc = Encryption([bytes(range(1, 33))])
        codec = enc.bind(MsgpackSerializer(max_size=1 << 20, compress_threshold=64), keys)
        real = codec.encode(Session(SID, {"user": 1, "roles": ["a", "b"], "blob": b"x" * 80}, ttl=60))
        _ENCRYPTED.extend((enc, codec, real, keys.key(SID).encode(), PREFIX + bytes.fromhex(key_id(bytes(range(1, 33))))))
    enc, codec, real, aad, header = _ENCRYPTED
    choice, body = (data[0] % 5, data[1:]) if data else (0, b"")
    authentic = False
    if choice == 1:
        raw = header + body  # type: ignore[operator]
    elif choice == 2:
        raw = b"FS\x02\x00\x00\x00\x00" + body
    elif choice == 3:
        flipped = bytearray(real)  # type: ignore[arg-type]
        for i, b in enumerate(body[: len(flipped)]):
            flipped[i] ^= b
        raw = bytes(flipped) + body[len(flipped):]
        authentic = raw == real
    elif choice == 4:
        raw = enc.seal(body, aad)  # type: ignore[attr-defined]
        authentic = True
    else:
        raw = body
    try:
        session = codec.decode(SID, raw)  # type: ignore[attr-defined]
    except SessionCorrupt:
        assert not authentic or choice == 4
        return
    assert authentic, "unauthenticated bytes decoded"
    assert isinstance(dict(session), dict) and type(session.ttl) is int and session.ttl >= 1


@target
def message(data: bytes) -> None:
    """Pub/sub payloads: a well-formed message map or None."""
    from .targets import check_message, decode_message

    check_message(data, decode_message(data))


@target
def cookie(data: bytes) -> None:
    """Cookie values: the id that was signed, or None."""
    from fastsess.contrib._common import CookieSigner

    from .targets import SID

    signer = CookieSigner("atheris secret")
    signed = signer.sign(SID)
    # the first byte keeps that many characters of a valid cookie in front of the input,
    # so the fuzzer also reaches the HMAC comparison, not only the form check
    keep = data[0] % (len(signed) + 1) if data else 0
    value = signed[:keep] + data[1:].decode("utf-8", "surrogateescape")
    got = signer.unsign(value)
    assert got is None or (got == SID and value == signed) or signer.sign(got) == value


@target
def legacy(data: bytes) -> None:
    """Legacy session bytes (migration): a dict of storable values or LegacyDataError."""
    from fastsess.contrib._legacy import LegacyDataError, decode_legacy

    try:
        decode_legacy(data, allow_pickle=bool(data[:1]) and data[0] & 1 == 1)
    except LegacyDataError:
        pass


def main() -> None:
    """Run the target named by the first argument under atheris (see the module doc)."""
    import atheris

    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m tests.fuzz.atheris_targets {{{','.join(TARGETS)}}} [libFuzzer flags]")
    fn = TARGETS[sys.argv[1]]
    with atheris.instrument_imports():
        import fastsess.contrib._common  # noqa: F401 - instrumented for coverage
        import fastsess.contrib._legacy  # noqa: F401
        import fastsess.crypto  # noqa: F401
        import fastsess.serializers  # noqa: F401

        from . import targets  # noqa: F401
    atheris.Setup([sys.argv[0], *sys.argv[2:]], fn)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
