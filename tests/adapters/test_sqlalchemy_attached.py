"""``get_attached``: a cached row merged into the caller's session without a query, so its
relationships load lazily, as in a FastAPI handler that returns a row with its relations; and
the session's own data wins wherever the cache cannot know it (rows it holds, its pending
changes, what its transaction wrote)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy import update
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm.exc import DetachedInstanceError

from cachecow import NotFound
from cachecow.adapters.sqlalchemy import AsyncSQLAlchemyCache, SQLAlchemyCache
from tests.adapters.sa_env import Database, Org, User


class Selects:
    """Counts the SELECT statements an engine runs."""

    def __init__(self, engine: sa.Engine) -> None:
        self.count = 0
        self.engine = engine
        sa.event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            self.count += 1

    def close(self) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._seen)


@pytest.fixture
def cache(db: Database, redis_client: redis.Redis) -> SQLAlchemyCache:
    cache = SQLAlchemyCache(redis_client, db.Session)
    cache.watch(db.Session, relay=False)
    with db.Session() as session:
        session.add_all([Org(id=1, name="acme"), User(id=1, email="a@x.io", name="ada", org_id=1)])
        session.commit()
    cache.get(User, "id", 1)  # cached
    cache.get(User, "email", "a@x.io")
    return cache


def test_a_cached_row_joins_the_session_and_loads_its_relations(
    db: Database, cache: SQLAlchemyCache
) -> None:
    selects = Selects(db.engine)
    try:
        with db.Session() as session:
            user = cache.get_attached(session, User, "email", "a@x.io")
            assert user in session
            assert selects.count == 0  # no query for the row itself
            assert user.org is not None
            assert user.org.name == "acme"  # lazy-loaded through the session
            assert selects.count == 1
            assert not session.is_modified(user)
    finally:
        selects.close()
    detached = cache.get(User, "id", 1)
    with pytest.raises(DetachedInstanceError):
        _ = detached.org  # what get_attached is for


def test_the_instance_the_session_holds_is_returned_untouched(
    db: Database, cache: SQLAlchemyCache
) -> None:
    with db.Session() as session:
        held = session.get(User, 1)
        assert held is not None
        assert cache.get_attached(session, User, "id", 1) is held
        held.name = "pending"  # a change the cache knows nothing of
        again = cache.get_attached(session, User, "email", "a@x.io")
        assert again is held
        assert again.name == "pending"


def test_a_session_that_wrote_reads_its_own_data(db: Database, cache: SQLAlchemyCache) -> None:
    with db.Session() as session:
        session.execute(update(User).where(User.id == 1).values(name="uncommitted"))
        user = cache.get_attached(session, User, "email", "a@x.io")
        assert user.name == "uncommitted"  # not the cached "ada"
        session.rollback()
    assert cache.get(User, "id", 1).name == "ada"


def test_a_session_that_wrote_raw_sql_through_execute_reads_its_own_data(
    db: Database, cache: SQLAlchemyCache
) -> None:
    with db.Session() as session:
        session.execute(sa.text("UPDATE cc_users SET name = 'raw' WHERE id = 1"))
        assert cache.get_attached(session, User, "id", 1).name == "raw"
        session.rollback()


def test_no_such_row(db: Database, cache: SQLAlchemyCache) -> None:
    with db.Session() as session:
        with pytest.raises(NotFound):
            cache.get_attached(session, User, "id", 404)
        session.add(Org(id=2, name="pending org"))  # pending: the session answers itself
        with pytest.raises(NotFound):
            cache.get_attached(session, User, "id", 404)


def test_async_get_attached(db: Database, cache: SQLAlchemyCache, redis_server: Any) -> None:
    import redis.asyncio as aredis

    async def scenario() -> None:
        engine = db.async_engine()
        factory = async_sessionmaker(engine, expire_on_commit=False)
        client = aredis.Redis(port=redis_server.port)
        acache = AsyncSQLAlchemyCache(client, factory)
        async with factory() as session:
            user = await acache.get_attached(session, User, "id", 1)
            assert user in session
            org = await session.run_sync(lambda _: user.org)
            assert org is not None
            assert org.name == "acme"
            held = await session.get(User, 1)
            assert held is user
        await client.aclose()
        await engine.dispose()

    asyncio.run(scenario())
