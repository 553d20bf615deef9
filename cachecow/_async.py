"""The asyncio cache class: drives the same protocol flows with ``redis.asyncio``."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar, overload

import redis.asyncio as aredis
from redis.exceptions import RedisClusterException, RedisError

from ._async_redis_io import AsyncRedisIO
from ._batch import BatchRead, read_many
from ._cached import Cached, Call, FunctionHooks, Result, decorate, share
from ._clock import AsyncClock
from ._flights import ALONE, RETRY, AsyncWaiter, answer, land
from ._invalidation import pause, scan_failed, settle_seconds
from ._lookups import (
    keyed,
    keyed_many,
    lookups_keys,
    normalized,
    normalized_many,
    object_keys,
)
from ._near import hit_near
from ._ops import _UNUSABLE, Fetch, FetchMany, Flow, RedisOp, Sleep, TimeBoxed, Wait, as_redis_error
from ._options import Options
from ._protocol import CacheCowBase, entry_pairs
from ._single import SingleRead
from ._telemetry import no_model, object_model, timed
from .exceptions import ConfigurationError, NotFound
from .keys import Field
from .serializers import Serializer

logger = logging.getLogger("cachecow")
__all__ = ["AsyncCacheCow"]

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")


class AsyncCacheCow(CacheCowBase[aredis.Redis]):
    """The asyncio twin of :class:`cachecow.CacheCow`, on a ``redis.asyncio`` client.

    The same protocol, options, hooks, counters and guarantees: both classes drive one shared,
    I/O-free implementation of the protocol. ``fetch`` and ``fetch_many`` may be coroutines
    (``async def``) or plain methods; the other hooks are plain methods. A custom ``clock`` must
    also have ``async def async_sleep(seconds)`` (:class:`~cachecow.AsyncClock`).
    """

    _waiter = AsyncWaiter

    def _bind_client(self, redis: aredis.Redis) -> None:
        if not isinstance(self.clock, AsyncClock):
            raise ConfigurationError(
                "AsyncCacheCow needs a clock with monotonic(), sleep() and async_sleep()"
            )
        self._async_clock: AsyncClock = self.clock
        self._io = AsyncRedisIO(redis)
        self._group_by_slot = self._io.cluster

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
    async def get(
        self, cls: type[T], id_field: str | tuple[str, ...], id_val: Any, *, ttl: float | None = ...
    ) -> T: ...

    @overload
    async def get(
        self, cls: Any, id_field: str | tuple[str, ...], id_val: Any, *, ttl: float | None = ...
    ) -> Any: ...

    async def get(
        self, cls: Any, id_field: str | tuple[str, ...], id_val: Any, *, ttl: float | None = None
    ) -> Any:
        """The object whose ``id_field`` is ``id_val``; see :meth:`cachecow.CacheCow.get`."""
        if self._near is not None:  # a near hit: no round trip, and no duration recorded
            obj = hit_near(self, cls, id_field, id_val)
            if obj is not _UNUSABLE:
                return obj
        return await self._get(cls, id_field, id_val, ttl=ttl)

    @timed("get")
    async def _get(
        self, cls: Any, id_field: str | tuple[str, ...], id_val: Any, *, ttl: float | None = None
    ) -> Any:
        """:meth:`get` past the near cache."""
        lookup, keys = keyed(self, cls, id_field, id_val)
        ttl = self._checked_ttl(ttl)
        read = SingleRead(self, lookup, keys, ttl=ttl)
        if self._expects_hit(read.model):  # a plain GET, outside single flight (see _single.py)
            obj = await self._drive(read.read_plain())
            if obj is not _UNUSABLE:
                return obj
        if not self._joins:  # a reader that never waits for another reads alone
            return await self._drive(read.lease())
        # Lead a read of this key, or join the one in flight (see _flights.py).
        me, loop = self._reader()
        flight, index = self._flights.join(keys[0], me, loop)
        deadline = time.monotonic() + self.options.wait_timeout
        while index >= 0:
            if not await flight.waiter.wait(max(0.0, deadline - time.monotonic())):
                self.metrics.incr("wait_timeouts", 1, self.model_label(cls))  # waited in vain
                return await self._drive(self._fetch_uncached(lookup))
            obj = answer(self, lookup, flight, index)
            if obj is ALONE:
                return await self._drive(self._get_flow(lookup, ttl=ttl))
            if obj is not RETRY:
                return obj
            flight, index = self._flights.rejoin(flight, me)
        if index == -2:  # read alone (see Flights.join)
            return await self._drive(read.lease())
        read.flight = flight
        obj = error = None
        try:
            obj = await self._drive(read.lease())
            return obj
        except BaseException as exc:
            error = exc
            raise
        finally:
            land(self, flight, lookup, obj, error)

    @overload
    async def peek(
        self, cls: type[T], id_field: str | tuple[str, ...], id_val: Any
    ) -> T | None: ...

    @overload
    async def peek(self, cls: Any, id_field: str | tuple[str, ...], id_val: Any) -> Any: ...

    @timed("peek")
    async def peek(self, cls: Any, id_field: str | tuple[str, ...], id_val: Any) -> Any:
        """The cached object of a lookup, or ``None``; see :meth:`cachecow.CacheCow.peek`."""
        id_field, id_val = normalized(self, cls, id_field, id_val)
        return await self._drive(self._peek_flow(cls, id_field, id_val))

    @overload
    async def get_many(
        self,
        cls: type[T],
        id_field: str | tuple[str, ...],
        id_vals: Iterable[Any],
        *,
        ttl: float | None = ...,
    ) -> list[T | None]: ...

    @overload
    async def get_many(
        self,
        cls: Any,
        id_field: str | tuple[str, ...],
        id_vals: Iterable[Any],
        *,
        ttl: float | None = ...,
    ) -> list[Any]: ...

    @timed("get_many")
    async def get_many(
        self,
        cls: Any,
        id_field: str | tuple[str, ...],
        id_vals: Iterable[Any],
        *,
        ttl: float | None = None,
    ) -> list[Any]:
        """The objects of many lookups, in order; see :meth:`cachecow.CacheCow.get_many`."""
        field, values, keys = keyed_many(self, cls, id_field, id_vals)
        batch = BatchRead(self, cls, field, self._checked_ttl(ttl))
        flow = read_many(batch, values, keys, self._reader())
        result: list[Any] = await self._drive(flow)
        return result

    @timed("invalidate")
    async def invalidate(self, cls: Any, id_field: str | tuple[str, ...], id_val: Any) -> None:
        """Forget a lookup and void its leases; see :meth:`cachecow.CacheCow.invalidate`."""
        id_field, id_val = normalized(self, cls, id_field, id_val)
        await self._drive(self._invalidate_flow(cls, id_field, id_val))

    @timed("invalidate_many")
    async def invalidate_many(
        self, cls: Any, id_field: str | tuple[str, ...], id_vals: Iterable[Any]
    ) -> None:
        """:meth:`invalidate` many values of one field, in one round trip."""
        field, values = normalized_many(self, cls, id_field, id_vals)
        pairs = [self.get_keys(cls, field, value) for value in values]
        await self._drive(self._invalidate_keys_flow(pairs))

    @timed("invalidate_lookups", no_model)
    async def invalidate_lookups(self, lookups: Iterable[tuple[Any, Any, Any]]) -> None:
        """:meth:`invalidate` any ``(cls, id_field, id_val)`` lookups, in one round trip."""
        await self._drive(self._invalidate_keys_flow(lookups_keys(self, lookups)))

    @timed("invalidate_object", object_model)
    async def invalidate_object(self, obj: Any, *, previous: Any = None, model: Any = None) -> None:
        """Invalidate every unique lookup of ``obj`` (and of ``previous``), in one round trip."""
        pairs = object_keys(self, obj, previous, model)
        await self._drive(self._invalidate_keys_flow(pairs))

    @timed("invalidate_model")
    async def invalidate_model(self, cls: Any, *, settle: bool = True) -> int:
        """Forget every cached entry of a model; see :meth:`cachecow.CacheCow.invalidate_model`."""
        pattern = self.model_keys_pattern(cls)
        settled = self.clock.monotonic() + settle_seconds(self)
        deleted = await self._delete_matching(pattern)
        if settle:
            await self._drive(pause(settled - self.clock.monotonic()))
            deleted += await self._delete_matching(pattern)
        return deleted

    async def _delete_matching(self, pattern: str) -> int:
        """Delete every entry with a key matching ``pattern``, one ``SCAN`` step at a time."""
        found: list[bytes] = []
        deleted = 0
        try:
            async for key in self._io.scan(pattern, self.scan_count):
                found.append(key)
                if len(found) >= self.scan_count:
                    deleted += await self._delete_entries(found)
                    found = []
        except (RedisError, RedisClusterException) as exc:
            raise scan_failed(pattern, as_redis_error(exc)) from exc
        return deleted + await self._delete_entries(found)

    async def _delete_entries(self, keys: list[bytes]) -> int:
        pairs = entry_pairs(keys)
        if pairs:
            await self._drive(self._invalidate_keys_flow(pairs))
        return len(pairs)

    async def _invalidate_pairs(self, pairs: list[tuple[str, str]]) -> None:
        """Delete these ``(value key, flag key)`` pairs in one round trip (the outbox's drain)."""
        await self._drive(self._invalidate_keys_flow(pairs))

    async def _timeboxed(self, op: TimeBoxed) -> None:
        """Run ``op.flow`` (a release) for at most ``op.seconds``; never raises an exception
        (the leases then expire on their own)."""
        try:
            await asyncio.wait_for(self._drive(op.flow, initialize=False), op.seconds)
        except Exception as exc:  # given up (TimeoutError), or the client failed
            self.metrics.incr("redis_errors")
            logger.warning("gave up releasing leases after a cancellation: %r", exc)

    def cached(
        self,
        ttl: float | None = None,
        *,
        name: str | None = None,
        serializer: Serializer | None = None,
    ) -> Callable[
        [Callable[P, Coroutine[Any, Any, R]]],
        Cached[
            P,
            Coroutine[Any, Any, R],
            Coroutine[Any, Any, None],
            Coroutine[Any, Any, list[R]],
        ],
    ]:
        """Cache an ``async def`` function's results; see :meth:`cachecow.CacheCow.cached`.
        The wrapped function's ``invalidate`` and ``many`` are coroutines."""
        return decorate(self, _FunctionCache, ttl, name, serializer)

    def _reader(self) -> tuple[Any, Any]:
        """Who reads (for single flight): the current task, and its event loop."""
        return asyncio.current_task(), asyncio.get_running_loop()

    async def _drive(self, flow: Flow, *, initialize: bool = True) -> Any:
        """Perform each operation a flow yields, awaiting it, until the flow returns or raises."""
        result: Any = None
        error: BaseException | None = None
        # Only a cluster client has a map to load: no coroutine per call otherwise.
        unreachable = await self._io.ready() if initialize and self._io.cluster else None
        while True:
            try:
                op = flow.send(result) if error is None else flow.throw(error)
            except StopIteration as stop:
                return stop.value
            result = error = None
            if unreachable is not None:  # the flow's first operation fails with it
                error, unreachable = unreachable, None
                continue
            try:
                if isinstance(op, RedisOp):
                    result = await self._io.perform(op)
                elif isinstance(op, Fetch):
                    result = self.fetch(op.cls, op.id_field, op.id_val)
                    if inspect.isawaitable(result):
                        result = await result
                elif isinstance(op, FetchMany):
                    result = self.fetch_many(op.cls, op.id_field, op.id_vals)
                    if inspect.isawaitable(result):
                        result = await result
                elif isinstance(op, Sleep):
                    await self._async_clock.async_sleep(op.seconds)
                elif isinstance(op, Wait):
                    result = await op.waiter.wait(op.seconds)
                else:  # TimeBoxed
                    await self._timeboxed(op)
            except BaseException as exc:
                result = None
                error = exc if isinstance(op, Fetch | FetchMany) else as_redis_error(exc)


class _FunctionCache(FunctionHooks, AsyncCacheCow):
    """The cache of one function decorated by ``AsyncCacheCow.cached`` (see ``_cached.py``)."""

    asynchronous = True

    def __init__(
        self,
        parent: AsyncCacheCow,
        function: Callable[..., Any],
        options: Options,
        serializer: Serializer | None,
    ) -> None:
        self.function = function
        serializer = parent.serializer if serializer is None else serializer
        super().__init__(
            parent.redis, serializer=serializer, prefix=parent.prefix, clock=parent.clock
        )
        share(self, parent, options)

    async def fetch(self, cls: Any, id_field: Any, id_val: Call) -> Result:
        return await self.run_async(id_val)
