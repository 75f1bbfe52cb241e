"""Build the compiled cache core, if possible.

The extension is optional: when Cython is missing or the C compiler fails,
the build prints a warning naming ``FASTSESS_NO_EXTENSIONS=1`` and installs the
package without it; ``fastsess.cache`` then selects the pure-Python twin and
``fastsess doctor`` reports why.  ``FASTSESS_NO_EXTENSIONS=1`` (``true``, ``yes``,
``on``) skips the extension; ``0``, ``false``, ``no``, ``off`` or unset build it.
The value is parsed by ``src/fastsess/_env.py``, the same code ``fastsess.cache``
uses at import time, loaded by path because this script cannot import the
package it builds.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent


def _load_env_module() -> Any:
    spec = importlib.util.spec_from_file_location("_fastsess_env", HERE / "src" / "fastsess" / "_env.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_env = _load_env_module()

FALLBACK_HINT = (
    "fastsess is being installed WITHOUT its compiled cache core: the pure-Python "
    "twin works the same but is several times slower. Install a C compiler (and the "
    "Python headers) and reinstall to get it, or set FASTSESS_NO_EXTENSIONS=1 to skip "
    "the build on purpose and silence this warning. `fastsess doctor` shows which "
    "implementation is loaded."
)


def warn_fallback(reason: str) -> None:
    """Print the fallback warning loudly (pip shows build output with -v or on failure)."""
    bar = "*" * 78
    print(f"\n{bar}\nWARNING: {reason}\n{FALLBACK_HINT}\n{bar}\n", file=sys.stderr, flush=True)


class OptionalBuildExt(build_ext):
    """``build_ext`` that falls back to the pure-Python twin instead of failing."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any toolchain failure means "no compiler"
            warn_fallback(f"could not build the fastsess._lru extension ({type(exc).__name__}: {exc})")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - compiler missing, failing or misconfigured
            warn_fallback(f"compiling {ext.name} failed ({type(exc).__name__}: {exc})")


def extensions() -> list[Extension]:
    """The extension modules to build: none when disabled or when Cython is unavailable."""
    try:
        disabled = _env.no_extensions()
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    if disabled:
        print("FASTSESS_NO_EXTENSIONS is set: installing the pure-Python cache only", file=sys.stderr)
        return []
    try:
        from Cython.Build import cythonize
    except ImportError as exc:
        warn_fallback(f"Cython is not available to build the fastsess._lru extension ({exc})")
        return []
    return list(
        cythonize(
            [Extension("fastsess._lru", ["src/fastsess/_lru.pyx"])],
            compiler_directives={
                "language_level": "3",
                "freethreading_compatible": True,
                "boundscheck": False,
                "wraparound": False,
                "cdivision": True,
                "embedsignature": True,
            },
        )
    )


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import it
    setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
