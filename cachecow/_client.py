"""Client set-up shared by the sync and async cache classes (the part that knows redis-py)."""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

import redis.asyncio as aredis
from redis import BlockingConnectionPool
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError
from redis.retry import Retry

from ._scripts import NODE_SCRIPT_NAMES, SCRIPT_NAMES, node_script_source, script_source
from .exceptions import ConfigurationError

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "ClusterBlockingPool",
    "ScriptCall",
    "bounded_cluster_kwargs",
    "bounded_kwargs",
    "check_client",
    "node_script_calls",
    "pool_kwargs",
    "script_calls",
    "sentinel_kwargs",
]


def _retry(is_async: bool, **options: Any) -> Retry | AsyncRetry:
    # redis.asyncio needs its own Retry: given redis-py's sync one, it awaits the coroutine
    # that the sync Retry returns unawaited, outside the retry loop, and never retries.
    if is_async:
        return AsyncRetry(NoBackoff(), 1, **options)
    return Retry(NoBackoff(), 1, **options)


def bounded_kwargs(
    timeout: float, kwargs: dict[str, Any], *, is_async: bool = False
) -> dict[str, Any]:
    """Client options for calls bounded by ``timeout``: no retry of a timeout, one immediate
    retry of a dropped connection. Options already in ``kwargs`` win."""
    kwargs.setdefault("socket_timeout", timeout)
    kwargs.setdefault("socket_connect_timeout", timeout)
    kwargs.setdefault("retry", _retry(is_async, supported_errors=(RedisConnectionError,)))
    return kwargs


def bounded_cluster_kwargs(
    timeout: float, kwargs: dict[str, Any], *, is_async: bool = False
) -> dict[str, Any]:
    """Cluster client options: calls bounded by ``timeout``, one retry after a connection
    error (the cluster client refreshes its map of the cluster before it). Options already in
    ``kwargs`` win."""
    kwargs.setdefault("socket_timeout", timeout)
    kwargs.setdefault("socket_connect_timeout", timeout)
    kwargs.setdefault("retry", _retry(is_async))
    return kwargs


DEFAULT_MAX_CONNECTIONS = 50
"""The default size of the connection pool of :func:`cachecow.connect` and its twins."""


def pool_kwargs(
    pool_class: Any, timeout: float, max_connections: int, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Options of a pool of ``pool_class`` holding at most ``max_connections`` connections;
    a blocking pool (redis-py's sync or asyncio ``BlockingConnectionPool``) waits at most
    ``timeout`` seconds for a free one. Options already in ``kwargs`` win."""
    kwargs.setdefault("max_connections", max_connections)
    if isinstance(pool_class, type) and issubclass(
        pool_class, BlockingConnectionPool | aredis.BlockingConnectionPool
    ):
        kwargs.setdefault("timeout", timeout)
    return kwargs


class ClusterBlockingPool(BlockingConnectionPool):
    """redis-py's ``BlockingConnectionPool`` for the nodes of a sync cluster client: when no
    connection frees up in time it raises :class:`~redis.exceptions.MaxConnectionsError` (a
    ``ConnectionError``, as before) rather than a plain ``ConnectionError``, so the cluster
    client takes a busy pool for what it is, not for a failed node: it does not drop the
    node's idle connections and reload its map of the cluster, at the worst moment."""

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except MaxConnectionsError:
            raise
        except TypeError as exc:
            # The cluster client disconnects a node's connections, those in use too, when it
            # finds the node failed (a failover, a moved slot); one disconnected between the
            # checkout's connect() and its readiness poll makes redis-py poll None ("argument
            # must be an int, or have a fileno() method"). A dropped connection, to the caller.
            raise RedisConnectionError(f"connection closed during checkout: {exc}") from exc
        except RedisConnectionError as exc:
            if str(exc) != "No connection available.":  # a connection that failed to connect
                raise
            raise MaxConnectionsError(
                f"no connection to {self.connection_kwargs.get('host')}:"
                f"{self.connection_kwargs.get('port')} freed up within {self.timeout}s "
                f"(max_connections={self.max_connections})"
            ) from exc


def sentinel_kwargs(
    timeout: float, options: dict[str, Any] | None, *, is_async: bool = False
) -> dict[str, Any]:
    """Options of the connections to the Sentinels themselves, bounded by ``timeout``."""
    return bounded_kwargs(timeout, dict(options or {}), is_async=is_async)


def check_client(redis: Any, *, is_async: bool) -> None:
    """Refuse what is not a redis-py client of the right kind, or one that decodes replies."""
    kind = "redis.asyncio client (see cachecow.connect_async)" if is_async else "redis-py client"
    execute = getattr(redis, "execute_command", None)
    if not hasattr(redis, "register_script") or execute is None:
        raise ConfigurationError(f"redis must be a {kind}, got {redis!r}")
    if inspect.iscoroutinefunction(execute) != is_async:
        other = (
            "a synchronous client: use CacheCow (or the adapter's sync class)"
            if is_async
            else "an asyncio client: use AsyncCacheCow (or the adapter's async class)"
        )
        raise ConfigurationError(f"redis must be a {kind}, got {redis!r}, {other}")
    get_kwargs = getattr(redis, "get_connection_kwargs", None)
    if callable(get_kwargs) and get_kwargs().get("decode_responses"):
        raise ConfigurationError(
            "the Redis client has decode_responses=True; cachecow stores bytes and needs "
            "a client with decode_responses=False"
        )


class ScriptCall:
    """The ``EVALSHA`` of one protocol script, sent straight through ``execute_command``.

    redis-py's ``Script.__call__`` costs a few microseconds per call that a cache hit should
    not pay; this does the same (``EVALSHA``, then on ``NOSCRIPT`` a ``SCRIPT LOAD`` and one
    retry) with nothing else around it.
    """

    __slots__ = ("sha", "source")

    def __init__(self, name: str, source: str | None = None) -> None:
        self.source = script_source(name) if source is None else source
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def args(self, keys: tuple[str, ...], argv: tuple[Any, ...]) -> tuple[Any, ...]:
        """The ``EVALSHA`` command's arguments."""
        return ("EVALSHA", self.sha, len(keys), *keys, *argv)

    def eval_args(self, keys: tuple[str, ...], argv: tuple[Any, ...]) -> tuple[Any, ...]:
        """The ``EVAL`` command's arguments: the source itself, which no ``NOSCRIPT`` can
        refuse (for a script flushed again right after it was loaded)."""
        return ("EVAL", self.source, len(keys), *keys, *argv)


def script_calls() -> dict[str, ScriptCall]:
    """Every protocol script's :class:`ScriptCall`, by name."""
    return {name: ScriptCall(name) for name in SCRIPT_NAMES}


def node_script_calls(calls: dict[str, ScriptCall]) -> dict[str, ScriptCall]:
    """The node form (see ``cachecow/lua/per_node.lua``) of each batch script of ``calls``."""
    return {
        name: ScriptCall(name, node_script_source(name, calls[name].source))
        for name in NODE_SCRIPT_NAMES
    }
