"""Single flight (cachecow/_flights.py): what the contract suite does not force.

The races (a reader joining after the leader's fetch, herds in one process, errors shared)
are in cachecow/testing/contract.py and run for every cache class; these are the edges of
the mechanism itself: a fetch that reads its own key, an interrupted leader, objects of one's
own."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import redis

import cachecow
from cachecow import AsyncCacheCow, CacheCow
from cachecow.testing.plugin import async_twin


class Rows(CacheCow):
    def __init__(self, client: Any, **options: Any) -> None:
        super().__init__(client, **options)
        self.calls = 0

    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        self.calls += 1
        if id_val == 1 and self.calls == 1:
            # a fetch that reads its own key (through the cache): it reads alone instead of
            # waiting for itself
            inner = self.get(cls, id_field, id_val)
            return {"id": 1, "inner": inner["id"]}
        return {"id": id_val}


def test_a_fetch_reading_its_own_key_does_not_wait_for_itself(redis_client: redis.Redis) -> None:
    cache = Rows(redis_client, wait_timeout=0.05)
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(cache.get("row", "id", 1)))
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the reader deadlocked on its own flight"
    assert result == [{"id": 1, "inner": 1}]
    assert cache._flights.by_key == {}


def test_each_follower_gets_an_object_of_its_own(redis_client: redis.Redis) -> None:
    gate = threading.Event()

    class Slow(CacheCow):
        def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
            gate.wait(10)
            return {"id": id_val}

    cache = Slow(redis_client)
    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get("row", "id", 7))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    key = cache.get_keys("row", "id", 7)[0]
    while key not in cache._flights.by_key or cache._flights.by_key[key].joined < 7:
        threading.Event().wait(0.005)
    gate.set()
    for thread in threads:
        thread.join(10)
    assert results == [{"id": 7}] * 8
    assert len({id(r) for r in results}) == 8
    assert cache.metrics.snapshot().fetches == 1


def test_followers_of_a_cancelled_leader_read_again(redis_server: Any) -> None:
    """A cancelled leader gives its followers nothing (they are not cancelled with it): they
    read again, one of them leading, with one fetch between them."""

    async def body() -> None:
        client = async_twin(redis.Redis(port=redis_server.port))
        gate = asyncio.Event()
        calls: list[int] = []

        class Slow(AsyncCacheCow):
            async def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
                calls.append(id_val)
                if len(calls) == 1:
                    await gate.wait()  # the first leader is cancelled here
                return {"id": id_val}

        cache = Slow(client, prefix=f"flights-{id(client)}:")
        leader = asyncio.create_task(cache.get("row", "id", 3))
        while not calls:
            await asyncio.sleep(0.001)
        followers = [asyncio.create_task(cache.get("row", "id", 3)) for _ in range(20)]
        await asyncio.sleep(0.01)
        leader.cancel()
        assert await asyncio.gather(*followers) == [{"id": 3}] * 20
        assert calls == [3, 3]
        assert leader.cancelled()
        await client.aclose()

    asyncio.run(body())


def test_an_async_fetch_reading_its_own_key_does_not_wait_for_itself(redis_url: str) -> None:
    async def body() -> None:
        client = cachecow.connect_async(redis_url)

        class Nested(AsyncCacheCow):
            calls = 0

            async def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
                self.calls += 1
                if self.calls == 1:
                    inner = await self.get(cls, id_field, id_val)
                    return {"id": id_val, "inner": inner["id"]}
                return {"id": id_val}

        cache = Nested(client, wait_timeout=0.05, prefix=f"flights-{id(client)}:")
        assert await asyncio.wait_for(cache.get("row", "id", 1), 10) == {"id": 1, "inner": 1}
        await client.aclose()

    asyncio.run(body())


def test_a_late_follower_takes_the_leaders_error_without_a_read_of_its_own(
    redis_client: redis.Redis,
) -> None:
    """A reader that joins while the leader's fetch runs cannot take its object (read before it
    came), but does take its error: no second read, so no second wait for a failing database or
    a stalled Redis."""
    started, go = threading.Event(), threading.Event()
    calls: list[int] = []

    class Failing(CacheCow):
        def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
            calls.append(id_val)
            started.set()
            go.wait(10)
            raise RuntimeError("database down")

    cache = Failing(redis_client)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            cache.get("row", "id", 5)
        except RuntimeError as exc:
            errors.append(exc)

    leader = threading.Thread(target=read)
    leader.start()
    started.wait(10)
    late = threading.Thread(target=read)
    late.start()
    key = cache.get_keys("row", "id", 5)[0]
    while cache._flights.by_key[key].joined < 1:
        threading.Event().wait(0.005)
    go.set()
    leader.join(10)
    late.join(10)
    assert [str(e) for e in errors] == ["database down"] * 2
    assert calls == [5]
    assert cache._flights.by_key == {}


def test_two_fetches_reading_each_others_key_do_not_wait_forever(
    redis_client: redis.Redis,
) -> None:
    """Thread A leads key 1 and its fetch reads key 2; thread B leads key 2 and its fetch reads
    key 1. Each joins the other's read: a follower waits ``wait_timeout`` at most, then
    fetches without caching, as a busy reader does; both reads end."""
    both_fetching = threading.Barrier(2)
    nested = threading.local()

    class Crossed(CacheCow):
        def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
            if getattr(nested, "depth", 0):
                return {"id": id_val}
            nested.depth = 1
            try:
                both_fetching.wait(10)  # both lead their key now
                other = self.get(cls, id_field, 3 - id_val)
                # Neither lands its flight before both followers gave up waiting (else a slow
                # thread's follower could take the other's landed result instead).
                both_fetching.wait(10)
            finally:
                nested.depth = 0
            return {"id": id_val, "other": other["id"]}

    cache = Crossed(redis_client, wait_timeout=0.2)
    results: dict[int, Any] = {}

    def read(key: int) -> None:
        results[key] = cache.get("row", "id", key)

    threads = [threading.Thread(target=read, args=(key,)) for key in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads), "the two reads wait for each other"
    assert results == {1: {"id": 1, "other": 2}, 2: {"id": 2, "other": 1}}
    assert cache.metrics.snapshot().wait_timeouts == 2


def test_a_reader_that_never_waits_never_joins(redis_client: redis.Redis) -> None:
    """Under busy="fetch" a reader never waits for another: no single flight either."""
    started, go = threading.Event(), threading.Event()

    class Slow(CacheCow):
        def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
            if not started.is_set():
                started.set()
                go.wait(10)
            return {"id": id_val}

    cache = Slow(redis_client, busy="fetch")
    leader = threading.Thread(target=cache.get, args=("row", "id", 4))
    leader.start()
    started.wait(10)
    assert cache.get("row", "id", 4) == {"id": 4}  # fetched at once, uncached
    go.set()
    leader.join(10)
    assert cache.metrics.snapshot().joined == 0
