"""``fastsess doctor``: what this installation and its Redis look like.

``diagnose`` returns a list of ``Check`` results; the CLI prints them.  The
Redis checks are read-only apart from one PUBLISH on a random channel (which
stores nothing), so they are safe against a production server.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import secrets
import sys
import sysconfig
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit


@dataclass(frozen=True)
class Check:
    """One line of the report: ``ok`` is None for information that can't fail."""

    name: str
    value: str
    ok: bool | None = None


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (never print credentials)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment_checks() -> list[Check]:
    """fastsess and Python versions, the cache implementation in use, hiredis and redis-py. Cost: imports only."""
    from . import __version__

    free_threaded = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    checks = [
        Check("fastsess", __version__),
        Check("python", f"{platform.python_implementation()} {platform.python_version()}"
              f"{' (free-threaded)' if free_threaded else ''} on {sys.platform}"),
    ]
    checks.append(cache_core_check())
    hiredis = _package_version("hiredis")
    checks.append(Check("hiredis", f"installed ({hiredis})" if hiredis else "not installed (pip install 'fastsess[hiredis]')", None))
    checks.append(Check("redis-py", _package_version("redis") or "missing", None))
    return checks


def cache_core_check() -> Check:
    """Which cache implementation is loaded and why.

    Compiled: ok.  Pure-Python twin because ``FASTSESS_NO_EXTENSIONS`` asked for
    it: information only.  Pure-Python twin because the extension was not built
    (installed without a C compiler) or does not import: a failed check.
    """
    from .cache import IMPLEMENTATION, IMPORT_ERROR, NO_EXTENSIONS

    name = "cache core"
    if IMPLEMENTATION == "c":
        from . import _lru

        return Check(name, f"compiled (fastsess._lru from {_lru.__file__})", True)
    twin = "pure Python (fastsess._lru_py)"
    if NO_EXTENSIONS:
        return Check(name, f"{twin}: FASTSESS_NO_EXTENSIONS is set", None)
    if importlib.util.find_spec("fastsess._lru") is None:
        why = ("the compiled fastsess._lru was not built at install time (no working C compiler "
               "or Cython then); reinstall with a compiler, or set FASTSESS_NO_EXTENSIONS=1 to "
               "choose the twin on purpose")
    else:
        why = f"the compiled fastsess._lru is installed but does not import ({IMPORT_ERROR}); reinstall fastsess"
    return Check(name, f"{twin}: {why}", False)


def redis_checks(url: str, timeout: float = 2.0) -> list[Check]:
    """Reachability, server version, RESP version, pub/sub round trip and cluster mode of ``url``.

    Never raises for an unreachable or misbehaving server: that becomes a failed check.
    Cost: a handful of round trips, bounded by ``timeout`` each.
    """
    import redis

    shown = redact_url(url)
    client: Any = None
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        client.ping()  # connects; the round trips below are on the open connection
        rtt = min(_timed(client.ping) for _ in range(5))
    except (redis.RedisError, OSError, ValueError) as exc:
        if client is not None:
            client.close()
        return [Check("redis", f"{shown}: unreachable ({type(exc).__name__}: {exc})", False)]
    try:
        info = client.info("server")
        checks = [
            Check("redis", f"{shown}: reachable, PING {rtt * 1e6:.0f} us", True),
            Check("server", f"{info.get('redis_version', '?')} ({info.get('redis_mode', 'standalone')} mode)"),
        ]
        checks.append(Check("RESP", _resp_version(client)))
        checks.append(_cluster_check(client))
        checks.append(_pubsub_check(client, timeout))
        return checks
    except (redis.RedisError, OSError) as exc:
        return [Check("redis", f"{shown}: error during checks ({type(exc).__name__}: {exc})", False)]
    finally:
        client.close()


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _resp_version(client: Any) -> str:
    import redis

    try:
        hello = client.execute_command("HELLO", 3)
        client.execute_command("HELLO", 2)
    except redis.ResponseError:
        return "RESP2 only (server predates HELLO)"
    proto = hello.get("proto", hello.get(b"proto")) if isinstance(hello, dict) else None
    return f"RESP3 supported (negotiated proto {proto}); redis-py uses RESP2 unless protocol=3"


def _cluster_check(client: Any) -> Check:
    import redis

    try:
        info = client.info("cluster")
    except redis.ResponseError:
        return Check("cluster mode", "unknown")
    enabled = bool(info.get("cluster_enabled"))
    return Check("cluster mode", "enabled: use redis.cluster.RedisCluster" if enabled else "disabled (standalone)")


def _pubsub_check(client: Any, timeout: float) -> Check:
    channel = f"fastsess:doctor:{secrets.token_hex(8)}"
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(channel)
        pubsub.get_message(timeout=timeout)  # the subscribe confirmation
        t0 = time.perf_counter()
        client.publish(channel, b"ping")
        deadline = t0 + timeout
        while time.perf_counter() < deadline:
            msg = pubsub.get_message(timeout=max(deadline - time.perf_counter(), 0.0))
            if msg and msg.get("type") == "message":
                return Check("pub/sub round trip", f"{(time.perf_counter() - t0) * 1e6:.0f} us", True)
        return Check("pub/sub round trip", f"no message within {timeout:.1f} s", False)
    finally:
        pubsub.close()


def diagnose(url: str | None) -> list[Check]:
    """All checks; the Redis ones only when ``url`` is given."""
    checks = environment_checks()
    if url is None:
        checks.append(Check("redis", "not configured (set REDIS_URL or pass --url)", None))
    else:
        checks.extend(redis_checks(url))
    return checks
