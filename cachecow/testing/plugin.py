"""pytest fixtures that give tests a real, private Redis.

Load it with ``-p cachecow.testing.plugin`` (or ``pytest_plugins``). Where no ``redis-server``
can be started, tests that need one are skipped with the reason, unless the environment says
``CI=true``: there a missing server fails the test, so a CI run can never pass by skipping.

Fixtures:

- ``redis_server`` (session): one private server for the whole run.
- ``redis_url`` (session): its URL.
- ``redis_client`` (function): a client of it, the database flushed before each test.
- ``counting_redis`` (function): a client whose round trips are counted (``.round_trips``).
- ``own_redis_server`` (function): a server of the test's own, to pause, kill or restart.
- ``redis_tls_server`` (function): a server of the test's own that also serves TLS
  (``.tls_url``, ``.tls.ca_cert``); skipped (failed under CI) where ``openssl`` or a
  ``redis-server`` built with TLS is missing.
- ``redis_cluster_servers`` (session): a 3-master Redis Cluster.
- ``own_redis_cluster`` (function): a 3-master cluster with a replica per master, the test's
  own, to fail over.
- ``redis_sentinel_group`` (session): a master, a replica and three Sentinels.
- ``own_redis_sentinel_group`` (function): the same, the test's own, to fail over.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from redis.asyncio.connection import Connection as AsyncConnection
from redis.connection import Connection

from .server import (
    RedisClusterServers,
    RedisSentinelGroup,
    RedisServer,
    RedisServerUnavailable,
    RedisTLSServer,
)

__all__ = [
    "AsyncCountingConnection",
    "CountingConnection",
    "CountingRedis",
    "async_twin",
    "in_ci",
    "require_server",
]


def in_ci() -> bool:
    """Whether this run is CI's (``CI`` set to a true value), where skipping is failing."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require_server(server: Any) -> Any:
    """Start ``server`` (a RedisServer, RedisClusterServers or RedisSentinelGroup), or skip
    the test (fail it under CI) saying why it could not start."""
    try:
        return server.start()
    except RedisServerUnavailable as exc:
        message = f"no private redis-server could be started: {exc}"
        if in_ci():
            pytest.fail(f"{message} (CI=true: a missing server is a failure)")
        pytest.skip(message)


class CountingConnection(Connection):
    """A redis-py connection that counts round trips (one per packed send)."""

    def __init__(self, *args: Any, counter: list[int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._counter = counter

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self._counter[0] += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


class AsyncCountingConnection(AsyncConnection):
    """The ``redis.asyncio`` twin of :class:`CountingConnection`."""

    def __init__(self, *args: Any, counter: list[int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._counter = counter

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self._counter[0] += 1
        await super().send_packed_command(command, check_health)


def async_twin(client: redis.Redis) -> aredis.Redis:
    """A ``redis.asyncio`` client of the same server and database as ``client``; if ``client``
    is a :class:`CountingRedis`, the twin adds its round trips to the same count.

    Create it inside the event loop that will use it.
    """
    kwargs = client.get_connection_kwargs()
    host, port, db = kwargs.get("host", "localhost"), kwargs.get("port", 6379), kwargs.get("db", 0)
    if isinstance(client, CountingRedis):
        pool = aredis.ConnectionPool(
            connection_class=AsyncCountingConnection,
            host=host,
            port=port,
            db=db,
            counter=client._counter,
        )
        return aredis.Redis(connection_pool=pool)
    return aredis.Redis(host=host, port=port, db=db, socket_timeout=5, socket_connect_timeout=5)


class CountingRedis(redis.Redis):
    """A client whose :attr:`round_trips` counts every request sent to the server."""

    def __init__(self, port: int) -> None:
        self._counter = [0]
        pool = redis.ConnectionPool(
            connection_class=CountingConnection, port=port, counter=self._counter
        )
        super().__init__(connection_pool=pool)

    @property
    def round_trips(self) -> int:
        """Requests sent so far (a pipeline is one)."""
        return self._counter[0]

    def reset_round_trips(self) -> None:
        """Start counting from zero."""
        self._counter[0] = 0


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server for the whole test session."""
    server = require_server(RedisServer())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """The private server's URL."""
    return redis_server.url


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the private server; the server is flushed before each test."""
    client = redis.Redis(port=redis_server.port, socket_timeout=5, socket_connect_timeout=5)
    client.flushall()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def counting_redis(redis_server: RedisServer) -> Iterator[CountingRedis]:
    """A flushed client of the private server that counts its round trips."""
    client = CountingRedis(redis_server.port)
    client.flushall()
    client.reset_round_trips()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def own_redis_server() -> Iterator[RedisServer]:
    """A private server for this test alone, free to pause, kill or restart."""
    server = require_server(RedisServer())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_tls_server() -> Iterator[RedisTLSServer]:
    """A private server for this test alone that also serves TLS, with a throwaway CA."""
    server = require_server(RedisTLSServer())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster_servers() -> Iterator[RedisClusterServers]:
    """A private 3-master Redis Cluster for the whole test session."""
    cluster = require_server(RedisClusterServers())
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def own_redis_cluster() -> Iterator[RedisClusterServers]:
    """A private cluster of 3 masters, each with a replica, for this test alone."""
    cluster = require_server(RedisClusterServers(replicas=1))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel_group() -> Iterator[RedisSentinelGroup]:
    """A private Sentinel group (a master, a replica, three Sentinels) for the whole session."""
    group = require_server(RedisSentinelGroup())
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture
def own_redis_sentinel_group() -> Iterator[RedisSentinelGroup]:
    """A private Sentinel group for this test alone, free to fail over."""
    group = require_server(RedisSentinelGroup())
    try:
        yield group
    finally:
        group.stop()
