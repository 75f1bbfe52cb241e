"""Select the cache implementation: compiled ``_lru`` unless disabled or missing.

Set ``FASTSESS_NO_EXTENSIONS=1`` to force the pure-Python twin (``_lru_py``).
``IMPLEMENTATION`` says which one was loaded (``"c"`` or ``"py"``) and
``IMPORT_ERROR`` keeps the reason the compiled module could not be imported.
"""

from __future__ import annotations

import os

NO_EXTENSIONS: bool = os.environ.get("FASTSESS_NO_EXTENSIONS", "") not in ("", "0")
IMPORT_ERROR: str | None = None

if NO_EXTENSIONS:
    IMPORT_ERROR = "disabled by FASTSESS_NO_EXTENSIONS"
    from ._lru_py import CacheStats, LocalCache, LRUCache, TTLCache

    IMPLEMENTATION = "py"
else:
    try:
        from ._lru import CacheStats, LocalCache, LRUCache, TTLCache

        IMPLEMENTATION = "c"
    except ImportError as exc:  # no compiler at install time: stay usable
        IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
        from ._lru_py import CacheStats, LocalCache, LRUCache, TTLCache

        IMPLEMENTATION = "py"

__all__ = ["IMPLEMENTATION", "IMPORT_ERROR", "CacheStats", "LRUCache", "LocalCache", "TTLCache"]
