"""The one parser of ``FASTSESS_NO_EXTENSIONS``, shared by ``setup.py`` and ``fastsess.cache``.

This module imports nothing from the package: ``setup.py`` cannot import the
package it is building, so it loads this file by path.  Both then agree on
what a value means:

* unset, empty, ``0``, ``false``, ``no``, ``off`` (any case, surrounding
  spaces ignored): the compiled cache core is built and used;
* ``1``, ``true``, ``yes``, ``on``: it is neither built nor imported, the
  pure-Python twin is used;
* anything else raises ``ValueError`` naming the variable, rather than
  guessing what a typo meant.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

NO_EXTENSIONS_VARIABLE = "FASTSESS_NO_EXTENSIONS"

TRUE_VALUES = frozenset({"1", "true", "yes", "on"})
FALSE_VALUES = frozenset({"", "0", "false", "no", "off"})


def parse_flag(name: str, raw: str | None) -> bool:
    """``raw`` (the value of environment variable ``name``, None if unset) as a bool.

    Raises:
        ValueError: ``raw`` is not one of the accepted spellings (see the module doc).
    """
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in TRUE_VALUES:
        return True
    if value in FALSE_VALUES:
        return False
    raise ValueError(f"{name}={raw!r}: expected one of 1/0, true/false, yes/no, on/off (any case)")


def no_extensions(environ: Mapping[str, str] | None = None) -> bool:
    """True when ``FASTSESS_NO_EXTENSIONS`` in ``environ`` (default ``os.environ``) asks for the pure twin.

    Raises:
        ValueError: the variable holds an unrecognised value.
    """
    env = os.environ if environ is None else environ
    return parse_flag(NO_EXTENSIONS_VARIABLE, env.get(NO_EXTENSIONS_VARIABLE))
