"""Build the compiled cache core.

The extension is required when building from source unless
``FASTSESS_NO_EXTENSIONS=1`` is set, in which case only the pure-Python twin
is installed (``fastsess.cache`` selects it automatically).
"""

import os

from setuptools import Extension, setup

NO_EXTENSIONS = os.environ.get("FASTSESS_NO_EXTENSIONS", "") not in ("", "0")

ext_modules = []
if not NO_EXTENSIONS:
    from Cython.Build import cythonize

    ext_modules = cythonize(
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

setup(ext_modules=ext_modules)
