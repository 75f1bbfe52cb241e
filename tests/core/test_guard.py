"""The compiled module must be the one in use whenever it was supposed to be built."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import fastsess
import fastsess.cache

from .conftest import NO_EXTENSIONS


def test_compiled_module_loaded() -> None:
    if NO_EXTENSIONS:
        assert fastsess.cache.IMPLEMENTATION == "py"
        return
    spec = importlib.util.find_spec("fastsess._lru")
    assert spec is not None and spec.origin is not None, "fastsess._lru was not built"
    assert spec.origin.endswith((".so", ".pyd")), spec.origin
    assert fastsess.cache.IMPLEMENTATION == "c", fastsess.cache.IMPORT_ERROR
    assert fastsess.LocalCache.__module__ == "fastsess._lru"
    assert fastsess.TTLCache.__module__ == "fastsess._lru"


def test_no_extensions_env_selects_pure_twin() -> None:
    code = "import fastsess, fastsess.cache as c; print(c.IMPLEMENTATION, fastsess.LocalCache.__module__)"
    out = subprocess.run(
        [sys.executable, "-c", code], env={"FASTSESS_NO_EXTENSIONS": "1", "PATH": ""}, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["py", "fastsess._lru_py"]


def test_both_implementations_export_the_same_api(impl) -> None:
    twin = importlib.import_module("fastsess._lru_py")
    for name in ("LRUCache", "TTLCache", "LocalCache"):
        ours = {a for a in dir(getattr(impl, name)) if not a.startswith("_")}
        theirs = {a for a in dir(getattr(twin, name)) if not a.startswith("_")}
        assert ours == theirs, (name, ours ^ theirs)
    assert impl.CacheStats is twin.CacheStats
