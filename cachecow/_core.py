"""The synchronous cache class: drives the protocol's flows with redis-py."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar, overload

import redis as redis_py
from redis.cluster import RedisCluster
from redis.exceptions import NoPermissionError, NoScriptError

from ._client import (
    DEFAULT_MAX_CONNECTIONS,
    ClusterBlockingPool,
    ScriptCall,
    bounded_cluster_kwargs,
    bounded_kwargs,
    check_client,
    pool_kwargs,
    script_calls,
    sentinel_kwargs,
)
from ._cluster import cluster_execute
from ._flights import ALONE, RETRY, answer, land
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
from ._protocol import CacheCowBase, refuse_awaitable
from ._sentinel import BlockingSentinelPool, Sentinel, SentinelMaster, mend_sentinel_pool
from ._threads import node_runner

__all__ = ["CacheCow", "connect", "connect_cluster", "connect_sentinel"]

T = TypeVar("T")


_UNSENT: Any = object()  # a batch item with no reply yet


def item_args(
    calls: dict[str, ScriptCall], item: Script | Command, *, eval_only: bool
) -> tuple[Any, ...]:
    """A batch item's command: a script by EVALSHA, or by EVAL where the ACL refuses EVALSHA."""
    if isinstance(item, Script):
        call = calls[item.name]
        return (
            call.eval_args(item.keys, item.args) if eval_only else call.args(item.keys, item.args)
        )
    return item.args


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
    client: redis_py.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        service_name,
        redis_class=SentinelMaster,
        connection_pool_class=pool_class,
        **pool_kwargs(pool_class, timeout, max_connections, {}),
    )
    return client


class CacheCow(CacheCowBase[redis_py.Redis]):
    """A leased cache-aside cache of objects in Redis. Subclass it and implement ``fetch``.

    ``get(cls, field, value)`` answers from Redis in one round trip on a hit; on a miss it takes
    a lease (a flag key holding a random token), calls ``fetch``, and stores the result only if
    the lease is still this reader's, so a value read before an invalidation is never cached
    after it. ``invalidate(cls, field, value)`` deletes the value and voids every lease.

    :param redis: a redis-py client (``decode_responses`` must be off). See :func:`connect` for a
        client with bounded timeouts.
    :param ttl: seconds a cached value lives at most (default 3600). Always finite.
    :param ttl_jitter: fraction by which each value's TTL is randomly shortened, spreading
        expiries (default 0.1: between 90% and 100% of ``ttl``).
    :param flag_ttl: seconds a lease lives (default 10). A reader whose fetch outlives it caches
        nothing; a crashed reader's lease blocks caching of its key for this long at most.
    :param tombstone_ttl: seconds a "not found" answer stays cached (default 30).
    :param max_value_bytes: the most serialized bytes a value may have to be cached (default
        1 MiB, ``None`` for no limit). A larger one is returned but not cached (its lease is
        given back), counted in ``oversized_values`` and logged once per model and field.
    :param busy: what a reader does when another holds the lease: ``"wait"`` (default) polls
        with backoff for the holder's value up to ``wait_timeout``, then fetches without caching;
        ``"fetch"`` fetches at once without caching.
    :param wait_timeout: seconds a busy reader waits under ``"wait"`` (default 1.0).
    :param fail_open: on a Redis error during ``get``, serve from ``fetch`` and cache nothing
        (default False: raise :class:`~cachecow.CacheUnavailable`). Invalidations always raise.
    :param fail_open_log_interval: log a Redis failure at most once per this many seconds.
    :param wait_replicas: how many replicas must acknowledge each invalidation (``WAIT``) before
        it returns (default 0). With Sentinel or a cluster with replicas, set it to 1 or more:
        replication is asynchronous, and a failover to a replica that never received an
        invalidation would bring the old value back. Too few acknowledgements in time raise
        :class:`~cachecow.InvalidationFailed`.
    :param wait_replicas_timeout: seconds an invalidation waits for them (default 0.1); keep
        it below the client's socket timeout.
    :param serializer: how objects become bytes (default :class:`~cachecow.JsonSerializer`).
    :param prefix: the start of every key (default ``"cachecow:"``); no braces or spaces.
    :param clock: time source for waiting and log rate limits (default: the system clock).
    :param metrics_hook: called as ``hook(counter, amount)`` on every counter increment.
    """

    def _check_client(self, redis: redis_py.Redis) -> None:
        check_client(redis, is_async=False)
        mend_sentinel_pool(redis)
        self._cluster = isinstance(redis, RedisCluster)
        self._group_by_slot = self._cluster
        self._execute: Any = cluster_execute(redis) if self._cluster else redis.execute_command
        self._calls = script_calls()
        # Where an ACL refuses script commands (NOPERM) but EVAL works: without SCRIPT LOAD,
        # a NOSCRIPT is answered by EVAL (which caches the script for the next EVALSHA);
        # without EVALSHA, every script goes by EVAL. Set on the first refusal.
        self._no_script_load = False
        self._eval_only = False

    @overload
    def get(self, cls: type[T], id_field: str | tuple[str, ...], id_val: Any) -> T: ...

    @overload
    def get(self, cls: Any, id_field: str | tuple[str, ...], id_val: Any) -> Any: ...

    def get(self, cls: Any, id_field: str | tuple[str, ...], id_val: Any) -> Any:
        """The object whose ``id_field`` is ``id_val``, from the cache or from ``fetch``.

        ``id_field`` may be a tuple of fields with ``id_val`` a tuple of values (a composite
        unique key; the order of the fields does not matter). Raises the exception built by
        :meth:`not_found` (by default :class:`~cachecow.NotFound`) when there is no such
        object, whether the answer came from ``fetch`` or from a cached tombstone. Errors
        raised by ``fetch`` reach the caller unchanged.
        """
        id_field, id_val = self._normalize(cls, id_field, id_val)
        lookup = (cls, id_field, id_val)
        keys = self.get_keys(*lookup)
        if not self._joins:  # a reader that never waits for another reads alone
            return self._drive(self._get_flow(*lookup, keys), *lookup)
        # Lead a read of this key, or join the one in flight (see _flights.py).
        me, loop = self._reader()
        flight, index = self._flights.join(keys[0], me, loop)
        deadline = time.monotonic() + self.wait_timeout
        while index >= 0:
            if not flight.waiter.wait(max(0.0, deadline - time.monotonic())):
                self.metrics.incr("wait_timeouts")  # as a busy reader that waited in vain
                return self._drive(self._fetch_uncached(*lookup), *lookup)
            obj = answer(self, lookup, flight, index)
            if obj is ALONE:
                return self._drive(self._get_flow(*lookup), *lookup)
            if obj is not RETRY:
                return obj
            flight, index = self._flights.rejoin(flight, me)
        if index == -2:  # read alone (see Flights.join)
            return self._drive(self._get_flow(*lookup, keys), *lookup)
        obj = error = None
        try:
            obj = self._drive(self._get_flow(*lookup, keys, flight), *lookup)
            return obj
        except BaseException as exc:
            error = exc
            raise
        finally:
            land(self, flight, lookup, obj, error)

    def peek(self, cls: Any, id_field: str | tuple[str, ...], id_val: Any) -> Any:
        """The cached object of a lookup, or ``None`` when it is not cached: never fetches.

        One round trip (a ``GET``). A cached "not found" raises like :meth:`get`. With
        ``fail_open``, a Redis error gives ``None``.
        """
        id_field, id_val = self._normalize(cls, id_field, id_val)
        return self._drive(self._peek_flow(cls, id_field, id_val), cls, id_field, id_val)

    def get_many(
        self, cls: Any, id_field: str | tuple[str, ...], id_vals: Iterable[Any]
    ) -> list[Any]:
        """The objects of many lookups of one field, in the order of ``id_vals``.

        Returns a list as long as ``id_vals``: the object of each value, or ``None`` where there
        is no such object (whether ``fetch_many`` said so or a cached tombstone did). Duplicate
        values are looked up once. One round trip when every value is cached; otherwise one
        :meth:`fetch_many` call for the misses and one more round trip to commit them. Busy
        lookups follow the ``busy`` policy; errors of ``fetch_many`` reach the caller unchanged,
        with every lease released.
        """
        field, values = self._normalize_many(cls, id_field, id_vals)
        flow = self._read_many(cls, field, values, *self._reader())
        result: list[Any] = self._drive(flow, cls, field, None)
        return result

    def invalidate(self, cls: Any, id_field: str | tuple[str, ...], id_val: Any) -> None:
        """Forget the cached value of a lookup and void every lease in flight for it.

        Call it after the write's transaction commits. One round trip. Raises
        :class:`~cachecow.InvalidationFailed` if Redis cannot be reached, whatever
        ``fail_open`` says: the write path must learn that an invalidation was lost.
        """
        id_field, id_val = self._normalize(cls, id_field, id_val)
        self._drive(self._invalidate_flow(cls, id_field, id_val), cls, id_field, id_val)

    def invalidate_many(
        self, cls: Any, id_field: str | tuple[str, ...], id_vals: Iterable[Any]
    ) -> None:
        """:meth:`invalidate` many values of one field, in one round trip."""
        field, values = self._normalize_many(cls, id_field, id_vals)
        pairs = [self.get_keys(cls, field, value) for value in values]
        self._drive(self._invalidate_keys_flow(pairs), cls, field, None)

    def invalidate_lookups(self, lookups: Iterable[tuple[Any, Any, Any]]) -> None:
        """:meth:`invalidate` any ``(cls, id_field, id_val)`` lookups, in one round trip."""
        self._drive(self._invalidate_keys_flow(self._triples_keys(lookups)), None, None, None)

    def invalidate_object(self, obj: Any, *, previous: Any = None, model: Any = None) -> None:
        """Invalidate every unique lookup of ``obj`` (see :meth:`unique_lookups`), in one round
        trip; with ``previous`` (the object's values before the write), those lookups too, so a
        changed unique field clears both its old and its new entry.

        :param model: what ``get`` is called with for this object (default: ``type(obj)``).
        """
        pairs = self._object_keys(obj, previous, model)
        self._drive(self._invalidate_keys_flow(pairs), None, None, None)

    def _invalidate_pairs(self, pairs: list[tuple[str, str]]) -> None:
        """Delete these ``(value key, flag key)`` pairs in one round trip (the outbox's drain)."""
        self._drive(self._invalidate_keys_flow(pairs), None, None, None)

    def _reader(self) -> tuple[Any, Any]:
        """Who reads (for single flight): the current thread, and no event loop."""
        return threading.get_ident(), None

    def _drive(self, flow: Flow, cls: Any, id_field: Any, id_val: Any) -> Any:
        """Perform each operation a flow yields, until it returns or raises."""
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
                    result = self._run_script(op)
                elif isinstance(op, Fetch):
                    result = refuse_awaitable(self.fetch(cls, id_field, id_val), "fetch")
                elif isinstance(op, FetchMany):
                    result = refuse_awaitable(
                        self.fetch_many(cls, id_field, op.id_vals), "fetch_many"
                    )
                elif isinstance(op, Command):
                    result = self._execute(*op.args)
                elif isinstance(op, Pipeline):
                    result = self._pipeline(op)
                elif isinstance(op, Replicated):
                    result = self._replicated(op)
                elif isinstance(op, Sleep):
                    self.clock.sleep(op.seconds)
                    result = None
                elif isinstance(op, Wait):
                    result = op.waiter.wait(op.seconds)
                elif isinstance(op, Brief):  # no bound to put on a sync call: run it in full
                    self._drive(op.flow, None, None, None)
                    result = None
                else:  # pragma: no cover - a flow yields only the operations above
                    raise TypeError(f"unknown operation {op!r}")
            except BaseException as exc:
                result = None
                error = exc if isinstance(op, Fetch | FetchMany) else as_redis_error(exc)

    def _per_node(self, ops: tuple[Script | Command, ...], run: Any) -> None:
        """Group a cluster batch's items by the node that owns their slot and call
        ``run(node, indexes)`` for each node, the nodes in parallel."""
        cluster: Any = self.redis
        by_node: dict[str, tuple[Any, list[int]]] = {}
        for index, item in enumerate(ops):
            key = item.keys[0] if isinstance(item, Script) else item.args[1]
            node = cluster.get_node_from_key(key)
            by_node.setdefault(node.name, (node, []))[1].append(index)
        groups = list(by_node.values())
        if len(groups) == 1:
            run(*groups[0])
            return
        # One node's call in this thread, the others in workers that never queue a call
        # behind another (see cachecow/_threads.py); every call ends before any error rises.
        errors = node_runner().run_all([functools.partial(run, *group) for group in groups])
        for error in errors:
            if error is not None:
                raise error

    def _cluster_pipeline(self, op: Pipeline) -> list[Any]:
        """A batch on Redis Cluster: one pipeline per node (each item touches one slot), the
        nodes in parallel. An item a node refuses (NOSCRIPT, MOVED/ASK during resharding) is
        sent again alone through the cluster client, which loads scripts and follows moves; so
        are all of a node's items when the node fails as a whole (a dead node, a failover): the
        cluster client then refreshes its view of the cluster, retries, or raises. If some
        items still fail while others were answered, :class:`PartialPipelineError` says which."""
        cluster: Any = self.redis
        results: list[Any] = [_UNSENT] * len(op.ops)

        def run(node: Any, indexes: list[int]) -> None:
            pipe = cluster.get_redis_connection(node).pipeline(transaction=False)
            for index in indexes:
                pipe.execute_command(*self._item_args(op.ops[index]))
            try:
                try:
                    replies = pipe.execute(raise_on_error=False)
                except redis_py.RedisError:
                    for index in indexes:
                        results[index] = self._alone(op.ops[index])
                    return
                for index, reply in zip(indexes, replies, strict=True):
                    if isinstance(reply, Exception):
                        reply = self._alone(op.ops[index])
                    results[index] = reply
            except redis_py.RedisError as exc:  # this node's other items are not sent again
                for index in indexes:
                    if results[index] is _UNSENT:
                        results[index] = exc

        self._per_node(op.ops, run)
        return all_answered(results)

    def _replicated(self, op: Replicated) -> int:
        """Commands, then WAIT on the same connection; the fewest replicas that acknowledged."""
        if not self._cluster:
            pipe: Any = self.redis.pipeline(transaction=False)
            for item in op.ops:
                pipe.execute_command(*item.args)
            pipe.execute_command("WAIT", op.replicas, op.timeout_ms)
            return int(pipe.execute(raise_on_error=True)[-1])
        cluster: Any = self.redis
        acked: list[int] = []

        def run(node: Any, indexes: list[int]) -> None:
            pipe = cluster.get_redis_connection(node).pipeline(transaction=False)
            for index in indexes:
                pipe.execute_command(*op.ops[index].args)
            pipe.execute_command("WAIT", op.replicas, op.timeout_ms)
            acked.append(int(pipe.execute(raise_on_error=True)[-1]))

        try:
            self._per_node(op.ops, run)
        except redis_py.RedisError:
            # A moved slot or a failed node: through the cluster client, which follows moves
            # and refreshes its view of the cluster, then once more with the WAIT (deleting
            # twice is harmless).
            for item in op.ops:
                self._alone(item)
            acked.clear()
            self._per_node(op.ops, run)
        return min(acked, default=op.replicas)

    def _alone(self, item: Script | Command) -> Any:
        if isinstance(item, Script):
            return self._run_script(item)
        return self._execute(*item.args)

    def _run_script(self, op: Script) -> Any:
        call = self._calls[op.name]
        if self._eval_only:
            return self._execute(*call.eval_args(op.keys, op.args))
        try:
            return self._execute(*call.args(op.keys, op.args))
        except NoScriptError:  # a restarted server, a failover, SCRIPT FLUSH
            if self._no_script_load:  # EVAL, which also caches it for the next EVALSHA
                return self._execute(*call.eval_args(op.keys, op.args))
            try:
                if self._cluster:  # every primary at once, not one node per NOSCRIPT
                    primaries = self.redis.get_primaries()  # type: ignore[attr-defined]
                    self._execute("SCRIPT", "LOAD", call.source, target_nodes=primaries)
                else:
                    self.redis.script_load(call.source)
            except NoPermissionError:  # an ACL without SCRIPT LOAD: EVAL, from now on
                reply = self._execute(*call.eval_args(op.keys, op.args))
                self._no_script_load = True
                return reply
            try:
                return self._execute(*call.args(op.keys, op.args))
            except NoScriptError:  # flushed again between the load and the call
                return self._execute(*call.eval_args(op.keys, op.args))
        except NoPermissionError:  # an ACL without EVALSHA: EVAL for every script from now on
            reply = self._execute(*call.eval_args(op.keys, op.args))
            self._eval_only = True
            return reply

    def _pipeline(self, op: Pipeline) -> list[Any]:
        if self._cluster:
            return self._cluster_pipeline(op)
        pipe: Any = self.redis.pipeline(transaction=False)
        for item in op.ops:
            pipe.execute_command(*self._item_args(item))
        replies: list[Any] = pipe.execute(raise_on_error=False)
        for index, (item, reply) in enumerate(zip(op.ops, replies, strict=True)):
            # A script that Redis did not run (NOSCRIPT, or NOPERM for EVALSHA): alone, which
            # loads it or falls back to EVAL.
            if isinstance(item, Script) and isinstance(reply, NoScriptError | NoPermissionError):
                replies[index] = self._run_script(item)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _item_args(self, item: Script | Command) -> tuple[Any, ...]:
        return item_args(self._calls, item, eval_only=self._eval_only)
