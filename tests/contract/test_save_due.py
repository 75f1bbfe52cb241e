"""``store.save_due(session)``: whether ``save`` would write, answered without I/O, the same
decision ``save`` makes (every store kind, both flavours)."""

from __future__ import annotations

from .conftest import Backend, RedisBackend


def test_save_due_is_saves_own_decision(backend: Backend) -> None:
    store = backend.make(ttl=100, refresh_fraction=0.5)
    anonymous = store.create()
    assert store.save_due(anonymous) is False  # a new, untouched session is never written
    anonymous["user"] = "ada"
    assert store.save_due(anonymous) is True
    assert store.save(anonymous) is True
    loaded = store.load(anonymous.id)
    assert store.save_due(loaded) is False
    if isinstance(backend, RedisBackend):
        backend.client.expire(store.prefix + loaded.id, 10)  # so a refresh would be visible in Redis
    backend.age(loaded, 45)  # 45 s of 100: not yet due
    marker = backend.write_marker(store, loaded.id)
    assert store.save_due(loaded) is False
    assert store.save(loaded) is False
    assert not backend.wrote_since(store, loaded.id, marker)
    backend.age(loaded, 6)  # 51 s of 100: due
    assert store.save_due(loaded) is True
    assert store.save(loaded) is True
    assert store.save_due(loaded) is False
    loaded["n"] = 1
    assert store.save_due(loaded) is True
