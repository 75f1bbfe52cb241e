"""Select the cache implementation: compiled ``_lru`` unless disabled or missing.

Set ``FASTSESS_NO_EXTENSIONS=1`` (or ``true``/``yes``/``on``) to force the
pure-Python twin (``_lru_py``); ``0``/``false``/``no``/``off`` or unset keeps the
compiled core.  ``setup.py`` reads the variable with the same parser
(``fastsess._env``).  ``IMPLEMENTATION`` says which one was loaded (``"c"`` or
``"py"``), ``NO_EXTENSIONS`` whether the variable asked for the twin, and
``IMPORT_ERROR`` why the compiled module is not in use (None when it is).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._env import NO_EXTENSIONS_VARIABLE, no_extensions

NO_EXTENSIONS: bool = no_extensions()
IMPORT_ERROR: str | None = None
IMPLEMENTATION: str

if TYPE_CHECKING:  # the stub of the compiled module describes both implementations
    from ._lru import CacheStats, LocalCache, LRUCache, TTLCache
elif NO_EXTENSIONS:
    IMPORT_ERROR = f"disabled by {NO_EXTENSIONS_VARIABLE}"
    from ._lru_py import CacheStats, LocalCache, LRUCache, TTLCache

    IMPLEMENTATION = "py"
else:
    try:
        from ._lru import CacheStats, LocalCache, LRUCache, TTLCache

        IMPLEMENTATION = "c"
    except ImportError as exc:  # installed without a compiler (setup.py fell back): stay usable
        IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
        from ._lru_py import CacheStats, LocalCache, LRUCache, TTLCache

        IMPLEMENTATION = "py"

__all__ = ["IMPLEMENTATION", "IMPORT_ERROR", "NO_EXTENSIONS", "CacheStats", "LRUCache", "LocalCache", "TTLCache"]
