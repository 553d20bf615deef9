"""The SQLAlchemy adapter on SQLite and PostgreSQL: lookups, exact types, detached objects, and
every transaction rule of invalidation, each forced and checked against real Redis."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy import delete, insert, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

import cachecow
from cachecow import InvalidLookup, NotFound
from cachecow.adapters.sqlalchemy import AsyncSQLAlchemyCache, SQLAlchemyCache
from cachecow.adapters.sqlalchemy import relay as sqlalchemy_relay
from cachecow.testing.contract import FetchProbe
from tests.adapters.sa_env import MODELS, Color, Database, Everything, Membership, Org, User
from tests.support.lookups import BAD_VALUES, calls


@pytest.fixture
def cache(db: Database, redis_client: redis.Redis) -> Iterator[SQLAlchemyCache]:
    cache = SQLAlchemyCache(redis_client, db.Session)
    cache.watch(db.Session)
    yield cache
    cache.close_relays()


def add(db: Database, *objs: Any) -> None:
    with db.Session() as session:
        session.add_all(objs)
        session.commit()


def cached(
    cache: SQLAlchemyCache, redis_client: redis.Redis, model: Any, field: Any, value: Any
) -> Any:
    """The object the cache holds for a lookup right now (None: absent or a tombstone)."""
    raw = redis_client.get(cache.get_keys(model, field, value)[0])
    if raw is None or raw == cachecow.TOMBSTONE:
        return None
    return cache.deserialize(model, raw)


def outbox_rows(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM cachecow_outbox").scalar_one())


def wait_until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class Queries:
    """Counts the SELECT statements an engine runs."""

    def __init__(self, engine: sa.Engine) -> None:
        self.count = 0
        sa.event.listen(engine, "before_cursor_execute", self._count)
        self.engine = engine

    def _count(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            self.count += 1

    def close(self) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._count)


@pytest.fixture
def queries(db: Database, cache: SQLAlchemyCache) -> Iterator[Queries]:
    with db.Session() as session:  # the once-per-model check that the triggers are installed
        for model in MODELS:
            cache._check_installed(session.connection(), model)
    q = Queries(db.engine)
    yield q
    q.close()


# -- lookups ------------------------------------------------------------------------------------


def test_unique_lookups_only(cache: SQLAlchemyCache, db: Database) -> None:
    add(db, User(id=1, email="a@x.io", name="Ada"), Membership(id=1, org_id=7, user_id=1, role="r"))
    assert cache.get(User, "id", 1).email == "a@x.io"
    assert cache.get(User, "email", "a@x.io").id == 1
    assert cache.get(Membership, ("user_id", "org_id"), (1, 7)).role == "r"
    assert cache.get(Membership, ("org_id", "user_id"), (7, 1)).role == "r"
    with pytest.raises(
        InvalidLookup, match=r"'name' is not a unique lookup; valid lookups are 'id', 'email'"
    ):
        cache.get(User, "name", "Ada")
    with pytest.raises(InvalidLookup, match=r"valid lookups are 'id', \(org_id, user_id\)"):
        cache.get_many(Membership, "org_id", [7])
    with pytest.raises(InvalidLookup):
        cache.invalidate(User, "name", "Ada")
    with pytest.raises(cachecow.ConfigurationError, match="not a mapped SQLAlchemy class"):
        cache.get(dict, "id", 1)


def test_get_many_is_one_in_query(cache: SQLAlchemyCache, db: Database, queries: Queries) -> None:
    add(db, *[User(id=i, email=f"{i}@x.io") for i in range(1, 51)])
    queries.count = 0
    users = cache.get_many(User, "id", [*range(1, 51), 999])
    assert [u.id for u in users[:-1]] == list(range(1, 51))
    assert users[-1] is None
    assert queries.count == 1
    assert [u.email for u in cache.get_many(User, "email", ["3@x.io", "nope"]) if u] == ["3@x.io"]
    queries.count = 0
    cache.get_many(User, "id", range(1, 51))
    assert queries.count == 0
    members = [Membership(id=i, org_id=i % 3, user_id=i, role=f"r{i}") for i in range(1, 11)]
    add(db, *members)
    queries.count = 0
    got = cache.get_many(Membership, ("user_id", "org_id"), [(i, i % 3) for i in range(1, 11)])
    assert [m.role for m in got] == [f"r{i}" for i in range(1, 11)]
    assert queries.count == 1


def test_a_lookup_of_null_is_refused(cache: SQLAlchemyCache, db: Database) -> None:
    with pytest.raises(InvalidLookup, match="NULL"):
        cache.get(User, "email", None)


@pytest.mark.parametrize("field", ["id", "email"])
def test_every_call_refuses_a_value_no_column_holds(
    cache: SQLAlchemyCache, db: Database, queries: Queries, field: str
) -> None:
    for value in BAD_VALUES:
        for name, call in calls(cache, User, field, value).items():
            with pytest.raises(InvalidLookup):
                call()
            assert queries.count == 0, (name, value)  # refused before the database
    assert cache.redis.dbsize() == 0


def test_a_session_factory_of_the_other_kind_is_refused_at_construction(
    redis_client: redis.Redis,
) -> None:
    with pytest.raises(cachecow.ConfigurationError, match="use AsyncSQLAlchemyCache"):
        SQLAlchemyCache(redis_client, async_sessionmaker())  # type: ignore[arg-type]
    with pytest.raises(cachecow.ConfigurationError, match="use AsyncSQLAlchemyCache"):
        SQLAlchemyCache(redis_client, sessionmaker(class_=AsyncSession))
    client = redis.asyncio.Redis(port=redis_client.connection_pool.connection_kwargs["port"])
    with pytest.raises(cachecow.ConfigurationError, match="use SQLAlchemyCache"):
        AsyncSQLAlchemyCache(client, sessionmaker())  # type: ignore[arg-type]


def test_reading_through_an_unwatched_engine_is_reported_once_per_model(
    db: Database, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    add(db, User(id=1, email="a@x.io"), Org(id=1, name="o"))
    cache = SQLAlchemyCache(redis_client, db.Session)  # watch() forgotten
    with caplog.at_level("WARNING", logger="cachecow"):
        cache.get(User, "id", 1)
        cache.get(User, "email", "a@x.io")
        cache.get_many(Org, "id", [1])
    warned = [r.getMessage() for r in caplog.records if "does not watch" in r.getMessage()]
    assert len(warned) == 2, warned  # once per model
    assert warned[0].startswith("cachecow: User is read into the cache through ")
    assert "Call cache.watch(Session)" in warned[0]
    caplog.clear()
    watched = SQLAlchemyCache(redis_client, db.Session)
    watched.watch(db.Session, relay=False)
    with caplog.at_level("WARNING", logger="cachecow"):
        watched.get(User, "id", 1)
    assert not [r for r in caplog.records if "does not watch" in r.getMessage()]


# -- objects ------------------------------------------------------------------------------------


def everything(db: Database) -> Everything:
    aware = dt.datetime(2024, 5, 1, 12, 30, 45, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    return Everything(
        id=1,
        aware=aware if db.name == "postgresql" else aware.replace(tzinfo=None),
        naive=dt.datetime(2023, 1, 2, 3, 4, 5, 6),
        day=dt.date(1999, 12, 31),
        clock=dt.time(23, 59, 58, 999999),
        span=dt.timedelta(days=3, seconds=7, microseconds=11),
        money=decimal.Decimal("123456.789012"),
        ratio=0.1 + 0.2,
        token=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        blob=b"\x00\xffbytes\n",
        color=Color.BLUE,
        doc={"a": [1, 2.5, None, {"b": "c"}], "u": "é"},
        flag=False,
        text="x" * 300,
    )


COLUMNS = ["aware", "naive", "day", "clock", "span", "money", "ratio", "token", "blob", "color",
           "doc", "flag", "text"]  # fmt: skip


def test_every_column_type_round_trips_exactly(cache: SQLAlchemyCache, db: Database) -> None:
    add(db, everything(db), Everything(id=2))
    with db.Session() as session:
        loaded = session.get(Everything, 1)
        expected = {c: getattr(loaded, c) for c in COLUMNS}
    fetched = cache.get(Everything, "id", 1)  # a miss: the object fetch loaded
    hit = cache.get(Everything, "id", 1)  # a hit: rebuilt from the cached bytes
    assert cache.metrics.snapshot().hits == 1
    for column in COLUMNS:
        assert getattr(hit, column) == expected[column] == getattr(fetched, column), column
        assert type(getattr(hit, column)) is type(expected[column]), column
    if db.name == "postgresql":
        assert hit.aware.utcoffset() == dt.timedelta(hours=2) or hit.aware.utcoffset() is not None
    assert hit.naive.tzinfo is None
    nulls = cache.get(Everything, "id", 2)
    nulls = cache.get(Everything, "id", 2)
    assert all(getattr(nulls, c) is None for c in COLUMNS)


def test_cached_objects_are_detached_and_attach_without_a_query(
    cache: SQLAlchemyCache, db: Database, queries: Queries
) -> None:
    add(db, Org(id=7, name="Acme"), User(id=1, email="a@x.io", name="Ada", org_id=7))
    cache.get(User, "id", 1)
    user = cache.get(User, "id", 1)
    state = sa.inspect(user)
    assert state.detached
    assert state.key is not None
    assert not state.expired_attributes
    assert (user.id, user.email, user.name, user.org_id) == (1, "a@x.io", "Ada", 7)
    queries.count = 0
    with db.Session() as session:
        session.add(user)  # attach: no query
        assert queries.count == 0
        assert sa.inspect(user).persistent
        assert not session.is_modified(user)
        assert user.org is not None
        assert user.org.name == "Acme"
        user.name = "Ada Lovelace"
        session.commit()
    assert cache.get(User, "id", 1).name == "Ada Lovelace"  # and the watch invalidated it


def test_a_value_cached_under_another_schema_is_a_miss(
    cache: SQLAlchemyCache, db: Database, redis_client: redis.Redis
) -> None:
    add(db, User(id=1, email="a@x.io", name="Ada"))
    cache.get(User, "id", 1)
    value_key = cache.get_keys(User, "id", 1)[0]
    row = cache.serializer.loads(redis_client.get(value_key))
    row[0] = "another-fingerprint"  # as if written by a process with another set of columns
    redis_client.set(value_key, cache.serializer.dumps(row))
    assert cache.get(User, "id", 1).name == "Ada"
    assert cache.metrics.snapshot().decode_failures == 1
    assert (
        cache.serializer.loads(redis_client.get(value_key))[0] == cache.model_info(User).fingerprint
    )


# -- invalidation and transactions --------------------------------------------------------------


def test_a_reader_racing_a_writers_transaction(
    cache: SQLAlchemyCache, db: Database, redis_client: redis.Redis
) -> None:
    """The reader leases and reads the old row before the writer commits; the writer's commit
    invalidates (the watch), so the reader's commit is refused; nobody calls invalidate."""
    add(db, User(id=1, email="a@x.io", name="old"))
    reader_cache = SQLAlchemyCache(redis_client, db.Session)
    probe = FetchProbe(reader_cache)
    probe.gate_next()
    result: dict[str, Any] = {}
    reader = threading.Thread(target=lambda: result.update(user=reader_cache.get(User, "id", 1)))
    with db.Session() as writer:
        user = writer.get(User, 1)
        user.name = "new"
        writer.flush()  # written, not committed
        reader.start()
        probe.wait_fetched()  # the reader read the committed row: the old one
        writer.commit()  # after_commit invalidates: the reader's lease is void
    probe.release()
    reader.join(10)
    assert result["user"].name == "old"
    assert reader_cache.metrics.snapshot().stale_commits == 1
    assert cached(cache, redis_client, User, "id", 1) is None
    assert cache.get(User, "id", 1).name == "new"


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_fetch_reads_past_the_callers_repeatable_read_snapshot(
    cache: SQLAlchemyCache, db: Database, redis_client: redis.Redis
) -> None:
    """A caller inside a long REPEATABLE READ transaction that began before the writer
    committed still gets, and caches, the committed row: fetch reads in a session of its own."""
    add(db, User(id=1, email="a@x.io", name="old"))
    caller = Session(db.engine.execution_options(isolation_level="REPEATABLE READ"))
    try:
        assert caller.get(User, 1).name == "old"  # the caller's snapshot starts here
        with db.Session() as writer:
            writer.get(User, 1).name = "new"
            writer.commit()  # the watch invalidates
        # The caller's own transaction still sees the old row...
        assert caller.execute(sa.select(User.name).where(User.id == 1)).scalar_one() == "old"
        # ...but the cache never serves or stores it.
        assert cache.get(User, "id", 1).name == "new"
        assert cached(cache, redis_client, User, "id", 1).name == "new"
    finally:
        caller.close()


def test_rollback_leaves_the_cache_untouched(
    cache: SQLAlchemyCache, db: Database, redis_client: redis.Redis
) -> None:
    add(db, User(id=1, email="a@x.io", name="old"))
    cache.get(User, "id", 1)
    before = cache.metrics.snapshot().invalidations
    with db.Session() as session:
        session.get(User, 1).name = "rolled back"
        session.flush()
        session.rollback()
    assert cache.metrics.snapshot().invalidations == before
    assert cached(cache, redis_client, User, "id", 1).name == "old"
    assert cache.get(User, "id", 1).name == "old"


def test_a_rolled_back_savepoint_drops_its_own_lookups(
    cache: SQLAlchemyCache, db: Database, redis_client: redis.Redis
) -> None:
    add(db, User(id=1, email="a@x.io", name="a"), User(id=2, email="b@x.io", name="b"))
    cache.get_many(User, "id", [1, 2])
    with db.Session() as session:
        session.get(User, 1).name = "a2"
        session.flush()
        try:
            with session.begin_nested():
                session.get(User, 2).name = "b2"
                session.flush()
                raise RuntimeError("undo the savepoint")
        except RuntimeError:
            pass
        session.commit()
    assert cached(cache, redis_client, User, "id", 1) is None  # the outer change: invalidated
    assert cached(cache, redis_client, User, "id", 2).name == "b"  # the undone one: untouched
    assert [u.name for u in cache.get_many(User, "id", [1, 2])] == ["a2", "b"]


def test_a_released_savepoint_waits_for_the_outermost_commit(
    cache: SQLAlchemyCache, db: Database, redis_client: redis.Redis
) -> None:
    add(db, User(id=1, email="a@x.io", name="a"))
    cache.get(User, "id", 1)
    start = cache.metrics.snapshot().invalidations
    with db.Session() as session:
        with session.begin_nested():
            session.get(User, 1).name = "a2"
        assert cached(cache, redis_client, User, "id", 1).name == "a"  # not yet
        session.commit()
    assert cached(cache, redis_client, User, "id", 1) is None
    with db.Session() as session:
        with session.begin_nested():
            session.get(User, 1).name = "a3"
        session.rollback()  # the outer transaction rolls back: nothing at all
    assert cache.get(User, "id", 1).name == "a2"
    assert cache.metrics.snapshot().invalidations == start + 2  # id and email, once


def test_a_changed_unique_field_invalidates_old_and_new(
    cache: SQLAlchemyCache, db: Database, redis_client: redis.Redis
) -> None:
    add(db, User(id=1, email="old@x.io", name="Ada"))
    assert cache.get(User, "email", "old@x.io").id == 1
    with pytest.raises(NotFound):
        cache.get(User, "email", "new@x.io")  # a tombstone under the new value
    with db.Session() as session:
        session.get(User, 1).email = "new@x.io"
        session.commit()
    assert cache.get(User, "email", "new@x.io").id == 1
    with pytest.raises(NotFound):
        cache.get(User, "email", "old@x.io")


def test_delete_leaves_a_tombstone_or_a_miss_never_the_old_row(
    cache: SQLAlchemyCache, db: Database, redis_client: redis.Redis
) -> None:
    add(db, User(id=1, email="a@x.io", name="Ada"))
    cache.get(User, "id", 1)
    cache.get(User, "email", "a@x.io")
    with db.Session() as session:
        session.delete(session.get(User, 1))
        session.commit()
    for field, value in (("id", 1), ("email", "a@x.io")):
        assert cached(cache, redis_client, User, field, value) is None
        with pytest.raises(NotFound):
            cache.get(User, field, value)


def test_an_insert_clears_tombstones_of_its_lookups(cache: SQLAlchemyCache, db: Database) -> None:
    for field, value in (("id", 5), ("email", "e@x.io")):
        with pytest.raises(NotFound):
            cache.get(User, field, value)
    add(db, User(id=5, email="e@x.io"))
    assert cache.get(User, "id", 5).email == "e@x.io"
    assert cache.get(User, "email", "e@x.io").id == 5


def test_bulk_update_of_1000_rows_leaves_no_stale_entry(
    cache: SQLAlchemyCache, db: Database, redis_client: redis.Redis
) -> None:
    with db.Session() as session:
        session.execute(
            insert(User), [{"id": i, "email": f"{i}@x.io", "name": "v1"} for i in range(1, 1001)]
        )
        session.commit()
    ids = list(range(1, 1001))
    assert {u.name for u in cache.get_many(User, "id", ids)} == {"v1"}
    assert {u.name for u in cache.get_many(User, "email", [f"{i}@x.io" for i in ids])} == {"v1"}
    with db.Session() as session:
        session.execute(update(User).where(User.id <= 1000).values(name="v2"))
        session.commit()
    stale = [
        i
        for i in ids
        if (c := cached(cache, redis_client, User, "id", i)) is not None and c.name != "v2"
    ]
    stale += [
        i
        for i in ids
        if (c := cached(cache, redis_client, User, "email", f"{i}@x.io")) is not None
        and c.name != "v2"
    ]
    assert stale == []
    assert {u.name for u in cache.get_many(User, "id", ids)} == {"v2"}


def test_bulk_update_of_a_unique_field_and_bulk_delete(
    cache: SQLAlchemyCache, db: Database
) -> None:
    add(db, User(id=1, email="old@x.io"), User(id=2, email="two@x.io"))
    cache.get(User, "email", "old@x.io")
    with pytest.raises(NotFound):
        cache.get(User, "email", "new@x.io")
    with db.Session() as session:
        session.execute(update(User).where(User.id == 1).values(email="new@x.io"))
        session.commit()
    assert cache.get(User, "email", "new@x.io").id == 1
    with pytest.raises(NotFound):
        cache.get(User, "email", "old@x.io")
    cache.get(User, "id", 2)
    with db.Session() as session:
        session.execute(delete(User).where(User.email == "two@x.io"))
        session.commit()
    with pytest.raises(NotFound):
        cache.get(User, "id", 2)


def test_a_rolled_back_bulk_update_invalidates_nothing(
    cache: SQLAlchemyCache, db: Database
) -> None:
    add(db, User(id=1, email="a@x.io", name="v1"))
    cache.get(User, "id", 1)
    before = cache.metrics.snapshot().invalidations
    with db.Session() as session:
        session.execute(update(User).values(name="never"))
        session.rollback()
    assert cache.metrics.snapshot().invalidations == before


def test_unwatched_sessions_leave_their_rows_to_a_relay(
    db: Database, redis_client: redis.Redis
) -> None:
    # An engine of its own: no cache of this process watches it (db.engine's are watched).
    Sessions = sessionmaker(db.outside)
    cache = SQLAlchemyCache(redis_client, Sessions)  # no watch(): no drain, no relay
    with Sessions.begin() as session:
        session.add(User(id=1, email="a@x.io", name="v1"))
    cache.get(User, "id", 1)
    with Sessions() as session:
        session.get(User, 1).name = "v2"
        session.commit()
    assert cache.get(User, "id", 1).name == "v1"  # stale until a relay delivers the row
    assert outbox_rows(db) == 2
    relay = sqlalchemy_relay(cache, db.outside)
    try:
        wait_until(lambda: outbox_rows(db) == 0)
    finally:
        relay.stop()
    assert cache.get(User, "id", 1).name == "v2"


def test_watching_one_session(db: Database, redis_client: redis.Redis) -> None:
    cache = SQLAlchemyCache(redis_client, db.Session)
    add(db, User(id=1, email="a@x.io", name="v1"))
    cache.get(User, "id", 1)
    with db.Session() as session:
        cache.watch(session, relay=False)
        session.get(User, 1).name = "v2"
        session.commit()
    assert cache.get(User, "id", 1).name == "v2"


def test_warm_on_write_refills_through_the_lease(db: Database, redis_client: redis.Redis) -> None:
    cache = SQLAlchemyCache(redis_client, db.Session)
    cache.watch(db.Session, warm=True, relay=False)
    add(db, User(id=1, email="a@x.io", name="v1"))  # a new row: warmed after commit
    probe = FetchProbe(cache)
    assert cache.get(User, "id", 1).name == "v1"
    assert probe.calls == 0  # a hit: the commit refilled it
    with db.Session() as session:
        session.get(User, 1).name = "v2"
        session.commit()
    assert cache.get(User, "id", 1).name == "v2"
    assert probe.calls == 0
    assert cache.metrics.snapshot().stale_commits == 0


# -- async ----------------------------------------------------------------------------------------


def test_async_cache_with_a_watched_async_sessionmaker(db: Database, redis_server: Any) -> None:
    import redis.asyncio as aredis

    async def scenario() -> None:
        engine = db.async_engine()
        factory = async_sessionmaker(engine, expire_on_commit=False)
        client = aredis.Redis(port=redis_server.port)
        await client.flushall()
        cache = AsyncSQLAlchemyCache(client, factory)
        cache.watch(factory)
        async with factory() as session:
            session.add_all(
                [User(id=1, email="a@x.io", name="v1"), User(id=2, email="b@x.io", name="b")]
            )
            await session.commit()
        assert (await cache.get(User, "id", 1)).name == "v1"
        assert [u.id for u in await cache.get_many(User, "email", ["a@x.io", "b@x.io"])] == [1, 2]
        async with factory() as session:
            (await session.get(User, 1)).email = "new@x.io"
            await session.commit()
        assert (await cache.get(User, "email", "new@x.io")).id == 1
        with pytest.raises(NotFound):
            await cache.get(User, "email", "a@x.io")
        before = cache.metrics.snapshot().invalidations
        async with factory() as session:
            (await session.get(User, 2)).name = "never"
            await session.flush()
            await session.rollback()
        assert cache.metrics.snapshot().invalidations == before
        async with factory() as session:
            await session.execute(update(User).values(name="bulk"))
            await session.commit()
        assert {u.name for u in await cache.get_many(User, "id", [1, 2])} == {"bulk"}
        await client.aclose()
        await engine.dispose()

    asyncio.run(scenario())


# -- regressions: what the first review of the adapter found ------------------------------------


def test_an_expired_unique_field_still_invalidates_its_old_value(
    cache: SQLAlchemyCache, db: Database
) -> None:
    """expire_on_commit (the default) expires every attribute: setting one then records no old
    value, so the adapter reads the old values from the database before the flush."""
    add(db, User(id=1, email="old@x.io", name="Ada"))
    assert cache.get(User, "email", "old@x.io").id == 1
    with db.Session() as session:
        user = session.get(User, 1)
        session.commit()  # expires user
        user.email = "new@x.io"  # set without loading: no old value in the history
        session.commit()
    with pytest.raises(NotFound):
        cache.get(User, "email", "old@x.io")
    assert cache.get(User, "email", "new@x.io").id == 1


def test_a_deferred_unique_field_still_invalidates_its_old_value(
    cache: SQLAlchemyCache, db: Database
) -> None:
    from sqlalchemy.orm import load_only

    add(db, User(id=1, email="old@x.io", name="Ada"))
    cache.get(User, "email", "old@x.io")
    with db.Session() as session:
        user = session.scalars(sa.select(User).options(load_only(User.name))).one()
        user.email = "new@x.io"
        session.commit()
    with pytest.raises(NotFound):
        cache.get(User, "email", "old@x.io")


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_row_that_matches_a_bulk_update_only_at_its_execution(
    cache: SQLAlchemyCache, db: Database, redis_client: redis.Redis
) -> None:
    """Between the pre-select and the UPDATE, another transaction makes row 2 match the WHERE and
    a reader caches it; the UPDATE changes it too, so the commit must invalidate it. (PostgreSQL:
    under SQLite's locking the other writer cannot commit inside that window.)"""
    add(db, User(id=1, email="z1@x.io", name="A"), User(id=2, email="b@x.io", name="B"))
    fired = []

    def interleave(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if fired or not statement.lstrip().upper().startswith("UPDATE"):
            return
        fired.append(True)
        with db.Session() as other:  # watched: its commit invalidates row 2
            other.get(User, 2).email = "z2@x.io"
            other.commit()
        assert cache.get(User, "id", 2).email == "z2@x.io"  # a reader caches the new row 2

    sa.event.listen(db.engine, "before_cursor_execute", interleave)
    try:
        with db.Session() as session:
            session.execute(update(User).where(User.email.like("z%")).values(name="Renamed"))
            session.commit()
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", interleave)
    assert fired
    assert cache.get(User, "id", 2).name == "Renamed"
    assert cache.get(User, "email", "z2@x.io").name == "Renamed"


def test_bulk_update_with_bound_parameters(cache: SQLAlchemyCache, db: Database) -> None:
    add(db, User(id=1, email="a@x.io", name="v1"))
    cache.get(User, "id", 1)
    with db.Session() as session:
        stmt = update(User).where(User.id == sa.bindparam("uid")).values(name="v2")
        session.execute(stmt, {"uid": 1})
        session.commit()
    assert cache.get(User, "id", 1).name == "v2"


def test_bulk_update_by_primary_key_touches_only_those_rows(
    cache: SQLAlchemyCache, db: Database, redis_client: redis.Redis, queries: Queries
) -> None:
    add(db, *[User(id=i, email=f"{i}@x.io", name="v1") for i in (1, 2, 3)])
    cache.get_many(User, "id", [1, 2, 3])
    with db.Session() as session:
        session.execute(update(User), [{"id": 1, "name": "n1"}, {"id": 2, "name": "n2"}])
        session.commit()
    assert cached(cache, redis_client, User, "id", 3).name == "v1"  # not invalidated
    assert [u.name for u in cache.get_many(User, "id", [1, 2, 3])] == ["n1", "n2", "v1"]


def test_insert_values_clears_tombstones(cache: SQLAlchemyCache, db: Database) -> None:
    with pytest.raises(NotFound):
        cache.get(User, "email", "v@x.io")
    with db.Session() as session:
        session.execute(insert(User).values(id=9, email="v@x.io", name="V"))
        session.commit()
    assert cache.get(User, "email", "v@x.io").id == 9


def test_a_lookup_in_another_type_reaches_the_same_entry(
    cache: SQLAlchemyCache, db: Database
) -> None:
    with pytest.raises(NotFound):
        cache.get(User, "id", "4242")  # converted to 4242: the tombstone is the id's
    add(db, User(id=4242, email="late@x.io"))  # its invalidation clears that tombstone
    assert cache.get(User, "id", "4242").email == "late@x.io"
    assert cache.get_many(User, "id", ["4242"])[0].id == 4242
    assert cache.metrics.snapshot().uncacheable == 0
