"""The compiled module must be the one in use whenever it was supposed to be built."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

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


def run_with_flag(value: str) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter importing fastsess with ``FASTSESS_NO_EXTENSIONS=value``."""
    code = "import fastsess, fastsess.cache as c; print(c.IMPLEMENTATION, c.NO_EXTENSIONS, fastsess.LocalCache.__module__)"
    # the whole environment, not an empty one: on Windows Python needs SYSTEMROOT to start
    env = {**os.environ, "FASTSESS_NO_EXTENSIONS": value}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "On"])
def test_no_extensions_env_selects_pure_twin(value: str) -> None:
    done = run_with_flag(value)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["py", "True", "fastsess._lru_py"]


@pytest.mark.parametrize("value", ["", "0", "false", "False", "no", "OFF"])
def test_no_extensions_false_keeps_the_compiled_core(value: str) -> None:
    done = run_with_flag(value)
    assert done.returncode == 0, done.stderr
    # compiled whenever it was built (test_compiled_module_loaded insists it was, unless
    # the suite itself runs with FASTSESS_NO_EXTENSIONS=1)
    compiled = importlib.util.find_spec("fastsess._lru") is not None
    expected = ["c", "False", "fastsess._lru"] if compiled else ["py", "False", "fastsess._lru_py"]
    assert done.stdout.split() == expected


def test_no_extensions_rejects_an_unrecognised_value() -> None:
    done = run_with_flag("ture")
    assert done.returncode != 0
    assert "ValueError: FASTSESS_NO_EXTENSIONS='ture': expected one of" in done.stderr


def test_both_implementations_export_the_same_api(impl) -> None:
    twin = importlib.import_module("fastsess._lru_py")
    for name in ("LRUCache", "TTLCache", "LocalCache"):
        ours = {a for a in dir(getattr(impl, name)) if not a.startswith("_")}
        theirs = {a for a in dir(getattr(twin, name)) if not a.startswith("_")}
        assert ours == theirs, (name, ours ^ theirs)
    assert impl.CacheStats is twin.CacheStats
