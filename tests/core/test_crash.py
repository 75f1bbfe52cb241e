"""The cache core never crashes and never corrupts itself, whatever keys and callbacks do.

Each attack in ``crash_attacks.py`` runs in a child process (a segfault there fails
the test instead of killing pytest), once per implementation, for about a second.
The child exits 0 only if the cache is consistent afterwards: ``len(c) ==
len(list(c))``, ``currsize <= maxsize``, ``currsize`` equal to the sum of the sizes,
every listed key ``in`` the cache, and the cache still usable.  A Python exception
from the cache during an attack is allowed; a signal, a hang or an inconsistency is not.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

from .conftest import MODULES

SCRIPT = Path(__file__).with_name("crash_attacks.py")
IDS = {module: name for name, module in MODULES.items()}


def run_attack(impl: ModuleType, attack: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), IDS[impl.__name__], attack],
        capture_output=True,
        text=True,
        timeout=120,
    )
    outcome = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
    assert proc.returncode == 0, f"{attack} on {impl.__name__}: {outcome}\n{proc.stderr[-3000:]}"
    assert proc.stdout.split()[-1:] == ["ok"], proc.stdout


def test_two_threads_store_and_pop_dataclass_keys(impl: ModuleType) -> None:
    run_attack(impl, "threads_dataclass_keys")


def test_cachetools_cached_from_a_thread_pool(impl: ModuleType) -> None:
    run_attack(impl, "cachetools_cached_pool")


def test_key_storing_itself_from_its_hash(impl: ModuleType) -> None:
    run_attack(impl, "hash_stores_itself")


def test_key_clearing_the_cache_from_its_hash(impl: ModuleType) -> None:
    run_attack(impl, "hash_clears_during_get")


def test_keys_reentering_clear_popitem_and_setitem(impl: ModuleType) -> None:
    run_attack(impl, "hash_reenters")


def test_hash_raising_during_an_eviction_on_overwrite(impl: ModuleType) -> None:
    run_attack(impl, "hash_raises_during_eviction")


def test_eq_raising_at_random_on_hash_collisions(impl: ModuleType) -> None:
    run_attack(impl, "eq_raises_on_collisions")


def test_finalizer_using_a_cache_the_collector_cleared(impl: ModuleType) -> None:
    run_attack(impl, "finalizer_after_gc_clear")


def test_str_keys_from_threads_while_the_gc_runs_finalizers(impl: ModuleType) -> None:
    run_attack(impl, "str_threads_cyclic_garbage")


def test_thread_stress_with_dataclass_keys(impl: ModuleType) -> None:
    run_attack(impl, "dataclass_thread_stress")


def test_same_thread_reentry_during_an_update_raises_runtime_error(impl: ModuleType) -> None:
    run_attack(impl, "reentry_is_refused")
