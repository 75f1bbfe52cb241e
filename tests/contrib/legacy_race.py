"""A session engine for the migration tests: Django's db engine, whose ``load`` can run a hook
just before or just after it reads the row, so a test can place another request's migration
(or logout) exactly there.  ``FASTSESS_MIGRATE_FROM = "tests.contrib.legacy_race"``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.sessions.backends.db import SessionStore as DbSessionStore

#: "before" / "after": a callable run once (then forgotten) around the next load's read.
HOOKS: dict[str, Callable[[], Any]] = {}


class SessionStore(DbSessionStore):  # type: ignore[misc]  # Django ships no type information
    def load(self) -> dict[str, Any]:
        before = HOOKS.pop("before", None)
        if before is not None:
            before()
        data: dict[str, Any] = super().load()
        after = HOOKS.pop("after", None)
        if after is not None:
            after()
        return data
