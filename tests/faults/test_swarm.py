"""A thread swarm: readers and writers race on a few keys; quiesce, then check every key.

In addition to the forced interleavings of the contract suite, never instead of them. Writers
update a dict database and then invalidate (as an adapter does after commit); fetches sleep a
random moment after reading, so commits often land after invalidations. After each round all
threads stop, and every key's cached value must be absent or equal to the database's.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import redis

from cachecow import CacheCow

KEYS = 12
ROUNDS = 6
ROUND_SECONDS = 0.6


class SlowDictCache(CacheCow):
    def __init__(self, redis: redis.Redis, db: dict[int, int], lock: threading.Lock, **kw: Any):
        super().__init__(redis, **kw)
        self.db, self.lock = db, lock

    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        with self.lock:
            version = self.db[id_val]
        time.sleep(random.random() * 0.003)  # the window between the read and the commit
        return {"id": id_val, "version": version}


def run_swarm(redis_client: redis.Redis) -> dict[str, int]:
    db = dict.fromkeys(range(KEYS), 0)
    lock = threading.Lock()
    caches = [
        SlowDictCache(redis_client, db, lock, busy="fetch"),
        SlowDictCache(redis_client, db, lock, busy="wait", wait_timeout=0.05),
        SlowDictCache(redis_client, db, lock, busy="wait", flag_ttl=0.002),
    ]
    errors: list[BaseException] = []
    totals = {"stale": 0, "checked": 0, "writes": 0}

    def reader(cache: SlowDictCache, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                cache.get("item", "id", random.randrange(KEYS))
        except BaseException as exc:
            errors.append(exc)

    def writer(cache: SlowDictCache, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                key = random.randrange(KEYS)
                with lock:
                    db[key] += 1
                    totals["writes"] += 1
                cache.invalidate("item", "id", key)
                time.sleep(random.random() * 0.002)
        except BaseException as exc:
            errors.append(exc)

    for _ in range(ROUNDS):
        stop = threading.Event()
        threads = [threading.Thread(target=reader, args=(caches[i % 3], stop)) for i in range(8)]
        threads += [threading.Thread(target=writer, args=(caches[i % 3], stop)) for i in range(3)]
        for t in threads:
            t.start()
        time.sleep(ROUND_SECONDS)
        stop.set()
        for t in threads:
            t.join(10)
        assert not any(t.is_alive() for t in threads)
        # Quiesced: every cached value must be the database's current one.
        for key in range(KEYS):
            raw = redis_client.get(caches[0].get_keys("item", "id", key)[0])
            if raw is not None:
                totals["checked"] += 1
                if caches[0].deserialize("item", raw)["version"] != db[key]:
                    totals["stale"] += 1
    assert not errors, errors
    for cache in caches:
        for name, value in cache.metrics.snapshot().as_dict().items():
            totals[name] = totals.get(name, 0) + value
    return totals


def test_swarm_leaves_no_stale_entry(redis_client: redis.Redis) -> None:
    totals = run_swarm(redis_client)
    print("swarm totals:", totals)
    assert totals["stale"] == 0
    # The swarm did exercise the protocol: values were cached and served, and commits raced
    # invalidations and were refused.
    assert totals["checked"] > 0
    assert totals["hits"] > 100
    assert totals["commits"] > 50
    assert totals["stale_commits"] > 0
    assert totals["writes"] > 100
