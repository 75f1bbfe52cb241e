"""Launchers for private servers (single, Sentinel, cluster) and test-only fault control."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import redis

from fastsess.server import RedisServer, find_cli_binary, find_server_binary, free_port

__all__ = ["RedisClusterNodes", "RedisServer", "SentinelProcess", "cluster_port", "kill", "pause", "restart"]


# --- fault control ------------------------------------------------------------------------


def _pid(server: RedisServer) -> int:
    pid = server.pid
    if pid is None:
        raise RuntimeError(f"{server!r} is not running")
    return pid


def kill(server: RedisServer) -> None:
    """Kill ``server`` abruptly (SIGKILL), as a crash would; ``server.start()`` brings it back."""
    if not server.running:
        return
    os.kill(_pid(server), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while server.running:  # ``running`` polls (and so reaps) the process
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server!r} survived SIGKILL")
        time.sleep(0.002)
    server.stop()  # forgets the dead process


def restart(server: RedisServer) -> RedisServer:
    """Stop ``server`` gracefully and start it again on the same port (the dataset is lost)."""
    server.stop()
    return server.start()


@contextlib.contextmanager
def pause(server: RedisServer) -> Iterator[int]:
    """Freeze ``server`` (SIGSTOP) for the ``with`` block: connections stay open, nothing answers.

    Yields the process id; SIGCONT is sent on exit, whatever happened inside.
    """
    pid = _pid(server)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGCONT)


# --- Sentinel -----------------------------------------------------------------------------


class SentinelProcess:
    """A Sentinel (``redis-server <conf> --sentinel``) on a free port monitoring ``master``.

    ``start()`` returns once the Sentinel reports ``master`` for ``name``; ``close()``
    stops it.  Its config file, which Sentinel rewrites, and its log live in ``directory``.
    """

    def __init__(self, master: RedisServer, directory: Path, name: str = "fastsess-test") -> None:
        self.master, self.directory, self.name = master, Path(directory), name
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = self.directory / "sentinel.log"

    def start(self, timeout: float = 10.0) -> SentinelProcess:
        conf = self.directory / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n"
            f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.name} 2000\n"
        )
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen([find_server_binary(), str(conf), "--sentinel"], stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    master = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
                    if master and int(master[1]) == self.master.port:
                        return self
                except (redis.RedisError, OSError):
                    pass
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"the Sentinel never reported the master: {self._log.read_text()}")
                time.sleep(0.05)
        finally:
            client.close()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> SentinelProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


# --- Redis Cluster ------------------------------------------------------------------------

CLUSTER_ARGS = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000")


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisClusterNodes:
    """``masters`` cluster-enabled servers with ``replicas`` replicas each, joined into one cluster.

    ``start()`` returns once every node reports ``cluster_state:ok`` (and every replica
    is in sync with its master); ``close()`` stops and removes them all.  ``servers`` is
    sorted by port; without replicas every server is a master.
    """

    def __init__(self, masters: int = 3, replicas: int = 0) -> None:
        ports: set[int] = set()
        while len(ports) < masters * (1 + replicas):
            ports.add(cluster_port())
        self.replicas = replicas
        self.servers = [RedisServer(port=port, extra_args=CLUSTER_ARGS) for port in sorted(ports)]

    def start(self, timeout: float = 20.0) -> RedisClusterNodes:
        try:
            for server in self.servers:
                server.start()
            subprocess.run(
                [find_cli_binary(), "--cluster", "create", *(f"127.0.0.1:{s.port}" for s in self.servers),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                check=True, timeout=30, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + timeout
            for server in self.servers:
                client = redis.Redis(host="127.0.0.1", port=server.port)
                try:
                    while client.cluster("info").get("cluster_state") != "ok" or (
                        client.info("replication").get("master_link_status") not in (None, "up")
                    ):
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"cluster not ok on {server.port}")
                        time.sleep(0.05)
                finally:
                    client.close()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for server in self.servers:
            server.close()

    def __enter__(self) -> RedisClusterNodes:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
