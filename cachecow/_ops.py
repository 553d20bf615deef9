"""What a flow and its driver exchange: the operations a flow yields, and what comes back.

A read or an invalidation is a generator (a *flow*, in ``_single.py``, ``_batch.py`` and
``_invalidation.py``) that yields these operations and is sent their results, or has their
exceptions thrown into it; the drivers (``_core.py``, ``_async.py``) perform them. This module
imports nothing else of cachecow's, so every other module can import it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ClusterError, RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# -- the operations -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Script:
    """Run the Lua script ``name`` (``cachecow/lua/<name>.lua``); the result is its reply.

    A batch script (``*_many``) sets ``shared``: its keys are two per lookup (a value key and
    its flag key, one hash tag) and its ``args`` are ``shared`` arguments for every lookup,
    then as many for each lookup. On Redis Cluster the driver splits such a call by node (see
    ``_redis_io.py``), and its result is then one reply per lookup, in order (a list; a
    failure of some lookups while others were answered raises
    :class:`PartialPipelineError`, whose ``replies`` are the lookups')."""

    name: str
    keys: tuple[str, ...]
    args: tuple[Any, ...]
    shared: int | None = None


@dataclass(frozen=True, slots=True)
class Command:
    """Run one Redis command; the result is its reply."""

    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Fetch:
    """Call the ``fetch`` hook for this lookup; the result is what it returned."""

    cls: Any
    id_field: Any
    id_val: Any


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait ``seconds`` (through the clock); the result is ``None``."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Wait:
    """Wait for a flight's ``waiter`` (see ``_flights.py``) at most ``seconds``; the result is
    whether it was set."""

    waiter: Any
    seconds: float


@dataclass(frozen=True, slots=True)
class FetchMany:
    """Call the ``fetch_many`` hook for these values of one field; the result is its mapping."""

    cls: Any
    id_field: Any
    id_vals: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Send these scripts and commands in one round trip; the result is their replies, in order
    (a reply that is an error is raised). On a cluster, when some calls fail and others were
    answered, the driver raises :class:`PartialPipelineError`."""

    ops: tuple[Script | Command, ...]


class PartialPipelineError(RedisError):
    """A :class:`Pipeline` (or a batch :class:`Script`, split by node) on Redis Cluster of
    which some calls failed (a node down) while others were answered: ``replies`` holds each
    call's (each lookup's) reply, or the error it failed with, and ``error`` is the first
    error. ``by_key`` (set by the batch that sent it) maps the value key of each answered
    lookup to its reply, so a batch can give back the leases it won on the nodes that answered
    instead of leaving them to block their keys until they expire."""

    def __init__(self, error: BaseException, replies: list[Any]) -> None:
        super().__init__(str(error))
        self.error = error
        self.replies = replies
        self.by_key: dict[str, Any] = {}


def all_answered(results: list[Any]) -> list[Any]:
    """A cluster pipeline's ``results`` (replies, or the errors items failed with) if none
    failed; else the error, or a :class:`PartialPipelineError` when some were answered."""
    errors = [result for result in results if isinstance(result, BaseException)]
    if not errors:
        return results
    if len(errors) == len(results):
        raise errors[0]
    raise PartialPipelineError(errors[0], results)


def lookup_replies(reply: Any) -> Any:
    """A batch script's reply, with one entry per lookup: ``commit_many``'s string (one
    character per lookup, ``b"10"``) as numbers (``[1, 0]``); any other reply as it is."""
    if isinstance(reply, bytes):
        return [code - 48 for code in reply]
    return reply


def as_redis_error(exc: BaseException) -> BaseException:
    """``exc``, or a :class:`~redis.exceptions.ClusterError` in its place if it is one of the
    exceptions redis-py's cluster clients raise when no node can be reached that are no
    ``RedisError`` (``RedisClusterException``, ``SlotNotCoveredError``): to the protocol,
    those are Redis failures like any other (``fail_open`` serves the read, an invalidation
    raises :class:`~cachecow.InvalidationFailed`)."""
    if isinstance(exc, RedisClusterException) and not isinstance(exc, RedisError):
        error = ClusterError(f"{type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return error
    return exc


CANCEL_RELEASE_SECONDS = 0.1
"""How long a cancelled asyncio call may spend giving back its leases before the
cancellation goes on (a release takes one round trip; on a stalled Redis it is given up)."""


@dataclass(frozen=True, slots=True)
class TimeBoxed:
    """Run this flow (a lease release after a cancellation) for at most ``seconds``, then go
    on whatever became of it: the asyncio driver gives it up after that (the leases then
    expire on their own), so a cancellation is held up by at most that much even when Redis
    is stalled; the sync driver runs it in full."""

    flow: Any
    seconds: float


@dataclass(frozen=True, slots=True)
class ReplicatedWrite:
    """Send these commands and then ``WAIT replicas timeout_ms`` on the same connection (on a
    cluster: per node, each node's commands and its WAIT on one connection); the result is the
    fewest replicas that acknowledged the writes on any node (a reply that is an error is
    raised)."""

    ops: tuple[Command, ...]
    replicas: int
    timeout_ms: int


Op = Script | Command | Fetch | FetchMany | Sleep | Wait | Pipeline | ReplicatedWrite | TimeBoxed
RedisOp = Script | Command | Pipeline | ReplicatedWrite
"""The operations a driver hands to its Redis I/O (``perform``)."""
Flow = Generator[Op, Any, Any]


# -- what the scripts answer ----------------------------------------------------------------

TOMBSTONE = b"\x00cachecow:tombstone\x00"
"""The reserved value meaning "no such object". No JSON, MessagePack or pickle output equals it."""

# get_or_lease.lua answers a hit with the value's bytes, or one of these integers.
_LEASED = 1
_BUSY = 0
_LEASED_REPAIRED = 2  # leased, after deleting foreign data (a key of another type)
_BUSY_REPAIRED = 3  # busy, after deleting foreign data or giving a flag without TTL one

# ... or, with refresh windows (refresh_ahead), [bytes, _LEASED]: a hit inside its window,
# and the lease to refresh it (see refreshed()).

_TOMB: Any = object()  # a cached "not found"
_UNUSABLE: Any = object()  # cached bytes that cannot be decoded or fail verify


def refreshed(reply: Any) -> bytes | None:
    """The cached bytes of a lease script's reply that is a hit inside its refresh window and
    grants the lease to refresh it (``[bytes, 1]``); ``None`` for any other reply."""
    if (
        isinstance(reply, list)
        and len(reply) == 2
        and isinstance(reply[0], bytes)
        and reply[1] == _LEASED
    ):
        return reply[0]
    return None


def _wrong_type(exc: BaseException) -> bool:
    """Whether Redis refused a command because its key holds another type (WRONGTYPE)."""
    return isinstance(exc, ResponseError) and str(exc).startswith("WRONGTYPE")


def _timed_out(exc: BaseException) -> bool:
    """Whether a Redis failure is a timeout (of a whole call, or of a cluster node's part)."""
    if isinstance(exc, PartialPipelineError):
        exc = exc.error
    return isinstance(exc, RedisTimeoutError)


def new_token() -> str:
    """A fresh lease token: 128 random bits, as 32 hex characters."""
    return secrets.token_hex(16)


def release_on_failure(exc: BaseException, release: Flow) -> Flow:
    """A call failed while a reply to it was on its way (the lease, a commit), other than by a
    Redis error: the leases may be ours, and left alone they would hold their keys for
    flag_ttl. The release compares the token, so it frees nothing that is not ours.

    - An asyncio cancellation releases for at most :data:`CANCEL_RELEASE_SECONDS`, so deadlines
      (``asyncio.timeout``, ``wait_for``) hold even when Redis is stalled, which is when calls
      get cancelled.
    - Any other exception releases as after a failed ``fetch``.
    - ``KeyboardInterrupt``, ``SystemExit`` and other interruptions that are not exceptions
      release nothing: a release would hold up the interrupt by a full Redis timeout when
      Redis is slow, which is when interrupts come."""
    if isinstance(exc, Exception | asyncio.CancelledError):
        yield from release_after(exc, release)
    else:
        release.close()


def release_after(exc: BaseException, release: Flow) -> Flow:
    """Run ``release`` after ``exc``: for at most :data:`CANCEL_RELEASE_SECONDS` after an
    asyncio cancellation, in full otherwise (as after a failed ``fetch``)."""
    if isinstance(exc, asyncio.CancelledError):
        yield TimeBoxed(release, CANCEL_RELEASE_SECONDS)
    else:
        yield from release
