"""The asyncio cache class: drives the same protocol flows with ``redis.asyncio``."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar, overload

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import NoScriptError

from ._client import bounded_kwargs, check_client, register_scripts, script_calls
from ._protocol import (
    AsyncClock,
    CacheCowBase,
    Command,
    Fetch,
    FetchMany,
    Flow,
    Pipeline,
    Script,
    Sleep,
)
from .exceptions import ConfigurationError, NotFound
from .keys import Field

__all__ = ["AsyncCacheCow", "connect_async"]

T = TypeVar("T")


def connect_async(
    url: str = "redis://127.0.0.1:6379/0", *, timeout: float = 0.5, **kwargs: Any
) -> aredis.Redis:
    """The ``redis.asyncio`` twin of :func:`cachecow.connect`: every call bounded by ``timeout``."""
    client: aredis.Redis = aredis.Redis.from_url(url, **bounded_kwargs(timeout, kwargs))
    return client


class AsyncCacheCow(CacheCowBase[aredis.Redis]):
    """The asyncio twin of :class:`cachecow.CacheCow`, on a ``redis.asyncio`` client.

    The same protocol, options, hooks, counters and guarantees: both classes drive one shared,
    I/O-free implementation of the protocol. ``fetch`` and ``fetch_many`` may be coroutines
    (``async def``) or plain methods; the other hooks are plain methods. A custom ``clock`` must
    also have ``async def async_sleep(seconds)`` (:class:`~cachecow.AsyncClock`).
    """

    def _check_client(self, redis: aredis.Redis) -> None:
        check_client(redis, is_async=True)
        self._cluster = isinstance(redis, AsyncRedisCluster)
        self._group_by_slot = self._cluster
        if not isinstance(self.clock, AsyncClock):
            raise ConfigurationError(
                "AsyncCacheCow needs a clock with monotonic(), sleep() and async_sleep()"
            )
        self._async_clock: AsyncClock = self.clock
        self._execute: Any = redis.execute_command
        self._scripts = register_scripts(redis)
        self._calls = script_calls()

    async def fetch_many(
        self, cls: Any, id_field: Field, id_vals: Sequence[Any]
    ) -> Mapping[Any, Any]:
        """Load many objects at once; the default awaits :meth:`fetch` for each value in turn."""
        found: dict[Any, Any] = {}
        for id_val in id_vals:
            try:
                obj = self.fetch(cls, id_field, id_val)
                if inspect.isawaitable(obj):
                    obj = await obj
            except NotFound:
                continue
            if obj is not None:
                found[id_val] = obj
        return found

    @overload
    async def get(self, cls: type[T], id_field: str | tuple[str, ...], id_val: Any) -> T: ...

    @overload
    async def get(self, cls: Any, id_field: str | tuple[str, ...], id_val: Any) -> Any: ...

    async def get(self, cls: Any, id_field: str | tuple[str, ...], id_val: Any) -> Any:
        """The object whose ``id_field`` is ``id_val``; see :meth:`cachecow.CacheCow.get`."""
        id_field, id_val = self._normalize(cls, id_field, id_val)
        return await self._drive(self._get_flow(cls, id_field, id_val), cls, id_field, id_val)

    async def peek(self, cls: Any, id_field: str | tuple[str, ...], id_val: Any) -> Any:
        """The cached object of a lookup, or ``None``; see :meth:`cachecow.CacheCow.peek`."""
        id_field, id_val = self._normalize(cls, id_field, id_val)
        return await self._drive(self._peek_flow(cls, id_field, id_val), cls, id_field, id_val)

    async def get_many(
        self, cls: Any, id_field: str | tuple[str, ...], id_vals: Iterable[Any]
    ) -> list[Any]:
        """The objects of many lookups, in order; see :meth:`cachecow.CacheCow.get_many`."""
        field, values = self._normalize_many(cls, id_field, id_vals)
        result: list[Any] = await self._drive(
            self._get_many_flow(cls, field, values), cls, field, None
        )
        return result

    async def invalidate(self, cls: Any, id_field: str | tuple[str, ...], id_val: Any) -> None:
        """Forget a lookup and void its leases; see :meth:`cachecow.CacheCow.invalidate`."""
        id_field, id_val = self._normalize(cls, id_field, id_val)
        await self._drive(self._invalidate_flow(cls, id_field, id_val), cls, id_field, id_val)

    async def invalidate_many(
        self, cls: Any, id_field: str | tuple[str, ...], id_vals: Iterable[Any]
    ) -> None:
        """:meth:`invalidate` many values of one field, in one round trip."""
        field, values = self._normalize_many(cls, id_field, id_vals)
        pairs = [self.get_keys(cls, field, value) for value in values]
        await self._drive(self._invalidate_keys_flow(pairs), cls, field, None)

    async def invalidate_lookups(self, lookups: Iterable[tuple[Any, Any, Any]]) -> None:
        """:meth:`invalidate` any ``(cls, id_field, id_val)`` lookups, in one round trip."""
        await self._drive(self._invalidate_keys_flow(self._triples_keys(lookups)), None, None, None)

    async def invalidate_object(self, obj: Any, *, previous: Any = None, model: Any = None) -> None:
        """Invalidate every unique lookup of ``obj`` (and of ``previous``), in one round trip."""
        pairs = self._object_keys(obj, previous, model)
        await self._drive(self._invalidate_keys_flow(pairs), None, None, None)

    async def _drive(self, flow: Flow, cls: Any, id_field: Any, id_val: Any) -> Any:
        """Perform each operation a flow yields, awaiting it, until the flow returns or raises."""
        result: Any = None
        error: BaseException | None = None
        while True:
            try:
                op = flow.send(result) if error is None else flow.throw(error)
            except StopIteration as stop:
                return stop.value
            error = None
            try:
                if isinstance(op, Script):
                    result = await self._run_script(op)
                elif isinstance(op, Fetch):
                    result = self.fetch(cls, id_field, id_val)
                    if inspect.isawaitable(result):
                        result = await result
                elif isinstance(op, FetchMany):
                    result = self.fetch_many(cls, id_field, op.id_vals)
                    if inspect.isawaitable(result):
                        result = await result
                elif isinstance(op, Command):
                    result = await self._execute(*op.args)
                elif isinstance(op, Pipeline):
                    result = await self._pipeline(op)
                elif isinstance(op, Sleep):
                    await self._async_clock.async_sleep(op.seconds)
                    result = None
                else:  # pragma: no cover - a flow yields only the operations above
                    raise TypeError(f"unknown operation {op!r}")
            except BaseException as exc:
                result = None
                error = exc

    async def _alone(self, item: Script | Command) -> Any:
        if isinstance(item, Script):
            return await self._run_script(item)
        return await self._execute(*item.args)

    async def _run_script(self, op: Script) -> Any:
        call = self._calls[op.name]
        try:
            return await self._execute(*call.args(op.keys, op.args))
        except NoScriptError:  # a restarted server, a failover, SCRIPT FLUSH
            if self._cluster:  # every primary at once, not one node per NOSCRIPT
                primaries = self.redis.get_primaries()  # type: ignore[attr-defined]
                await self._execute("SCRIPT", "LOAD", call.source, target_nodes=primaries)
            else:
                await self.redis.script_load(call.source)
            return await self._execute(*call.args(op.keys, op.args))

    async def _pipeline(self, op: Pipeline) -> list[Any]:
        if self._cluster:
            # Redis Cluster: each item touches one slot; the cluster client routes it, loads
            # scripts and follows moves. One at a time: with several in flight on one
            # redis.asyncio RedisCluster, a connection's writer vanished mid-write now and then
            # in our tests (redis-py 8.1; cf. redis/redis-py#3546).
            return [await self._alone(item) for item in op.ops]
        pipe: Any = self.redis.pipeline(transaction=False)
        for item in op.ops:
            if isinstance(item, Script):
                await self._scripts[item.name](keys=item.keys, args=item.args, client=pipe)
            else:
                pipe.execute_command(*item.args)
        replies: list[Any] = await pipe.execute(raise_on_error=True)
        return replies
