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

A commit's value is kept too (:meth:`NearCache.keep` with ``committed``), though the commit's own
write sends a message for its key. The ticket is taken before the commit is sent; Redis sends
the messages of a key in the order it ran its writes, on one connection. So the first message
heard for the key after the ticket is the commit's own or one of a write before the commit
(delayed), never one of a write after it. If none came yet, the value is stored and that first
one is let through; if exactly one came, and no drop of this process's own (an invalidation),
the value is stored and nothing is let through (if that one was an earlier write's, the
commit's own, yet to come, drops it: an entry lost, nothing stale kept); otherwise it is not
stored. A drop of this process's own is never let through. (On a cluster, while the key's slot
moves, its messages come from two nodes, in order per node only: a write on the new node let
through lives until the commit's own message from the old node comes, a delivery delay.)

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
    "committed_object",
    "get_near",
    "hit_near",
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
        *,
        shared: bool = False,
    ) -> None:
        self.max_bytes = max_bytes
        self.shared = shared  # whether an entry is the decoded object every hit gets
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
        self._earlier: dict[str, int] = {}  # key -> the number of the drop before its last
        self._ours: dict[str, int] = {}  # key -> the number of its last drop of this process's
        self._own: set[str] = set()  # keys kept from a commit, whose own message is yet to come
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
        self,
        key: str,
        ticket: int | None,
        data: bytes,
        label: str,
        obj: Any = None,
        *,
        committed: bool = False,
    ) -> bool:
        """Store ``data`` (if :attr:`shared`, ``obj``, what it decodes to, counted by
        ``data``'s size) read under ``ticket``, unless ``key`` was dropped (or the channel
        lost) since the ticket was taken; whether it was stored. ``committed``: ``data`` is what
        this process just committed, the ticket taken before the commit was sent, and the next
        message heard for ``key`` is the commit's own (see the module's docstring)."""
        if ticket is None:
            return False
        size = len(data) * (SHARED_FACTOR if self.shared else 1) + len(key) + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return False
        with self._lock:
            if not self.live or ticket < self._floor:
                return False
            absorb = committed
            if self._dropped.get(key, -1) > ticket:
                # A read is refused. A commit may still be kept if the one message since its
                # ticket was heard from Redis (none of this process's own drops): that was
                # its own write's message, or one of a write before it (then its own, yet to
                # come, drops it). Nothing is let through any more.
                if not committed or self._earlier.get(key, -1) > ticket:
                    return False
                if self._ours.get(key, -1) > ticket:
                    return False
                absorb = False
            old = self.entries.pop(key, None)
            if old is not None:
                self.size -= old[3]
            if absorb:
                self._own.add(key)
            else:
                self._own.discard(key)
            kept = obj if self.shared else data
            self.entries[key] = (kept, self.clock() + self.ttl, label, size)
            self.size += size
            while self.size > self.max_bytes:
                evicted, entry = self.entries.popitem(last=False)
                self.size -= entry[3]
                self._own.discard(evicted)
        return True

    def drop(self, keys: Iterable[str], *, heard: bool = False) -> list[str]:
        """Forget ``keys`` and void every ticket taken before now for them. ``heard``: the
        keys of a message from Redis, where a kept commit's own message lets its entry be;
        returns the keys whose entries it let be."""
        let_be = []
        with self._lock:
            self._seq += 1
            seq = self._seq
            own = self._own
            dropped, earlier = self._dropped, self._earlier
            for key in keys:
                last = dropped.get(key)
                if last is not None:
                    earlier[key] = last
                dropped[key] = seq
                if not heard:
                    self._ours[key] = seq
                if key in own:
                    own.discard(key)
                    if heard:
                        let_be.append(key)  # the commit's own write, or one before it (above)
                        continue
                old = self.entries.pop(key, None)
                if old is not None:
                    self.size -= old[3]
            if len(self._dropped) > _MAX_DROPPED:
                self._void()
        return let_be

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
        self._own.clear()
        self.size = 0
        self._void()

    def _void(self) -> None:
        self._seq += 1
        self._floor = self._seq
        self._dropped.clear()
        self._earlier.clear()
        self._ours.clear()


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
    near = NearCache(
        options.near_bytes, options.near_ttl, options.near_models, shared=options.near_shared
    )
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


def hit_near(cache: Cache, cls: Any, id_field: Any, id_val: Any) -> Any:
    """A ``get``'s object from the near cache, ``_UNUSABLE`` if it holds none (raises the
    not-found exception for a cached "not found", and for a bad lookup)."""
    lookup, keys = keyed(cache, cls, id_field, id_val)
    return get_near(cache, lookup, keys[0])


def committed_object(cache: Cache, cls: Any, data: bytes) -> Any:
    """What a near cache keeps of a commit's ``data`` besides the bytes: with ``near_shared``,
    an object decoded from them afresh (the fetched one is the caller's, who may change it),
    ``_TOMB`` for "not found", or ``_UNUSABLE`` if they do not decode (not kept: the next read,
    a Redis hit, counts the failure); else ``None``."""
    if not cache.options.near_shared:
        return None
    if data == TOMBSTONE:
        return _TOMB
    try:
        return cache.deserialize(cls, data)
    except Exception:
        return _UNUSABLE
