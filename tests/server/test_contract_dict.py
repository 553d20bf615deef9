"""The contract suite against the simplest caches: a dict database behind a CacheCow subclass,
and behind an AsyncCacheCow subclass whose fetch is a coroutine."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from typing import Any

import redis
import redis.asyncio as aredis

from cachecow import AsyncCacheCow, CacheCow
from cachecow.keys import Field
from cachecow.testing.contract import AsyncCacheCowContract, CacheCowContract

Row = dict[str, Any]


class DictCache(CacheCow):
    """Caches rows of a dict database: ``{key: {"id": key, "payload": ...}}``."""

    def __init__(self, redis: redis.Redis, db: dict[int, Row], **options: Any) -> None:
        super().__init__(redis, **options)
        self.db = db
        self.lock = threading.Lock()

    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        with self.lock:
            row = self.db.get(id_val)
            return None if row is None else dict(row)

    def unique_lookups(self, obj: Any) -> Iterable[tuple[Field, Any]]:
        return [("id", obj["id"])]


class AsyncDictCache(AsyncCacheCow):
    """The same, with coroutine hooks, as an async ORM's would be."""

    def __init__(self, redis: aredis.Redis, db: dict[int, Row], **options: Any) -> None:
        super().__init__(redis, **options)
        self.db = db

    async def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        await asyncio.sleep(0)  # a real await point, as a database driver has
        row = self.db.get(id_val)
        return None if row is None else dict(row)

    def unique_lookups(self, obj: Any) -> Iterable[tuple[Field, Any]]:
        return [("id", obj["id"])]


class DictDatabase:
    """The write side the contract needs, over one dict shared by every cache of a test."""

    model = "item"
    field = "id"

    @property
    def db(self) -> dict[int, Row]:
        if not hasattr(self, "_db"):
            self._db: dict[int, Row] = {}
        return self._db

    def write(self, key: int, payload: str) -> None:
        self.db[key] = {"id": key, "payload": payload}

    def delete(self, key: int) -> None:
        self.db.pop(key, None)

    def payload_of(self, obj: Any) -> str:
        payload: str = obj["payload"]
        return payload


class TestDictCacheContract(DictDatabase, CacheCowContract):
    def make_cache(self, redis: redis.Redis, **options: Any) -> CacheCow:
        return DictCache(redis, self.db, **options)


class TestAsyncDictCacheContract(DictDatabase, AsyncCacheCowContract):
    def make_async_cache(self, redis: aredis.Redis, **options: Any) -> AsyncCacheCow:
        return AsyncDictCache(redis, self.db, **options)
