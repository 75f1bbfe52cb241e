"""``fastsess.Encryption`` and the encrypted envelope: key checks, secrecy of the keys,
authentication of every byte, and the key rotation of docs/encryption.md step by step.

The stores' side (every kind, sync and asyncio) is tests/contract/test_encryption_contract.py;
any-bytes fuzzing is tests/fuzz/test_fuzz_encrypted.py.
"""

from __future__ import annotations

import base64
import copy
import logging
import pickle
import sys
import time
import traceback
from typing import Any

import pytest
import redis

import fastsess
from fastsess import Encryption, RedisStore, Session, SessionCorrupt
from fastsess._core.keys import KeySpace
from fastsess.crypto import HEADER_SIZE, NONCE_SIZE, OVERHEAD, PREFIX, EncryptedSerializer, encryption_from_env, encryption_from_setting, key_id
from fastsess.errors import ConfigError
from fastsess.serializers import JSONSerializer, MsgpackSerializer
from fastsess.stores.base import new_session_id

K1, K2, K3 = (bytes(range(i, i + 32)) for i in (100, 140, 180))  # fixed, non-printable test keys
SID = new_session_id()
DATA = {"user_id": 7, "roles": ["admin"], "token": b"\x00\xff"}


def spellings(key: bytes) -> list[str]:
    """Every way a key could leak into text: repr, hex, base64 (both alphabets)."""
    return [repr(key), key.hex(), key.hex().upper(), base64.b64encode(key).decode(), base64.urlsafe_b64encode(key).decode(), str(list(key))]


def assert_no_key_in(text: str, *keys: bytes) -> None:
    for key in keys:
        for spelling in spellings(key):
            assert spelling not in text


def sealed_session(enc: Encryption, serializer: Any = None, prefix: str = "p:", sid: str = SID, **kw: Any) -> tuple[EncryptedSerializer, bytes]:
    codec = enc.bind(serializer or MsgpackSerializer(), KeySpace(prefix))
    assert isinstance(codec, EncryptedSerializer)
    return codec, codec.encode(Session(sid, dict(DATA, **kw), ttl=60))


# --- keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ([], "at least one"),
        (K1, "must be a list of 32-byte keys .* not bytes"),
        (bytearray(K1), "must be a list .* not bytearray"),
        ("c2VjcmV0", "must be a list .* not str"),
        ({K1}, "must be a list .* not set"),
        (None, "must be a list .* not NoneType"),
        ([K1, "c2VjcmV0"], "key #2 must be bytes, not str"),
        ([K1, 12345], "key #2 must be bytes, not int"),
        ([K1[:16]], "key #1 is 16 bytes long; AES-256-GCM needs exactly 32"),
        ([K1 + b"\x00"], "key #1 is 33 bytes long"),
        ([b"correct horse battery staple 123"], "key #1 is printable text"),
        ([K1, K2, K1], "keys #1 and #3 are the same key"),
    ],
)
def test_bad_keys_are_refused_clearly_and_never_shown(keys: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Encryption(keys)
    text = "".join(traceback.format_exception(info.value)) + repr(info.value)
    assert_no_key_in(text, K1, K2)
    assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__)


def test_good_keys_tuple_and_bytearray() -> None:
    enc = Encryption((bytearray(K1), K2))
    assert enc.key_ids == (key_id(K1), key_id(K2)) and enc.accept_plaintext is False
    with pytest.raises(ConfigError, match="accept_plaintext must be a bool"):
        Encryption([K1], accept_plaintext="yes")  # type: ignore[arg-type]


def test_key_ids_are_short_stable_and_independent_of_order() -> None:
    assert key_id(K1) == Encryption([K1]).key_ids[0] == Encryption([K2, K1]).key_ids[1]
    assert len(key_id(K1)) == 8 and int(key_id(K1), 16) >= 0 and key_id(K1) != key_id(K2)
    assert key_id(K1) not in K1.hex()  # not a piece of the key
    _, raw = sealed_session(Encryption([K2, K1]))
    assert raw[:3] == PREFIX and raw[3:7].hex() == key_id(K2)


def test_keys_never_appear_in_repr_pickle_or_copy() -> None:
    enc = Encryption([K1, K2])
    assert repr(enc) == f"Encryption(key_ids=['{key_id(K1)}', '{key_id(K2)}'], accept_plaintext=False)"
    assert_no_key_in(repr(enc) + str(enc), K1, K2)
    for slot in type(enc).__slots__:
        assert_no_key_in(repr(getattr(enc, slot)), K1, K2)
    for attempt in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError, match="cannot be pickled"):
            attempt(enc)


def test_generate_key_and_from_base64() -> None:
    a, b = Encryption.generate_key(), Encryption.generate_key()
    assert len(a) == 32 and a != b
    texts = [base64.b64encode(K1).decode(), base64.urlsafe_b64encode(K2).decode() + "\n", base64.b64encode(K3)]
    assert Encryption.from_base64(texts).key_ids == (key_id(K1), key_id(K2), key_id(K3))
    for bad, message in [
        (["not base64!"], "key #1 is not valid base64"),
        ([base64.b64encode(K1).decode(), "é"], "key #2 is not valid base64"),
        ([base64.b64encode(K1[:16]).decode()], "key #1 is 16 bytes long"),
        ([123], "key #1 must be a base64 str"),
        (base64.b64encode(K1).decode(), "not a single text"),
        ([], "at least one"),
    ]:
        with pytest.raises(ConfigError, match=message) as info:
            Encryption.from_base64(bad)
        assert_no_key_in(str(info.value), K1)


def test_settings_values() -> None:
    enc = Encryption([K1])
    assert encryption_from_setting(None) is None and encryption_from_setting(enc) is enc
    assert encryption_from_setting([base64.b64encode(K1).decode()]).key_ids == (key_id(K1),)
    assert encryption_from_setting([K2]).key_ids == (key_id(K2),)
    with pytest.raises(ConfigError, match="at least one"):
        encryption_from_setting([])  # an empty list is a mistake, not "no encryption"
    assert encryption_from_env({}) is None and encryption_from_env({"FASTSESS_ENCRYPTION_KEYS": " "}) is None
    got = encryption_from_env({"FASTSESS_ENCRYPTION_KEYS": base64.b64encode(K2).decode() + "," + base64.b64encode(K1).decode()})
    assert got is not None and got.key_ids == (key_id(K2), key_id(K1))
    with pytest.raises(ConfigError, match="^FASTSESS_ENCRYPTION_KEYS: encryption key #1 is not valid base64$"):
        encryption_from_env({"FASTSESS_ENCRYPTION_KEYS": "nope!"})


def test_missing_cryptography_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    with pytest.raises(ConfigError, match=r"pip install 'fastsess\[crypto\]'"):
        Encryption([K1])


def test_exported() -> None:
    assert fastsess.Encryption is Encryption and "Encryption" in fastsess.__all__


# --- the envelope ------------------------------------------------------------------------------


@pytest.mark.parametrize("serializer", [MsgpackSerializer(), JSONSerializer(), MsgpackSerializer(compress_threshold=0), JSONSerializer(compress_threshold=0)])
def test_round_trip_every_codec(serializer: Any) -> None:
    codec, raw = sealed_session(Encryption([K1]), serializer, big="x" * 500)
    plain = codec.encryption.open(raw, ("p:" + SID).encode())
    assert plain[:3] == b"FS\x01" and len(raw) == len(plain) + OVERHEAD
    assert serializer.decode(SID, plain).id == SID
    got = codec.decode(SID, raw)
    assert dict(got) == dict(DATA, big="x" * 500) and got.id == SID and got.ttl == 60
    assert b"x" * 50 not in raw and b"user_id" not in raw


def test_every_byte_is_authenticated() -> None:
    codec, raw = sealed_session(Encryption([K1]))
    for i in range(len(raw)):
        for bit in (0x01, 0x80):
            changed = bytearray(raw)
            changed[i] ^= bit
            with pytest.raises(SessionCorrupt):
                codec.decode(SID, bytes(changed))


def test_every_truncation_and_extension_is_corrupt() -> None:
    codec, raw = sealed_session(Encryption([K1]))
    for n in range(len(raw)):
        with pytest.raises(SessionCorrupt):
            codec.decode(SID, raw[:n])
    with pytest.raises(SessionCorrupt):
        codec.decode(SID, raw + b"\x00")


def test_bound_to_the_redis_key() -> None:
    enc = Encryption([K1])
    codec, raw = sealed_session(enc, prefix="app:")
    assert codec.decode(SID, raw).id == SID
    with pytest.raises(SessionCorrupt, match="failed authentication"):
        codec.decode(new_session_id(), raw)  # another id
    other_prefix = enc.bind(MsgpackSerializer(), KeySpace("app2:"))
    with pytest.raises(SessionCorrupt, match="failed authentication"):
        other_prefix.decode(SID, raw)


def test_nonce_is_fresh_for_every_write() -> None:
    codec = Encryption([K1]).bind(MsgpackSerializer(), KeySpace("p:"))
    session = Session(SID, DATA, ttl=60)
    values = [codec.encode(session) for _ in range(200)]
    nonces = {v[HEADER_SIZE:HEADER_SIZE + NONCE_SIZE] for v in values}
    assert len(nonces) == 200 and len(set(values)) == 200


def test_size_is_checked_before_decrypting() -> None:
    codec = Encryption([K1]).bind(MsgpackSerializer(max_size=1000), KeySpace("p:"))
    assert isinstance(codec, EncryptedSerializer)
    raw = PREFIX + bytes.fromhex(key_id(K1)) + b"\x00" * (codec.max_sealed + 1 - HEADER_SIZE)
    with pytest.raises(SessionCorrupt, match="too large"):
        codec.decode(SID, raw)


def test_corrupt_messages_hold_no_key_no_id_no_data() -> None:
    codec, raw = sealed_session(Encryption([K1]))
    stranger = Encryption([K2]).bind(MsgpackSerializer(), KeySpace("p:"))
    cases = [(codec, raw[:-1]), (codec, raw[:10]), (stranger, raw), (codec, b"garbage"), (codec, MsgpackSerializer().encode(Session(SID, DATA, ttl=60)))]
    for c, value in cases:
        with pytest.raises(SessionCorrupt) as info:
            c.decode(SID, value)
        text = "".join(traceback.format_exception(info.value))
        assert_no_key_in(text, K1, K2)
        assert SID not in text and "user_id" not in text
        assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__)


# --- in a store ------------------------------------------------------------------------------


def test_nothing_is_logged_about_keys(redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = RedisStore(url=redis_url, prefix=prefix, encryption=Encryption([K1, K2]))
    try:
        s = store.create({"a": 1})
        store.save(s)
        store.load(s.id)
        store.regenerate(s)
        store.client.set(prefix + s.id, b"FS\x02" + b"\x00" * 40)
        with pytest.raises(SessionCorrupt):
            store.load(s.id)
        assert_no_key_in(caplog.text + repr(store) + repr(vars(store)), K1, K2)
    finally:
        store.close()


def test_rotation_step_by_step(redis_url: str, prefix: str) -> None:
    """docs/encryption.md, "Rotating keys": every step keeps every live session readable on
    every node, including the nodes not yet redeployed; skipping a step does not."""
    lifetime = 2  # the longest session lifetime (ttl), in seconds, so the test can wait it out
    old, new = K1, K2
    stores: list[RedisStore] = []

    def node(keys: list[bytes]) -> RedisStore:
        stores.append(RedisStore(url=redis_url, prefix=prefix, ttl=lifetime, encryption=Encryption(keys)))
        return stores[-1]

    raw = redis.Redis.from_url(redis_url)

    def written_with(sid: str) -> str:
        value = raw.get(prefix + sid)
        assert value is not None
        return value[3:7].hex()

    def readable_by_all(sids: list[str], nodes: list[RedisStore]) -> None:
        for sid in sids:
            for n in nodes:
                assert n.load(sid) is not None

    try:
        # 0. every node has [old]
        a0, b0 = node([old]), node([old])
        live = [a0.create({"n": i}) for i in range(3)]
        for s in live:
            a0.save(s)
        # 1. add the new key SECOND, deploy node by node: old-only and [old, new] nodes coexist,
        #    both still encrypt with the old key, so either reads what the other wrote
        a1 = node([old, new])
        s1 = a1.create({"from": "step 1"})
        a1.save(s1)
        assert written_with(s1.id) == key_id(old)
        ids = [s.id for s in live] + [s1.id]
        readable_by_all(ids, [a1, b0])
        b1 = node([old, new])  # step 1 deployed everywhere
        # (skipping step 1: a node encrypting with the new key while another has only the old key)
        too_early = node([new, old])
        s_early = too_early.create({"x": 1})
        too_early.save(s_early)
        with pytest.raises(SessionCorrupt, match="not among this store's keys"):
            b0.load(s_early.id)
        # 2. move the new key FIRST, deploy node by node: [new, old] and [old, new] nodes coexist
        a2 = node([new, old])
        s2 = a2.create({"from": "step 2"})
        a2.save(s2)
        assert written_with(s2.id) == key_id(new)
        readable_by_all([*ids, s2.id], [a2, b1])
        touched = a2.load(live[0].id)
        touched["seen"] = True
        a2.save(touched)  # any write re-encrypts with the new key
        assert written_with(touched.id) == key_id(new)
        b2 = node([new, old])  # step 2 deployed everywhere
        # 3. wait the longest session lifetime: every session written with the old key is gone
        #    (each write since step 2 used the new key)
        old_value = raw.get(prefix + live[1].id)
        deadline = time.monotonic() + lifetime + 5
        while any(raw.exists(prefix + s.id) for s in live[1:]) and time.monotonic() < deadline:
            time.sleep(0.05)
        fresh = [b2.create({"from": "step 3"}), a2.create({"from": "step 3"})]
        b2.save(fresh[0])
        a2.save(fresh[1])
        in_use = key_ids_in_use(raw, prefix)
        assert list(in_use) == [key_id(new)] and in_use[key_id(new)] >= 2  # no old-key session left
        # 4. remove the old key: the live sessions still load
        a4 = node([new])
        for s in fresh:
            assert dict(a4.load(s.id)) == {"from": "step 3"}
        # (removing it before the wait was over would have logged out whoever still had an
        # old-key session: what live[1] would have met)
        raw.set(prefix + live[1].id, old_value, ex=60)
        with pytest.raises(SessionCorrupt, match=f"key id {key_id(old)}, which is not among"):
            a4.load(live[1].id)
    finally:
        raw.close()
        for s in stores:
            s.close()


def key_ids_in_use(client: redis.Redis, prefix: str) -> dict[str, int]:
    """docs/encryption.md's check (verbatim): how many live sessions each key id encrypted
    ("plain": unencrypted), reading 7 bytes of each session key."""
    from collections import Counter

    counts: Counter[str] = Counter()
    for key in client.scan_iter(match=prefix + "?" * 43, count=1000):
        head = client.getrange(key, 0, 6)
        if not head:
            continue  # expired since the scan
        counts[head[3:].hex() if head[:3] == b"FS\x02" else "plain"] += 1
    return dict(counts)


def test_turning_encryption_on_and_off_logs_nobody_out(redis_url: str, prefix: str) -> None:
    """docs/encryption.md, "Turning encryption on (or off) for live sessions": at every step
    every node reads every live session, the nodes of the step before included."""
    raw = redis.Redis.from_url(redis_url)
    stores: list[RedisStore] = []

    def node(encryption: Encryption | None) -> RedisStore:
        stores.append(RedisStore(url=redis_url, prefix=prefix, encryption=encryption))
        return stores[-1]

    def write(store: RedisStore, n: int) -> list[str]:
        made = [store.create({"n": i}) for i in range(n)]
        for s in made:
            store.save(s)
        return [s.id for s in made]

    def all_read(ids: list[str], *nodes: RedisStore) -> None:
        for sid in ids:
            for n in nodes:
                assert n.load(sid) is not None

    try:
        plain = node(None)
        ids = write(plain, 3)
        # on, step 1: read both, still write plain (deployed next to the old nodes)
        step1 = node(Encryption([K1], write_plaintext=True))
        assert repr(step1.encryption).endswith("accept_plaintext=True, write_plaintext=True)")
        ids += write(step1, 2)
        all_read(ids, plain, step1)
        assert key_ids_in_use(raw, prefix) == {"plain": 5}
        # on, step 2: write encrypted, still read plain (step-1 nodes read what these write)
        step2 = node(Encryption([K1], accept_plaintext=True))
        ids += write(step2, 2)
        all_read(ids, step1, step2)
        assert key_ids_in_use(raw, prefix) == {"plain": 5, key_id(K1): 2}
        # wait the longest session lifetime (here: every plain session is rewritten instead)
        for sid in ids[:5]:
            s = step2.load(sid)
            s.modified = True
            step2.save(s)
        assert key_ids_in_use(raw, prefix) == {key_id(K1): 7}
        # on, step 3: encrypted only
        on = node(Encryption([K1]))
        all_read(ids, on)
        # off: the same steps backwards
        off1 = node(Encryption([K1], accept_plaintext=True))
        all_read(ids, on, off1)
        off2 = node(Encryption([K1], write_plaintext=True))  # once off1 runs everywhere
        ids += write(off2, 1)
        all_read(ids, off1, off2)
        with pytest.raises(SessionCorrupt, match="accept_plaintext is off"):
            on.load(ids[-1])  # why off1 must be deployed everywhere first
        for sid in ids:
            s = off2.load(sid)
            s.modified = True
            off2.save(s)
        assert key_ids_in_use(raw, prefix) == {"plain": 8}
        all_read(ids, node(None), off1)
    finally:
        raw.close()
        for s in stores:
            s.close()
