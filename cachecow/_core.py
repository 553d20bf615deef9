"""The synchronous cache class: drives the protocol's flows with redis-py."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeVar, overload

import redis as redis_py
from redis.exceptions import RedisClusterException, RedisError

from ._batch import BatchRead, read_many
from ._cached import Cached, Call, FunctionHooks, Result, decorate, share
from ._flights import ALONE, RETRY, answer, land
from ._invalidation import pause, scan_failed, settle_seconds
from ._lookups import (
    keyed,
    keyed_many,
    lookups_keys,
    normalized,
    normalized_many,
    object_keys,
)
from ._loops import warn_in_loop
from ._near import hit_near
from ._ops import _UNUSABLE, Fetch, FetchMany, Flow, RedisOp, Sleep, Wait, as_redis_error
from ._options import Options
from ._protocol import CacheCowBase, entry_pairs, refuse_awaitable
from ._redis_io import RedisIO
from ._single import SingleRead
from ._telemetry import no_model, object_model, timed
from .serializers import Serializer

__all__ = ["CacheCow"]

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")


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
    :param ttls: TTLs per model: model (a class, or a string label) to seconds, for that
        model's values instead of ``ttl``. A call's own ``ttl=`` wins over both.
    :param near_bytes: the size of the near cache in this process, in bytes (default 0: none).
        Hits it holds are answered without a round trip; Redis's invalidation messages keep it
        honest (see docs/near-cache.md).
    :param near_ttl: the most seconds an entry stays in the near cache (default 30).
    :param near_models: the models (classes or labels) the near cache keeps (default: all).
    :param near_shared: hand every near-cache hit the one object decoded when the entry was
        kept (default False: decode its bytes for each hit). Only for immutable objects.
    :param refresh_ahead: refresh hot values before they expire (default 0: off). A hit that
        finds less than this fraction of its TTL left (the read's TTL, ``tombstone_ttl`` for a
        "not found") also takes the lease: that reader fetches, commits and returns the fresh
        object while every other reader keeps getting the cached one, so a hot key never
        misses at expiry. A fraction in [0, 1); ``refresh_ahead + ttl_jitter`` must be below 1.
    """

    def _bind_client(self, redis: redis_py.Redis) -> None:
        self._io = RedisIO(redis)
        self._group_by_slot = self._io.cluster

    @overload
    def get(
        self, cls: type[T], id_field: str | tuple[str, ...], id_val: Any, *, ttl: float | None = ...
    ) -> T: ...

    @overload
    def get(
        self, cls: Any, id_field: str | tuple[str, ...], id_val: Any, *, ttl: float | None = ...
    ) -> Any: ...

    def get(
        self, cls: Any, id_field: str | tuple[str, ...], id_val: Any, *, ttl: float | None = None
    ) -> Any:
        """The object whose ``id_field`` is ``id_val``, from the cache or from ``fetch``.

        ``id_field`` may be a tuple of fields with ``id_val`` a tuple of values (a composite
        unique key; the order of the fields does not matter). Raises the exception built by
        :meth:`not_found` (by default :class:`~cachecow.NotFound`) when there is no such
        object, whether the answer came from ``fetch`` or from a cached tombstone. Errors
        raised by ``fetch`` reach the caller unchanged. A value this call caches lives ``ttl``
        seconds (less the jitter); by default its model's TTL in ``ttls``, else ``ttl``.
        """
        if self._near is not None:  # a near hit: no round trip, and no duration recorded
            obj = hit_near(self, cls, id_field, id_val)
            if obj is not _UNUSABLE:
                return obj
        return self._get(cls, id_field, id_val, ttl=ttl)

    @timed("get")
    def _get(
        self, cls: Any, id_field: str | tuple[str, ...], id_val: Any, *, ttl: float | None = None
    ) -> Any:
        """:meth:`get` past the near cache."""
        lookup, keys = keyed(self, cls, id_field, id_val)
        ttl = self._checked_ttl(ttl)
        read = SingleRead(self, lookup, keys, ttl=ttl)
        if self._expects_hit(read.model):  # a plain GET, outside single flight (see _single.py)
            obj = self._drive(read.read_plain())
            if obj is not _UNUSABLE:
                return obj
        if not self._joins:  # a reader that never waits for another reads alone
            return self._drive(read.lease())
        # Lead a read of this key, or join the one in flight (see _flights.py).
        me, loop = self._reader()
        flight, index = self._flights.join(keys[0], me, loop)
        deadline = time.monotonic() + self.options.wait_timeout
        while index >= 0:
            if not flight.waiter.wait(max(0.0, deadline - time.monotonic())):
                self.metrics.incr("wait_timeouts", 1, self.model_label(cls))  # waited in vain
                return self._drive(self._fetch_uncached(lookup))
            obj = answer(self, lookup, flight, index)
            if obj is ALONE:
                return self._drive(self._get_flow(lookup, ttl=ttl))
            if obj is not RETRY:
                return obj
            flight, index = self._flights.rejoin(flight, me)
        if index == -2:  # read alone (see Flights.join)
            return self._drive(read.lease())
        read.flight = flight
        obj = error = None
        try:
            obj = self._drive(read.lease())
            return obj
        except BaseException as exc:
            error = exc
            raise
        finally:
            land(self, flight, lookup, obj, error)

    @overload
    def peek(self, cls: type[T], id_field: str | tuple[str, ...], id_val: Any) -> T | None: ...

    @overload
    def peek(self, cls: Any, id_field: str | tuple[str, ...], id_val: Any) -> Any: ...

    @timed("peek")
    def peek(self, cls: Any, id_field: str | tuple[str, ...], id_val: Any) -> Any:
        """The cached object of a lookup, or ``None`` when it is not cached: never fetches.

        One round trip (a ``GET``). A cached "not found" raises like :meth:`get`. With
        ``fail_open``, a Redis error gives ``None``.
        """
        id_field, id_val = normalized(self, cls, id_field, id_val)
        return self._drive(self._peek_flow(cls, id_field, id_val))

    @overload
    def get_many(
        self,
        cls: type[T],
        id_field: str | tuple[str, ...],
        id_vals: Iterable[Any],
        *,
        ttl: float | None = ...,
    ) -> list[T | None]: ...

    @overload
    def get_many(
        self,
        cls: Any,
        id_field: str | tuple[str, ...],
        id_vals: Iterable[Any],
        *,
        ttl: float | None = ...,
    ) -> list[Any]: ...

    @timed("get_many")
    def get_many(
        self,
        cls: Any,
        id_field: str | tuple[str, ...],
        id_vals: Iterable[Any],
        *,
        ttl: float | None = None,
    ) -> list[Any]:
        """The objects of many lookups of one field, in the order of ``id_vals``.

        Returns a list as long as ``id_vals``: the object of each value, or ``None`` where there
        is no such object (whether ``fetch_many`` said so or a cached tombstone did). Duplicate
        values are looked up once. One round trip when every value is cached; otherwise one
        :meth:`fetch_many` call for the misses and one more round trip to commit them. Busy
        lookups follow the ``busy`` policy; errors of ``fetch_many`` reach the caller unchanged,
        with every lease released. ``ttl`` as for :meth:`get`.
        """
        field, values, keys = keyed_many(self, cls, id_field, id_vals)
        batch = BatchRead(self, cls, field, self._checked_ttl(ttl))
        flow = read_many(batch, values, keys, self._reader())
        result: list[Any] = self._drive(flow)
        return result

    @timed("invalidate")
    def invalidate(self, cls: Any, id_field: str | tuple[str, ...], id_val: Any) -> None:
        """Forget the cached value of a lookup and void every lease in flight for it.

        Call it after the write's transaction commits. One round trip. Raises
        :class:`~cachecow.InvalidationFailed` if Redis cannot be reached, whatever
        ``fail_open`` says: the write path must learn that an invalidation was lost.
        """
        id_field, id_val = normalized(self, cls, id_field, id_val)
        self._drive(self._invalidate_flow(cls, id_field, id_val))

    @timed("invalidate_many")
    def invalidate_many(
        self, cls: Any, id_field: str | tuple[str, ...], id_vals: Iterable[Any]
    ) -> None:
        """:meth:`invalidate` many values of one field, in one round trip."""
        field, values = normalized_many(self, cls, id_field, id_vals)
        pairs = [self.get_keys(cls, field, value) for value in values]
        self._drive(self._invalidate_keys_flow(pairs))

    @timed("invalidate_lookups", no_model)
    def invalidate_lookups(self, lookups: Iterable[tuple[Any, Any, Any]]) -> None:
        """:meth:`invalidate` any ``(cls, id_field, id_val)`` lookups, in one round trip."""
        self._drive(self._invalidate_keys_flow(lookups_keys(self, lookups)))

    @timed("invalidate_object", object_model)
    def invalidate_object(self, obj: Any, *, previous: Any = None, model: Any = None) -> None:
        """Invalidate every unique lookup of ``obj`` (see :meth:`unique_lookups`), in one round
        trip; with ``previous`` (the object's values before the write), those lookups too, so a
        changed unique field clears both its old and its new entry.

        :param model: what ``get`` is called with for this object (default: ``type(obj)``).
        """
        pairs = object_keys(self, obj, previous, model)
        self._drive(self._invalidate_keys_flow(pairs))

    @timed("invalidate_model")
    def invalidate_model(self, cls: Any, *, settle: bool = True) -> int:
        """Forget every cached entry of a model: after a data migration, or writes that no
        invalidation saw. Each primary is scanned for the model's keys (``SCAN``, in steps of
        ``scan_count``) and each entry's value and lease are deleted, as by :meth:`invalidate`,
        so no lease in flight can commit. With ``settle`` (the default) the model is scanned
        again once every lease taken before the call has expired (``flag_ttl``, so the call
        takes that long at least): ``SCAN`` may miss a key written while it runs, and a reader
        that read the old data before the call may have committed it then. Other processes must
        use the same or a shorter ``flag_ttl``. Returns how many entries were deleted; raises
        :class:`~cachecow.InvalidationFailed` if Redis fails (run it again).
        """
        pattern = self.model_keys_pattern(cls)
        settled = self.clock.monotonic() + settle_seconds(self)
        deleted = self._delete_matching(pattern)
        if settle:
            self._drive(pause(settled - self.clock.monotonic()))
            deleted += self._delete_matching(pattern)
        return deleted

    def _delete_matching(self, pattern: str) -> int:
        """Delete every entry with a key matching ``pattern``, one ``SCAN`` step at a time."""
        found: list[bytes] = []
        deleted = 0
        try:
            for key in self._io.scan(pattern, self.scan_count):
                found.append(key)
                if len(found) >= self.scan_count:
                    deleted += self._delete_entries(found)
                    found = []
        except (RedisError, RedisClusterException) as exc:
            raise scan_failed(pattern, as_redis_error(exc)) from exc
        return deleted + self._delete_entries(found)

    def _delete_entries(self, keys: list[bytes]) -> int:
        pairs = entry_pairs(keys)
        if pairs:
            self._drive(self._invalidate_keys_flow(pairs))
        return len(pairs)

    def _invalidate_pairs(self, pairs: list[tuple[str, str]]) -> None:
        """Delete these ``(value key, flag key)`` pairs in one round trip (the outbox's drain)."""
        self._drive(self._invalidate_keys_flow(pairs))

    def cached(
        self,
        ttl: float | None = None,
        *,
        name: str | None = None,
        serializer: Serializer | None = None,
    ) -> Callable[[Callable[P, R]], Cached[P, R, None, list[R]]]:
        """Cache a function's results, under the same lease as objects (see "Caching function
        results" in docs/usage.md).

        The key is the function's label (``module.qualname``, or ``name``) and its bound
        arguments, typed as lookups are (``f(1)``, ``f(x=1)`` share an entry; ``f("1")`` does
        not); on a method, ``self``/``cls`` is left out. ``None`` and scalars are results like
        any other; exceptions are never cached. The wrapped function gets
        ``invalidate(*args, **kwargs)``: a result computed before it returns is never cached
        after it; and ``many(calls)``: the results of many calls (each a tuple of positional
        arguments), in order, with the hits in one round trip and the misses computed once
        each and committed in one more, under the same lease (the first exception of the
        function is raised, with nothing of the batch's misses cached).

        :param ttl: seconds a result lives (default: the cache's ``ttl``).
        :param name: the label in keys instead of ``module.qualname`` (keep it stable).
        :param serializer: how results become bytes (default: the cache's ``serializer``).
        """
        return decorate(self, _FunctionCache, ttl, name, serializer)

    def _reader(self) -> tuple[Any, Any]:
        """Who reads (for single flight): the current thread, and no event loop."""
        return threading.get_ident(), None

    _loop_warned = False  # whether a call inside a running event loop was warned of

    def _drive(self, flow: Flow) -> Any:
        """Perform each operation a flow yields, until it returns or raises."""
        if not self._loop_warned and asyncio._get_running_loop() is not None:
            warn_in_loop(self)
        result: Any = None
        error: BaseException | None = None
        while True:
            try:
                op = flow.send(result) if error is None else flow.throw(error)
            except StopIteration as stop:
                return stop.value
            result = error = None
            try:
                if isinstance(op, RedisOp):
                    result = self._io.perform(op)
                elif isinstance(op, Fetch):
                    result = refuse_awaitable(self.fetch(op.cls, op.id_field, op.id_val), "fetch")
                elif isinstance(op, FetchMany):
                    found = self.fetch_many(op.cls, op.id_field, op.id_vals)
                    result = refuse_awaitable(found, "fetch_many")
                elif isinstance(op, Sleep):
                    self.clock.sleep(op.seconds)
                elif isinstance(op, Wait):
                    result = op.waiter.wait(op.seconds)
                else:  # TimeBoxed: no bound to put on a sync call, so it runs in full
                    self._drive(op.flow)
            except BaseException as exc:
                result = None
                error = exc if isinstance(op, Fetch | FetchMany) else as_redis_error(exc)


class _FunctionCache(FunctionHooks, CacheCow):
    """The cache of one function decorated by ``CacheCow.cached`` (see ``_cached.py``)."""

    asynchronous = False

    def __init__(
        self,
        parent: CacheCow,
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

    def fetch(self, cls: Any, id_field: Any, id_val: Call) -> Result:
        return self.run(id_val)
