"""Single reads: ``get``'s flow (docs/protocol.md) and ``peek``'s.

A :class:`SingleRead` is one call's read of one lookup: a ``get_or_lease`` call answers with the
cached bytes, or grants this reader the lease (a fresh token), or says another reader holds it;
a leaseholder fetches and commits under its token, a busy reader polls with backoff for the
holder's value, then fetches without caching. Every lease this reader may hold is given back on
any failure that left it (see :func:`cachecow._ops.release_on_failure`).

With ``refresh_ahead``, a hit inside its refresh window may come with the lease too: that
reader refreshes the value (fetches and commits under the lease, as after a miss) and returns
the fresh object; its followers in the process get the cached one at once.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from ._entries import decoded, encoded, fetched
from ._failures import redis_failed
from ._flights import Flight, cover, land
from ._near import committed_object, get_near
from ._ops import (
    _BUSY,
    _BUSY_REPAIRED,
    _LEASED,
    _LEASED_REPAIRED,
    _TOMB,
    _UNUSABLE,
    Command,
    Fetch,
    Flow,
    Script,
    Sleep,
    _timed_out,
    _wrong_type,
    new_token,
    refreshed,
    release_after,
    release_on_failure,
)
from ._telemetry import decision
from .exceptions import CacheUnavailable, NotFound
from .keys import Field

if TYPE_CHECKING:
    from ._protocol import CacheCowBase

    Cache = CacheCowBase[Any]

logger = logging.getLogger("cachecow")


class SingleRead:
    """One ``get`` of one (normalized) lookup, whose ``keys`` the caller may have built
    already; the leader of a ``flight`` marks, before each lease call and fetch, the followers
    that may take its result (see ``_flights.py``)."""

    def __init__(
        self,
        cache: Cache,
        lookup: tuple[Any, Field, Any],
        keys: tuple[str, str] | None = None,
        flight: Flight | None = None,
        ttl: float | None = None,
    ) -> None:
        self.cache = cache
        self.lookup = lookup  # (cls, id_field, id_val)
        self.ttl = ttl  # this call's own TTL for its value, if it has one
        self.keys = cache.get_keys(*lookup) if keys is None else keys
        self.model = cache.model_label(lookup[0])
        near = cache._near
        self.near = near if near is not None and near.accepts(self.model) else None
        self.flight = flight
        self.token = ""  # drawn when the read first asks for the lease (a plain hit never does)
        self.deadline: float | None = None  # of the wait for another reader's lease
        self.attempt = 0  # polls so far
        self.discard: tuple[bytes, ...] = ()  # unusable bytes the plain GET found
        options = cache.options
        # refresh_ahead: the refresh windows (ms) of the value and of a tombstone, sent with
        # every lease call (None: off, and the lease call is the same as without the option)
        self.windows = (
            options.refresh_windows(cache._ttl(lookup[0], ttl)) if options.refresh_ahead else None
        )

    def read(self) -> Flow:
        """The lookup's object: cached, or fetched under this reader's lease (or uncached)."""
        if self.cache._expects_hit(self.model):
            found = yield from self.read_plain()
            if found is not _UNUSABLE:
                return found
        return (yield from self.lease())

    def lease(self) -> Flow:
        """:meth:`read` past the plain ``GET``: the lease call, and what follows it."""
        cache = self.cache
        discard = self.discard  # unusable bytes to delete with the next lease call
        discarded = bool(discard)
        counted_miss = False
        self.token = new_token()
        while True:
            cover(self.flight)
            ticket = None if self.near is None else self.near.ticket()
            try:
                reply = yield Script("get_or_lease", self.keys, self._lease_args(discard))
            except RedisError as exc:
                redis_failed(cache, exc, "get", self.keys, self.model)
                cache.metrics.incr("fail_open_fetches", 1, self.model)
                decision("fail_open_fetch", self.model, self.keys[0], error=type(exc).__name__)
                return (yield from self.fetch_uncached())
            except GeneratorExit:
                raise
            except BaseException as exc:
                # Cancelled while the reply was on its way: the lease may be ours.
                yield from release_on_failure(exc, self._release())
                raise
            cached = refreshed(reply)  # a hit inside its refresh window, and the lease
            if cached is not None or isinstance(reply, bytes):
                data = reply if cached is None else cached
                obj = decoded(cache, self.lookup, data, model=self.model)
                if self.near is not None and obj is not _UNUSABLE:
                    self.near.keep(self.keys[0], ticket, data, self.model, obj)
                if cached is not None and obj is not _UNUSABLE:
                    event = "tombstone_hit" if obj is _TOMB else "hit"
                    decision(event, self.model, self.keys[0])
                    return (yield from self._refresh(obj))
                if obj is not _UNUSABLE:
                    cache._scored(self.model, hit=True)
                if obj is _TOMB:
                    decision("tombstone_hit", self.model, self.keys[0])
                    raise cache.not_found(*self.lookup)
                if obj is not _UNUSABLE:
                    decision("hit", self.model, self.keys[0])
                    return obj
                decision("unusable", self.model, self.keys[0])
                if cached is not None:
                    # Unusable bytes, and the lease is ours already: a miss like any other,
                    # whose commit replaces them (nothing to discard first).
                    reply = _LEASED
                elif discarded:
                    # A second unusable value in one read: someone keeps writing values this
                    # process cannot use. Serve from the database rather than loop.
                    return (yield from self.fetch_uncached())
                else:
                    discarded, discard = True, (reply,)  # delete exactly these, try for the lease
                    continue
            discard = ()
            if not counted_miss:
                counted_miss = True
                cache.metrics.incr("misses", 1, self.model)
                cache._scored(self.model, hit=False)
            if self._leased(reply):
                decision("miss", self.model, self.keys[0], lease="granted")
                return (yield from self._fill())
            if not (yield from self._pause()):
                return (yield from self.fetch_uncached())

    def read_plain(self) -> Flow:
        """A plain ``GET`` of the value key, for a read that expects a hit (see
        ``CacheCowBase._expects_hit``): the object (from the cache, or from ``fetch`` if Redis
        failed and ``fail_open`` serves the read), or ``_UNUSABLE`` for a read the lease call
        (:meth:`lease`) goes on with, unusable bytes in :attr:`discard` for it to delete. A
        tombstone raises the not-found exception. It runs outside single flight (a hit needs
        no one's lease): only a read that goes on to the lease call joins a flight."""
        cache = self.cache
        ticket = None if self.near is None else self.near.ticket()
        try:
            reply = yield Command(("GET", self.keys[0]))
        except RedisError as exc:
            if _wrong_type(exc):
                return _UNUSABLE  # foreign data: the lease call deletes it
            redis_failed(cache, exc, "get", self.keys, self.model)
            cache.metrics.incr("fail_open_fetches", 1, self.model)
            decision("fail_open_fetch", self.model, self.keys[0], error=type(exc).__name__)
            return (yield from self.fetch_uncached())
        if reply is None:
            return _UNUSABLE  # a miss, scored by the lease call that follows
        obj = decoded(cache, self.lookup, reply, model=self.model)
        if obj is _UNUSABLE:
            decision("unusable", self.model, self.keys[0])
            self.discard = (reply,)
            return _UNUSABLE
        cache._scored(self.model, hit=True)
        if self.near is not None:
            self.near.keep(self.keys[0], ticket, reply, self.model, obj)
        if obj is _TOMB:
            decision("tombstone_hit", self.model, self.keys[0])
            raise cache.not_found(*self.lookup)
        decision("hit", self.model, self.keys[0])
        return obj

    def _lease_args(self, discard: tuple[bytes, ...]) -> tuple[Any, ...]:
        """The arguments of a lease call (see ``get_or_lease.lua``)."""
        head = (self.token, self.cache.options.flag_ttl_ms)
        if self.windows is None:
            return (*head, *discard)
        return (*head, discard[0] if discard else "", *self.windows)

    def _leased(self, reply: Any) -> bool:
        """Whether a lease call's code grants the lease (else another reader holds it)."""
        if reply in (_LEASED_REPAIRED, _BUSY_REPAIRED):
            self.cache.metrics.incr("corrupt_keys", 1, self.model)
        if reply in (_LEASED, _LEASED_REPAIRED):
            return True
        if reply in (_BUSY, _BUSY_REPAIRED):
            return False
        raise CacheUnavailable(
            f"unexpected reply from get_or_lease: {reply!r}", operation="get", keys=self.keys
        )

    def _pause(self) -> Flow:
        """Another reader holds the lease: wait before polling again; ``False`` to fetch
        without caching instead (the ``busy`` policy, or the wait is over)."""
        cache = self.cache
        if self.deadline is None:
            cache.metrics.incr("busy", 1, self.model)
            if cache._fetches_when_busy:
                decision("busy", self.model, self.keys[0], then="fetch")
                return False
            cache.metrics.incr("waits", 1, self.model)
            decision("busy", self.model, self.keys[0], then="wait")
            self.deadline = cache.clock.monotonic() + cache.options.wait_timeout
        pause = cache._wait_step(self.deadline, self.attempt)
        if pause <= 0:
            cache.metrics.incr("wait_timeouts", 1, self.model)
            decision("wait_timeout", self.model, self.keys[0], polls=self.attempt)
            return False
        self.attempt += 1
        yield Sleep(pause)
        return True

    def _fill(self) -> Flow:
        """Fetch under this reader's lease and commit; the fetched object (or not-found)."""
        self.cache.metrics.incr("leases", 1, self.model)
        obj, prepared = yield from self._fetch_leased()
        if prepared is not None:
            yield from self._commit(*prepared)
        return fetched(self.cache, self.lookup, obj)

    def _refresh(self, cached: Any) -> Flow:
        """A hit inside its refresh window came with the lease: fetch and commit, as after a
        miss, and return the fresh object (or raise not-found). Followers in this process take
        the ``cached`` object (or ``_TOMB``) at once, not the fetch's. If ``fetch`` (or
        ``serialize``) raises, the lease is given back and the cached answer returned: a
        refresh never fails a read that had a usable value. (A Redis failure at the commit is
        one as after a miss: ``fail_open`` decides.)"""
        cache, model = self.cache, self.model
        if self.flight is not None:
            land(cache, self.flight, self.lookup, None if cached is _TOMB else cached, None)
            self.flight = None
        cache.metrics.incr("leases", 1, model)
        cache.metrics.incr("refreshes", 1, model)
        decision("refresh", model, self.keys[0])
        try:
            obj, prepared = yield from self._fetch_leased()
        except Exception as exc:  # released already; not a cancellation or an interrupt
            refresh_failed(cache, self.lookup, self.keys[0], exc)
            if cached is _TOMB:
                raise cache.not_found(*self.lookup) from None
            return cached
        if prepared is not None:
            yield from self._commit(*prepared)
        return fetched(cache, self.lookup, obj)

    def _fetch_leased(self) -> Flow:
        """Fetch under this reader's lease: the object (``None`` for "no such object") and what
        to commit for it (``None``: it may not be cached, and the lease was given back). If
        ``fetch`` or ``serialize`` raises, the lease is given back and the error re-raised
        unchanged."""
        cache = self.cache
        cache.metrics.incr("fetches", 1, self.model)
        cover(self.flight)
        try:
            try:
                obj = yield Fetch(*self.lookup)
            except NotFound:
                obj = None
            prepared = encoded(cache, self.lookup, obj, cache._ttl(self.lookup[0], self.ttl))
            if prepared is None:
                yield from self._release()
        except GeneratorExit:
            raise
        except BaseException as exc:
            # fetch or serialize failed: free the lease at once, then re-raise unchanged.
            yield from release_after(exc, self._release())
            raise
        return obj, prepared

    def _commit(self, payload: bytes, ttl_ms: int) -> Flow:
        """Store ``payload`` if this reader's lease is still live (else nothing: counted)."""
        cache = self.cache
        ticket = None if self.near is None else self.near.ticket()
        try:
            stored = yield Script("commit", self.keys, (self.token, payload, ttl_ms))
        except RedisError as exc:
            # Out of memory, a value over proto-max-bulk-len (the connection dropped), a
            # lost connection: the commit may or may not have landed. The release compares
            # the token, so it frees the lease only if it is still ours (never raises). Not
            # after a timeout: Redis is stalled, and the release would wait as long again.
            if not _timed_out(exc):
                yield from self._release(counted=False)
            redis_failed(cache, exc, "commit", self.keys, self.model)
        except GeneratorExit:
            raise
        except BaseException as exc:
            yield from release_on_failure(exc, self._release())  # as above
            raise
        else:
            cache.metrics.incr("commits" if stored == 1 else "stale_commits", 1, self.model)
            decision("commit" if stored == 1 else "stale_commit", self.model, self.keys[0])
            if stored == 1 and self.near is not None:
                kept = committed_object(cache, self.lookup[0], payload)
                if kept is not _UNUSABLE:
                    self.near.keep(self.keys[0], ticket, payload, self.model, kept, committed=True)

    def fetch_uncached(self) -> Flow:
        """The object from ``fetch``, caching nothing."""
        self.cache.metrics.incr("fetches", 1, self.model)
        cover(self.flight)
        try:
            obj = yield Fetch(*self.lookup)
        except NotFound as exc:
            raise self.cache.not_found(*self.lookup) from exc
        return fetched(self.cache, self.lookup, obj)

    def _release(self, *, counted: bool = True) -> Flow:
        """Give the lease back if it is still ours; never raises (the flag expires anyway).
        A failure is logged, and counted in ``redis_errors`` unless ``counted`` is off (the
        clean-up of an operation whose own failure was counted)."""
        flag_key = self.keys[1]
        try:
            yield Script("release", (flag_key,), (self.token,))
        except Exception as exc:  # a Redis failure, or a reply of the wrong shape
            if counted:
                self.cache.metrics.incr("redis_errors", 1, self.model)
            logger.warning("could not release lease %s: %s", flag_key, exc)


def refresh_failed(
    cache: Cache, lookup: tuple[Any, Field, Any], value_key: str, error: Exception
) -> None:
    """Count a refresh whose fetch (or serialize) raised (its reader got the cached object),
    and log it once per model and field."""
    cls, id_field, id_val = lookup
    label = cache.model_label(cls)
    cache.metrics.incr("refresh_failures", 1, label)
    decision("refresh_failed", label, value_key, error=type(error).__name__)
    if ("refresh failed", label, id_field) in cache._warned:
        return
    cache._warned.add(("refresh failed", label, id_field))
    logger.warning(
        "refreshing %s %r=%r failed (%s: %s); the cached value was returned and expires as "
        "it would have. Logged once per model and field; counted in refresh_failures.",
        label,
        id_field,
        id_val,
        type(error).__name__,
        error,
    )


def peek(cache: Cache, lookup: tuple[Any, Field, Any]) -> Flow:
    """Read a lookup from the cache only: the object, ``None`` if not cached; never fetches,
    never leases (a tombstone raises the not-found exception, as ``get`` does)."""
    value_key = cache.get_keys(*lookup)[0]
    obj = get_near(cache, lookup, value_key)
    if obj is not _UNUSABLE:
        return obj
    model = cache.model_label(lookup[0])
    near = cache._near if cache._near is not None and cache._near.accepts(model) else None
    ticket = None if near is None else near.ticket()
    try:
        reply = yield Command(("GET", value_key))
    except RedisError as exc:
        if _wrong_type(exc):
            # Foreign data of another type under the value key: a miss. Left in place (a
            # plain DEL here could race a commit); the next get deletes it atomically.
            cache.metrics.incr("corrupt_keys", 1, model)
            cache.metrics.incr("misses", 1, model)
            return None
        redis_failed(cache, exc, "peek", (value_key,), model)
        return None
    if reply is None:
        cache.metrics.incr("misses", 1, model)
        decision("miss", model, value_key, lease="none (peek)")
        return None
    obj = decoded(cache, lookup, reply, model=model)
    if near is not None and obj is not _UNUSABLE:
        near.keep(value_key, ticket, reply, model, obj)
    if obj is _TOMB:
        decision("tombstone_hit", model, value_key)
        raise cache.not_found(*lookup)
    decision("unusable" if obj is _UNUSABLE else "hit", model, value_key)
    return None if obj is _UNUSABLE else obj
