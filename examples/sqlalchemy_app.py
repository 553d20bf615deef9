"""cachecow with SQLAlchemy 2: cached gets by any unique key, invalidated after commit.

Run it from the repository root (needs the ``demo`` and ``sqlalchemy`` extras,
``pip install -e '.[demo,sqlalchemy]'``)::

    python examples/sqlalchemy_app.py                                    # no services needed
    REDIS_URL=redis://127.0.0.1:6379/0 python examples/sqlalchemy_app.py  # a real Redis
    DATABASE_URL=postgresql+psycopg://root@127.0.0.1:5432/test python examples/sqlalchemy_app.py

By default the database is SQLite in a temporary file and Redis is an embedded fakeredis (it runs
cachecow's Lua). With REDIS_URL, every key lives under a random prefix and is deleted at the end;
with DATABASE_URL (any SQLAlchemy URL), the example's tables get unique names and are dropped at
the end. The example checks each claim it prints and exits non-zero if one breaks.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

import cachecow

# mypy cannot see cachecow.adapters through the editable install (adapters/ maps onto it).
from cachecow.adapters.sqlalchemy import SQLAlchemyCache, install  # type: ignore[import-not-found, unused-ignore]

TABLES = f"cachecow_example_{secrets.token_hex(4)}"  # unique names: nothing clashes or stays
CREATED = dt.datetime(2024, 5, 17, 9, 30, 15, 123456)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = f"{TABLES}_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(200), unique=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    created: Mapped[dt.datetime] = mapped_column(sa.DateTime)


class Membership(Base):
    __tablename__ = f"{TABLES}_memberships"
    __table_args__ = (sa.UniqueConstraint("org_id", "user_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int]
    user_id: Mapped[int] = mapped_column(sa.ForeignKey(f"{TABLES}_users.id"))
    role: Mapped[str] = mapped_column(sa.String(50))


class SelectCounter:
    """Counts the SELECTs of the demo's rows the engine sends, to prove which gets reached the
    database (the look at a model's triggers, once per model, is not counted)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.count = self.seen = 0
        sa.event.listen(engine, "before_cursor_execute", self._before)

    def _before(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        row = statement.lstrip().upper().startswith("SELECT") and f"FROM {TABLES}" in statement
        self.count += row

    def new(self) -> int:
        """SELECTs sent since the last call."""
        self.seen, new = self.count, self.count - self.seen
        return new


def user_by(cache: SQLAlchemyCache, field: str, value: str) -> User | None:
    """``cache.get(User, field, value)``, or None where it raises NotFound."""
    try:
        user: User = cache.get(User, field, value)
    except cachecow.NotFound:
        return None
    return user


def check(ok: bool, claim: str) -> None:
    if not ok:
        raise SystemExit(f"EXAMPLE FAILED: {claim}")
    print(f"   ok: {claim}")


def step(number: int, title: str, explanation: str) -> None:
    print(f"\n{number}. {title}\n   {explanation}")


def run(client: redis.Redis, prefix: str, engine: sa.Engine) -> None:
    Session = sessionmaker(engine)
    with Session.begin() as session:
        session.add(User(id=1, email="ada@example.com", name="Ada", created=CREATED))
        session.add(User(id=2, email="grace@example.com", name="Grace", created=CREATED))
        for i in range(100, 150):
            session.add(User(id=i, email=f"m{i}@example.com", name=f"Member {i}", created=CREATED))
        session.flush()  # users first: no relationship() tells the session the foreign key
        session.add(Membership(id=1, org_id=7, user_id=1, role="owner"))
    selects = SelectCounter(engine)
    cache = SQLAlchemyCache(client, Session, prefix=prefix)
    cache.drain()  # the seed rows' invalidations, which the triggers recorded in the outbox

    step(1, "A miss, then a hit", "The first get of user 1 queries the database; the second not.")
    ada = cache.get(User, "id", 1)
    print(f"   get(User, 'id', 1) -> {ada.name} <{ada.email}>")
    check(selects.new() == 1, "the miss ran 1 SELECT and cached the row")
    ada = cache.get(User, "id", 1)
    print(f"   get(User, 'id', 1) -> {ada.name}, created {ada.created.isoformat()}")
    check(selects.new() == 0, "the hit ran 0 SELECTs")
    check(ada.created == CREATED, "the datetime round-trips exactly, microseconds included")
    check(sa.inspect(ada).detached, "a cached object comes back as a detached instance")

    step(2, "Any unique lookup", "By the unique email, and by (user_id, org_id) in any order.")
    grace = cache.get(User, "email", "grace@example.com")
    print(f"   get(User, 'email', 'grace@example.com') -> id {grace.id}")
    check(grace.id == 2, "the email lookup finds Grace")
    m1 = cache.get(Membership, ("user_id", "org_id"), (1, 7))
    print(f"   get(Membership, ('user_id', 'org_id'), (1, 7)) -> role {m1.role!r}")
    selects.new()
    m2 = cache.get(Membership, ("org_id", "user_id"), (7, 1))
    check(m1.id == m2.id == 1 and selects.new() == 0, "('org_id', 'user_id'), (7, 1) is a hit")

    step(3, "Only unique lookups", "A lookup by name could match many rows: it is refused.")
    try:
        cache.get(User, "name", "Ada")
        check(False, "a lookup by name is refused")
    except cachecow.InvalidLookup as exc:
        print(f"   InvalidLookup: {exc}")
        check("valid lookups are 'id', 'email'" in str(exc), "the error lists the valid lookups")

    step(4, "cache.watch(Session)", "Commit a new email: both email lookups are invalidated.")
    cache.watch(Session, relay=False)  # the demo's writes all go through Session
    check(user_by(cache, "email", "ada@lovelace.org") is None, "NotFound: a tombstone is cached")
    invalidations = cache.metrics.snapshot().invalidations
    with Session.begin() as session:
        user = session.get(User, 1)
        assert user is not None
        user.email = "ada@lovelace.org"
    done = cache.metrics.snapshot().invalidations - invalidations
    print(f"   session: user.email = 'ada@lovelace.org'; commit -> {done} lookups invalidated")
    check(done == 3, "the commit alone invalidated id 1, the old email and the new one")
    check(user_by(cache, "email", "ada@example.com") is None, "the old email: NotFound")
    new = user_by(cache, "email", "ada@lovelace.org")
    check(new is not None and new.id == 1, "the new email finds user 1 (its tombstone is gone)")

    step(5, "A rollback", "A flushed change that rolls back invalidates nothing.")
    invalidations = cache.metrics.snapshot().invalidations
    with Session() as session:
        user = session.get(User, 2)
        assert user is not None
        user.email = "grace@navy.mil"
        session.flush()
        session.rollback()
    print(f"   invalidations: {invalidations} -> {cache.metrics.snapshot().invalidations}")
    check(cache.metrics.snapshot().invalidations == invalidations, "the cache was not touched")
    selects.new()
    grace = cache.get(User, "email", "grace@example.com")
    check(grace.id == 2 and selects.new() == 0, "Grace is still a hit by her email")

    step(6, "A bulk update()", "Cache 50 members, rename them all in one UPDATE, read again.")
    ids = list(range(100, 150))
    members = cache.get_many(User, "id", ids)
    print(f"   get_many(User, 'id', [100, ..., 149]) -> {len(members)} users")
    check(selects.new() == 1, "50 misses cost one SELECT ... IN")
    invalidations = cache.metrics.snapshot().invalidations
    with Session.begin() as session:
        session.execute(sa.update(User).where(User.email.like("m1%")).values(name=User.name + "*"))
    done = cache.metrics.snapshot().invalidations - invalidations
    print(f"   update(User).where(email LIKE 'm1%'); commit -> {done} lookups invalidated")
    check(done == 100, "the id and email lookups of all 50 rows were invalidated")
    members = cache.get_many(User, "id", ids)
    print(f"   get_many again -> {members[0].name!r}, ..., {members[-1].name!r}")
    check(all(u.name.endswith("*") for u in members), "every member has its new name")

    step(7, "A cached object in a new session", "session.add(obj) attaches it without a query.")
    grace = cache.get(User, "id", 2)
    selects.new()
    with Session.begin() as session:
        session.add(grace)
        check(sa.inspect(grace).persistent, "the cached object is persistent in the session")
        grace.name = "Grace Hopper"
    print("   session.add(grace); grace.name = 'Grace Hopper'; commit")
    check(selects.new() == 0, "attached and updated with 0 SELECTs")
    check(cache.get(User, "id", 2).name == "Grace Hopper", "the next get reads the new name")

    step(8, "The counters", "cache.metrics.snapshot().as_dict():")
    counters = cache.metrics.snapshot().as_dict()
    width = max(map(len, counters))
    for name, count in counters.items():
        print(f"   {name:<{width}}  {count:>3}")


def main() -> None:
    redis_url, database_url = os.environ.get("REDIS_URL"), os.environ.get("DATABASE_URL")
    client: redis.Redis
    if redis_url:
        client = cachecow.connect(redis_url)
        prefix = f"cachecow-sqla:{secrets.token_hex(4)}:"
        print(f"Redis: {redis_url} (keys under {prefix}, deleted at the end)")
    else:
        import fakeredis  # the demo extra: an in-process Redis that runs Lua through lupa

        client = fakeredis.FakeRedis()
        prefix = "cachecow-sqla:"
        print("Redis: embedded fakeredis (set REDIS_URL to use a real server)")
    with tempfile.TemporaryDirectory() as tmp:
        url = database_url or f"sqlite:///{Path(tmp) / 'example.sqlite3'}"
        engine = sa.create_engine(url)
        shown = sa.make_url(url).render_as_string(hide_password=True)
        print(f"Database: {shown} (tables {TABLES}_*, dropped at the end)")
        try:
            Base.metadata.create_all(engine)
            install(engine, User, Membership)  # the outbox and the tables' triggers
            run(client, prefix, engine)
        finally:
            Base.metadata.drop_all(engine)
            engine.dispose()
            leftovers = list(client.scan_iter(match=f"{prefix}*"))
            if leftovers:
                client.delete(*leftovers)
            client.close()
    print("\nAll claims held.")


if __name__ == "__main__":
    main()
