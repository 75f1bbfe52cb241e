"""Fixtures of the benchmark suite: a Redis to measure against, and which sizes run.

The suite is run on demand (``pytest bench/``); ``pytest`` alone never collects
it (``testpaths = ["tests"]``).

* ``redis_url``: a private server started for the run (``fastsess.server.RedisServer``
  on a free port, persistence off), or the server named by ``REDIS_URL`` when
  that variable is set.  A server we did not start may hold other people's
  data, so every benchmark writes under ``redis_prefix`` only, and only the
  keys under that prefix are deleted at the end.
* ``redis_prefix``: a key prefix unique to this run.
* ``redis_is_private``: True when ``redis_url`` is the private server (the
  read-load GET counts then include no other client's commands).
* Sizes: every size-dependent benchmark carries a ``bench_size(n)`` mark
  (``support.sized``); ``--bench-sizes=1000,100000`` runs only those sizes.
  Under ``--benchmark-disable`` (a smoke run: each benchmark body runs once,
  untimed, to prove it works) the 1,000,000-entry cases are skipped unless
  ``--bench-sizes`` asks for them: filling a million-entry cache for every
  candidate takes about half a minute, which a smoke run does not need.

Workloads come from ``fastsess.benchmarks`` (seeded, built once per size).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from fastsess.server import RedisServer

from .support import SIZES

SMOKE_MAX_SIZE = 100_000  # largest size a --benchmark-disable run builds by default


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-sizes",
        default=None,
        help="comma-separated cache sizes to run (default: 1000,100000,1000000; "
        f"only those up to {SMOKE_MAX_SIZE} under --benchmark-disable)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "bench_size(n): the benchmark builds a cache of n entries")


def selected_sizes(config: pytest.Config) -> set[int]:
    """The sizes this run measures (see the module docstring)."""
    option = config.getoption("--bench-sizes")
    if option:
        return {int(part.strip().replace("_", "")) for part in option.split(",") if part.strip()}
    if config.getoption("benchmark_disable", default=False):
        return {n for n in SIZES if n <= SMOKE_MAX_SIZE}
    return set(SIZES)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    sizes = selected_sizes(config)
    why = "--bench-sizes" if config.getoption("--bench-sizes") else f"smoke run keeps sizes <= {SMOKE_MAX_SIZE:,}; see --bench-sizes"
    for item in items:
        mark = item.get_closest_marker("bench_size")
        if mark is not None and mark.args[0] not in sizes:
            item.add_marker(pytest.mark.skip(reason=f"size {mark.args[0]:,} not selected ({why})"))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``REDIS_URL`` if set, else the URL of a private server started for this run."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_is_private() -> bool:
    """Whether ``redis_url`` is a server this run started (no ``REDIS_URL``)."""
    return not os.environ.get("REDIS_URL")


@pytest.fixture(scope="session")
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to this run; its keys (and only those) are deleted afterwards."""
    prefix = f"fastsess-bench:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=prefix + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.unlink(*batch)
                batch = []
        if batch:
            client.unlink(*batch)
    finally:
        client.close()
