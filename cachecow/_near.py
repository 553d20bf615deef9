"""The near cache: a process's own copy of the entries it reads most, kept honest by Redis's
invalidation messages (docs/near-cache.md).

A :class:`NearCache` holds the bytes of cached entries by value key, bounded in bytes (least
recently used out first) and in age (``near_ttl``). A :class:`Tracker` thread keeps one
connection to Redis with ``CLIENT TRACKING on BCAST PREFIX <model prefixes>``, redirected to
itself and subscribed to ``__redis__:invalidate``: every write of a key under those prefixes, by
any client, sends the key here, and the entry is dropped.

The race this module closes: a reader's Redis reply and the invalidation of the same key travel
on two connections, so the message can be handled *before* the reply it voids is stored. Every
drop takes a new sequence number and remembers it per key; a reader takes a ticket (the current
number) before it sends its request, and :meth:`NearCache.keep` stores the reply only if no
drop of that key, and no loss of the channel, came after the ticket. A drop after the store
removes the entry. So an entry outlives an invalidation only by the message's delivery delay.

While the channel is down (not yet set up, a dropped connection, no answer to a ``PING``) the
near cache holds nothing and stores nothing: tickets are ``None``.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import redis as redis_py
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelConnectionPool
from redis.sentinel import Sentinel, SentinelConnectionPool

from .exceptions import ConfigurationError

__all__ = ["ENTRY_OVERHEAD", "NearCache", "Tracker", "tracker_connection"]

logger = logging.getLogger("cachecow")

ENTRY_OVERHEAD = 200
"""Bytes counted per entry besides its key and value (the dict slot, the tuple, the objects'
headers), so a cache of many small entries is bounded too (measured: docs/near-cache.md)."""

_MAX_DROPPED = 100_000
"""Keys whose last drop a near cache remembers; past it, every ticket out is voided instead."""

CHANNEL = "__redis__:invalidate"


class NearCache:
    """Entries by value key, and the sequence of drops that voids a reader's store.

    Thread-safe: the tracker's thread drops while readers (threads, or an event loop) read and
    store. ``get`` takes no lock (a dict read is atomic); ``keep`` and the drops do.
    """

    def __init__(
        self,
        max_bytes: int,
        ttl: float,
        labels: frozenset[str] | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.labels = labels  # the models whose entries it keeps (None: every model)
        self.clock = clock
        # key -> (what a hit decodes: the bytes, or a shared object; expiry; model label; size)
        self.entries: OrderedDict[str, tuple[Any, float, str, int]] = OrderedDict()
        self.size = 0  # bytes counted for the entries
        self._lock = threading.Lock()
        self._seq = 0  # drops so far
        self._floor = 0  # tickets below it are void
        self._dropped: dict[str, int] = {}  # key -> the number of its last drop
        self.live = False  # whether the invalidation channel is up
        self.tracker: Tracker | None = None
        self.start: Callable[[], None] | None = None  # starts a tracker (set by the cache)

    def get(self, key: str) -> tuple[Any, str] | None:
        """What is cached near for ``key`` (its bytes, or the object shared by every hit) and
        its model's label, or ``None``."""
        entry = self.entries.get(key)
        if entry is None:
            if self.tracker is None and self.start is not None:
                self.start()
            return None
        if entry[1] <= self.clock():  # older than near_ttl
            self.drop((key,))
            return None
        try:
            self.entries.move_to_end(key)
        except KeyError:  # dropped meanwhile
            pass
        return entry[0], entry[2]

    def accepts(self, label: str) -> bool:
        """Whether this near cache keeps entries of the model ``label``."""
        return self.labels is None or label in self.labels

    def ticket(self) -> int | None:
        """Taken before a read is sent: what :meth:`keep` checks (``None``: store nothing)."""
        return self._seq if self.live else None

    def keep(
        self, key: str, ticket: int | None, data: bytes, label: str, payload: Any = None
    ) -> bool:
        """Store ``data`` (or ``payload``, what to hand out instead, counted as ``data``'s
        size) read under ``ticket``, unless ``key`` was dropped (or the channel lost) since
        the ticket was taken; whether it was stored."""
        if ticket is None:
            return False
        size = len(data) + len(key) + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return False
        with self._lock:
            if not self.live or ticket < self._floor or self._dropped.get(key, -1) > ticket:
                return False
            old = self.entries.pop(key, None)
            if old is not None:
                self.size -= old[3]
            kept = data if payload is None else payload
            self.entries[key] = (kept, self.clock() + self.ttl, label, size)
            self.size += size
            while self.size > self.max_bytes:
                self.size -= self.entries.popitem(last=False)[1][3]
        return True

    def drop(self, keys: Iterable[str]) -> None:
        """Forget ``keys`` and void every ticket taken before now for them."""
        with self._lock:
            self._seq += 1
            seq = self._seq
            for key in keys:
                self._dropped[key] = seq
                old = self.entries.pop(key, None)
                if old is not None:
                    self.size -= old[3]
            if len(self._dropped) > _MAX_DROPPED:
                self._void()

    def clear(self) -> None:
        """Forget every entry and void every ticket (a flush of the database)."""
        with self._lock:
            self._clear()

    def set_live(self, live: bool) -> None:
        """The channel is up (entries may be stored from now on) or lost (nothing is kept)."""
        with self._lock:
            self.live = live
            self._clear()

    def _clear(self) -> None:
        self.entries.clear()
        self.size = 0
        self._void()

    def _void(self) -> None:
        self._seq += 1
        self._floor = self._seq
        self._dropped.clear()


class Tracker:
    """A thread keeping a near cache's invalidation channel: connect, track the prefixes,
    drop what each message names, ``PING`` every ``ping_interval`` seconds; on any failure
    (or no answer within ``ping_timeout``) the near cache is emptied and off until the channel
    is set up again."""

    ping_interval = 0.5
    ping_timeout = 1.0
    poll = 0.1  # how often the thread looks at its stop flag
    retry_delays = (0.05, 0.1, 0.25, 0.5, 1.0)  # between attempts to reconnect

    def __init__(
        self, near: NearCache, connect: Callable[[], Any], prefixes: list[str], name: str
    ) -> None:
        self.near = near
        self.connect = connect
        self.prefixes = prefixes
        self.stopping = threading.Event()
        self.connection: Any = None
        self.client_id: int | None = None  # the connection's, on the server
        self.connected = threading.Event()  # set while the channel is up (tests wait on it)
        self.outages = 0  # times the channel was lost
        self.down_since: float | None = None  # when it was lost (monotonic), while it is
        self.downtimes: list[float] = []  # seconds each outage lasted, once over
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
                self.near.set_live(True)
                if self.down_since is not None:
                    self.downtimes.append(time.monotonic() - self.down_since)
                    self.down_since = None
                self.connected.set()
                attempt = 0
                self._listen(self.connection)
            except Exception as exc:  # a lost or refused connection: retried below
                if not self.stopping.is_set():
                    logger.warning("near cache off: invalidation channel lost (%s)", exc)
            finally:
                if self.connected.is_set():
                    self.outages += 1
                    self.down_since = time.monotonic()
                self.connected.clear()
                self.near.set_live(False)
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
                        self.near.drop([key.decode("utf-8", "surrogateescape") for key in keys])
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


def tracker_connection(client: Any) -> Callable[[], Any]:
    """How to open the tracker's connection: a new RESP2 connection (sync, whatever the
    client) to the server ``client`` writes to (a Sentinel group's master of the moment, asked
    at each connection), with the client's own settings."""
    pool = getattr(client, "connection_pool", None)
    bases = getattr(getattr(pool, "connection_class", None), "__mro__", ())
    sync_class = next(  # redis-py's own class (sync or asyncio) the client's derives from
        (
            _SYNC_CLASSES[base.__name__]
            for base in bases
            if base.__module__.startswith("redis.") and base.__name__ in _SYNC_CLASSES
        ),
        None,
    )
    if pool is None or sync_class is None:
        raise ConfigurationError(
            "near_bytes: the near cache needs a redis-py client of one Redis server or of a "
            f"Sentinel group (over TCP, TLS or a Unix socket); got {client!r}. Redis Cluster "
            "is not supported by the near cache yet."
        )
    accepted = {  # the class's own parameters and its bases' (it passes **kwargs up)
        name
        for base in sync_class.__mro__
        if "__init__" in vars(base)
        for name in inspect.signature(vars(base)["__init__"]).parameters
    }
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k in accepted}
    for name in ("redis_connect_func", "retry", "event_dispatcher"):
        kwargs.pop(name, None)
    kwargs.update(protocol=2, socket_timeout=5.0, health_check_interval=0)
    master = _master_of(pool)

    def connect() -> Any:
        if master is None:
            return sync_class(**kwargs)
        host, port = master()
        return sync_class(**{**kwargs, "host": host, "port": port})

    return connect


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
        sync_manager = Sentinel(sentinels, sentinel_kwargs=options)  # type: ignore[no-untyped-call]
        service = pool.service_name
        return lambda: sync_manager.discover_master(service)  # type: ignore[no-untyped-call]
    return None


def start_tracking(near: NearCache, client: Any, prefixes: list[str]) -> Callable[[], None]:
    """A function that starts ``near``'s tracker (once per process: a forked child starts its
    own, with its near cache emptied)."""
    connect = tracker_connection(client)
    lock = threading.Lock()
    ref = weakref.ref(near)

    def start() -> None:
        near_now = ref()
        if near_now is None:
            return
        with lock:
            if near_now.tracker is None:
                tracker = Tracker(near_now, connect, prefixes, "cachecow-near-cache")
                near_now.tracker = tracker
                tracker.start()

    def forked() -> None:
        near_now = ref()
        if near_now is not None:
            near_now._lock = threading.Lock()  # another thread may have held it at the fork
            near_now.tracker = None  # the parent's thread is not in this process
            near_now.set_live(False)

    os.register_at_fork(after_in_child=forked)
    return start
