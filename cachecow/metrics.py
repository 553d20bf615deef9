"""Counters kept by every cache instance, and a hook to export them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields

__all__ = ["Metrics", "MetricsSnapshot"]


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

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict, in declaration order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


COUNTERS: tuple[str, ...] = tuple(f.name for f in fields(MetricsSnapshot))

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
    """

    def __init__(self, hook: MetricsHook | None = None) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTERS, 0)
        self.hook = hook
        self._hook_failed = False

    def incr(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to the counter ``name`` and tell the hook."""
        with self._lock:
            self._counts[name] += amount
        if self.hook is not None:
            try:
                self.hook(name, amount)
            except Exception:
                if not self._hook_failed:
                    self._hook_failed = True
                    logger.exception("the metrics hook raised (logged once; ignored)")

    def snapshot(self) -> MetricsSnapshot:
        """A consistent copy of every counter."""
        with self._lock:
            return MetricsSnapshot(**self._counts)

    def reset(self) -> None:
        """Set every counter back to zero."""
        with self._lock:
            self._counts = dict.fromkeys(COUNTERS, 0)
