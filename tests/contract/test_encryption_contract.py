"""Encryption at rest (``encryption=Encryption([...])``) for every store kind, sync and asyncio.

The stores behave exactly as without encryption (round trip, regenerate, touch,
delete); what reaches Redis is the encrypted envelope, bound to its key: the same
bytes under another id, another prefix, or read with other keys are ``SessionCorrupt``.
``MemoryStore`` accepts and checks the option (nothing leaves its process).
"""

from __future__ import annotations

from typing import Any

import pytest

from fastsess import Encryption, SessionCorrupt
from fastsess.crypto import OVERHEAD, PREFIX, key_id
from fastsess.errors import ConfigError
from fastsess.stores.base import new_session_id

from ..support.waiting import wait_until
from .conftest import Backend, ClusteredBackend, RedisBackend

K1, K2 = Encryption.generate_key(), Encryption.generate_key()
SECRET = "card 4111-1111-1111-1111"  # a value that must never appear in Redis in clear


def saved(store: Any, data: dict[str, Any] | None = None) -> Any:
    s = store.create({"user_id": 42, "note": SECRET} if data is None else data)
    assert store.save(s) is True
    return s


def raw(backend: RedisBackend, store: Any, sid: str) -> bytes:
    value = backend.client.get(store.prefix + sid)
    assert isinstance(value, bytes)
    return value


def plant(backend: RedisBackend, store: Any, sid: str, value: bytes) -> None:
    """Write ``value`` under ``sid`` behind the store's back (and drop its cached copy: no
    invalidation is sent for such a write)."""
    backend.client.set(store.prefix + sid, value, ex=60)
    if isinstance(backend, ClusteredBackend):
        store.evict_from_cache(sid)


def test_round_trip_regenerate_touch_delete(backend: Backend) -> None:
    store = backend.make(encryption=Encryption([K1]))
    s = saved(store)
    got = store.load(s.id)
    assert got is not None and dict(got) == {"user_id": 42, "note": SECRET}
    got["n"] = 1
    assert store.save(got) is True
    assert dict(store.load(s.id)) == {"user_id": 42, "note": SECRET, "n": 1}
    old = s.id
    store.regenerate(got)
    assert got.id != old and store.load(old) is None
    assert dict(store.load(got.id)) == {"user_id": 42, "note": SECRET, "n": 1}
    assert store.touch(got.id, 60) is True
    assert store.delete(got.id) is True and store.load(got.id) is None


def test_redis_holds_only_ciphertext_bound_to_its_key(redis_backend: RedisBackend) -> None:
    enc = Encryption([K1])
    store = redis_backend.make(encryption=enc)
    s = saved(store)
    value = raw(redis_backend, store, s.id)
    plain = store.serializer.encode(store.load(s.id))  # the same session unencrypted
    assert SECRET.encode() not in value and b"note" not in value
    assert value[:3] == PREFIX and value[3:7].hex() == key_id(K1) == enc.key_ids[0]
    assert len(value) == len(plain) + OVERHEAD
    # moved under another id of the same store: refused
    other = new_session_id()
    plant(redis_backend, store, other, value)
    with pytest.raises(SessionCorrupt, match="failed authentication"):
        store.load(other)
    # the same id under another prefix (another deployment sharing the keys): refused
    elsewhere = redis_backend.make(encryption=Encryption([K1]), prefix=store.prefix + "x:")
    plant(redis_backend, elsewhere, s.id, value)
    with pytest.raises(SessionCorrupt, match="failed authentication"):
        elsewhere.load(s.id)


def test_each_write_takes_a_fresh_nonce(redis_backend: RedisBackend) -> None:
    store = redis_backend.make(encryption=Encryption([K1]))
    s = saved(store)
    seen = {raw(redis_backend, store, s.id)}
    for _ in range(5):
        s.modified = True  # the same data every time: the nonce differs
        assert store.save(s) is True
        seen.add(raw(redis_backend, store, s.id))
    assert len({v[7:19] for v in seen}) == len(seen) == 6


def test_regenerate_re_encrypts_for_the_new_id(redis_backend: RedisBackend) -> None:
    store = redis_backend.make(encryption=Encryption([K1]))
    s = saved(store)
    before = raw(redis_backend, store, s.id)
    old = s.id
    store.regenerate(s)
    after = raw(redis_backend, store, s.id)
    assert redis_backend.client.get(store.prefix + old) is None
    assert after[7:19] != before[7:19]  # sealed again, not copied
    # the old ciphertext does not open under the new id, the new one does
    plant(redis_backend, store, s.id, before)
    with pytest.raises(SessionCorrupt):
        store.load(s.id)
    plant(redis_backend, store, s.id, after)
    assert dict(store.load(s.id)) == {"user_id": 42, "note": SECRET}


def test_keys_decide_who_can_read(redis_backend: RedisBackend) -> None:
    writer = redis_backend.make(encryption=Encryption([K1]))
    s = saved(writer)
    rotated = redis_backend.make(encryption=Encryption([K2, K1]))  # K1 still decrypts
    assert dict(rotated.load(s.id))["note"] == SECRET
    stranger = redis_backend.make(encryption=Encryption([K2]))
    with pytest.raises(SessionCorrupt, match=f"key id {key_id(K1)}, which is not among"):
        stranger.load(s.id)
    clear = redis_backend.make()
    with pytest.raises(SessionCorrupt, match="encrypted session, but this store has no encryption keys"):
        clear.load(s.id)


def test_plaintext_is_refused_unless_accepted(redis_backend: RedisBackend) -> None:
    clear = redis_backend.make()
    s = saved(clear)
    strict = redis_backend.make(encryption=Encryption([K1]))
    with pytest.raises(SessionCorrupt, match="accept_plaintext is off"):
        strict.load(s.id)
    migrating = redis_backend.make(encryption=Encryption([K1], accept_plaintext=True))
    got = migrating.load(s.id)
    assert got is not None and dict(got)["note"] == SECRET
    got["seen"] = True
    assert migrating.save(got) is True  # the next write encrypts it
    assert raw(redis_backend, migrating, s.id)[:3] == PREFIX
    assert dict(strict.load(s.id))["seen"] is True


def test_tampered_value_is_corrupt(redis_backend: RedisBackend) -> None:
    store = redis_backend.make(encryption=Encryption([K1]))
    s = saved(store)
    value = bytearray(raw(redis_backend, store, s.id))
    value[-1] ^= 1
    if isinstance(redis_backend, ClusteredBackend):
        assert store.load(s.id) is not None  # cached
        redis_backend.client.set(store.prefix + s.id, bytes(value), ex=60)
        assert dict(store.load(s.id))["note"] == SECRET  # a cache hit decrypts nothing
    plant(redis_backend, store, s.id, bytes(value))
    with pytest.raises(SessionCorrupt):
        store.load(s.id)


def test_nodes_with_the_same_keys_share_sessions(clustered: ClusteredBackend) -> None:
    a = clustered.make(name="A", encryption=Encryption([K1, K2]))
    b = clustered.make(name="B", encryption=Encryption([K2, K1]))
    s = saved(a)
    assert dict(b.load(s.id))["note"] == SECRET
    got = b.load(s.id)
    got["by"] = "B"
    assert b.save(got) is True  # encrypted with K2 now
    assert clustered.client.get(a.prefix + s.id)[3:7].hex() == key_id(K2)
    wait_until(lambda: dict(a.load(s.id)).get("by") == "B", 5, what="A to see B's write")


@pytest.mark.parametrize("bad", [[K1], "keys", b"k" * 32])
def test_encryption_must_be_an_encryption(backend: Backend, bad: Any) -> None:
    with pytest.raises(ConfigError, match="encryption must be an Encryption"):
        backend.make(encryption=bad)


def test_store_exposes_its_encryption_without_keys(backend: Backend) -> None:
    store = backend.make(encryption=Encryption([K1, K2]))
    assert store.encryption.key_ids == (key_id(K1), key_id(K2))
    assert K1.hex() not in repr(store.encryption) and K1.hex() not in repr(store)
    assert backend.make().encryption is None


def test_concurrent_saves_of_an_encrypted_session_lose_nothing(backend: Backend) -> None:
    """The compare-and-set works on the stored bytes, ciphertext included: the second save
    decrypts the first's write and re-applies its own changes on it."""
    store = backend.make(encryption=Encryption([K1]))
    s = saved(store, {"shared": 0})
    a, b = store.load(s.id), store.load(s.id)
    a["a"] = 1
    b["b"] = 2
    assert store.save(a) is True
    assert store.save(b) is True
    assert dict(store.load(s.id)) == {"shared": 0, "a": 1, "b": 2}
