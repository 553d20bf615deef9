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


async def async_reads(client: aredis.Redis) -> None:
    cache = AsyncRowCache(client, busy="wait")
    assert_type(await cache.get(Row, "id", 1), Row)
    assert_type(await cache.peek(Row, "id", 1), Row | None)
    assert_type(await cache.get_many(Row, "id", [1, 2]), list[Row | None])
