"""The I/O-free parts of tracking and sharding: ``TrackedChanges``, slots and shard
channels, and the wait before a changed slot map is used (``adopt_shards``)."""

from __future__ import annotations

from redis.crc import key_slot as redis_key_slot

from fastsess import ClusterConfig
from fastsess._core.coherence import CoherentCache
from fastsess._core.keys import new_session_id
from fastsess._core.listener import CoordinatorBase, ListenerMachine, Tracked
from fastsess._core.slots import SLOTS, ShardMap, key_slot, shard_channel, shard_tag
from fastsess._core.tracking import TrackedChanges

PREFIX = "p:"


def key(session_id: str) -> bytes:
    return (PREFIX + session_id).encode()


def test_slots_match_redis_py_including_hash_tags() -> None:
    for k in (b"abc", b"p:{x}y", b"{}a", b"a{}b{c}", b"{a}", b"p:" + new_session_id().encode()):
        assert key_slot(k) == redis_key_slot(k)


def test_one_shard_channel_per_master_named_by_its_first_owned_tag() -> None:
    thirds = [[(0, 5460)], [(5461, 10922)], [(10923, 16383)]]
    shards = ShardMap("inv", thirds)
    assert len(shards.channels) == 3 and len(set(shards.channels)) == 3
    for ranges, name in zip(thirds, shards.channels):
        first, last = ranges[0]
        tag = name[1:name.index("}")]
        assert name == shard_channel("inv", tag) and first <= key_slot(tag.encode()) <= last
        assert tag == shard_tag(set(range(first, last + 1)))
        assert all(shards.by_slot[slot] == name for slot in (first, last))
    assert len(shards.by_slot) == SLOTS
    assert shards.channel_for("p:abc") == shards.by_slot[key_slot(b"p:abc")]


def test_own_echo_spares_the_next_notification_on_its_connection_only() -> None:
    t = TrackedChanges(PREFIX)
    a, b, c = new_session_id(), new_session_id(), new_session_id()
    t.echoed(0, a)
    assert t.notified(1, [key(a)]) == [a]  # another connection: not ours
    assert t.notified(0, [key(a), key(b)]) == [b]  # a spared, b evicted
    assert t.notified(0, [key(a)]) == [a]  # the mark was used up
    t.echoed(0, c)
    assert t.notified(0, [key(b)]) == [b]  # a mark not named by the next notification is dropped
    assert t.notified(0, [key(c)]) == [c]
    assert (t.own, t.evicted, t.notifications) == (1, 5, 5)


def test_first_saves_are_marked_until_named() -> None:
    t = TrackedChanges(PREFIX)
    new = new_session_id()
    t.expect(new)
    assert t.notified(2, [key(new)]) == []  # any connection: the writer does not know which
    assert t.notified(2, [key(new)]) == [new]


def test_foreign_keys_and_malformed_notifications() -> None:
    t = TrackedChanges(PREFIX)
    sid = new_session_id()
    assert t.notified(0, [b"other:" + sid.encode(), b"p:short", 42, key(sid)]) == [sid]
    assert t.notified(0, key(sid)) == [sid]  # a single key
    t.echoed(0, sid)
    t.expect(new_session_id())
    assert t.notified(0, None) is None and t.flushes == 1  # FLUSHDB: flush, forget the marks
    assert t.notified(0, [key(sid)]) == [sid]


def coordinator(**config: object) -> CoordinatorBase:
    cfg = ClusterConfig(track_external_changes=True, subscribe_timeout=1.0, **config)  # type: ignore[arg-type]
    return CoordinatorBase(cfg, CoherentCache(100, 30.0), prefix=PREFIX)


def test_the_coordinator_applies_notifications_to_its_cache() -> None:
    c = coordinator()
    assert c.cache is not None and c.tracking is not None
    ids = [new_session_id() for _ in range(3)]
    for sid in ids:
        c.cache.fill(sid, {"x": 1}, c.cache.fill_token(sid), 30.0)
    c.apply([Tracked([key(ids[0])])])
    assert c.cache.get(ids[0]) is None and c.cache.get(ids[1]) is not None
    c.expect_write(ids[1])
    c.apply_tracked([key(ids[1])])
    assert c.cache.get(ids[1]) is not None
    c.apply_tracked(None)
    assert len(c.cache) == 0
    c.apply_tracked(object())  # malformed: dropped, never raises
    assert ListenerMachine(c.config, c.machine.backoff).tracked([key(ids[0])], 0.0) == (Tracked([key(ids[0])]),)


def test_a_changed_slot_map_waits_four_subscribe_timeouts() -> None:
    c = coordinator()
    first = ShardMap(c.channel, [[(0, 8191)], [(8192, 16383)]])
    c.adopt_shards(first, 100.0)
    assert c.shards is first  # the first map: at once
    k = "p:" + new_session_id()
    assert c.channel_for(k) == first.channel_for(k)
    c.adopt_shards(ShardMap(c.channel, [[(0, 8191)], [(8192, 16383)]]), 101.0)
    assert c.shards is not None  # the same map again (a reconnect, a failover): at once
    moved = ShardMap(c.channel, [[(0, 4095)], [(4096, 16383)]])
    c.adopt_shards(moved, 102.0)
    assert c.shards is None and c.channel_for(k) == c.channel  # plain PUBLISH meanwhile
    c.shards_due(105.9)
    assert c.shards is None
    c.shards_due(106.0)
    assert c.shards is moved
    c.adopt_shards(None, 105.0)  # classic pub/sub (older servers)
    assert c.shards is None and c.channel_for(k) == c.channel
