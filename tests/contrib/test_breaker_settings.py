"""``FASTSESS_BREAKER_THRESHOLD`` / ``FASTSESS_BREAKER_COOLDOWN`` in the Django and Flask
drop-ins: they reach the store's circuit breaker; absent, the store's defaults apply; a
bad value is refused when the store is built."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from fastsess.errors import ConfigError

from .test_flask import apps, make_app  # noqa: F401 - apps is a fixture


def test_django_breaker_settings(django_settings: Any) -> None:
    from django.test.utils import override_settings

    from fastsess.contrib import django as engine

    breaker = engine.get_store().breaker
    assert (breaker.threshold, breaker.cooldown) == (5, 1.0)
    with override_settings(FASTSESS_BREAKER_THRESHOLD=2, FASTSESS_BREAKER_COOLDOWN=0.5):
        breaker = engine.get_store().breaker
        assert (breaker.threshold, breaker.cooldown) == (2, 0.5)
    with override_settings(FASTSESS_BREAKER_THRESHOLD=-1), pytest.raises(ConfigError, match="breaker_threshold"):
        engine.get_store()


async def test_django_async_store_gets_them_too(django_settings: Any) -> None:
    from django.test.utils import override_settings

    from fastsess.contrib import django as engine

    with override_settings(FASTSESS_BREAKER_THRESHOLD=0):
        try:
            assert engine.get_async_store().breaker.threshold == 0
        finally:
            await engine.aclose_async_store()


def test_flask_breaker_settings(apps: list[Flask], redis_url: str, prefix: str) -> None:  # noqa: F811
    app = make_app(FASTSESS_REDIS_URL=redis_url, SESSION_KEY_PREFIX=prefix, FASTSESS_BREAKER_THRESHOLD=3, FASTSESS_BREAKER_COOLDOWN=2)
    apps.append(app)
    breaker = app.session_interface.store.breaker  # type: ignore[attr-defined]
    assert (breaker.threshold, breaker.cooldown) == (3, 2.0)
    default = make_app(FASTSESS_REDIS_URL=redis_url, SESSION_KEY_PREFIX=prefix)
    apps.append(default)
    assert default.session_interface.store.breaker.threshold == 5  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="breaker_cooldown"):
        make_app(FASTSESS_REDIS_URL=redis_url, SESSION_KEY_PREFIX=prefix, FASTSESS_BREAKER_COOLDOWN=0)
