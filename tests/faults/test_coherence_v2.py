"""Sequenced invalidations and the lease, end to end: B in a child process, its pub/sub
connection through a TCP proxy, A writing meanwhile (``tests/faults/subscriber_outage.py``).

* **Outage** (blackholed both ways, then reset): B's listener resubscribes, replays the
  invalidations it missed from the server's log and evicts only those ids (re-reading
  the ones it had cached); no full flush, the cache kept, and no read after the
  resubscription is stale.
* **Blackhole** (downstream) and **delay** (every chunk to B's listener held 1.5 s), 1 s:
  B hears nothing (in time), its lease runs out and it reads Redis until proven again;
  no read is older than the lease plus delivery and scheduling time.

A read is stale by ``d`` if it returned a value older than a write acknowledged more than
``d`` seconds before the read began.  The figures (hit rates, worst staleness) go to the
fault suite's summary; ``bench/coherence_v2.py`` runs the same rig at full size.
"""

from __future__ import annotations

import pytest

from .conftest import report
from .subscriber_outage import run_outage

LEASE = 0.3
# Beyond the lease: message delivery and the listener thread's scheduling on a shared,
# loaded machine (the driver flips the served flag when the lease runs out).
SLACK = 0.25


def summary(result: dict[str, object]) -> dict[str, object]:
    keys = ("writes", "reads", "hit_rate_before", "resubscribed_after_s", "hit_rate_first_100ms", "stale_100ms", "worst_stale_s")
    return {k: result[k] for k in keys}


def test_an_outage_replays_the_missed_invalidations_and_keeps_the_rest() -> None:
    r = run_outage("outage", sessions=1000, write_rate=150, before=0.5, outage=1.0, after=0.5, lease=LEASE)
    listener = r["listener"]
    assert listener["reconnects"] == 1 and listener["replays"] == 1 and listener["full_flushes"] == 0, listener
    assert 0 < listener["replayed_ids"] <= r["writes"]
    assert 0 < listener["refilled"] <= listener["replayed_ids"]  # the cached ones, read again at once
    assert r["warmed"] == 1000 and r["cached_at_end"] >= 1000 - r["writes"]  # only written ids were evicted
    assert r["stale_100ms_after_resubscribing"] == 0
    report("outage 1 s, replay", "process", **summary(r))


@pytest.mark.parametrize("fault", ["blackhole", "delay"])
def test_no_read_is_older_than_the_lease(fault: str) -> None:
    r = run_outage(fault, sessions=200, write_rate=150, before=0.5, outage=1.0, after=0.3, lease=LEASE, delay=1.5)
    assert r["listener"]["lease_lapses"] >= 1
    assert r["worst_stale_s"] <= LEASE + SLACK, r
    report(f"{fault} 1 s, lease {LEASE:g} s", "process", stale_beyond_lease_100ms=r["stale_beyond_lease"], **summary(r))
