"""Lookup values with no process-independent key are refused by every public call, sync and
async, before Redis or the database is touched (issue 15, item 6)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from cachecow import AsyncCacheCow, CacheCow, InvalidLookup, PickleSerializer


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = (value,)
    return value


BAD_VALUES = [
    pytest.param(frozenset({"a", "b"}), "frozenset", id="frozenset"),
    pytest.param({"a", "b"}, "set", id="set"),
    pytest.param({"a": 1}, "dict", id="dict"),
    pytest.param(object(), "object", id="object"),
    pytest.param(nested(3000), "nested more than 4 deep", id="nested-3000"),
    pytest.param([1], "from a list", id="list"),
    pytest.param([[1]], "from a list", id="list-of-lists"),
    pytest.param(
        (1, [2]), r"from \(1, \[2\]\): cannot build a cache key from a list", id="tuple-list"
    ),
    pytest.param((1, {"a": 1}), "a mapping is not a lookup value", id="tuple-dict"),
]


class Rows(CacheCow):
    """Any lookup finds a row; records the lookups it fetched."""

    def __init__(self, client: redis.Redis, **options: Any) -> None:
        super().__init__(client, **options)
        self.fetched: list[Any] = []

    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        self.fetched.append(id_val)
        return {"id": id_val}

    def fetch_many(self, cls: Any, id_field: Any, id_vals: Any) -> dict[Any, Any]:
        self.fetched.extend(id_vals)
        return {}

    def unique_lookups(self, obj: Any) -> list[tuple[Any, Any]]:
        return [("id", obj["id"])]


class AsyncRows(AsyncCacheCow):
    def __init__(self, client: aredis.Redis, **options: Any) -> None:
        super().__init__(client, **options)
        self.fetched: list[Any] = []

    async def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        self.fetched.append(id_val)
        return {"id": id_val}

    async def fetch_many(self, cls: Any, id_field: Any, id_vals: Any) -> dict[Any, Any]:
        self.fetched.extend(id_vals)
        return {}

    def unique_lookups(self, obj: Any) -> list[tuple[Any, Any]]:
        return [("id", obj["id"])]


def calls(cache: Any, value: Any) -> dict[str, Callable[[], Any]]:
    return {
        "get": lambda: cache.get("row", "id", value),
        "get(composite)": lambda: cache.get("row", ("org", "id"), (1, value)),
        "peek": lambda: cache.peek("row", "id", value),
        "get_many": lambda: cache.get_many("row", "id", [1, value]),
        "invalidate": lambda: cache.invalidate("row", "id", value),
        "invalidate_many": lambda: cache.invalidate_many("row", "id", [1, value]),
        "invalidate_lookups": lambda: cache.invalidate_lookups([("row", "id", value)]),
        "invalidate_object": lambda: cache.invalidate_object({"id": value}, model="row"),
        "invalidate_object(previous)": lambda: cache.invalidate_object(
            {"id": 1}, previous={"id": value}, model="row"
        ),
    }


@pytest.mark.parametrize("fail_open", [False, True])
@pytest.mark.parametrize(("value", "message"), BAD_VALUES)
def test_every_call_refuses_an_unkeyable_value(
    redis_client: redis.Redis, value: Any, message: str, fail_open: bool
) -> None:
    cache = Rows(redis_client, fail_open=fail_open)
    for name, call in calls(cache, value).items():
        with pytest.raises(InvalidLookup, match=message):
            call()
        assert cache.fetched == [], name  # refused, not served from the database
    assert redis_client.dbsize() == 0
    assert [memo[-1] for memo in cache._key_memo] in ([], [1])  # only the good value's keys


@pytest.mark.parametrize(("value", "message"), BAD_VALUES)
def test_every_async_call_refuses_an_unkeyable_value(
    redis_server: Any, value: Any, message: str
) -> None:
    async def body() -> None:
        client = aredis.Redis(port=redis_server.port)
        await client.flushall()
        try:
            cache = AsyncRows(client)
            for name, call in calls(cache, value).items():
                with pytest.raises(InvalidLookup, match=message):
                    await call()
                assert cache.fetched == [], name
            assert await client.dbsize() == 0
        finally:
            await client.aclose()

    asyncio.run(body())


def test_a_sorted_tuple_is_the_way_to_key_a_set(redis_client: redis.Redis) -> None:
    """What the refusal suggests works: one entry, reached by get and invalidate alike."""
    cache = Rows(redis_client, serializer=PickleSerializer(b"k" * 32))  # keeps tuples
    tags = tuple(sorted({"b", "a"}))
    assert cache.get("row", "id", tags) == {"id": ("a", "b")}
    assert cache.get("row", "id", ("a", "b")) == {"id": ("a", "b")}  # a hit
    assert len(cache.fetched) == 1
    cache.invalidate("row", "id", ("a", "b"))
    cache.get("row", "id", tags)
    assert len(cache.fetched) == 2
