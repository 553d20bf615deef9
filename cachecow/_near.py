"""The near cache: a process's own copy of the entries it reads most, kept honest by Redis's
invalidation messages (docs/near-cache.md).

A :class:`NearCache` holds the bytes of cached entries by value key, bounded in bytes (least
recently used out first) and in age (``near_ttl``). Its channel (``_tracking.py``) keeps a
connection to Redis with ``CLIENT TRACKING on BCAST PREFIX <model prefixes>`` (one per node of
a cluster): every write of a key under those prefixes, by any client, sends the key here, and
the entry is dropped.

The race this module closes: a reader's Redis reply and the invalidation of the same key travel
on two connections, so the message can be handled *before* the reply it voids is stored. Every
drop takes a new sequence number and remembers it per key; a reader takes a ticket (the current
number) before it sends its request, and :meth:`NearCache.keep` stores the reply only if no
drop of that key, and no loss of the channel, came after the ticket. A drop after the store
removes the entry. So an entry outlives an invalidation only by the message's delivery delay.

While the channel is down (not yet set up, a dropped connection, no answer to a ``PING``) the
near cache holds nothing and stores nothing: tickets are ``None``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ._lookups import keyed
from ._ops import _TOMB, _UNUSABLE, TOMBSTONE
from .exceptions import ConfigurationError
from .keys import Field, model_prefix

if TYPE_CHECKING:
    from ._protocol import CacheCowBase
    from ._tracking import ClusterTracking, Tracker

    Cache = CacheCowBase[Any]

__all__ = [
    "ENTRY_OVERHEAD",
    "SHARED_FACTOR",
    "NearCache",
    "get_near",
    "hit_near",
    "keep_near",
    "near_cache_for",
    "read_near",
]

ENTRY_OVERHEAD = 300
"""Bytes counted per entry besides its key and value (the dict slot, the tuple, the objects'
headers), so a cache of many small entries is bounded too. Measured with tracemalloc for the
benchmark's 400-byte rows: 276 to 302 bytes (``benchmarks/near.py``)."""

SHARED_FACTOR = 4
"""Bytes counted per serialized byte for an entry that keeps a decoded object (``near_shared``)
instead of bytes: a decoded object is larger than its bytes, and walking it to measure it would
cost more than the hit it serves. Measured for the benchmark's rows (a dict of 11 fields, 400
bytes serialized): 2,060 to 2,080 bytes held per entry, counted 4 x 400 + key + 300 = 1,960."""

_MAX_DROPPED = 100_000
"""Keys whose last drop a near cache remembers; past it, every ticket out is voided instead."""


class NearCache:
    """Entries by value key, and the sequence of drops that voids a reader's store.

    Thread-safe: the tracker's thread drops while readers (threads, or an event loop) read and
    store. ``get`` takes no lock (a dict read is atomic); ``keep`` and the drops do.
    """

    def __init__(
        self,
        max_bytes: int,
        ttl: float,
        labels: frozenset[str] | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.labels = labels  # the models whose entries it keeps (None: every model)
        self.clock = clock
        # key -> (what a hit decodes: the bytes, or a shared object; expiry; model label; size)
        self.entries: OrderedDict[str, tuple[Any, float, str, int]] = OrderedDict()
        self.size = 0  # bytes counted for the entries
        self._lock = threading.Lock()
        self._seq = 0  # drops so far
        self._floor = 0  # tickets below it are void
        self._dropped: dict[str, int] = {}  # key -> the number of its last drop
        self.live = False  # whether the invalidation channel is up
        self.tracker: Tracker | ClusterTracking | None = None
        self.start: Callable[[], None] | None = None  # starts a tracker (set by the cache)

    def get(self, key: str) -> tuple[Any, str] | None:
        """What is cached near for ``key`` (its bytes, or the object shared by every hit) and
        its model's label, or ``None``."""
        entry = self.entries.get(key)
        if entry is None:
            if self.tracker is None and self.start is not None:
                self.start()
            return None
        if entry[1] <= self.clock():  # older than near_ttl
            self.drop((key,))
            return None
        try:
            self.entries.move_to_end(key)
        except KeyError:  # dropped meanwhile
            pass
        return entry[0], entry[2]

    def accepts(self, label: str) -> bool:
        """Whether this near cache keeps entries of the model ``label``."""
        return self.labels is None or label in self.labels

    def ticket(self) -> int | None:
        """Taken before a read is sent: what :meth:`keep` checks (``None``: store nothing)."""
        return self._seq if self.live else None

    def keep(
        self, key: str, ticket: int | None, data: bytes, label: str, payload: Any = None
    ) -> bool:
        """Store ``data`` (or ``payload``, what to hand out instead, counted as ``data``'s
        size) read under ``ticket``, unless ``key`` was dropped (or the channel lost) since
        the ticket was taken; whether it was stored."""
        if ticket is None:
            return False
        size = len(data) * (1 if payload is None else SHARED_FACTOR) + len(key) + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return False
        with self._lock:
            if not self.live or ticket < self._floor or self._dropped.get(key, -1) > ticket:
                return False
            old = self.entries.pop(key, None)
            if old is not None:
                self.size -= old[3]
            kept = data if payload is None else payload
            self.entries[key] = (kept, self.clock() + self.ttl, label, size)
            self.size += size
            while self.size > self.max_bytes:
                self.size -= self.entries.popitem(last=False)[1][3]
        return True

    def drop(self, keys: Iterable[str]) -> None:
        """Forget ``keys`` and void every ticket taken before now for them."""
        with self._lock:
            self._seq += 1
            seq = self._seq
            for key in keys:
                self._dropped[key] = seq
                old = self.entries.pop(key, None)
                if old is not None:
                    self.size -= old[3]
            if len(self._dropped) > _MAX_DROPPED:
                self._void()

    def close(self) -> None:
        """Stop the channel for good (nothing is kept from now on)."""
        self.start = None
        if self.tracker is not None:
            self.tracker.stop()
        self.set_live(False)

    def clear(self) -> None:
        """Forget every entry and void every ticket (a flush of the database)."""
        with self._lock:
            self._clear()

    def set_live(self, live: bool) -> None:
        """The channel is up (entries may be stored from now on) or lost (nothing is kept)."""
        with self._lock:
            self.live = live
            self._clear()

    def _clear(self) -> None:
        self.entries.clear()
        self.size = 0
        self._void()

    def _void(self) -> None:
        self._seq += 1
        self._floor = self._seq
        self._dropped.clear()


# -- a cache's reads of its near cache ----------------------------------------------------------


def near_cache_for(cache: Cache, redis: Any) -> NearCache:
    """The near cache ``cache``'s options ask for, its channel not yet started (the first read
    starts it). Raises :class:`~cachecow.ConfigurationError` for keys or a client it cannot
    track."""
    from ._tracking import start_tracking

    options = cache.options
    if not cache._default_keys:
        raise ConfigurationError(
            f"{type(cache).__qualname__} overrides get_keys(): the near cache needs the "
            "default keys (its invalidations are tracked by key prefix)"
        )
    near = NearCache(options.near_bytes, options.near_ttl, options.near_models)
    models = options.near_models
    prefixes = [cache.prefix] if models is None else [model_prefix(cache.prefix, m) for m in models]
    near.start = start_tracking(near, redis, prefixes)
    return near


def read_near(cache: Cache, lookup: tuple[Any, Field, Any], value_key: str) -> Any:
    """A lookup's object from ``cache``'s near cache, ``_TOMB`` for a cached "not found", or
    ``_UNUSABLE`` when it holds nothing for the lookup."""
    found = cache._near.get(value_key) if cache._near is not None else None
    if found is None:
        return _UNUSABLE
    payload, label = found
    if cache.options.near_shared:
        obj = payload  # the object every hit shares (or _TOMB)
    else:
        obj = _TOMB if payload == TOMBSTONE else cache.deserialize(lookup[0], payload)
    cache.metrics.near_hit(label, tombstone=obj is _TOMB)
    return obj


def get_near(cache: Cache, lookup: tuple[Any, Field, Any], value_key: str) -> Any:
    """As :func:`read_near`, raising the not-found exception for a cached "not found"."""
    obj = read_near(cache, lookup, value_key)
    if obj is _TOMB:
        raise cache.not_found(*lookup)
    return obj


def hit_near(cache: Cache, near: NearCache, cls: Any, id_field: Any, id_val: Any) -> Any:
    """A ``get``'s object from the near cache, ``_UNUSABLE`` if it holds none (raises the
    not-found exception for a cached "not found", and for a bad lookup). The path of every near
    hit, so it is :func:`get_near` unrolled."""
    lookup, keys = keyed(cache, cls, id_field, id_val)
    found = near.get(keys[0])
    if found is None:
        return _UNUSABLE
    payload, label = found
    if cache.options.near_shared:
        obj = payload
    else:
        obj = _TOMB if payload == TOMBSTONE else cache.deserialize(cls, payload)
    if obj is _TOMB:
        cache.metrics.near_hit(label, tombstone=True)
        raise cache.not_found(*lookup)
    cache.metrics.near_hit(label)
    return obj


def keep_near(
    cache: Cache, near: NearCache, key: str, ticket: int | None, data: bytes, obj: Any, label: str
) -> None:
    """Keep a read's ``data`` (decoded into ``obj``, maybe ``_TOMB``) in the near cache."""
    near.keep(key, ticket, data, label, obj if cache.options.near_shared else None)
