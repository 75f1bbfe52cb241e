"""Shared by the examples: ``$REDIS_URL``, or a private ``redis-server`` started for this run."""

from __future__ import annotations

import atexit
import os
import signal
import sys


def redis_url() -> str:
    """``$REDIS_URL`` if set, else the URL of a private Redis stopped when this process exits."""
    url = os.environ.get("REDIS_URL")
    if url:
        return url
    from fastsess.server import RedisServer

    server = RedisServer().start()
    atexit.register(server.close)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run atexit on `kill` too
    os.environ["REDIS_URL"] = server.url
    print(f"private Redis for this example: {server.url}", flush=True)
    return server.url
