"""The asyncio cache class: drives the same protocol flows with ``redis.asyncio``."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast, overload

import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode, PipelineCommand
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import (
    MaxConnectionsError,
    NoPermissionError,
    NoScriptError,
    RedisClusterException,
    RedisError,
)

from ._client import (
    DEFAULT_MAX_CONNECTIONS,
    bounded_cluster_kwargs,
    bounded_kwargs,
    check_client,
    pool_kwargs,
    script_calls,
    sentinel_kwargs,
)
from ._cluster import async_cluster_execute
from ._core import item_args
from ._flights import ALONE, RETRY, AsyncWaiter, answer, land
from ._ops import (
    Brief,
    Command,
    Fetch,
    FetchMany,
    Flow,
    Pipeline,
    Replicated,
    Script,
    Sleep,
    Wait,
    all_answered,
    as_redis_error,
)
from ._protocol import AsyncClock, CacheCowBase
from ._sentinel import AsyncBlockingSentinelPool, AsyncSentinel, AsyncSentinelMaster
from .exceptions import ConfigurationError, NotFound
from .keys import Field

logger = logging.getLogger("cachecow")
__all__ = ["AsyncCacheCow", "connect_async", "connect_cluster_async", "connect_sentinel_async"]

T = TypeVar("T")

_UNREAD: Any = object()  # a node pipeline's command whose reply was never read


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
    sentinel = AsyncSentinel(  # type: ignore[no-untyped-call]
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


class AsyncCacheCow(CacheCowBase[aredis.Redis]):
    """The asyncio twin of :class:`cachecow.CacheCow`, on a ``redis.asyncio`` client.

    The same protocol, options, hooks, counters and guarantees: both classes drive one shared,
    I/O-free implementation of the protocol. ``fetch`` and ``fetch_many`` may be coroutines
    (``async def``) or plain methods; the other hooks are plain methods. A custom ``clock`` must
    also have ``async def async_sleep(seconds)`` (:class:`~cachecow.AsyncClock`).
    """

    _waiter = AsyncWaiter

    def _check_client(self, redis: aredis.Redis) -> None:
        check_client(redis, is_async=True)
        self._cluster = isinstance(redis, AsyncRedisCluster)
        self._group_by_slot = self._cluster
        if not isinstance(self.clock, AsyncClock):
            raise ConfigurationError(
                "AsyncCacheCow needs a clock with monotonic(), sleep() and async_sleep()"
            )
        self._async_clock: AsyncClock = self.clock
        self._execute: Any = (
            async_cluster_execute(redis) if self._cluster else redis.execute_command
        )
        self._calls = script_calls()
        # redis-py 8.1's asyncio cluster client has no blocking pool: a call that finds a
        # node's max_connections in use fails at once. A gate of that many calls at a time
        # (each uses at most one connection per node) makes the others wait, bounded by the
        # socket timeout, as connect_async()'s blocking pool does.
        self._gate: asyncio.Semaphore | None = None
        if self._cluster:
            options = redis.nodes_manager.connection_kwargs  # type: ignore[attr-defined]
            self._gate = asyncio.Semaphore(options.get("max_connections") or 100)
            self._gate_timeout = options.get("socket_timeout") or 0.5
        # Where an ACL refuses script commands (NOPERM) but EVAL works: without SCRIPT LOAD,
        # a NOSCRIPT is answered by EVAL (which caches the script for the next EVALSHA);
        # without EVALSHA, every script goes by EVAL. Set on the first refusal.
        self._no_script_load = False
        self._eval_only = False

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
        lookup = (cls, id_field, id_val)
        keys = self.get_keys(*lookup)
        if not self._joins:  # a reader that never waits for another reads alone
            return await self._drive(self._get_flow(*lookup, keys), *lookup)
        # Lead a read of this key, or join the one in flight (see _flights.py).
        me, loop = self._reader()
        flight, index = self._flights.join(keys[0], me, loop)
        deadline = time.monotonic() + self.wait_timeout
        while index >= 0:
            if not await flight.waiter.wait(max(0.0, deadline - time.monotonic())):
                self.metrics.incr("wait_timeouts")  # as a busy reader that waited in vain
                return await self._drive(self._fetch_uncached(*lookup), *lookup)
            obj = answer(self, lookup, flight, index)
            if obj is ALONE:
                return await self._drive(self._get_flow(*lookup), *lookup)
            if obj is not RETRY:
                return obj
            flight, index = self._flights.rejoin(flight, me)
        if index == -2:  # read alone (see Flights.join)
            return await self._drive(self._get_flow(*lookup, keys), *lookup)
        obj = error = None
        try:
            obj = await self._drive(self._get_flow(*lookup, keys, flight), *lookup)
            return obj
        except BaseException as exc:
            error = exc
            raise
        finally:
            land(self, flight, lookup, obj, error)

    async def peek(self, cls: Any, id_field: str | tuple[str, ...], id_val: Any) -> Any:
        """The cached object of a lookup, or ``None``; see :meth:`cachecow.CacheCow.peek`."""
        id_field, id_val = self._normalize(cls, id_field, id_val)
        return await self._drive(self._peek_flow(cls, id_field, id_val), cls, id_field, id_val)

    async def get_many(
        self, cls: Any, id_field: str | tuple[str, ...], id_vals: Iterable[Any]
    ) -> list[Any]:
        """The objects of many lookups, in order; see :meth:`cachecow.CacheCow.get_many`."""
        field, values = self._normalize_many(cls, id_field, id_vals)
        flow = self._read_many(cls, field, values, *self._reader())
        result: list[Any] = await self._drive(flow, cls, field, None)
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

    async def _invalidate_pairs(self, pairs: list[tuple[str, str]]) -> None:
        """Delete these ``(value key, flag key)`` pairs in one round trip (the outbox's drain)."""
        await self._drive(self._invalidate_keys_flow(pairs), None, None, None)

    async def _brief(self, op: Brief) -> None:
        """Run ``op.flow`` (a release) for at most ``op.seconds``; never raises an exception
        (the leases then expire on their own)."""
        try:
            await asyncio.wait_for(
                self._drive(op.flow, None, None, None, initialize=False), op.seconds
            )
        except Exception as exc:  # given up (TimeoutError), or the client failed
            self.metrics.incr("redis_errors")
            logger.warning("cachecow: gave up releasing leases after a cancellation: %r", exc)

    def _reader(self) -> tuple[Any, Any]:
        """Who reads (for single flight): the current task, and its event loop."""
        return asyncio.current_task(), asyncio.get_running_loop()

    async def _drive(
        self,
        flow: Flow,
        cls: Any,
        id_field: Any,
        id_val: Any,
        *,
        initialize: bool = True,
    ) -> Any:
        """Perform each operation a flow yields, awaiting it, until the flow returns or raises."""
        result: Any = None
        error: BaseException | None = None
        unreachable: BaseException | None = None
        if self._cluster and initialize:
            # Load the cluster's map before the first command (a no-op once loaded): without
            # it, redis-py 8.1 routes a script to a random node, and every 5th MOVED reply
            # closes every connection, those of concurrent calls too.
            try:
                await self.redis.initialize()
            except (RedisError, RedisClusterException) as exc:
                unreachable = as_redis_error(exc)
        while True:
            try:
                op = flow.send(result) if error is None else flow.throw(error)
            except StopIteration as stop:
                return stop.value
            error = None
            if unreachable is not None:  # the flow's first operation fails with it
                error, unreachable = unreachable, None
                continue
            try:
                if isinstance(op, Script):
                    result = await self._gated(self._run_script(op))
                elif isinstance(op, Fetch):
                    result = self.fetch(cls, id_field, id_val)
                    if inspect.isawaitable(result):
                        result = await result
                elif isinstance(op, FetchMany):
                    result = self.fetch_many(cls, id_field, op.id_vals)
                    if inspect.isawaitable(result):
                        result = await result
                elif isinstance(op, Command):
                    result = await self._gated(self._execute(*op.args))
                elif isinstance(op, Pipeline):
                    result = await self._gated(self._pipeline(op))
                elif isinstance(op, Replicated):
                    result = await self._gated(self._replicated(op))
                elif isinstance(op, Sleep):
                    await self._async_clock.async_sleep(op.seconds)
                    result = None
                elif isinstance(op, Wait):
                    result = await op.waiter.wait(op.seconds)
                elif isinstance(op, Brief):
                    await self._brief(op)
                    result = None
                else:  # pragma: no cover - a flow yields only the operations above
                    raise TypeError(f"unknown operation {op!r}")
            except BaseException as exc:
                result = None
                error = exc if isinstance(op, Fetch | FetchMany) else as_redis_error(exc)

    def _gated(self, call: Coroutine[Any, Any, Any]) -> Awaitable[Any]:
        """A Redis call to await; on a cluster, once fewer than ``max_connections`` calls are
        under way (waiting at most the socket timeout, then ``MaxConnectionsError``). Off a
        cluster, the call itself: no coroutine around it on the hot path."""
        return call if self._gate is None else self._through_gate(self._gate, call)

    async def _through_gate(self, gate: asyncio.Semaphore, call: Coroutine[Any, Any, Any]) -> Any:
        try:
            await asyncio.wait_for(gate.acquire(), self._gate_timeout)
        except BaseException as exc:  # never sent (a timeout, a cancellation): close it unrun
            call.close()
            if isinstance(exc, TimeoutError):
                raise MaxConnectionsError(
                    f"no cluster connection freed up within {self._gate_timeout}s"
                ) from None
            raise
        try:
            return await call
        finally:
            gate.release()

    async def _alone(self, item: Script | Command) -> Any:
        if isinstance(item, Script):
            return await self._run_script(item)
        return await self._execute(*item.args)

    async def _run_script(self, op: Script) -> Any:
        call = self._calls[op.name]
        if self._eval_only:
            return await self._execute(*call.eval_args(op.keys, op.args))
        try:
            return await self._execute(*call.args(op.keys, op.args))
        except NoScriptError:  # a restarted server, a failover, SCRIPT FLUSH
            if self._no_script_load:  # EVAL, which also caches it for the next EVALSHA
                return await self._execute(*call.eval_args(op.keys, op.args))
            try:
                if self._cluster:  # every primary at once, not one node per NOSCRIPT
                    primaries = self.redis.get_primaries()  # type: ignore[attr-defined]
                    await self._execute("SCRIPT", "LOAD", call.source, target_nodes=primaries)
                else:
                    await self.redis.script_load(call.source)
            except NoPermissionError:  # an ACL without SCRIPT LOAD: EVAL, from now on
                reply = await self._execute(*call.eval_args(op.keys, op.args))
                self._no_script_load = True
                return reply
            try:
                return await self._execute(*call.args(op.keys, op.args))
            except NoScriptError:  # flushed again between the load and the call
                return await self._execute(*call.eval_args(op.keys, op.args))
        except NoPermissionError:  # an ACL without EVALSHA: EVAL for every script from now on
            reply = await self._execute(*call.eval_args(op.keys, op.args))
            self._eval_only = True
            return reply

    def _item_args(self, item: Script | Command) -> tuple[Any, ...]:
        return item_args(self._calls, item, eval_only=self._eval_only)

    async def _pipeline(self, op: Pipeline) -> list[Any]:
        if self._cluster:
            return await self._cluster_pipeline(op)
        pipe: Any = self.redis.pipeline(transaction=False)
        for item in op.ops:
            pipe.execute_command(*self._item_args(item))
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        for index, (item, reply) in enumerate(zip(op.ops, replies, strict=True)):
            # A script that Redis did not run (NOSCRIPT, or NOPERM for EVALSHA): alone, which
            # loads it or falls back to EVAL.
            if isinstance(item, Script) and isinstance(reply, NoScriptError | NoPermissionError):
                replies[index] = await self._run_script(item)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def _replicated(self, op: Replicated) -> int:
        """Commands, then WAIT on the same connection; the fewest replicas that acknowledged."""
        if not self._cluster:
            pipe: Any = self.redis.pipeline(transaction=False)
            for item in op.ops:
                pipe.execute_command(*item.args)
            pipe.execute_command("WAIT", op.replicas, op.timeout_ms)
            replies = await pipe.execute(raise_on_error=True)
            return int(replies[-1])
        try:
            return await self._replicated_per_node(op)
        except Exception:
            # A moved slot or a failed node: through the cluster client, which follows moves
            # and refreshes its map, then once more with the WAIT (deleting twice is harmless).
            for item in op.ops:
                await self._alone(item)
            return await self._replicated_per_node(op)

    async def _replicated_per_node(self, op: Replicated) -> int:
        cluster = cast(AsyncRedisCluster, self.redis)
        by_node: dict[str, tuple[ClusterNode, list[PipelineCommand]]] = {}
        for index, item in enumerate(op.ops):
            node = cluster.get_node_from_key(item.args[1])
            if node is None:
                raise RedisError(f"no node serves the slot of {item.args[1]!r} now")
            by_node.setdefault(node.name, (node, []))[1].append(PipelineCommand(index, *item.args))
        groups = [
            (node, [*commands, PipelineCommand(-1, "WAIT", op.replicas, op.timeout_ms)])
            for node, commands in by_node.values()
        ]
        await asyncio.gather(*(node.execute_pipeline(commands) for node, commands in groups))
        acked = []
        for _node, commands in groups:
            for command in commands:
                if isinstance(command.result, Exception):
                    raise command.result
            acked.append(int(cast(Any, commands[-1].result)))
        return min(acked, default=op.replicas)

    async def _cluster_pipeline(self, op: Pipeline) -> list[Any]:
        """A batch on Redis Cluster: one pipeline per node (each item touches one slot), the
        nodes concurrently, each pipeline on a connection of its own from its node's pool.

        Then, one at a time, every item that got no good reply goes again alone through the
        cluster client, which loads scripts, follows moves, refreshes its map of the cluster
        and retries (and raises if the error persists): an item whose reply is an error
        (NOSCRIPT after SCRIPT FLUSH or a failover, MOVED/ASK during resharding), and each
        unread item of a node whose pipeline failed as a whole (a dead node, a failover).

        Why the pipelines bypass the cluster client's error handling, and the items sent alone
        go one at a time once every pipeline is done: redis-py 8.1's asyncio cluster client
        picks a command's route before it loads its map of the cluster, so on a fresh client a
        keyed script goes to some other node and comes back MOVED; at every 5th MOVED the
        client closes all its connections, those of the calls in flight too, which then fail
        on a vanished writer (an AttributeError: not a ConnectionError, never retried). For
        the same reason the map is loaded here first.
        """
        cluster = cast(AsyncRedisCluster, self.redis)
        await cluster.initialize()  # a no-op once the client knows the cluster
        by_node: dict[str, tuple[ClusterNode, list[PipelineCommand]]] = {}
        alone: list[int] = []  # the indexes of the items to send alone
        for index, item in enumerate(op.ops):
            key = item.keys[0] if isinstance(item, Script) else item.args[1]
            try:
                node = cluster.get_node_from_key(key)
            except RedisError:  # a slot no node serves now: the cluster client will find one
                node = None
            if node is None:
                alone.append(index)
                continue
            command = PipelineCommand(index, *self._item_args(item))
            command.result = _UNREAD
            by_node.setdefault(node.name, (node, []))[1].append(command)
        groups = list(by_node.values())
        if len(groups) == 1:
            await _node_pipeline(*groups[0])
        elif groups:
            await asyncio.gather(*(_node_pipeline(node, commands) for node, commands in groups))
        results: list[Any] = [None] * len(op.ops)
        for _node, commands in groups:
            for command in commands:
                if command.result is _UNREAD or isinstance(command.result, Exception):
                    alone.append(command.position)
                else:
                    results[command.position] = command.result
        failed: RedisError | None = None
        for index in sorted(alone):
            if failed is not None:  # the cluster is failing: send nothing more alone
                results[index] = failed
                continue
            try:
                results[index] = await self._alone(op.ops[index])
            except RedisError as exc:
                failed = results[index] = exc
        return all_answered(results)


async def _node_pipeline(node: ClusterNode, commands: list[PipelineCommand]) -> None:
    """Send ``commands`` to ``node`` in one round trip; each reply (or error) lands in its
    command's ``result``. If the pipeline fails as a whole, the commands whose replies were
    not read keep the ``_UNREAD`` mark."""
    try:
        await node.execute_pipeline(commands)
    except Exception:  # a connection lost, refused, timed out, closed under it: not cancelled
        return
