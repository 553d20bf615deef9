"""A fourth adapter on ``adapters/_base.py`` in a few lines: dataclass rows in SQLite through the
standard ``sqlite3`` module, invalidated by hand after each write (a real adapter wires that
into its ORM's commits). It shows what an adapter supplies; the base does the lookup hooks,
``unique_lookups``, the batched ``fetch_many`` and the row codec."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import pytest
import redis

import cachecow
from cachecow import InvalidLookup, NotFound
from cachecow.adapters._base import ModelCache, ModelInfo
from cachecow.adapters._codecs import codec_for
from cachecow.keys import Field


class SQLiteCache(ModelCache[ModelInfo], cachecow.CacheCow):
    def __init__(self, redis: Any, db: sqlite3.Connection, **options: Any) -> None:
        super().__init__(redis, **options)
        self.db = db
        self._models: dict[Any, ModelInfo] = {}

    def inspect_model(self, cls: Any) -> ModelInfo:
        fields = dataclasses.fields(cls)
        return ModelInfo(
            cls=cls,
            label=cls.__qualname__,
            lookups=list(cls.unique),
            attrs=[f.name for f in fields],
            codecs=[codec_for(f.type, f.name) for f in fields],
            fingerprint=repr([(f.name, f.type) for f in fields]),
        )

    def coerce_value(self, info: ModelInfo, name: str, value: Any) -> Any:
        if name == "id" and isinstance(value, str) and value.isdigit():
            return int(value)  # "1" and 1 reach one entry, as the row's invalidation does
        return value

    def select_many(self, cls: Any, id_field: Field, id_vals: Sequence[Any]) -> list[Any]:
        assert isinstance(id_field, str)  # (a composite lookup would be an OR of ANDs)
        info = self.model_info(cls)
        marks = ", ".join("?" * len(id_vals))
        sql = f"SELECT {', '.join(info.attrs)} FROM {cls.table} WHERE {id_field} IN ({marks})"
        return [cls(*row) for row in self.db.execute(sql, list(id_vals))]

    def fetch(self, cls: Any, id_field: Field, id_val: Any) -> Any:
        for obj in self.select_many(cls, id_field, [id_val]):
            return obj
        raise NotFound(cls, id_field, id_val)

    def serialize(self, obj: Any) -> bytes:
        info = self.model_info(type(obj))
        return self.serializer.dumps(info.encode_row(getattr(obj, a) for a in info.attrs))

    def deserialize(self, cls: Any, data: bytes) -> Any:
        return cls(*self.model_info(cls).decode_row(self.serializer.loads(data)))


@dataclasses.dataclass
class User:
    table: ClassVar[str] = "users"
    unique: ClassVar[tuple[str, ...]] = ("id", "email")
    id: int
    email: str
    name: str


@pytest.fixture
def cache(redis_client: redis.Redis) -> Iterator[SQLiteCache]:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT)")
    db.executemany("INSERT INTO users VALUES (?, ?, ?)", [(1, "ada@x", "Ada"), (2, "bo@x", "Bo")])
    yield SQLiteCache(redis_client, db)
    db.close()


def test_gets_by_each_unique_lookup_and_invalidates_after_a_write(cache: SQLiteCache) -> None:
    assert cache.get(User, "email", "ada@x") == User(1, "ada@x", "Ada")
    assert cache.get(User, "id", "1") == User(1, "ada@x", "Ada")  # coerce_value
    cache.db.execute("UPDATE users SET name = 'Ada L' WHERE id = 1")
    assert cache.get(User, "id", 1).name == "Ada"  # cached
    cache.invalidate_object(User(1, "ada@x", "Ada L"))  # unique_lookups: id and email
    assert cache.get(User, "id", 1).name == "Ada L"
    assert cache.get(User, "email", "ada@x").name == "Ada L"


def test_get_many_is_one_query_and_refuses_a_lookup_that_is_not_unique(
    cache: SQLiteCache,
) -> None:
    queries: list[str] = []
    cache.db.set_trace_callback(queries.append)
    assert cache.get_many(User, "id", [2, 1, 3]) == [
        User(2, "bo@x", "Bo"),
        User(1, "ada@x", "Ada"),
        None,
    ]
    assert len(queries) == 1
    with pytest.raises(InvalidLookup, match="'name' is not a unique lookup"):
        cache.get(User, "name", "Ada")
