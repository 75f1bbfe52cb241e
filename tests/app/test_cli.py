"""The ``fastsess`` command: exit codes, output, ``--json`` schema, ``--plot``, doctor, demo.

Run in-process with click's ``CliRunner`` against private Redis servers and
with small sizes, so the whole file takes seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fastsess.cli import main
from fastsess.server import RedisServer, free_port

SMALL = ["--quick", "--sizes", "1000", "--probes", "1000", "--thread-hits", "10000", "--thread-runs", "5",
         "--store-ops", "40", "--latency-samples", "20", "--sessions", "200", "--requests", "2000"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def dead_url() -> str:
    """A URL nothing listens on (a fresh free port)."""
    return f"redis://127.0.0.1:{free_port()}/0"


def test_version_and_help(runner: CliRunner) -> None:
    from fastsess import __version__

    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("bench", "demo", "doctor"):
        assert command in result.output


def test_python_dash_m_runs_the_same_tool() -> None:
    done = subprocess.run([sys.executable, "-m", "fastsess", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "bench" in done.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "--sizes", "abc"],
        ["bench", "--sizes", "0,10"],
        ["bench", "--probes", "5"],
        ["demo", "--nodes", "0"],
        ["demo", "--duration", "0.1"],
        ["bench", "--no-such-option"],
        ["no-such-command"],
    ],
)
def test_bad_arguments_exit_2_with_usage(runner: CliRunner, args: list[str]) -> None:
    result = runner.invoke(main, args)
    assert result.exit_code == 2
    assert "Usage:" in result.output or "Error" in result.output
    assert "Traceback" not in result.output


def test_bench_cache_only_json_schema_and_plot(runner: CliRunner, tmp_path: Path) -> None:
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    result = runner.invoke(main, ["bench", "--cache-only", *SMALL, "--json", str(out), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert "dict" in result.output and "Targets" in result.output
    report = json.loads(out.read_text())
    assert report["implementation"] in ("c", "py")
    assert report["cache"]["sizes"] == [1000]
    names = {row["candidate"] for row in report["cache"]["rows"]}
    assert {"dict", "fastsess LocalCache (py)", "fastsess TTLCache (py)"} <= names
    for row in report["cache"]["rows"]:
        assert {"candidate", "size", "hit_subscript", "hit_get", "miss", "set_evict", "mixed", "mixed_read_hit_rate"} <= set(row)
        for key in ("hit_get", "miss", "set_evict", "mixed"):
            assert row[key]["n"] == 1 and 0 < row[key]["min"] <= row[key]["median"] <= row[key]["max"]
    assert "stores" not in report and "cluster" not in report
    for check in report["checks"].values():
        assert isinstance(check["ok"], bool) and isinstance(check["value"], float) and isinstance(check["target"], float)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_bench_full_sections_against_given_url(runner: CliRunner, tmp_path: Path, redis_url: str) -> None:
    out = tmp_path / "r.json"
    result = runner.invoke(main, ["bench", *SMALL, "--url", redis_url, "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["redis"]["source"] == "REDIS_URL"
    rows = {(r["candidate"], r["op"]): r for r in report["stores"]["rows"]}
    for key in [("redis-py GET + msgpack", "load"), ("fastsess RedisStore", "load"), ("fastsess RedisStore", "save"),
                ("fastsess ClusteredRedisStore", "load (cached)"), ("fastsess ClusteredRedisStore", "save (+publish)"),
                ("fastsess.asyncio RedisStore", "load")]:
        assert key in rows
        assert rows[key]["p50_us"] > 0 and rows[key]["p99_us"] >= rows[key]["p50_us"]
    inv = report["cluster"]["invalidation"]
    assert inv["samples"] == 20 and 0 < inv["p50_ms"] <= inv["p99_ms"] <= inv["max_ms"]
    load = report["cluster"]["read_load"]
    assert load["without_cache"]["redis_gets"] == 2000  # counted on the server: one GET per request
    for n in (1, 2):
        assert 0 < load[f"nodes_{n}"]["redis_gets_per_1000"] < 1000
    # the benchmark cleaned up after itself
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        assert list(client.scan_iter(match="fastsess-bench:*")) == []
    finally:
        client.close()


def test_bench_starts_its_own_redis_when_no_url(runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    out = tmp_path / "r.json"
    result = runner.invoke(main, ["bench", *SMALL, "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["redis"]["source"].startswith("private server")


def test_bench_unreachable_redis_is_one_line_exit_1(runner: CliRunner) -> None:
    result = runner.invoke(main, ["bench", *SMALL, "--url", dead_url()])
    assert result.exit_code == 1
    assert "fastsess: error:" in result.output and "not reachable" in result.output
    assert "Cache," not in result.output  # checked before the cache section, not after it
    assert "Traceback" not in result.output


def test_debug_shows_the_exception(runner: CliRunner) -> None:
    result = runner.invoke(main, ["--debug", "bench", *SMALL, "--url", dead_url()])
    assert result.exit_code != 0
    from fastsess.errors import StoreUnavailable

    assert isinstance(result.exception, StoreUnavailable)


def test_doctor_without_redis(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    result = runner.invoke(main, ["doctor"])
    assert "cache core" in result.output and "hiredis" in result.output
    assert "not configured" in result.output
    from fastsess.cache import IMPLEMENTATION, NO_EXTENSIONS

    if IMPLEMENTATION == "c":
        assert "compiled (fastsess._lru from" in result.output
    else:
        assert "pure Python (fastsess._lru_py)" in result.output
    # the pure twin chosen with FASTSESS_NO_EXTENSIONS is information, not a failure
    assert result.exit_code == (0 if IMPLEMENTATION == "c" or NO_EXTENSIONS else 1)


def test_doctor_with_redis(runner: CliRunner, redis_server: RedisServer) -> None:
    result = runner.invoke(main, ["doctor", "--url", redis_server.url])
    assert "reachable" in result.output
    assert "pub/sub round trip" in result.output and "[FAIL]" not in result.output
    assert result.exit_code == 0, result.output
    assert "standalone" in result.output


def test_doctor_unreachable_exit_1(runner: CliRunner) -> None:
    result = runner.invoke(main, ["doctor", "--url", dead_url()])
    assert result.exit_code == 1
    assert "unreachable" in result.output


def test_doctor_never_prints_the_password(runner: CliRunner) -> None:
    url = f"redis://user:s3cret-pass@127.0.0.1:{free_port()}/0"
    result = runner.invoke(main, ["doctor", "--url", url])
    assert "s3cret-pass" not in result.output and "***" in result.output


def test_demo_three_nodes_no_stale_reads(runner: CliRunner, redis_url: str) -> None:
    result = runner.invoke(main, ["demo", "--nodes", "3", "--duration", "2", "--sessions", "100", "--url", redis_url])
    assert result.exit_code == 0, result.output
    assert "stale reads observed: 0" in result.output
    table = [row for row in (line.split() for line in result.output.splitlines()) if len(row) == 15 and row[0].isdigit()]
    nodes = {int(row[0]) for row in table}
    assert nodes == {0, 1, 2}
    last = {int(row[0]): row for row in table}
    for row in last.values():
        reads, invalidations = int(row[1].replace(",", "")), int(row[7].replace(",", ""))
        assert reads > 0
        assert invalidations > 0  # every node applied writes/deletes from the others
        assert int(row[9]) > 0  # sequence numbers applied
    # Nodes 0 and 1 broke their listener's connection (at 1 s and 2 s): each resubscription
    # replayed the log (no full flush), and no read was stale meanwhile.
    drops, replays = sum(int(row[10]) for row in last.values()), sum(int(row[11]) for row in last.values())
    assert drops >= 1 and replays >= 1, result.output
    assert sum(int(row[13]) for row in last.values()) == 0, result.output


def test_demo_detects_stale_reads_when_nodes_do_not_hear_each_other(runner: CliRunner, redis_url: str) -> None:
    # The control experiment: the same workload with invalidation cut must show stale reads,
    # otherwise the "0 stale reads" above would prove nothing.
    result = runner.invoke(main, ["demo", "--nodes", "2", "--duration", "2", "--sessions", "50", "--url", redis_url, "--no-invalidation"])
    assert result.exit_code == 1, result.output
    stale = int(result.output.rsplit("stale reads observed:", 1)[1].split()[0])
    assert stale > 0


def test_stale_judgement() -> None:
    from fastsess.demo import GRACE, _is_stale
    from fastsess.session import Session

    old = Session("x" * 43, {}, ttl=10, version=3)
    assert _is_stale(old, want=4, age=GRACE * 2)
    assert not _is_stale(old, want=4, age=GRACE / 2)  # within the delivery window
    assert not _is_stale(old, want=3, age=10.0)
    assert _is_stale(None, want=4, age=1.0)  # committed but not found
    assert _is_stale(old, want=-1, age=1.0)  # deleted but still served
    assert not _is_stale(None, want=-1, age=1.0)
