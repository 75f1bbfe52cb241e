"""Lost updates: what ``save`` does when another request wrote the session first. No I/O.

A save of a loaded session is a compare-and-set: it writes only if the stored session
is still the one this request loaded (Redis: the stored value's first bytes, or the
SHA-1 of the whole value, compared in the write's Lua script: see ``stamp``; ``MemoryStore``: the version, under its lock).  When it is not,
the save *rebases*: it takes the stored session as the new starting point and re-applies
this request's changes (``Session.changes``: the top-level keys it set or deleted), then
tries again (at most ``MAX_CONFLICT_RETRIES`` times).

A key changed by this request and, differently, by the other writer is a real conflict;
the store's ``on_conflict`` decides:

* ``"merge"`` (default): this request's value wins for that key (last writer wins, per
  key); every other key keeps the other writer's value.
* ``"raise"``: ``ConcurrentModification`` naming the keys; nothing is written.  Both
  sides setting the same value (or both deleting the key) is not a conflict.
* a callable ``f(key, base, mine, theirs) -> value``: the value to store (``MISSING``
  deletes the key); called for every key changed on both sides, even to equal values
  (two increments of a counter look alike).  ``base`` is what the key held before this request changed it,
  ``mine`` this request's value, ``theirs`` the stored one; any of them may be
  ``MISSING`` (absent).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import Any, TypeAlias

from ..errors import ConcurrentModification, ConfigError
from ..serializers import ENCRYPTED_ENVELOPE_VERSION, ENVELOPE_VERSION, HEADER_SIZE, MAGIC, JSONSerializer, MsgpackSerializer
from ..session import MISSING, Session

# A save re-applies its changes on a fresh copy at most this many times; a session
# written by others even faster than that raises ConcurrentModification.
MAX_CONFLICT_RETRIES = 100

# Between conflicts the save waits a random time ("full jitter"): none before the first
# retry (one other writer is the common case: it retries at once on the value the
# conflict reply carried), then up to FIRST_PAUSE, doubling per conflict up to MAX_PAUSE,
# after which it reads the value stored then (what the reply carried is stale by then).
# Without it, requests that keep arriving with a fresh copy can win every race against
# one that is retrying, which then gives up.
FIRST_PAUSE = 0.001  # seconds
MAX_PAUSE = 0.05  # seconds

Resolver = Callable[[str, Any, Any, Any], Any]
OnConflict: TypeAlias = "str | Resolver"

POLICIES = ("merge", "raise")


def check_on_conflict(on_conflict: Any) -> OnConflict:
    """Validate a store's ``on_conflict``: ``"merge"``, ``"raise"`` or a callable.

    Raises:
        ConfigError: anything else.
    """
    if on_conflict in POLICIES or callable(on_conflict):
        return on_conflict  # type: ignore[no-any-return]
    raise ConfigError(f'on_conflict must be "merge", "raise" or a callable f(key, base, mine, theirs), not {on_conflict!r}')


# How a save recognises the value its session was loaded from (``Session._base``):
#
# * "p" (prefix): the value's first PREFIX_BYTES bytes (all of a shorter value).  Exact for the values
#   fastsess writes in the clear with a built-in codec and no compression: those bytes
#   hold the envelope header and the session's created_at, refreshed_at, ttl and version
#   (msgpack: within 38 bytes, JSON: within 90), and every write of a key stores a higher
#   version (each save of an existing session is a compare-and-set of the previous one,
#   or, for a Session not loaded from the store, reads the stored version first); and for
#   encrypted values, whose header carries a fresh random 96-bit nonce per write.  So two
#   values of a key with equal first bytes are the same value, and their length need not
#   be compared.  Redis compares with one GETRANGE: constant work, whatever the session's size.
# * "h" (hash): the SHA-1 of the whole value, for anything else (compressed bodies, custom
#   codecs, values fastsess did not write): Redis GETs the value and hashes it.
PREFIX_BYTES = 128
_BUILTIN_CODECS = (MsgpackSerializer.codec_id, JSONSerializer.codec_id)

Token = tuple[str, Any]  # the write scripts' kind and token arguments (``_core.ops.COMPARE_LUA``)


def stamp(base: Any) -> Token | None:
    """The compare-and-set token of the stored value ``base`` (see above): ``("p", first
    bytes)`` or ``("h", SHA-1 hex)``; None (unknown: no check) for None.

    ``Session._base`` holds the raw bytes a session was read from or last wrote (turned
    into a token only when a save or the cache needs it) or, already, the token."""
    if type(base) is not bytes:
        return base if type(base) is tuple and len(base) == 2 else None
    if len(base) >= HEADER_SIZE and base[:2] == MAGIC and (
        (base[2] == ENVELOPE_VERSION and base[3] in _BUILTIN_CODECS and base[4] == 0)
        or base[2] == ENCRYPTED_ENVELOPE_VERSION
    ):
        return ("p", base[:PREFIX_BYTES])
    return ("h", hashlib.sha1(base).hexdigest())  # noqa: S324 - an equality token, as Redis's sha1hex


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if a is MISSING or b is MISSING:
        return False
    try:
        return bool(a == b)
    except Exception:  # an odd value whose == fails: count it as changed
        return False


def rebase(session: Session, theirs: Session, on_conflict: OnConflict) -> None:
    """Make ``session`` the stored ``theirs`` plus this request's changes (see the module doc).

    ``theirs`` is a freshly decoded session this function may take over.  On success
    ``session`` holds the merged data, ``theirs``' version, times and base, and its
    recorded changes now count from ``theirs``.

    Raises:
        ConcurrentModification: ``on_conflict="raise"`` and some keys changed on both
            sides (``session`` is unchanged).
        Exception: whatever an ``on_conflict`` callable raises (``session`` is unchanged).
    """
    mine = session._data
    recorded, untracked = session._tracking()
    changes: dict[str, Any] = dict(recorded or ())
    if untracked:
        # modified set by hand: which keys changed is unknown, so every key held counts,
        # with no known previous value
        for key in mine:
            changes.setdefault(key, MISSING)
    merged = theirs._data
    conflicts: list[str] = []
    rebased: dict[str, Any] = {}
    for key, base in changes.items():
        value = mine.get(key, MISSING)
        stored = merged.get(key, MISSING)
        rebased[key] = stored
        if _same(stored, base):
            pass  # only this request changed it
        elif on_conflict == "merge":
            pass  # last writer (this save) wins for this key
        elif on_conflict == "raise":
            if not _same(stored, value):  # both made the same change: nothing to decide
                conflicts.append(key)
                continue
        else:  # called even for equal values: two increments of a counter look alike
            value = on_conflict(key, base, value, stored)  # type: ignore[operator]
        if value is MISSING:
            merged.pop(key, None)
        else:
            merged[key] = value
    if conflicts:
        raise ConcurrentModification(
            f"another request changed {len(conflicts)} key(s) this request also changed: {', '.join(sorted(conflicts))}",
            tuple(sorted(conflicts)),
        )
    session._data = merged
    session.version = theirs.version
    session.created_at = theirs.created_at
    session.refreshed_at = theirs.refreshed_at
    session._base = theirs._base
    # From now on the changes count from what was just rebased onto (a later conflict
    # compares with that), and only the keys changed here are re-applied again.
    session._changes = rebased
    session._untracked = False
    session._modified = True


def replace(session: Session, theirs: Session) -> None:
    """Prepare ``session``, which was not loaded from the store (no ``_base``), to replace
    the stored ``theirs`` as a whole (as ``SET XX`` did): it takes over ``theirs``'
    version and base, so that its write is a compare-and-set with a higher version."""
    session.version = theirs.version
    session._base = theirs._base


def conflict_pause(conflicts: int, draw: Callable[[], float] = random.random) -> float:
    """Seconds to wait before the retry that follows conflict number ``conflicts`` (1, 2, ...):
    0 after the first, then a random time below ``FIRST_PAUSE * 2**(conflicts - 2)``,
    capped at ``MAX_PAUSE``."""
    if conflicts <= 1:
        return 0.0
    return draw() * min(MAX_PAUSE, FIRST_PAUSE * 2.0 ** min(conflicts - 2, 16))


def too_many_conflicts() -> ConcurrentModification:
    """The error of a save that met a new write on every one of its attempts."""
    return ConcurrentModification(
        f"the session was written by other requests on each of {MAX_CONFLICT_RETRIES + 1} attempts to save it"
    )
