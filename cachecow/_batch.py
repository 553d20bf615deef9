"""Batch reads: ``get_many``'s flow, the protocol (docs/protocol.md) for many lookups at once.

A :class:`BatchRead` is one call's read of some lookups: one ``get_or_lease_many`` round trip
for the hits and the leases, one ``fetch_many`` for the leased lookups (and for busy ones that
will not wait), one ``commit_many`` under the batch's token; busy lookups are polled after the
batch's own leases are committed. :func:`read_many` runs it, alone or in single flight with
the process's other readers of the same keys (see ``_flights.py``).

With ``refresh_ahead``, the hits inside their refresh window may come with the lease too
(``_single.py``): those lookups are fetched and committed with the batch's misses, in the same
``fetch_many`` and ``commit_many``, and answered with the fresh objects.

On Redis Cluster the driver splits each script call by node: one call per node, whatever the
hash slots of its lookups (see ``_redis_io.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from ._entries import decoded, encoded
from ._failures import redis_failed
from ._flights import ALONE, RETRY, Flight, answer, land
from ._near import committed_object, read_near
from ._ops import (
    _BUSY,
    _BUSY_REPAIRED,
    _LEASED,
    _LEASED_REPAIRED,
    _TOMB,
    _UNUSABLE,
    Command,
    FetchMany,
    Flow,
    PartialPipelineError,
    Script,
    Sleep,
    Wait,
    _timed_out,
    lookup_replies,
    new_token,
    refreshed,
    release_after,
    release_on_failure,
)
from ._single import refresh_failed
from ._telemetry import decision
from ._telemetry import logger as _events
from .exceptions import CacheUnavailable
from .keys import Field

if TYPE_CHECKING:
    from ._protocol import CacheCowBase

    Cache = CacheCowBase[Any]

logger = logging.getLogger("cachecow")


class BatchItem:
    """One distinct lookup of a batch read, and what happened to it so far."""

    __slots__ = ("busy", "flag_key", "flight", "id_val", "missed", "waited")

    def __init__(self, id_val: Any, flag_key: str) -> None:
        self.id_val = id_val
        self.flag_key = flag_key
        self.missed = False
        self.busy = False
        self.waited = False
        self.flight: Flight | None = None  # the flight this batch leads for it, if any


def lookups_of(
    id_vals: list[Any], pairs: list[tuple[str, str]]
) -> tuple[dict[str, BatchItem], list[str]]:
    """Each distinct lookup by its value key, and the value key of each input position (whose
    keys are ``pairs``)."""
    lookups: dict[str, BatchItem] = {}
    order: list[str] = []
    for id_val, (value_key, flag_key) in zip(id_vals, pairs, strict=True):
        order.append(value_key)
        if value_key not in lookups:
            lookups[value_key] = BatchItem(id_val, flag_key)
    return lookups, order


def read_many(
    batch: BatchRead,
    id_vals: list[Any],
    keys: list[tuple[str, str]],
    reader: tuple[Any, Any] | None,
) -> Flow:
    """Read many (normalized) lookups of ``batch``'s field (and their ``keys``, see
    ``keyed_many``), in order; for a ``reader`` that may wait (a thread's id and ``None``, or a
    task and its event loop), in single flight with the process's other readers."""
    cache = batch.cache
    batch.lookups, order = lookups_of(id_vals, keys)
    if batch.near is not None:
        batch.read_near()
    if batch.lookups and cache._expects_hit(batch.model) and not cache._group_by_slot:
        yield from batch.read_plain()  # one MGET, outside single flight: a hit needs no lease
    if not batch.lookups:
        pass  # every lookup answered already
    elif reader is None or not cache._joins:
        yield from batch.read(list(batch.lookups))
    else:
        yield from _read_together(batch, *reader)
    return [batch.found.get(value_key) for value_key in order]


def _read_together(batch: BatchRead, me: Any, loop: Any) -> Flow:
    """Lead the flights of the keys nobody in this process reads yet, reading them in one
    batch, and only then wait for the others' (at most ``wait_timeout``, then fetch them
    uncached, as a follower of a ``get``); a key whose flight gives nothing to take is read
    again, in its next flight."""
    cache, lookups = batch.cache, batch.lookups
    deadline = time.monotonic() + cache.options.wait_timeout
    places = list(zip(lookups, cache._flights.join_many(list(lookups), me, loop), strict=True))
    redis_failed = False  # under fail_open: no second call to a Redis that failed this call
    while places:
        reading: list[str] = []
        followed: list[tuple[str, Flight, int]] = []
        for value_key, (flight, index) in places:
            if index >= 0:
                followed.append((value_key, flight, index))
                continue
            if index == -1:
                lookups[value_key].flight = flight
            reading.append(value_key)
        if reading:
            redis_failed = (yield from _lead(batch, reading)) or redis_failed
        places = []
        timed_out: list[str] = []
        uncached: list[str] = []
        for value_key, flight, index in followed:
            if not (yield Wait(flight.waiter, max(0.0, deadline - time.monotonic()))):
                timed_out.append(value_key)
                continue
            lookup = (batch.cls, batch.id_field, lookups[value_key].id_val)
            taken = answer(cache, lookup, flight, index, many=True)
            if redis_failed and (taken is ALONE or taken is RETRY):
                uncached.append(value_key)
            elif taken is ALONE:
                places.append((value_key, (flight, -2)))
            elif taken is RETRY:
                places.append((value_key, cache._flights.rejoin(flight, me)))
            else:
                batch.found[value_key] = taken
        if timed_out:
            cache.metrics.incr("wait_timeouts", len(timed_out), batch.model)
        if uncached:
            cache.metrics.incr("fail_open_fetches", len(uncached), batch.model)
        if timed_out or uncached:
            yield from batch.fetch_uncached(timed_out + uncached)


def _lead(batch: BatchRead, reading: list[str]) -> Flow:
    """Read ``reading`` in one batch, then land the flights it leads, whatever happened;
    whether Redis failed during it (and ``fail_open`` went on)."""
    error: BaseException | None = None
    again = batch.again()
    try:
        yield from again.read(reading)
        return again.redis_failed
    except BaseException as exc:
        error = exc
        raise
    finally:
        led: list[Flight] = []
        for value_key in reading:
            lookup = batch.lookups[value_key]
            if lookup.flight is not None:
                led.append(lookup.flight)
                lookup.flight = None
        for flight in batch.cache._flights.land_unjoined(led):
            id_val = batch.lookups[flight.key].id_val
            obj = batch.found.get(flight.key)
            land(batch.cache, flight, (batch.cls, batch.id_field, id_val), obj, error)


class BatchRead:
    """One batch read of lookups of one field: the state its flow keeps between round trips
    (the token its leases are taken with, the deadline of its wait, what it will fetch
    without caching), and the answers, in ``found`` (value key -> object, or ``None`` for "no
    such object")."""

    def __init__(self, cache: Cache, cls: Any, id_field: Field, ttl: float | None = None) -> None:
        self.cache = cache
        self.cls = cls
        self.id_field = id_field
        self.ttl = cache._ttl(cls, ttl)  # seconds its values are cached for
        # refresh_ahead: the refresh windows (ms) of a value and of a tombstone ((0, 0): off)
        self.windows = cache.options.refresh_windows(self.ttl)
        self.model = cache.model_label(cls)
        self.lookups: dict[str, BatchItem] = {}  # by value key (set by read_many)
        self.found: dict[str, Any] = {}
        self.token = new_token()
        self.uncached: list[str] = []  # to fetch without caching, at the end
        self.discarded: set[str] = set()  # found unusable once already
        self.deadline: float | None = None  # of the wait for busy lookups
        self.attempt = 0  # polls so far
        self.redis_failed = False  # a call failed and fail_open served the read
        near = cache._near
        self.near = near if near is not None and near.accepts(self.model) else None
        self.ticket: int | None = None  # of the near cache, taken before each lease round
        self.discards: dict[str, bytes] = {}  # unusable bytes the MGET found, to delete

    def read_near(self) -> None:
        """Answer what the near cache holds into :attr:`found`, and read only the rest."""
        cache = self.cache
        for value_key, lookup in list(self.lookups.items()):
            obj = read_near(cache, (self.cls, self.id_field, lookup.id_val), value_key)
            if obj is not _UNUSABLE:
                self.found[value_key] = None if obj is _TOMB else obj
                del self.lookups[value_key]

    def again(self) -> BatchRead:
        """A new read of this batch's lookups (a new token), answering into the same
        :attr:`found`."""
        other = BatchRead(self.cache, self.cls, self.id_field, self.ttl)
        other.lookups, other.found, other.discards = self.lookups, self.found, self.discards
        return other

    def read(self, pending: list[str]) -> Flow:
        """Read the ``pending`` lookups into :attr:`found`."""
        discards = {vk: self.discards.pop(vk) for vk in pending if vk in self.discards}
        waiting: list[str] = []
        while pending:
            replies = yield from self._lease_round(pending, discards)
            if replies is None:  # Redis failed and fail_open served them: done
                self.uncached += waiting
                break
            leased, refreshing, busy, discards = self._sort(pending, replies)
            if refreshing:
                self._land_refreshing(refreshing)
            extra: list[str] = []
            if busy and self.cache._fetches_when_busy:
                extra, busy = busy, []
            if leased or refreshing:
                # Fill our own leases before waiting on anyone else's: two batch readers that
                # each wait for the other's lease would otherwise both time out. Busy lookups
                # that will not wait ride along in the same fetch_many, uncached.
                if not (yield from self._fill(leased, extra, refreshing)):
                    # The commit failed and fail_open served it: no further call (a poll) to
                    # a Redis that just failed, which could cost the caller a second timeout.
                    rest = busy + list(discards)
                    self.cache.metrics.incr("fail_open_fetches", len(rest), self.model)
                    self.uncached += rest
                    busy, discards = [], {}
            else:
                self.uncached += extra
            if busy:
                busy = yield from self._pause(busy, sleep=not discards)
            waiting = busy
            pending = list(discards) + busy
        if self.uncached:
            yield from self.fetch_uncached(self.uncached)

    def _sort(
        self, pending: list[str], replies: dict[str, Any]
    ) -> tuple[list[str], list[str], list[str], dict[str, bytes]]:
        """Take the hits into :attr:`found`; return the leased lookups, the hits that came with
        the lease to refresh them, the busy lookups, and the unusable bytes to discard in the
        next round trip. Counts what it sees."""
        cache, lookups = self.cache, self.lookups
        tally: dict[str, int] = {}
        leased: list[str] = []
        refreshing: list[str] = []
        busy: list[str] = []
        discards: dict[str, bytes] = {}
        missed = 0
        for value_key in pending:
            reply = replies[value_key]
            lookup = lookups[value_key]
            if isinstance(reply, bytes):
                obj = decoded(cache, (self.cls, self.id_field, lookup.id_val), reply, tally)
                if self.near is not None and obj is not _UNUSABLE:
                    self.near.keep(value_key, self.ticket, reply, self.model, obj)
                if obj is _TOMB:
                    self.found[value_key] = None
                elif obj is not _UNUSABLE:
                    self.found[value_key] = obj
                elif value_key in self.discarded:
                    self.uncached.append(value_key)
                else:
                    self.discarded.add(value_key)
                    discards[value_key] = reply
                continue
            cached = refreshed(reply)  # a hit inside its refresh window, and the lease
            if cached is not None:
                obj = decoded(cache, (self.cls, self.id_field, lookup.id_val), cached, tally)
                if obj is not _UNUSABLE:
                    if self.near is not None:
                        self.near.keep(value_key, self.ticket, cached, self.model, obj)
                    self.found[value_key] = None if obj is _TOMB else obj
                    refreshing.append(value_key)
                    continue
                # Unusable bytes, and the lease is ours already: a miss like any other, whose
                # commit replaces them.
                reply = _LEASED
            if not lookup.missed:
                lookup.missed = True
                tally["misses"] = tally.get("misses", 0) + 1
                missed += 1
            if reply in (_LEASED_REPAIRED, _BUSY_REPAIRED):
                tally["corrupt_keys"] = tally.get("corrupt_keys", 0) + 1
                reply = _LEASED if reply == _LEASED_REPAIRED else _BUSY
            if reply == _LEASED:
                leased.append(value_key)
            elif reply == _BUSY:
                if not lookup.busy:
                    lookup.busy = True
                    tally["busy"] = tally.get("busy", 0) + 1
                busy.append(value_key)
            else:
                raise CacheUnavailable(
                    f"unexpected reply from get_or_lease_many: {reply!r}",
                    operation="get_many",
                    keys=(value_key,),
                )
        if refreshing:
            tally["refreshes"] = len(refreshing)
        hits = tally.get("hits", 0) + tally.get("tombstone_hits", 0)
        cache._scored(self.model, hit=True, times=hits)
        cache._scored(self.model, hit=False, times=missed)
        for counter, amount in tally.items():
            cache.metrics.incr(counter, amount, self.model)
        if _events.isEnabledFor(logging.DEBUG):
            self._log_sorted(pending, replies, leased, busy, refreshing)
        return leased, refreshing, busy, discards

    def _log_sorted(
        self,
        pending: list[str],
        replies: dict[str, Any],
        leased: list[str],
        busy: list[str],
        refreshing: list[str],
    ) -> None:
        """One DEBUG record per lookup of a lease round: what its reply decided."""
        leased_keys, busy_keys, refreshing_keys = set(leased), set(busy), set(refreshing)
        for value_key in pending:
            if value_key in refreshing_keys:
                found = self.found.get(value_key)
                event = "tombstone_hit" if found is None else "hit"
                decision(event, self.model, value_key, batch=True)
                decision("refresh", self.model, value_key, batch=True)
            elif value_key in leased_keys:
                decision("miss", self.model, value_key, lease="granted", batch=True)
            elif value_key in busy_keys:
                then = "fetch" if self.cache._fetches_when_busy else "wait"
                decision("busy", self.model, value_key, then=then, batch=True)
            elif isinstance(replies[value_key], bytes):
                found = self.found.get(value_key, _UNUSABLE)
                event = (
                    "unusable"
                    if found is _UNUSABLE
                    else "tombstone_hit"
                    if found is None
                    else "hit"
                )
                decision(event, self.model, value_key, batch=True)

    def _pause(self, busy: list[str], *, sleep: bool) -> Flow:
        """Wait before polling the ``busy`` lookups again (unless a discard is sent first,
        ``sleep`` off); returns those still to poll (none once the wait is over: they are then
        fetched without caching)."""
        cache = self.cache
        if self.deadline is None:
            self.deadline = cache.clock.monotonic() + cache.options.wait_timeout
        newly_waiting = [vk for vk in busy if not self.lookups[vk].waited]
        for value_key in newly_waiting:
            self.lookups[value_key].waited = True
        if newly_waiting:
            cache.metrics.incr("waits", len(newly_waiting), self.model)
        if not sleep:
            return busy
        pause = cache._wait_step(self.deadline, self.attempt)
        if pause <= 0:
            cache.metrics.incr("wait_timeouts", len(busy), self.model)
            for value_key in busy if _events.isEnabledFor(logging.DEBUG) else ():
                decision("wait_timeout", self.model, value_key, polls=self.attempt, batch=True)
            self.uncached += busy
            return []
        self.attempt += 1
        yield Sleep(pause)
        return busy

    def _lease_round(self, pending: list[str], discards: dict[str, bytes]) -> Flow:
        """The lease round trip for ``pending`` (discarding unusable bytes); on a Redis error,
        fail open (serve ``pending`` from ``fetch_many``, returning ``None``) or raise."""
        per_key = _discard_args(discards) if discards else None
        self._cover(pending)
        self.ticket = None if self.near is None else self.near.ticket()
        try:
            head = (self.token, self.cache.options.flag_ttl_ms, *self.windows)
            return (yield from self._script("get_or_lease_many", pending, head, per_key))
        except GeneratorExit:
            raise
        except BaseException as exc:
            if not isinstance(exc, RedisError):
                # Cancelled while the replies were on their way: any lease won may be ours.
                yield from release_on_failure(exc, self._release(pending))
                raise
            if isinstance(exc, PartialPipelineError):
                # Some nodes answered: give back the leases won there, or they would keep those
                # keys from being cached, and make their readers wait, until they expire.
                won = [
                    vk
                    for vk, reply in exc.by_key.items()
                    if reply in (_LEASED, _LEASED_REPAIRED) or refreshed(reply) is not None
                ]
                if won:
                    yield from self._release(won)
            redis_failed(self.cache, exc, "get_many", tuple(pending), self.model)
        yield from self._fail_open(pending)
        return None

    def _fail_open(self, pending: list[str]) -> Flow:
        """Redis failed (and ``fail_open`` is on): serve ``pending`` from ``fetch_many``."""
        self.redis_failed = True
        self.cache.metrics.incr("fail_open_fetches", len(pending), self.model)
        if _events.isEnabledFor(logging.DEBUG):
            for value_key in pending:
                decision("fail_open_fetch", self.model, value_key, batch=True)
        yield from self.fetch_uncached(pending)

    def read_plain(self) -> Flow:
        """One ``MGET`` of a batch that expects hits (``CacheCowBase._expects_hit``): the hits
        into :attr:`found` and out of :attr:`lookups`, which keeps the lookups left for the
        lease round; the unusable bytes into :attr:`discards`. If Redis fails and
        ``fail_open`` serves them all, none is left."""
        pending = list(self.lookups)
        self.ticket = None if self.near is None else self.near.ticket()
        try:
            values = yield Command(("MGET", *pending))
        except RedisError as exc:
            redis_failed(self.cache, exc, "get_many", tuple(pending), self.model)
            yield from self._fail_open(pending)
            self.lookups.clear()
            return
        replies = dict(zip(pending, values, strict=True))
        hits = [vk for vk in pending if isinstance(replies[vk], bytes)]
        _, _, _, self.discards = self._sort(hits, replies)  # a hit is never leased or busy
        for value_key in hits:
            if value_key not in self.discards:
                del self.lookups[value_key]

    def fetch_uncached(self, value_keys: list[str]) -> Flow:
        """Fetch these lookups into :attr:`found`, caching nothing."""
        self.cache.metrics.incr("fetches", len(value_keys), self.model)
        fetched = yield from self._fetch(value_keys)
        for value_key in value_keys:
            self.found[value_key] = fetched.get(self.lookups[value_key].id_val)

    def _fetch(self, value_keys: list[str]) -> Flow:
        """``fetch_many`` for these lookups, as a mapping; a value mapped to None is not found."""
        self._cover(value_keys)
        values = tuple(self.lookups[vk].id_val for vk in value_keys)
        fetched = yield FetchMany(self.cls, self.id_field, values)
        if not isinstance(fetched, Mapping):
            raise TypeError(f"fetch_many must return a mapping, got {type(fetched).__name__}")
        return fetched

    def _land_refreshing(self, refreshing: list[str]) -> None:
        """The followers in this process of lookups this batch refreshes take the cached
        objects now, instead of waiting for the refresh's fetch."""
        for value_key in refreshing:
            item = self.lookups[value_key]
            if item.flight is not None:
                lookup = (self.cls, self.id_field, item.id_val)
                land(self.cache, item.flight, lookup, self.found[value_key], None)
                item.flight = None

    def _fill(self, leased: list[str], extra: list[str], refreshing: list[str]) -> Flow:
        """Fetch the leased lookups and the ``refreshing`` ones (and ``extra`` ones, not to be
        cached) in one ``fetch_many``, and commit the leased and refreshing ones in one round
        trip, only under this batch's own live leases. If ``fetch_many`` (or ``serialize``)
        raises, every lease is given back and the error re-raised, unless the batch fetched
        only refreshes: their cached objects then stay the answers. Returns whether Redis
        answered the commit (``False``: it failed, and ``fail_open`` let the read go on)."""
        cache = self.cache
        owned = leased + refreshing
        cache.metrics.incr("leases", len(owned), self.model)
        cache.metrics.incr("fetches", len(owned) + len(extra), self.model)
        cached = {value_key: self.found[value_key] for value_key in refreshing}
        entries: dict[str, tuple[Any, Any]] = {}  # value key -> (payload, ttl_ms)
        try:
            fetched = yield from self._fetch(owned + extra)
            for value_key in extra:
                self.found[value_key] = fetched.get(self.lookups[value_key].id_val)
            for value_key in owned:
                id_val = self.lookups[value_key].id_val
                obj = fetched.get(id_val)
                self.found[value_key] = obj
                prepared = encoded(cache, (self.cls, self.id_field, id_val), obj, self.ttl)
                entries[value_key] = (b"", 0) if prepared is None else prepared
        except GeneratorExit:
            raise
        except BaseException as exc:
            # fetch_many or serialize failed: free every lease at once, then re-raise unchanged
            # (or, if all it fetched were refreshes, answer with their cached objects).
            yield from release_after(exc, self._release(owned))
            if leased or extra or not isinstance(exc, Exception):
                raise
            self.found.update(cached)
            for value_key in refreshing:
                lookup = (self.cls, self.id_field, self.lookups[value_key].id_val)
                refresh_failed(cache, lookup, value_key, exc)
            return True
        return (yield from self._commit(owned, entries))

    def _commit(self, leased: list[str], entries: dict[str, tuple[Any, Any]]) -> Flow:
        """Commit ``entries`` (an empty payload gives a lease back); whether Redis answered."""
        cache = self.cache
        ticket = None if self.near is None else self.near.ticket()
        try:
            replies = yield from self._script(
                "commit_many", leased, (self.token,), lambda vk: entries[vk]
            )
        except RedisError as exc:
            # As in a single read: give back whatever leases are still ours (never raises).
            if not _timed_out(exc):
                yield from self._release(leased, counted=False)
            redis_failed(cache, exc, "commit", tuple(leased), self.model)
            self.redis_failed = True
            return False
        except GeneratorExit:
            raise
        except BaseException as exc:
            yield from release_on_failure(exc, self._release(leased))
            raise
        stored = sum(1 for vk in leased if entries[vk][1] != 0 and replies[vk] == 1)
        refused = sum(1 for vk in leased if entries[vk][1] != 0 and replies[vk] != 1)
        if stored:
            cache.metrics.incr("commits", stored, self.model)
        if refused:
            cache.metrics.incr("stale_commits", refused, self.model)
        if stored and self.near is not None:
            for value_key in leased:
                payload, ttl_ms = entries[value_key]
                if ttl_ms == 0 or replies[value_key] != 1:
                    continue
                kept = committed_object(cache, self.cls, payload)
                if kept is not _UNUSABLE:
                    self.near.keep(value_key, ticket, payload, self.model, kept, committed=True)
        if _events.isEnabledFor(logging.DEBUG):
            for value_key in leased:
                if entries[value_key][1] != 0:
                    event = "commit" if replies[value_key] == 1 else "stale_commit"
                    decision(event, self.model, value_key, batch=True)
        return True

    def _release(self, leased: list[str], *, counted: bool = True) -> Flow:
        """Give back every lease of ``leased`` still ours; never raises."""
        try:
            yield from self._script("commit_many", leased, (self.token,), lambda vk: (b"", 0))
        except Exception as exc:  # a Redis failure, or a reply of the wrong shape
            if counted:
                self.cache.metrics.incr("redis_errors", 1, self.model)
            logger.warning("could not release %d leases: %s", len(leased), exc)

    def _script(
        self,
        name: str,
        value_keys: list[str],
        head: tuple[Any, ...],
        per_key: Callable[[str], tuple[Any, ...]] | None,
    ) -> Flow:
        """Run a ``*_many`` script over ``value_keys`` in one call (which the driver splits by
        node on a cluster). Returns ``{value_key: reply}``."""
        keys: list[str] = []
        args: list[Any] = list(head)
        for value_key in value_keys:
            keys += (value_key, self.lookups[value_key].flag_key)
            if per_key is not None:
                args += per_key(value_key)
        try:
            reply = yield Script(name, tuple(keys), tuple(args), shared=len(head))
        except PartialPipelineError as exc:  # on a cluster: one reply (or error) per lookup
            if len(exc.replies) == len(value_keys):
                exc.by_key.update(zip(value_keys, exc.replies, strict=True))
            raise
        reply = lookup_replies(reply)
        if not isinstance(reply, list) or len(reply) != len(value_keys):
            raise CacheUnavailable(
                f"unexpected reply from {name}: {reply!r}", operation=name, keys=tuple(value_keys)
            )
        return dict(zip(value_keys, reply, strict=True))

    def _cover(self, value_keys: list[str]) -> None:
        """Before a call that decides these lookups: the followers of the flights this batch
        leads for them may take its result (see ``_flights.py``)."""
        for value_key in value_keys:
            flight = self.lookups[value_key].flight
            if flight is not None:
                flight.covered = flight.joined


def _discard_args(discards: dict[str, bytes]) -> Callable[[str], tuple[Any, ...]]:
    """Per key of a lease round: the unusable bytes to delete first, or ``""`` for none."""
    return lambda value_key: (discards.get(value_key, ""),)
