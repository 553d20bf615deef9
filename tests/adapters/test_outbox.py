"""Invalidation from the database: every committed write reaches Redis, whatever path it took.

On SQLite, PostgreSQL and MariaDB, each write path the event-based adapter missed (raw SQL on
another connection, Core statements, upserts, REPLACE, a second writer holding the row lock, a
process killed between its commit and its drain) and each failure (Redis paused during writes,
a drain dying mid-delivery) is forced here against real Redis.
"""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

import cachecow
from cachecow import ConfigurationError, NotFound
from cachecow.adapters import _outbox
from cachecow.adapters.sqlalchemy import SQLAlchemyCache, install, install_sql
from cachecow.adapters.sqlalchemy import relay as start_relay
from tests.adapters.sa_env import Database, User, open_database


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "mariadb"])
def any_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    yield from open_database(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture
def sdb(any_database: Database) -> Database:
    any_database.clear()
    any_database.Session = sessionmaker(any_database.engine)
    return any_database


@pytest.fixture
def cache(sdb: Database, redis_client: redis.Redis) -> SQLAlchemyCache:
    cache = SQLAlchemyCache(redis_client, sdb.Session)
    cache.watch(sdb.Session, relay=False)  # deliveries are forced by drain() in these tests
    return cache


def add_user(db: Database, id: int, email: str) -> None:
    with db.Session() as session:
        session.add(User(id=id, email=email, name="n"))
        session.commit()


def settle(cache: SQLAlchemyCache, db: Database) -> None:
    """Deliver what is left and delete the rows delivered already: an empty outbox. On
    PostgreSQL a watched commit delivers its announced rows itself, and their deletion waits
    for the next drain."""
    assert cache.drain() == 0  # every watched commit delivered its own rows
    assert outbox_rows(db) == 0


def raw(db: Database, sql: str) -> None:
    """A write on a connection of its own, as another service or ``psql`` would make it."""
    with db.outside.begin() as conn:
        conn.exec_driver_sql(sql)


def outbox_rows(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM cachecow_outbox").scalar_one())


def wait_until_empty(db: Database, timeout: float = 5.0) -> None:
    """Wait until a relay has delivered every row of the outbox."""
    deadline = time.monotonic() + timeout
    while outbox_rows(db):
        assert time.monotonic() < deadline, "the outbox was not drained in time"
        time.sleep(0.005)


def email_of(cache: SQLAlchemyCache, **lookup: Any) -> str:
    ((field, value),) = lookup.items()
    email: str = cache.get(User, field, value).email
    return email


def test_raw_sql_on_another_connection_invalidates_old_and_new_values(
    cache: SQLAlchemyCache, sdb: Database
) -> None:
    add_user(sdb, 1, "a@x.io")
    assert email_of(cache, id=1) == "a@x.io"
    assert email_of(cache, email="a@x.io") == "a@x.io"
    raw(sdb, "UPDATE cc_users SET email = 'b@x.io' WHERE id = 1")
    assert email_of(cache, id=1) == "a@x.io"  # not delivered yet: the write bypassed the app
    assert cache.drain() == 1
    assert email_of(cache, id=1) == "b@x.io"
    with pytest.raises(NotFound):
        cache.get(User, "email", "a@x.io")  # the old value's entry, from the trigger's OLD row
    raw(sdb, "DELETE FROM cc_users WHERE id = 1")
    cache.drain()
    with pytest.raises(NotFound):
        cache.get(User, "id", 1)


def test_a_raw_insert_clears_the_tombstones_of_its_lookups(
    cache: SQLAlchemyCache, sdb: Database
) -> None:
    with pytest.raises(NotFound):
        cache.get(User, "email", "new@x.io")  # a tombstone now
    raw(sdb, "INSERT INTO cc_users (id, email) VALUES (7, 'new@x.io')")
    cache.drain()
    assert cache.get(User, "email", "new@x.io").id == 7


def test_a_core_statement_through_the_session_is_delivered_by_its_commit(
    cache: SQLAlchemyCache, sdb: Database
) -> None:
    add_user(sdb, 1, "a@x.io")
    add_user(sdb, 2, "b@x.io")
    assert email_of(cache, id=1) == "a@x.io"
    assert email_of(cache, id=2) == "b@x.io"
    with sdb.Session() as session:
        session.execute(update(User).values(email=User.email + ".old"))
        session.commit()  # delivers: no explicit drain() below
    settle(cache, sdb)
    assert [email_of(cache, id=i) for i in (1, 2)] == ["a@x.io.old", "b@x.io.old"]
    with pytest.raises(NotFound):
        cache.get(User, "email", "a@x.io")


def upserts(kind: str) -> list[str]:
    if kind == "mariadb":
        return [
            "INSERT INTO cc_users (id, email) VALUES (1, 'up@x.io') "
            "ON DUPLICATE KEY UPDATE email = VALUES(email)",
            "REPLACE INTO cc_users (id, email) VALUES (1, 'replaced@x.io')",
        ]
    upsert = (
        "INSERT INTO cc_users (id, email) VALUES (1, 'up@x.io') "
        "ON CONFLICT (id) DO UPDATE SET email = excluded.email"
    )
    if kind == "sqlite":  # REPLACE deletes the old row without firing delete triggers
        return [upsert, "INSERT OR REPLACE INTO cc_users (id, email) VALUES (1, 'replaced@x.io')"]
    return [upsert]


def test_upserts_and_replace_invalidate_the_rows_they_overwrite(
    cache: SQLAlchemyCache, sdb: Database
) -> None:
    add_user(sdb, 1, "a@x.io")
    previous = "a@x.io"
    for statement in upserts(sdb.name):
        assert email_of(cache, email=previous) == previous
        assert email_of(cache, id=1) == previous
        raw(sdb, statement)
        cache.drain()
        current = email_of(cache, id=1)
        assert current != previous
        with pytest.raises(NotFound):
            cache.get(User, "email", previous)
        previous = current


@pytest.mark.parametrize("any_database", ["postgresql", "mariadb"], indirect=True)
def test_a_second_writer_blocked_on_the_row_lock_invalidates_what_the_first_wrote(
    cache: SQLAlchemyCache, sdb: Database
) -> None:
    """Writer A renames a@ to b@ and holds the row lock; writer B renames it to c@ and waits
    for the lock. After A commits, a reader caches the row under b@. B's write must clear b@:
    only the row as B's trigger sees it under the lock knows b@ (B's own memory says a@).
    SQLite has no row locks: its writers take turns on the database lock."""
    add_user(sdb, 1, "a@x.io")
    first = sdb.engine.connect()
    first_tx = first.begin()
    first.exec_driver_sql("UPDATE cc_users SET email = 'b@x.io' WHERE id = 1")
    second_started = threading.Event()
    second_updated = threading.Event()
    second_may_commit = threading.Event()

    def second_writer() -> None:
        with sdb.engine.begin() as conn:
            second_started.set()
            conn.exec_driver_sql("UPDATE cc_users SET email = 'c@x.io' WHERE id = 1")
            second_updated.set()
            second_may_commit.wait(10)

    thread = threading.Thread(target=second_writer)
    thread.start()
    second_started.wait()
    time.sleep(0.2)  # the second writer is now waiting for the row lock
    assert not second_updated.is_set()
    first_tx.commit()
    first.close()
    cache.drain()
    assert second_updated.wait(10)
    assert email_of(cache, email="b@x.io") == "b@x.io"  # cached between the two commits
    second_may_commit.set()
    thread.join(10)
    cache.drain()
    with pytest.raises(NotFound):
        cache.get(User, "email", "b@x.io")
    assert email_of(cache, id=1) == "c@x.io"


def test_redis_paused_during_writes_fails_no_write_and_the_relay_delivers_after(
    sdb: Database, own_redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = cachecow.connect(own_redis_server.url, timeout=0.3)
    cache = SQLAlchemyCache(client, sdb.Session, fail_open=True)
    cache.watch(sdb.Session, relay=False)
    for i in range(1, 4):
        add_user(sdb, i, f"{i}@x.io")
    settle(cache, sdb)
    assert [email_of(cache, id=i) for i in (1, 2, 3)] == ["1@x.io", "2@x.io", "3@x.io"]
    own_redis_server.pause()
    try:
        for i in range(1, 4):
            with sdb.Session() as session:
                session.get(User, i).email = f"{i}@new.io"
                session.commit()  # never raises: the rows wait in the outbox
    finally:
        own_redis_server.resume()
    # One drain waited out the timeout; the writes within retry_interval after it skipped.
    stats = cache._drainer(sdb.engine).stats
    assert stats.failures == 1
    assert stats.skipped == 2
    assert outbox_rows(sdb) == 3
    failures = [r for r in caplog.records if "outbox delivery failed" in r.getMessage()]
    assert len(failures) == 1  # logged once per outage
    relay = start_relay(cache, sdb.engine, interval=0.05)
    try:
        wait_until_empty(sdb)
    finally:
        relay.stop()
    assert [email_of(cache, id=i) for i in (1, 2, 3)] == ["1@new.io", "2@new.io", "3@new.io"]
    client.close()


def test_a_drain_that_dies_mid_delivery_loses_nothing(
    cache: SQLAlchemyCache, sdb: Database, redis_client: redis.Redis
) -> None:
    for i in range(1, 6):
        add_user(sdb, i, f"{i}@x.io")
    settle(cache, sdb)
    raw(sdb, "UPDATE cc_users SET name = 'x'")
    rows = outbox_rows(sdb)
    assert rows >= 1

    class Died(BaseException):
        pass

    def die(lookups: list[Any]) -> None:
        raise Died  # as a process killed after claiming, before Redis acknowledged

    dying = _outbox.Drainer(_dialect(sdb), cache._drainer(sdb.engine)._connect, die)
    with pytest.raises(Died):
        dying.drain()
    assert outbox_rows(sdb) == rows  # the claim rolled back: every row is still there
    assert cache.drain() == rows


def test_an_unreadable_row_is_dropped_and_stops_nothing_behind_it(
    cache: SQLAlchemyCache, sdb: Database, caplog: pytest.LogCaptureFixture
) -> None:
    add_user(sdb, 1, "a@x.io")
    assert email_of(cache, id=1) == "a@x.io"
    raw(sdb, "INSERT INTO cachecow_outbox (spec, lookups) VALUES ('[\"m\"]', '[[1]]')")
    raw(sdb, "UPDATE cc_users SET email = 'b@x.io' WHERE id = 1")
    assert cache.drain() == 2
    assert cache._drainer(sdb.engine).stats.dropped == 1
    assert any("cannot be read" in r.getMessage() for r in caplog.records)
    assert email_of(cache, id=1) == "b@x.io"


def test_two_drains_never_deliver_one_row_at_the_same_time(
    cache: SQLAlchemyCache, sdb: Database
) -> None:
    for i in range(1, 4):
        add_user(sdb, i, f"{i}@x.io")
    settle(cache, sdb)
    raw(sdb, "UPDATE cc_users SET name = 'x'")
    rows = outbox_rows(sdb)
    holding = threading.Event()
    release = threading.Event()
    delivered: list[list[Any]] = []
    connect = cache._drainer(sdb.engine)._connect

    def slow(lookups: list[Any]) -> None:
        delivered.append(lookups)
        holding.set()
        release.wait(10)

    first = _outbox.Drainer(_dialect(sdb), connect, slow)
    second = _outbox.Drainer(_dialect(sdb), connect, delivered.append)
    thread = threading.Thread(target=first.drain)
    thread.start()
    assert holding.wait(10)
    second_count: list[int] = []
    other = threading.Thread(target=lambda: second_count.append(second.drain()))
    other.start()
    other.join(0.5)
    # PostgreSQL and MariaDB skip the locked rows; SQLite's second drain waits for the lock.
    assert len(delivered) == 1
    release.set()
    thread.join(10)
    other.join(10)
    assert second_count == [0]
    assert first.stats.delivered_rows == rows
    assert outbox_rows(sdb) == 0


CHILD = """
import os, signal, sys
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker
import cachecow
from cachecow.adapters.sqlalchemy import SQLAlchemyCache
from tests.adapters.sa_env import User
url, search_path, redis_url = sys.argv[1:4]
args = {"options": f"-csearch_path={search_path}"} if search_path else {}
engine = sa.create_engine(url, connect_args=args)
Session = sessionmaker(engine)
cache = SQLAlchemyCache(cachecow.connect(redis_url), Session)
cache.watch(Session, relay=False)
# The process dies after the commit, as it sets out to deliver (announced rows, or a drain).
cache._deliver = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
with Session() as session:
    session.get(User, 1).email = "killed@x.io"
    session.commit()
"""


def test_a_process_killed_between_commit_and_drain_is_delivered_by_the_relay(
    cache: SQLAlchemyCache, sdb: Database, redis_server: Any
) -> None:
    add_user(sdb, 1, "a@x.io")
    settle(cache, sdb)
    assert email_of(cache, id=1) == "a@x.io"
    url = sdb.engine.url.render_as_string(hide_password=False)
    child = subprocess.run(
        [sys.executable, "-c", CHILD, url, sdb.schema or "", redis_server.url],
        cwd=Path(__file__).parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        capture_output=True,
        timeout=60,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    assert outbox_rows(sdb) == 1  # committed, never drained
    assert email_of(cache, id=1) == "a@x.io"
    relay = start_relay(cache, sdb.engine, interval=0.05)
    try:
        wait_until_empty(sdb)
    finally:
        relay.stop()
    assert email_of(cache, id=1) == "killed@x.io"


@pytest.mark.parametrize("any_database", ["postgresql"], indirect=True)
def test_postgresql_relay_is_woken_by_notify(cache: SQLAlchemyCache, sdb: Database) -> None:
    add_user(sdb, 1, "a@x.io")
    settle(cache, sdb)
    assert email_of(cache, id=1) == "a@x.io"
    relay = start_relay(cache, sdb.engine, interval=30.0)  # polling alone would take 30 s
    try:
        time.sleep(0.3)  # listening
        raw(sdb, "UPDATE cc_users SET email = 'b@x.io' WHERE id = 1")
        wait_until_empty(sdb)
    finally:
        relay.stop()
    assert email_of(cache, id=1) == "b@x.io"


def counting_drains(cache: SQLAlchemyCache, engine: sa.Engine) -> list[int]:
    """Count the database connections the engine's drainer opens (each drain opens one)."""
    drainer = cache._drainer(engine)
    opened: list[int] = []
    connect = drainer._connect

    def counted() -> Any:
        opened.append(1)
        return connect()

    drainer._connect = counted
    return opened


@pytest.mark.parametrize("any_database", ["postgresql"], indirect=True)
def test_a_commit_delivers_the_rows_announced_to_it_with_no_drain(
    cache: SQLAlchemyCache, sdb: Database
) -> None:
    """PostgreSQL: the trigger announces the row to the writing connection (a NOTICE); its
    commit delivers it, before commit() returns, with no database round trip."""
    add_user(sdb, 1, "a@x.io")
    assert email_of(cache, id=1) == "a@x.io"
    drains = counting_drains(cache, sdb.engine)
    with sdb.Session() as session:
        session.get(User, 1).email = "b@x.io"
        session.commit()
    assert email_of(cache, id=1) == "b@x.io"
    assert drains == []
    assert cache._drainer(sdb.engine).stats.announced_rows == 2  # add_user's and this one
    settle(cache, sdb)  # the drain deletes the delivered rows


@pytest.mark.parametrize("any_database", ["postgresql"], indirect=True)
def test_a_core_commit_on_a_watched_engine_delivers_before_it_returns(
    cache: SQLAlchemyCache, sdb: Database
) -> None:
    """Any commit on the watched engine's connections delivers, not only a session's: here
    a Core connection that stays open after its commit."""
    add_user(sdb, 1, "a@x.io")
    assert email_of(cache, id=1) == "a@x.io"
    with sdb.engine.connect() as conn:
        conn.execute(update(User).where(User.id == 1).values(email="b@x.io"))
        conn.commit()
        assert email_of(cache, id=1) == "b@x.io"  # the connection is still checked out
    settle(cache, sdb)


@pytest.mark.parametrize("any_database", ["postgresql"], indirect=True)
def test_a_relay_leaves_a_row_to_its_writer_while_it_delivers(
    cache: SQLAlchemyCache, sdb: Database
) -> None:
    """A relay claims a row announced to a writer only once the row is ``grace`` seconds
    old: while the writer delivers it, the relay's drain skips it (never both at once)."""
    add_user(sdb, 1, "a@x.io")
    settle(cache, sdb)
    drainer = cache._drainer(sdb.engine)
    deliver = drainer._deliver
    delivering = threading.Event()
    may_finish = threading.Event()

    def held(lookups: list[Any]) -> None:
        delivering.set()
        assert may_finish.wait(10)
        deliver(lookups)

    drainer._deliver = held

    def write() -> None:
        with sdb.Session() as session:
            session.get(User, 1).email = "b@x.io"
            session.commit()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert delivering.wait(10)  # committed; the writer holds its delivery
        relayed: list[Any] = []
        relay = _outbox.Drainer("postgresql", drainer._connect, relayed.append)
        assert relay.drain() == 0
        assert relayed == []
    finally:
        may_finish.set()
        writer.join(10)
    assert drainer.stats.announced_rows == 2  # add_user's and the writer's
    assert email_of(cache, id=1) == "b@x.io"
    settle(cache, sdb)


@pytest.mark.parametrize("any_database", ["postgresql"], indirect=True)
def test_after_a_redis_failure_relays_wait_for_no_writer(
    cache: SQLAlchemyCache, sdb: Database, own_redis_server: Any
) -> None:
    """A writer whose delivery failed leaves its announced row; the relays, having seen
    Redis fail, claim it at once instead of after the grace (delivery within 1 s of Redis's
    return, whatever the grace)."""
    client = cachecow.connect(own_redis_server.url, timeout=0.3)
    cache = SQLAlchemyCache(client, sdb.Session, fail_open=True)
    cache.watch(sdb.Session, relay=False)
    drainer = cache._drainer(sdb.engine)
    drainer.grace = 60.0  # the relays would wait a minute for a live writer
    add_user(sdb, 1, "a@x.io")
    own_redis_server.pause()
    try:
        with sdb.Session() as session:
            session.get(User, 1).email = "b@x.io"
            session.commit()  # its delivery fails: the row stays, owned
    finally:
        own_redis_server.resume()
    assert drainer.failing
    assert cache.drain() == 1  # at once, as Redis failed moments ago
    assert email_of(cache, id=1) == "b@x.io"
    client.close()


@pytest.mark.parametrize("any_database", ["postgresql"], indirect=True)
@pytest.mark.parametrize("statement", ["RESET ALL", "SET LOCAL client_min_messages = warning"])
def test_a_connection_that_stopped_announcing_drains_at_its_commit(
    cache: SQLAlchemyCache, sdb: Database, statement: str
) -> None:
    """A pooler's RESET ALL (or DISCARD ALL) undoes the connection's setting, and notices
    no longer reach a client above ``notice``: its writes are not announced (nor owned), and
    its commit drains the outbox as on other databases."""
    add_user(sdb, 1, "a@x.io")
    assert email_of(cache, id=1) == "a@x.io"
    drains = counting_drains(cache, sdb.engine)
    with sdb.Session() as session:
        session.execute(sa.text(statement))
        session.get(User, 1).email = "b@x.io"
        session.commit()
    assert email_of(cache, id=1) == "b@x.io"
    assert drains == [1]


def test_lag_is_the_age_of_the_oldest_row_waiting(cache: SQLAlchemyCache, sdb: Database) -> None:
    drainer = cache._drainer(sdb.engine)
    add_user(sdb, 1, "a@x.io")  # delivered by its own commit
    assert drainer.lag() == 0.0
    raw(sdb, "UPDATE cc_users SET email = 'b@x.io' WHERE id = 1")  # waits for a relay
    time.sleep(0.2)
    assert 0.2 <= drainer.lag() < 5.0
    cache.drain()
    assert drainer.lag() == 0.0


def test_a_table_without_its_triggers_is_refused_with_the_command_to_run(
    sdb: Database, redis_client: redis.Redis
) -> None:
    drop = {
        "postgresql": "DROP TRIGGER cachecow_update ON cc_users",
        "sqlite": "DROP TRIGGER cachecow_cc_users_update",
        "mariadb": "DROP TRIGGER cachecow_cc_users_update",
    }[sdb.name]
    raw(sdb, drop)
    try:
        add_user(sdb, 1, "a@x.io")
        cache = SQLAlchemyCache(redis_client, sdb.Session)
        with pytest.raises(ConfigurationError, match=r"install\(engine, User\)"):
            cache.get(User, "id", 1)
    finally:
        install(sdb.engine, User)
    assert SQLAlchemyCache(redis_client, sdb.Session).get(User, "id", 1).email == "a@x.io"


def _dialect(db: Database) -> str:
    return "mysql" if db.name == "mariadb" else db.name


# -- the outbox's values keep their types -------------------------------------------------------


def test_outbox_values_decode_to_their_column_types() -> None:
    spec = '["m.T", [["a"], ["b", "c"]], ["a", "b", "c"], ["int", "uuid", "date"]]'
    token = uuid.uuid4()
    lookups = _outbox.decode(spec, f'[[5, "{token}", "2024-01-02"], [6, null, "2024-01-03"]]')
    assert lookups == [
        ("m.T", "a", 5),
        ("m.T", ("b", "c"), (token, dt.date(2024, 1, 2))),
        ("m.T", "a", 6),  # a NULL in a composite lookup: no lookup
    ]
    assert type(lookups[0][2]) is int  # 5, never "5": another key in the core
    for kind, stored, value in [
        ("str", "5", "5"),
        ("int", 5, 5),
        ("bool", 1, True),
        ("decimal", "1.50", decimal.Decimal("1.50")),
        ("uuid", token.hex, token),
        ("datetime", "2024-01-02 03:04:05", dt.datetime(2024, 1, 2, 3, 4, 5)),
        ("datetime", "2024-01-02T03:04:05+00:00", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
        ("bytes", "00ff", b"\x00\xff"),
    ]:
        got = _outbox.decode(f'["m", [["x"]], ["x"], ["{kind}"]]', f"[[{_json(stored)}]]")
        assert got == [("m", "x", value)]
        assert type(got[0][2]) is type(value)


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def test_a_lookup_column_of_a_type_the_outbox_cannot_carry_is_refused() -> None:
    from sqlalchemy.orm import DeclarativeBase

    from tests.adapters.sa_env import Color

    class Base(DeclarativeBase):
        pass

    class Tagged(Base):
        __tablename__ = "cc_tagged"
        id = sa.Column(sa.Integer, primary_key=True)
        color = sa.Column(sa.Enum(Color), unique=True)

    with pytest.raises(ConfigurationError, match=r"Tagged\.color"):
        install_sql("postgresql", Tagged)


def test_install_sql_is_what_install_runs(sdb: Database) -> None:
    statements = install_sql("mariadb" if sdb.name == "mariadb" else sdb.name, User)
    assert statements[0].startswith("CREATE TABLE IF NOT EXISTS cachecow_outbox")
    assert sum("CREATE TRIGGER" in s for s in statements) == (4 if sdb.name == "sqlite" else 3)
    logging.getLogger(__name__).debug("%d statements", len(statements))


def test_a_float_lookup_of_an_integer_key_leaves_no_tombstone_behind_an_insert(
    cache: SQLAlchemyCache, sdb: Database
) -> None:
    with pytest.raises(NotFound):
        cache.get(User, "id", 43.0)  # 43: the tombstone is under the int's key
    raw(sdb, "INSERT INTO cc_users (id, email) VALUES (43, 'x@x.io')")
    cache.drain()
    assert cache.get(User, "id", 43.0).email == "x@x.io"
    assert cache.get(User, "id", decimal.Decimal("43")).email == "x@x.io"
    for bad in (43.5, True, float("nan")):
        with pytest.raises(cachecow.InvalidLookup, match="not an integer"):
            cache.get(User, "id", bad)


def _cli_url(db: Database) -> str:
    url = db.engine.url
    if db.schema:  # the run's own schema, as libpq options
        url = url.update_query_dict({"options": f"-csearch_path={db.schema}"})
    return url.render_as_string(hide_password=False)


def test_the_cachecow_relay_command_needs_no_application(
    cache: SQLAlchemyCache, sdb: Database, redis_server: Any
) -> None:
    add_user(sdb, 1, "a@x.io")
    assert email_of(cache, id=1) == "a@x.io"
    # Rows already in the outbox (the insert's announced row, deleted lazily by the next drain,
    # or another test's) go now: the command's count is then the UPDATE's alone. Seen in full
    # runs: "delivered 2 rows".
    cache.drain()
    raw(sdb, "UPDATE cc_users SET email = 'b@x.io' WHERE id = 1")
    command = [sys.executable, "-m", "cachecow", "relay", "--database", _cli_url(sdb)]
    command += ["--redis", redis_server.url, "--prefix", cache.prefix]
    once = subprocess.run([*command, "--once"], capture_output=True, text=True, timeout=60)
    assert once.returncode == 0, once.stderr
    assert once.stdout.strip() == "delivered 1 rows"
    assert email_of(cache, id=1) == "b@x.io"
    relay = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        raw(sdb, "UPDATE cc_users SET email = 'c@x.io' WHERE id = 1")
        deadline = time.monotonic() + 10
        while outbox_rows(sdb):
            assert time.monotonic() < deadline, relay.stderr.read() if relay.poll() else ""
            time.sleep(0.01)
    finally:
        relay.send_signal(signal.SIGTERM)
        _, err = relay.communicate(timeout=10)
    assert relay.returncode == 0, err
    assert email_of(cache, id=1) == "c@x.io"


@pytest.mark.parametrize("any_database", ["sqlite", "postgresql"], indirect=True)
def test_the_async_cache_relays_in_a_task_of_its_loop(sdb: Database, redis_server: Any) -> None:
    import asyncio

    import redis.asyncio as aredis
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from cachecow.adapters.sqlalchemy import AsyncSQLAlchemyCache

    add_user(sdb, 1, "a@x.io")

    async def scenario() -> None:
        engine = sdb.async_engine()
        factory = async_sessionmaker(engine, expire_on_commit=False)
        client = aredis.Redis(port=redis_server.port)
        cache = AsyncSQLAlchemyCache(client, factory, prefix=f"async-relay-{sdb.name}:")
        cache.watch(factory)
        try:
            assert (await cache.get(User, "id", 1)).email == "a@x.io"  # starts the relay
            # Outside the app, and off the loop: blocking the loop while the relay task holds
            # SQLite's write lock would wait out the lock's timeout.
            await asyncio.to_thread(raw, sdb, "UPDATE cc_users SET email = 'b@x.io' WHERE id = 1")
            deadline = time.monotonic() + 5
            while (await cache.get(User, "id", 1)).email != "b@x.io":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
        finally:
            await cache.aclose_relays()
            await client.aclose()
            await engine.dispose()

    asyncio.run(scenario())


def test_a_session_joined_to_an_outer_transaction_invalidates_at_the_real_commit(
    cache: SQLAlchemyCache, sdb: Database, redis_client: redis.Redis
) -> None:
    """The test-suite pattern: a Session on a connection whose transaction the caller owns.
    Its commit() only releases a savepoint; the invalidation must wait for the real commit
    (the event-based adapter invalidated at commit(), and a reader between the two re-cached
    the old row for good)."""
    add_user(sdb, 1, "a@x.io")
    assert email_of(cache, id=1) == "a@x.io"
    with sdb.engine.connect() as conn:
        outer = conn.begin()
        session = Session(bind=conn, join_transaction_mode="create_savepoint")
        cache.watch(session, relay=False)
        session.get(User, 1).email = "b@x.io"
        session.commit()  # a savepoint released: nothing committed yet
        session.close()
        assert email_of(cache, id=1) == "a@x.io"  # a reader in between: the committed row
        outer.commit()
        if sdb.name == "postgresql":  # the real commit delivered the rows announced to it
            assert email_of(cache, id=1) == "b@x.io"
    assert cache.drain() == (0 if sdb.name == "postgresql" else 1)  # else the relay's work
    assert email_of(cache, id=1) == "b@x.io"
