"""The contract suite against the SQLAlchemy adapter, sync and async, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import Session

from cachecow import AsyncCacheCow, CacheCow
from cachecow.adapters.sqlalchemy import AsyncSQLAlchemyCache, SQLAlchemyCache
from cachecow.testing.contract import AsyncCacheCowContract, CacheCowContract
from tests.adapters.sa_env import Database, Item


class SQLAlchemyDatabase:
    """The contract's write side: committed writes through an unwatched session, on an engine
    of its own (the commits of a watched engine's connections invalidate by themselves, and
    earlier tests watch ``db.engine``)."""

    model = Item
    field = "id"

    @pytest.fixture(autouse=True)
    def _database(self, db: Database) -> None:
        self.database = db

    def write(self, key: int, payload: str) -> None:
        with Session(self.database.outside) as session:
            session.merge(Item(id=key, payload=payload))
            session.commit()

    def delete(self, key: int) -> None:
        with Session(self.database.outside) as session:
            session.execute(delete(Item).where(Item.id == key))
            session.commit()

    def payload_of(self, obj: Any) -> str:
        payload: str = obj.payload
        return payload


class TestSQLAlchemyContract(SQLAlchemyDatabase, CacheCowContract):
    def make_cache(self, redis: redis.Redis, **options: Any) -> CacheCow:
        return SQLAlchemyCache(redis, self.database.Session, **options)


class TestAsyncSQLAlchemyContract(SQLAlchemyDatabase, AsyncCacheCowContract):
    def make_async_cache(self, redis: aredis.Redis, **options: Any) -> AsyncCacheCow:
        return AsyncSQLAlchemyCache(
            redis, async_sessionmaker(self.database.async_engine()), **options
        )
