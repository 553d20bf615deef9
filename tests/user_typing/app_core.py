"""User code of the core classes, type-checked by ``mypy --strict`` (see test_user_typing.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aredis
from typing_extensions import assert_type

import cachecow


@dataclass
class Row:
    id: int


class RowCache(cachecow.CacheCow):
    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Row:
        return Row(id_val)


class AsyncRowCache(cachecow.AsyncCacheCow):
    async def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Row:
        return Row(id_val)


def reads(client: redis.Redis) -> None:
    cache = RowCache(client, ttl=60, busy="fetch", ttls={Row: 5})
    assert_type(cache.get(Row, "id", 1), Row)
    assert_type(cache.peek(Row, "id", 1), Row | None)
    assert_type(cache.get_many(Row, "id", [1, 2]), list[Row | None])
    RowCache(client, busy=cachecow.BusyPolicy.WAIT)


def functions(client: redis.Redis) -> None:
    cache = cachecow.CacheCow(client)

    @cache.cached(ttl=60)
    def price(sku: str, qty: int = 1) -> float:
        return 1.5 * qty

    class Report:
        @cache.cached(name="report.total")
        def total(self, year: int) -> int:
            return year

    assert_type(price("tea", qty=2), float)
    assert_type(price.invalidate("tea"), None)
    assert_type(price.many([("tea",), ("cake", 2)]), list[float])
    report = Report()
    assert_type(report.total(2024), int)
    assert_type(report.total.many([(2024,), (2025,)]), list[int])
    assert_type(Report.total(report, 2024), int)
    assert_type(Report.total.many(report, [(2024,)]), list[int])


async def async_reads(client: aredis.Redis) -> None:
    cache = AsyncRowCache(client, busy="wait")
    assert_type(await cache.get(Row, "id", 1), Row)
    assert_type(await cache.peek(Row, "id", 1), Row | None)
    assert_type(await cache.get_many(Row, "id", [1, 2]), list[Row | None])


async def async_functions(client: aredis.Redis) -> None:
    cache = cachecow.AsyncCacheCow(client)

    @cache.cached()
    async def price(sku: str, qty: int = 1) -> float:
        return 1.5 * qty

    class Report:
        @cache.cached(name="report.total")
        async def total(self, year: int) -> int:
            return year

    assert_type(await price("tea", qty=2), float)
    assert_type(await price.invalidate("tea"), None)
    assert_type(await price.many([("tea",), ("cake", 2)]), list[float])
    assert_type(await Report().total.many([(2024,)]), list[int])
