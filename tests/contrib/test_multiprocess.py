"""Two app processes on loopback sharing one private Redis, a ClusteredRedisStore in each:
a login on A is seen on B, a change on B reaches A although A had the session cached, and a
logout on A is seen on B.  One test per framework."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COOKIE = {"django": "sessionid", "flask": "session", "starlette": "session"}
LOGIN = {"django": "/login?user=ada", "flask": "/login/ada", "starlette": "/login/ada"}
DEADLINE = 5.0  # seconds: far below the 30 s local-cache TTL, so only an invalidation can explain a fresh read


@contextmanager
def app_process(framework: str, url: str, prefix: str) -> Iterator[int]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.contrib.serve", framework, url, prefix],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            proc.kill()
            raise AssertionError(f"{framework} server did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
        port = int(line.split()[1])
        start = time.monotonic()
        while True:  # wait until it answers
            try:
                request(port, "/anon", None, framework)
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() - start > 30 or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def request(port: int, path: str, cookie: str | None, framework: str) -> tuple[object, str | None]:
    """GET ``path``; returns (JSON body or text, the new cookie value: '' when deleted, None when unchanged)."""
    name = COOKIE[framework]
    headers = {"Cookie": f"{name}={cookie}"} if cookie else {}
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    with urllib.request.urlopen(req, timeout=10) as response:
        body = response.read().decode()
        new_cookie = None
        for header in response.headers.get_all("Set-Cookie") or []:
            if header.startswith(name + "="):
                value = header.split(";")[0][len(name) + 1:].strip('"')
                lowered = header.lower()
                deleted = "max-age=0" in lowered or "1970" in lowered or value in ("", "null")
                new_cookie = "" if deleted else value
    try:
        return json.loads(body), new_cookie
    except ValueError:
        return body, new_cookie


def wait_for(check: Callable[[], bool]) -> float:
    """Poll ``check`` until true; the seconds it took (AssertionError after DEADLINE)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > DEADLINE:
            raise AssertionError("not seen before the deadline")
        time.sleep(0.002)
    return time.monotonic() - start


@pytest.mark.parametrize("framework", ["django", "flask", "starlette"])
def test_two_processes_share_sessions(framework: str, redis_url: str, prefix: str) -> None:
    with app_process(framework, redis_url, prefix) as a, app_process(framework, redis_url, prefix) as b:
        body, cookie = request(a, LOGIN[framework], None, framework)
        assert cookie
        # log in on A -> B sees it
        assert request(b, "/read", cookie, framework)[0] == {"user": "ada", "count": 0}
        # A has it cached: its next reads are cache hits
        request(a, "/read", cookie, framework)
        hits = request(a, "/stats", None, framework)[0]["hits"]  # type: ignore[index]
        assert request(a, "/read", cookie, framework)[0] == {"user": "ada", "count": 0}
        assert request(a, "/stats", None, framework)[0]["hits"] > hits  # type: ignore[index]
        # change on B -> A sees it
        body, new_cookie = request(b, "/incr", cookie, framework)
        assert body == {"count": 1} and new_cookie in (None, cookie)
        took = wait_for(lambda: request(a, "/read", cookie, framework)[0] == {"user": "ada", "count": 1})
        print(f"{framework}: change on B seen on A after {took * 1000:.1f} ms")
        # log out on A -> B sees it gone
        body, new_cookie = request(a, "/logout", cookie, framework)
        assert new_cookie == ""
        took = wait_for(lambda: request(b, "/read", cookie, framework)[0] == {"user": None, "count": 0})
        print(f"{framework}: logout on A seen on B after {took * 1000:.1f} ms")
