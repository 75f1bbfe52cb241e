"""The hit-ratio harness in bench/: trace generators, reference policies and the replay.

Small traces only (the file runs in a few seconds); what the full report
measures is in bench/README.md, "Hit ratio".
"""

from __future__ import annotations

import importlib
from collections import Counter
from typing import Any

import pytest

from bench.hit_ratio import CANDIDATES, capacities, format_markdown, replay_local_cache, replay_lru_cache, replay_policy, run
from bench.policies import Clock, ExactLRU, Sieve, TinyLFU
from bench.traces import SessionParams, ZipfParams, session_trace, standard_traces, summarize, zipf_trace
from fastsess._env import no_extensions

IMPLEMENTATIONS = ["py"] if no_extensions() else ["c", "py"]
MODULES = {"c": "fastsess._lru", "py": "fastsess._lru_py"}

SESSION = SessionParams(requests=20_000, users=2_000)
BOTS = SessionParams(requests=20_000, users=2_000, bot_fraction=0.3, bot_burst_mean=100)
ZIPF = ZipfParams(requests=20_000, items=2_000, alpha=1.0, scans=2, scan_length=1_000, scan_mix=0.5)


@pytest.fixture(scope="module")
def bots_trace() -> Any:
    return session_trace(BOTS, seed=3)


@pytest.fixture(scope="module")
def scan_trace() -> Any:
    return zipf_trace(ZIPF, seed=3)


# -- generators --------------------------------------------------------------------


def test_generators_are_deterministic_for_a_seed() -> None:
    bots = SessionParams(requests=5_000, users=500, think_mean=3.0, bot_fraction=0.3, bot_burst_mean=100)
    zipf = ZipfParams(requests=5_000, items=500, scan_length=200)
    assert session_trace(bots, seed=7) == session_trace(bots, seed=7)  # keys, bot ids and parameters
    assert zipf_trace(zipf, seed=7) == zipf_trace(zipf, seed=7)
    assert session_trace(bots, seed=7).keys != session_trace(bots, seed=8).keys
    assert zipf_trace(zipf, seed=7).keys != zipf_trace(zipf, seed=8).keys


def test_traces_have_the_requested_length() -> None:
    traces = standard_traces(5_000, seed=1, alphas=(0.8,))
    assert [t.name for t in traces] == ["session", "session-nobots", "session-1req", "zipf-0.8+scans"]
    for trace in traces:
        assert len(trace.keys) == 5_000, trace.name


def test_bot_ids_are_seen_once_or_twice_and_make_about_the_requested_share(bots_trace: Any) -> None:
    counts = Counter(bots_trace.keys)
    assert bots_trace.bot_ids
    assert {counts[k] for k in bots_trace.bot_ids} == {1, 2}  # some repeated once, none more
    share = summarize(bots_trace)["bot_requests"]
    assert 0.2 < share < 0.4
    repeated = sum(1 for k in bots_trace.bot_ids if counts[k] == 2) / len(bots_trace.bot_ids)
    assert 0.1 < repeated < 0.3  # bot_repeat = 0.2


def _spans(keys: list[int]) -> dict[int, int]:
    """id -> requests between its first and last request."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
        last[k] = i
    return {k: last[k] - first[k] for k in first}


def test_session_ids_are_kept_by_returning_users_and_abandoned_after_the_idle_timeout() -> None:
    trace = session_trace(SESSION, seed=3)
    assert not trace.bot_ids
    assert len(trace.keys) / trace.distinct > 5  # a visit is 15 requests on average, and users return
    # a slower site: 20,000 requests last about 11 minutes
    keep = session_trace(SessionParams(requests=20_000, users=2_000, visit_rate=2.0, idle_timeout=1e9), seed=3)
    drop = session_trace(SessionParams(requests=20_000, users=2_000, visit_rate=2.0, idle_timeout=0.0), seed=3)
    assert keep.distinct <= 2_000  # one id per user for the whole trace
    # idle timeout 0: a visit that does not overlap the user's previous one gets a new id,
    # and the old id is never requested again, so ids are more numerous and shorter-lived
    assert drop.distinct > 1.2 * keep.distinct
    long_lived = [sum(1 for span in _spans(t.keys).values() if span > len(t.keys) // 2) for t in (keep, drop)]
    assert long_lived[1] < 0.6 * long_lived[0]


def test_zipf_head_is_heavier_than_tail(scan_trace: Any) -> None:
    counts = Counter(k for k in scan_trace.keys if k not in scan_trace.scan_ids)
    ranked = sorted(counts.values(), reverse=True)
    head = sum(ranked[: len(ranked) // 100])
    tail = sum(ranked[len(ranked) // 2 :])
    assert head > tail
    # the same for users in the session trace: the top 1% of session ids outweigh the bottom half
    sess = sorted(Counter(session_trace(SESSION, seed=3).keys).values(), reverse=True)
    assert sum(sess[: len(sess) // 100]) > sum(sess[len(sess) // 2 :])


def test_scans_are_sequential_one_time_keys(scan_trace: Any) -> None:
    counts = Counter(scan_trace.keys)
    assert len(scan_trace.scan_ids) == ZIPF.scans * ZIPF.scan_length
    assert all(counts[k] == 1 for k in scan_trace.scan_ids)
    in_order = [k for k in scan_trace.keys if k in scan_trace.scan_ids]
    assert in_order == sorted(scan_trace.scan_ids)  # one sequential pass
    assert not scan_trace.scan_ids & set(range(ZIPF.items))  # never a Zipf id
    # each scan is mixed into regular traffic: its window also holds Zipf requests
    positions = [i for i, k in enumerate(scan_trace.keys) if k in scan_trace.scan_ids]
    first_window = positions[: ZIPF.scan_length]
    assert first_window[-1] - first_window[0] + 1 > ZIPF.scan_length


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        session_trace(SessionParams(requests=0))
    with pytest.raises(ValueError):
        session_trace(SessionParams(requests=10, bot_fraction=1.0))
    with pytest.raises(ValueError):
        zipf_trace(ZipfParams(requests=100, items=10, scans=2, scan_length=60))  # window does not fit


# -- reference policies ------------------------------------------------------------


def test_reference_sieve_matches_a_hand_worked_example() -> None:
    """SIEVE keeps a key visited once even when LRU would have evicted it (NSDI '24, Figure 2 rules)."""
    s = Sieve(3)
    assert [s.access(k) for k in "ABC"] == [False, False, False]
    assert s.keys() == ["A", "B", "C"]  # tail (oldest) .. head (newest)
    assert s.access("A") and s.visited("A")
    # D: the hand starts at the tail A (visited: cleared, passed), stops at B (unvisited)
    assert s.victim() == "B" and s.victim() == "B"  # asking again does not move it
    assert not s.visited("A")
    assert not s.access("D")
    assert s.keys() == ["A", "C", "D"]
    # E: the hand was left at B's newer neighbour C, unvisited: evicted
    assert not s.access("E")
    assert s.keys() == ["A", "D", "E"]
    # F: the hand is at D, then E's turn; A survives although it is the least recently used
    assert not s.access("F")
    assert s.keys() == ["A", "E", "F"]
    assert s.access("A")
    assert not s.access("G")
    assert s.keys() == ["A", "F", "G"]

    lru = ExactLRU(3)
    assert [lru.access(k) for k in "ABCADEFAG"] == [False] * 3 + [True] + [False] * 5
    assert lru.keys() == ["F", "A", "G"]
    assert replay_policy("ABCADEFAG", Sieve(3)) == 7


def test_sieve_hand_wraps_from_the_head_to_the_tail() -> None:
    s = Sieve(2)
    s.access("A")
    s.access("B")
    s.access("A")
    s.access("B")  # both visited: the sweep clears both, wraps, and evicts the tail A
    assert s.victim() == "A"
    s.access("C")
    assert s.keys() == ["B", "C"] and not s.visited("B")


def test_reference_clock_replaces_in_place() -> None:
    c = Clock(3)
    for k in "ABCA":
        c.access(k)
    c.access("D")  # A referenced: cleared and passed; B replaced in its slot
    assert c.keys() == ["A", "D", "C"]
    c.access("E")
    c.access("F")  # the hand is back at A, now unreferenced: unlike SIEVE, CLOCK evicts it
    assert c.keys() == ["F", "D", "E"]


def test_tinylfu_keeps_frequent_keys_from_one_hit_ids() -> None:
    f = TinyLFU(Sieve(2), sample_factor=1_000)  # no aging during the test
    for k in "AAABBB":
        f.access(k)
    for bot in range(100):
        assert not f.access(("bot", bot))
    assert f.rejected == 100
    assert f.access("A") and f.access("B")
    plain = Sieve(2)
    for k in "AAABBB":
        plain.access(k)
    for bot in range(100):
        plain.access(("bot", bot))
    assert "A" not in plain and "B" not in plain


def test_tinylfu_ages_its_counts() -> None:
    f = TinyLFU(ExactLRU(4), sample_factor=10)  # halves every 40 recorded requests
    for _ in range(20):
        f.record("hot")
    assert f.estimate("hot") == 16  # 1 in the doorkeeper + the sketch's 4-bit counters, saturated at 15
    for i in range(19):
        f.record(("other", i))
    assert f.estimate("hot") == 16
    f.record("last")  # the 40th recorded request: every counter halved, the doorkeeper emptied
    assert f.estimate("hot") == 15 // 2


# -- replay ------------------------------------------------------------------------


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_replay_misses_equal_the_cache_stats(name: str, bots_trace: Any) -> None:
    module = importlib.import_module(MODULES[name])
    keys = bots_trace.keys[:10_000]
    for cap in capacities(len(set(keys)), (0.01, 0.1)):
        misses, cache = replay_local_cache(keys, cap, module.LocalCache)
        stats = cache.stats
        assert stats.misses == misses
        assert stats.hits == len(keys) - misses
        assert stats.size == min(cap, len(set(keys)))


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_lrucache_misses_exactly_as_the_reference_lru(name: str, scan_trace: Any) -> None:
    module = importlib.import_module(MODULES[name])
    keys = scan_trace.keys[:10_000]
    for cap in (7, 300):
        assert replay_lru_cache(keys, cap, module.LRUCache)[0] == replay_policy(keys, ExactLRU(cap))


def test_report_names_the_reference_each_cache_matches() -> None:
    traces = standard_traces(3_000, seed=2, alphas=())
    names = [label for label in CANDIDATES if label.startswith(("LocalCache", "LRUCache", "LRU", "SIEVE", "W-TinyLFU 1%"))]
    result = run(traces, fractions=(0.05, 0.2), candidates={label: CANDIDATES[label] for label in names})
    assert result["candidates"] == names
    assert [row["summary"]["name"] for row in result["traces"]] == ["session", "session-nobots", "session-1req"]
    for row in result["traces"]:
        lru_label = next(label for label in row["matches"] if label.startswith("LRUCache"))
        assert "LRU (ref)" in row["matches"][lru_label]
        for label, ms in row["misses"].items():
            assert ms[0] >= ms[1], label  # a bigger cache misses no more on these traces
    text = format_markdown(result)
    assert "| 5.0% (" in text and "LocalCache" in text


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_localcache_misses_exactly_as_the_reference_clock(name: str, bots_trace: Any, scan_trace: Any) -> None:
    """LocalCache evicts with CLOCK: the compiled cache and its twin agree with bench/policies.py miss for miss.

    (The reference replaces the victim in its slot of a ring; LocalCache moves a marked
    oldest entry to the newest end of a queue: the same policy, so the same misses.)
    """
    module = importlib.import_module(MODULES[name])
    for keys in (bots_trace.keys[:10_000], scan_trace.keys[:10_000]):
        for cap in (1, 5, 300):
            assert replay_local_cache(keys, cap, module.LocalCache)[0] == replay_policy(keys, Clock(cap))
