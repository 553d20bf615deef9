"""A workload for the fault suite: readers and writers on a small table while Redis misbehaves.

Readers call ``get`` (and now and then ``get_many``) and check every answer against the
*floor* of each row: the newest version whose invalidation had returned before the read began.
An answer older than its floor is a stale read: exactly what the protocol promises never to
give. Writers bump a row's version and invalidate it; an invalidation that raises is a failure
the caller sees, and the writer retries it until it succeeds, as the write path of an
application must (nothing else would ever clear that entry before its TTL).

Each run gives a :class:`Report`: operations attempted, failures the callers saw (by kind),
stale reads during the run, stale values left in Redis after recovery, and the worst latency
of any single call. Reports are collected in :data:`REPORTS` and printed at the end of the
test session (see ``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import gc
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.exceptions import RedisError

from cachecow import AsyncCacheCow, CacheCow, CacheUnavailable, InvalidationFailed
from cachecow.testing.bridge import LoopThread, SyncFacade

KEYS = 24

REPORTS: list[Report] = []


@dataclass
class Report:
    scenario: str
    setting: str
    attempted: int = 0
    read_failures: dict[str, int] = field(default_factory=dict)
    invalidation_failures: int = 0
    stale_reads: int = 0
    stale_after_recovery: int = 0
    worst_latency: float = 0.0
    # the longest the process stood still during the run (a garbage collection, the machine
    # busy elsewhere), seen by a thread that sleeps 2 ms at a time: time no Redis call spent
    stall: float = 0.0
    seconds: float = 0.0
    # what went wrong, for a failing test's message: the first few read errors whose cause is
    # not a Redis failure (such as an unexpected script reply), and the first few stale reads
    odd_failures: list[str] = field(default_factory=list)
    stale_examples: list[str] = field(default_factory=list)

    @property
    def failures(self) -> int:
        """Every failure a caller saw: reads that raised and invalidations that raised."""
        return sum(self.read_failures.values()) + self.invalidation_failures

    def detail(self) -> str:
        """Every field in full, as an assertion's message (pytest cuts a repr at 240 chars)."""
        return repr(self)

    def row(self) -> str:
        reads = ", ".join(f"{k} {v}" for k, v in sorted(self.read_failures.items())) or "0"
        return (
            f"{self.scenario:<40} {self.setting:<37} {self.attempted:>7} {reads:>22} "
            f"{self.invalidation_failures:>7} {self.stale_reads:>6} "
            f"{self.stale_after_recovery:>6} {self.worst_latency * 1000:>8.0f} "
            f"{self.stall * 1000:>8.0f}"
        )

    def within(self, bound: float) -> bool:
        """Whether every call took less than ``bound`` seconds, apart from the process's own
        longest stall (which delays a call whatever it waits on)."""
        return self.worst_latency < bound + self.stall

    @staticmethod
    def header() -> str:
        return (
            f"{'scenario':<40} {'setting':<37} {'ops':>7} {'reads failed':>22} "
            f"{'inv.err':>7} {'stale':>6} {'after':>6} {'worst ms':>8} {'stall ms':>8}"
        )


class Table:
    """The database: versioned rows, each write under a lock."""

    def __init__(self) -> None:
        self.rows = {k: {"id": k, "version": 0} for k in range(KEYS)}
        self.lock = threading.Lock()

    def read(self, key: int) -> dict[str, int] | None:
        with self.lock:
            row = self.rows.get(key)
            return dict(row) if row is not None else None

    def bump(self, key: int) -> int:
        with self.lock:
            self.rows[key]["version"] += 1
            return self.rows[key]["version"]


class TableCache(CacheCow):
    """The sync cache of a :class:`Table`."""

    def __init__(self, redis: Any, table: Table, **options: Any) -> None:
        super().__init__(redis, **options)
        self.table = table

    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        return self.table.read(id_val)


class AsyncTableCache(AsyncCacheCow):
    """The asyncio cache of a :class:`Table` (drive it through a ``SyncFacade``)."""

    def __init__(self, redis: Any, table: Table, **options: Any) -> None:
        super().__init__(redis, **options)
        self.table = table

    async def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        return self.table.read(id_val)


MODES = ["sync", "asyncio"]

# redis-py 8.1's asyncio cluster client leaks a connection when a failover replaces a node
# while that connection is in use: the node leaves the client's map, nothing closes the
# connection, and the garbage collector warns (ResourceWarning, an error under this suite's
# filters). Only those three warnings are ignored, only in the asyncio failover scenarios.
ASYNC_CLUSTER_LEAK = [
    pytest.mark.filterwarnings("ignore:Unclosed ClusterNode object:ResourceWarning"),
    pytest.mark.filterwarnings("ignore:unclosed Connection <redis.asyncio:ResourceWarning"),
    pytest.mark.filterwarnings("ignore:unclosed <StreamWriter:ResourceWarning"),
]
CLUSTER_MODES = ["sync", pytest.param("asyncio", marks=ASYNC_CLUSTER_LEAK)]


@contextmanager
def cache_over(
    mode: str,
    connect: Callable[[], Any],
    connect_async: Callable[[], Any],
    table: Table,
    **options: Any,
) -> Iterator[Any]:
    """A :class:`TableCache` over ``connect()``, or (``mode="asyncio"``) a blocking facade of an
    :class:`AsyncTableCache` over ``connect_async()``, its loop in a thread of its own."""
    if mode == "sync":
        client = connect()
        try:
            yield TableCache(client, table, **options)
        finally:
            client.close()
        return
    loop = LoopThread()

    async def make() -> Any:
        return connect_async()

    aclient = loop.run(make())
    try:
        yield SyncFacade(AsyncTableCache(aclient, table, **options), loop)
    finally:
        loop.run(_aclose(aclient))
        loop.close()


async def _aclose(client: Any) -> None:
    await client.aclose()
    manager = getattr(client, "nodes_manager", None)
    if manager is not None:
        # a cluster client's aclose() does nothing while it is due to refresh its map (as
        # after a failover): close every node's connections regardless
        await manager.aclose()
        await manager.aclose("startup_nodes")
        # redis-py 8.1 drops a node from its map during a failover while a connection of
        # that node is in use, and nothing closes that connection: collect such nodes now,
        # while the test's warning filters (ASYNC_CLUSTER_LEAK) apply
        gc.collect()
    # let the client's own closing tasks finish before the loop closes
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    if others:
        await asyncio.wait(others, timeout=5)


def label(setting: str, mode: str) -> str:
    """A report's setting, with the class that ran it when it is the asyncio one."""
    return setting if mode == "sync" else f"{setting}, asyncio"


class Workload:
    """Readers and writers on ``cache`` (a :class:`TableCache`, or a ``SyncFacade`` of an
    :class:`AsyncTableCache`) until :meth:`stop`; the fault is injected between."""

    def __init__(
        self,
        cache: Any,
        report: Report,
        *,
        readers: int = 4,
        writers: int = 2,
        write_pause: float = 0.005,
    ) -> None:
        self.cache = cache
        self.table = cache.table
        self.report = report
        self.floor = dict.fromkeys(range(KEYS), 0)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.write_pause = write_pause
        self.threads = [
            threading.Thread(target=self._reader, args=(i,), daemon=True) for i in range(readers)
        ] + [threading.Thread(target=self._writer, args=(i,), daemon=True) for i in range(writers)]
        self.threads.append(threading.Thread(target=self._watch_stalls, daemon=True))
        self.started = 0.0

    def __enter__(self) -> Workload:
        self.started = time.monotonic()
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)
            assert not thread.is_alive(), "a workload thread did not stop"
        self.report.seconds = time.monotonic() - self.started

    def _call(self, name: str, *args: Any) -> Any:
        """``cache.<name>(*args)``, timed. An asyncio call is timed on its loop, from its start
        to its end, as an asyncio caller would see it; not the hop from this thread to the
        loop and back, which under load can add more than the call itself."""
        if not isinstance(self.cache, SyncFacade):
            start = time.monotonic()
            try:
                return getattr(self.cache, name)(*args)
            finally:
                self._record(time.monotonic() - start)

        async def timed() -> Any:
            start = time.monotonic()
            try:
                return await getattr(self.cache.wrapped, name)(*args)
            finally:
                self._record(time.monotonic() - start)

        return self.cache.runner.run(timed())

    def _record(self, elapsed: float) -> None:
        with self.lock:
            self.report.attempted += 1
            self.report.worst_latency = max(self.report.worst_latency, elapsed)

    def _watch_stalls(self) -> None:
        while not self.stopping.is_set():
            start = time.monotonic()
            time.sleep(0.002)
            late = time.monotonic() - start - 0.002
            if late > self.report.stall:
                self.report.stall = late

    def _reader(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stopping.is_set():
            keys = rng.sample(range(KEYS), 4) if rng.random() < 0.25 else [rng.randrange(KEYS)]
            floors = [self.floor[k] for k in keys]
            try:
                if len(keys) == 1:
                    rows = [self._call("get", "row", "id", keys[0])]
                else:
                    rows = self._call("get_many", "row", "id", keys)
            except Exception as exc:
                with self.lock:
                    name = type(exc).__name__
                    self.report.read_failures[name] = self.report.read_failures.get(name, 0) + 1
                    redis_failed = isinstance(exc, CacheUnavailable) and isinstance(
                        exc.__cause__, RedisError
                    )
                    if not redis_failed and len(self.report.odd_failures) < 5:
                        self.report.odd_failures.append(f"{name}: {exc}")
                time.sleep(0.002)
                continue
            for key, row, floor in zip(keys, rows, floors, strict=True):
                if row is None or row["id"] != key or row["version"] < floor:
                    with self.lock:
                        self.report.stale_reads += 1
                        if len(self.report.stale_examples) < 5:
                            self.report.stale_examples.append(
                                f"key {key}: {row} after version {floor} was invalidated, "
                                f"at {time.monotonic() - self.started:.3f} s"
                            )

    def _writer(self, seed: int) -> None:
        rng = random.Random(1000 + seed)
        while not self.stopping.is_set():
            keys = rng.sample(range(KEYS), 3) if rng.random() < 0.25 else [rng.randrange(KEYS)]
            versions = [self.table.bump(k) for k in keys]
            self._invalidate(keys)
            for key, version in zip(keys, versions, strict=True):
                with self.lock:
                    self.floor[key] = max(self.floor[key], version)
            time.sleep(self.write_pause)

    def _invalidate(self, keys: list[int]) -> None:
        """Invalidate until it succeeds (the stop flag does not interrupt a lost invalidation:
        the run's recovery must let it through)."""
        deadline = time.monotonic() + 60
        while True:
            try:
                if len(keys) == 1:
                    self._call("invalidate", "row", "id", keys[0])
                else:
                    self._call("invalidate_many", "row", "id", keys)
                return
            except InvalidationFailed:
                with self.lock:
                    self.report.invalidation_failures += 1
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)


def stale_after_recovery(cache: Any, raw_get: Callable[[str], bytes | None]) -> int:
    """Entries left in Redis that disagree with the table, and ``get`` answers that do: each
    key counts once. ``raw_get`` reads a value key straight from Redis."""
    stale = 0
    for key in range(KEYS):
        want = cache.table.read(key)
        value_key, _ = cache.get_keys("row", "id", key)
        raw = raw_get(value_key)
        cached = None if raw is None else cache.serializer.loads(raw)
        if (raw is not None and cached != want) or cache.get("row", "id", key) != want:
            stale += 1
    return stale


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- load: many threads and tasks on one client -------------------------------------------------

LOADS: list[Load] = []


@dataclass
class Load:
    """What the callers of one load run saw."""

    scenario: str
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    cold_fetches: list[int] = field(default_factory=list)  # fetches of each cold key
    redis_commands: int = 0  # script calls the server ran for the run

    def record(self, elapsed: float, error: BaseException | None) -> None:
        self.latencies.append(elapsed)
        if error is not None:
            name = type(error).__name__
            cause = error.__cause__
            if cause is not None:
                name = f"{name}({type(cause).__name__})"
            self.errors[name] = self.errors.get(name, 0) + 1

    def row(self) -> str:
        ordered = sorted(self.latencies) or [0.0]

        def ms(p: float) -> float:
            return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "0"
        fetches = ",".join(map(str, sorted(set(self.cold_fetches)))) or "-"
        return (
            f"{self.scenario:<44} {len(self.latencies):>7} {errors:>10} {fetches:>9} "
            f"{self.redis_commands:>8} {ms(0.5):>7.1f} {ms(0.99):>7.1f} {ordered[-1] * 1000:>7.1f}"
        )

    @staticmethod
    def header() -> str:
        return (
            f"{'load':<44} {'calls':>7} {'errors':>10} {'fetches':>9} {'scripts':>8} "
            f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}"
        )


class CountingTable:
    """A database whose reads take ``delay`` seconds, counting the reads of each key."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.reads: dict[int, int] = {}
        self.lock = threading.Lock()

    def read(self, key: int) -> dict[str, int]:
        with self.lock:
            self.reads[key] = self.reads.get(key, 0) + 1
        return {"id": key, "version": 0}


class LoadCache(CacheCow):
    def __init__(self, redis: Any, table: CountingTable, **options: Any) -> None:
        super().__init__(redis, **options)
        self.table = table

    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        time.sleep(self.table.delay)
        return self.table.read(id_val)


class AsyncLoadCache(AsyncCacheCow):
    def __init__(self, redis: Any, table: CountingTable, **options: Any) -> None:
        super().__init__(redis, **options)
        self.table = table

    async def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        await asyncio.sleep(self.table.delay)
        return self.table.read(id_val)
