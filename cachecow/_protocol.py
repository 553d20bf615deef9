"""The leased cache-aside protocol, free of I/O.

Every decision of the protocol lives here: tokens, the meaning of each script reply, TTL and
jitter arithmetic, the busy policy and its backoff schedule, what is counted and what is raised.
A read or an invalidation is a generator (a *flow*) that yields the I/O it needs as small
operation objects (:class:`Script`, :class:`Command`, :class:`Fetch`, :class:`Sleep`) and is sent
their results, or has their exceptions thrown into it. A client class only *drives* flows: the
synchronous :class:`cachecow.CacheCow` performs each operation with redis-py and plain calls, and an
asyncio twin performs the same operations with ``await``, without a second copy of the logic.
"""

from __future__ import annotations

import enum
import logging
import math
import random
import secrets
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from redis.exceptions import RedisError

from .exceptions import CacheUnavailable, ConfigurationError, InvalidationFailed, NotFound
from .keys import Field, build_keys, encode_value, model_label, validate_prefix
from .metrics import Metrics, MetricsHook
from .serializers import JsonSerializer, Serializer

__all__ = ["TOMBSTONE", "BusyPolicy", "CacheCowBase", "Clock", "SystemClock"]

logger = logging.getLogger("cachecow")

TOMBSTONE = b"\x00cachecow:tombstone\x00"
"""The reserved value meaning "no such object". No JSON, MessagePack or pickle output equals it."""

# get_or_lease.lua answers a hit with the value's bytes, or one of these integers.
_LEASED = 1
_BUSY = 0

_MISSING = object()


class BusyPolicy(str, enum.Enum):
    """What a reader does when another reader holds the lease of the key it missed."""

    FETCH = "fetch"
    """Fetch at once and return the object without caching it (no waiting, more database load)."""
    WAIT = "wait"
    """Poll for the lease holder's value with backoff for up to ``wait_timeout`` seconds (taking
    the lease over if the holder's expires), then fetch without caching."""


@runtime_checkable
class Clock(Protocol):
    """Time as the protocol sees it; inject a fake one to test waiting without sleeping."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds``."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic` and :func:`time.sleep`."""

    def monotonic(self) -> float:
        """Seconds on the system's monotonic clock."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds``."""
        time.sleep(seconds)


# ---------------------------------------------------------------------------------------------
# Operations a flow yields to its driver.


@dataclass(frozen=True, slots=True)
class Script:
    """Run the Lua script ``name`` (``cachecow/lua/<name>.lua``); the result is its reply."""

    name: str
    keys: tuple[str, ...]
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Command:
    """Run one Redis command; the result is its reply."""

    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Fetch:
    """Call the ``fetch`` hook for the flow's lookup; the result is what it returned."""


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait ``seconds`` (through the clock); the result is ``None``."""

    seconds: float


FETCH = Fetch()
Op = Script | Command | Fetch | Sleep
Flow = Generator[Op, Any, Any]


# ---------------------------------------------------------------------------------------------
# Pure arithmetic.


def new_token() -> str:
    """A fresh lease token: 128 random bits, as 32 hex characters."""
    return secrets.token_hex(16)


def jittered_ms(seconds: float, jitter: float, unit_random: float) -> int:
    """``seconds`` in milliseconds, shortened by up to ``jitter`` (a fraction); at least 1 ms.

    ``unit_random`` is a number in [0, 1). The configured TTL is the upper bound: jitter only
    ever shortens it, so entries written together expire spread over ``[ttl * (1 - jitter), ttl]``.
    """
    return max(1, int(seconds * 1000.0 * (1.0 - jitter * unit_random)))


def backoff_delay(attempt: int, unit_random: float, *, first: float, cap: float) -> float:
    """The pause before poll ``attempt`` (0-based) of a waiting reader, in seconds.

    Doubles from ``first`` up to ``cap``, and keeps a random half of it ("equal jitter"), so
    waiters that arrived together do not poll in lockstep.
    """
    base = min(cap, first * (2.0 ** min(attempt, 32)))
    return base / 2.0 + base / 2.0 * unit_random


def _non_negative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number of seconds >= 0, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ConfigurationError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    if value < 0.001:
        raise ConfigurationError(f"{name} must be at least 0.001 seconds (1 ms), got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------------------


ClientT = TypeVar("ClientT")


class CacheCowBase(Generic[ClientT]):
    """Configuration, hooks, counters and the protocol's flows, shared by the client classes.

    Subclass :class:`cachecow.CacheCow` (or its asyncio twin), not this class. The options are
    documented on :class:`cachecow.CacheCow`.
    """

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
        busy: BusyPolicy | str = BusyPolicy.WAIT,
        wait_timeout: float = 1.0,
        fail_open: bool = False,
        fail_open_log_interval: float = 60.0,
        serializer: Serializer | None = None,
        prefix: str = "cachecow:",
        clock: Clock | None = None,
        metrics_hook: MetricsHook | None = None,
    ) -> None:
        self.ttl = _positive("ttl", ttl)
        if isinstance(ttl_jitter, bool) or not isinstance(ttl_jitter, (int, float)):
            raise ConfigurationError(f"ttl_jitter must be a fraction in [0, 1), got {ttl_jitter!r}")
        if not 0.0 <= ttl_jitter < 1.0:
            raise ConfigurationError(f"ttl_jitter must be a fraction in [0, 1), got {ttl_jitter!r}")
        self.ttl_jitter = float(ttl_jitter)
        self.flag_ttl = _positive("flag_ttl", flag_ttl)
        self.tombstone_ttl = _positive("tombstone_ttl", tombstone_ttl)
        try:
            self.busy = BusyPolicy(busy)
        except ValueError:
            choices = ", ".join(repr(p.value) for p in BusyPolicy)
            raise ConfigurationError(f"busy must be one of {choices}, got {busy!r}") from None
        self.wait_timeout = _non_negative("wait_timeout", wait_timeout)
        self.fail_open = bool(fail_open)
        self.fail_open_log_interval = _non_negative(
            "fail_open_log_interval", fail_open_log_interval
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
        self._check_client(redis)
        self.redis: ClientT = redis
        self._flag_ttl_ms = max(1, int(self.flag_ttl * 1000))
        self._tombstone_ttl_ms = max(1, int(self.tombstone_ttl * 1000))
        self._random = random.Random()
        self._last_error_log: float | None = None
        self._warned_uncacheable: set[tuple[str, Field]] = set()

    def _check_client(self, redis: ClientT) -> None:
        """Refuse a client this class cannot drive (the client classes override it)."""

    # -- hooks ----------------------------------------------------------------------------------

    def get_keys(self, cls: Any, id_field: Field, id_val: Any) -> tuple[str, str]:
        """Return ``(value_key, flag_key)`` for a lookup.

        The default is ``<prefix><model label>:<fields>:{<xxh3-128 of the typed lookup>}`` and
        the same with ``:lease`` appended (see :mod:`cachecow.keys`). An override must give
        both keys one Redis Cluster hash tag, and distinct lookups distinct keys.
        """
        return build_keys(self.prefix, self.model_label(cls), id_field, id_val)

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
        fields = id_field if isinstance(id_field, tuple) else (id_field,)
        values = id_val if isinstance(id_field, tuple) else (id_val,)
        for name, expected in zip(fields, values, strict=True):
            if isinstance(obj, Mapping):
                actual = obj.get(name, _MISSING)
            else:
                actual = getattr(obj, name, _MISSING)
            if actual is _MISSING:
                return False
            try:
                if actual != expected or encode_value(actual) != encode_value(expected):
                    return False
            except Exception:
                return False
        return True

    def not_found(self, cls: Any, id_field: Field, id_val: Any) -> BaseException:
        """The exception ``get`` raises when there is no such object (fresh or cached answer).

        Adapters return their ORM's exception (``Model.DoesNotExist``) here.
        """
        return NotFound(cls, id_field, id_val)

    # -- failure policy -------------------------------------------------------------------------

    def _redis_failed(self, exc: BaseException, operation: str, keys: tuple[str, ...]) -> None:
        """Count a Redis failure on a read; raise unless ``fail_open`` (then log, rate-limited)."""
        self.metrics.incr("redis_errors")
        if not self.fail_open:
            raise CacheUnavailable(
                f"Redis failed during {operation} ({type(exc).__name__}: {exc}); "
                "pass fail_open=True to serve reads from the database instead",
                operation=operation,
                keys=keys,
            ) from exc
        now = self.clock.monotonic()
        last = self._last_error_log
        if last is None or now - last >= self.fail_open_log_interval:
            self._last_error_log = now
            logger.warning(
                "cachecow: Redis failed during %s (%s: %s); serving from the database "
                "without caching (logged at most every %gs)",
                operation,
                type(exc).__name__,
                exc,
                self.fail_open_log_interval,
            )

    def _warn_uncacheable(self, cls: Any, id_field: Field, id_val: Any) -> None:
        label = self.model_label(cls)
        if (label, id_field) in self._warned_uncacheable:
            return
        self._warned_uncacheable.add((label, id_field))
        logger.warning(
            "cachecow: fetch(%s, %r, %r) returned an object that fails verify(); it is returned "
            "but never cached. Pass lookup values in the field's own type (5, not '5'), or "
            "override verify(). Logged once per model and field.",
            label,
            id_field,
            id_val,
        )

    # -- flows ----------------------------------------------------------------------------------

    def _fetched(self, cls: Any, id_field: Field, id_val: Any, obj: Any) -> Any:
        """What a caller gets for a fetched object: the object, or the not-found exception."""
        if obj is None:
            raise self.not_found(cls, id_field, id_val)
        return obj

    def _fetch_uncached(self, cls: Any, id_field: Field, id_val: Any) -> Flow:
        self.metrics.incr("fetches")
        try:
            obj = yield FETCH
        except NotFound as exc:
            raise self.not_found(cls, id_field, id_val) from exc
        return self._fetched(cls, id_field, id_val, obj)

    def _get_flow(self, cls: Any, id_field: Field, id_val: Any) -> Flow:
        """Read a (normalized) lookup: the protocol of DESIGN.md section 1."""
        value_key, flag_key = self.get_keys(cls, id_field, id_val)
        keys = (value_key, flag_key)
        token = new_token()
        lease_args: tuple[Any, ...] = (token, self._flag_ttl_ms)
        deadline: float | None = None
        attempt = 0
        discarded = False
        counted_miss = False
        while True:
            try:
                reply = yield Script("get_or_lease", keys, lease_args)
            except RedisError as exc:
                self._redis_failed(exc, "get", keys)
                self.metrics.incr("fail_open_fetches")
                return (yield from self._fetch_uncached(cls, id_field, id_val))

            if isinstance(reply, bytes):
                if reply == TOMBSTONE:
                    self.metrics.incr("tombstone_hits")
                    raise self.not_found(cls, id_field, id_val)
                try:
                    obj = self.deserialize(cls, reply)
                except Exception:
                    self.metrics.incr("decode_failures")
                    logger.debug("cachecow: undecodable value under %s; discarded", value_key)
                else:
                    try:
                        ok = self.verify(cls, id_field, id_val, obj)
                    except Exception:
                        ok = False
                    if ok:
                        self.metrics.incr("hits")
                        return obj
                    self.metrics.incr("verify_failures")
                if discarded:
                    # A second unusable value in one read: someone keeps writing values this
                    # process cannot use. Serve from the database rather than loop.
                    return (yield from self._fetch_uncached(cls, id_field, id_val))
                discarded = True
                # Delete exactly these bytes (if still there) and try for the lease, in one trip.
                lease_args = (token, self._flag_ttl_ms, reply)
                continue

            if not counted_miss:
                counted_miss = True
                self.metrics.incr("misses")
            if reply == _LEASED:
                break
            if reply != _BUSY:
                raise CacheUnavailable(
                    f"unexpected reply from get_or_lease: {reply!r}", operation="get", keys=keys
                )
            # Busy: another reader holds the lease.
            if deadline is None:
                self.metrics.incr("busy")
                if self.busy is BusyPolicy.FETCH or self.wait_timeout <= 0:
                    return (yield from self._fetch_uncached(cls, id_field, id_val))
                self.metrics.incr("waits")
                deadline = self.clock.monotonic() + self.wait_timeout
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                self.metrics.incr("wait_timeouts")
                return (yield from self._fetch_uncached(cls, id_field, id_val))
            delay = backoff_delay(
                attempt, self._random.random(), first=self.wait_first_delay, cap=self.wait_max_delay
            )
            attempt += 1
            yield Sleep(min(delay, remaining))
            lease_args = (token, self._flag_ttl_ms)

        # This reader holds the lease.
        self.metrics.incr("leases")
        self.metrics.incr("fetches")
        try:
            try:
                obj = yield FETCH
            except NotFound:
                obj = None
            if obj is None:
                payload, ttl_ms = TOMBSTONE, self._tombstone_ttl_ms
            elif not self._verified(cls, id_field, id_val, obj):
                self.metrics.incr("uncacheable")
                self._warn_uncacheable(cls, id_field, id_val)
                yield from self._release(flag_key, token)
                return obj
            else:
                payload = self.serialize(obj)
                ttl_ms = jittered_ms(self.ttl, self.ttl_jitter, self._random.random())
        except GeneratorExit:
            raise
        except BaseException:
            # fetch or serialize failed: free the lease at once, then re-raise unchanged.
            yield from self._release(flag_key, token)
            raise

        try:
            stored = yield Script("commit", keys, (token, payload, ttl_ms))
        except RedisError as exc:
            self._redis_failed(exc, "commit", keys)
        else:
            self.metrics.incr("commits" if stored == 1 else "stale_commits")
        return self._fetched(cls, id_field, id_val, obj)

    def _verified(self, cls: Any, id_field: Field, id_val: Any, obj: Any) -> bool:
        try:
            return bool(self.verify(cls, id_field, id_val, obj))
        except Exception:
            return False

    def _release(self, flag_key: str, token: str) -> Flow:
        """Give the lease back if it is still ours; never raises (the flag expires anyway)."""
        try:
            yield Script("release", (flag_key,), (token,))
        except RedisError as exc:
            self.metrics.incr("redis_errors")
            logger.warning("cachecow: could not release lease %s: %s", flag_key, exc)

    def _invalidate_flow(self, cls: Any, id_field: Field, id_val: Any) -> Flow:
        """Delete a lookup's value and flag in one command: voids every lease in flight."""
        keys = self.get_keys(cls, id_field, id_val)
        try:
            yield Command(("DEL", *keys))
        except RedisError as exc:
            self.metrics.incr("redis_errors")
            raise InvalidationFailed(
                f"invalidation of {keys[0]} did not reach Redis ({type(exc).__name__}: {exc}); "
                "the cache may still hold the old value",
                operation="invalidate",
                keys=keys,
            ) from exc
        self.metrics.incr("invalidations")
