"""Single flight: the readers of one key in one process share one read of it.

The first reader of a key (the *leader*) runs the protocol's read as usual; readers of the same
key that come while it runs (*followers*) make no call of their own: they wait for the leader
and build their own object from its result (``serialize`` once, ``deserialize`` per follower, so
no two callers share a mutable object). 5,000 tasks on one cold key make one lease attempt,
one wait and one ``fetch``.

Never a stale read: a follower takes only a result *decided after it came*, by a lease call
(``get_or_lease``, whose reply is Redis's state then) or a ``fetch`` (the database's state
then) that the leader issued after the follower joined. Followers that came later (say after
their own thread's write and invalidation) wait for the leader to end and then read again,
together: the leader, as it ends, opens the next flight with all of them already joined, and
the first of them to wake leads it. So each caller's answer was read, from Redis or from the
database, between the start and the end of its own call, as without single flight.

An error is no stale answer: every follower, however late, raises the error the leader's read
raised (a failed ``fetch``, or Redis failing: under a stalled Redis a follower then waits no
longer than the leader's own call, not for a second one).

A follower waits as a busy reader waits for a lease: ``wait_timeout`` at most, then it fetches
without caching (two fetches that each read the other's key through the cache would otherwise
wait for each other forever). Readers that may not wait (``busy="fetch"``) never join.

A batch (``get_many``) takes part key by key: it leads the flights of the keys nobody reads
yet, reading them in its own batch (which marks, at each lease call and fetch, the followers of
the keys that call covers), and follows the others, waiting for them only once its own keys are
landed, so two batches never wait on each other.

A leader whose hit came with the lease to refresh it (``refresh_ahead``) lands its flight with
that hit before it fetches: its followers take the cached object, not the refresh's.

The flights are per cache instance. :func:`land` leaves a leader's outcome to its followers,
and :func:`answer` turns it into each follower's own answer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._protocol import CacheCowBase

    Cache = CacheCowBase[Any]

__all__ = [
    "ALONE",
    "RETRY",
    "AsyncWaiter",
    "Failed",
    "Flight",
    "Flights",
    "Missing",
    "Shared",
    "answer",
    "cover",
    "land",
]


class Flight:
    """One leader's read of one key, and who joined it."""

    __slots__ = (
        "covered",
        "joined",
        "key",
        "landed",
        "leader",
        "loop",
        "next",
        "outcome",
        "waiter",
    )

    def __init__(
        self, key: str, loop: Any, leader: Any, *, joined: int = 0, waiter: Any = None
    ) -> None:
        self.key = key
        self.loop = loop  # the event loop of an asyncio flight (only its tasks may join)
        self.leader = leader  # the leading thread's id or task; None for a flight opened for
        #                       late followers, until the first of them (or a newcomer) leads
        self.joined = joined  # followers so far; follower n is the n-th to join (from 0)
        self.covered = 0  # the followers that joined before the leader's last deciding call
        self.outcome: Any = RETRY  # set before the waiter is set
        self.waiter = waiter  # made when the first follower joins
        self.next: Flight | None = None  # the flight opened for the followers that came late
        self.landed = False  # its outcome left to its followers (by land())


class Flights:
    """The flights of one cache instance, by value key; followers wait on a ``waiter()`` (a
    ``threading.Event``, or an :class:`AsyncWaiter`)."""

    def __init__(self, waiter: Callable[[], Any]) -> None:
        self.by_key: dict[str, Flight] = {}
        self.waiter = waiter
        self.lock = threading.Lock()  # never held across a call or an await

    def join(self, key: str, me: Any, loop: Any = None) -> tuple[Flight, int]:
        """The flight of ``key`` and the place in it of reader ``me`` (a thread's id, or a
        task): -1 to lead it, -2 to read alone (a flight of another event loop, or one that
        ``me`` leads already: a ``fetch`` reading its own key), else its index as a follower."""
        with self.lock:
            return self._join(key, me, loop)

    def join_many(self, keys: list[str], me: Any, loop: Any = None) -> list[tuple[Flight, int]]:
        """:meth:`join` each of ``keys`` (distinct), under one lock (the loop of :meth:`_join`
        inlined: a batch's keys are usually all new)."""
        by_key = self.by_key
        places = []
        with self.lock:
            for key in keys:
                flight = by_key.get(key)
                if flight is None:
                    flight = by_key[key] = Flight(key, loop, me)
                    places.append((flight, -1))
                elif flight.loop is not loop or flight.leader == me:
                    places.append((flight, -2))
                else:
                    places.append(self._place(flight, me))
        return places

    def _join(self, key: str, me: Any, loop: Any) -> tuple[Flight, int]:
        flight = self.by_key.get(key)
        if flight is None:
            flight = self.by_key[key] = Flight(key, loop, me)
            return flight, -1
        if flight.loop is not loop or flight.leader == me:
            return flight, -2
        return self._place(flight, me)

    def rejoin(self, old: Flight, me: Any) -> tuple[Flight, int]:
        """A follower that came too late for ``old``: the flight opened for it, or a new one."""
        if old.next is None:  # the leader was interrupted (or opened none): start over
            return self.join(old.key, me, old.loop)
        with self.lock:
            return self._place(old.next, me, joined=True)

    def _place(self, flight: Flight, me: Any, joined: bool = False) -> tuple[Flight, int]:
        if flight.leader is None:
            flight.leader = me
            return flight, -1
        if flight.waiter is None:
            flight.waiter = self.waiter()
        if joined:
            return flight, 0  # counted when the flight was opened, before any of its calls
        flight.joined += 1
        return flight, flight.joined - 1

    def land_unjoined(self, flights: list[Flight]) -> list[Flight]:
        """Remove, under one lock, the flights nobody joined (a batch's usual case); return
        the others, to :meth:`land` one by one."""
        joined = []
        with self.lock:
            for flight in flights:
                if flight.joined:
                    joined.append(flight)
                else:
                    del self.by_key[flight.key]
        return joined

    def land(self, flight: Flight) -> Any:
        """The leader's read has ended (its outcome set): remove its flight, open the next one
        for the followers that cannot take the outcome, and return the waiter to set (``None``
        if nobody joined)."""
        with self.lock:
            del self.by_key[flight.key]
            if flight.outcome is RETRY:
                late = flight.joined
            elif isinstance(flight.outcome, Failed):
                late = 0
            else:
                late = flight.joined - flight.covered
            if late > 0:
                flight.next = Flight(
                    flight.key, flight.loop, None, joined=late, waiter=self.waiter()
                )
                self.by_key[flight.key] = flight.next
            return flight.waiter


def cover(flight: Flight | None) -> None:
    """The leader of ``flight`` is about to issue a deciding call (a lease call, whose reply
    is Redis's state then, or a fetch, the database's): the followers so far may take its
    result."""
    if flight is not None:
        flight.covered = flight.joined


class AsyncWaiter:
    """What asyncio followers wait on: an ``asyncio.Event`` whose :meth:`wait` takes a timeout
    without a task per waiter (``asyncio.wait_for`` makes one: 5,000 of them per flight)."""

    __slots__ = ("_futures", "_set")

    def __init__(self) -> None:
        self._set = False
        self._futures: list[asyncio.Future[bool]] = []

    def set(self) -> None:
        self._set = True
        for future in self._futures:
            if not future.done():
                future.set_result(True)
        self._futures.clear()

    async def wait(self, timeout: float) -> bool:
        """Whether it was set within ``timeout`` seconds."""
        if self._set:
            return True
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._futures.append(future)
        timer = loop.call_later(timeout, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()


def _expire(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)


@dataclass(frozen=True, slots=True)
class Shared:
    """The leader's object, serialized: each follower deserializes its own."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Failed:
    """The leader's read raised this exception (an error of ``fetch``, or of Redis): every
    follower raises it."""

    error: Exception


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


Missing = _Marker("Missing")
"""There is no such object: each follower raises its own ``not_found`` exception."""

RETRY = _Marker("RETRY")
"""Nothing to take: the leader was interrupted (a cancellation, ``KeyboardInterrupt``) or took
no deciding call, or the follower came too late; it reads again, in the next flight."""

ALONE = _Marker("ALONE")
"""The leader's object cannot be shared (it does not serialize): each follower reads alone."""


# -- the leader's outcome, and each follower's answer -----------------------------------------


def land(
    cache: Cache,
    flight: Flight,
    lookup: tuple[Any, Any, Any],
    obj: Any,
    error: BaseException | None,
) -> None:
    """The leader's read of ``lookup`` ended with ``obj`` or ``error``: leave its outcome to
    its followers and wake them. (``obj`` ``None`` is "no such object": a batch's answer; a
    ``get`` raises its not-found exception instead.) A flight landed already is left alone: a
    refreshing leader lands it with the cached object before it fetches (``_single.py``)."""
    if flight.landed:
        return
    flight.landed = True
    if flight.covered or error is not None:
        if obj is None and error is None:
            flight.outcome = Missing
        else:
            flight.outcome = _outcome(cache, lookup, obj, error)
    waiter = cache._flights.land(flight)
    if waiter is not None:
        waiter.set()


def _outcome(
    cache: Cache, lookup: tuple[Any, Any, Any], obj: Any, error: BaseException | None
) -> Any:
    """What a leader's read gives its followers: its object serialized, "no such object", its
    exception, or nothing to take (an interruption, an object that does not serialize)."""
    if error is None:
        try:
            return Shared(cache.serialize(obj))
        except Exception:
            return ALONE
    if not isinstance(error, Exception):
        return RETRY
    if type(error) is type(cache.not_found(*lookup)):
        return Missing
    return Failed(error)


def answer(
    cache: Cache,
    lookup: tuple[Any, Any, Any],
    flight: Flight,
    index: int,
    *,
    many: bool = False,
) -> Any:
    """A woken follower's answer from its leader's outcome: its own object (or the not-found
    exception, or the leader's error, raised; for a batch, ``None`` for not found),
    :data:`RETRY` to read in the next flight, :data:`ALONE` to read alone."""
    outcome = flight.outcome
    if isinstance(outcome, Failed):
        raise outcome.error
    if index >= flight.covered or outcome is RETRY:
        return RETRY
    if isinstance(outcome, Shared):
        try:
            obj = cache.deserialize(lookup[0], outcome.payload)
        except Exception:
            return ALONE
        cache.metrics.incr("joined", 1, cache.model_label(lookup[0]))
        return obj
    if outcome is Missing:
        cache.metrics.incr("joined", 1, cache.model_label(lookup[0]))
        if many:
            return None
        raise cache.not_found(*lookup)
    return ALONE
