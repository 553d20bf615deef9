"""A private ``redis-server`` process on a free port, for tests that need a real Redis."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from types import TracebackType
from typing import Any

import redis

__all__ = ["RedisServer", "RedisServerUnavailable", "free_port"]


class RedisServerUnavailable(RuntimeError):
    """No redis-server could be started (the binary is missing or did not come up)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_cluster_port(attempts: int = 200) -> int:
    """A port for a cluster node: it and its bus port (10000 higher) both free, at most 55535."""
    rng = random.Random()
    for _ in range(attempts):
        port = rng.randrange(20000, 45000)
        if all(_bindable(p) for p in (port, port + 10000)):
            return port
    raise RedisServerUnavailable("no free port pair for a cluster node")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class RedisServer:
    """A ``redis-server`` started on a free port in a temporary directory, stopped on exit.

    It keeps nothing on disk. :meth:`pause` and :meth:`resume` stop and continue the process
    (SIGSTOP / SIGCONT) to simulate a stalled server; :meth:`kill` ends it abruptly and
    :meth:`restart` starts it again, empty, on the same port.
    """

    def __init__(self, binary: str | None = None, *, extra_args: tuple[str, ...] = ()) -> None:
        self.binary = binary or os.environ.get("REDIS_SERVER_BIN") or "redis-server"
        self.extra_args = extra_args
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._paused = False

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, timeout: float = 10.0) -> RedisServer:
        """Start the server (on a new free port unless restarting) and wait until it answers."""
        path = shutil.which(self.binary)
        if path is None:
            raise RedisServerUnavailable(f"{self.binary!r} is not on PATH")
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="cachecow-redis-")
        if not self.port:
            self.port = free_port()
        args = [
            path,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir.name,
            "--logfile", os.path.join(self._dir.name, "redis.log"),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            while True:
                if self.process.poll() is not None:
                    err = self.process.stderr.read().decode() if self.process.stderr else ""
                    log = os.path.join(self._dir.name, "redis.log")
                    if os.path.exists(log):
                        with open(log, encoding="utf-8", errors="replace") as lines:
                            err += "".join(lines.readlines()[-5:])
                    raise RedisServerUnavailable(f"redis-server exited at start: {err.strip()}")
                try:
                    if client.ping():
                        return self
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RedisServerUnavailable(f"redis-server did not answer within {timeout}s")
                time.sleep(0.02)
        finally:
            client.close()

    def pause(self) -> None:
        """Stop the process (SIGSTOP): connections hang, nothing is answered."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Continue a paused process (SIGCONT)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self._paused = False

    def kill(self) -> None:
        """End the process at once (SIGKILL); the port then refuses connections."""
        if self.process is not None and self.process.poll() is None:
            if self._paused:
                self.resume()
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()

    def restart(self) -> None:
        """Kill the server and start it again, empty, on the same port."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        if self.process is not None and self.process.poll() is None:
            if self._paused:
                self.resume()
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class RedisClusterServers:
    """A Redis Cluster of ``masters`` private ``redis-server`` processes on free ports, created
    with ``redis-cli --cluster create``; stopped (and their directories removed) on :meth:`stop`."""

    def __init__(self, masters: int = 3) -> None:
        self.servers = [
            RedisServer(
                extra_args=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
            )
            for _ in range(masters)
        ]
        for server in self.servers:
            server.port = free_cluster_port()

    @property
    def ports(self) -> list[int]:
        """The masters' ports."""
        return [server.port for server in self.servers]

    def start(self, *, timeout: float = 20.0) -> RedisClusterServers:
        """Start the servers, join them into one cluster and wait until it reports ``ok``."""
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RedisServerUnavailable("redis-cli is not on PATH (needed to create a cluster)")
        try:
            for server in self.servers:
                server.start(timeout=timeout)
            nodes = [f"127.0.0.1:{port}" for port in self.ports]
            created = subprocess.run(
                [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            if created.returncode != 0:
                raise RedisServerUnavailable(f"redis-cli --cluster create failed: {created.stdout}")
            deadline = time.monotonic() + timeout
            for port in self.ports:
                client: Any = redis.Redis(port=port, socket_timeout=1)
                try:
                    while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                        if time.monotonic() > deadline:
                            raise RedisServerUnavailable("the cluster never reached state ok")
                        time.sleep(0.05)
                finally:
                    client.close()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every server."""
        for server in self.servers:
            server.stop()
