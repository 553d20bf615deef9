"""Reads that expect a hit: once a model's reads mostly hit, a read goes by a plain ``GET``
first (a hit at the cost of a ``GET``), and takes the lease only for a miss, on a real
redis-server. The lease keeps its promise whichever way the read went."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cachecow import AsyncCacheCow, CacheCow, CacheUnavailable, NotFound
from cachecow._ops import Command, Script
from cachecow.testing import free_port
from cachecow.testing.contract import FetchProbe


class Rows(CacheCow):
    plain_reads_from = 2  # plain reads after two hits (16 by default)

    def __init__(self, redis: Any, **options: Any) -> None:
        super().__init__(redis, **options)
        self.db: dict[int, dict[str, Any]] = {i: {"id": i, "v": 1} for i in range(1, 6)}

    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        row = self.db.get(id_val)
        return None if row is None else dict(row)


def recorded(cache: Any) -> list[str]:
    """The names of the Redis calls the cache makes from now on."""
    calls: list[str] = []
    perform = cache._io.perform

    def perform_and_record(op: Any) -> Any:
        if isinstance(op, Script):
            calls.append(op.name)
        elif isinstance(op, Command):
            calls.append(str(op.args[0]))
        return perform(op)

    cache._io.perform = perform_and_record
    return calls


def hot(cache: Rows, row: int = 1) -> None:
    """Read a row until its model's reads expect hits."""
    for _ in range(cache.plain_reads_from + 1):
        cache.get("Row", "id", row)
    assert cache._expects_hit("Row")


def test_a_hit_is_one_get_once_reads_mostly_hit(redis_client: redis.Redis) -> None:
    cache = Rows(redis_client)
    calls = recorded(cache)
    cache.get("Row", "id", 1)
    cache.get("Row", "id", 1)
    assert calls == ["get_or_lease", "commit", "get_or_lease"]  # not hot yet
    with pytest.raises(NotFound):
        cache.get("Row", "id", 99)  # a tombstone now
    hot(cache)
    calls.clear()
    assert cache.get("Row", "id", 1) == {"id": 1, "v": 1}
    with pytest.raises(NotFound):  # a tombstone, plainly read, raises as ever
        cache.get("Row", "id", 99)
    assert calls == ["GET", "GET"]


def joined(cache: Any) -> list[list[str]]:
    """The value keys of each flight join the cache makes from now on."""
    joins: list[list[str]] = []
    flights = cache._flights
    join, join_many = flights.join, flights.join_many
    flights.join = lambda key, *a: joins.append([key]) or join(key, *a)
    flights.join_many = lambda keys, *a: joins.append(list(keys)) or join_many(keys, *a)
    return joins


def test_a_plain_read_joins_no_flight_until_it_misses(redis_client: redis.Redis) -> None:
    """A hit needs no one's lease: a read that expects one reads outside single flight, and
    only what its GET (MGET) missed joins a flight, for the lease call."""
    cache = Rows(redis_client)
    cache.get("Row", "id", 2)
    hot(cache)
    joins = joined(cache)
    cache.get("Row", "id", 1)
    cache.get_many("Row", "id", [1, 2])
    assert joins == []
    cache.get_many("Row", "id", [1, 2, 4])
    assert joins == [[cache.get_keys("Row", "id", 4)[0]]]
    hot(cache)  # again (a miss cools the model)
    joins.clear()
    cache.get("Row", "id", 3)
    assert joins == [[cache.get_keys("Row", "id", 3)[0]]]


def test_a_miss_then_takes_the_lease_and_misses_cool_the_model(redis_client: redis.Redis) -> None:
    cache = Rows(redis_client)
    hot(cache)
    calls = recorded(cache)
    assert cache.get("Row", "id", 2) == {"id": 2, "v": 1}
    assert calls == ["GET", "get_or_lease", "commit"]  # one round trip more than a miss
    assert not cache._expects_hit("Row")  # one miss costs 8 hits
    snapshot = cache.metrics.snapshot()
    assert (snapshot.misses, snapshot.fetches, snapshot.commits) == (2, 2, 2)


def test_a_plain_read_before_an_invalidation_never_commits_after_it(
    redis_client: redis.Redis,
) -> None:
    cache = Rows(redis_client)
    hot(cache)
    probe = FetchProbe.of(cache)
    probe.gate_next()
    result: list[Any] = []
    reader = threading.Thread(target=lambda: result.append(cache.get("Row", "id", 3)))
    reader.start()
    probe.wait_fetched()  # the reader read v1 (after its GET missed, under its lease)
    cache.db[3] = {"id": 3, "v": 2}
    cache.invalidate("Row", "id", 3)
    probe.release()
    reader.join(5)
    assert result == [{"id": 3, "v": 1}]
    assert cache.peek("Row", "id", 3) is None  # its commit was refused
    assert cache.get("Row", "id", 3) == {"id": 3, "v": 2}


def test_unusable_bytes_are_discarded_once(redis_client: redis.Redis) -> None:
    cache = Rows(redis_client)
    hot(cache)
    key = cache.get_keys("Row", "id", 1)[0]
    redis_client.set(key, b"\xff not json")
    calls = recorded(cache)
    assert cache.get("Row", "id", 1) == {"id": 1, "v": 1}
    assert calls == ["GET", "get_or_lease", "commit"]  # the lease call deleted exactly them
    assert cache.metrics.snapshot().decode_failures == 1


def test_foreign_data_is_repaired_by_the_lease_call(redis_client: redis.Redis) -> None:
    cache = Rows(redis_client)
    hot(cache)
    key = cache.get_keys("Row", "id", 1)[0]
    redis_client.delete(key)
    redis_client.hset(key, "a", "b")
    assert cache.get("Row", "id", 1) == {"id": 1, "v": 1}
    assert cache.metrics.snapshot().corrupt_keys == 1
    assert cache.get("Row", "id", 1) == {"id": 1, "v": 1}


def test_a_failed_plain_read_is_one_failure() -> None:
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    cache = Rows(dead, fail_open=True)
    cache._hit_scores["Row"] = 100  # hot
    calls = recorded(cache)
    assert cache.get("Row", "id", 1) == {"id": 1, "v": 1}  # from fetch
    assert calls == ["GET"]  # not a second call to a Redis that just failed
    assert cache.metrics.snapshot().fail_open_fetches == 1
    strict = Rows(dead)
    strict._hit_scores["Row"] = 100
    with pytest.raises(CacheUnavailable):
        strict.get("Row", "id", 1)


def test_never_with_refresh_ahead(redis_client: redis.Redis) -> None:
    cache = Rows(redis_client, refresh_ahead=0.2)
    for _ in range(10):
        cache.get("Row", "id", 1)
    assert not cache._expects_hit("Row")
    calls = recorded(cache)
    cache.get("Row", "id", 1)
    assert calls == ["get_or_lease"]


def test_a_batch_of_hits_is_one_mget(redis_client: redis.Redis) -> None:
    cache = Rows(redis_client)
    cache.get_many("Row", "id", [1, 2, 3, 99])
    hot(cache)
    calls = recorded(cache)
    assert cache.get_many("Row", "id", [1, 2, 3, 99]) == [
        {"id": 1, "v": 1},
        {"id": 2, "v": 1},
        {"id": 3, "v": 1},
        None,
    ]
    assert calls == ["MGET"]


def test_a_batch_leases_only_what_the_mget_missed(redis_client: redis.Redis) -> None:
    cache = Rows(redis_client)
    hot(cache)
    key = cache.get_keys("Row", "id", 2)[0]
    redis_client.set(key, b"\xff not json")
    calls = recorded(cache)
    before = cache.metrics.snapshot()
    assert cache.get_many("Row", "id", [1, 2, 4]) == [{"id": i, "v": 1} for i in (1, 2, 4)]
    assert calls == ["MGET", "get_or_lease_many", "commit_many"]
    after = cache.metrics.snapshot()
    assert after.hits - before.hits == 1
    assert after.decode_failures - before.decode_failures == 1
    assert after.misses - before.misses == 2  # the row never cached, and the unusable one
    assert redis_client.get(key) == b'{"id":2,"v":1}'


def test_a_batch_read_before_an_invalidation_never_commits_after_it(
    redis_client: redis.Redis,
) -> None:
    cache = Rows(redis_client)
    hot(cache)
    probe = FetchProbe.of(cache)
    probe.gate_next()
    result: list[Any] = []
    reader = threading.Thread(target=lambda: result.append(cache.get_many("Row", "id", [1, 5])))
    reader.start()
    probe.wait_fetched()  # the MGET missed 5; its lease taken, v1 read
    cache.db[5] = {"id": 5, "v": 2}
    cache.invalidate("Row", "id", 5)
    probe.release()
    reader.join(5)
    assert result == [[{"id": 1, "v": 1}, {"id": 5, "v": 1}]]
    assert cache.peek("Row", "id", 5) is None
    assert cache.get("Row", "id", 5) == {"id": 5, "v": 2}


def test_a_failed_mget_is_one_failure() -> None:
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    cache = Rows(dead, fail_open=True)
    cache._hit_scores["Row"] = 100
    calls = recorded(cache)
    assert cache.get_many("Row", "id", [1, 2]) == [{"id": 1, "v": 1}, {"id": 2, "v": 1}]
    assert calls == ["MGET"]
    assert cache.metrics.snapshot().fail_open_fetches == 2


def test_asyncio_reads_alike(redis_server: Any) -> None:
    class AsyncRows(AsyncCacheCow):
        plain_reads_from = 2

        async def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
            return {"id": id_val, "v": 1}

    async def body() -> None:
        client = aredis.Redis(port=redis_server.port)
        cache = AsyncRows(client)
        try:
            for _ in range(3):
                await cache.get_many("Row", "id", [1, 2])
            calls = recorded(cache)
            assert await cache.get("Row", "id", 1) == {"id": 1, "v": 1}
            assert await cache.get_many("Row", "id", [1, 2, 3]) == [
                {"id": i, "v": 1} for i in (1, 2, 3)
            ]
            assert calls == ["GET", "MGET", "get_or_lease_many", "commit_many"]
        finally:
            await client.aclose()

    asyncio.run(body())
