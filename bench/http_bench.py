"""HTTP benchmark of the framework drop-ins: ``python bench/http_bench.py``.

Serves the small apps in ``bench/http/`` through real servers over loopback
(gunicorn for Django and Flask, uvicorn for Starlette) and drives them with
``wrk``, for three session layers side by side: fastsess, the framework's usual
Redis store, and no session at all.  Each cell is measured ``--reps`` times after a
warmup, the reported figure is the median, and the spread (min..max of the
repetitions) is printed beside it.  The session's own cost per request is
``p50(with session) - p50(no session)``; the script prints the ratio
fastsess / usual of that cost for the reading endpoint (goal: <= 0.2).

Needs ``wrk`` on PATH (Debian: ``apt-get install wrk``), gunicorn, uvicorn and the
usual stores (``pip install -e '.[bench,test]'``); exits 0 with a message naming
what is missing otherwise.  Redis is a private ``redis-server`` on a free port
(fastsess.server.RedisServer), never the one on 6379.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
APPS = HERE / "http"
FRAMEWORKS = ("django", "flask", "starlette")
MODES = ("none", "usual", "fastsess")
USUAL = {
    "django": "django-redis cache backend",
    "flask": "Flask-Session (redis)",
    "starlette": "starsessions RedisStore",
}
NEEDS = {
    "django": ["gunicorn", "django", "django_redis"],
    "flask": ["gunicorn", "flask", "flask_session"],
    "starlette": ["uvicorn", "starlette", "starsessions"],
}


def missing_requirements(frameworks: list[str]) -> list[str]:
    """Names of what the run needs and this machine lacks (``wrk`` and Python modules)."""
    missing = [] if shutil.which("wrk") else ["wrk"]
    for fw in frameworks:
        for mod in NEEDS[fw]:
            if importlib.util.find_spec(mod) is None and mod not in missing:
                missing.append(mod)
    return missing


def free_port() -> int:
    """A TCP port on 127.0.0.1 free at the time of the call."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(framework: str, mode: str, port: int, redis_url: str, threads: int) -> subprocess.Popen[bytes]:
    """Start one app server (one worker process) for ``framework`` with session layer ``mode``."""
    env = dict(os.environ, BENCH_SESSION=mode, REDIS_URL=redis_url, PYTHONPATH=str(APPS))
    bind = f"127.0.0.1:{port}"
    if framework == "starlette":
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "starlette_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
    else:
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            f"{framework}_app:{'application' if framework == 'django' else 'app'}",
            "-b",
            bind,
            "-w",
            "1",
            "-k",
            "gthread",
            "--threads",
            str(threads),
            "--log-level",
            "warning",
        ]
    return subprocess.Popen(cmd, env=env, cwd=APPS, start_new_session=True)


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until the server answers ``/read``; raise RuntimeError if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/read", timeout=2).read()
            return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"server on port {port} not ready after {timeout}s")


def session_cookie(port: int) -> str:
    """Log in once and return the ``Cookie`` header value to send back ('' without session)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=5) as resp:
        cookies = resp.headers.get_all("Set-Cookie") or []
    return "; ".join(c.split(";", 1)[0] for c in cookies)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"unparsable wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pgid: int | None = None, pid: int | None = None) -> float:
    """User + system CPU seconds used so far by process ``pid``, or by every process of group ``pgid`` (Linux /proc)."""
    total = 0
    for entry in os.listdir("/proc") if pid is None else [str(pid)]:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        # after "pid (comm)": state ppid pgrp ... utime is field 14 and stime 15 of stat(5), here 11 and 12
        if pid is not None or int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def run_wrk(url: str, cookie: str, seconds: int, connections: int, server_pgid: int | None = None,
            redis_pid: int | None = None) -> dict[str, float]:
    """One ``wrk -t1`` run; returns requests/s, p50 and p99 (ms), the count of non-2xx/errors and,
    given the server's process group and Redis's pid, the CPU time each used per request (us)."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if cookie:
        cmd[1:1] = ["-H", f"Cookie: {cookie}"]
    cpu0 = (cpu_seconds(pgid=server_pgid), cpu_seconds(pid=redis_pid)) if server_pgid and redis_pid else None
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    cpu1 = (cpu_seconds(pgid=server_pgid), cpu_seconds(pid=redis_pid)) if cpu0 else None
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    bad = 0
    for pat in (r"Non-2xx or 3xx responses:\s+(\d+)", r"Socket errors:.*?timeout (\d+)"):
        m = re.search(pat, out)
        bad += int(m.group(1)) if m else 0
    result = {"rps": rps, "p50": p50, "p99": p99, "bad": bad}
    if cpu0 and cpu1:
        requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        result["cpu_us"] = (cpu1[0] - cpu0[0]) / max(requests, 1) * 1e6
        result["redis_cpu_us"] = (cpu1[1] - cpu0[1]) / max(requests, 1) * 1e6
    return result


def bench_framework(fw: str, redis_url: str, args: argparse.Namespace, redis_pid: int | None = None) -> dict[str, Any]:
    """All cells of one framework: its three servers run at once, repetitions interleaved."""
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        modes = MODES + ("null",) if fw == "django" and args.django_null else MODES
        for mode in modes:
            port = free_port()
            servers[mode] = (start_server(fw, mode, port, redis_url, args.threads), port)
        for proc, port in servers.values():
            wait_ready(port, proc)
        cookies = {mode: session_cookie(port) for mode, (_, port) in servers.items()}
        for mode in modes:
            if mode != "none" and not cookies[mode]:
                raise RuntimeError(f"{fw}/{mode}: /login set no cookie")
        runs: dict[tuple[str, str], list[dict[str, float]]] = {}
        for mode, (_, port) in servers.items():  # warmup: imports, connection pools, caches
            for ep in ("read", "write"):
                run_wrk(f"http://127.0.0.1:{port}/{ep}", cookies[mode], args.warmup, args.connections)
        for rep in range(args.reps):
            order = modes if rep % 2 == 0 else tuple(reversed(modes))  # spread slow drift over all
            for ep in ("read", "write"):  # the three modes of one endpoint back to back: paired in time
                for mode in order:
                    port = servers[mode][1]
                    r = run_wrk(f"http://127.0.0.1:{port}/{ep}", cookies[mode], args.duration, args.connections,
                                servers[mode][0].pid, redis_pid)  # the server leads its own process group
                    runs.setdefault((mode, ep), []).append(r)
                    cpu = f"  cpu {r['cpu_us']:6.0f} us/req (redis {r['redis_cpu_us']:4.0f})" if "cpu_us" in r else ""
                    print(
                        f"  {fw:9} {mode:8} {ep:5} rep {rep + 1}: {r['rps']:8.0f} req/s  p50 {r['p50']:6.2f} ms  p99 {r['p99']:6.2f} ms{cpu}",
                        flush=True,
                    )
        return {f"{m}/{e}": v for (m, e), v in runs.items()}
    finally:
        for proc, _ in servers.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, _ in servers.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def summarize(runs: list[dict[str, float]]) -> dict[str, float]:
    """Median of each metric over the repetitions, plus the relative spread of req/s."""
    out = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99")}
    rps = [r["rps"] for r in runs]
    out["rps_spread"] = (max(rps) - min(rps)) / out["rps"] if out["rps"] else 0.0
    out["p50_min"] = min(r["p50"] for r in runs)
    out["p50_max"] = max(r["p50"] for r in runs)
    out["bad"] = sum(r["bad"] for r in runs)
    for key in ("cpu_us", "redis_cpu_us"):
        if all(key in r for r in runs):
            out[key] = statistics.median(r[key] for r in runs)
            out[key + "_min"] = min(r[key] for r in runs)
            out[key + "_max"] = max(r[key] for r in runs)
    return out


def paired_cost(cells: dict[str, Any], mode: str, ep: str, key: str) -> tuple[float, float, float]:
    """Median, min and max over the repetitions of ``key``(mode) - ``key``(no session) in the same repetition.

    Each repetition runs the three modes of an endpoint back to back, so pairing them
    cancels the slow drift of a shared machine's load that separate medians would keep.
    """
    diffs = [r[key] - n[key] for r, n in zip(cells[f"{mode}/{ep}"], cells[f"none/{ep}"])]
    return statistics.median(diffs), min(diffs), max(diffs)


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace, loads: dict[str, tuple[float, float]] | None = None) -> str:
    """The Markdown tables (cells, then session cost and the fastsess/usual ratio)."""
    lines = [
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node() or 'host'}: {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, 1 worker process per server"
        f" (gunicorn gthread x{args.threads} / uvicorn), wrk -t1 -c{args.connections} -d{args.duration}s,"
        f" {args.warmup}s warmup, median of {args.reps}.",
        "",
        "| framework | session | endpoint | req/s | p50 ms (min..max) | p99 ms | req/s spread |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for fw, cells in results.items():
        for mode in (*MODES, "null"):
            if f"{mode}/read" not in cells:
                continue
            for ep in ("read", "write"):
                s = summarize(cells[f"{mode}/{ep}"])
                name = USUAL[fw] if mode == "usual" else "null backend (Django's session machinery only)" if mode == "null" else mode
                bad = f" ({int(s['bad'])} errors)" if s["bad"] else ""
                lines.append(
                    f"| {fw} | {name} | {ep} | {s['rps']:.0f}{bad} | {s['p50']:.2f} ({s['p50_min']:.2f}..{s['p50_max']:.2f})"
                    f" | {s['p99']:.2f} | {s['rps_spread']:.0%} |"
                )
    lines += [
        "",
        "Session cost per request, by latency: p50(with session) - p50(no session) in the same repetition,",
        "in ms (median over the repetitions, min..max beside it); by throughput: 1000 / req/s with session",
        "- 1000 / req/s without (ms of the worker's time per request), paired the same way:",
        "",
        "| framework | endpoint | fastsess | usual | fastsess / usual | goal (reads) <= 0.20 | by req/s: fastsess | usual | ratio |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for fw, cells in results.items():
        for r in (r for runs in cells.values() for r in runs):
            r["ms_per_req"] = 1000 / r["rps"] if r["rps"] else float("nan")
        for ep in ("read", "write"):
            fast, usual = paired_cost(cells, "fastsess", ep, "p50"), paired_cost(cells, "usual", ep, "p50")
            ratio = fast[0] / usual[0] if usual[0] > 0 else float("nan")
            goal = ("met" if ratio <= 0.2 else "NOT met") if ep == "read" else "-"
            t_fast, t_usual = paired_cost(cells, "fastsess", ep, "ms_per_req")[0], paired_cost(cells, "usual", ep, "ms_per_req")[0]
            t_ratio = t_fast / t_usual if t_usual > 0 else float("nan")
            lines.append(
                f"| {fw} | {ep} | {fast[0]:.2f} ({fast[1]:.2f}..{fast[2]:.2f}) | {usual[0]:.2f} ({usual[1]:.2f}..{usual[2]:.2f})"
                f" | {ratio:.2f} | {goal} | {t_fast:.3f} | {t_usual:.3f} | {t_ratio:.2f} |"
            )
    if all("cpu_us" in r for cells in results.values() for runs in cells.values() for r in runs):
        lines += [
            "",
            "CPU time per request (us) of the app server (its whole process group) and of Redis; cost =",
            "with session - without, paired per repetition (median, min..max):",
            "",
            "| framework | endpoint | app: none | usual | fastsess | Redis: none | usual | fastsess | app cost: usual | fastsess | fastsess / usual |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for fw, cells in results.items():
            for ep in ("read", "write"):
                med = {m: summarize(cells[f"{m}/{ep}"]) for m in MODES}
                c_usual, c_fast = paired_cost(cells, "usual", ep, "cpu_us"), paired_cost(cells, "fastsess", ep, "cpu_us")
                ratio = c_fast[0] / c_usual[0] if c_usual[0] > 0 else float("nan")
                lines.append(
                    f"| {fw} | {ep} | " + " | ".join(f"{med[m]['cpu_us']:.0f}" for m in MODES) + " | "
                    + " | ".join(f"{med[m]['redis_cpu_us']:.0f}" for m in MODES)
                    + f" | {c_usual[0]:.0f} ({c_usual[1]:.0f}..{c_usual[2]:.0f}) | {c_fast[0]:.0f} ({c_fast[1]:.0f}..{c_fast[2]:.0f}) | {ratio:.2f} |"
                )
    for fw, cells in results.items():
        if "null/read" in cells:
            for ep in ("read", "write"):
                parts = [f"p50 {paired_cost(cells, 'null', ep, 'p50')[0]:.2f} ms"]
                if all("cpu_us" in r for r in cells[f"null/{ep}"]):
                    c = paired_cost(cells, "null", ep, "cpu_us")
                    parts.append(f"CPU {c[0]:.0f} us ({c[1]:.0f}..{c[2]:.0f})")
                lines.append(f"\n{fw} {ep}: cost of the null backend (Django's own session machinery, paid by every backend): {', '.join(parts)}")
    if loads:
        lines += ["", "Load average (1 min) at the start and end of each framework: " + ", ".join(
            f"{fw} {a:.2f} -> {b:.2f}" for fw, (a, b) in loads.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the Markdown report; 0 also when skipped for missing tools."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma list of django,flask,starlette")
    p.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="seconds of warmup per cell (default 2)")
    p.add_argument("--reps", type=int, default=3, help="repetitions per cell; the median is reported (default 3)")
    p.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    p.add_argument("--threads", type=int, default=8, help="gunicorn gthread threads (default 8)")
    p.add_argument("--django-null", action="store_true",
                   help="also serve Django with a session backend that stores nothing (bench/http/null_session.py): the floor")
    p.add_argument("--json", help="also write the raw runs to this file")
    p.add_argument("--plot", help="also draw a chart of the session cost (PNG; needs matplotlib)")
    args = p.parse_args(argv)
    frameworks = [f for f in args.frameworks.split(",") if f]
    unknown = set(frameworks) - set(FRAMEWORKS)
    if unknown:
        p.error(f"unknown frameworks: {', '.join(sorted(unknown))}")
    missing = missing_requirements(frameworks)
    if missing:
        print(f"http_bench: skipped, missing: {', '.join(missing)}. It needs wrk on PATH (apt-get install wrk) and pip install -e '.[bench,test]'.")
        return 0

    from fastsess.server import RedisServer

    results: dict[str, dict[str, Any]] = {}
    loads: dict[str, tuple[float, float]] = {}
    with RedisServer() as server:
        print(f"private Redis: {server.url}", flush=True)
        for fw in frameworks:
            start = os.getloadavg()[0]
            results[fw] = bench_framework(fw, server.url, args, server.pid)
            loads[fw] = (start, os.getloadavg()[0])
    text = report(results, args, loads)
    print()
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": results, "load": loads}, indent=1))
    if args.plot:
        plot(results, args.plot)
    return 0


def plot(results: dict[str, dict[str, Any]], path: str) -> None:
    """Bar chart of the session's own cost per request, fastsess vs usual, per framework.

    CPU time of the app server per request when measured (paired per repetition:
    median, with the min..max as error bars), else the p50 latency difference.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cpu = all("cpu_us" in r for cells in results.values() for runs in cells.values() for r in runs)
    key, unit = ("cpu_us", "CPU us") if cpu else ("p50", "p50 ms")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    fws = list(results)
    for ax, ep in zip(axes, ("read", "write")):
        for i, mode in enumerate(("usual", "fastsess")):
            costs = [paired_cost(results[f], mode, ep, key) for f in fws]
            mid = [c[0] for c in costs]
            err = [[c[0] - c[1] for c in costs], [c[2] - c[0] for c in costs]]
            ax.bar([x + i * 0.4 for x in range(len(fws))], mid, width=0.4, label=mode, yerr=err, capsize=3)
        ax.set_xticks([x + 0.2 for x in range(len(fws))], fws)
        ax.set_title(f"session cost per request, {ep} ({unit})")
        ax.axhline(0, color="black", linewidth=0.5)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
