"""A soak run: mixed load on one process for minutes, sampling what could leak or pile up.

It starts its own ``redis-server`` (``maxmemory 64mb``, ``allkeys-lru``) on a free port and
stops it at the end. 64 threads on one ``CacheCow``, and in a second process 500 asyncio tasks
on one ``AsyncCacheCow``, read (``get`` of hot and cold keys, ``get_many``, ``peek``), write and
invalidate rows of an in-memory table. Readers check every answer against the newest version
whose invalidation had returned before the read began (a stale read is counted, and fails the
run). Every ``--every`` seconds it prints the process's RSS, the server's client connections,
keys and used memory, and the threads' calls so far; at the end, how many keys have no TTL.

    .venv/bin/python benchmarks/soak.py [--minutes 5] [--every 15]

Not part of the test suite (it runs for minutes); the figures go in the issue's note.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
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

    def error(self, exc: BaseException, side: str) -> None:
        with self.lock:
            name = f"{side} {type(exc).__name__}"
            if exc.__cause__ is not None:
                name = f"{name}({type(exc.__cause__).__name__})"
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
            counts.error(exc, "thread")
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
            counts.error(exc, "task")
        counts.calls += 1


def run_tasks(url: str, tasks: int, stop: Any, report: Any) -> None:
    """The asyncio half, in a process of its own (its own table, under its own prefix): in
    the threads' process its loop would wait for the GIL behind 64 busy threads, and its
    tasks' waits for a connection would time out."""
    table, counts, stopping = Table(), Counts(), threading.Event()

    async def main() -> None:
        client = cachecow.connect_async(url, timeout=1.0)
        cache = Async(client, table, prefix="soak-async:")
        workers = [
            asyncio.create_task(task_worker(cache, counts, stopping, i)) for i in range(tasks)
        ]
        await asyncio.to_thread(stop.wait)
        stopping.set()
        try:
            await asyncio.gather(*workers)
        finally:
            await client.aclose()

    asyncio.run(main())
    report.put((counts.calls, counts.stale, counts.errors))


def rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/statm") as f:
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
    cache = Sync(client, table, prefix="soak:")
    workers = [
        threading.Thread(target=thread_worker, args=(cache, counts, stop, i), daemon=True)
        for i in range(args.threads)
    ]
    spawn = multiprocessing.get_context("spawn")
    stop_tasks, report = spawn.Event(), spawn.Queue()
    child = spawn.Process(target=run_tasks, args=(server.url, args.tasks, stop_tasks, report))
    started = time.monotonic()
    child.start()
    for worker in workers:
        worker.start()
    print(
        f"{'s':>5} {'calls':>9} {'RSS MB':>7} {'tasks MB':>8} {'clients':>7} {'keys':>7} "
        f"{'used MB':>8} errors"
    )
    try:
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(args.every)
            info = admin.info()
            print(
                f"{time.monotonic() - started:5.0f} {counts.calls:9d} {rss_mb():7.1f} "
                f"{rss_mb(child.pid or 0):8.1f} {info['connected_clients']:7d} "
                f"{admin.dbsize():7d} {info['used_memory'] / 2**20:8.1f} {counts.errors or 0}",
                flush=True,
            )
    finally:
        stop.set()
        stop_tasks.set()
        for worker in workers:
            worker.join(30)
        client.close()
        task_calls, task_stale, task_errors = report.get(timeout=60)
        child.join(30)
    no_ttl = sum(1 for key in admin.scan_iter(count=1000) if admin.pttl(key) == -1)
    print(
        f"\nthreads: {counts.calls} calls, stale reads {counts.stale}, errors "
        f"{counts.errors or 0}\ntasks: {task_calls} calls, stale reads {task_stale}, errors "
        f"{task_errors or 0}\nin {time.monotonic() - started:.0f} s; keys {admin.dbsize()}, "
        f"of which without a TTL {no_ttl}; threads' cache: {len(cache._flights.by_key)} "
        f"flights left, {len(cache._key_memo)} memoised keys"
    )
    admin.close()
    server.stop()
    if counts.stale or task_stale or no_ttl:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
