"""Fixtures for the cache-core tests: every test runs once per implementation.

``impl`` is the compiled module (id ``c``) or the pure-Python twin (id ``py``).
The ``c`` parameter fails, not skips, when the extension is missing, unless
``FASTSESS_NO_EXTENSIONS=1`` says it was deliberately not built.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from fastsess._env import no_extensions

NO_EXTENSIONS = no_extensions()  # the parser fastsess.cache and setup.py use
IMPLEMENTATIONS = ["py"] if NO_EXTENSIONS else ["c", "py"]
MODULES = {"c": "fastsess._lru", "py": "fastsess._lru_py"}


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """The cache module under test."""
    return importlib.import_module(MODULES[request.param])


class FakeClock:
    """A settable clock so TTL tests never sleep."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
