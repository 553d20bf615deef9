"""What invalidation from the database costs a write, against the same ORM with no cache.

PostgreSQL (``CACHECOW_PG_URL``, default the local ``test`` database), SQLAlchemy and Django, a
real Redis (``REDIS_URL``, default ``redis://127.0.0.1:6379/0``). Two tables of the same shape in
a schema of this run's own: one plain, one with cachecow's triggers and watched (each commit
delivers its invalidations before it returns). Interleaved rounds; each figure is the median
over rounds of the watched time divided by the plain time of the same round.

    .venv/bin/python benchmarks/outbox.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
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
MARIADB_URL = os.environ.get("CACHECOW_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
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
            sa.insert(model),
            [{"id": i, "email": f"{i}@x.io", "score": 0} for i in range(1, n + 1)],
        )


def timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def relay_lag(url: str, writes: int, connect_args: dict[str, Any] | None = None) -> list[float]:
    """Seconds from the commit of a write made outside the application to its row leaving the
    outbox, with a relay running (NOTIFY on PostgreSQL, polling every 0.2 s elsewhere)."""
    engine = sa.create_engine(url, connect_args=connect_args or {})
    Base.metadata.create_all(engine)
    install(engine, Watched)
    seed(sessionmaker(engine), Watched, 10)
    cache = SQLAlchemyCache(
        cachecow.connect(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")),
        sessionmaker(engine),
        prefix=f"cachecow-bench-{os.getpid()}:",
    )
    cache.drain()
    running = cache.relay(engine)
    lags = []
    try:
        time.sleep(0.3)
        for i in range(writes):
            with engine.begin() as conn:
                conn.execute(update(Watched).where(Watched.id == i % 10 + 1).values(score=i))
            committed = time.perf_counter()
            with engine.connect() as conn:
                while conn.exec_driver_sql("SELECT count(*) FROM cachecow_outbox").scalar():
                    conn.rollback()
                    time.sleep(0.0005)
            lags.append(time.perf_counter() - committed)
            time.sleep(0.01)
    finally:
        running.stop()
        Base.metadata.drop_all(engine)
        engine.dispose()
    return lags


def django_ratios(rounds: int, saves: int) -> None:
    """The same three writes through Django 5 (psycopg 3), plain model against watched one."""
    import django
    from django.conf import settings

    url = sa.make_url(PG_URL)
    settings.configure(
        INSTALLED_APPS=["cachecow.adapters.django.CachecowConfig", "djbench"],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": url.database,
                "USER": url.username or "",
                "HOST": url.host or "",
                "PORT": str(url.port or ""),
                "OPTIONS": {"options": f"-csearch_path={SCHEMA}"},
            }
        },
        CACHECOW={
            "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            "OPTIONS": {"prefix": f"cachecow-bench-{os.getpid()}:"},
            "RELAY": False,
            "INSTALL_ON_MIGRATE": False,
        },
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        USE_TZ=True,
    )
    django.setup()
    from django.db import connection
    from django.db.models import F
    from djbench.models import PlainRow, WatchedRow

    from cachecow.adapters.django import default_cache, watched_tables
    from cachecow.adapters.django._triggers import install_triggers

    with connection.schema_editor() as editor:
        editor.create_model(PlainRow)
        editor.create_model(WatchedRow)
    install_triggers(connection, watched_tables([WatchedRow]))
    cache = default_cache()
    ratios: dict[str, list[float]] = {}
    plain_times: dict[str, list[float]] = {}

    def seed(model: Any, n: int) -> None:
        model.objects.all().delete()
        model.objects.bulk_create(
            [model(id=i, email=f"{i}@x.io", score=0) for i in range(1, n + 1)], batch_size=2000
        )

    def scenario(name: str, run: Callable[[Any], None]) -> None:
        plain = timed(lambda: run(PlainRow))
        watched = timed(lambda: run(WatchedRow))
        ratios.setdefault(name, []).append(watched / plain)
        plain_times.setdefault(name, []).append(plain)

    def save(model: Any) -> None:
        for i in range(saves):
            row = model.objects.get(pk=i % 100 + 1)
            row.score += 1
            row.save()

    for _ in range(rounds):
        for model in (PlainRow, WatchedRow):
            seed(model, 10_000)
        cache.drain()
        scenario(f"save of one row (x{saves}, get + save)", save)
        scenario("update() of 10,000 rows", lambda m: m.objects.update(score=F("score") + 1))
        scenario("delete of 1,000 rows", lambda m: m.objects.filter(pk__lte=1000).delete())
    print(f"\nPostgreSQL, Django {django.get_version()}, {rounds} interleaved rounds")
    print(f"{'write':<50} {'plain (median)':>15} {'watched / plain':>16}")
    for name, values in ratios.items():
        plain_ms = statistics.median(plain_times[name]) * 1000
        print(f"{name:<50} {plain_ms:>12.1f} ms {statistics.median(values):>15.2f}x")
    connection.close()


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--saves", type=int, default=300)
    parser.add_argument("--lag-writes", type=int, default=200)
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
                    session.get(model, i % 100 + 1).score += 1
                    session.commit()

        def bulk_update(factory: sessionmaker[Session], model: Any) -> None:
            with factory() as session:
                session.execute(update(model).values(score=model.score + 1))
                session.commit()

        def bulk_delete(factory: sessionmaker[Session], model: Any) -> None:
            with factory() as session:
                session.execute(delete(model).where(model.id <= 1000))
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
        django_ratios(args.rounds, args.saves)
        print(f"\nrelay lag over {args.lag_writes} writes made outside the application")
        with tempfile.TemporaryDirectory() as tmp:
            for name, url, connect_args in [
                ("PostgreSQL (NOTIFY)", PG_URL, {"options": f"-csearch_path={SCHEMA}"}),
                ("SQLite (polling 0.2 s)", f"sqlite:///{tmp}/lag.db", {}),
                ("MariaDB (polling 0.2 s)", MARIADB_URL, {}),
            ]:
                try:
                    lags = relay_lag(url, args.lag_writes, connect_args)
                except sa.exc.OperationalError as exc:
                    print(f"{name:<26} not measured: {exc.orig}")
                    continue
                print(
                    f"{name:<26} p50 {_pct(lags, 0.5):6.1f} ms   p99 {_pct(lags, 0.99):6.1f} ms"
                    f"   max {max(lags) * 1000:6.1f} ms"
                )
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        admin.dispose()


if __name__ == "__main__":
    main()
