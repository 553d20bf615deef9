"""What invalidation from the database costs a write, against the same ORM with no cache.

PostgreSQL (``CACHECOW_PG_URL``, default the local ``test`` database), SQLAlchemy, a real Redis
(``REDIS_URL``, default ``redis://127.0.0.1:6379/0``). Two tables of the same shape in a schema of
this run's own: one plain, one with cachecow's triggers and a watched session that drains the
outbox after each commit. Interleaved rounds; each figure is the median over rounds of the
watched time divided by the plain time of the same round.

    .venv/bin/python benchmarks/outbox.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import String, delete, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import NullPool

import cachecow
from cachecow.adapters.sqlalchemy import SQLAlchemyCache, install

PG_URL = os.environ.get("CACHECOW_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")
SCHEMA = f"cachecow_bench_{os.getpid()}"


class Base(DeclarativeBase):
    pass


class Plain(Base):
    __tablename__ = "bench_plain"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100), unique=True)
    score: Mapped[int]


class Watched(Base):
    __tablename__ = "bench_watched"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100), unique=True)
    score: Mapped[int]


def seed(session_factory: sessionmaker[Session], model: Any, n: int) -> None:
    with session_factory.begin() as session:
        session.execute(delete(model))
        session.execute(
            sa.insert(model), [{"id": i, "email": f"{i}@x.io", "score": 0} for i in range(n)]
        )


def timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--saves", type=int, default=300)
    args = parser.parse_args()
    admin = sa.create_engine(PG_URL, poolclass=NullPool)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {SCHEMA}")
    engine = sa.create_engine(PG_URL, connect_args={"options": f"-csearch_path={SCHEMA}"})
    try:
        Base.metadata.create_all(engine)
        install(engine, Watched)
        plain_sessions = sessionmaker(engine)
        watched_sessions = sessionmaker(engine)
        cache = SQLAlchemyCache(
            cachecow.connect(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")),
            watched_sessions,
            prefix=f"cachecow-bench-{os.getpid()}:",
        )
        cache.watch(watched_sessions, relay=False)
        ratios: dict[str, list[float]] = {}
        plain_times: dict[str, list[float]] = {}

        def scenario(name: str, run: Callable[[sessionmaker[Session], Any], None]) -> None:
            plain = timed(lambda: run(plain_sessions, Plain))
            watched = timed(lambda: run(watched_sessions, Watched))
            ratios.setdefault(name, []).append(watched / plain)
            plain_times.setdefault(name, []).append(plain)

        def saves(factory: sessionmaker[Session], model: Any) -> None:
            for i in range(args.saves):
                with factory() as session:
                    session.get(model, i % 100).score += 1
                    session.commit()

        def bulk_update(factory: sessionmaker[Session], model: Any) -> None:
            with factory() as session:
                session.execute(update(model).values(score=model.score + 1))
                session.commit()

        def bulk_delete(factory: sessionmaker[Session], model: Any) -> None:
            with factory() as session:
                session.execute(delete(model).where(model.id < 1000))
                session.commit()

        for _ in range(args.rounds):
            for model in (Plain, Watched):
                seed(plain_sessions, model, 10_000)
            cache.drain()
            scenario(f"save of one row (x{args.saves}, get + update + commit)", saves)
            scenario("update() of 10,000 rows", bulk_update)
            scenario("delete of 1,000 rows", bulk_delete)
        print(f"PostgreSQL, SQLAlchemy {sa.__version__}, {args.rounds} interleaved rounds")
        print(f"{'write':<50} {'plain (median)':>15} {'watched / plain':>16}")
        for name, values in ratios.items():
            plain_ms = statistics.median(plain_times[name]) * 1000
            print(f"{name:<50} {plain_ms:>12.1f} ms {statistics.median(values):>15.2f}x")
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        admin.dispose()


if __name__ == "__main__":
    main()
