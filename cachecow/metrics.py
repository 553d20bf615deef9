"""Counters kept by every cache instance (in total and per model), latency histograms of the
public calls, and a hook to export the counters. The exporters are in :mod:`cachecow.exporters`."""

from __future__ import annotations

import itertools
import logging
import threading
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, fields

__all__ = ["BUCKETS", "HistogramSnapshot", "Metrics", "MetricsSnapshot"]

BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""The upper bounds (seconds, inclusive) of the latency histograms' buckets; a last bucket,
``+Inf``, takes the rest."""

OPERATIONS: tuple[str, ...] = (
    "get",
    "get_many",
    "peek",
    "invalidate",
    "invalidate_many",
    "invalidate_lookups",
    "invalidate_object",
    "invalidate_model",
)
"""The public calls whose durations are recorded."""

UNATTRIBUTED = ""
"""The model label of counts that belong to no one model (a release that failed after a
cancellation, an invalidation of keys whose model is unknown): model labels are never empty."""


@dataclass(frozen=True)
class MetricsSnapshot:
    """The counters at one moment (see :class:`Metrics` for what each one counts)."""

    hits: int = 0
    tombstone_hits: int = 0
    misses: int = 0
    fetches: int = 0
    leases: int = 0
    commits: int = 0
    stale_commits: int = 0
    busy: int = 0
    waits: int = 0
    wait_timeouts: int = 0
    decode_failures: int = 0
    verify_failures: int = 0
    uncacheable: int = 0
    oversized_values: int = 0
    corrupt_keys: int = 0
    redis_errors: int = 0
    fail_open_fetches: int = 0
    invalidations: int = 0
    joined: int = 0
    near_hits: int = 0
    refreshes: int = 0
    refresh_failures: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict, in declaration order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


COUNTERS: tuple[str, ...] = tuple(f.name for f in fields(MetricsSnapshot))
_NEAR_HIT = ("near_hits", "hits")
_NEAR_TOMBSTONE = ("near_hits", "tombstone_hits")

DESCRIPTIONS: dict[str, str] = {
    "hits": "Gets answered from the cache with an object.",
    "tombstone_hits": "Gets answered from a cached 'not found'.",
    "misses": "Gets whose first look found no usable value (leased or busy).",
    "fetches": "Calls of fetch.",
    "leases": "Leases won.",
    "commits": "Values stored under a lease.",
    "stale_commits": "Commits refused because the lease was voided or had expired.",
    "busy": "Gets that found another reader's lease.",
    "waits": "Busy gets that waited for the holder.",
    "wait_timeouts": "Waits that gave up and fetched without caching.",
    "decode_failures": "Cached values that could not be deserialized (deleted, a miss).",
    "verify_failures": "Cached values that failed verify (deleted, a miss).",
    "uncacheable": "Fetched objects that failed verify, returned but not cached.",
    "oversized_values": "Fetched objects over max_value_bytes, returned but not cached.",
    "corrupt_keys": "Reads that found foreign data under a lookup's keys.",
    "redis_errors": "Redis operations that failed.",
    "fail_open_fetches": "Gets served from fetch because Redis failed and fail_open was on.",
    "invalidations": "Lookups invalidated.",
    "joined": "Gets answered by another get of the same key in this process (single flight).",
    "near_hits": "Hits answered by the near cache in the process (also counted as hits).",
    "refreshes": "Hits near expiry that took the lease to refresh the value (refresh_ahead).",
    "refresh_failures": "Refreshes whose fetch raised: the cached value was returned.",
}
"""One line on each counter, for the exporters' help texts."""


@dataclass(frozen=True)
class HistogramSnapshot:
    """The durations of one operation (on one model) at one moment.

    ``counts[i]`` is how many took at most ``buckets[i]`` seconds and more than the bound
    before it (not cumulative); the last count, one more than there are bounds, is for
    ``+Inf``. ``sum`` is the total of the durations in seconds.
    """

    buckets: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        """How many durations were recorded."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, durations up to it)`` pairs, ending with ``(inf, count)``, as
        Prometheus buckets are."""
        total = 0
        out: list[tuple[float, int]] = []
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


DurationListener = Callable[[str, str, float], None]
"""Called as ``listener(operation, model, seconds)`` after every recorded duration."""

MetricsHook = Callable[[str, int], None]
"""Called as ``hook(counter_name, amount)`` after every increment (for Prometheus, statsd...).

An exception raised by the hook is logged (once per :class:`Metrics`) and otherwise ignored:
exporting a counter must never change what the cache does.
"""

logger = logging.getLogger("cachecow")


class Metrics:
    """Thread-safe counters of one cache instance.

    - ``hits``: gets answered from the cache with an object
    - ``tombstone_hits``: gets answered from a cached "not found"
    - ``misses``: gets whose first look found no usable value (leased or busy); a busy reader
      that then waits and finds the holder's value counts as a miss and a hit
    - ``fetches``: calls of ``fetch``
    - ``leases``: leases won; ``commits``: values stored under a lease
    - ``stale_commits``: commits refused because the lease was voided or had expired
    - ``busy``: gets that found another reader's lease; ``waits``: busy gets that waited for it;
      ``wait_timeouts``: waits that gave up and fetched without caching
    - ``decode_failures`` / ``verify_failures``: cached values that could not be deserialized /
      failed ``verify``; each was deleted and treated as a miss
    - ``uncacheable``: fetched objects that failed ``verify`` and were returned but not cached
    - ``oversized_values``: fetched objects whose serialized bytes exceeded ``max_value_bytes``,
      returned but not cached
    - ``corrupt_keys``: reads that found foreign data under a lookup's keys (a value or flag key
      holding a hash, a list... instead of a string, or a flag without a time to live) and
      removed or repaired it (``peek`` only counts it, as a miss)
    - ``redis_errors``: Redis operations that failed; ``fail_open_fetches``: gets served straight
      from ``fetch`` because Redis failed and ``fail_open`` was on
    - ``invalidations``: lookups invalidated
    - ``joined``: gets answered by another ``get`` of the same key in this process, which they
      joined while it ran (single flight), without a Redis call or a fetch of their own
    - ``near_hits``: hits (and tombstone hits) answered by the near cache, without a Redis call;
      also counted in ``hits`` or ``tombstone_hits``
    - ``refreshes``: hits inside their refresh window (``refresh_ahead``) that took the lease to
      refresh the value; each is also a hit, a lease and a fetch, and ends in a commit (or a
      stale commit) unless its fetch fails
    - ``refresh_failures``: refreshes whose ``fetch`` (or ``serialize``) raised; their readers
      got the cached value

    Each count is also kept per model label (see :meth:`by_model`; counts of no one model under
    ``""``), and the durations of the public calls per operation and model label, in
    histograms of :data:`BUCKETS` (see :meth:`histograms`).
    """

    def __init__(self, hook: MetricsHook | None = None) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._models: dict[str, dict[str, int]] = {}
        # (model, counter names) -> how many times they were counted together, without the lock
        self._unlocked: dict[tuple[str, tuple[str, ...]], itertools.count[int]] = {}
        self._durations: dict[tuple[str, str], list[float]] = {}  # bucket counts, then sum
        self._listeners: list[DurationListener] = []
        self.hook = hook
        self._hook_failed = False
        self._listener_failed = False

    def incr(self, name: str, amount: int = 1, model: str = UNATTRIBUTED, also: str = "") -> None:
        """Add ``amount`` to the counter ``name`` (and to the counter ``also``, if given), in
        total and for ``model`` (a model label), and tell the hook."""
        with self._lock:
            self._counts[name] += amount
            counts = self._models.get(model)
            if counts is None:
                counts = self._models[model] = dict.fromkeys(COUNTERS, 0)
            counts[name] += amount
            if also:
                self._counts[also] += amount
                counts[also] += amount
        hook = self.hook
        if hook is not None:
            self._tell(hook, name, amount)
            if also:
                self._tell(hook, also, amount)

    def near_hit(self, model: str, tombstone: bool = False) -> None:
        """``incr("near_hits", 1, model, also="hits")`` (``"tombstone_hits"`` for a cached "not
        found"), the only bookkeeping of a near hit, without the lock (see :meth:`count`)."""
        self.count(model, _NEAR_TOMBSTONE if tombstone else _NEAR_HIT)

    def count(self, model: str, names: tuple[str, ...]) -> None:
        """Add 1 to each counter of ``names``, in total and for ``model``, and tell the hook;
        for the counts of a hot path (a hit), without the lock: each ``(model, names)`` goes to
        an ``itertools.count``, whose ``next`` is one C call (atomic under the GIL), added to
        the other counts when they are read."""
        counter = self._unlocked.get((model, names))
        if counter is None:
            unknown = [name for name in names if name not in self._counts]
            if unknown:
                raise KeyError(f"no such counter: {unknown}")
            with self._lock:
                counter = self._unlocked.setdefault((model, names), itertools.count())
        next(counter)
        hook = self.hook
        if hook is not None:
            for name in names:
                self._tell(hook, name, 1)

    def _tell(self, hook: MetricsHook, name: str, amount: int) -> None:
        try:
            hook(name, amount)
        except Exception:
            if not self._hook_failed:
                self._hook_failed = True
                logger.exception("the metrics hook raised (logged once; ignored)")

    def observe(self, operation: str, model: str, seconds: float) -> None:
        """Record that a call of ``operation`` on ``model`` (a model label) took ``seconds``."""
        index = bisect_left(BUCKETS, seconds)
        with self._lock:
            row = self._durations.get((operation, model))
            if row is None:
                row = self._durations[(operation, model)] = [0.0] * (len(BUCKETS) + 2)
            row[index] += 1
            row[-1] += seconds
        for listener in self._listeners:
            try:
                listener(operation, model, seconds)
            except Exception:
                if not self._listener_failed:
                    self._listener_failed = True
                    logger.exception("a duration listener raised (logged once; ignored)")

    def add_duration_listener(self, listener: DurationListener) -> None:
        """Call ``listener(operation, model, seconds)`` after each recorded duration (for an
        exporter that records them itself, as OpenTelemetry histograms do)."""
        self._listeners = [*self._listeners, listener]

    def remove_duration_listener(self, listener: DurationListener) -> None:
        """Stop calling ``listener``."""
        self._listeners = [each for each in self._listeners if each is not listener]

    def snapshot(self) -> MetricsSnapshot:
        """A consistent copy of every counter (the totals over all models)."""
        with self._lock:
            return MetricsSnapshot(**self._merged()[0])

    def by_model(self) -> dict[str, MetricsSnapshot]:
        """The counters of each model label seen so far (``""``: counts of no one model); they
        add up to :meth:`snapshot`."""
        with self._lock:
            return {model: MetricsSnapshot(**counts) for model, counts in self._merged()[1].items()}

    def _merged(self) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        """The totals and the counts per model, the unlocked ones included (the lock held)."""
        totals = dict(self._counts)
        models = {model: dict(counts) for model, counts in self._models.items()}
        for (model, names), counter in self._unlocked.items():
            times = int(repr(counter)[len("count(") : -1])  # how far it has counted
            counts = models.setdefault(model, dict.fromkeys(COUNTERS, 0))
            for name in names:
                totals[name] += times
                counts[name] += times
        return totals, models

    def histograms(self) -> dict[tuple[str, str], HistogramSnapshot]:
        """The durations recorded so far, by ``(operation, model label)``."""
        with self._lock:
            rows = {key: list(row) for key, row in self._durations.items()}
        return {
            key: HistogramSnapshot(BUCKETS, tuple(int(n) for n in row[:-1]), row[-1])
            for key, row in rows.items()
        }

    def reset(self) -> None:
        """Set every counter back to zero and forget every duration."""
        with self._lock:
            self._counts = dict.fromkeys(COUNTERS, 0)
            self._models = {}
            self._unlocked = {}
            self._durations = {}
