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
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "RedisClusterServers",
    "RedisSentinelGroup",
    "RedisServer",
    "RedisServerUnavailable",
    "RedisTLSServer",
    "TLSFiles",
    "free_port",
    "make_tls_files",
]


class RedisServerUnavailable(RuntimeError):
    """No redis-server could be started (the binary is missing or did not come up)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, outside the kernel's range
    of ephemeral ports.

    Outside it, because a client that keeps reconnecting to a port of that range where
    nothing listens (a server starting, or killed by a test) can be given that very port as
    its own source port, and then connect to itself (a TCP self-connect): it reads back what
    it sent, and redis-py fails with errors such as ``'list' object has no attribute 'get'``.
    """
    return _free_port(bus_offset=None)


def free_cluster_port() -> int:
    """A port for a cluster node: it and its bus port (10000 higher) both free and both
    outside the range of ephemeral ports."""
    return _free_port(bus_offset=10000)


def _free_port(*, bus_offset: int | None, attempts: int = 500) -> int:
    low, high = _ephemeral_range()
    offsets = (0,) if bus_offset is None else (0, bus_offset)
    top = 65535 - max(offsets)
    # The ports whose every port needed (the node's, its bus port) lies outside the range.
    outside = [(1024, top)]
    for offset in offsets:
        outside = _minus(outside, low - offset, high - offset)
    rng = random.Random()
    # First a port from those; on a host whose range leaves none free, any free port, with a
    # warning.
    for strict in (True, False):
        if strict and not outside:
            continue
        for _ in range(attempts):
            if strict:
                first, last = rng.choices(outside, [b - a + 1 for a, b in outside])[0]
                port = rng.randint(first, last)
            else:
                port = rng.randint(1024, top)
            if all(_bindable(port + offset) for offset in offsets):
                if not strict:
                    warnings.warn(
                        f"the kernel's ephemeral port range ({low}-{high}) leaves no port for "
                        "a test server outside it; a client reconnecting to this one could "
                        "connect to itself",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                return port
    raise RedisServerUnavailable(
        f"no free port {'pair ' if bus_offset else ''}for a test server "
        f"(ephemeral range {low}-{high})"
    )


def _minus(ranges: list[tuple[int, int]], low: int, high: int) -> list[tuple[int, int]]:
    """``ranges`` (inclusive pairs) without the ports from ``low`` to ``high``."""
    kept = []
    for first, last in ranges:
        if first < low:
            kept.append((first, min(last, low - 1)))
        if last > high:
            kept.append((max(first, high + 1), last))
    return [(first, last) for first, last in kept if first <= last]


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range of ephemeral (source) ports; Linux's default where it cannot be read."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as spec:
            low, high = (int(field) for field in spec.read().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class _PortTaken(RedisServerUnavailable):
    """The port picked for a server was taken before the server could listen on it."""


class RedisServer:
    """A ``redis-server`` started on a free port in a temporary directory, stopped on exit.

    It keeps nothing on disk. :meth:`pause` and :meth:`resume` stop and continue the process
    (SIGSTOP / SIGCONT) to simulate a stalled server; :meth:`kill` ends it abruptly and
    :meth:`restart` starts it again, empty, on the same port.
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        extra_args: tuple[str, ...] = (),
        sentinel_config: str | None = None,
        pick_port: Callable[[], int] = free_port,
    ) -> None:
        self.binary = binary or os.environ.get("REDIS_SERVER_BIN") or "redis-server"
        self.extra_args = extra_args
        self.sentinel_config = sentinel_config
        self.pick_port = pick_port
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._paused = False

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, timeout: float = 10.0) -> RedisServer:
        """Start the server (on a new free port from :attr:`pick_port` unless it has a port
        already, as on a restart) and wait until it answers.

        A port it picked that something else took in the meantime is replaced by another,
        a few times over."""
        if self.port:
            return self._start(timeout=timeout)
        for _ in range(4):
            self.port = self.pick_port()
            try:
                return self._start(timeout=timeout)
            except _PortTaken:
                continue
            except BaseException:
                self.port = 0  # the next start picks a port again, it is no restart
                raise
        self.port = 0
        raise RedisServerUnavailable("every port picked for redis-server was taken at start")

    def _start(self, *, timeout: float) -> RedisServer:
        path = shutil.which(self.binary)
        if path is None:
            raise RedisServerUnavailable(f"{self.binary!r} is not on PATH")
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="cachecow-redis-")
        head = [path]
        # Nothing on disk; a replica's full sync starts at once (the default waits 5 s).
        persistence = ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]
        if self.sentinel_config is not None:  # its configuration file must be writable
            conf = os.path.join(self._dir.name, "sentinel.conf")
            if not os.path.exists(conf):  # a restart keeps what the Sentinel learned
                with open(conf, "w", encoding="utf-8") as out:
                    out.write(self.sentinel_config)
            head, persistence = [path, conf, "--sentinel"], []
        args = [
            *head,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            *persistence,
            "--dir", self._dir.name,
            "--logfile", os.path.join(self._dir.name, "redis.log"),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=1,
            socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 0),  # one probe at a time, between checks on the process
        )
        try:
            while True:
                if self.process.poll() is not None:
                    err = self.process.stderr.read().decode() if self.process.stderr else ""
                    log = os.path.join(self._dir.name, "redis.log")
                    if os.path.exists(log):
                        with open(log, encoding="utf-8", errors="replace") as lines:
                            err += "".join(lines.readlines()[-5:])
                    if "Address already in use" in err:
                        self.kill()  # closes the pipe; the process has exited
                        if os.path.exists(log):
                            os.remove(log)  # the next try's log starts afresh
                        raise _PortTaken(err)
                    raise RedisServerUnavailable(f"redis-server exited at start: {err.strip()}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise RedisServerUnavailable(f"redis-server did not answer within {timeout}s")
                if self._answers(client):
                    return self
                time.sleep(0.02)
        finally:
            client.close()

    def _answers(self, client: redis.Redis) -> bool:
        """Whether this very process answers on the port (not another that took it)."""
        assert self.process is not None
        try:
            info: Any = client.info("server")
        except redis.RedisError:
            return False
        return bool(info.get("process_id") == self.process.pid)

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


class TLSFiles:
    """A throwaway certificate authority and a server certificate it signed (for 127.0.0.1
    and localhost), as PEM files: :attr:`ca_cert`, :attr:`cert`, :attr:`key`."""

    def __init__(self, directory: str) -> None:
        self.ca_cert = os.path.join(directory, "ca.crt")
        self.cert = os.path.join(directory, "server.crt")
        self.key = os.path.join(directory, "server.key")


def make_tls_files(directory: str, *, timeout: float = 60.0) -> TLSFiles:
    """Generate a CA and a server certificate in ``directory`` with ``openssl``; raises
    :class:`RedisServerUnavailable` if ``openssl`` is missing or fails."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RedisServerUnavailable("'openssl' is not on PATH (needed for a TLS test server)")
    files = TLSFiles(directory)
    ca_key = os.path.join(directory, "ca.key")
    csr = os.path.join(directory, "server.csr")
    ext = os.path.join(directory, "server.ext")
    with open(ext, "w", encoding="ascii") as out:
        out.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    steps = [
        ["req", "-x509", "-new", "-nodes", "-newkey", "rsa:2048", "-keyout", ca_key,
         "-out", files.ca_cert, "-days", "2", "-subj", "/CN=cachecow test CA"],
        ["req", "-new", "-nodes", "-newkey", "rsa:2048", "-keyout", files.key,
         "-out", csr, "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", csr, "-CA", files.ca_cert, "-CAkey", ca_key,
         "-CAcreateserial", "-out", files.cert, "-days", "2", "-extfile", ext],
    ]  # fmt: skip
    for step in steps:
        done = subprocess.run(
            [openssl, *step], capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RedisServerUnavailable(f"openssl {step[0]} failed: {done.stderr.strip()}")
    return files


class RedisTLSServer(RedisServer):
    """A :class:`RedisServer` that also serves TLS on :attr:`tls_port` (:attr:`tls_url`, a
    ``rediss://`` URL), with a certificate from a throwaway CA (:attr:`tls`, whose ``ca_cert``
    a client trusts). Clients need no certificate of their own. Its plain port stays open
    for set-up and checks.

    Starting it raises :class:`RedisServerUnavailable` if ``openssl`` is missing or the
    ``redis-server`` was built without TLS."""

    def __init__(self, binary: str | None = None, **options: Any) -> None:
        super().__init__(binary, **options)
        self.tls_port = 0
        self.tls: TLSFiles | None = None
        self._tls_dir: tempfile.TemporaryDirectory[str] | None = None
        self._own_args = self.extra_args

    @property
    def tls_url(self) -> str:
        """``rediss://127.0.0.1:<tls_port>/0``."""
        return f"rediss://127.0.0.1:{self.tls_port}/0"

    def start(self, *, timeout: float = 10.0) -> RedisTLSServer:
        if self.tls is None:
            self._tls_dir = tempfile.TemporaryDirectory(prefix="cachecow-tls-")
            try:
                self.tls = make_tls_files(self._tls_dir.name)
            except BaseException:
                self._tls_dir.cleanup()
                self._tls_dir = None
                raise
        if not self.tls_port:
            self.tls_port = self.pick_port()
        self.extra_args = (
            *self._own_args,
            "--tls-port", str(self.tls_port),
            "--tls-cert-file", self.tls.cert,
            "--tls-key-file", self.tls.key,
            "--tls-ca-cert-file", self.tls.ca_cert,
            "--tls-auth-clients", "no",
        )  # fmt: skip
        try:
            super().start(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        super().stop()
        if self._tls_dir is not None:
            self._tls_dir.cleanup()
            self._tls_dir = None
        self.tls = None
        self.tls_port = 0


class RedisClusterServers:
    """A Redis Cluster of ``masters`` private ``redis-server`` processes on free ports, each with
    ``replicas`` replicas, created with ``redis-cli --cluster create``; stopped (and their
    directories removed) on :meth:`stop`.

    ``node_timeout_ms`` is the cluster's ``cluster-node-timeout``: how long a silent master
    takes to be failed over (short here, so failover tests take seconds, not minutes).
    """

    def __init__(self, masters: int = 3, *, replicas: int = 0, node_timeout_ms: int = 1000) -> None:
        self.masters = masters
        self.replicas = replicas
        self._node_args = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            # a master that a resharding empties stays a master (Redis 7 would make it a
            # replica), so tests can move slots to a new master and back
            "--cluster-allow-replica-migration", "no",
        )  # fmt: skip
        count = masters * (1 + replicas)
        self.servers = [
            RedisServer(extra_args=self._node_args, pick_port=free_cluster_port)
            for _ in range(count)
        ]

    @property
    def ports(self) -> list[int]:
        """Every node's port (the first ``masters`` were created as masters)."""
        return [server.port for server in self.servers]

    def server(self, port: int) -> RedisServer:
        """The node listening on ``port``."""
        return next(server for server in self.servers if server.port == port)

    def role(self, port: int) -> str:
        """``"master"`` or ``"slave"``, as the node on ``port`` says now."""
        with redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1) as client:
            reply: Any = client.execute_command("ROLE")
            return reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])

    def replica_ports(self, master_port: int) -> list[int]:
        """The ports of the live replicas of the master on ``master_port``."""
        with redis.Redis(port=master_port, socket_timeout=1) as client:
            reply: Any = client.execute_command("ROLE")
        return [int(entry[1]) for entry in reply[2]]

    def failover(self, replica_port: int, *, takeover: bool = False, timeout: float = 15.0) -> None:
        """Promote a replica with ``CLUSTER FAILOVER`` (``TAKEOVER`` when its master is dead),
        and wait until every live node agrees on the new topology and reports ``ok``."""
        with redis.Redis(port=replica_port, socket_timeout=2) as client:
            args = ("CLUSTER", "FAILOVER", *(("TAKEOVER",) if takeover else ()))
            client.execute_command(*args)
            deadline = time.monotonic() + timeout
            while self.role(replica_port) != "master":
                if time.monotonic() > deadline:
                    raise RedisServerUnavailable(f"node {replica_port} never became a master")
                time.sleep(0.05)
        self.wait_ok(timeout=timeout)

    def node_id(self, port: int) -> str:
        """The cluster node id of the node on ``port``."""
        with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as client:
            return str(client.execute_command("CLUSTER", "MYID"))

    def slot_owner(self, slot: int) -> int:
        """The port of the master that serves ``slot``, as the node on the first live port
        says now."""
        with redis.Redis(port=self.live_ports()[0], socket_timeout=1) as client:
            ranges: Any = client.execute_command("CLUSTER", "SLOTS")
        for entry in ranges:
            if int(entry[0]) <= slot <= int(entry[1]):
                return int(entry[2][1])
        raise RedisServerUnavailable(f"no node serves slot {slot}")

    def slots_served_by(self, port: int) -> list[int]:
        """Every slot the master on ``port`` serves, as the node on the first live port says."""
        with redis.Redis(port=self.live_ports()[0], socket_timeout=1) as client:
            ranges: Any = client.execute_command("CLUSTER", "SLOTS")
        return [
            slot
            for entry in ranges
            if int(entry[2][1]) == port
            for slot in range(int(entry[0]), int(entry[1]) + 1)
        ]

    def add_master(self, *, timeout: float = 20.0) -> int:
        """Start one more node and join it as a master that serves no slots yet (``redis-cli
        --cluster add-node``); its port. Its script cache is empty, as on any new node."""
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RedisServerUnavailable("redis-cli is not on PATH (needed to add a node)")
        server = RedisServer(extra_args=self._node_args, pick_port=free_cluster_port)
        self.servers.append(server)
        server.start(timeout=timeout)
        added = subprocess.run(
            [cli, "--cluster", "add-node", f"127.0.0.1:{server.port}",
             f"127.0.0.1:{self.live_ports()[0]}"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )  # fmt: skip
        if added.returncode != 0:
            raise RedisServerUnavailable(f"redis-cli --cluster add-node failed: {added.stdout}")
        deadline = time.monotonic() + timeout
        while len(self._known_by_all()) < len(self.live_ports()):
            if time.monotonic() > deadline:
                raise RedisServerUnavailable(f"node {server.port} never joined the cluster")
            time.sleep(0.05)
        self.wait_ok(timeout=timeout)
        return server.port

    def _known_by_all(self) -> set[str]:
        """The node ids every live node knows."""
        known: set[str] | None = None
        for port in self.live_ports():
            with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as client:
                text = str(client.execute_command("CLUSTER", "NODES"))
            ids = {line.split()[0] for line in text.splitlines() if line.strip()}
            known = ids if known is None else known & ids
        return known or set()

    def migrate_slot(
        self,
        slot: int,
        to_port: int,
        *,
        midway: Callable[[], None] | None = None,
        moved: Callable[[], None] | None = None,
    ) -> None:
        """Move ``slot`` and its keys to the master on ``to_port``, the way ``redis-cli
        --cluster reshard`` does: mark it importing there and migrating here, ``MIGRATE`` its
        keys in rounds, then give the slot to the new owner on every master.

        Tests can act while the slot is half-migrated: ``midway`` is called once the slot is
        marked on both sides and before any key moves, ``moved`` once every key has moved and
        before the slot changes owner. Meanwhile the old owner answers ``ASK`` for the keys it
        no longer holds, and a command on several keys of which only some are present gets
        ``TRYAGAIN``."""
        source = self.slot_owner(slot)
        if source == to_port:
            return
        source_id, target_id = self.node_id(source), self.node_id(to_port)
        with (
            redis.Redis(port=source, socket_timeout=5) as src,
            redis.Redis(port=to_port, socket_timeout=5) as dst,
        ):
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            if midway is not None:
                midway()
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                src.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys)
            if moved is not None:
                moved()  # new keys of the slot are made on the new owner (after ASK)
            dst.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        for port in self.live_ports():
            if port not in (source, to_port) and self.role(port) == "master":
                with redis.Redis(port=port, socket_timeout=5) as other:
                    other.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def live_ports(self) -> list[int]:
        """The ports of the nodes whose process runs."""
        return [s.port for s in self.servers if s.process is not None and s.process.poll() is None]

    def wait_ok(self, *, timeout: float = 20.0) -> None:
        """Wait until every live node reports ``cluster_state:ok`` and sees the same masters,
        and every live replica's link to its master is up."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._settled():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RedisServerUnavailable("the cluster never settled in state ok")
            time.sleep(0.05)

    def _settled(self) -> bool:
        views = set()
        wanted: dict[int, set[int]] = {}  # master port -> the replicas linked to it
        online: dict[int, set[int]] = {}  # master port -> the replicas it lists as online
        for port in self.live_ports():
            with redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1) as client:
                if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    return False
                info = client.info("replication")
                if info["role"] == "slave":
                    if info.get("master_link_status") != "up":
                        return False
                    wanted.setdefault(int(info["master_port"]), set()).add(port)
                else:
                    # a master lists a replica as online only once its cron has seen the
                    # sync end, a little after the replica's side says "up"
                    online[port] = {
                        int(entry["port"])
                        for name, entry in info.items()
                        if name.startswith("slave") and isinstance(entry, dict)
                        and entry.get("state") == "online"
                    }  # fmt: skip
                nodes = client.execute_command("CLUSTER", "NODES")
                text = nodes.decode() if isinstance(nodes, bytes) else str(nodes)
                masters = frozenset(
                    line.split()[1].split("@")[0]
                    for line in text.splitlines()
                    if "master" in line.split()[2]
                    and "fail" not in line.split()[2]
                    and len(line.split()) > 8
                )
                views.add(masters)
        if any(not replicas <= online.get(master, set()) for master, replicas in wanted.items()):
            return False
        return len(views) == 1

    def start(self, *, timeout: float = 20.0) -> RedisClusterServers:
        """Start the servers, join them into one cluster and wait until it reports ``ok``."""
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RedisServerUnavailable("redis-cli is not on PATH (needed to create a cluster)")
        try:
            for server in self.servers:
                server.start(timeout=timeout)
            nodes = [f"127.0.0.1:{port}" for port in self.ports]
            replicas = ("--cluster-replicas", str(self.replicas), "--cluster-yes")
            created = subprocess.run(
                [cli, "--cluster", "create", *nodes, *replicas],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            if created.returncode != 0:
                raise RedisServerUnavailable(f"redis-cli --cluster create failed: {created.stdout}")
            self.wait_ok(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every server."""
        for server in self.servers:
            server.stop()


class RedisSentinelGroup:
    """A Sentinel-managed Redis: a master, ``replicas`` replicas and ``sentinels`` Sentinels
    (quorum: a majority), private processes on free ports, stopped on :meth:`stop`.

    The service name is :attr:`service_name`; :attr:`sentinel_addresses` is what
    ``redis.sentinel.Sentinel`` takes. :meth:`failover` runs ``SENTINEL FAILOVER`` and waits
    until the Sentinels, the new master and the old one all agree.
    """

    service_name = "cachecow"

    def __init__(self, *, replicas: int = 1, sentinels: int = 3, down_after_ms: int = 1000) -> None:
        self.master = RedisServer()
        self.replicas = [RedisServer() for _ in range(replicas)]
        self.sentinels: list[RedisServer] = []
        self._sentinel_count = sentinels
        self._down_after_ms = down_after_ms

    @property
    def data_servers(self) -> list[RedisServer]:
        """The master the group started with, then its replicas."""
        return [self.master, *self.replicas]

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """``[("127.0.0.1", port), ...]`` of the Sentinels."""
        return [("127.0.0.1", sentinel.port) for sentinel in self.sentinels]

    def start(self, *, timeout: float = 30.0) -> RedisSentinelGroup:
        """Start the master, its replicas and the Sentinels; wait until every Sentinel knows
        every replica and every other Sentinel (until then a failover could not be agreed)."""
        try:
            self.master.start()
            for replica in self.replicas:
                replica.extra_args = ("--replicaof", "127.0.0.1", str(self.master.port))
                replica.start()
            config = (
                f"sentinel monitor {self.service_name} 127.0.0.1 {self.master.port} "
                f"{self._sentinel_count // 2 + 1}\n"
                f"sentinel down-after-milliseconds {self.service_name} {self._down_after_ms}\n"
                f"sentinel failover-timeout {self.service_name} 10000\n"
                f"sentinel parallel-syncs {self.service_name} 1\n"
            )
            self.sentinels = [
                RedisServer(sentinel_config=config) for _ in range(self._sentinel_count)
            ]
            for sentinel in self.sentinels:
                sentinel.start()
            self.wait_settled(self.master.port, timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def master_port(self) -> int:
        """The master's port, as the first Sentinel that answers tells it."""
        for sentinel in self.sentinels:
            try:
                with redis.Redis(port=sentinel.port, socket_timeout=1) as client:
                    reply: Any = client.execute_command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service_name
                    )
                return int(reply[1])
            except redis.RedisError:
                continue
        raise RedisServerUnavailable("no Sentinel answered")

    def server(self, port: int) -> RedisServer:
        """The data server listening on ``port``."""
        return next(server for server in self.data_servers if server.port == port)

    def failover(self, *, timeout: float = 30.0) -> int:
        """``SENTINEL FAILOVER``: promote a replica; return the new master's port once every
        Sentinel names it and every other live data server replicates from it."""
        old = self.master_port()
        with redis.Redis(port=self.sentinels[0].port, socket_timeout=2) as client:
            client.execute_command("SENTINEL", "FAILOVER", self.service_name)
        deadline = time.monotonic() + timeout
        while self.master_port() == old:
            if time.monotonic() > deadline:
                raise RedisServerUnavailable("the Sentinels never failed over")
            time.sleep(0.05)
        new = self.master_port()
        self.wait_settled(new, timeout=max(1.0, deadline - time.monotonic()))
        return new

    def wait_settled(self, master_port: int, *, timeout: float = 30.0) -> None:
        """Wait until every Sentinel names ``master_port`` and knows the other Sentinels and
        every live replica, ``master_port`` is a master and every live replica's link to it is
        up."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._settled(master_port):
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RedisServerUnavailable(f"the Sentinel group never settled on {master_port}")
            time.sleep(0.05)

    def _settled(self, master_port: int) -> bool:
        live = [s for s in self.data_servers if s.process is not None and s.process.poll() is None]
        replicas = [s.port for s in live if s.port != master_port]
        for sentinel in self.sentinels:
            with redis.Redis(port=sentinel.port, socket_timeout=1) as client:
                addr: Any = client.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service_name
                )
                if int(addr[1]) != master_port:
                    return False
                known: Any = client.sentinel_slaves(self.service_name)
                up = {
                    int(entry["port"])
                    for entry in known
                    if not {"disconnected", "s_down", "o_down"} & _flags(entry["flags"])
                }
                if not set(replicas) <= up:
                    return False
                if len(client.sentinel_sentinels(self.service_name)) < len(self.sentinels) - 1:
                    return False
        with redis.Redis(port=master_port, socket_timeout=1) as client:
            if client.info("replication")["role"] != "master":
                return False
        for port in replicas:
            with redis.Redis(port=port, socket_timeout=1) as client:
                info = client.info("replication")
                if info.get("master_port") != master_port or info.get("master_link_status") != "up":
                    return False
        return True

    def stop(self) -> None:
        """Stop the Sentinels, then the data servers."""
        for server in [*self.sentinels, *self.data_servers]:
            server.stop()


def _flags(flags: Any) -> set[str]:
    """A Sentinel entry's flags, as redis-py gives them (a set, or a comma-separated string)."""
    if isinstance(flags, (set, frozenset, list, tuple)):
        return {str(flag) for flag in flags}
    return set(str(flags).split(","))
