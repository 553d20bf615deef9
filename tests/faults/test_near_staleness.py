"""The near cache's promise across processes, under load: a writer process commits new
versions of rows and invalidates them; a reader process reads them through its near cache, as
fast as it can. Every read is checked against the writer's history.

A read is *stale* when it returned a version older than one whose invalidation had returned
before the read began. The near cache allows that only within the delivery delay: until the
reader's near cache has handled Redis's message for that invalidation. So every stale read must
have begun before its process dropped the key; none after (asserted). The figures (reads, near
hits, stale reads within the delay, the delay's p50/p99/max) are printed.

The "database" is a second Redis database of the same server (db 1): committed writes, read by
``fetch``, independent of the cache's keys.
"""

from __future__ import annotations

import bisect
import multiprocessing
import random
import statistics
import time
from typing import Any

import redis

from cachecow import CacheCow
from cachecow._near import NearCache
from cachecow.testing import RedisServer

ROWS = 200
SECONDS = 3.0
NEAR = {"near_bytes": 16 << 20, "prefix": "stale:"}


class Rows(CacheCow):
    def __init__(self, client: redis.Redis, database: redis.Redis, **options: Any) -> None:
        super().__init__(client, **options)
        self.database = database

    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        return {"id": id_val, "version": int(self.database.get(f"row:{id_val}") or 0)}


def _caches(port: int, **options: Any) -> Rows:
    client = redis.Redis(port=port, socket_timeout=5)
    return Rows(client, redis.Redis(port=port, db=1, socket_timeout=5), **options)


def _writer(port: int, start: float, out: Any) -> None:
    cache = _caches(port, prefix=NEAR["prefix"])
    rng = random.Random(1)
    history = []  # (row, version, invalidation sent, invalidation returned, deletes a value)
    while time.monotonic() < start:
        time.sleep(0.001)
    while time.monotonic() < start + SECONDS:
        row = rng.randrange(ROWS)
        version = cache.database.incr(f"row:{row}")  # the write, committed
        # Whether the invalidation deletes a value (only this process deletes): Redis sends
        # a message for a key it deleted, not for one that was not there.
        deletes = bool(cache.redis.exists(cache.get_keys("Row", "id", row)[0]))
        sent = time.monotonic()
        cache.invalidate("Row", "id", row)
        history.append((row, version, sent, time.monotonic(), deletes))
        time.sleep(0.0005)
    out.put(history)


def _reader(port: int, start: float, out: Any) -> None:
    cache = _caches(port, **NEAR)
    drops: list[tuple[str, float]] = []
    drop = NearCache.drop

    def recorded(self: NearCache, keys: Any, *, heard: bool = False) -> list[str]:
        keys = list(keys)
        let_be = drop(self, keys, heard=heard)  # a commit's own message drops nothing
        now = time.monotonic()
        drops.extend((key, now) for key in keys if key not in let_be)
        return let_be

    NearCache.drop = recorded  # type: ignore[method-assign]
    rng = random.Random(2)
    reads = []  # (row, version, began)
    for row in range(ROWS):  # warm: every row in Redis, the tracker up
        cache.get("Row", "id", row)
    assert cache._near is not None
    tracker = cache._near.tracker
    assert tracker is not None
    assert tracker.connected.wait(5)
    while time.monotonic() < start + SECONDS:
        row = min(int(rng.paretovariate(1.1)) - 1, ROWS - 1)  # a few hot rows
        began = time.monotonic()
        reads.append((row, cache.get("Row", "id", row)["version"], began))
    keys = {cache.get_keys("Row", "id", row)[0]: row for row in range(ROWS)}
    snapshot = cache.metrics.snapshot()
    cache.close()
    out.put(
        (reads, [(keys[k], t) for k, t in drops if k in keys], snapshot.near_hits, snapshot.hits)
    )


def test_stale_reads_only_within_the_delivery_delay(redis_server: RedisServer) -> None:
    redis.Redis(port=redis_server.port).flushall()
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    start = time.monotonic() + 3.0  # both processes up and warm by then
    processes = [
        context.Process(target=target, args=(redis_server.port, start, queue))
        for target in (_writer, _reader)
    ]
    for process in processes:
        process.start()
    results = [queue.get(timeout=60), queue.get(timeout=60)]
    for process in processes:
        process.join(10)
    history = next(r for r in results if isinstance(r, list))
    reads, drops, near_hits, hits = next(r for r in results if isinstance(r, tuple))

    # The reader's drops of each row, in time order; each invalidation's delivery delay.
    dropped: dict[int, list[float]] = {}
    for row, at in drops:
        dropped.setdefault(row, []).append(at)
    delays = []
    for row, _, sent, returned, deletes in history:
        if not deletes:
            continue
        times = dropped.get(row, [])
        index = bisect.bisect_left(times, sent)
        if index < len(times):
            delays.append(times[index] - returned)

    # The invalidations of each row in version order.
    by_row: dict[int, list[tuple[int, float, float]]] = {}
    for row, version, sent, returned, _ in history:
        by_row.setdefault(row, []).append((version, sent, returned))
    stale = unexplained = 0
    ages = []
    for row, version, began in reads:
        newer = [(ret, sent) for v, sent, ret in by_row.get(row, []) if v > version and ret < began]
        if not newer:
            continue
        stale += 1
        returned, sent = min(newer)
        ages.append(began - returned)
        times = dropped.get(row, [])
        index = bisect.bisect_left(times, sent)
        if index < len(times) and times[index] <= began:
            unexplained += 1  # the reader had dropped the key, then served the old version

    def ms(values: list[float], q: float) -> str:
        if not values:
            return "-"
        values = sorted(values)
        return f"{values[min(len(values) - 1, int(q * len(values)))] * 1000:.3f}"

    print(
        f"\nnear cache across processes: {len(reads)} reads ({near_hits} near hits of {hits} "
        f"hits), {len(history)} invalidations; stale reads {stale} "
        f"(age p50 {ms(ages, 0.5)} ms, p99 {ms(ages, 0.99)} ms, max {ms(ages, 1.0)} ms), "
        f"after the drop {unexplained}; "
        f"delivery delay after invalidate() returned: p50 {ms(delays, 0.5)} ms, "
        f"p99 {ms(delays, 0.99)} ms, max {ms(delays, 1.0)} ms ({len(delays)} measured)"
    )
    assert len(reads) > 10_000
    assert near_hits > len(reads) // 2  # the near cache did answer
    assert len(history) > 500
    assert len(delays) > 0.9 * sum(1 for *_, deletes in history if deletes)
    assert statistics.median(delays) < 0.05
    assert unexplained == 0
