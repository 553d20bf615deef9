"""A soak run: mixed load on one process for minutes, sampling what could leak or pile up.

It starts its own ``redis-server`` (``maxmemory 64mb``, ``allkeys-lru``) on a free port and
stops it at the end. 64 threads on one ``CacheCow`` and 500 asyncio tasks on one
``AsyncCacheCow`` read (``get`` of hot and cold keys, ``get_many``, ``peek``), write and
invalidate rows of an in-memory table. Readers check every answer against the newest version
whose invalidation had returned before the read began (a stale read is counted, and fails the
run). Every ``--every`` seconds it prints the process's RSS, the server's client connections,
keys and used memory, and the calls made so far; at the end, how many keys have no TTL.

    .venv/bin/python benchmarks/soak.py [--minutes 5] [--every 15]

Not part of the test suite (it runs for minutes); the figures go in the issue's note.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import threading
import time
from typing import Any

import redis

import cachecow
from cachecow import AsyncCacheCow, CacheCow
from cachecow.testing import RedisServer

ROWS = 5000
HOT = 50


class Table:
    def __init__(self) -> None:
        self.rows = dict.fromkeys(range(ROWS), 0)
        self.floor = dict.fromkeys(range(ROWS), 0)  # newest version whose invalidation returned
        self.lock = threading.Lock()


class Sync(CacheCow):
    def __init__(self, client: Any, table: Table, **options: Any) -> None:
        super().__init__(client, **options)
        self.table = table

    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        return {"id": id_val, "v": self.table.rows[id_val], "pad": "x" * 200}


class Async(AsyncCacheCow):
    def __init__(self, client: Any, table: Table, **options: Any) -> None:
        super().__init__(client, **options)
        self.table = table

    async def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        return {"id": id_val, "v": self.table.rows[id_val], "pad": "x" * 200}


class Counts:
    def __init__(self) -> None:
        self.calls = 0
        self.errors: dict[str, int] = {}
        self.stale = 0
        self.lock = threading.Lock()

    def error(self, exc: BaseException) -> None:
        with self.lock:
            name = type(exc).__name__
            self.errors[name] = self.errors.get(name, 0) + 1


def pick(rng: random.Random) -> int:
    return rng.randrange(HOT) if rng.random() < 0.8 else rng.randrange(ROWS)


def check(table: Table, counts: Counts, floors: dict[int, int], rows: list[Any]) -> None:
    for row in rows:
        if row is not None and row["v"] < floors[row["id"]]:
            counts.stale += 1


def write(table: Table, rng: random.Random) -> tuple[int, int]:
    key = pick(rng)
    with table.lock:
        table.rows[key] += 1
        return key, table.rows[key]


def done(table: Table, key: int, version: int) -> None:
    with table.lock:
        table.floor[key] = max(table.floor[key], version)


def thread_worker(cache: Sync, counts: Counts, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    table = cache.table
    while not stop.is_set():
        roll = rng.random()
        try:
            if roll < 0.05:
                key, version = write(table, rng)
                cache.invalidate("row", "id", key)
                done(table, key, version)
            elif roll < 0.15:
                keys = [pick(rng) for _ in range(rng.randrange(1, 50))]
                floors = {k: table.floor[k] for k in keys}
                check(table, counts, floors, cache.get_many("row", "id", keys))
            elif roll < 0.2:
                key = pick(rng)
                floor = {key: table.floor[key]}
                check(table, counts, floor, [cache.peek("row", "id", key)])
            else:
                key = pick(rng)
                floor = {key: table.floor[key]}
                check(table, counts, floor, [cache.get("row", "id", key)])
        except Exception as exc:
            counts.error(exc)
        counts.calls += 1


async def task_worker(cache: Async, counts: Counts, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    table = cache.table
    while not stop.is_set():
        roll = rng.random()
        try:
            if roll < 0.05:
                key, version = write(table, rng)
                await cache.invalidate("row", "id", key)
                done(table, key, version)
            elif roll < 0.15:
                keys = [pick(rng) for _ in range(rng.randrange(1, 50))]
                floors = {k: table.floor[k] for k in keys}
                check(table, counts, floors, await cache.get_many("row", "id", keys))
            else:
                key = pick(rng)
                floor = {key: table.floor[key]}
                check(table, counts, floor, [await cache.get("row", "id", key)])
        except Exception as exc:
            counts.error(exc)
        counts.calls += 1


def run_tasks(url: str, table: Table, counts: Counts, stop: threading.Event, tasks: int) -> None:
    async def main() -> None:
        client = cachecow.connect_async(url, timeout=1.0)
        cache = Async(client, table, prefix="soak:")
        try:
            await asyncio.gather(
                *(task_worker(cache, counts, stop, 1000 + i) for i in range(tasks))
            )
        finally:
            await client.aclose()

    asyncio.run(main())


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--every", type=float, default=15.0)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--tasks", type=int, default=500)
    args = parser.parse_args()
    server = RedisServer(
        extra_args=("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")
    ).start()
    admin = redis.Redis(port=server.port, socket_timeout=5)
    table, counts = Table(), Counts()
    stop = threading.Event()
    client = cachecow.connect(server.url, timeout=1.0)
    cache = Sync(client, table, prefix="soak:", ttl=120)
    workers = [
        threading.Thread(target=thread_worker, args=(cache, counts, stop, i), daemon=True)
        for i in range(args.threads)
    ]
    workers.append(
        threading.Thread(
            target=run_tasks, args=(server.url, table, counts, stop, args.tasks), daemon=True
        )
    )
    started = time.monotonic()
    for worker in workers:
        worker.start()
    print(f"{'s':>5} {'calls':>9} {'RSS MB':>7} {'clients':>7} {'keys':>7} {'used MB':>8} errors")
    try:
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(args.every)
            info = admin.info()
            print(
                f"{time.monotonic() - started:5.0f} {counts.calls:9d} {rss_mb():7.1f} "
                f"{info['connected_clients']:7d} {admin.dbsize():7d} "
                f"{info['used_memory'] / 2**20:8.1f} {counts.errors or 0}",
                flush=True,
            )
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
        client.close()
    no_ttl = sum(1 for key in admin.scan_iter(count=1000) if admin.pttl(key) == -1)
    print(
        f"\n{counts.calls} calls in {time.monotonic() - started:.0f} s; "
        f"stale reads {counts.stale}; errors {counts.errors or 0}; "
        f"keys {admin.dbsize()}, of which without a TTL {no_ttl}"
    )
    admin.close()
    server.stop()
    if counts.stale or no_ttl:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
