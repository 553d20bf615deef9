"""Single reads: ``get``'s flow (docs/protocol.md) and ``peek``'s.

A :class:`SingleRead` is one call's read of one lookup: a ``get_or_lease`` call answers with the
cached bytes, or grants this reader the lease (a fresh token), or says another reader holds it;
a leaseholder fetches and commits under its token, a busy reader polls with backoff for the
holder's value, then fetches without caching. Every lease this reader may hold is given back on
any failure that left it (see :func:`cachecow._ops.release_on_failure`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from ._entries import decoded, encoded, fetched
from ._failures import redis_failed
from ._flights import Flight, cover
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
        self.token = new_token()
        self.deadline: float | None = None  # of the wait for another reader's lease
        self.attempt = 0  # polls so far

    def read(self) -> Flow:
        """The lookup's object: cached, or fetched under this reader's lease (or uncached)."""
        cache = self.cache
        discard: tuple[bytes, ...] = ()  # unusable bytes to delete with the next lease call
        discarded = counted_miss = False
        while True:
            cover(self.flight)
            ticket = None if self.near is None else self.near.ticket()
            try:
                args = (self.token, cache.options.flag_ttl_ms, *discard)
                reply = yield Script("get_or_lease", self.keys, args)
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
            if isinstance(reply, bytes):
                obj = decoded(cache, self.lookup, reply, model=self.model)
                if self.near is not None and obj is not _UNUSABLE:
                    cache._near_keep(self.near, self.keys[0], ticket, reply, obj, self.model)
                if obj is _TOMB:
                    decision("tombstone_hit", self.model, self.keys[0])
                    raise cache.not_found(*self.lookup)
                if obj is not _UNUSABLE:
                    decision("hit", self.model, self.keys[0])
                    return obj
                decision("unusable", self.model, self.keys[0])
                if discarded:
                    # A second unusable value in one read: someone keeps writing values this
                    # process cannot use. Serve from the database rather than loop.
                    return (yield from self.fetch_uncached())
                discarded, discard = True, (reply,)  # delete exactly these, try for the lease
                continue
            discard = ()
            if not counted_miss:
                counted_miss = True
                cache.metrics.incr("misses", 1, self.model)
            if self._leased(reply):
                decision("miss", self.model, self.keys[0], lease="granted")
                return (yield from self._fill())
            if not (yield from self._pause()):
                return (yield from self.fetch_uncached())

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
        cache = self.cache
        cache.metrics.incr("leases", 1, self.model)
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
                return obj
        except GeneratorExit:
            raise
        except BaseException as exc:
            # fetch or serialize failed: free the lease at once, then re-raise unchanged.
            yield from release_after(exc, self._release())
            raise
        yield from self._commit(*prepared)
        return fetched(cache, self.lookup, obj)

    def _commit(self, payload: bytes, ttl_ms: int) -> Flow:
        """Store ``payload`` if this reader's lease is still live (else nothing: counted)."""
        cache = self.cache
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


def peek(cache: Cache, lookup: tuple[Any, Field, Any]) -> Flow:
    """Read a lookup from the cache only: the object, ``None`` if not cached; never fetches,
    never leases (a tombstone raises the not-found exception, as ``get`` does)."""
    value_key = cache.get_keys(*lookup)[0]
    obj = cache._near_get(lookup, value_key)
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
        cache._near_keep(near, value_key, ticket, reply, obj, model)
    if obj is _TOMB:
        decision("tombstone_hit", model, value_key)
        raise cache.not_found(*lookup)
    decision("unusable" if obj is _UNUSABLE else "hit", model, value_key)
    return None if obj is _UNUSABLE else obj
