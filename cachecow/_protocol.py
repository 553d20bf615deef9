"""The base of both cache classes: options, hooks, and the steps the flows share.

The protocol is free of I/O. A read or an invalidation is a generator (a *flow*) that yields the
I/O it needs as small operations (``_ops.py``) and is sent their results, or has their
exceptions thrown into it: ``_single.py`` holds ``get`` and ``peek``, ``_batch.py``
``get_many``, ``_invalidation.py`` the invalidations, ``_flights.py`` single flight. A client
class only *drives* flows: the synchronous :class:`cachecow.CacheCow` performs each operation
with redis-py and plain calls, and its asyncio twin performs the same operations with
``await``, without a second copy of the logic.

Here: the options and their checks, the hooks a subclass overrides, the normalisation of
lookups, the failure policy (``fail_open``, rate-limited logging), the steps every flow shares
(reading a hit, preparing a commit, the backoff of a wait).
"""

from __future__ import annotations

import inspect
import logging
import random
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from redis.crc import key_slot

from ._clock import AsyncClock, Clock, SystemClock, backoff_delay
from ._flights import Flight, Flights
from ._invalidation import invalidate
from ._lookups import Lookup
from ._near import near_cache_for
from ._ops import Flow
from ._options import BusyName, BusyPolicy, Options, labels, positive
from ._single import SingleRead, peek
from .exceptions import (
    ConfigurationError,
    NotFound,
)
from .keys import (
    Field,
    build_keys,
    memo_key,
    model_label,
    model_prefix,
    same_value,
    validate_prefix,
)
from .metrics import Metrics, MetricsHook
from .serializers import JsonSerializer, Serializer

__all__ = ["AsyncClock", "BusyPolicy", "CacheCowBase", "Clock", "SystemClock"]

logger = logging.getLogger("cachecow")

_MISSING = object()


def refuse_awaitable(result: Any, hook: str) -> Any:
    """``result``, unless a hook of a synchronous cache returned an awaitable (an ``async def``)."""
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()
        raise TypeError(
            f"{hook}() returned an awaitable: use cachecow.AsyncCacheCow for async hooks"
        )
    return result


# ---------------------------------------------------------------------------------------------


ClientT = TypeVar("ClientT")


class CacheCowBase(Generic[ClientT]):
    """Configuration, hooks, counters and the protocol's flows, shared by the client classes.

    Subclass :class:`cachecow.CacheCow` (or its asyncio twin), not this class. The options are
    documented on :class:`cachecow.CacheCow`.
    """

    #: How many lookups' keys an instance remembers (hot keys are hashed once, not per read).
    #: Only small plain values are remembered (see :func:`cachecow.keys.memo_key`), so the memo
    #: never keeps a large lookup value alive.
    key_memo_size: int = 8192

    #: What a get that joined another's waits on (see _flights.py).
    _waiter: Callable[[], Any] = threading.Event

    #: How many keys each SCAN step of :meth:`invalidate_model` asks a node for.
    scan_count: int = 1000

    #: How long the first poll of a waiting reader waits, and the most any poll waits.
    wait_first_delay: float = 0.002
    wait_max_delay: float = 0.05

    def __init__(
        self,
        redis: ClientT,
        *,
        ttl: float = 3600.0,
        ttl_jitter: float = 0.1,
        flag_ttl: float = 10.0,
        tombstone_ttl: float = 30.0,
        max_value_bytes: int | None = 1_048_576,
        busy: BusyPolicy | BusyName = BusyPolicy.WAIT,
        wait_timeout: float = 1.0,
        fail_open: bool = False,
        fail_open_log_interval: float = 60.0,
        wait_replicas: int = 0,
        wait_replicas_timeout: float = 0.1,
        serializer: Serializer | None = None,
        prefix: str = "cachecow:",
        clock: Clock | None = None,
        metrics_hook: MetricsHook | None = None,
        ttls: Mapping[Any, float] | None = None,
        near_bytes: int = 0,
        near_ttl: float = 30.0,
        near_models: Iterable[Any] | None = None,
        near_shared: bool = False,
        refresh_ahead: float = 0.0,
    ) -> None:
        self.options = Options(
            ttl=ttl,
            ttl_jitter=ttl_jitter,
            flag_ttl=flag_ttl,
            tombstone_ttl=tombstone_ttl,
            max_value_bytes=max_value_bytes,
            busy=busy,
            wait_timeout=wait_timeout,
            fail_open=fail_open,
            fail_open_log_interval=fail_open_log_interval,
            wait_replicas=wait_replicas,
            wait_replicas_timeout=wait_replicas_timeout,
            ttls=ttls or {},
            near_bytes=near_bytes,
            near_ttl=near_ttl,
            near_models=labels("near_models", near_models),
            near_shared=near_shared,
            refresh_ahead=refresh_ahead,
        )
        self.serializer: Serializer = JsonSerializer() if serializer is None else serializer
        if not isinstance(self.serializer, Serializer):
            raise ConfigurationError(
                f"serializer must have dumps(obj) -> bytes and loads(bytes), got {serializer!r}"
            )
        self.prefix = validate_prefix(prefix)
        self.clock: Clock = SystemClock() if clock is None else clock
        if not isinstance(self.clock, Clock):
            raise ConfigurationError(f"clock must have monotonic() and sleep(), got {clock!r}")
        self.metrics = Metrics(metrics_hook)
        self._group_by_slot = False  # set by a client class for Redis Cluster clients
        self._key_memo: dict[tuple[Any, ...], tuple[str, str]] = {}
        self._lookup_memo: dict[tuple[Any, ...], tuple[Lookup, tuple[str, str]]] = {}
        self._bind_client(redis)
        self.redis: ClientT = redis
        self._random = random.Random()
        self._last_error_log: float | None = None  # when fail_open last logged (_failures.py)
        self._warned: set[tuple[str, str, Field]] = set()  # not cached: logged (_entries.py)
        self._flights = Flights(self._waiter)  # the gets in flight (see _flights.py)
        self._default_keys = type(self).get_keys is CacheCowBase.get_keys
        self._near = near_cache_for(self, redis) if self.options.near_bytes else None
        self._hit_scores: dict[str, int] = {}  # model label -> hit score (_expects_hit)

    # -- reads that expect a hit --------------------------------------------------------------

    #: A model's reads go by a plain ``GET`` (``MGET``) first, the lease call only for what
    #: that misses, once its hit score reaches this: each hit adds 1 (up to twice this), each
    #: miss takes off 8, so from a hit ratio of about 8/9 on. A hit then costs what a ``GET``
    #: does; a miss one round trip more.
    plain_reads_from: int = 16

    def _expects_hit(self, label: str) -> bool:
        """Whether a read of model ``label`` goes by a plain ``GET`` first (never with
        ``refresh_ahead``: only the lease call sees a hit's remaining TTL)."""
        return (
            self._hit_scores.get(label, 0) >= self.plain_reads_from
            and not self.options.refresh_ahead
        )

    def _scored(self, label: str, *, hit: bool, times: int = 1) -> None:
        """Count ``times`` reads of model ``label`` in its hit score (unlocked: a lost update
        only shifts a heuristic)."""
        score = self._hit_scores.get(label, 0)
        cap = 2 * self.plain_reads_from
        if times <= 0 or (hit and score >= cap):
            return
        self._hit_scores[label] = min(score + times, cap) if hit else max(score - 8 * times, 0)

    def close(self) -> None:
        """Stop the near cache's tracker thread, if any (the Redis client stays open)."""
        if self._near is not None:
            self._near.close()

    def _bind_client(self, redis: ClientT) -> None:
        """Set up how this class performs Redis calls on ``redis`` (each client class does),
        refusing a client it cannot drive."""

    # -- hooks ----------------------------------------------------------------------------------

    def get_keys(self, cls: Any, id_field: Field, id_val: Any) -> tuple[str, str]:
        """Return ``(value_key, flag_key)`` for a lookup.

        The default is ``<prefix><model label>:<fields>:{<xxh3-128 of the typed lookup>}`` and
        the same with ``:lease`` appended (see :mod:`cachecow.keys`). An override must give
        both keys one Redis Cluster hash tag, and distinct lookups distinct keys.
        """
        memo = memo_key(cls, id_field, id_val)
        if memo is not None:
            try:
                keys = self._key_memo.get(memo)
            except TypeError:  # an unhashable model
                memo = None
            else:
                if keys is not None:
                    return keys
        keys = build_keys(self.prefix, self.model_label(cls), id_field, id_val)
        if memo is not None:
            if len(self._key_memo) >= self.key_memo_size:
                self._key_memo.clear()
            self._key_memo[memo] = keys
        return keys

    def model_label(self, cls: Any) -> str:
        """The model's name in keys: ``module.QualName`` (a string ``cls`` is used as it is)."""
        return model_label(cls)

    def fetch(self, cls: Any, id_field: Field, id_val: Any) -> Any:
        """Load the object from the database (required).

        Read committed data, in a transaction of its own that starts now. Raise
        :class:`~cachecow.NotFound` (or return ``None``) when there is no such object. Any other
        exception reaches the caller of ``get`` unchanged, and the lease is released.
        """
        raise NotImplementedError(f"{type(self).__qualname__} must implement fetch()")

    def fetch_many(
        self, cls: Any, id_field: Field, id_vals: Sequence[Any]
    ) -> Mapping[Any, Any] | Awaitable[Mapping[Any, Any]]:
        """Load many objects at once, for :meth:`get_many`; return them by lookup value.

        A value left out of the mapping (or mapped to ``None``) has no object. The default calls
        :meth:`fetch` for each value; adapters override it with one query (``WHERE id IN ...``).
        The same rules as for ``fetch`` apply: committed data, in a fresh transaction.
        """
        found: dict[Any, Any] = {}
        for id_val in id_vals:
            try:
                obj = refuse_awaitable(self.fetch(cls, id_field, id_val), "fetch")
            except NotFound:
                continue
            if obj is not None:
                found[id_val] = obj
        return found

    def unique_lookups(self, obj: Any) -> Iterable[tuple[Field, Any]]:
        """Every ``(field, value)`` lookup that can reach ``obj``, for :meth:`invalidate_object`.

        Adapters implement it: the primary key, every unique field and every multi-field unique
        constraint (as a tuple of fields with a tuple of values).
        """
        raise NotImplementedError(
            f"{type(self).__qualname__} must implement unique_lookups() for invalidate_object()"
        )

    def serialize(self, obj: Any) -> bytes:
        """Turn a fetched object into the bytes to cache; by default ``serializer.dumps``."""
        return self.serializer.dumps(obj)

    def deserialize(self, cls: Any, data: bytes) -> Any:
        """Turn cached bytes back into an object; by default ``serializer.loads``.

        Raising anything makes the value a miss: it is deleted, counted and fetched again.
        """
        return self.serializer.loads(data)

    def verify(self, cls: Any, id_field: Field, id_val: Any, obj: Any) -> bool:
        """Whether ``obj`` is the object the lookup asked for.

        The default reads the field(s) from ``obj`` (an attribute, or a key of a mapping) and
        compares them with the lookup's value by their typed key encoding, so ``5`` matches
        ``5`` but not ``"5"`` or ``5.0``. It runs on every cached object before it is returned
        (a mismatch is a miss) and on every fetched object before it is cached (a mismatch is
        returned but not cached), so a cached entry is always reachable from the object's own
        values, which is what write hooks invalidate.
        """
        is_mapping = type(obj) is dict or isinstance(obj, Mapping)
        if not isinstance(id_field, tuple):  # one field: the common case, without a loop
            actual = obj.get(id_field, _MISSING) if is_mapping else getattr(obj, id_field, _MISSING)
            return actual is not _MISSING and same_value(actual, id_val)
        for name, expected in zip(id_field, id_val, strict=True):
            actual = obj.get(name, _MISSING) if is_mapping else getattr(obj, name, _MISSING)
            if actual is _MISSING or not same_value(actual, expected):
                return False
        return True

    def check_lookup(self, cls: Any, id_field: Field) -> None:
        """Refuse a lookup this cache must not serve, with :class:`~cachecow.InvalidLookup`.

        Called with the canonical field (composite fields sorted) by every public method
        before it touches Redis. The default accepts every lookup; adapters accept only the
        unique ones (a non-unique lookup has no one object to cache).
        """

    def coerce_lookup(self, cls: Any, id_field: Field, id_val: Any) -> Any:
        """Convert a (canonical) lookup value to its field's own type; the default keeps it.

        Adapters convert with their ORM's field (``"5"`` to ``5`` for an integer key), so a value
        given in another type reaches the same entry as the object's own, and so does its
        invalidation (a "not found" cached under ``"5"`` would otherwise outlive the insert
        of row 5 until its TTL).
        """
        return id_val

    def not_found(self, cls: Any, id_field: Field, id_val: Any) -> BaseException:
        """The exception ``get`` raises when there is no such object (fresh or cached answer).

        Adapters return their ORM's exception (``Model.DoesNotExist``) here.
        """
        return NotFound(cls, id_field, id_val)

    def model_keys_pattern(self, cls: Any) -> str:
        """The ``SCAN`` pattern of every key of a model, for :meth:`invalidate_model`: the
        default keys' ``<prefix><model label>:*``. A subclass that overrides :meth:`get_keys`
        must override this too (its keys and their leases, ``<value key>:lease``)."""
        if (
            not self._default_keys
            and type(self).model_keys_pattern is CacheCowBase.model_keys_pattern
        ):
            raise ConfigurationError(
                f"{type(self).__qualname__} overrides get_keys(): override model_keys_pattern() "
                "too for invalidate_model()"
            )
        return _glob_escape(model_prefix(self.prefix, self.model_label(cls))) + "*"

    # -- flows: shared steps --------------------------------------------------------------------

    def _wait_step(self, deadline: float, attempt: int) -> float:
        """How long a busy reader sleeps before poll ``attempt``; 0 when its wait is over."""
        remaining = deadline - self.clock.monotonic()
        if remaining <= 0:
            return 0.0
        delay = backoff_delay(
            attempt, self._random.random(), first=self.wait_first_delay, cap=self.wait_max_delay
        )
        return min(delay, remaining)

    # -- single flight (see _flights.py) ---------------------------------------------------------

    @property
    def _fetches_when_busy(self) -> bool:
        """Whether a reader that finds another's lease fetches at once (without caching)."""
        return self.options.busy is BusyPolicy.FETCH or self.options.wait_timeout <= 0

    @property
    def _joins(self) -> bool:
        """Whether a get may join the one in flight: only a reader that may wait for another
        (busy "wait"), and for ``wait_timeout`` at most."""
        return self.options.busy is BusyPolicy.WAIT and self.options.wait_timeout > 0

    def _fetch_uncached(self, lookup: tuple[Any, Field, Any], flight: Flight | None = None) -> Flow:
        """A (normalized) lookup's object from ``fetch``, caching nothing."""
        return SingleRead(self, lookup, None, flight).fetch_uncached()

    def _checked_ttl(self, ttl: float | None) -> float | None:
        """A call's own ``ttl``: ``None``, or a checked number of seconds."""
        return None if ttl is None else positive("ttl", ttl)

    def _ttl(self, cls: Any, ttl: float | None) -> float:
        """The TTL a call's values are cached for: its own ``ttl`` (checked by the public call),
        else the model's (``ttls``), else the cache's."""
        if ttl is not None:
            return ttl
        options = self.options
        return options.ttl_of(self.model_label(cls)) if options.ttls else options.ttl

    # -- flows ----------------------------------------------------------------------------------

    def _get_flow(
        self,
        lookup: tuple[Any, Field, Any],
        keys: tuple[str, str] | None = None,
        ttl: float | None = None,
    ) -> Flow:
        """Read a (normalized) lookup, caching for ``ttl`` seconds (see ``_single.py``)."""
        return SingleRead(self, lookup, keys, ttl=ttl).read()

    def _peek_flow(self, cls: Any, id_field: Field, id_val: Any) -> Flow:
        """Read a (normalized) lookup from the cache only (see ``_single.py``)."""
        return peek(self, (cls, id_field, id_val))

    # -- flows: many lookups of one field -------------------------------------------------------

    def _slot_groups(self, value_keys: list[str]) -> list[list[str]]:
        """The keys grouped by Redis Cluster slot (one group unless the client is a cluster)."""
        if not self._group_by_slot:
            return [value_keys]
        groups: dict[int, list[str]] = {}
        for value_key in value_keys:
            groups.setdefault(key_slot(value_key.encode()), []).append(value_key)
        return list(groups.values())

    # -- flows: invalidation --------------------------------------------------------------------

    def _invalidate_flow(self, cls: Any, id_field: Field, id_val: Any) -> Flow:
        """Delete a (normalized) lookup's value and flag (see ``_invalidation.py``)."""
        return invalidate(self, [self.get_keys(cls, id_field, id_val)])

    def _invalidate_keys_flow(self, pairs: list[tuple[str, str]]) -> Flow:
        """Delete many lookups' keys in one round trip (see ``_invalidation.py``)."""
        return invalidate(self, pairs)


def _glob_escape(text: str) -> str:
    """``text`` matched literally in a Redis glob pattern."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def entry_pairs(keys: Iterable[bytes | str]) -> list[tuple[str, str]]:
    """The ``(value key, flag key)`` pair of each entry that ``keys`` (value keys or flag keys,
    as a SCAN finds them) belong to, each once."""
    pairs: dict[str, str] = {}
    for raw in keys:
        key = raw.decode() if isinstance(raw, bytes) else raw
        value_key = key[: -len(":lease")] if key.endswith(":lease") else key
        pairs[value_key] = value_key + ":lease"
    return list(pairs.items())
