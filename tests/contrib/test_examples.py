"""The example apps: each starts with one command on its own private Redis and shows a
session counter, login with a new id, and logout."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest

from fastsess.server import free_port

from .test_multiprocess import request

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {"django": "django_app.py", "flask": "flask_app.py", "starlette": "starlette_app.py", "fastapi": "fastapi_app.py"}


@pytest.mark.parametrize("framework", sorted(EXAMPLES))
def test_example_app(framework: str) -> None:
    port = free_port()
    cookie_as = "starlette" if framework == "fastapi" else framework  # the cookie's name
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # the example starts its own Redis
    env["PORT"] = str(port)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / EXAMPLES[framework])],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        start = time.monotonic()
        while True:
            try:
                body, cookie = request(port, "/", None, cookie_as)
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() - start < 60, "example did not start"
                time.sleep(0.1)
        assert body == {"user": None, "visits": 1} and cookie
        body, _ = request(port, "/", cookie, cookie_as)
        assert body == {"user": None, "visits": 2}
        body, login_cookie = request(port, "/login?user=ada", cookie, cookie_as)
        assert body == {"user": "ada"} and login_cookie and login_cookie != cookie
        assert request(port, "/", login_cookie, cookie_as)[0] == {"user": "ada", "visits": 3}
        assert request(port, "/", cookie, cookie_as)[0] == {"user": None, "visits": 1}  # the old id is gone
        body, gone = request(port, "/logout", login_cookie, cookie_as)
        assert body == {"user": None} and gone == ""
        assert request(port, "/", login_cookie, cookie_as)[0] == {"user": None, "visits": 1}
    finally:
        proc.terminate()
        try:
            output, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate(timeout=10)
    assert "private Redis for this example" in output
