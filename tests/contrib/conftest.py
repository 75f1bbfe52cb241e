"""Fixtures for the framework drop-ins: Django settings pointed at the suite's private Redis."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

DJANGO_SETTINGS = {
    "SECRET_KEY": "tests-only-secret-key-0123456789abcdef",
    "ALLOWED_HOSTS": ["*"],
    "SESSION_ENGINE": "fastsess.contrib.django",
    "MIDDLEWARE": ["django.contrib.sessions.middleware.SessionMiddleware"],
    "ROOT_URLCONF": "tests.contrib.django_app",
    "SESSION_COOKIE_AGE": 600,
}


def _django_configured(db_dir: Path) -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        # sqlite in a temporary directory: only the db / cached_db migration tests use it
        databases = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(db_dir / "db.sqlite3")}}
        settings.configure(INSTALLED_APPS=["django.contrib.sessions"], DATABASES=databases, USE_TZ=True, **DJANGO_SETTINGS)
        django.setup()


def pytest_configure(config: pytest.Config) -> None:
    """Configure Django while the suite is collected, before any test runs.

    Django's settings can be configured once per process; configuring them here (this
    conftest is imported during collection) keeps a test that runs earlier, such as the
    in-process ``fastsess bench`` whose Django comparison configures Django when nobody
    has, from taking them without the sqlite database the migration tests need.
    """
    db_dir = Path(tempfile.mkdtemp(prefix="fastsess-django-"))
    atexit.register(shutil.rmtree, db_dir, ignore_errors=True)
    _django_configured(db_dir)


@pytest.fixture
def django_settings(redis_url: str, prefix: str) -> Iterator[object]:
    """Django configured for ``fastsess.contrib.django`` on the private Redis, a fresh prefix per test."""
    from django.conf import settings
    from django.test.utils import override_settings

    from fastsess.contrib import django as engine

    override = override_settings(FASTSESS_REDIS_URL=redis_url, FASTSESS_KEY_PREFIX=prefix, **DJANGO_SETTINGS)
    override.enable()
    try:
        yield settings
    finally:
        override.disable()
        engine.close_stores()


WRITE_COMMANDS = ("set", "setex", "setnx", "getex", "del", "unlink", "expire", "pexpire", "eval", "evalsha", "publish")


def redis_writes(client: object) -> int:
    """How many write-type commands the server has executed so far (INFO commandstats)."""
    stats = client.info("commandstats")  # type: ignore[attr-defined]
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in WRITE_COMMANDS)


def session_keys(client: object, prefix: str) -> list[bytes]:
    """The session keys under ``prefix`` (SCAN; string keys only: the invalidation channel's
    sequence hash and replay stream live under the prefix too)."""
    return sorted(client.scan_iter(match=prefix + "*", _type="string"))  # type: ignore[attr-defined]
