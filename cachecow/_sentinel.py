"""The Sentinel clients that :func:`cachecow.connect_sentinel` and
:func:`cachecow.connect_sentinel_async` build, mended where redis-py 8.1 fails under load.

- :class:`Sentinel` and :class:`AsyncSentinel` reorder their list of Sentinels safely when many
  callers discover the master at once (docs/internals.md#sentinel-discover-master).
- :class:`SentinelMaster` and :class:`AsyncSentinelMaster` close their Sentinels' connections
  when they are closed (docs/internals.md#sentinel-close).
- :class:`SentinelPool`'s connections drop their socket when a reply cannot be read, so no call
  reads the previous call's reply (redis/redis-py#4292; docs/internals.md#sentinel-read-timeout).
"""

from __future__ import annotations

import threading
from typing import Any

import redis as redis_py
import redis.asyncio as aredis
from redis.asyncio.sentinel import Sentinel as _AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as _AsyncSentinelConnectionPool
from redis.connection import SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.sentinel import (
    MasterNotFoundError,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.sentinel import Sentinel as _Sentinel
from redis.utils import SENTINEL

__all__ = [
    "AsyncBlockingSentinelPool",
    "AsyncSentinel",
    "AsyncSentinelMaster",
    "BlockingSentinelPool",
    "Sentinel",
    "SentinelMaster",
    "SentinelPool",
    "mend_sentinel_pool",
]


class _MasterConnection(SentinelManagedConnection):
    """A connection to the master that drops its socket when a reply cannot be read."""

    def read_response(
        self,
        disable_decoding: bool = False,
        *,
        timeout: float | object = SENTINEL,
        disconnect_on_error: bool | None = True,
        push_request: bool | None = False,
    ) -> Any:
        return super().read_response(
            disable_decoding,
            timeout=timeout,
            disconnect_on_error=disconnect_on_error,
            push_request=push_request,
        )


class _MasterSSLConnection(_MasterConnection, SSLConnection):
    pass


def mend_sentinel_pool(client: Any) -> None:
    """Give a sync Sentinel master client built by hand (``Sentinel(...).master_for(...)``)
    the connections of :class:`SentinelPool`, if it has redis-py's own: its new connections
    then drop their socket when a reply cannot be read. Connections it has already made keep
    redis-py's class until they are closed."""
    pool = getattr(client, "connection_pool", None)
    if not isinstance(pool, SentinelConnectionPool):
        return
    if pool.connection_class is SentinelManagedConnection:
        pool.connection_class = _MasterConnection
    elif pool.connection_class is SentinelManagedSSLConnection:
        pool.connection_class = _MasterSSLConnection


class SentinelPool(SentinelConnectionPool):
    """redis-py's pool of connections to a Sentinel-managed master, whose connections drop
    their socket when a reply cannot be read (unless ``connection_class`` is given)."""

    def __init__(self, service_name: str, sentinel_manager: Any, **kwargs: Any) -> None:
        if "connection_class" not in kwargs:
            ssl = kwargs.pop("ssl", False)
            kwargs["connection_class"] = _MasterSSLConnection if ssl else _MasterConnection
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]


class BlockingSentinelPool(SentinelPool, redis_py.BlockingConnectionPool):
    """:class:`SentinelPool` with the waiting of redis-py's ``BlockingConnectionPool``: when
    ``max_connections`` are all in use, a caller waits up to ``timeout`` seconds for one
    instead of failing at once (then a ``ConnectionError``)."""


class AsyncBlockingSentinelPool(_AsyncSentinelConnectionPool, aredis.BlockingConnectionPool):
    """redis-py's asyncio ``SentinelConnectionPool`` with the waiting of its asyncio
    ``BlockingConnectionPool`` (see :class:`BlockingSentinelPool`)."""


def _to_front(sentinels: list[Any], sentinel: Any) -> None:
    """Swap ``sentinel`` with the head of ``sentinels``, wherever it stands now."""
    for index, candidate in enumerate(sentinels):
        if candidate is sentinel:
            sentinels[0], sentinels[index] = sentinel, sentinels[0]
            return


def _master_address(sentinel: Any, state: Any) -> tuple[Any, Any]:
    forced = getattr(sentinel, "_force_master_ip", None)
    return (forced if forced is not None else state["ip"]), state["port"]


def _not_found(service_name: str, errors: list[str]) -> MasterNotFoundError:
    info = f" : {', '.join(errors)}" if errors else ""
    return MasterNotFoundError(f"No master found for {service_name!r}{info}")


class Sentinel(_Sentinel):
    """redis-py's ``Sentinel`` whose ``discover_master`` is safe to call from many threads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call,unused-ignore]
        self._order = threading.Lock()

    def discover_master(self, service_name: str) -> tuple[Any, Any]:
        errors: list[str] = []
        for sentinel in list(self.sentinels):
            try:
                masters: Any = sentinel.sentinel_masters()
            except (RedisConnectionError, RedisTimeoutError) as exc:
                errors.append(f"{sentinel} - {exc!r}")
                continue
            state = masters.get(service_name)
            if state and self.check_master_state(state, service_name):  # type: ignore[no-untyped-call]
                with self._order:
                    _to_front(self.sentinels, sentinel)
                return _master_address(self, state)
        raise _not_found(service_name, errors)


class AsyncSentinel(_AsyncSentinel):
    """redis-py's asyncio ``Sentinel`` whose ``discover_master`` is safe from many tasks."""

    async def discover_master(self, service_name: str) -> tuple[Any, Any]:
        errors: list[str] = []
        for sentinel in list(self.sentinels):
            try:
                masters: Any = await sentinel.sentinel_masters()
            except (RedisConnectionError, RedisTimeoutError) as exc:
                errors.append(f"{sentinel} - {exc!r}")
                continue
            state = masters.get(service_name)
            if state and self.check_master_state(state, service_name):
                _to_front(self.sentinels, sentinel)  # no await since the list was read
                return _master_address(self, state)
        raise _not_found(service_name, errors)


def _closed(close: Any) -> BaseException | None:
    try:
        close()
    except Exception as exc:
        return exc
    return None


async def _aclosed(client: Any) -> BaseException | None:
    try:
        await client.aclose()
    except Exception as exc:
        return exc
    return None


def _first_error(errors: list[BaseException | None]) -> None:
    """Every Sentinel client was closed; raise the first error, if one failed."""
    for error in errors:
        if error is not None:
            raise error


class SentinelMaster(redis_py.Redis):
    """The client :func:`cachecow.connect_sentinel` returns: closing it also closes the
    connections to the Sentinels, which were opened for it alone."""

    def close(self) -> None:
        try:
            super().close()
        finally:
            if getattr(self, "auto_close_connection_pool", False):
                sentinels = self.connection_pool.sentinel_manager.sentinels  # type: ignore[attr-defined]
                _first_error([_closed(client.close) for client in sentinels])


class AsyncSentinelMaster(aredis.Redis):
    """The client :func:`cachecow.connect_sentinel_async` returns: closing it (with its pool)
    also closes the connections to the Sentinels, which were opened for it alone."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            if close_connection_pool or (
                close_connection_pool is None and self.auto_close_connection_pool
            ):
                sentinels = self.connection_pool.sentinel_manager.sentinels  # type: ignore[attr-defined]
                _first_error([await _aclosed(client) for client in sentinels])
