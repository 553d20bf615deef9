"""The contract suite against the simplest cache: a dict database behind a CacheCow subclass."""

from __future__ import annotations

import threading
from typing import Any

import redis

from cachecow import CacheCow
from cachecow.testing.contract import CacheCowContract


class DictCache(CacheCow):
    """Caches rows of a dict database: ``{key: {"id": key, "payload": ...}}``."""

    def __init__(self, redis: redis.Redis, db: dict[int, dict[str, Any]], **options: Any) -> None:
        super().__init__(redis, **options)
        self.db = db
        self.lock = threading.Lock()

    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        with self.lock:
            row = self.db.get(id_val)
            return None if row is None else dict(row)


class TestDictCacheContract(CacheCowContract):
    model = "item"
    field = "id"

    def make_cache(self, redis: redis.Redis, **options: Any) -> CacheCow:
        if not hasattr(self, "db"):
            self.db: dict[int, dict[str, Any]] = {}
        return DictCache(redis, self.db, **options)

    def write(self, key: int, payload: str) -> None:
        if not hasattr(self, "db"):
            self.db = {}
        self.db[key] = {"id": key, "payload": payload}

    def delete(self, key: int) -> None:
        self.db.pop(key, None)

    def payload_of(self, obj: Any) -> str:
        payload: str = obj["payload"]
        return payload
