"""Context managers are typed to return ``Self``, so ``with ClusteredRedisStore(...) as s`` keeps the subclass."""

from __future__ import annotations

import inspect

import pytest

from fastsess.asyncio.stores.base import AsyncSessionStore
from fastsess.asyncio.stores.clustered import ClusteredRedisStore as AsyncClusteredRedisStore
from fastsess.server import RedisServer
from fastsess.stores.base import SessionStore


@pytest.mark.parametrize(
    "method",
    [SessionStore.__enter__, AsyncSessionStore.__aenter__, AsyncClusteredRedisStore.__aenter__, RedisServer.__enter__],
    ids=lambda m: m.__qualname__,
)
def test_enter_returns_self(method: object) -> None:
    assert inspect.signature(method).return_annotation == "Self"  # type: ignore[arg-type]


def test_the_package_is_typed() -> None:
    import fastsess

    assert inspect.getfile(fastsess).endswith("__init__.py")
    from importlib.resources import files

    assert files("fastsess").joinpath("py.typed").is_file()
