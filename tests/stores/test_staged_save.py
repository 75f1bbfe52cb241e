"""``RedisStore``'s staged save (``_core.ops.STAGED_SAVE``): a session of ``STAGE_FROM``
bytes or more is SET under a staged name and RENAMEd over its key by the compare-and-set
script, both in one round trip on one connection.  The CAS contract itself runs both ways
(tests/contract/test_cas_contract.py); here: the drivers' own exchange (its connection
stays in step after an error reply, a cancellation or a client that is not a plain pooled
one) and the staged copy's name and TTL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

import fastsess.asyncio as fa
from fastsess import RedisStore
from fastsess._core import ops
from fastsess.errors import SessionCorrupt

BIG = {"blob": "x" * (ops.STAGE_FROM + 100)}


@pytest.fixture
def store(redis_url: str, prefix: str) -> Iterator[RedisStore]:
    s = RedisStore(url=redis_url, prefix=prefix)
    yield s
    s.close()


def staged_copies(client: redis.Redis, prefix: str) -> list[bytes]:
    return list(client.scan_iter(match=prefix + "*~*"))


def test_a_staged_save_keeps_the_ttl_and_leaves_no_copy(store: RedisStore, redis_client: redis.Redis, prefix: str) -> None:
    s = store.create(dict(BIG), ttl=500)
    assert store.save(s) is True
    loaded = store.load(s.id)
    assert loaded is not None
    loaded["k"] = 1
    loaded.ttl = 700
    assert store.save(loaded) is True
    assert 690 <= redis_client.ttl(prefix + s.id) <= 700  # RENAME carried the staged copy's TTL
    assert staged_copies(redis_client, prefix) == []
    assert store.load(s.id).data == {**BIG, "k": 1}  # type: ignore[union-attr]


def test_staged_names_are_fresh_and_outside_the_id_glob() -> None:
    key = "p:" + "a" * 43
    names = {ops.staged_key(key) for _ in range(1000)}
    assert len(names) == 1000
    assert all(n.startswith(key + "~") and len(n) == len(key) + 17 for n in names)


def test_an_error_reply_keeps_the_connection_in_step(store: RedisStore, redis_client: redis.Redis, prefix: str) -> None:
    """The script fails (the key holds a hash): SessionCorrupt, and the next command on the
    same pooled connection reads its own reply, not the script's."""
    s = store.create(dict(BIG))
    assert store.save(s) is True
    loaded = store.load(s.id)
    assert loaded is not None
    redis_client.delete(prefix + s.id)
    redis_client.hset(prefix + s.id, "f", "v")
    loaded["k"] = 1
    with pytest.raises(SessionCorrupt):
        store.save(loaded)
    assert staged_copies(redis_client, prefix) == []  # dropped by the failing script
    other = store.create({"n": 1})
    assert store.save(other) is True
    assert store.load(other.id).data == {"n": 1}  # type: ignore[union-attr]


@pytest.mark.parametrize("single", [False, True])
def test_a_single_connection_client_saves_through_a_pipeline(redis_url: str, prefix: str, single: bool) -> None:
    client = redis.Redis.from_url(redis_url, single_connection_client=single)
    try:
        store = RedisStore(client=client, prefix=prefix)
        s = store.create(dict(BIG))
        assert store.save(s) is True
        a, b = store.load(s.id), store.load(s.id)
        assert a is not None and b is not None
        a["a"], b["b"] = 1, 1
        assert store.save(a) is True and store.save(b) is True  # the second one conflicts first
        assert store.load(s.id).data == {**BIG, "a": 1, "b": 1}  # type: ignore[union-attr]
    finally:
        client.close()


async def test_async_cancelled_staged_saves_leave_the_store_usable(redis_url: str, redis_client: redis.Redis, prefix: str) -> None:
    """Cancelled at any point of the exchange, a staged save wrote all of it or none of it,
    and the store's connections carry no unread reply into later commands."""
    store: Any = fa.RedisStore(url=redis_url, prefix=prefix)
    try:
        s = store.create(dict(BIG))
        assert await store.save(s) is True
        for steps in range(12):
            loaded = await store.load(s.id)
            loaded["k"] = steps
            task = asyncio.ensure_future(store.save(loaded))
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            now = await store.load(s.id)
            assert now.data["blob"] == BIG["blob"]  # the old value or the new one, whole
            other = store.create({"n": steps})
            assert await store.save(other) is True
            assert (await store.load(other.id)).data == {"n": steps}
        last = await store.load(s.id)
        last["k"] = "end"
        assert await store.save(last) is True
        assert (await store.load(s.id)).data["k"] == "end"
    finally:
        await store.close()


@pytest.mark.parametrize("single", [False, True])
async def test_async_clients_stage_too(redis_url: str, redis_client: redis.Redis, prefix: str, single: bool) -> None:
    client = redis.asyncio.Redis.from_url(redis_url, single_connection_client=single)
    store: Any = fa.RedisStore(client=client, prefix=prefix)
    try:
        s = store.create(dict(BIG))
        assert await store.save(s) is True
        a, b = await store.load(s.id), await store.load(s.id)
        a["a"], b["b"] = 1, 1
        assert await store.save(a) is True and await store.save(b) is True
        assert (await store.load(s.id)).data == {**BIG, "a": 1, "b": 1}
        redis_client.script_flush()
        a = await store.load(s.id)
        a["c"] = 1
        assert await store.save(a) is True
        assert staged_copies(redis_client, prefix) == []
    finally:
        await store.close()
        await client.aclose()
