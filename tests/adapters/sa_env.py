"""Databases and models for the SQLAlchemy adapter's tests: SQLite and PostgreSQL.

PostgreSQL (127.0.0.1:5432, database ``test``, or ``CACHECOW_PG_URL``) gets a schema of its own
per test run (its ``search_path``), dropped at the end. Where PostgreSQL cannot be
reached its tests are skipped with the reason, unless ``CI=true``: there they fail.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import functools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker
from sqlalchemy.pool import NullPool

from cachecow.adapters.sqlalchemy import install
from cachecow.testing.plugin import in_ci

PG_URL = os.environ.get("CACHECOW_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")
MARIADB_URL = os.environ.get("CACHECOW_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Base(DeclarativeBase):
    pass


class Item(Base):
    """The contract suite's model: a key and a payload."""

    __tablename__ = "cc_items"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    payload: Mapped[str] = mapped_column(String(100))


class Org(Base):
    __tablename__ = "cc_orgs"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))


class User(Base):
    __tablename__ = "cc_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[str | None] = mapped_column(String(100))
    org_id: Mapped[int | None] = mapped_column(ForeignKey("cc_orgs.id"))
    org: Mapped[Org | None] = relationship()


class Membership(Base):
    __tablename__ = "cc_memberships"
    __table_args__ = (UniqueConstraint("org_id", "user_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int]
    user_id: Mapped[int]
    role: Mapped[str] = mapped_column(String(20))


class Everything(Base):
    """One column of each type whose values must round-trip exactly."""

    __tablename__ = "cc_everything"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    aware: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    naive: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=False))
    day: Mapped[dt.date | None]
    clock: Mapped[dt.time | None]
    span: Mapped[dt.timedelta | None] = mapped_column(sa.Interval)
    money: Mapped[decimal.Decimal | None] = mapped_column(sa.Numeric(20, 6))
    ratio: Mapped[float | None] = mapped_column(sa.Float)
    token: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    blob: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    color: Mapped[Color | None] = mapped_column(sa.Enum(Color))
    doc: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    flag: Mapped[bool | None]
    text: Mapped[str | None] = mapped_column(sa.Text)


MODELS = [Item, Org, User, Membership, Everything]


class Database:
    """One test database: a sync engine, an async URL, and a way to empty it."""

    def __init__(self, name: str, engine: sa.Engine, async_url: str, schema: str | None) -> None:
        self.name = name
        self.engine = engine
        self.async_url = async_url
        self.schema = schema
        self.Session = sessionmaker(engine)

    @functools.cached_property
    def outside(self) -> sa.Engine:
        """An engine no cache watches, on the same database: another service, or ``psql``."""
        args = {"options": f"-csearch_path={self.schema}"} if self.schema else {}
        return sa.create_engine(self.engine.url, poolclass=NullPool, connect_args=args)

    def async_engine(self) -> Any:
        from sqlalchemy.ext.asyncio import create_async_engine

        connect_args = {"server_settings": {"search_path": self.schema}} if self.schema else {}
        return create_async_engine(self.async_url, poolclass=NullPool, connect_args=connect_args)

    def clear(self) -> None:
        with self.engine.begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(table.delete())
            conn.exec_driver_sql("DELETE FROM cachecow_outbox")


def sqlite_savepoints(engine: sa.Engine) -> None:
    """SQLAlchemy's recipe for working SAVEPOINTs on pysqlite: let SQLAlchemy emit BEGIN.

    Without it, pysqlite starts no transaction before a SAVEPOINT, so SQLite treats the
    savepoint as the transaction and RELEASE commits it even if the session then rolls back.
    """

    @sa.event.listens_for(engine, "connect")
    def _no_pysqlite_transactions(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")


def pg_reachable() -> str | None:
    try:
        import psycopg

        with psycopg.connect(
            PG_URL.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=3
        ):
            return None
    except Exception as exc:
        return f"PostgreSQL at {PG_URL} cannot be reached: {exc}"


def _unreachable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing database is a failure)")
    pytest.skip(reason)


def open_mariadb() -> Iterator[Database]:
    """A database of this run's own on the MariaDB server, dropped at the end."""
    admin = sa.create_engine(MARIADB_URL, poolclass=NullPool)
    name = f"cachecow_test_{os.getpid()}"
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    except Exception as exc:
        admin.dispose()
        _unreachable(f"MariaDB at {MARIADB_URL} cannot be reached: {exc}")
    url = sa.make_url(MARIADB_URL).set(database=name)
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        Base.metadata.create_all(engine)
        install(engine, *MODELS)
        yield Database("mariadb", engine, "", None)
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()


def open_database(kind: str, tmp: Path) -> Iterator[Database]:
    if kind == "sqlite":
        path = tmp / "cachecow.db"
        engine = sa.create_engine(f"sqlite:///{path}", poolclass=NullPool)
        sqlite_savepoints(engine)
        Base.metadata.create_all(engine)
        install(engine, *MODELS)
        yield Database("sqlite", engine, f"sqlite+aiosqlite:///{path}", None)
        engine.dispose()
        return
    if kind == "mariadb":
        yield from open_mariadb()
        return
    reason = pg_reachable()
    if reason is not None:
        _unreachable(reason)
    schema = f"cachecow_test_{os.getpid()}"
    admin = sa.create_engine(PG_URL, poolclass=NullPool)
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine = sa.create_engine(
        PG_URL, poolclass=NullPool, connect_args={"options": f"-csearch_path={schema}"}
    )
    Base.metadata.create_all(engine)
    install(engine, *MODELS)
    async_url = PG_URL.replace("+psycopg", "+asyncpg")
    try:
        yield Database("postgresql", engine, async_url, schema)
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
