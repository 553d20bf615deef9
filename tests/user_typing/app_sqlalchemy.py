"""User code of the SQLAlchemy adapter, type-checked by ``mypy --strict``."""

from __future__ import annotations

import redis
import redis.asyncio as aredis
from sqlalchemy import String, create_engine
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from typing_extensions import assert_type

import cachecow
from cachecow.adapters.sqlalchemy import AsyncSQLAlchemyCache, SQLAlchemyCache


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100), unique=True)


def reads(client: redis.Redis) -> str:
    Session = sessionmaker(create_engine("sqlite://"))
    cache = SQLAlchemyCache(client, Session, ttl=60, busy="wait", prefix="app:")
    cache.watch(Session)
    user = cache.get(User, "id", 1)
    assert_type(user, User)
    assert_type(cache.get_many(User, "id", [1, 2]), list[User | None])
    return user.email


async def async_reads(client: aredis.Redis) -> str:
    Session = async_sessionmaker(create_async_engine("sqlite+aiosqlite://"))
    cache = AsyncSQLAlchemyCache(client, Session, busy=cachecow.BusyPolicy.FETCH)
    user = await cache.get(User, "email", "ada@example.com")
    assert_type(await cache.get_many(User, "id", [1]), list[User | None])
    return user.email
