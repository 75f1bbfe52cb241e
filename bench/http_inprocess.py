"""In-process cost of the framework drop-ins' request path: ``python bench/http_inprocess.py``.

Calls the apps of ``bench/http/`` directly (WSGI ``application(environ,
start_response)`` for Django and Flask, the ASGI ``app(scope, receive, send)``
for Starlette), without a server or sockets, so the session layer's own CPU
cost per request shows without queueing and network noise:
``cost = CPU time per request(with session) - CPU time per request(no session)``
(``time.process_time``: the process's CPU time, so time spent waiting for a CPU on a
shared machine does not count).
Each (framework, mode) runs in its own process (Django settings are per
process); modes alternate over ``--reps`` repetitions and the median is kept.

``--profile FRAMEWORK:MODE:ENDPOINT`` prints a cProfile of that cell instead (with
``HTTP_INPROCESS_PROFILE_DUMP=file`` also writes the raw stats there, for ``pstats``).
``--callgrind`` counts instructions instead of timing (needs ``valgrind``): each child
runs under callgrind, which counts only the requests (they run inside ``math.fsum``:
``--toggle-collect=math_fsum``), after a warmup and ``gc.freeze()``, with
``PYTHONHASHSEED`` = the round number.  Unlike CPU time this does not change with what
else the machine runs (callgrind is about 50x slower: use a small ``-n``).  For Django's
fastsess cell the store gets a 120 s lease (else its slowed listener lets it lapse and
reads bypass the cache); Flask's and Starlette's stores keep theirs, so their counts may
include reads from Redis.
Redis is a private ``redis-server`` on a free port (fastsess.server.RedisServer).
This is a diagnostic, not the benchmark of record: ``bench/http_bench.py`` is.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
APPS = HERE / "http"
FRAMEWORKS = ("django", "flask", "starlette")
MODES = ("none", "usual", "fastsess")


def _wsgi_caller(app: Any, path: str, cookie: str) -> Any:
    base = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1", "wsgi.url_scheme": "http", "wsgi.multithread": True,
        "wsgi.multiprocess": False, "wsgi.run_once": False, "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
    }
    if cookie:
        base["HTTP_COOKIE"] = cookie

    def call() -> list[tuple[str, str]]:
        environ = dict(base, **{"wsgi.input": io.BytesIO()})
        headers: list[tuple[str, str]] = []

        def sr(status: str, hdrs: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers.extend(hdrs)
            return None

        result = app(environ, sr)
        for _ in result:
            pass
        close = getattr(result, "close", None)
        if close is not None:
            close()
        return headers

    return call


def _asgi_caller(app: Any, path: str, cookie: str) -> Any:
    headers = [(b"host", b"127.0.0.1")]
    if cookie:
        headers.append((b"cookie", cookie.encode()))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def call() -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                out.extend((k.decode(), v.decode()) for k, v in message["headers"])

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000),
        }
        await app(scope, receive, send)
        return out

    return call


def _cookie_of(headers: list[tuple[str, str]]) -> str:
    return "; ".join(v.split(";", 1)[0] for k, v in headers if k.lower() == "set-cookie")


def child(framework: str, mode: str, redis_url: str, n: int, reps: int, profile: str | None) -> None:
    """Run in the child process: time ``n`` requests per endpoint, ``reps`` times; print JSON."""
    os.environ["BENCH_SESSION"] = mode
    os.environ["REDIS_URL"] = redis_url
    sys.path.insert(0, str(APPS))
    module = __import__(f"{framework}_app")
    results: dict[str, list[float]] = {}
    counted = os.environ.get("HTTP_INPROCESS_CALLGRIND")
    endpoints = (counted,) if counted else ("read", "write")
    if counted and framework == "django" and mode == "fastsess":
        from django.conf import settings

        # under callgrind the listener thread is ~50x slower too: a 1 s lease would run out and
        # the store bypass its cache (reading Redis), which a real server does not do
        settings.FASTSESS_CLUSTER = {"lease": 120.0}
    if framework == "starlette":
        app = module.app
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        # lifespan is not run: the middleware builds its store at construction (no startup needed)
        login = _asgi_caller(app, "/login", "")
        cookie = _cookie_of(loop.run_until_complete(login()))
        for ep in endpoints:
            call = _asgi_caller(app, f"/{ep}", cookie)

            async def many(call: Any = call) -> None:
                for _ in range(n):
                    await call()

            loop.run_until_complete(many())  # warmup
            if profile == ep:
                _profile(lambda: loop.run_until_complete(many()))
                return
            if counted:
                _counted(lambda: loop.run_until_complete(many()))
                continue
            for _ in range(reps):
                t = time.process_time()
                loop.run_until_complete(many())
                results.setdefault(ep, []).append((time.process_time() - t) / n * 1e6)
    else:
        app = module.application if framework == "django" else module.app
        cookie = _cookie_of(_wsgi_caller(app, "/login", "")())
        for ep in endpoints:
            call = _wsgi_caller(app, f"/{ep}", cookie)

            def many(call: Any = call) -> None:
                for _ in range(n):
                    call()

            many()  # warmup
            if profile == ep:
                _profile(many)
                return
            if counted:
                _counted(many)
                continue
            for _ in range(reps):
                t = time.process_time()
                many()
                results.setdefault(ep, []).append((time.process_time() - t) / n * 1e6)
    if mode != "none" and not cookie:
        raise SystemExit(f"{framework}/{mode}: /login set no cookie")
    print(json.dumps(results))


def _counted(fn: Any) -> None:
    """Run ``fn`` once inside ``math.fsum``: callgrind collects only there (``--callgrind``)."""
    gc.collect()
    gc.freeze()  # the warm heap is not traversed by the collections the counted requests cause

    def inside() -> Any:
        fn()
        yield 0.0

    math.fsum(inside())


def _instructions(out_file: str) -> int:
    """The instruction count callgrind wrote to ``out_file`` (its ``summary:`` line)."""
    with open(out_file) as f:
        return next(int(line.split()[1]) for line in f if line.startswith("summary:"))


def _profile(fn: Any) -> None:
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    dump = os.environ.get("HTTP_INPROCESS_PROFILE_DUMP")
    if dump:  # raw stats for pstats (e.g. to filter by module)
        prof.dump_stats(dump)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(45)


def main(argv: list[str] | None = None) -> int:
    """Parent: start Redis, run each (framework, mode) in a child, print per-request costs."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    p.add_argument("--modes", default=",".join(MODES), help="none,usual,fastsess (default); Django also has null")
    p.add_argument("-n", type=int, default=2000, help="requests per timed batch (default 2000)")
    p.add_argument("--reps", type=int, default=5, help="timed batches per cell; median kept (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="child processes per cell, modes interleaved (default 3)")
    p.add_argument("--profile", help="FRAMEWORK:MODE:ENDPOINT: print a cProfile of that cell")
    p.add_argument("--callgrind", action="store_true", help="count instructions per request under valgrind instead")
    p.add_argument("--child", nargs=3, metavar=("FRAMEWORK", "MODE", "URL"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        fw, mode, url = args.child
        child(fw, mode, url, args.n, args.reps, os.environ.get("HTTP_INPROCESS_PROFILE"))
        return 0

    from fastsess.server import RedisServer

    def run(fw: str, mode: str, url: str, profile: str | None = None, rnd: int = 0) -> str:
        env = dict(os.environ)
        if profile:
            env["HTTP_INPROCESS_PROFILE"] = profile
        cmd = [sys.executable, __file__, "--child", fw, mode, url, "-n", str(args.n), "--reps", str(args.reps)]
        if not args.callgrind:
            return subprocess.run(cmd, env=env, capture_output=not profile, text=True, check=True).stdout
        counts = {}
        for ep in ("read", "write"):  # one child per endpoint: callgrind counts all that runs in math.fsum
            env.update(HTTP_INPROCESS_CALLGRIND=ep, PYTHONHASHSEED=str(rnd))
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "callgrind.out")
                subprocess.run(
                    ["valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=math_fsum",
                     f"--callgrind-out-file={out}", *cmd],
                    env=env, capture_output=True, text=True, check=True,
                )
                counts[ep] = [_instructions(out) / args.n]
        return json.dumps(counts)

    with RedisServer() as server:
        if args.profile:
            fw, mode, ep = args.profile.split(":")
            run(fw, mode, server.url, ep)
            return 0
        frameworks = [f for f in args.frameworks.split(",") if f]
        modes = tuple(m for m in args.modes.split(",") if m)
        times: dict[tuple[str, str, str], list[float]] = {}
        for rnd in range(args.rounds):
            for fw in frameworks:
                for mode in (modes if rnd % 2 == 0 else tuple(reversed(modes))):
                    out = json.loads(run(fw, mode, server.url, rnd=rnd).strip().splitlines()[-1])
                    for ep, values in out.items():
                        times.setdefault((fw, mode, ep), []).extend(values)
    if args.callgrind:
        print(f"instructions per request, in process (median of {args.rounds} rounds of {args.n}); cost = mode - none")
    else:
        print(f"CPU us per request, in process (median of {args.rounds} x {args.reps} batches of {args.n}); cost = mode - none")
    for fw in frameworks:
        for ep in ("read", "write"):
            med = {m: statistics.median(times[(fw, m, ep)]) for m in modes}
            base = med.get("none", 0.0)
            cells = "  ".join(f"{m} {v:7.1f} (+{v - base:6.1f})" for m, v in med.items())
            print(f"{fw:10} {ep:6} {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
