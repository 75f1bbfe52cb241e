"""``ClusterConfig``: defaults (as documented in the README), validation, ``from_env``."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import pytest

from fastsess import ClusterConfig
from fastsess.config import ENV_PREFIX
from fastsess.errors import ConfigError


def test_defaults_match_the_documented_ones() -> None:
    c = ClusterConfig()
    assert c.enabled is True
    assert c.channel == "fastsess:invalidate"
    assert c.local_cache_enabled is True
    assert c.local_cache_ttl == 30.0
    assert c.local_cache_max_size == 10_000
    assert c.subscribe_timeout == 1.0
    assert c.reconnect_backoff == (0.05, 5.0)
    assert c.stale_if_error is False and c.stale_window == 0.0  # fail closed by default
    assert c.track_external_changes is False and c.sharded_pubsub is True


def test_a_channel_may_not_start_with_a_brace() -> None:
    """A leading "{" marks a shard channel in the write scripts."""
    with pytest.raises(ConfigError, match="shard channels"):
        ClusterConfig(channel="{app}:inv")
    assert ClusterConfig(channel="app:{x}").channel == "app:{x}"


def test_node_id_is_a_fresh_uuid4_hex_per_instance() -> None:
    ids = [ClusterConfig().node_id for _ in range(50)]
    assert len(set(ids)) == 50
    for node_id in ids:
        parsed = uuid.UUID(hex=node_id)
        assert parsed.hex == node_id and len(node_id) == 32
        assert parsed.version == 4


def test_is_frozen_and_replace_validates() -> None:
    c = ClusterConfig(node_id="web-1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.node_id = "web-2"  # type: ignore[misc]
    d = c.replace(channel="other")
    assert d.channel == "other" and d.node_id == "web-1" and c.channel == "fastsess:invalidate"
    with pytest.raises(ConfigError):
        c.replace(local_cache_ttl=0)


def test_valid_explicit_values_are_kept() -> None:
    c = ClusterConfig(
        enabled=False, node_id="web-3", channel="app:inv", local_cache_enabled=False, local_cache_ttl=5,
        local_cache_max_size=1, subscribe_timeout=0.01, reconnect_backoff=(1, 1), stale_if_error=True,
    )
    assert (c.enabled, c.node_id, c.channel, c.local_cache_enabled) == (False, "web-3", "app:inv", False)
    assert (c.local_cache_ttl, c.local_cache_max_size, c.subscribe_timeout) == (5, 1, 0.01)
    assert c.reconnect_backoff == (1, 1) and c.stale_if_error is True
    assert ClusterConfig(node_id="x" * 200).node_id == "x" * 200


INVALID: list[tuple[str, Any]] = [
    ("enabled", 1), ("enabled", "yes"), ("enabled", None),
    ("local_cache_enabled", 0), ("local_cache_enabled", "true"),
    ("stale_if_error", -1), ("stale_if_error", "no"), ("stale_if_error", "10"), ("stale_if_error", None),
    ("stale_if_error", float("inf")), ("stale_if_error", float("nan")), ("stale_if_error", -0.5), ("stale_if_error", 10**400),
    ("node_id", ""), ("node_id", None), ("node_id", 7), ("node_id", b"web"), ("node_id", "x" * 201),
    ("channel", ""), ("channel", None), ("channel", b"fastsess:invalidate"), ("channel", "c" * 201),
    ("local_cache_ttl", 0), ("local_cache_ttl", -1.0), ("local_cache_ttl", float("nan")),
    ("local_cache_ttl", float("inf")), ("local_cache_ttl", "30"), ("local_cache_ttl", True), ("local_cache_ttl", None),
    ("local_cache_max_size", 0), ("local_cache_max_size", -5), ("local_cache_max_size", 1.5),
    ("local_cache_max_size", 10.0), ("local_cache_max_size", True), ("local_cache_max_size", "100"),
    ("subscribe_timeout", 0), ("subscribe_timeout", -0.1), ("subscribe_timeout", float("inf")),
    ("subscribe_timeout", float("nan")), ("subscribe_timeout", "1"), ("subscribe_timeout", False),
    ("reconnect_backoff", (0.05,)), ("reconnect_backoff", (0.05, 5.0, 9.0)), ("reconnect_backoff", [0.05, 5.0]),
    ("reconnect_backoff", (0, 5.0)), ("reconnect_backoff", (0.05, -1)), ("reconnect_backoff", (5.0, 0.05)),
    ("reconnect_backoff", ("0.05", 5.0)), ("reconnect_backoff", (0.05, float("inf"))),
    ("reconnect_backoff", (float("nan"), 1.0)), ("reconnect_backoff", (True, 1.0)), ("reconnect_backoff", None),
    ("reconnect_backoff", 0.05),
    ("negative_cache_ttl", -1), ("negative_cache_ttl", False), ("negative_cache_ttl", "2"), ("negative_cache_ttl", float("nan")),
    ("negative_cache_ttl", float("inf")), ("negative_cache_max_size", 0), ("negative_cache_max_size", True),
    ("update_max_bytes", -1), ("update_max_bytes", 64 * 1024 + 1), ("update_max_bytes", 1.0), ("update_max_bytes", True),
    ("update_max_bytes", "4096"), ("warm_peers", 1), ("warm_peers", "true"), ("warm_peers", True),
    ("lease", 0), ("lease", -1.0), ("lease", float("inf")), ("lease", "1"), ("lease", None),
    ("replay_log_size", 0), ("replay_log_size", 1.5), ("replay_log_size", True), ("replay_log_size", "10"),
]


def test_zero_turns_the_negative_cache_and_update_mode_off() -> None:
    c = ClusterConfig(negative_cache_ttl=0, update_max_bytes=0)
    assert (c.negative_cache_ttl, c.update_max_bytes) == (0, 0)
    assert ClusterConfig().negative_cache_ttl == 2.0 and ClusterConfig().update_max_bytes == 0


@pytest.mark.parametrize(("field", "value"), INVALID, ids=[f"{f}={v!r}"[:60] for f, v in INVALID])
def test_every_invalid_field_raises_config_error(field: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        ClusterConfig(**{field: value})
    assert isinstance(info.value, ValueError)  # ConfigError is also a ValueError
    assert field.split("[")[0] in str(info.value) or "reconnect_backoff" in str(info.value)


@pytest.mark.parametrize("field", ["local_cache_ttl", "subscribe_timeout"])
def test_huge_int_is_a_config_error_not_an_overflow(field: str) -> None:
    # math.isfinite(10**400) raises OverflowError: validation must still answer ConfigError.
    with pytest.raises(ConfigError):
        ClusterConfig(**{field: 10**400})
    with pytest.raises(ConfigError):
        ClusterConfig(reconnect_backoff=(0.05, 10**400))


# --- from_env ----------------------------------------------------------------------------

FULL_ENV = {
    "FASTSESS_CLUSTER_ENABLED": "0",
    "FASTSESS_NODE_ID": "web-3",
    "FASTSESS_CHANNEL": "myapp:invalidate",
    "FASTSESS_LOCAL_CACHE_ENABLED": "false",
    "FASTSESS_LOCAL_CACHE_TTL": "12.5",
    "FASTSESS_LOCAL_CACHE_MAX_SIZE": "10_000",
    "FASTSESS_LOCAL_CACHE_MAX_BYTES": "8_388_608",
    "FASTSESS_LOCAL_CACHE_MAX_ITEM_BYTES": "65536",
    "FASTSESS_SUBSCRIBE_TIMEOUT": "0.25",
    "FASTSESS_RECONNECT_BACKOFF": "0.01, 2",
    "FASTSESS_STALE_IF_ERROR": "yes",
    "FASTSESS_TRACK_EXTERNAL_CHANGES": "on",
    "FASTSESS_SHARDED_PUBSUB": "off",
    "FASTSESS_NEGATIVE_CACHE_TTL": "0.5",
    "FASTSESS_NEGATIVE_CACHE_MAX_SIZE": "1_000",
    "FASTSESS_UPDATE_MAX_BYTES": "4096",
    "FASTSESS_WARM_PEERS": "yes",
    "FASTSESS_LEASE": "0.5",
    "FASTSESS_REPLAY_LOG_SIZE": "50_000",
}


def test_warm_peers_needs_update_mode() -> None:
    with pytest.raises(ConfigError, match="update_max_bytes"):
        ClusterConfig(warm_peers=True)
    assert ClusterConfig(update_max_bytes=1, warm_peers=True).warm_peers is True
    assert ClusterConfig().warm_peers is False
    assert ClusterConfig.from_env({"FASTSESS_WARM_PEERS": "on", "FASTSESS_UPDATE_MAX_BYTES": "4096"}).warm_peers is True
    with pytest.raises(ConfigError, match="warm_peers needs update mode"):  # each variable parses; together they do not hold
        ClusterConfig.from_env({"FASTSESS_WARM_PEERS": "on"})
    with pytest.raises(ConfigError, match="FASTSESS_WARM_PEERS='maybe'"):
        ClusterConfig.from_env({"FASTSESS_WARM_PEERS": "maybe", "FASTSESS_UPDATE_MAX_BYTES": "4096"})


def test_module_doc_lists_every_field() -> None:
    import fastsess.config as module

    for field in dataclasses.fields(ClusterConfig):
        variable = ENV_PREFIX + ("CLUSTER_ENABLED" if field.name == "enabled" else field.name.upper())
        assert variable in (module.__doc__ or ""), variable
        assert variable in FULL_ENV


def test_from_env_parses_every_variable() -> None:
    c = ClusterConfig.from_env(FULL_ENV)
    assert c == ClusterConfig(
        enabled=False, node_id="web-3", channel="myapp:invalidate", local_cache_enabled=False,
        local_cache_ttl=12.5, local_cache_max_size=10_000, local_cache_max_bytes=8 * 1024 * 1024,
        local_cache_max_item_bytes=65536, subscribe_timeout=0.25, reconnect_backoff=(0.01, 2.0), stale_if_error=True,
        track_external_changes=True, sharded_pubsub=False,
        negative_cache_ttl=0.5, negative_cache_max_size=1000, update_max_bytes=4096, warm_peers=True,
        lease=0.5, replay_log_size=50_000,
    )


def test_from_env_empty_gives_defaults_with_a_fresh_node_id() -> None:
    a, b = ClusterConfig.from_env({}), ClusterConfig.from_env({"FASTSESS_NODE_ID": "  ", "UNRELATED": "x"})
    assert a.node_id != b.node_id
    assert dataclasses.replace(a, node_id="n") == dataclasses.replace(b, node_id="n") == ClusterConfig(node_id="n")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("true", True), ("TRUE", True), ("yes", True), ("on", True), (" On ", True),
     ("0", False), ("false", False), ("No", False), ("off", False)],
)
def test_from_env_booleans(raw: str, expected: bool) -> None:
    for variable, field in (("FASTSESS_CLUSTER_ENABLED", "enabled"), ("FASTSESS_LOCAL_CACHE_ENABLED", "local_cache_enabled"),
                            ("FASTSESS_TRACK_EXTERNAL_CHANGES", "track_external_changes"), ("FASTSESS_SHARDED_PUBSUB", "sharded_pubsub")):
        assert getattr(ClusterConfig.from_env({variable: raw}), field) is expected
    if raw.strip() not in ("0", "1"):  # FASTSESS_STALE_IF_ERROR takes the words; digits are seconds
        assert ClusterConfig.from_env({"FASTSESS_STALE_IF_ERROR": raw}).stale_if_error is expected


@pytest.mark.parametrize(
    ("raw", "seconds"), [("1", 1.0), ("0", 0.0), ("2.5", 2.5), ("300", 300.0), ("yes", 30.0), ("off", 0.0)],
)
def test_from_env_stale_if_error_takes_seconds(raw: str, seconds: float) -> None:
    config = ClusterConfig.from_env({"FASTSESS_STALE_IF_ERROR": raw})
    assert config.stale_window == seconds


@pytest.mark.parametrize("raw", ["-1", "inf", "nan", "soon", "1s"])
def test_from_env_stale_if_error_rejects_bad_values(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        ClusterConfig.from_env({"FASTSESS_STALE_IF_ERROR": raw})
    assert "FASTSESS_STALE_IF_ERROR" in str(info.value)


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTSESS_NODE_ID", "from-os-environ")
    monkeypatch.setenv("FASTSESS_LOCAL_CACHE_MAX_SIZE", "77")
    c = ClusterConfig.from_env()
    assert c.node_id == "from-os-environ" and c.local_cache_max_size == 77


def test_from_env_overrides_win() -> None:
    c = ClusterConfig.from_env(FULL_ENV, node_id="override", local_cache_ttl=3.0, enabled=True)
    assert c.node_id == "override" and c.local_cache_ttl == 3.0 and c.enabled is True
    assert c.channel == "myapp:invalidate"  # the rest still from the environment
    assert ClusterConfig.from_env({"FASTSESS_LOCAL_CACHE_TTL": "-5"}, local_cache_ttl=2.0).local_cache_ttl == 2.0
    with pytest.raises(ConfigError):
        ClusterConfig.from_env({}, local_cache_ttl=-1)  # overrides are validated too


def test_from_env_override_wins_over_an_unparsable_variable() -> None:
    # the override replaces the variable entirely, so a value nobody uses must not be fatal
    assert ClusterConfig.from_env({"FASTSESS_LOCAL_CACHE_TTL": "oops"}, local_cache_ttl=2.0).local_cache_ttl == 2.0


BAD_ENV = [
    ("FASTSESS_CLUSTER_ENABLED", "maybe"), ("FASTSESS_CLUSTER_ENABLED", "2"),
    ("FASTSESS_LOCAL_CACHE_ENABLED", "enabled"), ("FASTSESS_STALE_IF_ERROR", "sure"),
    ("FASTSESS_LOCAL_CACHE_TTL", "thirty"), ("FASTSESS_LOCAL_CACHE_TTL", "1,5"),
    ("FASTSESS_LOCAL_CACHE_MAX_SIZE", "1e4"), ("FASTSESS_LOCAL_CACHE_MAX_SIZE", "ten"), ("FASTSESS_LOCAL_CACHE_MAX_SIZE", "10.5"),
    ("FASTSESS_SUBSCRIBE_TIMEOUT", "1s"),
    ("FASTSESS_RECONNECT_BACKOFF", "0.05"), ("FASTSESS_RECONNECT_BACKOFF", "0.05,5,9"),
    ("FASTSESS_RECONNECT_BACKOFF", "a,b"), ("FASTSESS_RECONNECT_BACKOFF", ",5"),
    # these parse as numbers but are out of range: the error must still name the variable
    ("FASTSESS_LOCAL_CACHE_TTL", "-1"), ("FASTSESS_LOCAL_CACHE_TTL", "nan"), ("FASTSESS_LOCAL_CACHE_MAX_SIZE", "0"),
    ("FASTSESS_SUBSCRIBE_TIMEOUT", "0"), ("FASTSESS_RECONNECT_BACKOFF", "5,0.05"), ("FASTSESS_RECONNECT_BACKOFF", "0,1"),
    ("FASTSESS_NODE_ID", "n" * 201), ("FASTSESS_CHANNEL", "c" * 201),
]


@pytest.mark.parametrize(("variable", "raw"), BAD_ENV, ids=[f"{v}={r}"[:60] for v, r in BAD_ENV])
def test_from_env_bad_value_raises_config_error_naming_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        ClusterConfig.from_env({variable: raw})
    assert variable in str(info.value), f"{info.value!s} does not name {variable}"
