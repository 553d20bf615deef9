"""The contract every cachecow cache class must keep, as a reusable pytest suite.

Subclass :class:`CacheCowContract` in a module pytest collects (name it ``Test...``) and supply
the cache class under test and a way to write its database::

    class TestMyAdapter(CacheCowContract):
        model = User                     # what get() is called with
        field = "id"                     # a unique lookup field

        def make_cache(self, redis, **options):
            return MyCache(redis, **options)

        def write(self, key, payload):   # insert or update row `key`, committed
            ...

        def delete(self, key):           # delete row `key`, committed
            ...

        def payload_of(self, obj):       # read the payload back from a fetched/cached object
            return obj.payload

The suite drives the protocol through real Redis (the ``redis_client`` fixture of
:mod:`cachecow.testing.plugin`) and forces each race's interleaving with gates inside ``fetch``:
the reader reads the database, then stops until the test lets it commit. Each race is a
*scenario* method that returns what it observed, so a test can also run a scenario against a
deliberately broken protocol and show that the scenario would catch it.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from cachecow._async import AsyncCacheCow
from cachecow._core import CacheCow
from cachecow._ops import TOMBSTONE
from cachecow.exceptions import CacheCowError
from cachecow.testing.bridge import LoopThread, SyncFacade
from cachecow.testing.plugin import async_twin

__all__ = [
    "AsyncCacheCowContract",
    "CacheCowContract",
    "FakeClock",
    "FetchProbe",
    "RaceOutcome",
    "Reader",
]

GATE_TIMEOUT = 10.0

_PROBES: list[FetchProbe] = []


def release_all_gates() -> None:
    """Let every gated fetch of every probe go (a failed test must not leave readers blocked)."""
    while _PROBES:
        _PROBES.pop().go.set()


class FakeClock:
    """A clock whose ``sleep`` advances time at once: waiting tested without waiting."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)
        await asyncio.sleep(0)


class FetchProbe:
    """Wraps a cache's ``fetch`` and ``fetch_many``: counts calls and can hold the next one.

    A gated fetch reads the database (calls the real hook), then signals ``fetched`` and blocks
    until :meth:`release`: the moment between a reader's database read and its commit. On an
    async cache (or a :class:`~cachecow.testing.bridge.SyncFacade` of one) the wrappers are
    coroutines that wait without blocking the event loop.
    """

    def __init__(self, cache: Any) -> None:
        target = getattr(cache, "wrapped", cache)
        self.cache = target
        self.calls = 0  # fetch calls
        self.many_calls = 0  # fetch_many calls
        self.many_args: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()
        self._gates: list[tuple[threading.Event, threading.Event]] = []
        self.fetched = threading.Event()
        self.go = threading.Event()
        self.fail_next: BaseException | None = None
        _PROBES.append(self)
        fetch, fetch_many = target.fetch, target.fetch_many
        if isinstance(target, AsyncCacheCow):

            async def afetch(cls: Any, id_field: Any, id_val: Any) -> Any:
                gate = self._enter(many=False, args=None)
                obj = fetch(cls, id_field, id_val)
                if inspect.isawaitable(obj):
                    obj = await obj
                if gate is not None:
                    await asyncio.to_thread(self._hold, gate)
                return obj

            async def afetch_many(cls: Any, id_field: Any, id_vals: Any) -> Any:
                gate = self._enter(many=True, args=tuple(id_vals))
                found = fetch_many(cls, id_field, id_vals)
                if inspect.isawaitable(found):
                    found = await found
                if gate is not None:
                    await asyncio.to_thread(self._hold, gate)
                return found

            hooks: Any = target
            hooks.fetch, hooks.fetch_many = afetch, afetch_many
        else:

            def sfetch(cls: Any, id_field: Any, id_val: Any) -> Any:
                gate = self._enter(many=False, args=None)
                obj = fetch(cls, id_field, id_val)
                if gate is not None:
                    self._hold(gate)
                return obj

            def sfetch_many(cls: Any, id_field: Any, id_vals: Any) -> Any:
                gate = self._enter(many=True, args=tuple(id_vals))
                found = fetch_many(cls, id_field, id_vals)
                if gate is not None:
                    self._hold(gate)
                return found

            target.fetch, target.fetch_many = sfetch, sfetch_many
        target._fetch_probe = self

    @classmethod
    def of(cls, cache: Any) -> FetchProbe:
        """The probe already wrapped around the cache's hooks, or a new one."""
        probe = getattr(getattr(cache, "wrapped", cache), "_fetch_probe", None)
        return probe if isinstance(probe, FetchProbe) else cls(cache)

    def _enter(
        self, *, many: bool, args: tuple[Any, ...] | None
    ) -> tuple[threading.Event, threading.Event] | None:
        with self._lock:
            if many:
                self.many_calls += 1
                self.many_args.append(args or ())
            else:
                self.calls += 1
            gate = self._gates.pop(0) if self._gates else None
            failure, self.fail_next = self.fail_next, None
        if failure is not None:
            raise failure
        return gate

    @staticmethod
    def _hold(gate: tuple[threading.Event, threading.Event]) -> None:
        fetched, go = gate
        fetched.set()
        if not go.wait(GATE_TIMEOUT):
            raise AssertionError("the gated fetch was never released")

    def gate_next(self) -> None:
        """Hold the next fetch (or fetch_many) after its database read, until :meth:`release`."""
        self.fetched.clear()
        self.go.clear()
        with self._lock:
            self._gates.append((self.fetched, self.go))

    def wait_fetched(self) -> None:
        """Block until the gated fetch has read the database."""
        if not self.fetched.wait(GATE_TIMEOUT):
            raise AssertionError("the gated fetch never ran")

    def release(self) -> None:
        """Let the gated fetch return."""
        self.go.set()


class Reader(threading.Thread):
    """``cache.get(...)`` in a thread of its own; :meth:`outcome` gives its result or error."""

    def __init__(self, cache: Any, model: Any, field: Any, value: Any, many: bool = False) -> None:
        super().__init__(daemon=True)
        self.cache, self.args, self.many = cache, (model, field, value), many
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            call = self.cache.get_many if self.many else self.cache.get
            self.result = call(*self.args)
        except BaseException as exc:
            self.error = exc

    def outcome(self) -> Any:
        """Join the thread and return its result (re-raising its error)."""
        self.join(GATE_TIMEOUT)
        if self.is_alive():
            raise AssertionError("the reader never finished")
        if self.error is not None:
            raise self.error
        return self.result


@dataclass
class RaceOutcome:
    """What a race scenario saw: returned payloads, and the cache after each step."""

    returned: dict[str, str] = field(default_factory=dict)
    cached_after: dict[str, str | None] = field(default_factory=dict)
    final: str | None = None
    stale_commits: int = 0


class ContractBase:
    """What every part of the contract uses: what a subclass supplies, and helpers."""

    model: Any = "contract-item"
    field: Any = "id"

    # -- what a subclass supplies ---------------------------------------------------------------

    def make_cache(self, redis: redis.Redis, **options: Any) -> CacheCow:
        """A cache under test on ``redis``, built with ``options`` (constructor keywords)."""
        raise NotImplementedError

    def write(self, key: int, payload: str) -> None:
        """Insert or update the object ``key`` with ``payload``, committed."""
        raise NotImplementedError

    def delete(self, key: int) -> None:
        """Delete the object ``key``, committed."""
        raise NotImplementedError

    def payload_of(self, obj: Any) -> str:
        """The payload of an object the cache returned."""
        raise NotImplementedError

    def lookup(self, key: int) -> Any:
        """The lookup value (for :attr:`field`) of object ``key``."""
        return key

    # -- helpers --------------------------------------------------------------------------------

    @pytest.fixture(autouse=True)
    def _contract_redis(self, redis_client: redis.Redis) -> Iterator[None]:
        self.redis = redis_client
        try:
            yield
        finally:
            release_all_gates()

    def cache(self, **options: Any) -> CacheCow:
        options.setdefault("flag_ttl", 30.0)
        return self.make_cache(self.redis, **options)

    def get(self, cache: CacheCow, key: int) -> Any:
        return cache.get(self.model, self.field, self.lookup(key))

    def invalidate(self, cache: CacheCow, key: int) -> None:
        cache.invalidate(self.model, self.field, self.lookup(key))

    def keys(self, cache: CacheCow, key: int) -> tuple[str, str]:
        return cache.get_keys(self.model, self.field, self.lookup(key))

    def cached_payload(self, cache: CacheCow, key: int) -> str | None:
        """The payload the cache holds for ``key`` right now, or None (absent or tombstone)."""
        raw: bytes | None = self.redis.get(self.keys(cache, key)[0])  # type: ignore[assignment]
        if raw is None or raw == TOMBSTONE:
            return None
        return self.payload_of(cache.deserialize(self.model, raw))

    def reader(self, cache: CacheCow, key: int) -> Reader:
        thread = Reader(cache, self.model, self.field, self.lookup(key))
        thread.start()
        return thread

    def gated_reader(self, cache: CacheCow, key: int) -> tuple[FetchProbe, Reader]:
        """Start a reader of ``key`` and return once its fetch has read the database and is
        held at the gate, with its lease taken and not yet committed."""
        probe = FetchProbe.of(cache)
        probe.gate_next()
        thread = self.reader(cache, key)
        probe.wait_fetched()
        return probe, thread

    def wait_until(self, predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + GATE_TIMEOUT
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting until {what}")
            time.sleep(0.005)

    def get_many(self, cache: Any, keys: list[int]) -> list[str | None]:
        objs = cache.get_many(self.model, self.field, [self.lookup(k) for k in keys])
        return [None if obj is None else self.payload_of(obj) for obj in objs]

    def batch_reader(self, cache: Any, keys: list[int]) -> Reader:
        thread = Reader(cache, self.model, self.field, [self.lookup(k) for k in keys], many=True)
        thread.start()
        return thread


class RacePromises(ContractBase):
    """Races forced by gates inside ``fetch``: a value read before an invalidation is never
    cached after it; leases are given back on failure; busy readers follow their policy."""

    # -- race scenarios (each returns what it saw; the tests below assert on it) ----------------

    def scenario_aba(self, cache_a: CacheCow, cache_b: CacheCow, writer: CacheCow) -> RaceOutcome:
        """A leases and reads v1; the writer stores v2 and invalidates; B leases and reads v2;
        A commits; B commits."""
        out = RaceOutcome()
        self.write(1, "v1")
        probe_a, a = self.gated_reader(cache_a, 1)
        self.write(1, "v2")
        self.invalidate(writer, 1)
        probe_b, b = self.gated_reader(cache_b, 1)
        probe_a.release()
        out.returned["A"] = self.payload_of(a.outcome())
        out.cached_after["A commits"] = self.cached_payload(writer, 1)
        probe_b.release()
        out.returned["B"] = self.payload_of(b.outcome())
        out.cached_after["B commits"] = self.cached_payload(writer, 1)
        out.final = self.payload_of(self.get(writer, 1))
        out.stale_commits = cache_a.metrics.snapshot().stale_commits
        return out

    def scenario_invalidate_before_commit(self, cache: CacheCow, writer: CacheCow) -> RaceOutcome:
        """A leases and reads v1; the writer stores v2 and invalidates; A commits."""
        out = RaceOutcome()
        self.write(1, "v1")
        probe, a = self.gated_reader(cache, 1)
        self.write(1, "v2")
        self.invalidate(writer, 1)
        probe.release()
        out.returned["A"] = self.payload_of(a.outcome())
        out.cached_after["A commits"] = self.cached_payload(writer, 1)
        out.final = self.payload_of(self.get(writer, 1))
        out.stale_commits = cache.metrics.snapshot().stale_commits
        return out

    def scenario_lease_expires(self, cache_a: CacheCow, cache_b: CacheCow) -> RaceOutcome:
        """A leases (short flag_ttl) and reads v1; the lease expires; the row becomes v2 and is
        invalidated; B leases and reads v2; A commits; B commits."""
        out = RaceOutcome()
        self.write(1, "v1")
        probe_a, a = self.gated_reader(cache_a, 1)
        flag_key = self.keys(cache_a, 1)[1]
        self.wait_until(lambda: not self.redis.exists(flag_key), "A's lease expired")
        self.write(1, "v2")
        self.invalidate(cache_b, 1)
        probe_b, b = self.gated_reader(cache_b, 1)
        probe_a.release()
        out.returned["A"] = self.payload_of(a.outcome())
        out.cached_after["A commits"] = self.cached_payload(cache_b, 1)
        probe_b.release()
        out.returned["B"] = self.payload_of(b.outcome())
        out.cached_after["B commits"] = self.cached_payload(cache_b, 1)
        out.final = self.payload_of(self.get(cache_b, 1))
        out.stale_commits = cache_a.metrics.snapshot().stale_commits
        return out

    # -- races ----------------------------------------------------------------------------------

    def test_race_aba(self) -> None:
        """The seed's ABA bug: A's old value must never be cached under B's fresh lease."""
        out = self.scenario_aba(self.cache(), self.cache(), self.cache())
        assert out.returned == {"A": "v1", "B": "v2"}
        assert out.cached_after == {"A commits": None, "B commits": "v2"}
        assert out.final == "v2"
        assert out.stale_commits == 1

    def test_race_invalidate_between_fetch_and_commit(self) -> None:
        out = self.scenario_invalidate_before_commit(self.cache(), self.cache())
        assert out.returned == {"A": "v1"}
        assert out.cached_after == {"A commits": None}
        assert out.final == "v2"
        assert out.stale_commits == 1

    def test_race_fetch_outlives_flag_ttl(self) -> None:
        out = self.scenario_lease_expires(self.cache(flag_ttl=0.2), self.cache())
        assert out.returned == {"A": "v1", "B": "v2"}
        assert out.cached_after == {"A commits": None, "B commits": "v2"}
        assert out.final == "v2"
        assert out.stale_commits == 1

    def test_fetch_outliving_its_lease_never_writes(self) -> None:
        """Even with no other reader and no invalidation, an expired lease writes nothing."""
        self.write(1, "v1")
        cache = self.cache(flag_ttl=0.2)
        probe, a = self.gated_reader(cache, 1)
        value_key, flag_key = self.keys(cache, 1)
        self.wait_until(lambda: not self.redis.exists(flag_key), "the lease expired")
        probe.release()
        assert self.payload_of(a.outcome()) == "v1"
        assert not self.redis.exists(value_key)
        assert cache.metrics.snapshot().stale_commits == 1

    def test_failed_fetch_releases_lease_then_next_reader_caches(self) -> None:
        self.write(1, "v1")
        cache = self.cache()
        probe = FetchProbe(cache)
        boom = RuntimeError("database down")
        probe.fail_next = boom
        value_key, flag_key = self.keys(cache, 1)
        with pytest.raises(RuntimeError) as raised:
            self.get(cache, 1)
        assert raised.value is boom  # re-raised unchanged
        assert not self.redis.exists(flag_key)  # released at once, not left to expire
        assert not self.redis.exists(value_key)
        assert self.payload_of(self.get(cache, 1)) == "v1"
        assert self.cached_payload(cache, 1) == "v1"
        assert self.payload_of(self.get(cache, 1)) == "v1"
        assert probe.calls == 2  # the third get was a hit

    def test_failed_serialize_releases_lease(self) -> None:
        self.write(1, "v1")
        cache = self.cache()
        boom = TypeError("cannot serialize")

        def refuse(obj: Any) -> bytes:
            raise boom

        cache.serialize = refuse  # type: ignore[method-assign]
        with pytest.raises(TypeError) as raised:
            self.get(cache, 1)
        assert raised.value is boom
        assert not self.redis.exists(self.keys(cache, 1)[1])

    def test_busy_reader_fetch_policy(self) -> None:
        """A busy reader under "fetch" reads the database itself and caches nothing."""
        self.write(1, "v1")
        holder, busy = self.cache(), self.cache(busy="fetch")
        probe_b = FetchProbe(busy)
        probe_h, h = self.gated_reader(holder, 1)
        value_key, flag_key = self.keys(holder, 1)
        token = self.redis.get(flag_key)
        assert self.payload_of(self.get(busy, 1)) == "v1"
        assert probe_b.calls == 1
        assert not self.redis.exists(value_key)  # the busy reader cached nothing
        assert self.redis.get(flag_key) == token  # and left the holder's lease alone
        snap = busy.metrics.snapshot()
        assert (snap.busy, snap.leases, snap.commits, snap.waits) == (1, 0, 0, 0)
        probe_h.release()
        assert self.payload_of(h.outcome()) == "v1"
        assert self.cached_payload(holder, 1) == "v1"

    def test_busy_reader_wait_policy_gets_holders_value(self) -> None:
        """A busy reader under "wait" gets the holder's committed value, with no fetch."""
        self.write(1, "v1")
        holder, waiter = self.cache(), self.cache(busy="wait", wait_timeout=GATE_TIMEOUT)
        probe_w = FetchProbe(waiter)
        probe_h, h = self.gated_reader(holder, 1)
        w = self.reader(waiter, 1)
        self.wait_until(lambda: waiter.metrics.snapshot().waits == 1, "the reader waits")
        assert w.is_alive()
        probe_h.release()
        assert self.payload_of(h.outcome()) == "v1"
        assert self.payload_of(w.outcome()) == "v1"
        assert probe_w.calls == 0
        snap = waiter.metrics.snapshot()
        assert (snap.busy, snap.waits, snap.hits, snap.wait_timeouts) == (1, 1, 1, 0)

    def test_busy_reader_wait_policy_times_out_then_fetches(self) -> None:
        """The wait is bounded (fake clock: no real sleeping); then it fetches, uncached."""
        self.write(1, "v1")
        holder = self.cache()
        clock = FakeClock()
        waiter = self.cache(busy="wait", wait_timeout=0.5, clock=clock)
        probe_w = FetchProbe(waiter)
        probe_h, h = self.gated_reader(holder, 1)
        assert self.payload_of(self.get(waiter, 1)) == "v1"
        assert probe_w.calls == 1
        assert sum(clock.sleeps) == pytest.approx(0.5)
        assert max(clock.sleeps) <= waiter.wait_max_delay
        assert len(clock.sleeps) > 3  # it backed off: several polls, growing
        assert clock.sleeps[0] < clock.sleeps[3]
        assert not self.redis.exists(self.keys(holder, 1)[0])
        snap = waiter.metrics.snapshot()
        assert (snap.waits, snap.wait_timeouts, snap.leases) == (1, 1, 0)
        probe_h.release()
        h.outcome()

    def test_waiter_takes_over_a_dead_holders_lease(self) -> None:
        """A holder that died leaves its flag to expire; a waiter then leases and caches."""
        self.write(1, "v1")
        waiter = self.cache(busy="wait", wait_timeout=GATE_TIMEOUT)
        probe = FetchProbe(waiter)
        flag_key = self.keys(waiter, 1)[1]
        self.redis.set(flag_key, b"dead-reader-token", px=300)
        assert self.payload_of(self.get(waiter, 1)) == "v1"
        assert probe.calls == 1
        assert self.cached_payload(waiter, 1) == "v1"
        snap = waiter.metrics.snapshot()
        assert (snap.waits, snap.leases, snap.commits) == (1, 1, 1)


class BatchPromises(ContractBase):
    """``get_many``: order, round trips, and the same race promises for batches."""

    # -- batches --------------------------------------------------------------------------------

    def test_get_many_keeps_order_duplicates_and_missing(self) -> None:
        for key in (1, 2, 3):
            self.write(key, f"v{key}")
        cache = self.cache()
        probe = FetchProbe(cache)
        assert self.get_many(cache, [3, 1, 404, 3]) == ["v3", "v1", None, "v3"]
        assert probe.many_calls == 1
        assert self.get_many(cache, [3, 1, 404, 3, 2]) == ["v3", "v1", None, "v3", "v2"]
        assert probe.many_calls == 2  # only key 2 was fetched: the rest were hits or a tombstone
        assert probe.many_args[1] == (self.lookup(2),)
        snap = cache.metrics.snapshot()
        assert (snap.hits, snap.tombstone_hits, snap.commits) == (2, 1, 4)
        with pytest.raises(type(cache.not_found(self.model, self.field, self.lookup(404)))):
            self.get(cache, 404)  # get agrees with the batch's tombstone

    def test_get_many_round_trips(self, counting_redis: Any) -> None:
        """100 hits: 1 round trip. 100 misses: 2 and one fetch_many. invalidate_many: 1."""
        for key in range(1, 101):
            self.write(key, f"v{key}")
        cache = self.make_cache(counting_redis, flag_ttl=30.0)
        probe = FetchProbe(cache)
        self.get_many(cache, [1000])  # loads the scripts into the server
        keys = list(range(1, 101))
        counting_redis.reset_round_trips()
        assert self.get_many(cache, keys) == [f"v{k}" for k in keys]
        assert counting_redis.round_trips == 2
        assert probe.many_calls == 2  # the warm-up's and this one
        counting_redis.reset_round_trips()
        assert self.get_many(cache, keys) == [f"v{k}" for k in keys]
        assert counting_redis.round_trips == 1
        assert probe.many_calls == 2
        counting_redis.reset_round_trips()
        cache.invalidate_many(self.model, self.field, [self.lookup(k) for k in keys])
        assert counting_redis.round_trips == 1
        assert all(self.cached_payload(cache, k) is None for k in keys)

    def test_get_many_race_invalidate_between_fetch_and_commit(self) -> None:
        self.write(1, "v1")
        self.write(2, "w1")
        cache = self.cache()
        probe = FetchProbe(cache)
        probe.gate_next()
        batch = self.batch_reader(cache, [1, 2])
        probe.wait_fetched()
        self.write(1, "v2")
        self.invalidate(cache, 1)
        probe.release()
        assert [self.payload_of(o) for o in batch.outcome()] == ["v1", "w1"]
        assert self.cached_payload(cache, 1) is None  # refused: its lease was voided
        assert self.cached_payload(cache, 2) == "w1"
        snap = cache.metrics.snapshot()
        assert (snap.commits, snap.stale_commits) == (1, 1)
        assert self.payload_of(self.get(cache, 1)) == "v2"

    def test_get_many_race_aba(self) -> None:
        """A batch reader's old value must not be cached under a single reader's fresh lease."""
        self.write(1, "v1")
        batch_cache, single_cache = self.cache(), self.cache()
        probe_a = FetchProbe(batch_cache)
        probe_a.gate_next()
        a = self.batch_reader(batch_cache, [1])
        probe_a.wait_fetched()
        self.write(1, "v2")
        self.invalidate(single_cache, 1)
        probe_b, b = self.gated_reader(single_cache, 1)
        probe_a.release()
        assert [self.payload_of(o) for o in a.outcome()] == ["v1"]
        assert self.cached_payload(single_cache, 1) is None
        probe_b.release()
        assert self.payload_of(b.outcome()) == "v2"
        assert self.cached_payload(single_cache, 1) == "v2"
        assert batch_cache.metrics.snapshot().stale_commits == 1

    def test_get_many_fetch_many_error_releases_every_lease(self) -> None:
        for key in (1, 2, 3):
            self.write(key, f"v{key}")
        cache = self.cache()
        probe = FetchProbe(cache)
        boom = RuntimeError("database down")
        probe.fail_next = boom
        with pytest.raises(RuntimeError) as raised:
            self.get_many(cache, [1, 2, 3])
        assert raised.value is boom
        for key in (1, 2, 3):
            assert self.redis.exists(*self.keys(cache, key)) == 0
        assert self.get_many(cache, [1, 2, 3]) == ["v1", "v2", "v3"]

    def test_get_many_busy_fetch_policy_uses_one_fetch_many(self) -> None:
        self.write(1, "v1")
        self.write(2, "v2")
        holder = self.cache()
        batch = self.cache(busy="fetch")
        probe_b = FetchProbe(batch)
        probe_h, h = self.gated_reader(holder, 1)
        token = self.redis.get(self.keys(holder, 1)[1])
        assert self.get_many(batch, [1, 2]) == ["v1", "v2"]
        assert probe_b.many_calls == 1
        assert sorted(probe_b.many_args[0]) == sorted((self.lookup(1), self.lookup(2)))
        assert self.cached_payload(batch, 2) == "v2"  # its own lease: cached
        assert self.cached_payload(batch, 1) is None  # the busy one: not cached
        assert self.redis.get(self.keys(holder, 1)[1]) == token
        probe_h.release()
        assert self.payload_of(h.outcome()) == "v1"

    def test_get_many_busy_wait_policy_fills_its_own_leases_first(self) -> None:
        self.write(1, "v1")
        self.write(2, "v2")
        holder = self.cache()
        batch = self.cache(busy="wait", wait_timeout=GATE_TIMEOUT)
        probe_b = FetchProbe(batch)
        probe_h, h = self.gated_reader(holder, 1)
        b = self.batch_reader(batch, [1, 2])
        self.wait_until(lambda: batch.metrics.snapshot().waits == 1, "the batch waits for key 1")
        assert self.cached_payload(batch, 2) == "v2"  # filled before waiting
        probe_h.release()
        assert [self.payload_of(o) for o in b.outcome()] == ["v1", "v2"]
        assert probe_b.many_calls == 1  # key 1 came from the holder's commit
        assert self.payload_of(h.outcome()) == "v1"

    def test_get_many_wait_times_out_then_fetches_uncached(self) -> None:
        self.write(1, "v1")
        holder = self.cache()
        clock = FakeClock()
        batch = self.cache(busy="wait", wait_timeout=0.5, clock=clock)
        probe_b = FetchProbe(batch)
        probe_h, h = self.gated_reader(holder, 1)
        assert self.get_many(batch, [1]) == ["v1"]
        assert sum(clock.sleeps) == pytest.approx(0.5)
        assert probe_b.many_calls == 1
        assert self.cached_payload(batch, 1) is None
        assert batch.metrics.snapshot().wait_timeouts == 1
        probe_h.release()
        h.outcome()


class SharedReadPromises(ContractBase):
    """Herds and single flight: readers of one key share one read, and never an old one."""

    # -- herds ----------------------------------------------------------------------------------

    def test_herd_of_64_readers_makes_one_fetch(self) -> None:
        """64 readers of a cold key in 64 processes (cache instances): one lease, one fetch;
        the others wait for the holder's value."""
        self.write(1, "v1")
        cache = self.cache(busy="wait", wait_timeout=GATE_TIMEOUT)
        others = [self.cache(busy="wait", wait_timeout=GATE_TIMEOUT) for _ in range(63)]
        probe, holder = self.gated_reader(cache, 1)
        readers = [self.reader(other, 1) for other in others]
        self.wait_until(
            lambda: sum(o.metrics.snapshot().waits for o in others) == 63, "63 readers wait"
        )
        probe.release()
        assert {self.payload_of(r.outcome()) for r in [holder, *readers]} == {"v1"}
        assert probe.calls == 1
        assert sum(FetchProbe.of(o).calls for o in others) == 0
        snaps = [o.metrics.snapshot() for o in [cache, *others]]
        assert sum(s.leases for s in snaps) == 1
        assert (sum(s.hits for s in snaps), sum(s.wait_timeouts for s in snaps)) == (63, 0)

    def joined(self, cache: CacheCow, key: int) -> int:
        """How many readers joined the read of ``key`` in flight in ``cache`` (0 if none)."""
        flights = getattr(cache, "wrapped", cache)._flights.by_key
        flight = flights.get(self.keys(cache, key)[0])
        return 0 if flight is None else int(flight.joined)

    def test_herd_in_one_process_shares_one_read(self) -> None:
        """Readers of one key in one process join the read in flight: while its holder waits
        for another process's lease, 63 readers make no call of their own, and all get the
        value the holder's next poll finds."""
        self.write(1, "v1")
        elsewhere = self.cache()
        probe, holder = self.gated_reader(elsewhere, 1)
        cache = self.cache(busy="wait", wait_timeout=GATE_TIMEOUT)
        leader = self.reader(cache, 1)
        self.wait_until(lambda: cache.metrics.snapshot().waits == 1, "the leader waits")
        followers = [self.reader(cache, 1) for _ in range(63)]
        self.wait_until(lambda: self.joined(cache, 1) == 63, "63 readers joined")
        probe.release()
        assert {self.payload_of(r.outcome()) for r in [holder, leader, *followers]} == {"v1"}
        assert FetchProbe.of(cache).calls == 0
        snap = cache.metrics.snapshot()
        assert (snap.waits, snap.hits, snap.joined, snap.leases) == (1, 1, 63, 0)

    def test_reader_joining_after_the_fetch_never_gets_its_value(self) -> None:
        """A reader that joins a read in flight after its fetch read the database (here, after
        its own process wrote and invalidated) does not take that read's value: it reads
        again, and gets the new one."""
        self.write(1, "v1")
        cache = self.cache(busy="wait", wait_timeout=GATE_TIMEOUT)
        probe, holder = self.gated_reader(cache, 1)  # has read v1, not yet committed
        self.write(1, "v2")
        self.invalidate(cache, 1)
        late = self.reader(cache, 1)
        self.wait_until(lambda: self.joined(cache, 1) == 1, "the reader joined")
        probe.release()
        assert self.payload_of(holder.outcome()) == "v1"
        assert self.payload_of(late.outcome()) == "v2"
        assert cache.metrics.snapshot().stale_commits == 1
        assert self.cached_payload(cache, 1) == "v2"

    def test_joiners_share_a_fetch_error_and_a_not_found(self) -> None:
        """Readers that joined before the holder's fetch get what it got: its exception, or
        "no such object" (each its own exception)."""
        cache = self.cache(busy="wait", wait_timeout=GATE_TIMEOUT)
        elsewhere = self.cache()
        for fail in (RuntimeError("database down"), None):
            self.write(9, "v1")
            self.invalidate(cache, 9)
            probe, holder = self.gated_reader(elsewhere, 9)  # has read v1, lease held
            leader = self.reader(cache, 9)
            self.wait_until(lambda: cache.metrics.snapshot().busy >= 1, "the leader waits")
            follower = self.reader(cache, 9)
            self.wait_until(lambda: self.joined(cache, 9) == 1, "the reader joined")
            if fail is None:
                self.delete(9)
            FetchProbe.of(cache).fail_next = fail
            self.invalidate(elsewhere, 9)  # voids the lease: the leader leases and fetches
            probe.release()
            for reader in (leader, follower):
                reader.join(GATE_TIMEOUT)
            outcomes = [leader.error, follower.error]
            if fail is not None:
                assert outcomes == [fail, fail]
            else:
                missing = type(cache.not_found(self.model, self.field, self.lookup(9)))
                assert [type(e) for e in outcomes] == [missing, missing]
                assert outcomes[0] is not outcomes[1]
            holder.join(GATE_TIMEOUT)
            cache.metrics.reset()

    def test_batches_and_gets_in_one_process_share_reads(self) -> None:
        """Batches join the reads in flight key by key, as gets do: while a batch waits for
        another process's lease on key 1, 8 batches of [2, 1] and 8 gets of 1 make no call
        for key 1 of their own; key 2, which the first batch had already filled when they
        came, they read again (a hit), together."""
        self.write(1, "v1")
        self.write(2, "v2")
        elsewhere = self.cache()
        probe, holder = self.gated_reader(elsewhere, 1)
        cache = self.cache(busy="wait", wait_timeout=GATE_TIMEOUT)
        fetches = FetchProbe(cache)
        leader = self.batch_reader(cache, [1, 2])
        self.wait_until(lambda: cache.metrics.snapshot().waits == 1, "the batch waits for 1")
        batches = [self.batch_reader(cache, [2, 1]) for _ in range(8)]
        singles = [self.reader(cache, 1) for _ in range(8)]
        self.wait_until(lambda: self.joined(cache, 1) == 16, "16 readers joined key 1")
        probe.release()
        assert [self.payload_of(o) for o in leader.outcome()] == ["v1", "v2"]
        for batch in batches:
            assert [self.payload_of(o) for o in batch.outcome()] == ["v2", "v1"]
        assert {self.payload_of(r.outcome()) for r in singles} == {"v1"}
        snap = cache.metrics.snapshot()
        assert (fetches.many_calls, snap.fetches) == (1, 1), snap  # key 2, by the first batch
        # key 1: 16 joined the batch's wait; key 2: one of the 8 read it again, 7 joined it
        assert (snap.joined, snap.waits, snap.leases, snap.hits) == (23, 1, 1, 2), snap
        assert self.payload_of(holder.outcome()) == "v1"

    def test_batch_joining_after_the_fetch_never_gets_its_value(self) -> None:
        """A batch or a get that joins a batch's read after its fetch_many read the database
        (here, after its own process wrote and invalidated) reads again, and gets the new
        value; the batch's old value is refused at commit."""
        self.write(1, "v1")
        cache = self.cache(busy="wait", wait_timeout=GATE_TIMEOUT)
        probe = FetchProbe.of(cache)
        probe.gate_next()
        leader = self.batch_reader(cache, [1])
        probe.wait_fetched()  # has read v1, not yet committed
        self.write(1, "v2")
        self.invalidate(cache, 1)
        late_batch = self.batch_reader(cache, [1])
        late_get = self.reader(cache, 1)
        self.wait_until(lambda: self.joined(cache, 1) == 2, "two readers joined")
        probe.release()
        assert [self.payload_of(o) for o in leader.outcome()] == ["v1"]
        assert [self.payload_of(o) for o in late_batch.outcome()] == ["v2"]
        assert self.payload_of(late_get.outcome()) == "v2"
        assert cache.metrics.snapshot().stale_commits == 1
        assert self.cached_payload(cache, 1) == "v2"

    def test_batch_followers_share_a_fetch_error_and_a_not_found(self) -> None:
        """The followers of a batch's read get what its fetch_many got: its exception, or "no
        such object" (None in a batch, the not-found exception for a get)."""
        cache = self.cache(busy="wait", wait_timeout=GATE_TIMEOUT)
        fetches = FetchProbe(cache)
        elsewhere = self.cache()
        missing = type(cache.not_found(self.model, self.field, self.lookup(9)))
        for fail in (RuntimeError("database down"), None):
            self.write(9, "v1")
            self.invalidate(cache, 9)
            probe, holder = self.gated_reader(elsewhere, 9)  # has read v1, lease held
            leader = self.batch_reader(cache, [9])
            self.wait_until(lambda: cache.metrics.snapshot().busy >= 1, "the batch waits")
            batch, single = self.batch_reader(cache, [9]), self.reader(cache, 9)
            self.wait_until(lambda: self.joined(cache, 9) == 2, "two readers joined")
            if fail is None:
                self.delete(9)
            fetches.fail_next = fail
            self.invalidate(elsewhere, 9)  # voids the lease: the batch leases and fetches
            probe.release()
            for reader in (leader, batch, single):
                reader.join(GATE_TIMEOUT)
            if fail is not None:
                assert [leader.error, batch.error, single.error] == [fail] * 3
            else:
                assert (leader.outcome(), batch.outcome()) == ([None], [None])
                assert type(single.error) is missing
            snap = cache.metrics.snapshot()
            assert (fetches.many_calls, snap.fetches) == (1, 1), snap
            holder.join(GATE_TIMEOUT)
            fetches.many_calls = 0
            cache.metrics.reset()

    def test_batch_waits_for_others_only_after_landing_its_own(self) -> None:
        """A batch that leads some keys and follows others fills and lands its own first, so
        batches that overlap never wait on each other."""
        self.write(1, "v1")
        self.write(2, "v2")
        cache = self.cache(busy="wait", wait_timeout=GATE_TIMEOUT)
        probe = FetchProbe.of(cache)
        probe.gate_next()
        first = self.batch_reader(cache, [1])
        probe.wait_fetched()
        second = self.batch_reader(cache, [2, 1])  # leads 2, follows 1
        self.wait_until(lambda: self.joined(cache, 1) == 1, "the second batch joined key 1")
        flights = getattr(cache, "wrapped", cache)._flights.by_key
        # key 2 is filled and landed while key 1 is still being read
        self.wait_until(lambda: self.keys(cache, 2)[0] not in flights, "key 2 is landed")
        assert self.cached_payload(cache, 2) == "v2"
        assert probe.many_calls == 2
        probe.release()
        assert [self.payload_of(o) for o in first.outcome()] == ["v1"]
        assert [self.payload_of(o) for o in second.outcome()] == ["v2", "v1"]

    def test_waiter_never_returns_a_value_older_than_an_invalidation(self) -> None:
        """A reader waiting on a lease that an invalidation then voids does not get the old
        holder's value: it leases and fetches the new one itself."""
        self.write(1, "v1")
        holder = self.cache()
        waiter = self.cache(busy="wait", wait_timeout=GATE_TIMEOUT)
        probe_h, h = self.gated_reader(holder, 1)
        w = self.reader(waiter, 1)
        self.wait_until(lambda: waiter.metrics.snapshot().waits == 1, "the reader waits")
        self.write(1, "v2")
        self.invalidate(holder, 1)
        assert self.payload_of(w.outcome()) == "v2"
        probe_h.release()
        assert self.payload_of(h.outcome()) == "v1"
        assert holder.metrics.snapshot().stale_commits == 1
        assert self.cached_payload(holder, 1) == "v2"


class BasicPromises(ContractBase):
    """Misses, hits, invalidations, TTLs, tombstones, repairs, keys and round trips."""

    # -- invalidating objects -------------------------------------------------------------------

    def test_invalidate_object(self) -> None:
        self.write(1, "v1")
        cache = self.cache()
        obj = self.get(cache, 1)
        self.write(1, "v2")
        cache.invalidate_object(obj, model=self.model)
        assert self.payload_of(self.get(cache, 1)) == "v2"

    def test_invalidate_lookups(self, counting_redis: Any) -> None:
        for key in (1, 2):
            self.write(key, f"v{key}")
        cache = self.make_cache(counting_redis, flag_ttl=30.0)
        self.get_many(cache, [1, 2])
        counting_redis.reset_round_trips()
        cache.invalidate_lookups([(self.model, self.field, self.lookup(k)) for k in (1, 2)])
        assert counting_redis.round_trips == 1
        assert self.cached_payload(cache, 1) is None
        assert self.cached_payload(cache, 2) is None

    # -- the basic promises ---------------------------------------------------------------------

    def test_miss_then_hit(self) -> None:
        self.write(1, "v1")
        cache = self.cache()
        probe = FetchProbe(cache)
        assert self.payload_of(self.get(cache, 1)) == "v1"
        assert self.payload_of(self.get(cache, 1)) == "v1"
        assert probe.calls == 1
        snap = cache.metrics.snapshot()
        assert (snap.misses, snap.leases, snap.commits, snap.hits) == (1, 1, 1, 1)

    def test_invalidate_then_get_refetches(self) -> None:
        self.write(1, "v1")
        cache = self.cache()
        probe = FetchProbe(cache)
        self.get(cache, 1)
        self.write(1, "v2")
        self.invalidate(cache, 1)
        assert self.redis.exists(*self.keys(cache, 1)) == 0
        assert self.payload_of(self.get(cache, 1)) == "v2"
        assert self.payload_of(self.get(cache, 1)) == "v2"
        assert probe.calls == 2

    def test_value_key_holds_exactly_the_serialized_bytes(self) -> None:
        self.write(1, "v1")
        cache = self.cache()
        obj = self.get(cache, 1)
        assert self.redis.get(self.keys(cache, 1)[0]) == cache.serialize(obj)

    def test_value_ttl_is_finite_and_jittered(self) -> None:
        cache = self.cache(ttl=100.0, ttl_jitter=0.5)
        ttls = []
        for key in range(1, 41):
            self.write(key, f"p{key}")
            self.get(cache, key)
            ttls.append(self.redis.pttl(self.keys(cache, key)[0]))
        assert all(50_000 - 1_000 <= t <= 100_000 for t in ttls), ttls
        assert len(set(ttls)) > 20  # spread, not one value

    def test_value_ttl_without_jitter(self) -> None:
        self.write(1, "v1")
        cache = self.cache(ttl=60.0, ttl_jitter=0.0)
        self.get(cache, 1)
        assert 59_000 <= self.redis.pttl(self.keys(cache, 1)[0]) <= 60_000

    def test_lease_has_flag_ttl(self) -> None:
        self.write(1, "v1")
        cache = self.cache(flag_ttl=7.0)
        probe, a = self.gated_reader(cache, 1)
        assert 6_000 <= self.redis.pttl(self.keys(cache, 1)[1]) <= 7_000
        probe.release()
        a.outcome()
        assert not self.redis.exists(self.keys(cache, 1)[1])  # the commit released it

    def test_not_found_is_cached_as_a_tombstone(self) -> None:
        cache = self.cache(tombstone_ttl=5.0)
        probe = FetchProbe(cache)
        expected = type(cache.not_found(self.model, self.field, self.lookup(404)))
        with pytest.raises(expected):
            self.get(cache, 404)
        value_key = self.keys(cache, 404)[0]
        assert self.redis.get(value_key) == TOMBSTONE
        assert 4_000 <= self.redis.pttl(value_key) <= 5_000
        with pytest.raises(expected):
            self.get(cache, 404)
        assert probe.calls == 1  # the second answer came from the tombstone
        assert cache.metrics.snapshot().tombstone_hits == 1
        self.write(404, "now-exists")
        self.invalidate(cache, 404)
        assert self.payload_of(self.get(cache, 404)) == "now-exists"
        assert probe.calls == 2

    def test_delete_then_invalidate_gives_not_found(self) -> None:
        self.write(1, "v1")
        cache = self.cache()
        self.get(cache, 1)
        self.delete(1)
        self.invalidate(cache, 1)
        with pytest.raises(type(cache.not_found(self.model, self.field, self.lookup(1)))):
            self.get(cache, 1)

    def test_undecodable_value_is_a_miss_and_repaired(self) -> None:
        self.write(1, "v1")
        cache = self.cache()
        probe = FetchProbe(cache)
        value_key = self.keys(cache, 1)[0]
        self.redis.set(value_key, b"\xff\xfe not a value", px=60_000)
        assert self.payload_of(self.get(cache, 1)) == "v1"
        assert cache.metrics.snapshot().decode_failures == 1
        assert self.cached_payload(cache, 1) == "v1"  # repaired by the same get
        self.get(cache, 1)
        assert probe.calls == 1

    def test_wrong_object_is_a_miss_and_repaired(self) -> None:
        self.write(1, "v1")
        self.write(2, "v2")
        cache = self.cache()
        self.get(cache, 2)
        key1, key2 = self.keys(cache, 1)[0], self.keys(cache, 2)[0]
        payload2 = self.redis.get(key2)
        assert payload2 is not None
        self.redis.set(key1, payload2, px=60_000)  # object 2 where object 1 belongs
        assert self.payload_of(self.get(cache, 1)) == "v1"
        assert cache.metrics.snapshot().verify_failures == 1
        assert self.cached_payload(cache, 1) == "v1"

    def test_keys_share_one_cluster_slot(self) -> None:
        from redis.crc import key_slot

        cache = self.cache()
        for key in range(50):
            value_key, flag_key = self.keys(cache, key)
            assert value_key != flag_key
            assert key_slot(value_key.encode()) == key_slot(flag_key.encode())

    def test_round_trips(self, counting_redis: Any) -> None:
        """Hit: 1 round trip. Miss: 2. Invalidate: 1."""
        self.write(1, "v1")
        self.write(2, "v2")
        cache = self.make_cache(counting_redis, flag_ttl=30.0)
        self.get(cache, 2)  # loads the scripts into the server
        counting_redis.reset_round_trips()
        self.get(cache, 1)
        assert counting_redis.round_trips == 2
        counting_redis.reset_round_trips()
        self.get(cache, 1)
        assert counting_redis.round_trips == 1
        counting_redis.reset_round_trips()
        self.invalidate(cache, 1)
        assert counting_redis.round_trips == 1

    def test_fetch_errors_propagate_unchanged_and_are_not_cachecow_errors(self) -> None:
        self.write(1, "v1")
        cache = self.cache()
        probe = FetchProbe(cache)

        class DatabaseError(Exception):
            pass

        probe.fail_next = DatabaseError("x")
        with pytest.raises(DatabaseError) as raised:
            self.get(cache, 1)
        assert not isinstance(raised.value, CacheCowError)


class CacheCowContract(BasicPromises, RacePromises, BatchPromises, SharedReadPromises):
    """The protocol's promises (docs/protocol.md), as tests any cache class can be run against.

    Subclass it (its name starting with ``Test``) and implement :meth:`make_cache`, and the
    data methods (``write``, ``delete``, ``payload_of``, ``lookup``) if the default storage does
    not fit; every promise then runs against your class.
    """


class AsyncCacheCowContract(CacheCowContract):
    """The same contract, against an :class:`~cachecow.AsyncCacheCow`.

    Implement :meth:`make_async_cache` instead of ``make_cache``. Each cache runs on an event
    loop in a thread of its own test (:class:`~cachecow.testing.bridge.SyncFacade`), so every
    scenario, race and herd above drives the async class unchanged, as concurrent tasks.
    """

    def make_async_cache(self, redis: aredis.Redis, **options: Any) -> AsyncCacheCow:
        """An async cache under test on ``redis`` (a ``redis.asyncio`` client)."""
        raise NotImplementedError

    @pytest.fixture(autouse=True)
    def _event_loop_thread(self) -> Iterator[None]:
        self._runner = LoopThread()
        self._async_clients: list[aredis.Redis] = []
        try:
            yield
        finally:
            release_all_gates()
            for client in self._async_clients:
                self._runner.run(client.aclose())
            self._runner.close()

    def make_cache(self, redis: redis.Redis, **options: Any) -> Any:
        async def build() -> AsyncCacheCow:
            client = async_twin(redis)
            self._async_clients.append(client)
            return self.make_async_cache(client, **options)

        return SyncFacade(self._runner.run(build()), self._runner)
