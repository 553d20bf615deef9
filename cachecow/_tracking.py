"""The near cache's invalidation channel (docs/near-cache.md): threads that keep connections to
Redis with ``CLIENT TRACKING on BCAST``, hand each key a message names to the near cache, and
tell it when the channel is up and when it is lost.

- :class:`Tracker`: one connection to one server, redirected to itself and subscribed to
  ``__redis__:invalidate``; ``PING`` every ``ping_interval`` seconds, lost on any error or on
  no answer within ``ping_timeout``, set up again with backoff. On a Sentinel group it asks the
  Sentinels for the master at each connection.
- :class:`ClusterTracking`: one :class:`Tracker` per node of a Redis Cluster, replicas too (a
  replica sends the messages of the writes it replicates, so a failover to it misses none), and
  a thread that reads the cluster's node list every ``ping_interval`` seconds and tracks every
  node that joins. The channel is up only while every healthy node's tracker is.

Sync connections whatever the client (an asyncio client's too): a thread, not a task, reads
the messages, so they are handled even while an event loop is busy.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis as redis_py
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelConnectionPool
from redis.cluster import RedisCluster
from redis.sentinel import Sentinel, SentinelConnectionPool

from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from ._near import NearCache

__all__ = ["ClusterTracking", "Tracker", "start_tracking"]

logger = logging.getLogger("cachecow")

CHANNEL = "__redis__:invalidate"


class Outages:
    """How often a channel was lost, and for how long (tests and benchmarks report them)."""

    def __init__(self) -> None:
        self.outages = 0  # times the channel was lost
        self.down_since: float | None = None  # when it was lost (monotonic), while it is
        self.downtimes: list[float] = []  # seconds each outage lasted, once over

    def _went_down(self) -> None:
        self.outages += 1
        self.down_since = time.monotonic()

    def _came_up(self) -> None:
        if self.down_since is not None:
            self.downtimes.append(time.monotonic() - self.down_since)
            self.down_since = None


class Tracker(Outages):
    """A thread keeping one invalidation channel: connect, track the prefixes, drop what each
    message names, ``PING`` every ``ping_interval`` seconds; ``on_up()`` once the channel is
    set up, ``on_down()`` on any failure (or no answer within ``ping_timeout``), then set it
    up again."""

    ping_interval = 0.5
    ping_timeout = 1.0
    poll = 0.1  # how often the thread looks at its stop flag
    retry_delays = (0.05, 0.1, 0.25, 0.5, 1.0)  # between attempts to reconnect

    def __init__(
        self,
        near: NearCache,
        connect: Callable[[], Any],
        prefixes: list[str],
        *,
        on_up: Callable[[], None] | None = None,
        on_down: Callable[[], None] | None = None,
        name: str = "cachecow-near-cache",
    ) -> None:
        self.near = near
        self.connect = connect
        self.prefixes = prefixes
        self.on_up = on_up or (lambda: near.set_live(True))
        self.on_down = on_down or (lambda: near.set_live(False))
        self.stopping = threading.Event()
        self.connection: Any = None
        self.client_id: int | None = None  # the connection's, on the server
        self.connected = threading.Event()  # set while the channel is up (tests wait on it)
        super().__init__()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self.stopping.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def _run(self) -> None:
        attempt = 0
        while not self.stopping.is_set():
            try:
                self.connection = self.connect()
                self._subscribe(self.connection)
                self._came_up()
                self.connected.set()
                self.on_up()
                attempt = 0
                self._listen(self.connection)
            except Exception as exc:  # a lost or refused connection: retried below
                if not self.stopping.is_set():
                    logger.warning("near cache off: invalidation channel lost (%s)", exc)
            finally:
                if self.connected.is_set():
                    self._went_down()
                self.connected.clear()
                self.on_down()
                self._disconnect()
            delay = self.retry_delays[min(attempt, len(self.retry_delays) - 1)]
            attempt += 1
            self.stopping.wait(delay)

    def _subscribe(self, connection: Any) -> None:
        connection.connect()
        connection.send_command("CLIENT", "ID")
        client_id = self.client_id = connection.read_response()
        args: list[Any] = ["CLIENT", "TRACKING", "on", "REDIRECT", client_id, "BCAST"]
        for prefix in self.prefixes:
            args += ["PREFIX", prefix]
        connection.send_command(*args)
        if connection.read_response() != b"OK":
            raise redis_py.ConnectionError("CLIENT TRACKING was refused")
        connection.send_command("SUBSCRIBE", CHANNEL)
        reply = connection.read_response()
        if not (isinstance(reply, list) and reply[0] == b"subscribe"):
            raise redis_py.ConnectionError(f"unexpected reply to SUBSCRIBE: {reply!r}")

    def _listen(self, connection: Any) -> None:
        pinged: float | None = None  # when the PING still unanswered was sent
        next_ping = time.monotonic() + self.ping_interval
        while not self.stopping.is_set():
            if connection.can_read(timeout=self.poll):
                message = connection.read_response()
                if message[0] == b"message":
                    keys = message[2]
                    if keys is None:  # FLUSHDB, FLUSHALL: every key
                        self.near.clear()
                    else:
                        decoded = [key.decode("utf-8", "surrogateescape") for key in keys]
                        self.near.drop(decoded, heard=True)
                elif message[0] == b"pong":
                    pinged = None
                continue
            now = time.monotonic()
            if pinged is not None and now - pinged > self.ping_timeout:
                raise redis_py.ConnectionError(f"no answer to PING in {self.ping_timeout}s")
            if pinged is None and now >= next_ping:
                connection.send_command("PING")
                pinged, next_ping = now, now + self.ping_interval

    def _disconnect(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            try:
                connection.disconnect()
            except Exception:
                pass


class ClusterTracking(Outages):
    """A :class:`Tracker` per healthy node of a Redis Cluster, kept in step with the cluster's
    node list; the channel is up while each of them is."""

    interval = Tracker.ping_interval  # between reads of the node list

    def __init__(
        self,
        near: NearCache,
        seeds: list[tuple[str, int]],
        connect: Callable[..., Any],
        prefixes: list[str],
    ) -> None:
        self.near = near
        self.seeds = seeds  # where to ask for the node list first
        self.connect = connect  # connect(host, port): a connection to that node
        self.prefixes = prefixes
        self.trackers: dict[tuple[str, int], Tracker] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.connected = threading.Event()  # set while every node's channel is up
        super().__init__()
        self.thread = threading.Thread(target=self._run, name="cachecow-near-cluster", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self.stopping.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout)
        for tracker in list(self.trackers.values()):
            tracker.stop(timeout)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                nodes = self._nodes()
            except Exception as exc:  # no node answered: keep what is tracked, ask again
                logger.warning("near cache: no cluster node gave its node list (%s)", exc)
            else:
                self._follow(nodes)
            self.stopping.wait(self.interval)

    def _nodes(self) -> set[tuple[str, int]]:
        """The healthy nodes (primaries and replicas), from the first node that answers."""
        error: Exception | None = None
        for host, port in [*self.trackers, *self.seeds]:
            connection = self.connect(host, port)
            try:
                connection.send_command("CLUSTER", "NODES")
                listing = connection.read_response()
            except Exception as exc:
                error = exc
                continue
            finally:
                connection.disconnect()
            return set(_healthy_nodes(listing))
        raise error or redis_py.ConnectionError("no cluster node to ask")

    def _follow(self, nodes: set[tuple[str, int]]) -> None:
        """Track the nodes that joined, stop tracking those that left or failed."""
        with self.lock:
            joined = nodes - set(self.trackers)
            left = set(self.trackers) - nodes
            for address in left:
                self.trackers.pop(address).stop(timeout=0)
            for host, port in joined:
                tracker = Tracker(
                    self.near,
                    functools.partial(self.connect, host, port),
                    self.prefixes,
                    on_up=self._changed,
                    on_down=self._changed,
                    name=f"cachecow-near-cache-{host}:{port}",
                )
                self.trackers[host, port] = tracker
                tracker.start()
        if joined or left:
            self._changed()

    def _changed(self) -> None:
        """A node's channel came up or went down, or the nodes changed: the near cache is on
        while every node's channel is up, and emptied whenever one is not."""
        with self.lock:
            up = bool(self.trackers) and all(t.connected.is_set() for t in self.trackers.values())
            if up == self.connected.is_set():
                if not up:
                    self.near.set_live(False)  # a channel lost while the cache was already off
                return
            if up:
                self._came_up()
                self.near.set_live(True)
                self.connected.set()
            else:
                self._went_down()
                self.connected.clear()
                self.near.set_live(False)


def _healthy_nodes(listing: Any) -> list[tuple[str, int]]:
    """The addresses in a ``CLUSTER NODES`` reply of the nodes not failed nor unknown."""
    text = listing.decode() if isinstance(listing, bytes) else str(listing)
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        flags = set(fields[2].split(","))
        if flags & {"fail", "handshake", "noaddr"}:
            continue
        address = fields[1].split("@")[0]
        host, _, port = address.rpartition(":")
        if host and port:
            nodes.append((host, int(port)))
    return nodes


# -- connections --------------------------------------------------------------------------------

_SENTINEL_OPTIONS = {  # what a Sentinel connection's options may carry over to a sync one
    "username",
    "password",
    "socket_timeout",
    "socket_connect_timeout",
    "ssl",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
}

_SYNC_CLASSES = {
    "Connection": redis_py.Connection,
    "SSLConnection": redis_py.SSLConnection,
    "UnixDomainSocketConnection": redis_py.UnixDomainSocketConnection,
}


def _sync_connection(kind: Any, options: dict[str, Any]) -> Callable[..., Any]:
    """``connect(**more)``: a new RESP2 sync connection like ``kind`` (a redis-py connection
    class, sync or asyncio, or a subclass) made with ``options``."""
    sync_class = next(  # redis-py's own class the client's derives from
        (
            _SYNC_CLASSES[base.__name__]
            for base in getattr(kind, "__mro__", ())
            if base.__module__.startswith("redis.") and base.__name__ in _SYNC_CLASSES
        ),
        None,
    )
    if sync_class is None:
        raise ConfigurationError(
            f"near_bytes: the near cache cannot open a connection like {kind!r} (it needs "
            "redis-py's connections over TCP, TLS or a Unix socket)"
        )
    accepted = {  # the class's own parameters and its bases' (it passes **kwargs up)
        name
        for base in sync_class.__mro__
        if "__init__" in vars(base)
        for name in inspect.signature(vars(base)["__init__"]).parameters
    }
    kwargs = {k: v for k, v in options.items() if k in accepted}
    for name in ("redis_connect_func", "retry", "event_dispatcher"):
        kwargs.pop(name, None)
    kwargs.update(protocol=2, socket_timeout=5.0, health_check_interval=0)
    return lambda **more: sync_class(**{**kwargs, **more})


def _master_of(pool: Any) -> Callable[[], tuple[str, int]] | None:
    """For a Sentinel pool (sync or asyncio), how to ask the Sentinels for the master now."""
    if isinstance(pool, SentinelConnectionPool):
        manager, service = pool.sentinel_manager, pool.service_name
        return lambda: manager.discover_master(service)
    if isinstance(pool, AsyncSentinelConnectionPool):
        # The asyncio Sentinels cannot be asked from the tracker's thread: sync ones, alike.
        sentinels = [
            (
                s.connection_pool.connection_kwargs.get("host", "localhost"),
                s.connection_pool.connection_kwargs.get("port", 26379),
            )
            for s in pool.sentinel_manager.sentinels
        ]
        options = {
            k: v for k, v in pool.sentinel_manager.sentinel_kwargs.items() if k in _SENTINEL_OPTIONS
        }
        sync_manager = Sentinel(sentinels, sentinel_kwargs=options)  # type: ignore[no-untyped-call,unused-ignore]
        service = pool.service_name
        return lambda: sync_manager.discover_master(service)  # type: ignore[no-untyped-call,unused-ignore]
    return None


def _channel(near: NearCache, client: Any, prefixes: list[str]) -> Callable[[], Any]:
    """How to make the channel of ``client``'s deployment: a :class:`Tracker` of its server
    (or of a Sentinel group's master), or a :class:`ClusterTracking` of a cluster."""
    if isinstance(client, RedisCluster | AsyncRedisCluster):
        nodes: list[Any] = client.get_nodes()
        if isinstance(client, RedisCluster):
            pool = nodes[0].redis_connection.connection_pool
            kind, options = pool.connection_class, pool.connection_kwargs
        else:
            kind, options = nodes[0].connection_class, nodes[0].connection_kwargs
        node = _sync_connection(kind, options)
        seeds = [(str(n.host), int(n.port)) for n in nodes]
        return lambda: ClusterTracking(
            near, seeds, lambda host, port: node(host=host, port=port), prefixes
        )
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        raise ConfigurationError(
            "near_bytes: the near cache needs a redis-py client (of a server, a Sentinel group "
            f"or a cluster), got {client!r}"
        )
    connection = _sync_connection(pool.connection_class, pool.connection_kwargs)
    master = _master_of(pool)

    def connect() -> Any:
        if master is None:
            return connection()
        host, port = master()
        return connection(host=host, port=port)

    return lambda: Tracker(near, connect, prefixes)


def distinct_prefixes(prefixes: list[str]) -> list[str]:
    """``prefixes`` without those another one covers (Redis refuses overlapping prefixes:
    ``a:`` covers ``a:b:``), in order."""
    kept: list[str] = []
    for prefix in sorted(set(prefixes)):
        if not any(prefix.startswith(other) for other in kept):
            kept.append(prefix)
    return kept


def start_tracking(near: NearCache, client: Any, prefixes: list[str]) -> Callable[[], None]:
    """A function that starts ``near``'s channel (once per process: a forked child starts its
    own, with its near cache emptied). Raises :class:`~cachecow.ConfigurationError` now for a
    client it cannot track."""
    make = _channel(near, client, distinct_prefixes(prefixes))
    lock = threading.Lock()
    ref = weakref.ref(near)

    def start() -> None:
        near_now = ref()
        if near_now is None:
            return
        with lock:
            if near_now.tracker is None:
                near_now.tracker = make()
                near_now.tracker.start()

    def forked() -> None:
        near_now = ref()
        if near_now is not None:
            near_now._lock = threading.Lock()  # another thread may have held it at the fork
            near_now.tracker = None  # the parent's threads are not in this process
            near_now.set_live(False)

    os.register_at_fork(after_in_child=forked)
    return start
