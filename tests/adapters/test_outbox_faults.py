"""Redis failing under a write load, with invalidation from the database (PostgreSQL, NOTIFY).

A writer commits 1,000 updates through a watched session while a reader reads through the
cache (``fail_open``); Redis is paused (its values survive) or killed and restarted (empty)
mid-run. Every write must commit without an error, every outbox row committed before Redis
answered again must be delivered within 1 s of it, and no read after that may return a
version older than the one committed before it started. Each run prints its row.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

import cachecow
from cachecow.adapters.sqlalchemy import SQLAlchemyCache
from tests.adapters.sa_env import Database, User, open_database

WRITES = 1000
ROWS = 50


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    yield from open_database("postgresql", Path(tmp_path_factory.mktemp("pg")))


def undelivered(db: Database, cache: SQLAlchemyCache, engine: sa.Engine, upto: int) -> int:
    """Rows up to id ``upto`` still waiting: in the outbox, and not among the rows a commit
    delivered itself (announced to it) whose deletion waits for the relay's next round."""
    acked = set(cache._drainer(engine)._acked)
    with db.engine.connect() as conn:
        ids = conn.exec_driver_sql(f"SELECT id FROM cachecow_outbox WHERE id <= {upto}")
        return len({i for (i,) in ids} - acked)


def last_row(db: Database) -> int:
    with db.engine.connect() as conn:
        found = conn.exec_driver_sql("SELECT max(id) FROM cachecow_outbox").scalar_one()
        return int(found or 0)


@pytest.mark.parametrize("fault", ["paused 1 s", "killed, restarted 1 s later"])
def test_redis_failing_during_1000_writes(
    pg: Database, own_redis_server: Any, fault: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pg.clear()
    engine = sa.create_engine(  # pooled, as an application's (the fixture's has no pool)
        pg.engine.url, connect_args={"options": f"-csearch_path={pg.schema}"}
    )
    Session = sessionmaker(engine)
    with Session.begin() as session:
        session.add_all([User(id=i, email=f"{i}@x.io", name="0") for i in range(ROWS)])
    client = cachecow.connect(own_redis_server.url, timeout=0.25)
    cache = SQLAlchemyCache(client, Session, fail_open=True)
    cache.watch(Session)  # the after-commit drain, and a relay woken by NOTIFY
    committed = [0] * ROWS  # the version each row had at its last commit
    write_errors: list[BaseException] = []
    stale: list[tuple[int, int, int]] = []
    done = threading.Event()
    back = [0.0]

    def writer() -> None:
        rng = random.Random(1)
        for _ in range(WRITES):
            i = rng.randrange(ROWS)
            try:
                with Session() as session:
                    user = session.get(User, i)
                    assert user is not None
                    user.name = str(int(user.name or "0") + 1)
                    session.commit()
                    committed[i] = int(user.name)
            except BaseException as exc:
                write_errors.append(exc)
        done.set()

    def reader() -> None:
        rng = random.Random(2)
        while not done.is_set():
            i = rng.randrange(ROWS)
            before = committed[i]
            got = int(cache.get(User, "id", i).name)
            if back[0] and time.monotonic() > back[0] + 1.0 and got < before:
                stale.append((i, got, before))
            time.sleep(0.001)  # leave the writer the GIL

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        if fault.startswith("paused"):
            own_redis_server.pause()
            time.sleep(1.0)
            own_redis_server.resume()
        else:
            own_redis_server.kill()
            time.sleep(1.0)
            own_redis_server.restart()
        back[0] = time.monotonic()
        upto = last_row(pg)  # every row committed before Redis answered again
        while undelivered(pg, cache, engine, upto) and time.monotonic() < back[0] + 5:
            time.sleep(0.005)
        delivered_in = time.monotonic() - back[0]
    finally:
        for thread in threads:
            thread.join(60)
        cache.close_relays()
    stats = cache._drainer(engine).stats
    final = [int(cache.get(User, "id", i).name) for i in range(ROWS)]
    client.close()
    engine.dispose()
    with capsys.disabled():
        print(
            f"\n{fault}: {WRITES} writes, {len(write_errors)} write errors, every row "
            f"delivered {delivered_in * 1000:.0f} ms after Redis answered, {stats.failures} failed "
            f"drains, {stats.skipped} skipped, {len(stale)} stale reads after 1 s"
        )
    assert not write_errors
    assert delivered_in < 1.0
    assert not stale, stale[:5]
    assert final == committed  # nothing stale left in the cache
