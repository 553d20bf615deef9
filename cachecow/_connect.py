"""Clients whose every call is bounded in time: the ``connect*`` functions, sync and asyncio.

redis-py's defaults bound a call loosely (see :func:`connect`); these build clients with short
timeouts, no retry of a timeout, and a blocking pool of bounded size, for a single server, a
Redis Cluster or a Sentinel-managed group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis as redis_py
import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from ._client import (
    DEFAULT_MAX_CONNECTIONS,
    ClusterBlockingPool,
    bounded_cluster_kwargs,
    bounded_kwargs,
    pool_kwargs,
    sentinel_kwargs,
)
from ._sentinel import (
    AsyncBlockingSentinelPool,
    AsyncSentinel,
    AsyncSentinelMaster,
    BlockingSentinelPool,
    Sentinel,
    SentinelMaster,
)

__all__ = [
    "connect",
    "connect_async",
    "connect_cluster",
    "connect_cluster_async",
    "connect_sentinel",
    "connect_sentinel_async",
]


def connect(
    url: str = "redis://127.0.0.1:6379/0",
    *,
    timeout: float = 0.5,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    **kwargs: Any,
) -> redis_py.Redis:
    """A redis-py client whose every call returns within about ``timeout`` seconds.

    redis-py's defaults bound a call loosely: every client waits up to 5 seconds for a reply
    (redis-py 8), and ``redis.Redis(host=...)`` also retries a timed-out command up to 10 times
    with backoff, so one call to a stalled server can block for about a minute. This client
    times out connecting and reading after ``timeout`` seconds, never retries a timeout, and
    retries a dropped connection once, at once.

    Its connections come from a :class:`redis.BlockingConnectionPool` of at most
    ``max_connections`` (default 50), which threads share: a thread that finds them all in
    use waits for one to be given back, at most ``timeout`` seconds, then the call fails
    with redis-py's ``ConnectionError`` (for a cache: :class:`~cachecow.CacheUnavailable`, or
    a plain fetch under ``fail_open``). Size it to about the number of threads that use the
    cache at once; a call holds a connection for one round trip, so fewer also work, with
    threads taking turns. Pass ``connection_pool_class`` for another pool class (a
    ``BlockingConnectionPool`` subclass is given ``timeout`` too). Extra keyword arguments go
    to the pool (and on to each connection), as with :meth:`redis.Redis.from_url`.
    """
    pool_class: Any = kwargs.pop("connection_pool_class", redis_py.BlockingConnectionPool)
    single_connection_client = kwargs.pop("single_connection_client", False)
    options = pool_kwargs(pool_class, timeout, max_connections, bounded_kwargs(timeout, kwargs))
    client = redis_py.Redis(
        connection_pool=pool_class.from_url(url, **options),
        single_connection_client=single_connection_client,
    )
    client.auto_close_connection_pool = True  # as redis.Redis.from_url: closing it closes the pool
    return client


def connect_cluster(
    url: str = "redis://127.0.0.1:7000/0",
    *,
    timeout: float = 0.5,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    **kwargs: Any,
) -> RedisCluster:
    """A Redis Cluster client (any node's URL) whose calls are bounded like :func:`connect`'s.

    Reads and writes time out after ``timeout`` seconds. A call that fails on a node's
    connection is retried once, after the client has refreshed its map of the cluster (so a
    call made just after a failover reaches the new master): a call to a stalled node can take
    about twice ``timeout``. Each node has a blocking pool of at most ``max_connections``
    (default 50) connections, waited for at most ``timeout`` seconds as with :func:`connect`
    (a wait that runs out raises redis-py's ``MaxConnectionsError``, and the cluster client
    does not take it for a failed node). ``connection_pool_class`` replaces the pool class.
    Extra keyword arguments go to :meth:`RedisCluster.from_url`.
    """
    kwargs.setdefault("connection_pool_class", ClusterBlockingPool)
    options = bounded_cluster_kwargs(timeout, kwargs)
    pool_kwargs(options["connection_pool_class"], timeout, max_connections, options)
    client: RedisCluster = RedisCluster.from_url(url, **options)
    return client


def connect_sentinel(
    sentinels: Sequence[tuple[str, int]],
    service_name: str,
    *,
    timeout: float = 0.5,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    sentinel_options: dict[str, Any] | None = None,
    **kwargs: Any,
) -> redis_py.Redis:
    """A client of the master of a Sentinel-managed group, bounded like :func:`connect`'s.

    ``sentinels`` are ``(host, port)`` pairs; ``service_name`` is the name the Sentinels
    monitor. Each new connection asks the Sentinels where the master is; a connection to a
    master that was demoted (``READONLY``) is dropped and the call fails, the next one goes to
    the new master. Pass ``wait_replicas=1`` to the cache so no acknowledged invalidation is
    lost in a failover. The master's connections come from a blocking pool of at most
    ``max_connections`` (default 50), waited for at most ``timeout`` seconds, as with
    :func:`connect`; ``connection_pool_class`` replaces it (a ``SentinelConnectionPool``
    subclass). ``sentinel_options`` go to the Sentinel connections (e.g. a password); extra
    keyword arguments go to the master's connections.
    """
    pool_class: Any = kwargs.pop("connection_pool_class", BlockingSentinelPool)
    sentinel = Sentinel(
        sentinels,
        sentinel_kwargs=sentinel_kwargs(timeout, sentinel_options),
        **bounded_kwargs(timeout, kwargs),
    )
    client: redis_py.Redis = sentinel.master_for(  # type: ignore[no-untyped-call,unused-ignore]
        service_name,
        redis_class=SentinelMaster,
        connection_pool_class=pool_class,
        **pool_kwargs(pool_class, timeout, max_connections, {}),
    )
    return client


def connect_async(
    url: str = "redis://127.0.0.1:6379/0",
    *,
    timeout: float = 0.5,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    **kwargs: Any,
) -> aredis.Redis:
    """The ``redis.asyncio`` twin of :func:`cachecow.connect`: every call bounded by ``timeout``.

    Its connections come from a ``redis.asyncio.BlockingConnectionPool`` of at most
    ``max_connections`` (default 50), which the tasks share: a task that finds them all in use
    waits for one, at most ``timeout`` seconds, then fails with redis-py's ``ConnectionError``
    (for a cache, :class:`~cachecow.CacheUnavailable` or a plain fetch under ``fail_open``).
    Size it to about the number of tasks that await the cache at the same moment.
    ``connection_pool_class`` replaces the pool class; extra keyword arguments go to the pool.
    """
    pool_class: Any = kwargs.pop("connection_pool_class", aredis.BlockingConnectionPool)
    single_connection_client = kwargs.pop("single_connection_client", False)
    options = pool_kwargs(
        pool_class, timeout, max_connections, bounded_kwargs(timeout, kwargs, is_async=True)
    )
    client = aredis.Redis(
        connection_pool=pool_class.from_url(url, **options),
        single_connection_client=single_connection_client,
    )
    client.auto_close_connection_pool = True  # as redis.asyncio.Redis.from_url
    return client


def connect_cluster_async(
    url: str = "redis://127.0.0.1:7000/0",
    *,
    timeout: float = 0.5,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    **kwargs: Any,
) -> AsyncRedisCluster:
    """The ``redis.asyncio`` twin of :func:`cachecow.connect_cluster`, with at most
    ``max_connections`` (default 50) connections per node.

    redis-py 8.1's asyncio cluster client has no blocking pool (a call that finds all of a
    node's connections in use fails at once); an :class:`AsyncCacheCow` on this client runs
    at most ``max_connections`` Redis calls at a time, and the others wait for their turn,
    at most ``timeout`` seconds (then ``MaxConnectionsError``: a
    :class:`~cachecow.CacheUnavailable`, or a plain fetch under ``fail_open``).
    """
    kwargs.setdefault("max_connections", max_connections)
    client: AsyncRedisCluster = AsyncRedisCluster.from_url(
        url, **bounded_cluster_kwargs(timeout, kwargs, is_async=True)
    )
    return client


def connect_sentinel_async(
    sentinels: Sequence[tuple[str, int]],
    service_name: str,
    *,
    timeout: float = 0.5,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    sentinel_options: dict[str, Any] | None = None,
    **kwargs: Any,
) -> aredis.Redis:
    """The ``redis.asyncio`` twin of :func:`cachecow.connect_sentinel`: the master's
    connections come from a blocking pool of at most ``max_connections``, waited for at most
    ``timeout`` seconds."""
    pool_class: Any = kwargs.pop("connection_pool_class", AsyncBlockingSentinelPool)
    sentinel = AsyncSentinel(  # type: ignore[no-untyped-call,unused-ignore]
        sentinels,
        sentinel_kwargs=sentinel_kwargs(timeout, sentinel_options, is_async=True),
        **bounded_kwargs(timeout, kwargs, is_async=True),
    )
    client: aredis.Redis = sentinel.master_for(
        service_name,
        redis_class=AsyncSentinelMaster,
        connection_pool_class=pool_class,
        **pool_kwargs(pool_class, timeout, max_connections, {}),
    )
    return client
