"""Test-only control of private Redis servers: the three launchers and the fault helpers.

* ``RedisServer`` (from the public ``fastsess.server``, which ``fastsess bench`` uses
  too): one private ``redis-server`` on a free 127.0.0.1 port.
* ``SentinelProcess``: a Sentinel monitoring a ``RedisServer``.
* ``RedisClusterNodes``: three cluster-enabled masters joined by ``redis-cli --cluster create``.
* ``kill(server)`` (SIGKILL, as a crash), ``restart(server)`` (stop and start on the
  same port, the dataset lost) and ``pause(server)`` (SIGSTOP for the ``with`` block:
  a hung server that neither answers nor closes).

The fixtures in ``tests/conftest.py`` and ``tests/cluster/conftest.py`` are built
on these; nothing under ``src/`` imports this package.
"""

from __future__ import annotations

from .servers import RedisClusterNodes, RedisServer, SentinelProcess, cluster_port, kill, pause, restart

__all__ = ["RedisClusterNodes", "RedisServer", "SentinelProcess", "cluster_port", "kill", "pause", "restart"]
